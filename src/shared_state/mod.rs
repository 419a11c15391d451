//! State the instances of a cluster share (`shared_state`): presence,
//! typing indicators, session revocations and the chat send rate.
//!
//! Each concern's trait belongs to the code that uses it
//! ([`crate::presence::PresenceState`], [`crate::chat::TypingState`],
//! [`crate::chat::SendRate`], [`crate::auth::RevocationLog`]); this module
//! picks the backend from the configuration ([`open`]) and holds the Redis
//! implementations. Every Redis decision that more than one instance could
//! make at once (a user coming online, going offline, a typing indicator
//! expiring, a send taking a token) is one Lua script, so exactly one
//! instance sees each transition.

mod presence;
mod rate;
mod revocation;
mod typing;

use std::sync::Arc;
use std::time::Duration;

use bb8_redis::bb8::{Pool, PooledConnection};
use bb8_redis::RedisConnectionManager;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::chat::ChatState;
use crate::config::{Config, SharedStateKind};
use crate::presence::{MemoryPresence, PresenceState};

pub use presence::RedisPresence;
pub use rate::RedisSendRate;
pub use revocation::RedisRevocations;
pub use typing::RedisTyping;

/// The shared state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("shared state unavailable: {0}")]
pub struct StateError(pub String);

impl From<redis::RedisError> for StateError {
    fn from(e: redis::RedisError) -> Self {
        StateError(e.to_string())
    }
}

impl From<bb8_redis::bb8::RunError<redis::RedisError>> for StateError {
    fn from(e: bb8_redis::bb8::RunError<redis::RedisError>) -> Self {
        StateError(e.to_string())
    }
}

/// How long a Redis command may wait for a pooled connection.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// A Redis connection pool and the deployment's key prefix.
#[derive(Clone)]
pub struct RedisShared {
    pool: Pool<RedisConnectionManager>,
    client: redis::Client,
    prefix: String,
}

impl RedisShared {
    /// Connects to `url`; fails when Redis does not answer.
    pub async fn connect(url: &str, prefix: &str, pool_size: u32) -> Result<Self, StateError> {
        let client = redis::Client::open(url)?;
        let manager = RedisConnectionManager::new(url)?;
        let pool = Pool::builder()
            .max_size(pool_size.max(1))
            .connection_timeout(CONNECTION_TIMEOUT)
            .build(manager)
            .await?;
        let shared = RedisShared {
            pool,
            client,
            prefix: prefix.to_owned(),
        };
        shared.ping().await?;
        Ok(shared)
    }

    /// A pooled connection.
    async fn conn(&self) -> Result<PooledConnection<'_, RedisConnectionManager>, StateError> {
        Ok(self.pool.get().await?)
    }

    /// The prefixed name of a key or channel.
    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                k.push(':');
            }
            k.push_str(p);
        }
        k
    }

    /// Readiness: Redis answers a PING.
    pub async fn ping(&self) -> Result<(), StateError> {
        let mut conn = self.conn().await?;
        let pong: String = redis::cmd("PING").query_async(&mut *conn).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StateError(format!("unexpected PING answer {pong:?}")))
        }
    }
}

/// The state backends `shared_state` selects.
pub struct SharedState {
    /// Presence.
    pub presence: Arc<dyn PresenceState>,
    /// Typing indicators and the send rate.
    pub chat: ChatState,
    /// The Redis connection, with `shared_state = "redis"`.
    pub redis: Option<RedisShared>,
}

/// Opens the configured shared state; `instance_id` names this instance's
/// presence entries.
pub async fn open(config: &Config, instance_id: &str) -> Result<SharedState, StateError> {
    let grace = Duration::from_millis(config.presence.offline_grace_ms);
    let typing_expiry = Duration::from_millis(config.presence.typing_expiry_ms.max(1));
    match config.shared_state {
        SharedStateKind::Memory => Ok(SharedState {
            presence: Arc::new(MemoryPresence::new(grace)),
            chat: ChatState::memory(
                typing_expiry,
                config.chat.rate_per_sec,
                config.chat.rate_burst,
            ),
            redis: None,
        }),
        SharedStateKind::Redis => {
            let redis = RedisShared::connect(
                config.redis.url.trim(),
                &config.redis.key_prefix,
                config.redis.pool_size,
            )
            .await?;
            let refresh = Duration::from_millis(config.presence.refresh_ms.max(1));
            Ok(SharedState {
                presence: Arc::new(RedisPresence::new(
                    redis.clone(),
                    instance_id,
                    refresh * 3,
                    grace,
                )),
                chat: ChatState {
                    typing: Arc::new(RedisTyping::new(redis.clone(), typing_expiry)),
                    send_rate: Arc::new(RedisSendRate::new(
                        redis.clone(),
                        config.chat.rate_per_sec,
                        config.chat.rate_burst,
                    )),
                },
                redis: Some(redis),
            })
        }
    }
}

impl SharedState {
    /// With Redis: publishes this instance's session revocations to every
    /// instance and applies theirs here, until shutdown. Those still in
    /// force are applied before this returns.
    pub async fn share_revocations(
        &self,
        auth: &Arc<Auth>,
        shutdown: CancellationToken,
    ) -> Result<(), StateError> {
        let Some(redis) = &self.redis else {
            return Ok(());
        };
        let revocations = Arc::new(RedisRevocations::new(redis.clone()));
        revocations.load(auth).await?;
        auth.share_revocations(revocations.clone());
        tokio::spawn(revocations.follow(auth.clone(), shutdown));
        Ok(())
    }
}

/// Milliseconds since the Unix epoch (Redis `TIME` in scripts) as a time.
fn from_millis(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The current time from inside a script, in milliseconds; scripts use
/// Redis's clock so instances with skewed clocks still agree.
const LUA_NOW: &str = "local t = redis.call('TIME')\n\
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// A script body that starts with `now` set.
fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{LUA_NOW}{body}"))
}
