//! Fan-out of chat events between instances.
//!
//! An instance subscribes to the channels its local sessions need
//! (`conv:<id>`, `user:<id>`, `instance:<id>`, `topic:<destination>`) and
//! receives what anyone publishes there. Embedded, [`LocalRelay`] loops
//! publications back to the same process; in a cluster, Redis pub/sub
//! ([`redis::RedisRelay`]) or a RabbitMQ topic exchange
//! ([`amqp::AmqpRelay`]) carry them. [`connect`] builds the configured one.
//!
//! Delivery is at most once: a cluster relay that loses its connection
//! reconnects with backoff, subscribes again to everything, and then puts a
//! [`RESYNC`] marker into the inbox so the gateway reads what it may have
//! missed from the store.

pub mod amqp;
pub mod redis;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

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

/// The channel of the marker a cluster relay puts into its inbox after it
/// reconnected and subscribed again: publications may have been lost while
/// it was away. Its payload is empty.
pub const RESYNC: &str = "relay:resync";

/// The inbox a relay delivers to.
pub type Inbox = mpsc::UnboundedReceiver<Delivery>;

/// Why the relay failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A backend failure (the caller may retry; the outbox keeps the event).
    #[error("relay: {0}")]
    Backend(String),
}

/// First delay before reconnecting a lost relay connection.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest delay between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long connecting or one subscription change may take.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle relay connection is probed.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// Builds the relay `config.relay` selects and the inbox it delivers to. A
/// cluster relay connects before this returns (an unreachable backend is a
/// start-up error) and stops its background work on `shutdown`.
pub async fn connect(
    config: &crate::config::Config,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(Arc<dyn Relay>, Inbox), RelayError> {
    use crate::config::RelayKind;
    Ok(match config.relay {
        RelayKind::Local => {
            let (relay, inbox) = LocalRelay::new();
            (relay, inbox)
        }
        RelayKind::Redis => {
            let (relay, inbox) = redis::RedisRelay::connect(&config.redis, shutdown).await?;
            (relay, inbox)
        }
        RelayKind::Amqp => {
            let (relay, inbox) = amqp::AmqpRelay::connect(&config.amqp, shutdown).await?;
            (relay, inbox)
        }
    })
}

/// Wraps a cluster relay so that publications to `own` (this instance's
/// channel, which only this instance subscribes) go straight into the
/// returned inbox instead of through the backend: an acknowledgement the
/// persister sends to the instance that took the SEND then needs no relay
/// connection, so a relay outage, or the moment after a reconnect before
/// the channel is subscribed again, cannot hold back a RECEIPT. Other
/// instances can still publish to `own` through the backend. The
/// in-process relay is returned as it is.
pub fn loop_back(relay: Arc<dyn Relay>, inbox: Inbox, own: String) -> (Arc<dyn Relay>, Inbox) {
    if !relay.spans_instances() {
        return (relay, inbox);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let forward = tx.clone();
    let mut inbox = inbox;
    tokio::spawn(async move {
        while let Some(d) = inbox.recv().await {
            if forward.send(d).is_err() {
                return;
            }
        }
    });
    let relay = Arc::new(LoopBack {
        inner: relay,
        own,
        local: tx,
    });
    (relay, rx)
}

/// See [`loop_back`].
struct LoopBack {
    inner: Arc<dyn Relay>,
    own: String,
    local: mpsc::UnboundedSender<Delivery>,
}

#[async_trait]
impl Relay for LoopBack {
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), RelayError> {
        if channel != self.own {
            return self.inner.publish(channel, payload).await;
        }
        // The receiver lives as long as the server; a send error only
        // happens during shutdown.
        let _ = self.local.send(Delivery {
            channel: channel.to_owned(),
            payload,
        });
        Ok(())
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

/// The timer of a supervisor's connection probes.
fn probe_timer() -> tokio::time::Interval {
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    probe
}

/// Runs `attempt` with growing delays until it succeeds (`Some`) or
/// `shutdown` (`None`); then counts the reconnect and tells the gateway to
/// resync through `inbox`.
async fn reconnect<T, Fut>(
    backend: &'static str,
    shutdown: &tokio_util::sync::CancellationToken,
    inbox: &mpsc::UnboundedSender<Delivery>,
    mut attempt: impl FnMut() -> Fut,
) -> Option<T>
where
    Fut: std::future::Future<Output = Result<T, RelayError>>,
{
    tracing::warn!(backend, "relay connection lost; reconnecting");
    let mut delay = BACKOFF_MIN;
    let value = loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        match attempt().await {
            Ok(v) => break v,
            Err(e) => {
                tracing::warn!(backend, error = %e, "relay reconnect failed");
                delay = (delay * 2).min(BACKOFF_MAX);
            }
        }
    };
    metrics::counter!(crate::metrics::names::RELAY_RECONNECTS, crate::metrics::labels::BACKEND => backend)
        .increment(1);
    tracing::info!(backend, "relay reconnected and subscribed again");
    let _ = inbox.send(Delivery {
        channel: RESYNC.to_owned(),
        payload: Bytes::new(),
    });
    Some(value)
}

/// `f` within [`OP_TIMEOUT`], its error (or the timeout) as a
/// [`RelayError`] naming `backend` and `what` was being done.
async fn timed<T, E: std::fmt::Display>(
    backend: &str,
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, RelayError> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| RelayError::Backend(format!("{backend}: {what}: {e}"))),
        Err(_) => Err(RelayError::Backend(format!(
            "{backend}: {what}: no answer within {}s",
            OP_TIMEOUT.as_secs()
        ))),
    }
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
    /// Whether publications reach other instances (false for the in-process
    /// relay, where local delivery already reached everyone).
    fn spans_instances(&self) -> bool {
        true
    }
    /// Answers when the backend is usable (`/readyz`).
    async fn ping(&self) -> Result<(), RelayError> {
        Ok(())
    }
}

/// Reference counts of subscribed channels, shared by the cluster relays.
#[derive(Default)]
struct Refcounts(HashMap<String, usize>);

impl Refcounts {
    /// Counts one more subscriber; true when it is the first.
    fn add(&mut self, channel: &str) -> bool {
        let n = self.0.entry(channel.to_owned()).or_default();
        *n += 1;
        *n == 1
    }

    /// Counts one subscriber less; true when it was the last.
    fn remove(&mut self, channel: &str) -> bool {
        match self.0.get_mut(channel) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.0.remove(channel);
                true
            }
            None => false,
        }
    }

    fn channels(&self) -> impl Iterator<Item = &String> {
        self.0.keys()
    }
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

    fn spans_instances(&self) -> bool {
        false
    }
}
