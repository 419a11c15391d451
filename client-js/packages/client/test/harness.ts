// Runs a real stompline process for the SDK tests: the debug binary on
// ephemeral ports with a fresh data directory, restartable on the same
// address, plus a TCP proxy that can cut or stall the network, and
// registered users with SDK clients over `ws`.

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach } from 'vitest';
import { WebSocket } from 'ws';

import { StomplineClient, type ClientOptions, type IStompSocketLike, type Message, type User } from './sdk.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '../../../..');
export const WAIT_MS = 20_000;

/** The stompline binary: `STOMPLINE_BIN`, else the cargo debug build (built on demand). */
export function stomplineBinary(): string {
  const fromEnv = process.env.STOMPLINE_BIN;
  if (fromEnv) return fromEnv;
  const targetDir = process.env.CARGO_TARGET_DIR ? path.resolve(REPO, process.env.CARGO_TARGET_DIR) : path.join(REPO, 'target');
  const bin = path.join(targetDir, 'debug', 'stompline');
  if (!existsSync(bin)) {
    execFileSync('cargo', ['build', '--bin', 'stompline'], { cwd: REPO, stdio: 'inherit' });
  }
  return bin;
}

export interface ServerOptions {
  env?: Record<string, string>;
}

/** A stompline child process; `restart()` brings it back on the same address with the same data. */
export class Server {
  http = '';
  stomp = '';
  log = '';
  private child: ChildProcess | undefined;
  readonly dataDir = mkdtempSync(path.join(tmpdir(), 'stompline-sdk-'));

  private constructor(private readonly options: ServerOptions) {}

  static async start(options: ServerOptions = {}): Promise<Server> {
    const s = new Server(options);
    await s.spawn('127.0.0.1:0');
    return s;
  }

  get baseUrl(): string {
    return `http://${this.http}`;
  }

  private spawn(httpAddr: string): Promise<void> {
    const child = spawn(
      stomplineBinary(),
      ['serve', '--http-addr', httpAddr, '--stomp-addr', '127.0.0.1:0', '--data-dir', this.dataDir],
      {
        env: {
          // Settings from the caller's environment must not leak in.
          ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('STOMPLINE_'))),
          RUST_LOG: 'info',
          STOMPLINE_LOG_FORMAT: 'human',
          NO_COLOR: '1',
          // Cheap hashing keeps registration quick in a debug build.
          STOMPLINE_AUTH__ARGON2_MEMORY_KIB: '1024',
          STOMPLINE_AUTH__ARGON2_ITERATIONS: '1',
          // Suites register and log in many users from one address.
          STOMPLINE_RATE_LIMIT__ENABLED: 'false',
          // 1 s heart-beats, so a silent network is noticed in about 2 s.
          STOMPLINE_STOMP__HEARTBEAT_SEND_MS: '1000',
          STOMPLINE_STOMP__HEARTBEAT_RECV_MS: '1000',
          ...this.options.env,
        },
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    this.child = child;
    return new Promise((resolve, reject) => {
      let buf = '';
      const timer = setTimeout(() => reject(new Error(`stompline did not report its addresses:\n${this.log}`)), 60_000);
      child.stderr?.setEncoding('utf8');
      child.stderr?.on('data', (chunk: string) => {
        this.log += chunk;
        buf += chunk;
        const m = buf.match(/listening http=(\S+) stomp=(\S+)/);
        if (m && m[1] && m[2]) {
          buf = '';
          clearTimeout(timer);
          this.http = m[1];
          this.stomp = m[2];
          resolve();
        }
      });
      child.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`stompline exited (${code}) before listening:\n${this.log}`));
      });
    });
  }

  /** Stops gracefully (SIGTERM) and waits for the exit. */
  async stop(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      child.once('exit', () => resolve());
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), 15_000).unref();
    });
  }

  /** Stops and starts again on the same HTTP address with the same data directory. */
  async restart(): Promise<void> {
    await this.stop();
    await this.spawn(this.http);
  }

  async dispose(): Promise<void> {
    await this.stop();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/**
 * A TCP proxy in front of the server. `cut()` drops every connection and
 * refuses new ones; `stall()` keeps sockets open but forwards nothing (a
 * silent network); `dropReplies()` forwards to the server but swallows what
 * it answers; `restore()` goes back to normal.
 */
export class Proxy {
  private mode: 'open' | 'cut' | 'stall' | 'dropReplies' = 'open';
  private readonly pairs = new Set<[net.Socket, net.Socket]>();
  private server: net.Server | undefined;
  address = '';

  constructor(private readonly target: () => string) {}

  async start(): Promise<void> {
    this.server = net.createServer((client) => this.accept(client));
    await new Promise<void>((resolve) => this.server?.listen(0, '127.0.0.1', resolve));
    const a = this.server.address() as net.AddressInfo;
    this.address = `127.0.0.1:${a.port}`;
  }

  private accept(client: net.Socket): void {
    if (this.mode === 'cut') {
      client.destroy();
      return;
    }
    const [host, port] = this.target().split(':');
    const upstream = net.connect(Number(port), host);
    const pair: [net.Socket, net.Socket] = [client, upstream];
    this.pairs.add(pair);
    client.on('data', (d) => {
      if (this.mode === 'open' || this.mode === 'dropReplies') upstream.write(d);
    });
    upstream.on('data', (d) => {
      if (this.mode === 'open') client.write(d);
    });
    const close = () => {
      client.destroy();
      upstream.destroy();
      this.pairs.delete(pair);
    };
    client.on('close', close);
    upstream.on('close', close);
    client.on('error', close);
    upstream.on('error', close);
  }

  cut(): void {
    this.mode = 'cut';
    for (const [a, b] of this.pairs) {
      a.destroy();
      b.destroy();
    }
    this.pairs.clear();
  }

  stall(): void {
    this.mode = 'stall';
  }

  dropReplies(): void {
    this.mode = 'dropReplies';
  }

  restore(): void {
    this.mode = 'open';
  }

  get connections(): number {
    return this.pairs.size;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

export function unique(prefix: string): string {
  return `${prefix}-${randomBytes(5).toString('hex')}`.slice(0, 32);
}

/** An SDK client for `server` (or via `address`), over `ws`, with quick reconnects. */
export function sdk(baseAddress: string, extra: Partial<ClientOptions> = {}): StomplineClient {
  return new StomplineClient({
    baseUrl: `http://${baseAddress}`,
    webSocketFactory: (url, protocols) => new WebSocket(url, protocols) as unknown as IStompSocketLike,
    reconnect: { initialMs: 100, maxMs: 1_000 },
    heartbeatMs: 1_000,
    connectTimeoutMs: 3_000,
    gapFillMs: 300,
    ...extra,
  });
}

/** Registers a fresh user through `client`; returns the user and password. */
export async function registered(client: StomplineClient, prefix = 'sdk') {
  const username = unique(prefix);
  const password = `pw-${username}`;
  const user = await client.register({ username, password });
  return { user, username, password };
}

/** Polls until `probe()` is truthy. */
export async function eventually<T>(probe: () => T | Promise<T>, what: string, ms = WAIT_MS): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Collects the `message` events of a client, per conversation. */
export function inbox(client: StomplineClient): { all: Message[]; bodies: (cid: string) => string[] } {
  const all: Message[] = [];
  client.on('message', (m) => all.push(m));
  return { all, bodies: (cid) => all.filter((m) => m.conversationId === cid).map((m) => m.body) };
}

/**
 * Per-test cleanup: `defer` runs its functions after each test (last first),
 * `track` closes a client then. Call once at the top of a test file.
 */
export function lifecycle() {
  const pending: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const f of pending.splice(0).reverse()) await f();
  });
  const defer = (f: () => Promise<void> | void) => pending.push(f);
  return {
    defer,
    track(c: StomplineClient): StomplineClient {
      defer(() => c.close());
      return c;
    },
    async server(options?: ServerOptions): Promise<Server> {
      const s = await Server.start(options);
      defer(() => s.dispose());
      return s;
    },
    async proxy(server: Server): Promise<Proxy> {
      const p = new Proxy(() => server.http);
      await p.start();
      defer(() => p.close());
      return p;
    },
  };
}

export interface Pair {
  alice: StomplineClient;
  bob: StomplineClient;
  bobUser: User;
}

/** Registers alice and bob, each with a client on its own address (the server's, or a proxy's). */
export async function pair(
  life: ReturnType<typeof lifecycle>,
  server: Server,
  o: { alice?: string; bob?: string; aliceOptions?: Partial<ClientOptions>; bobOptions?: Partial<ClientOptions> } = {},
): Promise<Pair> {
  const alice = life.track(sdk(o.alice ?? server.http, o.aliceOptions));
  const bob = life.track(sdk(o.bob ?? server.http, o.bobOptions));
  await registered(alice, 'alice');
  const { user: bobUser } = await registered(bob, 'bob');
  return { alice, bob, bobUser };
}

/**
 * `pair` plus their direct conversation, bob's inbox, and both clients
 * started and connected.
 */
export async function chatting(life: ReturnType<typeof lifecycle>, server: Server, o: Parameters<typeof pair>[2] = {}) {
  const p = await pair(life, server, o);
  const conv = await p.alice.api.direct(p.bobUser.id);
  const got = inbox(p.bob);
  await p.alice.start();
  await p.bob.start();
  await eventually(() => p.alice.isConnected && p.bob.isConnected, 'both connected');
  return { ...p, conv, got };
}
