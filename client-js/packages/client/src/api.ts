// Typed REST calls for the whole /api surface, with bearer tokens that are
// refreshed ahead of expiry (and once more on a 401).

import type {
  AuthResponse,
  Conversation,
  Items,
  Message,
  Presence,
  StoredTokens,
  UnreadEntry,
  User,
} from './types.ts';

/** A non-2xx answer, with the contract's `{error:{code,message}}` unpacked. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    /** Seconds from `Retry-After`, on 429. */
    readonly retryAfter?: number,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

type Fetch = typeof fetch;

export interface TokenKeeperOptions {
  /** Refresh this long before the access token expires (default: a quarter of its lifetime, at most 60 s). */
  refreshAheadMs?: number;
  onChange?: (tokens: StoredTokens | null) => void;
  /**
   * Tokens as other holders of the same session last saved them (e.g. other
   * tabs, through localStorage). Before refreshing, a newer pair found here
   * is adopted instead, so two tabs never spend the same refresh token (the
   * server would revoke the whole session).
   */
  shared?: () => StoredTokens | null;
  /**
   * Serialises refreshes among the holders of `shared`. Default: the Web
   * Locks API where the browser has it (every tab of the origin), else none.
   */
  lock?: SessionLock;
}

/** Runs `fn` while holding a lock shared by every holder of a session. */
export type SessionLock = <T>(fn: () => Promise<T>) => Promise<T>;

/** The Web Locks API's lock for the whole origin, or no lock where it is missing. */
export const webLock: SessionLock = <T>(fn: () => Promise<T>): Promise<T> => {
  const locks = (globalThis as { navigator?: { locks?: { request: (name: string, cb: () => Promise<T>) => Promise<T> } } })
    .navigator?.locks;
  return locks ? locks.request('stompline-token-refresh', fn) : fn();
};

/** A lock for holders in one process (tests, or several clients in one Node process). */
export function processLock(): SessionLock {
  let tail: Promise<unknown> = Promise.resolve();
  return <T>(fn: () => Promise<T>): Promise<T> => {
    const run = tail.then(fn, fn);
    tail = run.catch(() => {});
    return run;
  };
}

/**
 * Holds the token pair and keeps the access token fresh: one timer fires
 * ahead of expiry, and concurrent callers share one refresh request (a
 * refresh token is single-use; presenting it twice revokes the family).
 */
export class TokenKeeper {
  private tokens: StoredTokens | null = null;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private inflight: Promise<StoredTokens> | undefined;
  private failures = 0;
  /** How many refreshes succeeded (for diagnostics and tests). */
  refreshCount = 0;

  constructor(
    private readonly refreshCall: (refreshToken: string) => Promise<AuthResponse>,
    private readonly options: TokenKeeperOptions = {},
  ) {}

  get current(): StoredTokens | null {
    return this.tokens;
  }

  set(tokens: StoredTokens | null): void {
    this.tokens = tokens;
    this.schedule();
    this.options.onChange?.(tokens);
  }

  setFromResponse(res: AuthResponse, userId?: string): StoredTokens {
    const tokens: StoredTokens = {
      accessToken: res.accessToken,
      refreshToken: res.refreshToken,
      issuedAt: Date.now(),
      expiresAt: Date.now() + res.expiresIn * 1000,
      userId: res.user?.id ?? userId ?? this.tokens?.userId,
    };
    this.set(tokens);
    return tokens;
  }

  /** An access token good for at least a little while, refreshing first when it is not. */
  async accessToken(): Promise<string> {
    const t = this.tokens;
    if (!t) throw new ApiError(401, 'not_signed_in', 'not signed in');
    if (t.expiresAt - Date.now() > Math.min(5_000, this.ahead(t) / 2)) return t.accessToken;
    return (await this.refresh()).accessToken;
  }

  /** Refreshes now; concurrent calls share the same request. */
  refresh(): Promise<StoredTokens> {
    if (this.inflight) return this.inflight;
    const t = this.tokens;
    if (!t) return Promise.reject(new ApiError(401, 'not_signed_in', 'not signed in'));
    this.inflight = (this.options.lock ?? webLock)(async () => {
      const shared = this.options.shared?.();
      if (shared && shared.refreshToken !== t.refreshToken && shared.expiresAt > t.expiresAt) {
        // Someone else (another tab) already refreshed this session.
        this.set({ ...shared, userId: shared.userId ?? t.userId });
        return shared;
      }
      const res = await this.refreshCall(t.refreshToken);
      this.failures = 0;
      this.refreshCount += 1;
      return this.setFromResponse(res, t.userId);
    })
      .catch((e: unknown) => {
        if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
          // The refresh token is spent or revoked: the session is over.
          this.set(null);
        } else {
          // A network problem: keep the tokens and try again soon.
          this.failures += 1;
          this.schedule(Math.min(30_000, 1_000 * 2 ** this.failures));
        }
        throw e;
      })
      .finally(() => {
        this.inflight = undefined;
      });
    return this.inflight;
  }

  stop(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private ahead(t: StoredTokens): number {
    if (this.options.refreshAheadMs !== undefined) return this.options.refreshAheadMs;
    // Unknown lifetime (restored tokens): assume the default 15 minutes.
    const lifetime = Math.max(1_000, t.expiresAt - (t.issuedAt ?? t.expiresAt - 900_000));
    return Math.min(60_000, lifetime / 4);
  }

  private schedule(delay?: number): void {
    this.stop();
    const t = this.tokens;
    if (!t) return;
    const ms = delay ?? Math.max(0, t.expiresAt - this.ahead(t) - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.refresh().catch(() => {});
    }, ms);
    // Under Node a pending refresh must not keep the process alive.
    (this.timer as { unref?: () => void }).unref?.();
  }
}

export interface ApiOptions {
  /** `http(s)://host:port` of the server; empty for same-origin in a browser. */
  baseUrl: string;
  fetch?: Fetch;
  refreshAheadMs?: number;
  onTokens?: (tokens: StoredTokens | null) => void;
  /** See {@link TokenKeeperOptions.shared}. */
  sharedTokens?: () => StoredTokens | null;
  /** See {@link TokenKeeperOptions.lock}. */
  sessionLock?: SessionLock;
}

export interface HistoryQuery {
  before?: number;
  after?: number;
  limit?: number;
}

/** The REST API. Every authenticated call sends `Authorization: Bearer`. */
export class Api {
  readonly tokens: TokenKeeper;
  private readonly fetchFn: Fetch;
  private readonly base: string;

  constructor(options: ApiOptions) {
    this.base = options.baseUrl.replace(/\/+$/, '');
    this.fetchFn = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.tokens = new TokenKeeper((refreshToken) => this.call('POST', '/auth/refresh', { refreshToken }, false), {
      refreshAheadMs: options.refreshAheadMs,
      onChange: options.onTokens,
      shared: options.sharedTokens,
      lock: options.sessionLock,
    });
  }

  // ---- accounts ----

  async register(input: { username: string; password: string; email?: string; displayName?: string }): Promise<User> {
    return this.signIn(await this.call<AuthResponse>('POST', '/auth/register', input, false));
  }

  async login(input: { username?: string; email?: string; password: string }): Promise<User> {
    return this.signIn(await this.call<AuthResponse>('POST', '/auth/login', input, false));
  }

  /** Asks for a one-time code by mail (or SMS); always 202, even for unknown addresses. */
  async requestOtp(input: { email: string } | { phone: string }): Promise<void> {
    await this.call('POST', '/auth/request-otp', input, false);
  }

  /** Exchanges a one-time code for a session; creates the account on first use. */
  async verifyOtp(input: ({ email: string } | { phone: string }) & { code: string }): Promise<User> {
    return this.signIn(await this.call<AuthResponse>('POST', '/auth/verify-otp', input, false));
  }

  /** Revokes the session (its live connections are closed) and forgets the tokens. */
  async logout(): Promise<void> {
    const t = this.tokens.current;
    try {
      if (t) await this.call('POST', '/auth/logout', { refreshToken: t.refreshToken }, false, t.accessToken);
    } finally {
      this.tokens.set(null);
    }
  }

  me(): Promise<User> {
    return this.call('GET', '/me');
  }

  updateMe(input: { displayName?: string; password?: string }): Promise<User> {
    return this.call('PATCH', '/me', input);
  }

  // ---- conversations ----

  async conversations(): Promise<Conversation[]> {
    return (await this.call<Items<Conversation>>('GET', '/conversations')).items;
  }

  conversation(id: string): Promise<Conversation> {
    return this.call('GET', `/conversations/${enc(id)}`);
  }

  /** Opens the direct conversation with `userId` (or returns the existing one). */
  direct(userId: string): Promise<Conversation> {
    return this.call('POST', '/conversations', { type: 'direct', memberIds: [userId] });
  }

  createGroup(name: string, memberIds: string[]): Promise<Conversation> {
    return this.call('POST', '/conversations', { type: 'group', name, memberIds });
  }

  rename(id: string, name: string): Promise<Conversation> {
    return this.call('PATCH', `/conversations/${enc(id)}`, { name });
  }

  addMembers(id: string, userIds: string[]): Promise<Conversation> {
    return this.call('POST', `/conversations/${enc(id)}/members`, { userIds });
  }

  async removeMember(id: string, userId: string): Promise<void> {
    await this.call('DELETE', `/conversations/${enc(id)}/members/${enc(userId)}`);
  }

  /** Leaves the conversation (removes yourself). */
  async leave(id: string): Promise<void> {
    const me = this.tokens.current?.userId ?? (await this.me()).id;
    await this.removeMember(id, me);
  }

  // ---- messages ----

  /** History in ascending seq: the latest 50 by default, `before`/`after` for pages (max 100). */
  async messages(id: string, q: HistoryQuery = {}): Promise<Message[]> {
    const params = new URLSearchParams();
    if (q.before !== undefined) params.set('before', String(q.before));
    if (q.after !== undefined) params.set('after', String(q.after));
    if (q.limit !== undefined) params.set('limit', String(q.limit));
    const qs = params.toString();
    return (await this.call<Items<Message>>('GET', `/conversations/${enc(id)}/messages${qs ? `?${qs}` : ''}`)).items;
  }

  /** Sends over REST; the same `clientMsgId` twice stores one message. */
  postMessage(id: string, body: string, clientMsgId?: string): Promise<Message> {
    return this.call('POST', `/conversations/${enc(id)}/messages`, clientMsgId ? { body, clientMsgId } : { body });
  }

  editMessage(messageId: string, body: string): Promise<Message> {
    return this.call('PATCH', `/messages/${enc(messageId)}`, { body });
  }

  deleteMessage(messageId: string): Promise<Message> {
    return this.call('DELETE', `/messages/${enc(messageId)}`);
  }

  async markRead(id: string, upToSeq: number): Promise<void> {
    await this.call('POST', `/conversations/${enc(id)}/read`, { upToSeq });
  }

  async unread(): Promise<UnreadEntry[]> {
    return (await this.call<Items<UnreadEntry>>('GET', '/unread')).items;
  }

  async search(q: string, opts: { conversationId?: string; limit?: number } = {}): Promise<Message[]> {
    const params = new URLSearchParams({ q });
    if (opts.conversationId) params.set('conversationId', opts.conversationId);
    if (opts.limit !== undefined) params.set('limit', String(opts.limit));
    return (await this.call<Items<Message>>('GET', `/search?${params}`)).items;
  }

  // ---- people ----

  async presence(userIds: string[]): Promise<Presence[]> {
    if (userIds.length === 0) return [];
    const params = new URLSearchParams({ userIds: userIds.join(',') });
    return (await this.call<Items<Presence>>('GET', `/presence?${params}`)).items;
  }

  async contacts(): Promise<User[]> {
    return (await this.call<Items<User>>('GET', '/contacts')).items;
  }

  async addContact(userId: string): Promise<void> {
    await this.call('POST', '/contacts', { userId });
  }

  async removeContact(userId: string): Promise<void> {
    await this.call('DELETE', `/contacts/${enc(userId)}`);
  }

  async users(query: string, limit?: number): Promise<User[]> {
    const params = new URLSearchParams({ query });
    if (limit !== undefined) params.set('limit', String(limit));
    return (await this.call<Items<User>>('GET', `/users?${params}`)).items;
  }

  async block(userId: string): Promise<void> {
    await this.call('POST', '/blocks', { userId });
  }

  async unblock(userId: string): Promise<void> {
    await this.call('DELETE', `/blocks/${enc(userId)}`);
  }

  // ---- plumbing ----

  private signIn(res: AuthResponse): User {
    this.tokens.setFromResponse(res);
    if (!res.user) throw new ApiError(500, 'invalid_response', 'the server did not return the user');
    return res.user;
  }

  /**
   * One request. Authenticated calls get a fresh-enough token first and, on
   * a 401, refresh once and retry.
   */
  async call<T = unknown>(method: string, path: string, body?: unknown, auth = true, token?: string): Promise<T> {
    const send = async (bearer?: string): Promise<Response> => {
      const headers: Record<string, string> = { accept: 'application/json' };
      if (body !== undefined) headers['content-type'] = 'application/json';
      if (bearer) headers.authorization = `Bearer ${bearer}`;
      return this.fetchFn(`${this.base}/api${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    };
    let res = await send(auth ? await this.tokens.accessToken() : token);
    if (auth && res.status === 401 && this.tokens.current) {
      const fresh = await this.tokens.refresh();
      res = await send(fresh.accessToken);
    }
    return parse<T>(res);
  }
}

function enc(s: string): string {
  return encodeURIComponent(s);
}

async function parse<T>(res: Response): Promise<T> {
  const text = await res.text();
  let json: unknown = undefined;
  if (text) {
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
  }
  if (res.ok) return json as T;
  const err = (json as { error?: { code?: string; message?: string } } | undefined)?.error;
  const retry = res.headers.get('retry-after');
  throw new ApiError(
    res.status,
    err?.code ?? `http_${res.status}`,
    err?.message ?? (text || res.statusText),
    retry ? Number(retry) : undefined,
  );
}
