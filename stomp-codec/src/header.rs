//! Header names used by STOMP 1.0-1.2, as constants so callers never spell them.

/// `accept-version` (CONNECT): versions the client supports.
pub const ACCEPT_VERSION: &str = "accept-version";
/// `ack` (SUBSCRIBE: mode; MESSAGE: id to acknowledge).
pub const ACK: &str = "ack";
/// `content-length`: body size in bytes.
pub const CONTENT_LENGTH: &str = "content-length";
/// `content-type`: MIME type of the body.
pub const CONTENT_TYPE: &str = "content-type";
/// `destination` (SEND, SUBSCRIBE, MESSAGE).
pub const DESTINATION: &str = "destination";
/// `heart-beat` (CONNECT, CONNECTED).
pub const HEART_BEAT: &str = "heart-beat";
/// `host` (CONNECT): virtual host.
pub const HOST: &str = "host";
/// `id` (SUBSCRIBE, UNSUBSCRIBE, ACK, NACK).
pub const ID: &str = "id";
/// `login` (CONNECT).
pub const LOGIN: &str = "login";
/// `message` (ERROR): short description.
pub const MESSAGE: &str = "message";
/// `message-id` (MESSAGE; ACK/NACK in 1.1).
pub const MESSAGE_ID: &str = "message-id";
/// `passcode` (CONNECT).
pub const PASSCODE: &str = "passcode";
/// `receipt`: ask for a RECEIPT.
pub const RECEIPT: &str = "receipt";
/// `receipt-id` (RECEIPT, ERROR).
pub const RECEIPT_ID: &str = "receipt-id";
/// `server` (CONNECTED).
pub const SERVER: &str = "server";
/// `session` (CONNECTED).
pub const SESSION: &str = "session";
/// `subscription` (MESSAGE; ACK/NACK in 1.1).
pub const SUBSCRIPTION: &str = "subscription";
/// `transaction` (SEND, ACK, NACK, BEGIN, COMMIT, ABORT).
pub const TRANSACTION: &str = "transaction";
/// `version` (CONNECTED, ERROR).
pub const VERSION: &str = "version";
/// `user-id` (CONNECTED in this server; MESSAGE where the broker sets it).
pub const USER_ID: &str = "user-id";
/// `redelivered` (MESSAGE, this server): the message was delivered before.
pub const REDELIVERED: &str = "redelivered";
/// `Authorization` (CONNECT, this server): `Bearer <token>`. Servers should
/// also accept the lower-case spelling.
pub const AUTHORIZATION: &str = "Authorization";
