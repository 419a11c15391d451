#![allow(dead_code)]

//! Addresses of the Redis and RabbitMQ the cluster suites use, and the
//! STOMPLINE_REQUIRE_SERVICES rule: an unreachable service skips the test
//! (with a notice), or fails it when `STOMPLINE_REQUIRE_SERVICES=1`.

use std::time::Duration;

/// `STOMPLINE_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    env_or("STOMPLINE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
}

/// `STOMPLINE_TEST_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`.
pub fn amqp_url() -> String {
    env_or(
        "STOMPLINE_TEST_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    )
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Whether unreachable services fail tests.
pub fn required() -> bool {
    std::env::var("STOMPLINE_REQUIRE_SERVICES").as_deref() == Ok("1")
}

/// Reports an unusable service: panics when services are required,
/// otherwise prints the skip notice.
pub fn unusable(what: &str, why: impl std::fmt::Display) {
    assert!(
        !required(),
        "{what} is required (STOMPLINE_REQUIRE_SERVICES=1) but unusable: {why}"
    );
    eprintln!("SKIPPED: {what} unusable ({why})");
}

/// An admin connection to the test Redis, or `None` (see [`unusable`]).
pub async fn redis_admin() -> Option<redis::aio::MultiplexedConnection> {
    let url = redis_url();
    let client = match redis::Client::open(url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            unusable("Redis", e);
            return None;
        }
    };
    let connect = client.get_multiplexed_async_connection();
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            unusable("Redis", e);
            None
        }
        Err(_) => {
            unusable("Redis", "connect timed out");
            None
        }
    }
}

/// True when RabbitMQ accepts a relay connection (else see [`unusable`]).
pub async fn amqp_usable() -> bool {
    let config = stompline::config::AmqpConfig {
        url: amqp_url(),
        exchange: format!("probe.{}", uuid::Uuid::new_v4().simple()),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let outcome = stompline::relay::amqp::AmqpRelay::connect(&config, stop.clone()).await;
    stop.cancel();
    match outcome {
        Ok(_) => {
            amqp_delete_exchange(&config.exchange).await;
            true
        }
        Err(e) => {
            unusable("RabbitMQ", e);
            false
        }
    }
}

/// Creates Redis ACL user `user` (all keys, channels and commands) and
/// returns the test Redis URL logging in as it, so that `CLIENT KILL USER`
/// can end exactly that user's connections.
pub async fn redis_url_as(admin: &mut redis::aio::MultiplexedConnection, user: &str) -> String {
    let password = uuid::Uuid::new_v4().simple().to_string();
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(user)
        .arg("on")
        .arg(format!(">{password}"))
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async::<()>(admin)
        .await
        .expect("ACL SETUSER");
    let url = redis_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    format!("redis://{user}:{password}@{rest}")
}

/// Removes an ACL user made by [`redis_url_as`] (closing its connections).
pub async fn redis_drop_user(admin: &mut redis::aio::MultiplexedConnection, user: &str) {
    let _ = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(user)
        .query_async::<i64>(admin)
        .await;
}

/// Deletes a test's exchange from the test RabbitMQ (best effort).
pub async fn amqp_delete_exchange(exchange: &str) {
    let props = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio::current());
    let Ok(conn) = lapin::Connection::connect(&amqp_url(), props).await else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        let _ = ch
            .exchange_delete(exchange, lapin::options::ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done").await;
}
