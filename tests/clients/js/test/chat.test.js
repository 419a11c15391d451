// Chat end to end through @stomp/stompjs: several users, each with their own
// Client over WebSocket, plus REST for accounts, conversations and history.
// The same flows in raw STOMP bytes are in tests/chat_stomp.rs.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import {
  Mailbox,
  closeAll,
  connect,
  connectUser,
  receiptFor,
  register,
  subscribed,
  unique,
  within,
} from '../lib/helpers.js';
import {
  api,
  apiExpect,
  assertQuiet,
  directConversation,
  eventually,
  fullHistory,
  groupConversation,
  json,
  nextEvent,
  publishApp,
  sendChat,
  unreadOf,
} from '../lib/chat.js';

/** How long "receives nothing" is watched for. */
const QUIET_MS = 500;

const RFC3339_UTC = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/;

/** Checks a chat MESSAGE frame's headers and returns its message object. */
function assertMessageEvent(m, { event = 'message.created', destination, cid, seq, id }) {
  assert.equal(m.command, 'MESSAGE');
  assert.equal(m.headers.event, event, 'event header');
  assert.equal(m.headers.destination, destination, 'destination header');
  assert.equal(m.headers['conversation-id'], cid, 'conversation-id header');
  assert.equal(m.headers.seq, String(seq), 'seq header');
  assert.equal(m.headers['chat-message-id'], id, 'chat-message-id header');
  assert.equal(m.headers['content-type'], 'application/json');
  assert.ok(m.headers.subscription, 'subscription header');
  assert.ok(m.headers['message-id'], 'message-id header');
  const body = json(m);
  assert.equal(body.id, id);
  assert.equal(body.conversationId, cid);
  assert.equal(body.seq, seq);
  return body;
}

test('direct conversation: messages both ways on the topic and the user queue, durable receipts, history', async () => {
  const alice = await connectUser('jsca');
  const bob = await connectUser('jscb');
  try {
    const cid = await directConversation(alice.user, bob.user);
    // One direct conversation per pair: bob's request finds the same one.
    const again = await apiExpect(200, bob.user, 'POST', '/conversations', {
      type: 'direct',
      memberIds: [alice.user.id],
    });
    assert.equal(again.id, cid);

    const topic = `/topic/chat/${cid}`;
    const boxes = {};
    for (const [who, c] of [['alice', alice], ['bob', bob]]) {
      boxes[who] = { topic: new Mailbox(`${who} topic`), queue: new Mailbox(`${who} queue`) };
      await subscribed(c.client, topic, boxes[who].topic);
      await subscribed(c.client, '/user/queue/messages', boxes[who].queue);
    }

    // alice -> bob through /app/chat.send.
    const r1 = await sendChat(alice.client, cid, 'hello bob ✓', { clientMsgId: unique('cm') });
    assert.equal(r1.headers.seq, '1');
    const id1 = r1.headers['chat-message-id'];
    assert.ok(id1, 'RECEIPT carries chat-message-id');

    const delivered = [];
    for (const who of ['alice', 'bob']) {
      for (const [kind, destination] of [['topic', topic], ['queue', '/user/queue/messages']]) {
        const m = await nextEvent(boxes[who][kind], 'message.created');
        const body = assertMessageEvent(m, { destination, cid, seq: 1, id: id1 });
        assert.equal(body.body, 'hello bob ✓');
        assert.equal(body.senderId, alice.user.id);
        assert.match(body.createdAt, RFC3339_UTC);
        assert.equal(body.editedAt, null);
        assert.equal(body.deletedAt, null);
        if (who === 'bob' && kind === 'topic') delivered.push(body);
      }
    }

    // bob -> alice with a plain SEND to the topic (the body is the text).
    const rb = unique('plain');
    const r2p = receiptFor(bob.client, rb);
    bob.client.publish({ destination: topic, body: 'hi alice', headers: { receipt: rb } });
    const r2 = await r2p;
    assert.equal(r2.headers.seq, '2');
    const id2 = r2.headers['chat-message-id'];
    assert.ok(id2);
    assert.notEqual(id2, id1);
    for (const who of ['alice', 'bob']) {
      for (const [kind, destination] of [['topic', topic], ['queue', '/user/queue/messages']]) {
        const body = assertMessageEvent(await nextEvent(boxes[who][kind], 'message.created'), {
          destination,
          cid,
          seq: 2,
          id: id2,
        });
        assert.equal(body.body, 'hi alice');
        assert.equal(body.senderId, bob.user.id);
        if (who === 'alice' && kind === 'topic') delivered.push(body);
      }
    }

    // A third one from alice, and nothing beyond what was sent.
    const r3 = await sendChat(alice.client, cid, 'third');
    assert.equal(r3.headers.seq, '3');
    delivered.push(json(await nextEvent(boxes.bob.topic, 'message.created')));
    await nextEvent(boxes.bob.queue, 'message.created');
    await nextEvent(boxes.alice.topic, 'message.created');
    await nextEvent(boxes.alice.queue, 'message.created');
    for (const who of ['alice', 'bob']) {
      for (const kind of ['topic', 'queue']) assert.equal(boxes[who][kind].size, 0, `${who} ${kind}: no duplicates`);
    }

    // History over REST is exactly what was delivered, for both members.
    for (const u of [alice.user, bob.user]) {
      const history = await apiExpect(200, u, 'GET', `/conversations/${cid}/messages`);
      assert.deepEqual(history.items, delivered);
    }
    const conv = await apiExpect(200, bob.user, 'GET', `/conversations/${cid}`);
    assert.equal(conv.lastSeq, 3);
  } finally {
    await closeAll(alice.client, bob.client);
  }
});

test('clientMsgId: a resent SEND gets the original RECEIPT and is delivered once', async () => {
  const alice = await connectUser('jscia');
  const bob = await connectUser('jscib');
  try {
    const cid = await directConversation(alice.user, bob.user);
    const box = new Mailbox('bob topic');
    await subscribed(bob.client, `/topic/chat/${cid}`, box);
    const clientMsgId = unique('cm');
    const first = await sendChat(alice.client, cid, 'once', { clientMsgId });
    const second = await sendChat(alice.client, cid, 'once', { clientMsgId });
    assert.equal(second.headers['chat-message-id'], first.headers['chat-message-id']);
    assert.equal(second.headers.seq, first.headers.seq);
    assert.equal(json(await nextEvent(box, 'message.created')).body, 'once');
    await assertQuiet(box, QUIET_MS, 'the replayed SEND is not delivered again');
    const history = await apiExpect(200, bob.user, 'GET', `/conversations/${cid}/messages`);
    assert.equal(history.items.length, 1);
  } finally {
    await closeAll(alice.client, bob.client);
  }
});

test('group of three: everyone receives; a removed member is told and stops receiving at once', async () => {
  const owner = await connectUser('jscgo');
  const stays = await connectUser('jscgs');
  const leaves = await connectUser('jscgl');
  const all = [owner, stays, leaves];
  try {
    const cid = await groupConversation(owner.user, [stays.user, leaves.user]);
    const conv = await apiExpect(200, stays.user, 'GET', `/conversations/${cid}`);
    assert.equal(conv.type, 'group');
    assert.deepEqual(
      Object.fromEntries(conv.members.map((m) => [m.userId, m.role])),
      { [owner.user.id]: 'owner', [stays.user.id]: 'member', [leaves.user.id]: 'member' },
    );

    for (const u of all) {
      u.topic = new Mailbox(`${u.user.username} topic`);
      u.queue = new Mailbox(`${u.user.username} queue`);
      u.notes = new Mailbox(`${u.user.username} notifications`);
      u.errors = new Mailbox(`${u.user.username} errors`);
      await subscribed(u.client, `/topic/chat/${cid}`, u.topic);
      await subscribed(u.client, '/user/queue/messages', u.queue);
      await subscribed(u.client, '/user/queue/notifications', u.notes);
      await subscribed(u.client, '/user/queue/errors', u.errors);
    }

    // Everyone, the sender included, gets each message on both destinations.
    const senders = [owner, stays, leaves];
    for (const [i, s] of senders.entries()) {
      const r = await sendChat(s.client, cid, `hello from ${i}`);
      assert.equal(r.headers.seq, String(i + 1));
      for (const u of all) {
        for (const box of [u.topic, u.queue]) {
          const m = json(await nextEvent(box, 'message.created'));
          assert.deepEqual([m.seq, m.senderId, m.body], [i + 1, s.user.id, `hello from ${i}`]);
        }
      }
    }

    const res = await api(owner.user, 'DELETE', `/conversations/${cid}/members/${leaves.user.id}`);
    assert.ok(res.status === 204 || res.status === 200, `remove member: HTTP ${res.status} ${JSON.stringify(res.body)}`);
    const removed = await nextEvent(leaves.notes, 'member.removed');
    assert.deepEqual(json(removed), { conversationId: cid, userId: leaves.user.id });
    assert.equal(removed.headers['conversation-id'], cid);

    // The owner sends right after: the remaining member gets it, the removed
    // one gets nothing on either destination.
    const r = await sendChat(owner.client, cid, 'after the removal');
    assert.equal(r.headers.seq, '4');
    assert.equal(json(await nextEvent(stays.topic, 'message.created')).body, 'after the removal');
    assert.equal(json(await nextEvent(stays.queue, 'message.created')).body, 'after the removal');
    const chatEvents = (m) => m.headers.event?.startsWith('message.');
    await assertQuiet(leaves.topic, QUIET_MS, 'removed member got a message on the topic', chatEvents);
    await assertQuiet(leaves.queue, 0, 'removed member got a message on its queue', chatEvents);

    // Its own SEND is now refused, and the conversation is gone for it.
    const failed = unique('gone');
    leaves.client.publish({
      destination: '/app/chat.send',
      body: JSON.stringify({ conversationId: cid, body: 'still here?' }),
      headers: { receipt: failed },
    });
    const e = await nextEvent(leaves.errors, 'error');
    assert.equal(e.headers['receipt-id'], failed);
    assert.equal((await api(leaves.user, 'GET', `/conversations/${cid}`)).status, 404);
    const left = await apiExpect(200, owner.user, 'GET', `/conversations/${cid}`);
    assert.deepEqual(left.members.map((m) => m.userId).sort(), [owner.user.id, stays.user.id].sort());
  } finally {
    await closeAll(...all.map((u) => u.client));
  }
});

// Gone two ways: a clean deactivate() (DISCONNECT), and the socket killed
// without one.
for (const how of ['deactivate', 'killed']) {
  test(`resume (${how}): a client gone mid-stream resubscribes with since-seq and has every message once, in order`, async () => {
    const sender = await connectUser('jscrs');
    const readerUser = await register('jscrr');
    const total = 50;
    let reader = null;
    try {
      const cid = await directConversation(sender.user, readerUser);
      const topic = `/topic/chat/${cid}`;
      const connectReader = () =>
        connect({ connectHeaders: { login: readerUser.username, passcode: readerUser.password } });

      // Every message.created the reader sees, over both connections, in arrival order.
      const seen = [];
      const record = {
        push: (m) => {
          if (m.headers.event === 'message.created') seen.push(Number(m.headers.seq));
        },
      };
      const seenAtLeast = (n, what) => eventually(() => seen.length >= n, what);
      reader = (await connectReader()).client;
      await subscribed(reader, topic, record);

      // The sender keeps going, each message with a durable RECEIPT; from the
      // 21st on only once the reader has gone, so the rest is sent while it is
      // away and while it resubscribes.
      const receipts = [];
      let readerGone;
      const gone = new Promise((resolve) => {
        readerGone = resolve;
      });
      const sending = (async () => {
        for (let i = 1; i <= total; i++) {
          if (i === 21) await gone;
          const r = await sendChat(sender.client, cid, `n${i}`);
          receipts.push(Number(r.headers.seq));
        }
      })();
      sending.catch(() => {}); // awaited below; a failure before that must not go unhandled

      // The reader goes away after ten...
      await seenAtLeast(10, 'the first ten messages');
      if (how === 'deactivate') {
        await within(reader.deactivate(), 'reader deactivate');
      } else {
        const closed = new Promise((resolve) => {
          reader.onWebSocketClose = resolve;
        });
        reader.webSocket.terminate();
        await within(closed, 'the killed socket to close');
        await reader.deactivate({ force: true });
      }
      reader = null;
      readerGone();
      const last = Math.max(...seen);
      const firstSession = seen.length;
      assert.ok(firstSession >= 10 && firstSession <= 20, `first session saw ${firstSession}`);

      // ...and comes back, asking for everything after the last seq it saw.
      reader = (await connectReader()).client;
      await subscribed(reader, topic, record, { 'since-seq': String(last) });
      await within(sending, 'the sender to finish');
      await seenAtLeast(total, `${total} messages`);
      // Anything arriving late would be a duplicate.
      await delay(QUIET_MS);

      assert.deepEqual(receipts, Array.from({ length: total }, (_, i) => i + 1), 'RECEIPT seqs');
      assert.deepEqual(seen, Array.from({ length: total }, (_, i) => i + 1), 'every message once, in seq order');
      const history = await fullHistory(readerUser, cid);
      assert.deepEqual(
        history.map((m) => [m.seq, m.body]),
        Array.from({ length: total }, (_, i) => [i + 1, `n${i + 1}`]),
      );
    } finally {
      await closeAll(sender.client, reader);
    }
  });
}

test("a non-member's SUBSCRIBE and SEND are refused on /user/queue/errors and its connection stays usable", async () => {
  const a = await connectUser('jscna');
  const b = await connectUser('jscnb');
  const outsider = await connectUser('jscno');
  try {
    const cid = await directConversation(a.user, b.user);
    const topic = `/topic/chat/${cid}`;
    const memberBox = new Mailbox('member topic');
    await subscribed(b.client, topic, memberBox);
    const errors = new Mailbox('outsider errors');
    await subscribed(outsider.client, '/user/queue/errors', errors);

    // A receipt that must never come: a refused frame gets no RECEIPT.
    const noReceipt = [];
    const watchNone = (id) => outsider.client.watchForReceipt(id, (f) => noReceipt.push(f));

    const checkError = (e, receipt) => {
      assert.equal(e.headers.event, 'error');
      assert.equal(e.headers.destination, '/user/queue/errors');
      assert.equal(e.headers['receipt-id'], receipt);
      assert.ok(e.headers.code, 'code header');
      assert.ok(e.headers.message, 'message header');
      assert.deepEqual(json(e), { code: e.headers.code, message: e.headers.message });
    };

    // SUBSCRIBE to the conversation's topic.
    const s1 = unique('sub');
    watchNone(s1);
    const outsiderTopic = new Mailbox('outsider topic');
    outsider.client.subscribe(topic, (m) => outsiderTopic.push(m), { receipt: s1 });
    const e1 = await nextEvent(errors, 'error');
    checkError(e1, s1);
    assert.equal(e1.headers.code, 'not_found', 'no existence leak: a non-member sees not_found');

    // SEND through /app/chat.send and as a plain SEND to the topic.
    const s2 = unique('send');
    watchNone(s2);
    outsider.client.publish({
      destination: '/app/chat.send',
      body: JSON.stringify({ conversationId: cid, body: 'intrude' }),
      headers: { 'content-type': 'application/json', receipt: s2 },
    });
    checkError(await nextEvent(errors, 'error'), s2);
    const s3 = unique('send');
    watchNone(s3);
    outsider.client.publish({ destination: topic, body: 'intrude again', headers: { receipt: s3 } });
    checkError(await nextEvent(errors, 'error'), s3);

    // Still connected and usable: a generic topic round-trips with a receipt.
    assert.ok(outsider.client.connected);
    const elsewhere = `/topic/${unique('js-ok')}`;
    const ok = new Mailbox('outsider elsewhere');
    await subscribed(outsider.client, elsewhere, ok);
    const r = unique('ok');
    const got = receiptFor(outsider.client, r);
    outsider.client.publish({ destination: elsewhere, body: 'fine', headers: { receipt: r } });
    await got;
    assert.equal((await ok.next()).body, 'fine');

    // The members saw none of it, and the refused subscription gets nothing.
    await sendChat(a.client, cid, 'members only');
    assert.equal(json(await nextEvent(memberBox, 'message.created')).body, 'members only');
    await assertQuiet(outsiderTopic, QUIET_MS, 'the refused subscription received a message');
    assert.equal(memberBox.size, 0, 'no intruder message reached the member');
    assert.deepEqual(noReceipt, [], 'refused frames got a RECEIPT');
    const history = await apiExpect(200, a.user, 'GET', `/conversations/${cid}/messages`);
    assert.deepEqual(history.items.map((m) => m.body), ['members only']);
  } finally {
    await closeAll(a.client, b.client, outsider.client);
  }
});

test('edit and delete over REST arrive as message.edited and message.deleted on the topic', async () => {
  const alice = await connectUser('jscea');
  const bob = await connectUser('jsceb');
  try {
    const cid = await directConversation(alice.user, bob.user);
    const topic = `/topic/chat/${cid}`;
    const box = new Mailbox('bob topic');
    await subscribed(bob.client, topic, box);
    const r = await sendChat(alice.client, cid, 'draft');
    const id = r.headers['chat-message-id'];
    const created = json(await nextEvent(box, 'message.created'));

    const edited = await apiExpect(200, alice.user, 'PATCH', `/messages/${id}`, { body: 'final' });
    assert.equal(edited.body, 'final');
    assert.match(edited.editedAt, RFC3339_UTC);
    const e = await nextEvent(box, 'message.edited');
    const eb = assertMessageEvent(e, { event: 'message.edited', destination: topic, cid, seq: 1, id });
    assert.deepEqual(eb, edited);
    assert.equal(eb.createdAt, created.createdAt);

    // Only the sender may edit.
    assert.equal((await api(bob.user, 'PATCH', `/messages/${id}`, { body: 'hijack' })).status, 403);

    const tomb = await apiExpect(200, alice.user, 'DELETE', `/messages/${id}`);
    assert.equal(tomb.body, '');
    assert.match(tomb.deletedAt, RFC3339_UTC);
    const d = await nextEvent(box, 'message.deleted');
    const db = assertMessageEvent(d, { event: 'message.deleted', destination: topic, cid, seq: 1, id });
    assert.deepEqual(db, tomb);
    await assertQuiet(box, QUIET_MS, 'one event per change');

    // History keeps the tombstone at its seq.
    const history = await apiExpect(200, bob.user, 'GET', `/conversations/${cid}/messages`);
    assert.deepEqual(history.items, [tomb]);
  } finally {
    await closeAll(alice.client, bob.client);
  }
});

test('delivered and read: receipts reach the sender, read reaches the members, unread drops to 0', async () => {
  const sender = await connectUser('jscds');
  const reader = await connectUser('jscdr');
  try {
    const cid = await directConversation(sender.user, reader.user);
    const receipts = new Mailbox('sender receipts');
    const senderRead = new Mailbox('sender read topic');
    await subscribed(sender.client, '/user/queue/receipts', receipts);
    await subscribed(sender.client, `/topic/chat/${cid}/read`, senderRead);
    const readerRead = new Mailbox('reader read topic');
    const notes = new Mailbox('reader notifications');
    const inbox = new Mailbox('reader messages');
    await subscribed(reader.client, `/topic/chat/${cid}/read`, readerRead);
    await subscribed(reader.client, '/user/queue/notifications', notes);
    await subscribed(reader.client, '/user/queue/messages', inbox);

    await sendChat(sender.client, cid, 'one');
    await sendChat(sender.client, cid, 'two');
    assert.equal(json(await nextEvent(inbox, 'message.created')).seq, 1);
    assert.equal(json(await nextEvent(inbox, 'message.created')).seq, 2);

    // The unread counter reaches 2, pushed and over REST.
    await nextEvent(notes, 'unread', (b) => b.unreadCount === 2);
    assert.deepEqual(await unreadOf(reader.user, cid), { conversationId: cid, unreadCount: 2, lastSeq: 2 });
    assert.equal((await unreadOf(sender.user, cid)).unreadCount, 0, 'sending marks your own messages read');

    // Delivered: watermarks from the reader, up to 2.
    const delivered = await nextEvent(receipts, 'message.delivered', (b) => {
      assert.equal(b.userId, reader.user.id);
      assert.equal(b.conversationId, cid);
      return b.upToSeq === 2;
    });
    assert.equal(delivered.headers['conversation-id'], cid);
    assert.deepEqual(json(delivered), { conversationId: cid, userId: reader.user.id, upToSeq: 2 });

    // Read through /app/chat.read.
    await publishApp(reader.client, '/app/chat.read', { conversationId: cid, upToSeq: 2 });
    const read = await nextEvent(receipts, 'message.read');
    assert.deepEqual(json(read), { conversationId: cid, userId: reader.user.id, upToSeq: 2 });
    for (const box of [senderRead, readerRead]) {
      const t = await nextEvent(box, 'read');
      assert.equal(t.headers['conversation-id'], cid);
      assert.deepEqual(json(t), { conversationId: cid, userId: reader.user.id, upToSeq: 2 });
    }
    await nextEvent(notes, 'unread', (b) => b.unreadCount === 0 && b.lastSeq === 2 && b.conversationId === cid);
    assert.deepEqual(await unreadOf(reader.user, cid), { conversationId: cid, unreadCount: 0, lastSeq: 2 });
    const list = await apiExpect(200, reader.user, 'GET', '/conversations');
    const summary = list.items.find((c) => c.id === cid);
    assert.equal(summary.unreadCount, 0);
    assert.equal(summary.lastSeq, 2);
  } finally {
    await closeAll(sender.client, reader.client);
  }
});

test('unread is exact after a burst of 1,000 messages from two concurrent senders', async () => {
  const s1 = await connectUser('jscu1');
  const s2 = await connectUser('jscu2');
  const third = await connectUser('jscu3');
  const perSender = 500;
  const total = 2 * perSender;
  try {
    const cid = await groupConversation(s1.user, [s2.user, third.user]);
    const notes = new Mailbox('third notifications');
    await subscribed(third.client, '/user/queue/notifications', notes);

    // Interleaved, so both connections stream at the same time. 500 each
    // fits the default per-user burst of 1,000.
    const last = [];
    for (let i = 0; i < perSender; i++) {
      for (const [k, [tag, s]] of [['a', s1], ['b', s2]].entries()) {
        const payload = JSON.stringify({ conversationId: cid, body: `${tag}${i}` });
        if (i === perSender - 1) {
          const receipt = unique('last');
          last[k] = receiptFor(s.client, receipt);
          s.client.publish({ destination: '/app/chat.send', body: payload, headers: { receipt } });
        } else {
          s.client.publish({ destination: '/app/chat.send', body: payload });
        }
      }
    }
    await Promise.all(last);

    const entry = await eventually(async () => {
      const u = await unreadOf(third.user, cid);
      return u && u.lastSeq === total ? u : null;
    }, `lastSeq ${total} in GET /api/unread`);
    assert.deepEqual(entry, { conversationId: cid, unreadCount: total, lastSeq: total });
    await nextEvent(notes, 'unread', (b) => b.conversationId === cid && b.unreadCount === total && b.lastSeq === total);

    // Gapless seqs, each sender's messages in the order it sent them, and
    // each sender has read exactly up to its own last message.
    const history = await fullHistory(third.user, cid);
    assert.deepEqual(history.map((m) => m.seq), Array.from({ length: total }, (_, i) => i + 1));
    for (const [tag, s] of [['a', s1], ['b', s2]]) {
      const mine = history.filter((m) => m.senderId === s.user.id);
      assert.deepEqual(
        mine.map((m) => m.body),
        Array.from({ length: perSender }, (_, i) => `${tag}${i}`),
        `${tag}: per-sender order`,
      );
      const lastOwn = mine[mine.length - 1].seq;
      assert.deepEqual(await unreadOf(s.user, cid), { conversationId: cid, unreadCount: total - lastOwn, lastSeq: total });
    }
    const list = await apiExpect(200, third.user, 'GET', '/conversations');
    const summary = list.items.find((c) => c.id === cid);
    assert.deepEqual([summary.unreadCount, summary.lastSeq], [total, total]);
  } finally {
    await closeAll(s1.client, s2.client, third.client);
  }
});

test('typing: the other member sees typing start, then stop by itself', async () => {
  const typist = await connectUser('jscty');
  const watcher = await connectUser('jsctw');
  try {
    const cid = await directConversation(typist.user, watcher.user);
    const box = new Mailbox('watcher typing');
    await subscribed(watcher.client, `/topic/chat/${cid}/typing`, box);
    await publishApp(typist.client, '/app/chat.typing', { conversationId: cid, typing: true });
    const start = await nextEvent(box, 'typing');
    const startedAt = Date.now();
    assert.equal(start.headers['conversation-id'], cid);
    assert.deepEqual(json(start), { conversationId: cid, userId: typist.user.id, typing: true });
    // Server default expiry is 5 s; allow for a slower configuration.
    const stop = await nextEvent(box, 'typing', () => true, 30_000);
    assert.deepEqual(json(stop), { conversationId: cid, userId: typist.user.id, typing: false });
    assert.ok(Date.now() - startedAt >= 1_000, 'ended by expiry, not at once');
    await assertQuiet(box, QUIET_MS, 'one stop event');
  } finally {
    await closeAll(typist.client, watcher.client);
  }
});

test('presence: a contact sees online once for two tabs, then away, then offline after the last tab closes', async () => {
  const watcher = await connectUser('jscpw');
  const flaky = await register('jscpf');
  const tabs = [];
  try {
    // Sharing a conversation makes them contacts.
    await directConversation(watcher.user, flaky);
    const box = new Mailbox('watcher presence');
    await subscribed(watcher.client, '/user/queue/presence', box);
    const tab = async () => {
      const { client } = await connect({ connectHeaders: { login: flaky.username, passcode: flaky.password } });
      tabs.push(client);
      return client;
    };

    // Two tabs, and a third opened while the second closes: one online event.
    const tab1 = await tab();
    const online = await nextEvent(box, 'presence');
    const tab2 = await tab();
    await within(tab2.deactivate(), 'tab2 deactivate');
    await tab();
    assert.equal(json(online).userId, flaky.id);
    assert.equal(json(online).status, 'online');
    await assertQuiet(box, QUIET_MS, 'more than one online event');
    const [p] = (await apiExpect(200, watcher.user, 'GET', `/presence?userIds=${flaky.id}`)).items;
    assert.deepEqual([p.userId, p.status], [flaky.id, 'online']);

    await publishApp(tab1, '/app/presence.set', { status: 'away' });
    const away = json(await nextEvent(box, 'presence'));
    assert.deepEqual([away.userId, away.status], [flaky.id, 'away']);

    // Last tab closes: offline after the grace (server default 20 s;
    // tests/real_clients.rs shortens it).
    await closeAll(...tabs);
    const offline = json(await nextEvent(box, 'presence', () => true, 40_000));
    assert.deepEqual([offline.userId, offline.status], [flaky.id, 'offline']);
    assert.match(offline.lastSeenAt, RFC3339_UTC);
    await assertQuiet(box, QUIET_MS, 'no further presence events');
    const [q] = (await apiExpect(200, watcher.user, 'GET', `/presence?userIds=${flaky.id}`)).items;
    assert.deepEqual([q.status, q.lastSeenAt], ['offline', offline.lastSeenAt]);
  } finally {
    await closeAll(watcher.client, ...tabs);
  }
});
