// CONNECT over WebSocket with every credential form stompline accepts,
// heart-beat negotiation, and what stompjs sees when the server kicks it.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Versions } from '@stomp/stompjs';
import {
  HTTP,
  Mailbox,
  closeAll,
  connect,
  makeClient,
  register,
  subscribed,
  unique,
  within,
} from '../lib/helpers.js';

function assertConnected(connected, user) {
  assert.equal(connected.command, 'CONNECTED');
  assert.equal(connected.headers.version, '1.2');
  assert.equal(connected.headers['user-id'], user.id);
  assert.match(connected.headers.server ?? '', /^stompline\//);
  assert.ok(connected.headers.session, 'CONNECTED carries a session header');
  assert.match(connected.headers['heart-beat'] ?? '', /^\d+,\d+$/);
}

test('passcode = access token', async () => {
  const user = await register('jstok');
  const { client, connected } = await connect({
    // The login is not looked at when the passcode is a token.
    connectHeaders: { login: 'any-login', passcode: user.accessToken },
  });
  try {
    assertConnected(connected, user);
  } finally {
    await closeAll(client);
  }
});

test('?access_token= on the upgrade URL with no passcode', async () => {
  const user = await register('jsurl');
  const { client, connected } = await connect({
    url: `ws://${HTTP}/ws?access_token=${encodeURIComponent(user.accessToken)}`,
    connectHeaders: {},
  });
  try {
    assertConnected(connected, user);
  } finally {
    await closeAll(client);
  }
});

test('login / password', async () => {
  const user = await register('jspw');
  const { client, connected } = await connect({
    connectHeaders: { login: user.username, passcode: user.password },
  });
  try {
    assertConnected(connected, user);
  } finally {
    await closeAll(client);
  }
});

test('Authorization: Bearer header on CONNECT', async () => {
  const user = await register('jsbearer');
  const { client, connected } = await connect({
    connectHeaders: { Authorization: `Bearer ${user.accessToken}` },
  });
  try {
    assertConnected(connected, user);
  } finally {
    await closeAll(client);
  }
});

test('wrong password: ERROR "authentication failed", then the socket closes', async () => {
  const user = await register('jsbad');
  const client = makeClient({ connectHeaders: { login: user.username, passcode: 'not-the-password' } });
  const error = new Promise((resolve) => {
    client.onStompError = resolve;
  });
  const closed = new Promise((resolve) => {
    client.onWebSocketClose = resolve;
  });
  let connectedCalled = false;
  client.onConnect = () => {
    connectedCalled = true;
  };
  client.activate();
  const frame = await within(error, 'ERROR frame');
  assert.equal(frame.headers.message, 'authentication failed');
  await within(closed, 'socket close');
  assert.equal(connectedCalled, false);
  await client.deactivate();
});

test('a client limited to STOMP 1.1 gets 1.1', async () => {
  const user = await register('jsv11');
  const { client, connected } = await connect({
    protocols: ['v11.stomp', 'v10.stomp'],
    stompVersions: new Versions(['1.1', '1.0']),
    connectHeaders: { login: user.username, passcode: user.password },
  });
  try {
    assert.equal(connected.headers.version, '1.1');
    assert.equal(connected.headers['user-id'], user.id);
  } finally {
    await closeAll(client);
  }
});

test('heart-beats: CONNECTED advertises them and the server sends them while idle', async () => {
  const user = await register('jshb');
  const client = makeClient({
    connectHeaders: { login: user.username, passcode: user.password },
    heartbeatIncoming: 1000,
    heartbeatOutgoing: 1000,
  });
  let beats = 0;
  let beatWaiter = null;
  client.onHeartbeatReceived = () => {
    beats += 1;
    if (beatWaiter && beats >= 2) beatWaiter();
  };
  let lost = false;
  client.onHeartbeatLost = () => {
    lost = true;
  };
  let closes = 0;
  client.onWebSocketClose = () => {
    closes += 1;
  };
  const connected = await within(
    new Promise((resolve, reject) => {
      client.onConnect = resolve;
      client.onStompError = (f) => reject(new Error(f.headers.message));
      client.activate();
    }),
    'CONNECTED',
  );
  try {
    const [sx, sy] = connected.headers['heart-beat'].split(',').map(Number);
    // The server will send (sx > 0) and wants beats from us (sy > 0).
    assert.ok(sx > 0, `server offers to send heart-beats: ${connected.headers['heart-beat']}`);
    assert.ok(sy > 0, `server asks for heart-beats: ${connected.headers['heart-beat']}`);
    // We asked for one every 1000 ms: the agreed interval is max(sx, 1000).
    const every = Math.max(sx, 1000);
    await within(
      new Promise((resolve) => {
        beatWaiter = resolve;
        if (beats >= 2) resolve();
      }),
      'two server heart-beats',
      every * 3 + 5000,
    );
    assert.equal(lost, false);
    assert.equal(closes, 0, 'the idle connection stayed open');
    assert.equal(client.connected, true);
  } finally {
    await closeAll(client);
  }
});

test('a malformed frame: stompjs reports the ERROR, the socket closes, and it reconnects', async () => {
  const user = await register('jskick');
  const client = makeClient({
    connectHeaders: { login: user.username, passcode: user.password },
    reconnectDelay: 100,
  });
  const connects = new Mailbox('CONNECTED');
  const errors = new Mailbox('ERROR');
  const closes = new Mailbox('close');
  client.onConnect = (f) => connects.push(f);
  client.onStompError = (f) => errors.push(f);
  client.onWebSocketClose = (e) => closes.push(e);
  client.activate();
  try {
    const first = await connects.next();
    const firstSocket = client.webSocket;
    client.webSocket.send('BOGUS\n\n\0');
    const err = await errors.next();
    assert.equal(err.command, 'ERROR');
    assert.equal(err.headers.message, 'malformed frame');
    await closes.next();
    // stompjs reconnects by itself: a new STOMP session on a new socket.
    const second = await connects.next();
    assert.notEqual(client.webSocket, firstSocket);
    assert.notEqual(second.headers.session, first.headers.session);
    assert.equal(second.headers['user-id'], user.id);
    // And the new session works.
    const inbox = new Mailbox('after reconnect');
    const topic = `/topic/${unique('kick')}`;
    await subscribed(client, topic, inbox);
    client.publish({ destination: topic, body: 'back again' });
    assert.equal((await inbox.next()).body, 'back again');
  } finally {
    await client.deactivate();
  }
});
