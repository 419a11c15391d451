//! The relay contract, run against the real Redis and RabbitMQ.
//!
//! Each check starts two relays on the same backend (two "instances") with a
//! key prefix / exchange of its own, so tests run in parallel and reruns see
//! nothing old. Addresses: `STOMPLINE_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`), `STOMPLINE_TEST_AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`). An unreachable service skips the
//! check, or fails it under `STOMPLINE_REQUIRE_SERVICES=1`.
//!
//! Killing a relay's connection: Redis checks connect as an ACL user of
//! their own and `CLIENT KILL USER` it; RabbitMQ checks close the relay's
//! named connection with `rabbitmqctl close_connection`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use stompline::config::{AmqpConfig, RedisConfig};
use stompline::relay::amqp::AmqpRelay;
use stompline::relay::redis::RedisRelay;
use stompline::relay::{Delivery, Inbox, Relay, RESYNC};
use tokio_util::sync::CancellationToken;

#[path = "support/services.rs"]
mod services;

use services::amqp_url;

const WAIT: Duration = Duration::from_secs(30);

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// One instance's relay.
struct Instance {
    relay: Arc<dyn Relay>,
    inbox: Inbox,
    /// Set for AMQP relays: the connection name to close.
    amqp_name: Option<String>,
}

/// The backend of one check, with what it needs to kill connections.
enum Backend {
    Redis {
        admin: redis::aio::MultiplexedConnection,
        user: String,
        config: RedisConfig,
    },
    Amqp {
        config: AmqpConfig,
    },
}

impl Backend {
    async fn redis() -> Option<Backend> {
        let mut admin = services::redis_admin().await?;
        // A user of its own, so killing "this test's connections" cannot
        // touch a test running beside it.
        let user = format!("relaytest_{}", unique());
        let url = services::redis_url_as(&mut admin, &user, &unique()).await;
        let config = RedisConfig {
            url,
            key_prefix: format!("relaytest:{}:", unique()),
            pool_size: 4,
        };
        Some(Backend::Redis {
            admin,
            user,
            config,
        })
    }

    async fn amqp() -> Option<Backend> {
        let config = AmqpConfig {
            url: amqp_url(),
            exchange: format!("relaytest.{}", unique()),
        };
        services::amqp_usable()
            .await
            .then_some(Backend::Amqp { config })
    }

    async fn instance(&self, shutdown: &CancellationToken) -> Instance {
        match self {
            Backend::Redis { config, .. } => {
                let (relay, inbox) = RedisRelay::connect(config, shutdown.clone())
                    .await
                    .expect("redis relay connects");
                Instance {
                    relay,
                    inbox,
                    amqp_name: None,
                }
            }
            Backend::Amqp { config } => {
                let (relay, inbox) = AmqpRelay::connect(config, shutdown.clone())
                    .await
                    .expect("amqp relay connects");
                let name = relay.connection_name().to_owned();
                Instance {
                    relay,
                    inbox,
                    amqp_name: Some(name),
                }
            }
        }
    }

    /// Kills the connections of `inst` from the server side.
    async fn kill(&mut self, inst: &Instance) {
        match self {
            Backend::Redis { admin, user, .. } => {
                let killed: i64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("USER")
                    .arg(&*user)
                    .query_async(admin)
                    .await
                    .expect("CLIENT KILL USER");
                assert!(killed > 0, "no connection of {user} to kill");
            }
            Backend::Amqp { .. } => {
                let name = inst.amqp_name.clone().expect("amqp instance");
                tokio::task::spawn_blocking(move || close_amqp_connection(&name))
                    .await
                    .expect("rabbitmqctl task");
            }
        }
    }

    async fn cleanup(self) {
        if let Backend::Redis {
            mut admin, user, ..
        } = self
        {
            services::redis_drop_user(&mut admin, &user).await;
        } else if let Backend::Amqp { config } = self {
            services::amqp_delete_exchange(&config.exchange).await;
        }
    }
}

/// Closes the RabbitMQ connection whose `connection_name` is `name`.
fn close_amqp_connection(name: &str) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl list_connections runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let pid = text
        .lines()
        .find(|l| l.contains(name))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("connection {name} not listed:\n{text}"))
        .to_owned();
    let status = std::process::Command::new("rabbitmqctl")
        .args(["-q", "close_connection", &pid, "relay test"])
        .status()
        .expect("rabbitmqctl close_connection runs");
    assert!(status.success(), "rabbitmqctl close_connection {pid}");
}

/// The next delivery that is not a resync marker.
async fn next(inbox: &mut Inbox) -> Delivery {
    loop {
        let d = tokio::time::timeout(WAIT, inbox.recv())
            .await
            .expect("timed out waiting for a delivery")
            .expect("inbox closed");
        if d.channel != RESYNC {
            return d;
        }
    }
}

/// Waits for the resync marker, skipping deliveries.
async fn resynced(inbox: &mut Inbox) {
    loop {
        let d = tokio::time::timeout(WAIT, inbox.recv())
            .await
            .expect("timed out waiting for the relay to reconnect")
            .expect("inbox closed");
        if d.channel == RESYNC {
            return;
        }
    }
}

async fn publish(inst: &Instance, channel: &str, payload: &str) {
    inst.relay
        .publish(channel, Bytes::from(payload.to_owned()))
        .await
        .expect("publish");
}

/// Proves nothing else arrived on `a` before a marker: publishes `marker`
/// on a freshly subscribed channel from the same publisher, and expects it
/// to be the next delivery (one publisher, one subscriber: order holds).
async fn nothing_before_marker(a: &mut Instance, b: &Instance) {
    let marker = format!("marker:{}", unique());
    a.relay.subscribe(&marker).await.expect("subscribe marker");
    publish(b, &marker, "marker").await;
    let d = next(&mut a.inbox).await;
    assert_eq!(d.channel, marker, "unexpected delivery {d:?}");
    a.relay
        .unsubscribe(&marker)
        .await
        .expect("unsubscribe marker");
}

async fn run<F, Fut>(backend: Option<Backend>, check: F)
where
    F: FnOnce(Backend, Instance, Instance) -> Fut,
    Fut: std::future::Future<Output = Backend>,
{
    let Some(backend) = backend else { return };
    let shutdown = CancellationToken::new();
    let a = backend.instance(&shutdown).await;
    let b = backend.instance(&shutdown).await;
    let backend = check(backend, a, b).await;
    shutdown.cancel();
    backend.cleanup().await;
}

async fn publish_reaches_every_subscribed_instance(
    backend: Backend,
    mut a: Instance,
    mut b: Instance,
) -> Backend {
    // Characters that are special in AMQP topics and Redis patterns.
    let ch = "topic:/topic/prices.eu*#";
    a.relay.subscribe(ch).await.unwrap();
    b.relay.subscribe(ch).await.unwrap();
    publish(&b, ch, "one").await;
    for inbox in [&mut a.inbox, &mut b.inbox] {
        let d = next(inbox).await;
        assert_eq!(d.channel, ch);
        assert_eq!(&d.payload[..], b"one");
    }
    // A channel that only looks like a wildcard match is not delivered.
    publish(&b, "topic:/topic/prices.eu.x", "other").await;
    nothing_before_marker(&mut a, &b).await;
    assert!(a.relay.ping().await.is_ok());
    backend
}

async fn subscriptions_are_reference_counted(
    backend: Backend,
    mut a: Instance,
    b: Instance,
) -> Backend {
    let ch = format!("conv:{}", unique());
    a.relay.subscribe(&ch).await.unwrap();
    a.relay.subscribe(&ch).await.unwrap();
    a.relay.unsubscribe(&ch).await.unwrap();
    publish(&b, &ch, "still").await;
    let d = next(&mut a.inbox).await;
    assert_eq!(
        (d.channel.as_str(), &d.payload[..]),
        (ch.as_str(), &b"still"[..])
    );
    a.relay.unsubscribe(&ch).await.unwrap();
    publish(&b, &ch, "gone").await;
    nothing_before_marker(&mut a, &b).await;
    // An extra unsubscribe is harmless; subscribing again works.
    a.relay.unsubscribe(&ch).await.unwrap();
    a.relay.subscribe(&ch).await.unwrap();
    publish(&b, &ch, "back").await;
    assert_eq!(&next(&mut a.inbox).await.payload[..], b"back");
    backend
}

async fn reconnects_and_subscribes_again(
    mut backend: Backend,
    mut a: Instance,
    b: Instance,
) -> Backend {
    stompline::metrics::install();
    let ch = format!("user:{}", unique());
    a.relay.subscribe(&ch).await.unwrap();
    publish(&b, &ch, "before").await;
    assert_eq!(&next(&mut a.inbox).await.payload[..], b"before");

    backend.kill(&a).await;
    // Subscribed during (or just after) the outage: bound on reconnect.
    let later = format!("conv:{}", unique());
    a.relay.subscribe(&later).await.unwrap();
    resynced(&mut a.inbox).await;
    assert!(a.relay.ping().await.is_ok());

    publish(&b, &ch, "after").await;
    assert_eq!(&next(&mut a.inbox).await.payload[..], b"after");
    publish(&b, &later, "later").await;
    let d = next(&mut a.inbox).await;
    assert_eq!(
        (d.channel.as_str(), &d.payload[..]),
        (later.as_str(), &b"later"[..])
    );
    // The instance whose connection was killed also publishes again.
    let back = format!("conv:{}", unique());
    let mut b = b;
    b.relay.subscribe(&back).await.unwrap();
    a.relay
        .publish(&back, Bytes::from_static(b"from a"))
        .await
        .expect("the reconnected relay publishes");
    assert_eq!(&next(&mut b.inbox).await.payload[..], b"from a");

    let text = stompline::metrics::install().render();
    assert!(
        text.contains("stompline_relay_reconnects_total"),
        "reconnect not counted:\n{text}"
    );
    backend
}

macro_rules! contract {
    ($($check:ident => $redis:ident, $amqp:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $redis() {
            run(Backend::redis().await, $check).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $amqp() {
            run(Backend::amqp().await, $check).await;
        }
    )*};
}

contract! {
    publish_reaches_every_subscribed_instance => redis_publish_reaches_every_subscribed_instance, amqp_publish_reaches_every_subscribed_instance;
    subscriptions_are_reference_counted => redis_subscriptions_are_reference_counted, amqp_subscriptions_are_reference_counted;
    reconnects_and_subscribes_again => redis_reconnects_and_subscribes_again, amqp_reconnects_and_subscribes_again;
}
