// Wire shapes of the stompline contract (REST bodies and STOMP event bodies).

/** An account. Ids are strings. */
export interface User {
  id: string;
  username: string;
  displayName: string | null;
  email?: string | null;
  createdAt: string;
}

/** What register, login, refresh and verify-otp answer. */
export interface AuthResponse {
  user?: User;
  accessToken: string;
  refreshToken: string;
  /** Seconds until the access token expires. */
  expiresIn: number;
  csrfToken?: string;
}

export type Role = 'owner' | 'admin' | 'member';

export interface Member {
  userId: string;
  role: Role;
}

export interface Message {
  id: string;
  conversationId: string;
  seq: number;
  senderId: string;
  body: string;
  clientMsgId?: string | null;
  createdAt: string;
  editedAt: string | null;
  deletedAt: string | null;
}

export interface Conversation {
  id: string;
  type: 'direct' | 'group';
  name: string | null;
  members: Member[];
  lastSeq: number;
  unreadCount: number;
  lastMessage: Message | null;
}

export interface UnreadEntry {
  conversationId: string;
  unreadCount: number;
  lastSeq: number;
}

export type PresenceStatus = 'online' | 'away' | 'offline';

export interface Presence {
  userId: string;
  status: PresenceStatus;
  lastSeenAt: string | null;
}

export interface Items<T> {
  items: T[];
}

/** `typing` on `/topic/chat/{cid}/typing`. */
export interface TypingEvent {
  conversationId: string;
  userId: string;
  typing: boolean;
}

/**
 * A read or delivered watermark: `read` on `/topic/chat/{cid}/read`, and
 * `message.delivered` / `message.read` on `/user/queue/receipts`.
 */
export interface WatermarkEvent {
  conversationId: string;
  userId: string;
  upToSeq: number;
}

/** Membership changes from `/user/queue/notifications`. */
export type MembershipEvent =
  | { kind: 'added'; conversationId: string; userId: string; conversation?: Conversation }
  | { kind: 'removed'; conversationId: string; userId: string }
  | { kind: 'updated'; conversationId: string; conversation: Conversation };

/** An application error from `/user/queue/errors`. */
export interface ChatError {
  code: string;
  message: string;
  receiptId?: string;
}

/** One message the client has not yet seen confirmed as durable. */
export interface OutboxItem {
  clientMsgId: string;
  conversationId: string;
  body: string;
  createdAt: string;
  attempts: number;
  state: 'pending' | 'failed';
  error?: ChatError;
}

/** A confirmed send: the outbox item became this stored message. */
export interface SentEvent {
  clientMsgId: string;
  conversationId: string;
  messageId: string;
  seq: number;
}

export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed';

/** Everything the client emits, by event name. */
export interface ClientEvents {
  message: Message;
  edit: Message;
  delete: Message;
  typing: TypingEvent;
  read: WatermarkEvent;
  delivered: WatermarkEvent;
  presence: Presence;
  unread: UnreadEntry;
  membership: MembershipEvent;
  sent: SentEvent;
  outbox: OutboxItem[];
  error: ChatError;
  connection: ConnectionState;
  /** New tokens after login or refresh; `null` when signed out. */
  tokens: StoredTokens | null;
}

/** Tokens with an absolute expiry, as kept between page loads. */
export interface StoredTokens {
  accessToken: string;
  refreshToken: string;
  /** Milliseconds since the epoch when the access token expires. */
  expiresAt: number;
  /** Milliseconds since the epoch when the access token was issued. */
  issuedAt?: number;
  userId?: string;
}
