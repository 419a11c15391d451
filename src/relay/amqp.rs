//! The RabbitMQ relay.
//!
//! Every instance publishes to one shared topic exchange
//! (`[amqp] exchange`) and consumes from ONE exclusive, auto-deleted queue
//! of its own, bound once per channel its local sessions need (reference
//! counted). Channel names become routing keys with the topic syntax's
//! special characters escaped ([`routing_key`]). A supervisor task owns the
//! connection: when it is lost it reconnects with backoff, declares a fresh
//! queue, binds every channel again, counts the reconnect and puts a
//! [`RESYNC`] marker into the inbox.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Mutex, Notify};
use tokio_util::sync::CancellationToken;

use super::{probe_timer, reconnect, timed, Delivery, Inbox, Refcounts, Relay, RelayError};
use crate::config::AmqpConfig;

/// Routing keys longer than this are replaced by a digest (AMQP allows 255
/// bytes).
const MAX_KEY: usize = 200;

/// The routing key of a relay channel: `.`, `*`, `#` and `%` are
/// percent-escaped so a channel is always exactly one literal topic word
/// (a binding never acts as a wildcard); a long channel becomes
/// `sha256:<hex>`.
pub fn routing_key(channel: &str) -> String {
    let mut key = String::with_capacity(channel.len());
    for c in channel.chars() {
        match c {
            '.' => key.push_str("%2E"),
            '*' => key.push_str("%2A"),
            '#' => key.push_str("%23"),
            '%' => key.push_str("%25"),
            c => key.push(c),
        }
    }
    if key.len() > MAX_KEY {
        return format!("sha256:{:x}", Sha256::digest(channel.as_bytes()));
    }
    key
}

/// The live connection.
struct Live {
    conn: Connection,
    consume: Channel,
    queue: String,
}

struct Subs {
    counts: Refcounts,
    live: Option<Live>,
}

/// The RabbitMQ relay.
pub struct AmqpRelay {
    exchange: String,
    /// The connection's name (`connection_name` client property).
    name: String,
    /// Serialises binding changes with each other and with the
    /// supervisor's rebinding.
    subs: Mutex<Subs>,
    /// The publishing channel, `None` while reconnecting.
    publisher: parking_lot::RwLock<Option<Channel>>,
    /// Routing key → channel, for the keys currently bound.
    channels: parking_lot::Mutex<HashMap<String, String>>,
    /// A binding change failed: the supervisor replaces the connection.
    lost: Notify,
}

const BACKEND: &str = "amqp";

fn backend(e: impl std::fmt::Display) -> RelayError {
    RelayError::Backend(format!("amqp: {e}"))
}

/// Connection settings: the name shows in `rabbitmqctl list_connections`.
struct Target {
    url: String,
    exchange: String,
    name: String,
}

/// A fresh connection with its channels, the exchange declared, an
/// exclusive queue and a consumer on it.
async fn open(t: &Target) -> Result<(Live, Channel, Consumer), RelayError> {
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio::current())
        .with_connection_name(t.name.clone().into());
    let conn = timed(BACKEND, "connecting", Connection::connect(&t.url, props)).await?;
    let publish = timed(BACKEND, "opening a channel", conn.create_channel()).await?;
    let consume = timed(BACKEND, "opening a channel", conn.create_channel()).await?;
    timed(
        BACKEND,
        "declaring the exchange",
        consume.exchange_declare(
            &t.exchange,
            ExchangeKind::Topic,
            // Not durable: it holds no messages, and every instance
            // declares it again when it (re)connects.
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    let queue = timed(
        BACKEND,
        "declaring the queue",
        consume.queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    let queue = queue.name().as_str().to_owned();
    let consumer = timed(
        BACKEND,
        "consuming",
        consume.basic_consume(
            &queue,
            "",
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    Ok((
        Live {
            conn,
            consume,
            queue,
        },
        publish,
        consumer,
    ))
}

impl AmqpRelay {
    /// Connects (failing when RabbitMQ is unreachable) and starts the
    /// supervisor, which runs until `shutdown`.
    pub async fn connect(
        config: &AmqpConfig,
        shutdown: CancellationToken,
    ) -> Result<(Arc<AmqpRelay>, Inbox), RelayError> {
        let target = Target {
            url: config.url.clone(),
            exchange: config.exchange.clone(),
            name: format!("stompline-{}", uuid::Uuid::new_v4().simple()),
        };
        let (live, publish, consumer) = open(&target).await?;
        let relay = Arc::new(AmqpRelay {
            exchange: config.exchange.clone(),
            name: target.name.clone(),
            subs: Mutex::new(Subs {
                counts: Refcounts::default(),
                live: Some(live),
            }),
            publisher: parking_lot::RwLock::new(Some(publish)),
            channels: parking_lot::Mutex::new(HashMap::new()),
            lost: Notify::new(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(supervise(relay.clone(), target, consumer, tx, shutdown));
        Ok((relay, rx))
    }

    /// The name this relay's connections carry (`connection_name` in
    /// `rabbitmqctl list_connections client_properties`).
    pub fn connection_name(&self) -> &str {
        &self.name
    }

    async fn bind(&self, live: &Live, key: &str) -> Result<(), RelayError> {
        timed(
            BACKEND,
            "binding",
            live.consume.queue_bind(
                &live.queue,
                &self.exchange,
                key,
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
    }

    /// A failed binding change means the connection cannot be trusted: it is
    /// dropped and the supervisor connects again, binding what is counted
    /// then (so the change is not lost).
    fn settle(&self, subs: &mut Subs, r: Result<(), RelayError>) {
        if let Err(e) = r {
            tracing::warn!(error = %e, "amqp relay: binding change failed; reconnecting");
            if let Some(old) = subs.live.take() {
                tokio::spawn(async move {
                    let _ = old.conn.close(200, "replacing the connection").await;
                });
            }
            self.lost.notify_one();
        }
    }

    /// Binds the new connection's queue to every counted channel and makes
    /// it the live one.
    async fn rebind(&self, live: Live, publish: Channel) -> Result<(), RelayError> {
        let mut subs = self.subs.lock().await;
        let keys: Vec<String> = subs.counts.channels().map(|c| routing_key(c)).collect();
        for key in &keys {
            self.bind(&live, key).await?;
        }
        subs.live = Some(live);
        *self.publisher.write() = Some(publish);
        Ok(())
    }
}

async fn supervise(
    relay: Arc<AmqpRelay>,
    target: Target,
    mut consumer: Consumer,
    inbox: mpsc::UnboundedSender<Delivery>,
    shutdown: CancellationToken,
) {
    loop {
        if !pump(&relay, &mut consumer, &inbox, &shutdown).await {
            // Shutdown: the connection stays for the persister's last
            // publications and closes with the process.
            return;
        }
        let old = {
            let mut subs = relay.subs.lock().await;
            *relay.publisher.write() = None;
            subs.live.take()
        };
        drop(old);
        let attempt = || async {
            let (live, publish, consumer) = open(&target).await?;
            relay.rebind(live, publish).await?;
            Ok(consumer)
        };
        let Some(c) = reconnect(BACKEND, &shutdown, &inbox, attempt).await else {
            return;
        };
        consumer = c;
    }
}

/// Forwards deliveries until the connection is lost (true) or shutdown
/// (false).
async fn pump(
    relay: &AmqpRelay,
    consumer: &mut Consumer,
    inbox: &mpsc::UnboundedSender<Delivery>,
    shutdown: &CancellationToken,
) -> bool {
    let mut probe = probe_timer();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = relay.lost.notified() => {
                // A permit left from a connection already replaced is stale.
                if relay.subs.lock().await.live.is_none() {
                    return true;
                }
            }
            d = consumer.next() => {
                let d = match d {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "amqp relay: consumer failed");
                        return true;
                    }
                    None => return true,
                };
                let channel = relay.channels.lock().get(d.routing_key.as_str()).cloned();
                let Some(channel) = channel else { continue };
                if inbox.send(Delivery { channel, payload: Bytes::from(d.data) }).is_err() {
                    return false;
                }
            }
            _ = probe.tick() => {
                let up = relay.publisher.read().as_ref().is_some_and(|c| c.status().connected());
                if !up {
                    return true;
                }
            }
        }
    }
}

#[async_trait]
impl Relay for AmqpRelay {
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), RelayError> {
        let publisher = self
            .publisher
            .read()
            .clone()
            .ok_or_else(|| backend("the connection is down (reconnecting)"))?;
        let key = routing_key(channel);
        timed(
            BACKEND,
            "publishing",
            publisher.basic_publish(
                &self.exchange,
                &key,
                BasicPublishOptions::default(),
                &payload,
                BasicProperties::default(),
            ),
        )
        .await?;
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Result<(), RelayError> {
        let subs = &mut *self.subs.lock().await;
        if !subs.counts.add(channel) {
            return Ok(());
        }
        let key = routing_key(channel);
        self.channels.lock().insert(key.clone(), channel.to_owned());
        // Without a live connection the supervisor binds it on reconnect.
        let Some(live) = &subs.live else {
            return Ok(());
        };
        let r = self.bind(live, &key).await;
        self.settle(subs, r);
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), RelayError> {
        let subs = &mut *self.subs.lock().await;
        if !subs.counts.remove(channel) {
            return Ok(());
        }
        let key = routing_key(channel);
        self.channels.lock().remove(&key);
        let Some(live) = &subs.live else {
            return Ok(());
        };
        let r = timed(
            BACKEND,
            "unbinding",
            live.consume
                .queue_unbind(&live.queue, &self.exchange, &key, FieldTable::default()),
        )
        .await;
        self.settle(subs, r);
        Ok(())
    }

    async fn ping(&self) -> Result<(), RelayError> {
        let up = self
            .publisher
            .read()
            .as_ref()
            .is_some_and(|c| c.status().connected());
        if up {
            Ok(())
        } else {
            Err(backend("the connection is down (reconnecting)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::routing_key;

    #[test]
    fn routing_keys_are_one_literal_word() {
        assert_eq!(routing_key("conv:abc"), "conv:abc");
        assert_eq!(
            routing_key("topic:/topic/a.b*c#d%e"),
            "topic:/topic/a%2Eb%2Ac%23d%25e"
        );
        // Escaping is injective: `%2E` written literally stays distinct.
        assert_ne!(routing_key("a.b"), routing_key("a%2Eb"));
        let long = format!("topic:/topic/{}", "x.".repeat(150));
        let key = routing_key(&long);
        assert!(key.starts_with("sha256:") && key.len() == 7 + 64, "{key}");
        assert!(!key.contains(['.', '*', '#']));
    }
}
