// The chat client: one STOMP connection kept alive across drops, resumed per
// conversation from the last seq seen, with de-duplication, ordered delivery,
// typed events, typing throttling and an outbox of unsent messages.

import { Client, TickerStrategy, type IFrame, type IMessage, type IStompSocket, type StompSubscription } from '@stomp/stompjs';

import { Api, ApiError, type ApiOptions } from './api.ts';
import { backoffDelay, type BackoffOptions } from './backoff.ts';
import { Emitter } from './emitter.ts';
import { memoryStorage, newClientMsgId, Outbox, type OutboxStorage } from './outbox.ts';
import type {
  ChatError,
  ClientEvents,
  ConnectionState,
  Conversation,
  Message,
  OutboxItem,
  Presence,
  StoredTokens,
  TypingEvent,
  UnreadEntry,
  User,
  WatermarkEvent,
} from './types.ts';

/** Opens a WebSocket; under Node pass one built on `ws`. */
export type WebSocketFactory = (url: string, protocols: string[]) => IStompSocket;

export interface ClientOptions extends Omit<ApiOptions, 'onTokens'> {
  /** `ws(s)://host:port/ws`; derived from `baseUrl` (or the page's origin) when absent. */
  wsUrl?: string;
  /** Defaults to the global `WebSocket` (browsers, Node 22+). */
  webSocketFactory?: WebSocketFactory;
  /** Where unsent messages are kept (default: memory). Use `webStorage(...)` in browsers. */
  outboxStorage?: OutboxStorage;
  reconnect?: BackoffOptions;
  /** At most one `typing:true` per conversation per this many ms (default 3000; the server expires typing after 5 s). */
  typingThrottleMs?: number;
  /** STOMP heart-beat both ways in ms (default 10000; 0 disables). */
  heartbeatMs?: number;
  /** How long an out-of-order message waits for the gap to fill before the history is fetched (default 1000 ms). */
  gapFillMs?: number;
  /** How long a connection attempt may take to reach CONNECTED (default 15000 ms). */
  connectTimeoutMs?: number;
  /** Tokens kept from an earlier session. */
  tokens?: StoredTokens | null;
  debug?: (line: string) => void;
}

const PROTOCOLS = ['v12.stomp', 'v11.stomp', 'v10.stomp'];
/** Send errors worth retrying later rather than giving up. */
const RETRYABLE = new Set(['rate_limited', 'unavailable']);
const SEEN_CAP = 10_000;

interface Tracked {
  /** Highest seq handed to the application; the next SUBSCRIBE resumes after it. */
  delivered: number;
  /** Messages that arrived ahead of a gap, by seq. */
  pending: Map<number, Message>;
  subs: StompSubscription[];
  gapTimer: ReturnType<typeof setTimeout> | undefined;
  filling: boolean;
}

export class StomplineClient {
  readonly api: Api;
  private readonly events = new Emitter<ClientEvents>();
  private readonly outbox: Outbox;
  private readonly convs = new Map<string, Tracked>();
  private readonly seen = new Set<string>();
  private readonly typingSent = new Map<string, number>();
  private readonly readSent = new Map<string, number>();
  private readonly wsUrl: string;
  private readonly factory: WebSocketFactory;
  private stomp: Client | undefined;
  private connected = false;
  private running = false;
  private attempt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private fastRetry = false;
  private forceRefresh = false;
  private presence: 'online' | 'away' | undefined;
  private readonly onOnline = () => this.reconnectNow();
  /** Current connection state; also emitted as `connection`. */
  state: ConnectionState = 'idle';
  /** How many STOMP connections were established (for diagnostics and tests). */
  connectCount = 0;

  constructor(private readonly options: ClientOptions) {
    this.api = new Api({ ...options, onTokens: (t) => this.events.emit('tokens', t) });
    if (options.tokens) this.api.tokens.set(options.tokens);
    this.outbox = new Outbox(options.outboxStorage ?? memoryStorage());
    this.wsUrl = options.wsUrl ?? deriveWsUrl(options.baseUrl);
    this.factory =
      options.webSocketFactory ??
      ((url, protocols) => {
        const WS = (globalThis as { WebSocket?: new (u: string, p: string[]) => IStompSocket }).WebSocket;
        if (!WS) throw new Error('no global WebSocket: pass webSocketFactory (e.g. built on the ws package)');
        return new WS(url, protocols);
      });
  }

  /** Subscribes to an event; returns the function that unsubscribes. */
  on<K extends keyof ClientEvents>(event: K, handler: (value: ClientEvents[K]) => void): () => void {
    return this.events.on(event, handler);
  }

  /** The signed-in user's id, once known. */
  get userId(): string | undefined {
    return this.api.tokens.current?.userId;
  }

  // ---- accounts ----

  login(input: { username?: string; email?: string; password: string }): Promise<User> {
    return this.api.login(input);
  }

  register(input: { username: string; password: string; email?: string; displayName?: string }): Promise<User> {
    return this.api.register(input);
  }

  requestOtp(input: { email: string } | { phone: string }): Promise<void> {
    return this.api.requestOtp(input);
  }

  verifyOtp(input: ({ email: string } | { phone: string }) & { code: string }): Promise<User> {
    return this.api.verifyOtp(input);
  }

  /** Closes the connection, revokes the session and forgets the tokens. */
  async logout(): Promise<void> {
    this.close();
    await this.api.logout();
  }

  // ---- connection ----

  /**
   * Loads the conversation list, follows every conversation from its current
   * `lastSeq`, and connects. Returns the list. When the server cannot be
   * reached it connects anyway (the connection retries; the outbox waits)
   * and returns an empty list; an HTTP error (such as 401) is thrown.
   */
  async start(): Promise<Conversation[]> {
    let list: Conversation[] = [];
    try {
      list = await this.api.conversations();
    } catch (e) {
      if (e instanceof ApiError) throw e;
    }
    for (const c of list) this.watch(c.id, c.lastSeq);
    this.connect();
    return list;
  }

  /** Opens the STOMP connection and keeps it open until `close()`. */
  connect(): void {
    if (this.running) return;
    this.running = true;
    const w = globalThis as { addEventListener?: (t: string, f: () => void) => void };
    w.addEventListener?.('online', this.onOnline);
    void this.open();
  }

  /** Closes the connection for good (the outbox is kept). */
  close(): void {
    this.running = false;
    const w = globalThis as { removeEventListener?: (t: string, f: () => void) => void };
    w.removeEventListener?.('online', this.onOnline);
    this.clearTimers();
    for (const c of this.convs.values()) {
      if (c.gapTimer) clearTimeout(c.gapTimer);
      c.gapTimer = undefined;
      c.subs = [];
    }
    const s = this.stomp;
    this.stomp = undefined;
    this.connected = false;
    if (s) void s.deactivate();
    this.api.tokens.stop();
    this.setState('closed');
  }

  /** Skips the remaining backoff and reconnects now (e.g. the network came back). */
  reconnectNow(): void {
    if (!this.running || this.stomp) return;
    this.clearTimers();
    this.attempt = 0;
    void this.open();
  }

  get isConnected(): boolean {
    return this.connected;
  }

  // ---- conversations ----

  /** Follows a conversation: its events are delivered from `sinceSeq + 1` on, in order. */
  watch(conversationId: string, sinceSeq = 0): void {
    let c = this.convs.get(conversationId);
    if (c) {
      return;
    }
    c = { delivered: sinceSeq, pending: new Map(), subs: [], gapTimer: undefined, filling: false };
    this.convs.set(conversationId, c);
    if (this.connected && this.stomp) this.subscribeConversation(this.stomp, conversationId, c);
  }

  unwatch(conversationId: string): void {
    const c = this.convs.get(conversationId);
    if (!c) return;
    this.convs.delete(conversationId);
    if (c.gapTimer) clearTimeout(c.gapTimer);
    if (this.connected) for (const s of c.subs) s.unsubscribe();
  }

  /** The highest seq delivered to the application for a conversation. */
  lastSeq(conversationId: string): number {
    return this.convs.get(conversationId)?.delivered ?? 0;
  }

  // ---- sending ----

  /**
   * Queues a message: it is sent now if connected, else on the next
   * connection, and retried with the same `clientMsgId` until a RECEIPT
   * confirms it is durable. Resolves the item at once (for optimistic display).
   */
  send(conversationId: string, body: string): OutboxItem {
    const item: OutboxItem = {
      clientMsgId: newClientMsgId(),
      conversationId,
      body,
      createdAt: new Date().toISOString(),
      attempts: 0,
      state: 'pending',
    };
    this.outbox.add(item);
    this.emitOutbox();
    if (this.connected && this.stomp) this.transmit(this.stomp, item);
    return { ...item };
  }

  /** Unsent messages (pending or failed), oldest first. */
  unsent(): OutboxItem[] {
    return this.outbox.all();
  }

  /** Tries a failed message again. */
  retry(clientMsgId: string): void {
    const item = this.outbox.get(clientMsgId);
    if (!item) return;
    this.outbox.update(clientMsgId, { state: 'pending', error: undefined });
    this.emitOutbox();
    const fresh = this.outbox.get(clientMsgId);
    if (fresh && this.connected && this.stomp) this.transmit(this.stomp, fresh);
  }

  /** Drops an unsent message. */
  discard(clientMsgId: string): void {
    if (this.outbox.remove(clientMsgId)) this.emitOutbox();
  }

  /**
   * Tells the others you are typing (throttled: at most one `typing:true`
   * per conversation per `typingThrottleMs`) or stopped. Returns whether a
   * frame was sent.
   */
  typing(conversationId: string, typing = true): boolean {
    const now = Date.now();
    const last = this.typingSent.get(conversationId);
    if (typing) {
      if (last !== undefined && now - last < (this.options.typingThrottleMs ?? 3_000)) return false;
    } else if (last === undefined) {
      return false;
    }
    if (!this.connected || !this.stomp) return false;
    if (typing) this.typingSent.set(conversationId, now);
    else this.typingSent.delete(conversationId);
    this.publish(this.stomp, '/app/chat.typing', { conversationId, typing });
    return true;
  }

  /** Marks everything up to `upToSeq` read (sent once per new watermark). */
  markRead(conversationId: string, upToSeq: number): void {
    if (upToSeq <= (this.readSent.get(conversationId) ?? 0)) return;
    this.readSent.set(conversationId, upToSeq);
    if (this.connected && this.stomp) {
      this.publish(this.stomp, '/app/chat.read', { conversationId, upToSeq });
    } else {
      this.api.markRead(conversationId, upToSeq).catch(() => this.readSent.delete(conversationId));
    }
  }

  /** Sets your presence; kept and re-sent after a reconnect. */
  setPresence(status: 'online' | 'away'): void {
    this.presence = status;
    if (this.connected && this.stomp) this.publish(this.stomp, '/app/presence.set', { status });
  }

  // ---- internals: connection ----

  private setState(s: ConnectionState): void {
    if (this.state === s) return;
    this.state = s;
    this.events.emit('connection', s);
  }

  private clearTimers(): void {
    if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    this.reconnectTimer = undefined;
    this.retryTimer = undefined;
  }

  private async open(): Promise<void> {
    if (!this.running || this.stomp) return;
    this.setState(this.connectCount === 0 ? 'connecting' : 'reconnecting');
    let token: string;
    try {
      if (this.forceRefresh) {
        this.forceRefresh = false;
        token = (await this.api.tokens.refresh()).accessToken;
      } else {
        token = await this.api.tokens.accessToken();
      }
    } catch {
      if (!this.api.tokens.current) {
        // Signed out (refresh token revoked): nothing to reconnect with.
        this.close();
        return;
      }
      this.scheduleReconnect();
      return;
    }
    if (!this.running || this.stomp) return;
    const hb = this.options.heartbeatMs ?? 10_000;
    const inBrowser = typeof (globalThis as { window?: unknown }).window !== 'undefined' && typeof Worker !== 'undefined';
    const stomp = new Client({
      webSocketFactory: () => this.factory(this.wsUrl, PROTOCOLS),
      connectHeaders: { Authorization: `Bearer ${token}` },
      reconnectDelay: 0,
      heartbeatIncoming: hb,
      heartbeatOutgoing: hb,
      // Timers in background tabs are throttled; a worker keeps heart-beats on time.
      heartbeatStrategy: inBrowser ? TickerStrategy.Worker : TickerStrategy.Interval,
      connectionTimeout: this.options.connectTimeoutMs ?? 15_000,
      discardWebsocketOnCommFailure: true,
      debug: this.options.debug ?? (() => {}),
    });
    this.stomp = stomp;
    stomp.onConnect = () => {
      if (this.stomp !== stomp) return;
      this.attempt = 0;
      this.connected = true;
      this.connectCount += 1;
      this.onConnected(stomp);
    };
    stomp.onStompError = (frame: IFrame) => {
      if (this.stomp !== stomp) return;
      const message = frame.headers.message ?? '';
      if (message === 'token expired') {
        // Expected on a long session: come back at once with a fresh token.
        this.forceRefresh = true;
        this.fastRetry = this.attempt < 2;
      } else if (message === 'authentication failed') {
        this.forceRefresh = true;
      } else if (message === 'session revoked') {
        this.api.tokens.set(null);
        this.close();
      }
    };
    stomp.onWebSocketClose = () => {
      if (this.stomp !== stomp) return;
      this.stomp = undefined;
      this.connected = false;
      this.typingSent.clear();
      for (const c of this.convs.values()) c.subs = [];
      void stomp.deactivate();
      this.scheduleReconnect();
    };
    try {
      stomp.activate();
    } catch {
      this.stomp = undefined;
      this.scheduleReconnect();
    }
  }

  /** Arms the one reconnect timer (never two), with backoff and jitter. */
  private scheduleReconnect(): void {
    if (!this.running || this.stomp || this.reconnectTimer !== undefined) return;
    const delay = this.fastRetry ? 0 : backoffDelay(this.attempt, this.options.reconnect);
    this.fastRetry = false;
    this.attempt += 1;
    this.setState('reconnecting');
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.open();
    }, delay);
  }

  private onConnected(stomp: Client): void {
    const sub = (dest: string, fn: (m: IMessage) => void) => stomp.subscribe(dest, (m) => fn(m));
    sub('/user/queue/messages', (m) => this.onChatFrame(m));
    sub('/user/queue/receipts', (m) => this.onReceiptFrame(m));
    sub('/user/queue/presence', (m) => {
      const p = body<Presence>(m);
      if (p && m.headers.event === 'presence') this.events.emit('presence', p);
    });
    sub('/user/queue/notifications', (m) => this.onNotification(m));
    sub('/user/queue/errors', (m) => this.onErrorFrame(m));
    for (const [cid, c] of this.convs) this.subscribeConversation(stomp, cid, c);
    if (this.presence) this.publish(stomp, '/app/presence.set', { status: this.presence });
    for (const item of this.outbox.pending()) this.transmit(stomp, item);
    this.setState('connected');
  }

  private subscribeConversation(stomp: Client, cid: string, c: Tracked): void {
    const topic = `/topic/chat/${cid}`;
    c.subs = [
      // Resume: everything after the last seq delivered, then live.
      stomp.subscribe(topic, (m) => this.onChatFrame(m), { 'since-seq': String(c.delivered) }),
      stomp.subscribe(`${topic}/typing`, (m) => {
        const t = body<TypingEvent>(m);
        if (t && t.userId !== this.userId) this.events.emit('typing', t);
      }),
      stomp.subscribe(`${topic}/read`, (m) => {
        const r = body<WatermarkEvent>(m);
        if (r) this.events.emit('read', r);
      }),
    ];
  }

  private publish(stomp: Client, destination: string, payload: unknown, headers: Record<string, string> = {}): void {
    try {
      stomp.publish({
        destination,
        body: JSON.stringify(payload),
        headers: { 'content-type': 'application/json', ...headers },
      });
    } catch {
      // The socket closed under us; the reconnect path takes over.
    }
  }

  private transmit(stomp: Client, item: OutboxItem): void {
    const attempts = item.attempts + 1;
    this.outbox.update(item.clientMsgId, { attempts });
    const receipt = `send-${item.clientMsgId}-${attempts}`;
    stomp.watchForReceipt(receipt, (frame) => {
      const seq = Number(frame.headers.seq);
      this.confirm(item.clientMsgId, item.conversationId, frame.headers['chat-message-id'] ?? '', seq);
    });
    this.publish(
      stomp,
      '/app/chat.send',
      { conversationId: item.conversationId, body: item.body, clientMsgId: item.clientMsgId },
      { receipt },
    );
  }

  private confirm(clientMsgId: string, conversationId: string, messageId: string, seq: number): void {
    if (!this.outbox.remove(clientMsgId)) return;
    this.events.emit('sent', { clientMsgId, conversationId, messageId, seq });
    this.emitOutbox();
  }

  private emitOutbox(): void {
    this.events.emit('outbox', this.outbox.all());
  }

  // ---- internals: inbound ----

  private onChatFrame(frame: IMessage): void {
    const m = body<Message>(frame);
    if (!m || typeof m.id !== 'string') return;
    switch (frame.headers.event) {
      case 'message.created':
        this.ingest(m);
        break;
      case 'message.edited':
        if (this.firstTime(`${m.id}/edit/${m.editedAt ?? ''}/${m.body}`)) this.events.emit('edit', m);
        break;
      case 'message.deleted':
        if (this.firstTime(`${m.id}/delete`)) this.events.emit('delete', m);
        break;
      default:
        break;
    }
  }

  /** De-duplicates by id and hands messages over in seq order, holding any that arrive ahead of a gap. */
  private ingest(m: Message): void {
    if (this.seen.has(m.id)) return;
    let c = this.convs.get(m.conversationId);
    if (!c) {
      // A conversation we did not follow yet (e.g. just added to it).
      this.watch(m.conversationId, m.seq - 1);
      c = this.convs.get(m.conversationId);
      if (!c) return;
    }
    if (m.seq <= c.delivered) {
      this.remember(m.id);
      return;
    }
    if (m.seq !== c.delivered + 1) {
      c.pending.set(m.seq, m);
      this.armGapFill(m.conversationId, c);
      return;
    }
    this.deliver(c, m);
    for (let next = c.pending.get(c.delivered + 1); next; next = c.pending.get(c.delivered + 1)) {
      c.pending.delete(next.seq);
      this.deliver(c, next);
    }
    for (const seq of c.pending.keys()) if (seq <= c.delivered) c.pending.delete(seq);
    if (c.pending.size === 0 && c.gapTimer) {
      clearTimeout(c.gapTimer);
      c.gapTimer = undefined;
    }
  }

  private deliver(c: Tracked, m: Message): void {
    c.delivered = m.seq;
    this.remember(m.id);
    // The echo of our own send also confirms it (should its RECEIPT be lost).
    if (m.clientMsgId && m.senderId === this.userId) this.confirm(m.clientMsgId, m.conversationId, m.id, m.seq);
    this.events.emit('message', m);
  }

  private armGapFill(cid: string, c: Tracked): void {
    if (c.gapTimer || c.filling) return;
    c.gapTimer = setTimeout(() => {
      c.gapTimer = undefined;
      void this.fillGap(cid, c);
    }, this.options.gapFillMs ?? 1_000);
  }

  /** Fetches what is missing between the last delivered seq and the held messages. */
  private async fillGap(cid: string, c: Tracked): Promise<void> {
    if (c.pending.size === 0 || this.convs.get(cid) !== c) return;
    c.filling = true;
    try {
      const page = await this.api.messages(cid, { after: c.delivered, limit: 100 });
      for (const m of page) this.ingest(m);
    } catch {
      // Try again on the next timer.
    } finally {
      c.filling = false;
    }
    if (c.pending.size > 0) this.armGapFill(cid, c);
  }

  private onReceiptFrame(frame: IMessage): void {
    const w = body<WatermarkEvent>(frame);
    if (!w) return;
    if (frame.headers.event === 'message.delivered') this.events.emit('delivered', w);
    else if (frame.headers.event === 'message.read') this.events.emit('read', w);
  }

  private onNotification(frame: IMessage): void {
    const event = frame.headers.event;
    if (event === 'unread') {
      const u = body<UnreadEntry>(frame);
      if (u) this.events.emit('unread', u);
    } else if (event === 'member.added') {
      const b = body<{ conversationId: string; userId: string; lastSeq?: number; conversation?: Conversation }>(frame);
      if (!b) return;
      if (b.userId === this.userId) this.watch(b.conversationId, b.lastSeq ?? b.conversation?.lastSeq ?? 0);
      this.events.emit('membership', { kind: 'added', conversationId: b.conversationId, userId: b.userId, conversation: b.conversation });
    } else if (event === 'member.removed') {
      const b = body<{ conversationId: string; userId: string }>(frame);
      if (!b) return;
      if (b.userId === this.userId) this.unwatch(b.conversationId);
      this.events.emit('membership', { kind: 'removed', conversationId: b.conversationId, userId: b.userId });
    } else if (event === 'conversation.updated') {
      const b = body<{ conversation: Conversation }>(frame);
      if (b?.conversation) {
        this.events.emit('membership', { kind: 'updated', conversationId: b.conversation.id, conversation: b.conversation });
      }
    }
  }

  private onErrorFrame(frame: IMessage): void {
    const h = frame.headers;
    const err: ChatError = {
      code: h.code ?? 'error',
      message: h.message ?? frame.body,
      receiptId: h['receipt-id'],
    };
    const match = err.receiptId?.match(/^send-(.+)-\d+$/);
    const clientMsgId = match?.[1];
    if (clientMsgId && this.outbox.get(clientMsgId)) {
      if (RETRYABLE.has(err.code)) {
        this.scheduleOutboxRetry();
      } else {
        this.outbox.update(clientMsgId, { state: 'failed', error: err });
        this.emitOutbox();
      }
    }
    this.events.emit('error', err);
  }

  private scheduleOutboxRetry(): void {
    if (this.retryTimer !== undefined) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      const s = this.stomp;
      if (s && this.connected) for (const item of this.outbox.pending()) this.transmit(s, item);
    }, 1_000 + Math.random() * 1_000);
  }

  private firstTime(key: string): boolean {
    if (this.seen.has(key)) return false;
    this.remember(key);
    return true;
  }

  private remember(key: string): void {
    this.seen.add(key);
    if (this.seen.size > SEEN_CAP) {
      const oldest = this.seen.values().next();
      if (!oldest.done) this.seen.delete(oldest.value);
    }
  }
}

function body<T>(frame: IMessage): T | undefined {
  try {
    return JSON.parse(frame.body) as T;
  } catch {
    return undefined;
  }
}

function deriveWsUrl(baseUrl: string): string {
  if (baseUrl) return `${baseUrl.replace(/\/+$/, '').replace(/^http/, 'ws')}/ws`;
  const loc = (globalThis as { location?: { protocol: string; host: string } }).location;
  if (!loc) throw new Error('baseUrl is empty and there is no page location: pass baseUrl or wsUrl');
  return `${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}/ws`;
}
