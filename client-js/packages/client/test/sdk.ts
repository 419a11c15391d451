// The SDK as the tests import it.
export * from '../src/index.ts';
export type { IStompSocket as IStompSocketLike } from '@stomp/stompjs';
