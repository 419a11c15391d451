// Many conversations on one connection: the subscription count does not
// grow with them, and a network drop still loses and duplicates nothing.

import { expect, test } from 'vitest';

import { eventually, inbox, lifecycle, pair } from './harness.ts';

const life = lifecycle();
const CONVERSATIONS = 300;

test('300 conversations on one connection: live, dropped and resumed, exactly once and in order', async () => {
  // One sender posts 1,200 messages quickly: no rate limit here.
  const server = await life.server({ env: { STOMPLINE_CHAT__RATE_PER_SEC: '0' } });
  const proxy = await life.proxy(server);
  // Bob reaches the server only through the proxy.
  const { alice, bob, bobUser } = await pair(life, server, { bob: proxy.address, bobOptions: { resumeConcurrency: 16 } });
  const groups: string[] = [];
  for (let i = 0; i < CONVERSATIONS; i++) groups.push((await alice.api.createGroup(`g${i}`, [bobUser.id])).id);
  const got = inbox(bob);
  const errors: string[] = [];
  bob.on('error', (e) => errors.push(`${e.code}: ${e.message}`));
  expect(await bob.start()).toHaveLength(CONVERSATIONS);
  await eventually(() => bob.isConnected, 'bob connected');
  // More conversations than the server allows subscriptions on one
  // connection (256), yet only the user queues are subscribed.
  expect(bob.subscriptionCount).toBe(5);
  await bob.focus(groups[0] ?? '');
  expect(bob.subscriptionCount).toBe(7);

  // Live: one message in every conversation.
  for (const g of groups) await alice.api.postMessage(g, 'live 1');
  await eventually(() => got.all.length === CONVERSATIONS, 'one message per conversation');

  // The network goes quiet; two more messages per conversation meanwhile.
  proxy.stall();
  await eventually(() => !bob.isConnected, 'bob to notice the dead connection');
  for (const g of groups) {
    await alice.api.postMessage(g, 'away 2');
    await alice.api.postMessage(g, 'away 3');
  }
  proxy.restore();
  await eventually(() => got.all.length >= 3 * CONVERSATIONS, 'the missed messages', 60_000);
  // And live again after the resume.
  for (const g of groups) await alice.api.postMessage(g, 'live 4');
  await eventually(() => got.all.length >= 4 * CONVERSATIONS, 'the live messages after the resume', 60_000);
  await eventually(() => bob.subscriptionCount === 7, 'resume subscriptions to end');

  for (const g of groups) {
    expect(got.bodies(g)).toEqual(['live 1', 'away 2', 'away 3', 'live 4']);
    expect(bob.lastSeq(g)).toBe(4);
  }
  expect(new Set(got.all.map((m) => m.id)).size).toBe(4 * CONVERSATIONS);
  expect(errors).toEqual([]);
  expect(bob.connectCount).toBe(2);
}, 180_000);
