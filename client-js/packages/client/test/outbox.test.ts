// The outbox delivers every message exactly once: across a connection that
// dies before the RECEIPT arrives, and across a new client instance.

import { expect, test } from 'vitest';

import { chatting, eventually, lifecycle, pair, registered, sdk } from './harness.ts';
import { memoryStorage, type SentEvent } from './sdk.ts';

const life = lifecycle();

test('a message whose RECEIPT was lost is retried and stored once', async () => {
  const server = await life.server();
  const proxy = await life.proxy(server);
  const { alice, bob, conv, got } = await chatting(life, server, { alice: proxy.address });
  const sent: SentEvent[] = [];
  alice.on('sent', (s) => sent.push(s));

  // The SEND reaches the server, the RECEIPT never comes back.
  proxy.dropReplies();
  const item = alice.send(conv.id, 'exactly once');
  await eventually(() => got.bodies(conv.id).length === 1, 'bob to get it (so it is durable)');
  expect(alice.unsent().map((i) => i.clientMsgId)).toEqual([item.clientMsgId]);

  // The connection dies; the outbox retries with the same clientMsgId.
  proxy.cut();
  await eventually(() => !alice.isConnected, 'alice disconnected');
  proxy.restore();
  await eventually(() => alice.unsent().length === 0, 'the outbox to empty');
  await eventually(() => alice.isConnected, 'alice reconnected');
  alice.send(conv.id, 'after');
  await eventually(() => got.bodies(conv.id).length === 2, 'the next message');

  const history = await bob.api.messages(conv.id);
  expect(history.map((m) => m.body)).toEqual(['exactly once', 'after']);
  expect(got.bodies(conv.id)).toEqual(['exactly once', 'after']);
  const first = sent.filter((s) => s.clientMsgId === item.clientMsgId);
  expect(first).toHaveLength(1);
  expect(first[0]?.messageId).toBe(history[0]?.id);
});

test('the outbox survives into a new client and is sent once', async () => {
  const server = await life.server();
  const proxy = await life.proxy(server);
  const storage = memoryStorage();
  const { alice: first, bob, bobUser } = await pair(life, server, {
    alice: proxy.address,
    aliceOptions: { outboxStorage: storage },
  });
  const conv = await first.api.direct(bobUser.id);
  proxy.cut();
  await first.start();
  for (let i = 1; i <= 3; i++) first.send(conv.id, `offline ${i}`);
  const tokens = first.api.tokens.current;
  first.close();
  expect(storage.load()).toHaveLength(3);

  // A new instance (a reloaded page) with the same storage and tokens.
  proxy.restore();
  const second = life.track(sdk(proxy.address, { outboxStorage: storage, tokens }));
  await second.start();
  await eventually(() => second.unsent().length === 0, 'the outbox to drain');
  const history = await bob.api.messages(conv.id);
  expect(history.map((m) => m.body)).toEqual(['offline 1', 'offline 2', 'offline 3']);
  expect(storage.load()).toHaveLength(0);
});

test('a refused message is marked failed and not retried', async () => {
  const server = await life.server();
  const alice = life.track(sdk(server.http));
  await registered(alice, 'alice');
  await alice.start();
  await eventually(() => alice.isConnected, 'connected');
  const errors: string[] = [];
  alice.on('error', (e) => errors.push(e.code));
  const item = alice.send('999999', 'nowhere');
  await eventually(() => alice.unsent()[0]?.state === 'failed', 'the item to fail');
  expect(alice.unsent()[0]?.clientMsgId).toBe(item.clientMsgId);
  expect(alice.unsent()[0]?.error?.code).toBe('not_found');
  expect(errors).toContain('not_found');
  alice.discard(item.clientMsgId);
  expect(alice.unsent()).toHaveLength(0);
});
