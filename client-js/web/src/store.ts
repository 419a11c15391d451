// The app's state: one store around the SDK client. Components read it with
// `useChat(selector)`; actions are methods on the store.

import { useSyncExternalStore } from 'react';
import {
  ApiError,
  StomplineClient,
  webStorage,
  type ConnectionState,
  type Conversation,
  type Message,
  type OutboxItem,
  type PresenceStatus,
  type StoredTokens,
  type User,
} from '@stompline/client';

const TOKENS_KEY = 'stompline.tokens';
const PAGE = 50;
/** How long a typing indicator lasts without renewal (the server ends it after 5 s). */
const TYPING_MS = 6_000;

export interface ChatState {
  phase: 'starting' | 'signedOut' | 'ready';
  me: User | null;
  connection: ConnectionState;
  online: boolean;
  conversations: Conversation[];
  messages: Record<string, Message[]>;
  historyDone: Record<string, boolean>;
  loadingOlder: Record<string, boolean>;
  outbox: OutboxItem[];
  typing: Record<string, Record<string, number>>;
  presence: Record<string, PresenceStatus>;
  users: Record<string, User>;
  contacts: string[];
  /** Other members' read and delivered watermarks, per conversation. */
  reads: Record<string, Record<string, number>>;
  delivered: Record<string, Record<string, number>>;
  selected: string | null;
  notice: string | null;
}

const initial: ChatState = {
  phase: 'starting',
  me: null,
  connection: 'idle',
  online: typeof navigator === 'undefined' ? true : navigator.onLine,
  conversations: [],
  messages: {},
  historyDone: {},
  loadingOlder: {},
  outbox: [],
  typing: {},
  presence: {},
  users: {},
  contacts: [],
  reads: {},
  delivered: {},
  selected: null,
  notice: null,
};

function loadTokens(): StoredTokens | null {
  try {
    const raw = localStorage.getItem(TOKENS_KEY);
    return raw ? (JSON.parse(raw) as StoredTokens) : null;
  } catch {
    return null;
  }
}

function saveTokens(t: StoredTokens | null): void {
  try {
    if (t) localStorage.setItem(TOKENS_KEY, JSON.stringify(t));
    else localStorage.removeItem(TOKENS_KEY);
  } catch {
    // Private mode: the session lasts as long as the page.
  }
}

/** Inserts or replaces messages by seq, keeping the list ascending and free of duplicates. */
export function mergeMessages(list: Message[] | undefined, incoming: Message[]): Message[] {
  const bySeq = new Map<number, Message>();
  for (const m of list ?? []) bySeq.set(m.seq, m);
  for (const m of incoming) bySeq.set(m.seq, m);
  return [...bySeq.values()].sort((a, b) => a.seq - b.seq);
}

export class ChatStore {
  state: ChatState = initial;
  client: StomplineClient | null = null;
  private listeners = new Set<() => void>();
  private offs: (() => void)[] = [];
  private typingTimer: ReturnType<typeof setInterval> | undefined;
  /** Bodies of messages being sent, kept until the stored message arrives. */
  private sending = new Map<string, OutboxItem>();

  subscribe = (fn: () => void): (() => void) => {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  };

  private set(patch: Partial<ChatState> | ((s: ChatState) => Partial<ChatState>)): void {
    const p = typeof patch === 'function' ? patch(this.state) : patch;
    this.state = { ...this.state, ...p };
    for (const l of this.listeners) l();
  }

  private newClient(tokens: StoredTokens | null): StomplineClient {
    // Tabs share the session through localStorage; refreshes are serialised
    // across them (Web Locks) so no two spend the same refresh token.
    return new StomplineClient({ baseUrl: '', tokens, sharedTokens: loadTokens });
  }

  // ---- start and accounts ----

  async init(): Promise<void> {
    window.addEventListener('online', () => this.set({ online: true }));
    window.addEventListener('offline', () => this.set({ online: false }));
    document.addEventListener('visibilitychange', () => {
      this.client?.setPresence(document.visibilityState === 'visible' ? 'online' : 'away');
      if (document.visibilityState === 'visible') this.markSelectedRead();
    });
    const tokens = loadTokens();
    if (!tokens) {
      this.set({ phase: 'signedOut' });
      return;
    }
    const client = this.newClient(tokens);
    try {
      const me = await client.api.me();
      await this.enter(client, me);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        saveTokens(null);
        this.set({ phase: 'signedOut' });
      } else {
        // Server unreachable: try again shortly with the same tokens.
        this.set({ phase: 'signedOut', notice: 'The server cannot be reached. Retrying…' });
        setTimeout(() => void this.init(), 3_000);
      }
    }
  }

  async signIn(login: string, password: string): Promise<void> {
    const client = this.newClient(null);
    const me = await client.login(login.includes('@') ? { email: login, password } : { username: login, password });
    await this.enter(client, me);
  }

  async register(input: { username: string; password: string; email?: string; displayName?: string }): Promise<void> {
    const client = this.newClient(null);
    const me = await client.register(input);
    await this.enter(client, me);
  }

  async requestCode(email: string): Promise<void> {
    await this.newClient(null).requestOtp({ email });
  }

  async verifyCode(email: string, code: string): Promise<void> {
    const client = this.newClient(null);
    const me = await client.verifyOtp({ email, code });
    await this.enter(client, me);
  }

  async signOut(): Promise<void> {
    const client = this.client;
    this.teardown();
    saveTokens(null);
    this.state = { ...initial, phase: 'signedOut' };
    for (const l of this.listeners) l();
    await client?.logout().catch(() => {});
  }

  private teardown(): void {
    for (const off of this.offs.splice(0)) off();
    this.client?.close();
    this.client = null;
    if (this.typingTimer) clearInterval(this.typingTimer);
  }

  private async enter(client: StomplineClient, me: User): Promise<void> {
    this.teardown();
    const tokens = client.api.tokens.current;
    if (tokens) saveTokens({ ...tokens, userId: me.id });
    client.api.tokens.set(tokens ? { ...tokens, userId: me.id } : null);
    // A client made before sign-in has no outbox storage; make the real one now.
    const real = new StomplineClient({
      baseUrl: '',
      tokens: client.api.tokens.current,
      sharedTokens: loadTokens,
      outboxStorage: webStorage(`stompline.outbox.${me.id}`),
    });
    client.api.tokens.stop();
    this.client = real;
    this.set({ ...initial, phase: 'ready', me, users: { [me.id]: me }, online: navigator.onLine });
    this.wire(real);
    this.set({ outbox: real.unsent() });
    for (const item of real.unsent()) this.sending.set(item.clientMsgId, item);
    const conversations = await real.start();
    real.setPresence(document.visibilityState === 'visible' ? 'online' : 'away');
    this.set({ conversations: sortConversations(conversations) });
    await this.refreshPeople();
    this.typingTimer = setInterval(() => this.expireTyping(), 1_000);
  }

  private wire(c: StomplineClient): void {
    const on = this.offs;
    on.push(c.on('tokens', (t) => (t ? saveTokens(t) : void this.signedOutByServer())));
    on.push(c.on('connection', (connection) => {
      this.set({ connection });
      if (connection === 'connected') void this.resync();
    }));
    on.push(c.on('outbox', (outbox) => {
      for (const item of outbox) this.sending.set(item.clientMsgId, item);
      this.set({ outbox });
    }));
    on.push(c.on('sent', (s) => {
      const item = this.sending.get(s.clientMsgId);
      const me = this.state.me;
      if (!item || !me) return;
      // Show the stored message at once, before its echo arrives.
      this.addMessages(s.conversationId, [
        {
          id: s.messageId,
          conversationId: s.conversationId,
          seq: s.seq,
          senderId: me.id,
          body: item.body,
          clientMsgId: s.clientMsgId,
          createdAt: item.createdAt,
          editedAt: null,
          deletedAt: null,
        },
      ]);
    }));
    on.push(c.on('message', (m) => {
      if (m.clientMsgId) this.sending.delete(m.clientMsgId);
      this.addMessages(m.conversationId, [m]);
      this.clearTyping(m.conversationId, m.senderId);
      if (m.conversationId === this.state.selected && m.senderId !== this.state.me?.id) this.markSelectedRead();
    }));
    const replace = (m: Message) => this.replaceMessage(m);
    on.push(c.on('edit', replace));
    on.push(c.on('delete', replace));
    on.push(c.on('typing', (t) => {
      this.set((s) => {
        const conv = { ...(s.typing[t.conversationId] ?? {}) };
        if (t.typing) conv[t.userId] = Date.now() + TYPING_MS;
        else delete conv[t.userId];
        return { typing: { ...s.typing, [t.conversationId]: conv } };
      });
    }));
    on.push(c.on('read', (r) => this.bumpMark('reads', r.conversationId, r.userId, r.upToSeq)));
    on.push(c.on('delivered', (r) => this.bumpMark('delivered', r.conversationId, r.userId, r.upToSeq)));
    on.push(c.on('presence', (p) => this.set((s) => ({ presence: { ...s.presence, [p.userId]: p.status } }))));
    on.push(c.on('unread', (u) => {
      this.patchConversation(u.conversationId, (conv) => ({ ...conv, unreadCount: u.unreadCount, lastSeq: Math.max(conv.lastSeq, u.lastSeq) }));
    }));
    on.push(c.on('membership', (ev) => {
      const me = this.state.me;
      if (ev.kind === 'updated') {
        this.upsertConversation(ev.conversation);
      } else if (ev.kind === 'removed' && ev.userId === me?.id) {
        this.set((s) => ({
          conversations: s.conversations.filter((x) => x.id !== ev.conversationId),
          selected: s.selected === ev.conversationId ? null : s.selected,
        }));
      } else {
        void this.reloadConversation(ev.conversationId);
        if (ev.kind === 'added') void this.refreshPeople();
      }
    }));
  }

  private async signedOutByServer(): Promise<void> {
    if (this.state.phase !== 'ready') return;
    this.teardown();
    saveTokens(null);
    this.state = { ...initial, phase: 'signedOut', notice: 'Your session ended. Please sign in again.' };
    for (const l of this.listeners) l();
  }

  /** After a reconnect: counters and lists may have moved while we were away. */
  private async resync(): Promise<void> {
    const c = this.client;
    if (!c) return;
    try {
      const list = await c.api.conversations();
      for (const conv of list) c.watch(conv.id, conv.lastSeq);
      this.set({ conversations: sortConversations(list) });
      const sel = this.state.selected;
      if (sel && this.state.messages[sel]) {
        const last = this.state.messages[sel]?.at(-1)?.seq ?? 0;
        const newer = await c.api.messages(sel, { after: last, limit: 100 });
        this.addMessages(sel, newer);
      }
    } catch {
      // The next reconnect tries again.
    }
  }

  // ---- conversations ----

  select(cid: string | null): void {
    this.set({ selected: cid });
    if (cid && !this.state.messages[cid]) void this.loadLatest(cid);
    this.markSelectedRead();
  }

  private async loadLatest(cid: string): Promise<void> {
    const c = this.client;
    if (!c) return;
    try {
      const page = await c.api.messages(cid, { limit: PAGE });
      this.set((s) => ({
        messages: { ...s.messages, [cid]: mergeMessages(s.messages[cid], page) },
        historyDone: { ...s.historyDone, [cid]: page.length < PAGE || (page[0]?.seq ?? 1) <= 1 },
      }));
      this.markSelectedRead();
    } catch (e) {
      this.flash(e);
    }
  }

  /** Loads the page before the oldest loaded message. */
  async loadOlder(cid: string): Promise<void> {
    const c = this.client;
    const s = this.state;
    if (!c || s.historyDone[cid] || s.loadingOlder[cid]) return;
    const first = s.messages[cid]?.[0]?.seq;
    if (first === undefined) return;
    this.set((st) => ({ loadingOlder: { ...st.loadingOlder, [cid]: true } }));
    try {
      const page = await c.api.messages(cid, { before: first, limit: PAGE });
      this.set((st) => ({
        messages: { ...st.messages, [cid]: mergeMessages(st.messages[cid], page) },
        historyDone: { ...st.historyDone, [cid]: page.length < PAGE || (page[0]?.seq ?? 1) <= 1 },
      }));
    } catch (e) {
      this.flash(e);
    } finally {
      this.set((st) => ({ loadingOlder: { ...st.loadingOlder, [cid]: false } }));
    }
  }

  markSelectedRead(): void {
    const cid = this.state.selected;
    const c = this.client;
    if (!cid || !c || document.visibilityState !== 'visible') return;
    const conv = this.state.conversations.find((x) => x.id === cid);
    const loaded = this.state.messages[cid]?.at(-1)?.seq ?? 0;
    const upTo = Math.max(loaded, conv?.lastSeq ?? 0);
    if (upTo > 0 && (conv?.unreadCount ?? 0) >= 0) c.markRead(cid, upTo);
    this.patchConversation(cid, (x) => ({ ...x, unreadCount: 0 }));
  }

  async openDirect(userId: string): Promise<void> {
    await this.act(async (c) => {
      const conv = await c.api.direct(userId);
      this.upsertConversation(conv);
      c.watch(conv.id, conv.lastSeq);
      this.select(conv.id);
    });
  }

  async createGroup(name: string, memberIds: string[]): Promise<void> {
    await this.act(async (c) => {
      const conv = await c.api.createGroup(name, memberIds);
      this.upsertConversation(conv);
      c.watch(conv.id, conv.lastSeq);
      this.select(conv.id);
    });
  }

  rename(cid: string, name: string): Promise<void> {
    return this.act(async (c) => this.upsertConversation(await c.api.rename(cid, name)));
  }

  addMembers(cid: string, userIds: string[]): Promise<void> {
    return this.act(async (c) => {
      this.upsertConversation(await c.api.addMembers(cid, userIds));
      await this.refreshPeople();
    });
  }

  removeMember(cid: string, userId: string): Promise<void> {
    return this.act(async (c) => {
      await c.api.removeMember(cid, userId);
      await this.reloadConversation(cid);
    });
  }

  leave(cid: string): Promise<void> {
    return this.act(async (c) => {
      await c.api.leave(cid);
      c.unwatch(cid);
      this.set((s) => ({ conversations: s.conversations.filter((x) => x.id !== cid), selected: null }));
    });
  }

  // ---- messages ----

  send(cid: string, body: string): void {
    const c = this.client;
    if (!c || !body.trim()) return;
    const item = c.send(cid, body);
    this.sending.set(item.clientMsgId, item);
    c.typing(cid, false);
  }

  typing(cid: string, active: boolean): void {
    this.client?.typing(cid, active);
  }

  edit(messageId: string, body: string): Promise<void> {
    return this.act(async (c) => this.replaceMessage(await c.api.editMessage(messageId, body)));
  }

  remove(messageId: string): Promise<void> {
    return this.act(async (c) => this.replaceMessage(await c.api.deleteMessage(messageId)));
  }

  retry(clientMsgId: string): void {
    this.client?.retry(clientMsgId);
  }

  discard(clientMsgId: string): void {
    this.client?.discard(clientMsgId);
  }

  reconnectNow(): void {
    this.client?.reconnectNow();
  }

  // ---- people and search ----

  async refreshPeople(): Promise<void> {
    const c = this.client;
    if (!c) return;
    try {
      const contacts = await c.api.contacts();
      this.rememberUsers(contacts);
      this.set({ contacts: contacts.map((u) => u.id) });
      const ids = new Set<string>(contacts.map((u) => u.id));
      for (const conv of this.state.conversations) for (const m of conv.members) ids.add(m.userId);
      const me = this.state.me?.id;
      if (me) ids.delete(me);
      const presence = await c.api.presence([...ids].slice(0, 500));
      this.set((s) => {
        const next = { ...s.presence };
        for (const p of presence) next[p.userId] = p.status;
        return { presence: next };
      });
    } catch {
      // Names fall back to ids until the next refresh.
    }
  }

  async searchUsers(query: string): Promise<User[]> {
    const c = this.client;
    if (!c || !query.trim()) return [];
    const users = await c.api.users(query.trim());
    this.rememberUsers(users);
    return users.filter((u) => u.id !== this.state.me?.id);
  }

  addContact(userId: string): Promise<void> {
    return this.act(async (c) => {
      await c.api.addContact(userId);
      await this.refreshPeople();
    });
  }

  removeContact(userId: string): Promise<void> {
    return this.act(async (c) => {
      await c.api.removeContact(userId);
      await this.refreshPeople();
    });
  }

  async searchMessages(q: string): Promise<Message[]> {
    const c = this.client;
    if (!c || !q.trim()) return [];
    return c.api.search(q.trim(), { limit: 30 });
  }

  // ---- helpers ----

  private async act(f: (c: StomplineClient) => Promise<void>): Promise<void> {
    const c = this.client;
    if (!c) return;
    try {
      await f(c);
    } catch (e) {
      this.flash(e);
      throw e;
    }
  }

  flash(e: unknown): void {
    const text = e instanceof Error ? e.message : String(e);
    this.set({ notice: text });
  }

  dismissNotice(): void {
    this.set({ notice: null });
  }

  private rememberUsers(users: User[]): void {
    this.set((s) => {
      const next = { ...s.users };
      for (const u of users) next[u.id] = u;
      return { users: next };
    });
  }

  private addMessages(cid: string, incoming: Message[]): void {
    if (incoming.length === 0) return;
    const last = incoming.reduce((a, b) => (b.seq > a.seq ? b : a));
    this.set((s) => {
      const loaded = s.messages[cid];
      const messages = loaded ? { ...s.messages, [cid]: mergeMessages(loaded, incoming) } : s.messages;
      let conversations = s.conversations;
      const conv = conversations.find((x) => x.id === cid);
      if (conv && last.seq >= conv.lastSeq) {
        conversations = sortConversations(
          conversations.map((x) => (x.id === cid ? { ...x, lastSeq: last.seq, lastMessage: last } : x)),
        );
      }
      return { messages, conversations };
    });
    if (!this.state.conversations.some((x) => x.id === cid)) void this.reloadConversation(cid);
  }

  private replaceMessage(m: Message): void {
    this.set((s) => {
      const list = s.messages[m.conversationId];
      const messages = list ? { ...s.messages, [m.conversationId]: mergeMessages(list, [m]) } : s.messages;
      const conversations = s.conversations.map((x) =>
        x.id === m.conversationId && x.lastMessage?.id === m.id ? { ...x, lastMessage: m } : x,
      );
      return { messages, conversations };
    });
  }

  private patchConversation(cid: string, f: (c: Conversation) => Conversation): void {
    this.set((s) => ({ conversations: s.conversations.map((x) => (x.id === cid ? f(x) : x)) }));
  }

  private upsertConversation(conv: Conversation): void {
    this.set((s) => {
      const old = s.conversations.find((x) => x.id === conv.id);
      const merged = old ? { ...old, ...conv, lastMessage: conv.lastMessage ?? old.lastMessage } : conv;
      return { conversations: sortConversations([merged, ...s.conversations.filter((x) => x.id !== conv.id)]) };
    });
  }

  private async reloadConversation(cid: string): Promise<void> {
    const c = this.client;
    if (!c) return;
    try {
      const conv = await c.api.conversation(cid);
      this.upsertConversation(conv);
      c.watch(conv.id, conv.lastSeq);
      if (conv.members.some((m) => !this.state.users[m.userId])) await this.refreshPeople();
    } catch {
      // Removed meanwhile, or offline: the next resync settles it.
    }
  }

  private bumpMark(kind: 'reads' | 'delivered', cid: string, userId: string, upTo: number): void {
    this.set((s) => {
      const conv = { ...(s[kind][cid] ?? {}) };
      if ((conv[userId] ?? 0) >= upTo) return {};
      conv[userId] = upTo;
      const patch: Partial<ChatState> = { [kind]: { ...s[kind], [cid]: conv } };
      // Read implies delivered.
      if (kind === 'reads') {
        const d = { ...(s.delivered[cid] ?? {}) };
        if ((d[userId] ?? 0) < upTo) d[userId] = upTo;
        patch.delivered = { ...s.delivered, [cid]: d };
      }
      return patch;
    });
  }

  private clearTyping(cid: string, userId: string): void {
    if (!this.state.typing[cid]?.[userId]) return;
    this.set((s) => {
      const conv = { ...(s.typing[cid] ?? {}) };
      delete conv[userId];
      return { typing: { ...s.typing, [cid]: conv } };
    });
  }

  private expireTyping(): void {
    const now = Date.now();
    let changed = false;
    const next: ChatState['typing'] = {};
    for (const [cid, users] of Object.entries(this.state.typing)) {
      const kept: Record<string, number> = {};
      for (const [uid, until] of Object.entries(users)) {
        if (until > now) kept[uid] = until;
        else changed = true;
      }
      next[cid] = kept;
    }
    if (changed) this.set({ typing: next });
  }
}

function sortConversations(list: Conversation[]): Conversation[] {
  const at = (c: Conversation) => c.lastMessage?.createdAt ?? '';
  return [...list].sort((a, b) => (at(b) > at(a) ? 1 : at(b) < at(a) ? -1 : 0));
}

export const store = new ChatStore();

export function useChat<T>(select: (s: ChatState) => T): T {
  return useSyncExternalStore(store.subscribe, () => select(store.state));
}

/** A conversation's title: the group name, or the other person's name. */
export function conversationTitle(conv: Conversation, s: Pick<ChatState, 'users' | 'me'>): string {
  if (conv.type === 'group') return conv.name ?? 'Group';
  const other = conv.members.find((m) => m.userId !== s.me?.id);
  return other ? userName(s.users[other.userId], other.userId) : 'Just you';
}

export function userName(u: User | undefined, fallback: string): string {
  return u ? u.displayName || u.username : `user ${fallback}`;
}

export function otherMember(conv: Conversation, meId: string | undefined): string | undefined {
  return conv.type === 'direct' ? conv.members.find((m) => m.userId !== meId)?.userId : undefined;
}
