export { Api, ApiError, processLock, TokenKeeper, webLock } from './api.ts';
export type { ApiOptions, HistoryQuery, SessionLock } from './api.ts';
export { backoffDelay } from './backoff.ts';
export type { BackoffOptions } from './backoff.ts';
export { StomplineClient } from './client.ts';
export type { ClientOptions, WebSocketFactory } from './client.ts';
export { memoryStorage, newClientMsgId, Outbox, webStorage } from './outbox.ts';
export type { OutboxStorage } from './outbox.ts';
export type * from './types.ts';
