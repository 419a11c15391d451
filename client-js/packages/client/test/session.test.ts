// A long session with short-lived access tokens, and the smaller client
// behaviours: typing throttling, read receipts, membership and presence events.

import { expect, test } from 'vitest';

import { chatting, eventually, inbox, lifecycle, pair, registered, sdk } from './harness.ts';
import { backoffDelay, processLock, type StoredTokens, type WatermarkEvent } from './sdk.ts';

const life = lifecycle();

test('tokens are refreshed ahead of expiry through a long session', async () => {
  const server = await life.server({ env: { STOMPLINE_AUTH__ACCESS_TOKEN_TTL_SECS: '3' } });
  const { alice, bob, bobUser, conv, got } = await chatting(life, server);
  const states: string[] = [];
  bob.on('connection', (s) => states.push(s));

  // About four token lifetimes: one message every 400 ms, over STOMP and REST.
  const want: string[] = [];
  const until = Date.now() + 12_000;
  for (let i = 0; Date.now() < until; i++) {
    const text = `tick ${i}`;
    want.push(text);
    if (i % 2 === 0) alice.send(conv.id, text);
    else await alice.api.postMessage(conv.id, text);
    await new Promise((r) => setTimeout(r, 400));
  }
  await eventually(() => got.bodies(conv.id).length >= want.length, 'every message');
  await eventually(() => alice.unsent().length === 0, 'the outbox to empty');
  expect(got.bodies(conv.id)).toEqual(want);
  expect(bob.api.tokens.refreshCount).toBeGreaterThanOrEqual(3);
  expect(alice.api.tokens.refreshCount).toBeGreaterThanOrEqual(3);
  expect(states).not.toContain('closed');
  // Still signed in and able to call REST.
  expect((await bob.api.me()).id).toBe(bobUser.id);
});

test('two holders of one session (two tabs) never spend the same refresh token', async () => {
  const server = await life.server({ env: { STOMPLINE_AUTH__ACCESS_TOKEN_TTL_SECS: '2' } });
  // What localStorage is to two tabs.
  let saved: StoredTokens | null = null;
  const shared = { sharedTokens: () => saved, sessionLock: processLock() };
  const first = life.track(sdk(server.http, shared));
  first.on('tokens', (t) => (saved = t));
  await registered(first, 'tabs');
  const second = life.track(sdk(server.http, { ...shared, tokens: saved }));
  second.on('tokens', (t) => (saved = t));
  await first.start();
  await second.start();
  await eventually(() => first.isConnected && second.isConnected, 'both tabs connected');
  // Three token lifetimes; each tab refreshes on its own timer.
  await new Promise((r) => setTimeout(r, 6_500));
  expect(first.api.tokens.current).not.toBeNull();
  expect(second.api.tokens.current).not.toBeNull();
  expect(first.api.tokens.refreshCount + second.api.tokens.refreshCount).toBeGreaterThanOrEqual(3);
  await first.api.me();
  await second.api.me();
  expect(first.state).not.toBe('closed');
  expect(second.state).not.toBe('closed');
});

test('typing is throttled; read and delivered watermarks and unread counters arrive', async () => {
  const server = await life.server();
  const { alice, bob, bobUser, conv } = await chatting(life, server, { aliceOptions: { typingThrottleMs: 60_000 } });
  const typing: boolean[] = [];
  bob.on('typing', (t) => typing.push(t.typing));
  const reads: WatermarkEvent[] = [];
  const delivered: WatermarkEvent[] = [];
  alice.on('read', (r) => reads.push(r));
  alice.on('delivered', (d) => delivered.push(d));
  const unread: number[] = [];
  bob.on('unread', (u) => unread.push(u.unreadCount));

  expect(alice.typing(conv.id)).toBe(true);
  expect(alice.typing(conv.id)).toBe(false);
  expect(alice.typing(conv.id)).toBe(false);
  await eventually(() => typing.length >= 1, 'typing at bob');
  expect(alice.typing(conv.id, false)).toBe(true);
  await eventually(() => typing.includes(false), 'typing stopped at bob');
  expect(typing.filter((t) => t)).toHaveLength(1);

  alice.send(conv.id, 'one');
  alice.send(conv.id, 'two');
  await eventually(() => delivered.some((d) => d.userId === bobUser.id && d.upToSeq >= 2), 'delivered to bob');
  await eventually(() => unread.includes(2), 'bob unread = 2');
  bob.markRead(conv.id, 2);
  await eventually(() => reads.some((r) => r.userId === bobUser.id && r.upToSeq === 2), 'read by bob');
  await eventually(() => unread[unread.length - 1] === 0, 'bob unread = 0');
});

test('membership events follow new conversations', async () => {
  const server = await life.server();
  const { alice, bob, bobUser } = await pair(life, server);
  const kinds: string[] = [];
  bob.on('membership', (m) => kinds.push(m.kind));
  const got = inbox(bob);
  await bob.start();
  await eventually(() => bob.isConnected, 'connected');
  const group = await alice.api.createGroup('g', []);
  await alice.api.addMembers(group.id, [bobUser.id]);
  await eventually(() => kinds.includes('added'), 'member.added');
  await alice.api.postMessage(group.id, 'welcome');
  await eventually(() => got.bodies(group.id).length === 1, 'the message in the new group');
  await alice.api.rename(group.id, 'renamed');
  await eventually(() => kinds.includes('updated'), 'conversation.updated');
  await alice.api.removeMember(group.id, bobUser.id);
  await eventually(() => kinds.includes('removed'), 'member.removed');
});

test('backoff grows, is capped and jittered', () => {
  const o = { initialMs: 100, maxMs: 1_000, jitter: 0.5 };
  expect(backoffDelay(0, o, () => 1)).toBe(100);
  expect(backoffDelay(3, o, () => 1)).toBe(800);
  expect(backoffDelay(10, o, () => 1)).toBe(1_000);
  expect(backoffDelay(10, o, () => 0)).toBe(500);
  expect(backoffDelay(50, o, () => 0.5)).toBe(750);
});
