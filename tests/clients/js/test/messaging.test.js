// Topics, queues, transactions, receipts and bodies through stompjs.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Mailbox, closeAll, connectUser, receiptFor, subscribed, unique, within } from '../lib/helpers.js';

test('topic: two subscribers get the body and the user headers', async () => {
  const a = await connectUser('jstopa');
  const b = await connectUser('jstopb');
  try {
    const topic = `/topic/${unique('js-room')}`;
    const inboxA = new Mailbox('a');
    const inboxB = new Mailbox('b');
    await subscribed(a.client, topic, inboxA);
    await subscribed(b.client, topic, inboxB);
    a.client.publish({
      destination: topic,
      body: 'hello, wörld ✓',
      headers: {
        'content-type': 'text/plain;charset=utf-8',
        'x-trace': 'abc-123',
        // Needs STOMP 1.2 escaping both ways. (No backslash before a 'c':
        // stompjs 7 unescapes with sequential replaces, so it would read the
        // escaped '\\\\c' back as '\\:'.)
        'x-tricky': 'a:b\\x\nd',
      },
    });
    for (const [name, inbox] of [['a', inboxA], ['b', inboxB]]) {
      const m = await inbox.next();
      assert.equal(m.command, 'MESSAGE', name);
      assert.equal(m.body, 'hello, wörld ✓', name);
      assert.equal(m.headers.destination, topic, name);
      assert.equal(m.headers['content-type'], 'text/plain;charset=utf-8', name);
      assert.equal(m.headers['x-trace'], 'abc-123', name);
      assert.equal(m.headers['x-tricky'], 'a:b\\x\nd', name);
      assert.ok(m.headers['message-id'], `${name}: message-id`);
      assert.ok(m.headers.subscription, `${name}: subscription`);
      assert.equal(m.headers.ack, undefined, `${name}: no ack header on an auto subscription`);
    }
  } finally {
    await closeAll(a.client, b.client);
  }
});

test("queue with ack:'client-individual': a NACKed message is redelivered to the other subscriber", async () => {
  const a = await connectUser('jsqa');
  const b = await connectUser('jsqb');
  try {
    const queue = `/queue/${unique('js-work')}`;
    // One mailbox for both subscriptions, tagged by who got the message.
    const inbox = new Mailbox('queue');
    const tagged = (who) => ({ push: (m) => inbox.push({ who, m }) });
    await subscribed(a.client, queue, tagged('a'), { ack: 'client-individual' });
    await subscribed(b.client, queue, tagged('b'), { ack: 'client-individual' });
    a.client.publish({ destination: queue, body: 'job-1', headers: { 'x-job': '1' } });

    const first = await inbox.next();
    assert.equal(first.m.body, 'job-1');
    assert.ok(first.m.headers.ack, 'client-individual deliveries carry an ack header');
    assert.notEqual(first.m.headers.redelivered, 'true');
    first.m.nack();

    const second = await inbox.next();
    assert.notEqual(second.who, first.who, 'redelivered to the other subscriber');
    assert.equal(second.m.body, 'job-1');
    assert.equal(second.m.headers['x-job'], '1');
    assert.equal(second.m.headers.redelivered, 'true');
    const acked = unique('ack');
    const ackReceipt = receiptFor(second.who === 'a' ? a.client : b.client, acked);
    second.m.ack({ receipt: acked });
    await ackReceipt;

    // Nothing else is pending: the next job is delivered once, not redelivered.
    a.client.publish({ destination: queue, body: 'job-2' });
    const third = await inbox.next();
    assert.equal(third.m.body, 'job-2');
    assert.notEqual(third.m.headers.redelivered, 'true');
    third.m.ack();
    assert.equal(inbox.size, 0);
  } finally {
    await closeAll(a.client, b.client);
  }
});

test('transactions: commit delivers, abort discards', async () => {
  const pub = await connectUser('jstxp');
  const sub = await connectUser('jstxs');
  try {
    const topic = `/topic/${unique('js-tx')}`;
    const inbox = new Mailbox('sub');
    await subscribed(sub.client, topic, inbox);

    const tx = pub.client.begin();
    pub.client.publish({ destination: topic, body: 'in-tx', headers: { transaction: tx.id } });
    // A message outside the transaction overtakes the held one.
    pub.client.publish({ destination: topic, body: 'outside' });
    assert.equal((await inbox.next()).body, 'outside');
    tx.commit();
    assert.equal((await inbox.next()).body, 'in-tx');

    const tx2 = pub.client.begin();
    pub.client.publish({ destination: topic, body: 'aborted', headers: { transaction: tx2.id } });
    tx2.abort();
    pub.client.publish({ destination: topic, body: 'after-abort' });
    assert.equal((await inbox.next()).body, 'after-abort');
    assert.equal(inbox.size, 0);
  } finally {
    await closeAll(pub.client, sub.client);
  }
});

test('receipts: watchForReceipt on SUBSCRIBE, SEND, UNSUBSCRIBE and DISCONNECT', async () => {
  const { client } = await connectUser('jsrcpt');
  const topic = `/topic/${unique('js-rcpt')}`;
  const inbox = new Mailbox('self');

  const r1 = unique('r');
  const subReceipt = receiptFor(client, r1);
  const sub = client.subscribe(topic, (m) => inbox.push(m), { receipt: r1 });
  assert.equal((await subReceipt).headers['receipt-id'], r1);

  const r2 = unique('r');
  const sendReceipt = receiptFor(client, r2);
  client.publish({ destination: topic, body: 'with receipt', headers: { receipt: r2 } });
  assert.equal((await sendReceipt).headers['receipt-id'], r2);
  assert.equal((await inbox.next()).body, 'with receipt');

  const r3 = unique('r');
  const unsubReceipt = receiptFor(client, r3);
  sub.unsubscribe({ receipt: r3 });
  await unsubReceipt;

  // deactivate() sends DISCONNECT with a receipt and waits for it.
  let disconnected = null;
  client.onDisconnect = (f) => {
    disconnected = f;
  };
  await within(client.deactivate(), 'deactivate');
  assert.ok(disconnected, 'onDisconnect called with the RECEIPT of DISCONNECT');
  assert.equal(disconnected.command, 'RECEIPT');
});

test('binaryBody with NULs and high bytes round-trips', async () => {
  const { client } = await connectUser('jsbin');
  try {
    const topic = `/topic/${unique('js-bin')}`;
    const inbox = new Mailbox('bin');
    await subscribed(client, topic, inbox);
    const bytes = new Uint8Array(512);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 37) & 0xff;
    bytes.set([0, 0, 0x80, 0xff, 0xfe, 0xc3, 0x28, 0x00, 0x0a, 0x0d], 0);
    client.publish({
      destination: topic,
      binaryBody: bytes,
      headers: { 'content-type': 'application/octet-stream' },
    });
    const m = await inbox.next();
    assert.equal(m.headers['content-type'], 'application/octet-stream');
    assert.equal(m.headers['content-length'], String(bytes.length));
    assert.deepEqual(Buffer.from(m.binaryBody), Buffer.from(bytes));
  } finally {
    await closeAll(client);
  }
});

test('a 200 KiB body round-trips', async () => {
  const a = await connectUser('jsbiga');
  const b = await connectUser('jsbigb');
  try {
    const topic = `/topic/${unique('js-big')}`;
    const inbox = new Mailbox('big');
    await subscribed(b.client, topic, inbox);
    const unit = 'lorem ipsum dolor sit amet – ünïcødé ✓ 0123456789\n';
    let body = '';
    while (Buffer.byteLength(body) < 200 * 1024) body += unit;
    a.client.publish({ destination: topic, body });
    const m = await inbox.next(30_000);
    assert.equal(m.headers['content-length'], String(Buffer.byteLength(body)));
    assert.equal(m.body.length, body.length);
    assert.ok(m.body === body, 'body is identical');
  } finally {
    await closeAll(a.client, b.client);
  }
});

test('SEND to a reserved destination: an error event on /user/queue/errors with receipt-id, no RECEIPT', async () => {
  const { client } = await connectUser('jserr');
  try {
    const errors = new Mailbox('errors');
    await subscribed(client, '/user/queue/errors', errors);
    const unhandled = [];
    client.onUnhandledReceipt = (f) => unhandled.push(f);
    let stompError = null;
    client.onStompError = (f) => {
      stompError = f;
    };

    const failed = unique('bad');
    let gotReceipt = false;
    client.watchForReceipt(failed, () => {
      gotReceipt = true;
    });
    client.publish({ destination: '/topic/chat/1', body: 'hello?', headers: { receipt: failed } });
    const m = await errors.next();
    assert.equal(m.headers.event, 'error');
    assert.equal(m.headers['receipt-id'], failed);
    assert.ok(m.headers.code, 'code header');
    assert.ok(m.headers.message, 'message header');
    const body = JSON.parse(m.body);
    assert.equal(body.code, m.headers.code);
    assert.equal(typeof body.message, 'string');

    // The connection survives; a later frame's receipt arrives and the
    // refused SEND's never did.
    const later = unique('ok');
    const ok = receiptFor(client, later);
    client.publish({ destination: `/topic/${unique('js-fine')}`, body: 'fine', headers: { receipt: later } });
    await ok;
    assert.equal(gotReceipt, false, 'a refused SEND gets no RECEIPT');
    assert.equal(unhandled.length, 0);
    assert.equal(stompError, null);
    assert.equal(client.connected, true);
  } finally {
    await closeAll(client);
  }
});
