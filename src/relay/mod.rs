//! Fan-out of chat events between instances.
//!
//! An instance subscribes to the channels its local sessions need
//! (`conv:<id>`, `user:<id>`, `instance:<id>`) and receives what anyone
//! publishes there. Embedded, [`LocalRelay`] loops publications back to the
//! same process; in a cluster, Redis pub/sub or RabbitMQ carry them.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// A publication received from the relay.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Channel it was published on.
    pub channel: String,
    /// Payload as published.
    pub payload: Bytes,
}

/// Why the relay failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A backend failure (the caller may retry; the outbox keeps the event).
    #[error("relay: {0}")]
    Backend(String),
}

/// The relay. Subscriptions are reference counted by the implementation:
/// `subscribe` twice needs `unsubscribe` twice.
#[async_trait]
pub trait Relay: Send + Sync {
    /// Publishes to every instance subscribed to `channel`.
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), RelayError>;
    /// Starts receiving `channel` on this instance's inbox.
    async fn subscribe(&self, channel: &str) -> Result<(), RelayError>;
    /// Stops receiving `channel` once every subscriber has unsubscribed.
    async fn unsubscribe(&self, channel: &str) -> Result<(), RelayError>;
}

/// The in-process relay: publications go straight to this instance's inbox
/// when the channel is subscribed.
pub struct LocalRelay {
    channels: Mutex<HashMap<String, usize>>,
    inbox: mpsc::UnboundedSender<Delivery>,
}

impl LocalRelay {
    /// A relay and the inbox it delivers to.
    pub fn new() -> (Arc<LocalRelay>, mpsc::UnboundedReceiver<Delivery>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(LocalRelay {
                channels: Mutex::new(HashMap::new()),
                inbox: tx,
            }),
            rx,
        )
    }
}

#[async_trait]
impl Relay for LocalRelay {
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), RelayError> {
        if self.channels.lock().contains_key(channel) {
            // The receiver lives as long as the server; a send error only
            // happens during shutdown.
            let _ = self.inbox.send(Delivery {
                channel: channel.to_owned(),
                payload,
            });
        }
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Result<(), RelayError> {
        *self.channels.lock().entry(channel.to_owned()).or_default() += 1;
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), RelayError> {
        let mut channels = self.channels.lock();
        if let Some(n) = channels.get_mut(channel) {
            *n -= 1;
            if *n == 0 {
                channels.remove(channel);
            }
        }
        Ok(())
    }
}
