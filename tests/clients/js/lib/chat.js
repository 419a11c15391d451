// Chat helpers for the stompjs suite: REST calls with a bearer token,
// conversations, durable sends through /app/chat.send, and waiting for a
// chat event by name while skipping the others.

import assert from 'node:assert/strict';
import { setTimeout as delay } from 'node:timers/promises';
import { HTTP, WAIT_MS, receiptFor, unique } from './helpers.js';

/** Calls the REST API as `user`; resolves with `{ status, body }` (body parsed, or null). */
export async function api(user, method, path, body) {
  const headers = { authorization: `Bearer ${user.accessToken}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`http://${HTTP}/api${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed = null;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = text;
    }
  }
  return { status: res.status, body: parsed };
}

/** Like `api`, but asserts the status and returns the body. */
export async function apiExpect(status, user, method, path, body) {
  const res = await api(user, method, path, body);
  assert.equal(res.status, status, `${method} ${path}: HTTP ${res.status} ${JSON.stringify(res.body)}`);
  return res.body;
}

/** Opens (or finds) the direct conversation of `a` with `b`; returns its id. */
export async function directConversation(a, b) {
  const c = await apiExpect(201, a, 'POST', '/conversations', { type: 'direct', memberIds: [b.id] });
  return c.id;
}

/** Creates a group owned by `owner` with `members`; returns its id. */
export async function groupConversation(owner, members, name = unique('group')) {
  const c = await apiExpect(201, owner, 'POST', '/conversations', {
    type: 'group',
    name,
    memberIds: members.map((m) => m.id),
  });
  return c.id;
}

/** The whole history of a conversation in ascending seq, paging with `after`. */
export async function fullHistory(user, cid) {
  const all = [];
  for (;;) {
    const after = all.length ? all[all.length - 1].seq : 0;
    const page = await apiExpect(200, user, 'GET', `/conversations/${cid}/messages?after=${after}&limit=100`);
    all.push(...page.items);
    if (page.items.length < 100) return all;
  }
}

/** The `GET /api/unread` entry of `user` for `cid` (undefined when absent). */
export async function unreadOf(user, cid) {
  const { items } = await apiExpect(200, user, 'GET', '/unread');
  return items.find((u) => u.conversationId === cid);
}

/** Parses a MESSAGE frame's JSON body. */
export function json(frame) {
  return JSON.parse(frame.body);
}

/**
 * Publishes a chat message to `/app/chat.send` with a `receipt` header and
 * resolves with the RECEIPT frame (sent only once the message is durable).
 */
export function sendChat(client, conversationId, body, { clientMsgId } = {}) {
  const receipt = unique('send');
  const got = receiptFor(client, receipt);
  const payload = { conversationId, body };
  if (clientMsgId !== undefined) payload.clientMsgId = clientMsgId;
  client.publish({
    destination: '/app/chat.send',
    body: JSON.stringify(payload),
    headers: { 'content-type': 'application/json', receipt },
  });
  return got;
}

/** Publishes a JSON body to an `/app/...` destination with a receipt; resolves with the RECEIPT. */
export function publishApp(client, destination, payload) {
  const receipt = unique('app');
  const got = receiptFor(client, receipt);
  client.publish({
    destination,
    body: JSON.stringify(payload),
    headers: { 'content-type': 'application/json', receipt },
  });
  return got;
}

/** A short description of a MESSAGE frame for assertion messages. */
export function describe(m) {
  return `${m.headers.destination} event=${m.headers.event} seq=${m.headers.seq ?? '-'} ${m.body}`;
}

/** The next message of `box` satisfying `pred`, skipping others, within `ms` overall. */
export async function nextWhere(box, pred, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  const skipped = [];
  for (;;) {
    const left = deadline - Date.now();
    let m;
    try {
      if (left <= 0) throw new Error('deadline');
      m = await box.next(left);
    } catch {
      throw new Error(
        `timed out after ${ms} ms waiting for ${what} on ${box.name}; skipped: [${skipped.map(describe).join(' | ')}]`,
      );
    }
    if (pred(m)) return m;
    skipped.push(m);
  }
}

/** The next MESSAGE with header `event: name` whose parsed body satisfies `pred`. */
export function nextEvent(box, name, pred = () => true, ms = WAIT_MS) {
  return nextWhere(box, (m) => m.headers.event === name && pred(json(m), m), `event:${name}`, ms);
}

/** Asserts that `box` receives nothing (optionally: nothing matching `pred`) for `ms`. */
export async function assertQuiet(box, ms, why, pred = () => true) {
  await delay(ms);
  const got = box.items.filter(pred);
  assert.deepEqual(got.map(describe), [], `${box.name}: ${why}`);
}

/** Polls `probe` until it returns a truthy value; resolves with that value. */
export async function eventually(probe, what, ms = WAIT_MS, every = 25) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() >= deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await delay(every);
  }
}
