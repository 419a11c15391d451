//! Domain events for integrators: `<prefix>events` in a cluster.
//!
//! The outbox feeds them: every outbox row the pipeline publishes to the
//! relay is also turned into one or more [`DomainEvent`]s and appended to the
//! events topic before the row is deleted, so they are at-least-once and, per
//! key, in commit order. `message.read` and `presence.changed` are not
//! outbox changes; [`EventTee`] picks them up where they are published, and
//! the registration endpoint emits `user.registered`, on a best-effort
//! basis. The JSON shape is documented in docs/EVENTS.md.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;

use super::BusError;
use crate::chat::events::{self as chat_events, kind, rfc3339, Event};
use crate::relay::{Relay, RelayError};
use crate::store::{self, Message};

/// Version of the event envelope.
pub const SPEC_VERSION: u32 = 1;

/// Event types on the events topic.
pub mod types {
    /// A message was stored (it has its seq).
    pub const MESSAGE_CREATED: &str = "message.created";
    /// A message's text changed.
    pub const MESSAGE_EDITED: &str = "message.edited";
    /// A message was deleted (tombstone).
    pub const MESSAGE_DELETED: &str = "message.deleted";
    /// A member's read watermark moved.
    pub const MESSAGE_READ: &str = "message.read";
    /// A conversation was created.
    pub const CONVERSATION_CREATED: &str = "conversation.created";
    /// Someone joined a group.
    pub const MEMBER_ADDED: &str = "member.added";
    /// Someone left or was removed.
    pub const MEMBER_REMOVED: &str = "member.removed";
    /// An account was created.
    pub const USER_REGISTERED: &str = "user.registered";
    /// A user's presence changed.
    pub const PRESENCE_CHANGED: &str = "presence.changed";
}

/// One event on the events topic (docs/EVENTS.md).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainEvent {
    /// Envelope version ([`SPEC_VERSION`]).
    pub spec_version: u32,
    /// Unique per event; a republished event keeps its id, so consumers
    /// drop duplicates by it.
    pub id: String,
    /// See [`types`].
    #[serde(rename = "type")]
    pub kind: String,
    /// When the event was produced (RFC 3339, UTC).
    pub occurred_at: String,
    /// Conversation concerned (also the record key when set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// User concerned (the record key for user events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The type's data.
    pub data: serde_json::Value,
}

impl DomainEvent {
    fn new(kind: &str, id: String, data: serde_json::Value) -> DomainEvent {
        DomainEvent {
            spec_version: SPEC_VERSION,
            id,
            kind: kind.to_owned(),
            occurred_at: rfc3339(store::now()),
            conversation_id: None,
            user_id: None,
            data,
        }
    }

    /// The record key: the conversation, else the user, so each
    /// conversation's (or user's) events stay in order on one partition.
    pub fn key(&self) -> &str {
        self.conversation_id
            .as_deref()
            .or(self.user_id.as_deref())
            .unwrap_or_default()
    }

    /// Serialised for the topic.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `message.created` for a stored message, from its outbox row.
    pub fn message_created(outbox_id: i64, m: &Message) -> DomainEvent {
        DomainEvent {
            conversation_id: Some(m.conversation_id.clone()),
            user_id: Some(m.sender_id.clone()),
            ..DomainEvent::new(
                types::MESSAGE_CREATED,
                format!("outbox-{outbox_id}"),
                serde_json::json!({ "message": chat_events::message_json(m) }),
            )
        }
    }

    /// The events an outbox row (other than `message.created`) stands for,
    /// from the relay events it publishes. Kinds without a domain event
    /// (e.g. `conversation.updated`) give none.
    pub fn from_outbox(
        outbox_id: i64,
        row_kind: &str,
        conversation_id: Option<&str>,
        published: &[&Event],
    ) -> Vec<DomainEvent> {
        let cid = conversation_id.map(str::to_owned);
        let id = |n: usize| format!("outbox-{outbox_id}-{n}");
        match row_kind {
            kind::MESSAGE_EDITED | kind::MESSAGE_DELETED => published
                .first()
                .map(|ev| {
                    let mut d = DomainEvent::new(
                        row_kind,
                        id(0),
                        serde_json::json!({ "message": ev.payload }),
                    );
                    d.conversation_id = cid.clone();
                    d.user_id = ev.payload["senderId"].as_str().map(str::to_owned);
                    vec![d]
                })
                .unwrap_or_default(),
            kind::CONVERSATION_CREATED => published
                .first()
                .map(|ev| {
                    let mut d = DomainEvent::new(
                        types::CONVERSATION_CREATED,
                        id(0),
                        serde_json::json!({ "conversation": ev.payload["conversation"] }),
                    );
                    d.conversation_id = cid.clone();
                    vec![d]
                })
                .unwrap_or_default(),
            kind::MEMBER_ADDED | kind::MEMBER_REMOVED => {
                // A row publishes the same event to every member: one
                // domain event per user who joined or left.
                let mut users: Vec<&str> = Vec::new();
                let mut out = Vec::new();
                for ev in published {
                    let Some(user) = ev.user_id.as_deref() else {
                        continue;
                    };
                    if users.contains(&user) {
                        continue;
                    }
                    users.push(user);
                    let mut data = serde_json::json!({
                        "conversationId": cid,
                        "userId": user,
                    });
                    if row_kind == kind::MEMBER_ADDED {
                        data["conversation"] = ev.payload["conversation"].clone();
                    }
                    let mut d = DomainEvent::new(row_kind, id(out.len()), data);
                    d.conversation_id = cid.clone();
                    d.user_id = Some(user.to_owned());
                    out.push(d);
                }
                out
            }
            _ => Vec::new(),
        }
    }

    /// `user.registered` for a new account.
    pub fn user_registered(user: &store::User) -> DomainEvent {
        DomainEvent {
            user_id: Some(user.id.clone()),
            ..DomainEvent::new(
                types::USER_REGISTERED,
                format!("user-{}", user.id),
                serde_json::json!({
                    "user": {
                        "id": user.id,
                        "username": user.username,
                        "displayName": user.display_name,
                        "createdAt": rfc3339(user.created_at),
                    }
                }),
            )
        }
    }

    /// The domain event a relay publication stands for when it is not an
    /// outbox change: `message.read` (the conversation's read event) and
    /// `presence.changed` (published once per audience member: the caller
    /// drops repeats).
    pub fn from_relay(channel: &str, ev: &Event) -> Option<DomainEvent> {
        match ev.kind.as_str() {
            kind::READ if channel.starts_with("conv:") => {
                let cid = ev.payload["conversationId"].as_str()?.to_owned();
                let user = ev.payload["userId"].as_str()?.to_owned();
                let upto = ev.payload["upToSeq"].as_i64()?;
                let mut d = DomainEvent::new(
                    types::MESSAGE_READ,
                    format!("read-{cid}-{user}-{upto}"),
                    ev.payload.clone(),
                );
                d.conversation_id = Some(cid);
                d.user_id = Some(user);
                Some(d)
            }
            kind::PRESENCE if channel.starts_with("user:") => {
                let user = ev.payload["userId"].as_str()?.to_owned();
                let status = ev.payload["status"].as_str().unwrap_or_default();
                let at = ev.payload["lastSeenAt"].as_str().unwrap_or_default();
                let mut d = DomainEvent::new(
                    types::PRESENCE_CHANGED,
                    format!("presence-{user}-{status}-{at}"),
                    ev.payload.clone(),
                );
                d.user_id = Some(user);
                Some(d)
            }
            _ => None,
        }
    }
}

/// Where domain events go.
#[async_trait]
pub trait EventSink: Send + Sync {
    /// Appends the events (in order per key) and returns once the backend
    /// acknowledged all of them.
    async fn emit(&self, events: Vec<DomainEvent>) -> Result<(), BusError>;
}

/// A relay that also hands the non-outbox domain events it carries
/// (`message.read`, `presence.changed`) to an [`EventSink`]. Everything else
/// passes through untouched.
pub struct EventTee {
    inner: Arc<dyn Relay>,
    sink: Arc<dyn EventSink>,
    /// The last presence announcement seen: one announcement is published
    /// to each member of the audience in turn, with the same bytes.
    last_presence: Mutex<Option<Bytes>>,
}

impl EventTee {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Relay>, sink: Arc<dyn EventSink>) -> Arc<EventTee> {
        Arc::new(EventTee {
            inner,
            sink,
            last_presence: Mutex::new(None),
        })
    }

    fn spot(&self, channel: &str, payload: &Bytes) -> Option<DomainEvent> {
        // Cheap test first: most publications are chat messages.
        let text = std::str::from_utf8(payload).ok()?;
        if !(text.contains("\"kind\":\"read\"") || text.contains("\"kind\":\"presence\"")) {
            return None;
        }
        let ev = Event::from_bytes(payload)?;
        if ev.kind == kind::PRESENCE {
            let mut last = self.last_presence.lock();
            if last.as_ref() == Some(payload) {
                return None;
            }
            *last = Some(payload.clone());
        }
        DomainEvent::from_relay(channel, &ev)
    }
}

#[async_trait]
impl Relay for EventTee {
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), RelayError> {
        if let Some(ev) = self.spot(channel, &payload) {
            // Not outbox-backed: best effort, and never in the way of the
            // live path.
            let sink = self.sink.clone();
            tokio::spawn(async move {
                if let Err(e) = sink.emit(vec![ev]).await {
                    tracing::warn!(error = %e, "publishing a domain event failed");
                }
            });
        }
        self.inner.publish(channel, payload).await
    }

    async fn subscribe(&self, channel: &str) -> Result<(), RelayError> {
        self.inner.subscribe(channel).await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), RelayError> {
        self.inner.unsubscribe(channel).await
    }

    fn spans_instances(&self) -> bool {
        self.inner.spans_instances()
    }

    async fn ping(&self) -> Result<(), RelayError> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::events::user_queue;

    #[test]
    fn member_events_come_once_per_user() {
        let mut ev = Event::for_user_queue(
            kind::MEMBER_ADDED,
            user_queue::NOTIFICATIONS,
            Some("c1"),
            serde_json::json!({"conversationId": "c1", "userId": "u2", "conversation": {"id": "c1"}}),
        );
        ev.user_id = Some("u2".into());
        // Published to three members' channels.
        let list = [&ev, &ev, &ev];
        let out = DomainEvent::from_outbox(7, kind::MEMBER_ADDED, Some("c1"), &list);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].kind, "member.added");
        assert_eq!(out[0].key(), "c1");
        assert_eq!(out[0].id, "outbox-7-0");
        assert_eq!(out[0].data["conversation"]["id"], "c1");
        let v: serde_json::Value = serde_json::from_slice(&out[0].to_json()).expect("json");
        assert_eq!(v["type"], "member.added");
        assert_eq!(v["specVersion"], 1);
        assert_eq!(v["userId"], "u2");
    }

    #[test]
    fn conversation_updates_are_not_domain_events() {
        let ev = Event::new(kind::CONVERSATION_UPDATED, serde_json::json!({}));
        assert!(
            DomainEvent::from_outbox(1, kind::CONVERSATION_UPDATED, Some("c"), &[&ev]).is_empty()
        );
    }

    #[test]
    fn read_and_presence_are_spotted_on_the_relay() {
        let mut read = Event::new(
            kind::READ,
            serde_json::json!({"conversationId": "c1", "userId": "u1", "upToSeq": 4}),
        );
        read.conversation_id = Some("c1".into());
        let d = DomainEvent::from_relay("conv:c1", &read).expect("read event");
        assert_eq!((d.kind.as_str(), d.key()), ("message.read", "c1"));
        let p = Event::for_user_queue(
            kind::PRESENCE,
            user_queue::PRESENCE,
            None,
            serde_json::json!({"userId": "u9", "status": "online", "lastSeenAt": "x"}),
        );
        let d = DomainEvent::from_relay("user:u2", &p).expect("presence event");
        assert_eq!((d.kind.as_str(), d.key()), ("presence.changed", "u9"));
        let typing = Event::new(kind::TYPING, serde_json::json!({}));
        assert!(DomainEvent::from_relay("conv:c1", &typing).is_none());
    }
}
