//! The event log between gateways and the persister.
//!
//! A gateway appends [`SendCommand`]s; the persister consumes them in
//! batches. Embedded, this is an in-process queue ([`LocalBus`]); in a cluster
//! it is a Kafka topic keyed by conversation ([`kafka`]). Domain code sees
//! only the two traits; [`connect`] picks the implementation from the
//! configuration.
//!
//! A cluster also gets the domain-events topic ([`events`]): the outbox feeds
//! it, for integrators and downstream consumers.

pub mod events;
pub mod kafka;
pub mod stall;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{mpsc, Mutex};

use crate::config::{BusKind, Config};
use crate::store::NewMessage;

pub use events::{DomainEvent, EventSink};

/// A chat message on its way to being persisted.
#[derive(Debug, Clone)]
pub struct SendCommand {
    /// Answers the sender's gateway: echoed in the durable acknowledgement.
    pub request_id: String,
    /// Instance that must hear the outcome.
    pub origin: String,
    /// The message (seq not yet assigned).
    pub message: NewMessage,
}

/// Version of the [`SendCommand`] wire format ([`SendCommand::encode`]).
pub const WIRE_VERSION: u32 = 1;

/// The JSON form of a [`SendCommand`] on the Kafka messages topic
/// (docs/EVENTS.md).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCommand {
    v: u32,
    request_id: String,
    origin: String,
    id: String,
    conversation_id: String,
    sender_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_msg_id: Option<String>,
    body: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

impl SendCommand {
    /// The versioned JSON form stored on the bus.
    pub fn encode(&self) -> Vec<u8> {
        let m = &self.message;
        let wire = WireCommand {
            v: WIRE_VERSION,
            request_id: self.request_id.clone(),
            origin: self.origin.clone(),
            id: m.id.clone(),
            conversation_id: m.conversation_id.clone(),
            sender_id: m.sender_id.clone(),
            client_msg_id: m.client_msg_id.clone(),
            body: m.body.clone(),
            created_at: m.created_at,
        };
        // Plain strings and a timestamp: serialising cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Parses [`SendCommand::encode`]'s output; refuses other versions.
    pub fn decode(bytes: &[u8]) -> Result<SendCommand, BusError> {
        let w: WireCommand = serde_json::from_slice(bytes)
            .map_err(|e| BusError::Malformed(format!("not a send command: {e}")))?;
        if w.v != WIRE_VERSION {
            return Err(BusError::Malformed(format!(
                "send command version {} (this build reads {WIRE_VERSION})",
                w.v
            )));
        }
        Ok(SendCommand {
            request_id: w.request_id,
            origin: w.origin,
            message: NewMessage {
                id: w.id,
                conversation_id: w.conversation_id,
                sender_id: w.sender_id,
                client_msg_id: w.client_msg_id,
                body: w.body,
                created_at: w.created_at,
            },
        })
    }
}

/// Why the bus refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The consumer side is gone (shutting down).
    #[error("the message bus is closed")]
    Closed,
    /// A backend failure.
    #[error("message bus: {0}")]
    Backend(String),
    /// A record on the bus that is not a send command this build reads.
    #[error("malformed bus record: {0}")]
    Malformed(String),
}

/// The producing side.
#[async_trait]
pub trait Bus: Send + Sync {
    /// Appends a command. Per-conversation order of appends is the order
    /// the persister sees. Waits (backpressure) when the log is full.
    async fn append(&self, cmd: SendCommand) -> Result<(), BusError>;

    /// Whether the backend answers (for `/readyz`). `None` for a bus
    /// without a remote backend.
    async fn ready(&self) -> Option<Result<(), BusError>> {
        None
    }
}

/// The consuming side (the persister).
#[async_trait]
pub trait BusConsumer: Send {
    /// Waits for at least one command, then returns up to `max` of them.
    /// `Ok(vec![])` means the bus was closed.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<SendCommand>, BusError>;
    /// Marks everything returned so far as processed (after the database
    /// commit).
    async fn commit(&mut self) -> Result<(), BusError>;

    /// Whether the persister should empty this bus before the process
    /// exits: yes for an in-process queue (nothing else would store what it
    /// holds); no for a shared log, whose other consumers take over.
    fn drain_on_shutdown(&self) -> bool {
        true
    }
}

#[async_trait]
impl<C: BusConsumer + ?Sized> BusConsumer for Box<C> {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<SendCommand>, BusError> {
        (**self).next_batch(max).await
    }

    async fn commit(&mut self) -> Result<(), BusError> {
        (**self).commit().await
    }

    fn drain_on_shutdown(&self) -> bool {
        (**self).drain_on_shutdown()
    }
}

/// The configured bus, its consumer and, in a cluster, the domain-events
/// sink.
pub struct Connected {
    /// Where gateways append.
    pub bus: Arc<dyn Bus>,
    /// What this instance's persister reads.
    pub consumer: Box<dyn BusConsumer>,
    /// The domain-events topic (`None` embedded: nothing is published).
    pub events: Option<Arc<dyn EventSink>>,
}

/// Opens the bus `config.bus` names: an in-process queue, or Kafka (topics
/// created when missing, this instance's persister joining the group).
pub async fn connect(config: &Config) -> Result<Connected, BusError> {
    match config.bus {
        BusKind::Local => {
            let (bus, consumer) = LocalBus::new(64 * 1024);
            Ok(Connected {
                bus: Arc::new(bus),
                consumer: Box::new(consumer),
                events: None,
            })
        }
        BusKind::Kafka => {
            let k = &config.kafka;
            kafka::ensure_topics(k).await?;
            let bus = Arc::new(kafka::KafkaBus::new(k)?);
            let consumer = kafka::KafkaConsumer::new(k)?;
            let events =
                Arc::new(kafka::KafkaEvents::new(k, bus.producing())) as Arc<dyn EventSink>;
            Ok(Connected {
                bus,
                consumer: Box::new(consumer),
                events: Some(events),
            })
        }
    }
}

/// The in-process bus: a bounded queue.
pub struct LocalBus {
    tx: mpsc::Sender<SendCommand>,
}

/// Consumer of a [`LocalBus`].
pub struct LocalConsumer {
    rx: Mutex<mpsc::Receiver<SendCommand>>,
}

impl LocalBus {
    /// A bus holding at most `capacity` unprocessed commands.
    pub fn new(capacity: usize) -> (LocalBus, LocalConsumer) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (LocalBus { tx }, LocalConsumer { rx: Mutex::new(rx) })
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn append(&self, cmd: SendCommand) -> Result<(), BusError> {
        self.tx.send(cmd).await.map_err(|_| BusError::Closed)
    }
}

#[async_trait]
impl BusConsumer for LocalConsumer {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<SendCommand>, BusError> {
        let rx = self.rx.get_mut();
        let mut batch = Vec::new();
        if rx.recv_many(&mut batch, max.max(1)).await == 0 {
            return Ok(batch);
        }
        Ok(batch)
    }

    async fn commit(&mut self) -> Result<(), BusError> {
        // Nothing to remember: an in-process queue does not survive a
        // restart, and nothing in it was acknowledged to a client.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(client_msg_id: Option<&str>) -> SendCommand {
        SendCommand {
            request_id: "r1".into(),
            origin: "i1".into(),
            message: NewMessage {
                id: "m1".into(),
                conversation_id: "c1".into(),
                sender_id: "u1".into(),
                client_msg_id: client_msg_id.map(str::to_owned),
                body: "héllo \"there\"\n".into(),
                created_at: crate::store::now(),
            },
        }
    }

    #[test]
    fn send_commands_survive_the_wire_format() {
        for c in [cmd(Some("k-1")), cmd(None)] {
            let back = SendCommand::decode(&c.encode()).expect("decodes");
            assert_eq!(back.request_id, c.request_id);
            assert_eq!(back.origin, c.origin);
            let (a, b) = (back.message, c.message);
            assert_eq!(
                (
                    a.id,
                    a.conversation_id,
                    a.sender_id,
                    a.client_msg_id,
                    a.body,
                    a.created_at
                ),
                (
                    b.id,
                    b.conversation_id,
                    b.sender_id,
                    b.client_msg_id,
                    b.body,
                    b.created_at
                )
            );
        }
    }

    #[test]
    fn the_wire_format_is_versioned_json() {
        let v: serde_json::Value = serde_json::from_slice(&cmd(Some("k")).encode()).expect("json");
        assert_eq!(v["v"], 1);
        assert_eq!(v["conversationId"], "c1");
        assert_eq!(v["clientMsgId"], "k");
        let mut other = v.clone();
        other["v"] = 2.into();
        let bytes = serde_json::to_vec(&other).expect("json");
        assert!(matches!(
            SendCommand::decode(&bytes),
            Err(BusError::Malformed(_))
        ));
        assert!(matches!(
            SendCommand::decode(b"{"),
            Err(BusError::Malformed(_))
        ));
    }
}
