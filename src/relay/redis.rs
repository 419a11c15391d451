//! The Redis pub/sub relay.
//!
//! Publications go through a bb8 pool of multiplexed connections. Each
//! instance holds ONE dedicated pub/sub connection, subscribed to exactly
//! the channels its local sessions need (reference counted), each named
//! `<key_prefix><channel>`. A supervisor task owns that connection: when it
//! is lost (the stream ends or a probe fails) it reconnects with backoff,
//! subscribes again to every channel in one command, counts the reconnect
//! and puts a [`RESYNC`] marker into the inbox.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bb8_redis::RedisConnectionManager;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::{mpsc, Mutex, Notify};
use tokio_util::sync::CancellationToken;

use super::{
    probe_timer, reconnect, timed, Delivery, Inbox, Refcounts, Relay, RelayError, OP_TIMEOUT,
};
use crate::config::RedisConfig;

/// Subscription state: the counts, and the live connection's sink (`None`
/// while reconnecting; the supervisor subscribes everything once back).
struct Subs {
    counts: Refcounts,
    sink: Option<PubSubSink>,
}

/// The Redis relay.
pub struct RedisRelay {
    prefix: String,
    pool: bb8::Pool<RedisConnectionManager>,
    /// Serialises subscription changes with each other and with the
    /// supervisor's resubscription, so SUBSCRIBE/UNSUBSCRIBE of one channel
    /// reach Redis in the order they were decided.
    subs: Mutex<Subs>,
    /// A subscription change failed: the supervisor replaces the connection.
    lost: Notify,
}

const BACKEND: &str = "redis";

fn backend(e: impl std::fmt::Display) -> RelayError {
    RelayError::Backend(format!("redis: {e}"))
}

impl RedisRelay {
    /// Connects the pool and the pub/sub connection (failing when Redis is
    /// unreachable) and starts the supervisor, which runs until `shutdown`.
    pub async fn connect(
        config: &RedisConfig,
        shutdown: CancellationToken,
    ) -> Result<(Arc<RedisRelay>, Inbox), RelayError> {
        let client = redis::Client::open(config.url.as_str()).map_err(backend)?;
        let manager = RedisConnectionManager::new(config.url.as_str()).map_err(backend)?;
        let pool = bb8::Pool::builder()
            .max_size(config.pool_size.max(1))
            .connection_timeout(OP_TIMEOUT)
            .build(manager)
            .await
            .map_err(backend)?;
        let pubsub = timed(BACKEND, "connecting", client.get_async_pubsub()).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (sink, stream) = pubsub.split();
        let relay = Arc::new(RedisRelay {
            prefix: config.key_prefix.clone(),
            pool,
            subs: Mutex::new(Subs {
                counts: Refcounts::default(),
                sink: Some(sink.clone()),
            }),
            lost: Notify::new(),
        });
        tokio::spawn(supervise(relay.clone(), client, sink, stream, tx, shutdown));
        Ok((relay, rx))
    }

    fn name(&self, channel: &str) -> String {
        format!("{}{channel}", self.prefix)
    }

    /// A failed subscription change means the connection cannot be trusted:
    /// it is dropped and the supervisor connects again, subscribing to what
    /// is counted then (so the change is not lost).
    fn settle(&self, subs: &mut Subs, r: Result<(), RelayError>) {
        if let Err(e) = r {
            tracing::warn!(error = %e, "redis relay: subscription change failed; reconnecting");
            subs.sink = None;
            self.lost.notify_one();
        }
    }

    /// Subscribes the new connection to every counted channel and makes it
    /// the live one.
    async fn resubscribe(&self, mut sink: PubSubSink) -> Result<(), RelayError> {
        let mut subs = self.subs.lock().await;
        let names: Vec<String> = subs.counts.channels().map(|c| self.name(c)).collect();
        if !names.is_empty() {
            timed(BACKEND, "subscribing", sink.subscribe(&names)).await?;
        }
        subs.sink = Some(sink);
        Ok(())
    }
}

/// Owns the pub/sub connection: forwards messages, probes it, and replaces
/// it when it is lost.
async fn supervise(
    relay: Arc<RedisRelay>,
    client: redis::Client,
    mut sink: PubSubSink,
    mut stream: redis::aio::PubSubStream,
    inbox: mpsc::UnboundedSender<Delivery>,
    shutdown: CancellationToken,
) {
    loop {
        let lost = pump(&relay, &mut sink, &mut stream, &inbox, &shutdown).await;
        if !lost {
            return;
        }
        relay.subs.lock().await.sink = None;
        let attempt = || async {
            let pubsub = timed(BACKEND, "connecting", client.get_async_pubsub()).await?;
            let (s, st) = pubsub.split();
            relay.resubscribe(s.clone()).await?;
            Ok((s, st))
        };
        let Some((s, st)) = reconnect(BACKEND, &shutdown, &inbox, attempt).await else {
            return;
        };
        sink = s;
        stream = st;
    }
}

/// Forwards messages until the connection is lost (true) or shutdown
/// (false).
async fn pump(
    relay: &RedisRelay,
    sink: &mut PubSubSink,
    stream: &mut redis::aio::PubSubStream,
    inbox: &mpsc::UnboundedSender<Delivery>,
    shutdown: &CancellationToken,
) -> bool {
    let mut probe = probe_timer();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = relay.lost.notified() => {
                // A permit left from a connection already replaced is stale.
                if relay.subs.lock().await.sink.is_none() {
                    return true;
                }
            }
            m = stream.next() => {
                let Some(m) = m else { return true };
                let Some(channel) = m.get_channel_name().strip_prefix(relay.prefix.as_str()) else {
                    continue;
                };
                let d = Delivery {
                    channel: channel.to_owned(),
                    payload: Bytes::copy_from_slice(m.get_payload_bytes()),
                };
                if inbox.send(d).is_err() {
                    return false;
                }
            }
            _ = probe.tick() => {
                // A half-open socket never ends the stream; a probe does.
                let ping = tokio::time::timeout(Duration::from_secs(3), sink.ping::<redis::Value>()).await;
                if !matches!(ping, Ok(Ok(_))) {
                    return true;
                }
            }
        }
    }
}

#[async_trait]
impl Relay for RedisRelay {
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), RelayError> {
        let mut conn = self.pool.get().await.map_err(backend)?;
        let cmd = redis::cmd("PUBLISH")
            .arg(self.name(channel))
            .arg(payload.as_ref())
            .to_owned();
        timed(BACKEND, "publishing", cmd.query_async::<i64>(&mut *conn)).await?;
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Result<(), RelayError> {
        let mut subs = self.subs.lock().await;
        if !subs.counts.add(channel) {
            return Ok(());
        }
        // Without a live connection the supervisor subscribes it on
        // reconnect.
        let name = self.name(channel);
        let Some(sink) = subs.sink.as_mut() else {
            return Ok(());
        };
        let r = timed(BACKEND, "subscribing", sink.subscribe(&name)).await;
        self.settle(&mut subs, r);
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), RelayError> {
        let mut subs = self.subs.lock().await;
        if !subs.counts.remove(channel) {
            return Ok(());
        }
        let name = self.name(channel);
        let Some(sink) = subs.sink.as_mut() else {
            return Ok(());
        };
        let r = timed(BACKEND, "unsubscribing", sink.unsubscribe(&name)).await;
        self.settle(&mut subs, r);
        Ok(())
    }

    async fn ping(&self) -> Result<(), RelayError> {
        if self.subs.lock().await.sink.is_none() {
            return Err(backend("the pub/sub connection is down (reconnecting)"));
        }
        let mut conn = self.pool.get().await.map_err(backend)?;
        timed(
            BACKEND,
            "ping",
            redis::cmd("PING").query_async::<String>(&mut *conn),
        )
        .await?;
        Ok(())
    }
}
