//! The event log between gateways and the persister.
//!
//! A gateway appends [`SendCommand`]s; the persister consumes them in
//! batches. Embedded, this is an in-process queue ([`LocalBus`]); in a cluster
//! it is a Kafka topic keyed by conversation. Domain code sees only the two
//! traits.

use async_trait::async_trait;
use tokio::sync::{mpsc, Mutex};

use crate::store::NewMessage;

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

/// Why the bus refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The consumer side is gone (shutting down).
    #[error("the message bus is closed")]
    Closed,
    /// A backend failure.
    #[error("message bus: {0}")]
    Backend(String),
}

/// The producing side.
#[async_trait]
pub trait Bus: Send + Sync {
    /// Appends a command. Per-conversation order of appends is the order
    /// the persister sees. Waits (backpressure) when the log is full.
    async fn append(&self, cmd: SendCommand) -> Result<(), BusError>;
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
