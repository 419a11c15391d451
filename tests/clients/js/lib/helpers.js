// Shared helpers for the stompjs suite. Nothing here starts a server: the
// addresses come from STOMPLINE_HTTP and STOMPLINE_STOMP (host:port).

import { randomBytes } from 'node:crypto';
import { Client } from '@stomp/stompjs';
import { WebSocket } from 'ws';

export const HTTP = requiredEnv('STOMPLINE_HTTP');
export const STOMP = requiredEnv('STOMPLINE_STOMP');
export const WS_URL = `ws://${HTTP}/ws`;
export const PROTOCOLS = ['v12.stomp', 'v11.stomp', 'v10.stomp'];

/** How long any single expectation may wait. */
export const WAIT_MS = 10_000;

function requiredEnv(name) {
  const v = process.env[name];
  if (!v) {
    throw new Error(`${name} is not set: run this suite through tests/real_clients.rs or set it to host:port of a running stompline`);
  }
  return v;
}

/** A fresh name that is a valid username and a unique destination part. */
export function unique(prefix) {
  return `${prefix}-${randomBytes(5).toString('hex')}`;
}

/** Registers a new user over REST; returns `{ id, username, password, accessToken, refreshToken }`. */
export async function register(prefix = 'js') {
  const username = unique(prefix).slice(0, 32);
  const password = `password-${username}`;
  const res = await fetch(`http://${HTTP}/api/auth/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username, password }),
  });
  const text = await res.text();
  if (res.status !== 201) {
    throw new Error(`register ${username}: HTTP ${res.status} ${text}`);
  }
  const body = JSON.parse(text);
  return {
    id: body.user.id,
    username,
    password,
    accessToken: body.accessToken,
    refreshToken: body.refreshToken,
  };
}

/** Rejects after `ms` with `what` in the message unless `promise` settles first. */
export function within(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Builds an (inactive) stompjs Client over `ws` with automatic reconnection
 * off and hooks that record what happened.
 */
export function makeClient({ url = WS_URL, protocols = PROTOCOLS, ...config } = {}) {
  const client = new Client({
    webSocketFactory: () => new WebSocket(url, protocols),
    reconnectDelay: 0,
    heartbeatIncoming: 0,
    heartbeatOutgoing: 0,
    debug: process.env.STOMPJS_DEBUG ? (m) => console.error(m) : () => {},
    ...config,
  });
  return client;
}

/**
 * Activates a client and resolves with `{ client, connected }` once CONNECTED
 * arrives; rejects on an ERROR frame or a close before that.
 */
export function connect(options = {}) {
  const client = makeClient(options);
  const done = new Promise((resolve, reject) => {
    client.onConnect = (frame) => resolve({ client, connected: frame });
    client.onStompError = (frame) =>
      reject(Object.assign(new Error(`ERROR frame: ${frame.headers.message}`), { frame }));
    client.onWebSocketClose = (evt) =>
      reject(new Error(`socket closed before CONNECTED (code ${evt.code})`));
  });
  client.activate();
  return within(done, 'CONNECTED').catch(async (e) => {
    await client.deactivate({ force: true }).catch(() => {});
    throw e;
  });
}

/** Connects a freshly registered user with login/passcode = username/password. */
export async function connectUser(prefix, extra = {}) {
  const user = await register(prefix);
  const { client, connected } = await connect({
    connectHeaders: { login: user.username, passcode: user.password },
    ...extra,
  });
  return { user, client, connected };
}

/** Waits for the RECEIPT with id `receipt` (register before sending the frame). */
export function receiptFor(client, receipt) {
  return within(
    new Promise((resolve) => client.watchForReceipt(receipt, resolve)),
    `RECEIPT ${receipt}`,
  );
}

/** Subscribes and waits for the server to confirm the subscription. */
export async function subscribed(client, destination, mailbox, headers = {}) {
  const receipt = unique('sub');
  const got = receiptFor(client, receipt);
  const sub = client.subscribe(destination, (m) => mailbox.push(m), { ...headers, receipt });
  await got;
  return sub;
}

/** Collects MESSAGE frames and hands them out in order. */
export class Mailbox {
  constructor(name = 'mailbox') {
    this.name = name;
    this.items = [];
    this.waiters = [];
  }

  push(message) {
    const w = this.waiters.shift();
    if (w) w(message);
    else this.items.push(message);
  }

  /** The next message, waiting up to `ms`. A waiter that times out is withdrawn. */
  next(ms = WAIT_MS) {
    if (this.items.length > 0) return Promise.resolve(this.items.shift());
    return new Promise((resolve, reject) => {
      const waiter = (m) => {
        clearTimeout(timer);
        resolve(m);
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`timed out after ${ms} ms waiting for a message on ${this.name}`));
      }, ms);
      this.waiters.push(waiter);
    });
  }

  get size() {
    return this.items.length;
  }
}

/** Deactivates every client given, ignoring ones already closed. */
export async function closeAll(...clients) {
  await Promise.all(
    clients.filter(Boolean).map((c) => within(c.deactivate(), 'deactivate').catch(() => c.deactivate({ force: true }))),
  );
}
