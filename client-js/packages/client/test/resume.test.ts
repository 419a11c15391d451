// Reconnect and resume against a real server: a restart, and a network
// that goes silent, lose nothing and duplicate nothing.

import { describe, expect, test } from 'vitest';

import { chatting, eventually, inbox, lifecycle, pair, registered, sdk } from './harness.ts';

const life = lifecycle();

describe('resume', () => {
  test('a server restart loses nothing and duplicates nothing', async () => {
    const server = await life.server();
    const { alice, bob, conv, got } = await chatting(life, server);
    const states: string[] = [];
    bob.on('connection', (s) => states.push(s));

    for (let i = 1; i <= 5; i++) alice.send(conv.id, `before ${i}`);
    await eventually(() => got.bodies(conv.id).length === 5, 'the first five messages');

    await server.stop();
    await eventually(() => !bob.isConnected && !alice.isConnected, 'both notice the server is gone');
    // Typed while the server is down: they wait in the outbox.
    for (let i = 1; i <= 5; i++) alice.send(conv.id, `during ${i}`);
    expect(alice.unsent()).toHaveLength(5);
    await server.restart();

    const want = [1, 2, 3, 4, 5].map((i) => `before ${i}`).concat([1, 2, 3, 4, 5].map((i) => `during ${i}`));
    await eventually(() => got.bodies(conv.id).length >= 10, 'all ten messages at bob');
    await eventually(() => alice.unsent().length === 0, "alice's outbox to empty");
    expect(got.bodies(conv.id)).toEqual(want);
    expect(got.all.map((m) => m.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    const history = await bob.api.messages(conv.id, { limit: 100 });
    expect(history.map((m) => m.body)).toEqual(want);
    expect(states).toContain('reconnecting');
    expect(bob.connectCount).toBeGreaterThanOrEqual(2);
    expect(bob.lastSeq(conv.id)).toBe(10);
  });

  test('a silent network drop resumes from the last seq seen', async () => {
    const server = await life.server();
    const proxy = await life.proxy(server);
    // Bob reaches the server only through the proxy.
    const { alice, bob, bobUser } = await pair(life, server, { bob: proxy.address });
    const group = await alice.api.createGroup('resume', [bobUser.id]);
    const got = inbox(bob);
    await bob.start();
    await eventually(() => bob.isConnected, 'bob connected');

    for (let i = 1; i <= 3; i++) await alice.api.postMessage(group.id, `m${i}`);
    await eventually(() => got.bodies(group.id).length === 3, 'the first three');

    // The network goes quiet: no FIN, no RST, nothing. Heart-beats notice.
    proxy.stall();
    for (let i = 4; i <= 8; i++) await alice.api.postMessage(group.id, `m${i}`);
    await eventually(() => !bob.isConnected, 'bob to notice the dead connection');
    expect(got.bodies(group.id)).toEqual(['m1', 'm2', 'm3']);
    proxy.restore();

    await eventually(() => got.bodies(group.id).length >= 8, 'the missed messages');
    for (let i = 9; i <= 10; i++) await alice.api.postMessage(group.id, `m${i}`);
    await eventually(() => got.bodies(group.id).length >= 10, 'live messages after the resume');
    expect(got.bodies(group.id)).toEqual(['m1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7', 'm8', 'm9', 'm10']);
    expect(new Set(got.all.map((m) => m.id)).size).toBe(10);
  });

  test('reconnects use one timer and one socket, with capped delays', async () => {
    const server = await life.server();
    const proxy = await life.proxy(server);
    const client = life.track(sdk(proxy.address, { reconnect: { initialMs: 50, maxMs: 400 } }));
    await registered(client, 'bo');
    await client.start();
    await eventually(() => client.isConnected, 'connected');
    proxy.cut();
    // While cut every attempt is refused; count the attempts.
    let attempts = 0;
    client.on('connection', (s) => {
      if (s === 'reconnecting') attempts += 1;
    });
    await eventually(() => !client.isConnected, 'disconnected');
    await new Promise((r) => setTimeout(r, 2_000));
    proxy.restore();
    // Asking again while an attempt is under way never opens a second socket.
    client.reconnectNow();
    client.reconnectNow();
    await eventually(() => client.isConnected, 'connected again');
    await new Promise((r) => setTimeout(r, 500));
    expect(client.connectCount).toBe(2);
    expect(proxy.connections).toBe(1);
    // 2 s of refusals with delays between 25 and 400 ms: a handful of
    // attempts, not a storm.
    expect(attempts).toBeLessThan(40);
  });
});
