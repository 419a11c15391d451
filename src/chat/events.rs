//! Chat events: what travels through the relay between instances, and the
//! JSON shapes clients see (PROTOCOL.md).

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::store::{Conversation, Message};

/// Relay channel of a conversation's events.
pub fn conversation_channel(conversation_id: &str) -> String {
    format!("conv:{conversation_id}")
}

/// Relay channel of events for one user's sessions.
pub fn user_channel(user_id: &str) -> String {
    format!("user:{user_id}")
}

/// Relay channel of one instance (durability acknowledgements).
pub fn instance_channel(instance_id: &str) -> String {
    format!("instance:{instance_id}")
}

/// Relay channel of a generic `/topic/…` destination (cluster relays only).
pub fn topic_channel(destination: &str) -> String {
    format!("topic:{destination}")
}

/// Event kinds.
pub mod kind {
    /// A message was persisted.
    pub const MESSAGE_CREATED: &str = "message.created";
    /// A message was edited.
    pub const MESSAGE_EDITED: &str = "message.edited";
    /// A message was deleted (tombstone).
    pub const MESSAGE_DELETED: &str = "message.deleted";
    /// Delivered watermark (to senders, on `/user/queue/receipts`).
    pub const MESSAGE_DELIVERED: &str = "message.delivered";
    /// Read watermark (to senders, on `/user/queue/receipts`).
    pub const MESSAGE_READ: &str = "message.read";
    /// Read watermark (to members, on `/topic/chat/{cid}/read`).
    pub const READ: &str = "read";
    /// Typing state (on `/topic/chat/{cid}/typing`).
    pub const TYPING: &str = "typing";
    /// Presence change (on `/user/queue/presence`).
    pub const PRESENCE: &str = "presence";
    /// Unread counter (on `/user/queue/notifications`).
    pub const UNREAD: &str = "unread";
    /// Someone joined a conversation.
    pub const MEMBER_ADDED: &str = "member.added";
    /// Someone left or was removed.
    pub const MEMBER_REMOVED: &str = "member.removed";
    /// Name or membership changed.
    pub const CONVERSATION_UPDATED: &str = "conversation.updated";
    /// A conversation was created.
    pub const CONVERSATION_CREATED: &str = "conversation.created";
    /// An application error (on `/user/queue/errors`).
    pub const ERROR: &str = "error";
    /// The persister's answer to one send (instance channel).
    pub const DURABLE: &str = "durable";
    /// The persister's answer to a send that repeated an earlier one.
    pub const DURABLE_DUPLICATE: &str = "durable.duplicate";
}

/// Which `/user/queue/…` a user-channel event is for.
pub mod user_queue {
    /// `/user/queue/receipts`
    pub const RECEIPTS: &str = "/user/queue/receipts";
    /// `/user/queue/presence`
    pub const PRESENCE: &str = "/user/queue/presence";
    /// `/user/queue/notifications`
    pub const NOTIFICATIONS: &str = "/user/queue/notifications";
    /// `/user/queue/errors`
    pub const ERRORS: &str = "/user/queue/errors";
    /// `/user/queue/messages`
    pub const MESSAGES: &str = "/user/queue/messages";
}

/// One event on the relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// See [`kind`].
    pub kind: String,
    /// Conversation concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// Message seq (message events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    /// Message id (message events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// For user-channel events: the `/user/queue/…` destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// For member events: the user who joined or left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// For durable acknowledgements: the request answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// For durable acknowledgements that failed: an error code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The JSON body clients receive.
    #[serde(default)]
    pub payload: serde_json::Value,
}

impl Event {
    /// An event of `kind` with `payload` and nothing else set.
    pub fn new(kind: &str, payload: serde_json::Value) -> Event {
        Event {
            kind: kind.to_owned(),
            conversation_id: None,
            seq: None,
            message_id: None,
            queue: None,
            user_id: None,
            request_id: None,
            error: None,
            payload,
        }
    }

    /// A message event (`message.created` / `edited` / `deleted`).
    pub fn message(kind: &str, m: &Message) -> Event {
        Event {
            conversation_id: Some(m.conversation_id.clone()),
            seq: Some(m.seq),
            message_id: Some(m.id.clone()),
            ..Event::new(kind, message_json(m))
        }
    }

    /// An event for one of a user's `/user/queue/…` destinations.
    pub fn for_user_queue(
        kind: &str,
        queue: &str,
        conversation_id: Option<&str>,
        payload: serde_json::Value,
    ) -> Event {
        Event {
            queue: Some(queue.to_owned()),
            conversation_id: conversation_id.map(str::to_owned),
            ..Event::new(kind, payload)
        }
    }

    /// Serialised for the relay.
    pub fn to_bytes(&self) -> bytes::Bytes {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default().into()
    }

    /// Parsed from the relay.
    pub fn from_bytes(b: &[u8]) -> Option<Event> {
        serde_json::from_slice(b).ok()
    }
}

/// RFC 3339 UTC text.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// The `message` object of PROTOCOL.md.
pub fn message_json(m: &Message) -> serde_json::Value {
    serde_json::json!({
        "id": m.id,
        "conversationId": m.conversation_id,
        "seq": m.seq,
        "senderId": m.sender_id,
        "body": m.body,
        "clientMsgId": m.client_msg_id,
        "createdAt": rfc3339(m.created_at),
        "editedAt": m.edited_at.map(rfc3339),
        "deletedAt": m.deleted_at.map(rfc3339),
    })
}

/// The `conversation` object of PROTOCOL.md (without the caller-specific
/// `unreadCount` / `lastMessage`, which [`conversation_json_for`] adds).
pub fn conversation_json(c: &Conversation) -> serde_json::Value {
    serde_json::json!({
        "id": c.id,
        "type": c.kind.as_str(),
        "name": c.name,
        "members": c.members.iter().map(|m| serde_json::json!({"userId": m.user_id, "role": m.role.as_str()})).collect::<Vec<_>>(),
        "lastSeq": c.last_seq,
        "createdAt": rfc3339(c.created_at),
    })
}

/// The `conversation` object with the caller's unread count and the last
/// message.
pub fn conversation_json_for(
    c: &Conversation,
    unread: i64,
    last: Option<&Message>,
) -> serde_json::Value {
    let mut v = conversation_json(c);
    v["unreadCount"] = unread.into();
    v["lastMessage"] = last.map(message_json).unwrap_or(serde_json::Value::Null);
    v
}
