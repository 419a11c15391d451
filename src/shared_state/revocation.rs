//! Session revocations in Redis.
//!
//! - `revoked`: sorted set, session id → until (ms) its access tokens are
//!   refused; entries past that are trimmed on every write, and the key
//!   itself expires one access-token lifetime after the last write.
//! - `revocations`: pub/sub channel, `<until ms> <session id>` per
//!   revocation.
//!
//! Every instance subscribes to the channel, and after each (re)subscribe
//! reads the whole set, so a revocation published while it was not
//! listening (starting, reconnecting) is still applied.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{RedisShared, StateError};
use crate::auth::{Auth, RevocationLog};

/// Longest pause between attempts to resubscribe.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Revocations shared by every instance.
pub struct RedisRevocations {
    redis: RedisShared,
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl RedisRevocations {
    /// Revocations under the deployment's prefix.
    pub fn new(redis: RedisShared) -> Self {
        RedisRevocations { redis }
    }

    fn set_key(&self) -> String {
        self.redis.key(&["revoked"])
    }

    fn channel(&self) -> String {
        self.redis.key(&["revocations"])
    }

    /// Applies every revocation still in force to `auth`.
    pub async fn load(&self, auth: &Auth) -> Result<(), StateError> {
        let mut conn = self.redis.conn().await?;
        let now = millis(SystemTime::now());
        let revoked: Vec<(String, u64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.set_key())
            .arg(now)
            .arg("+inf")
            .arg("WITHSCORES")
            .query_async(&mut *conn)
            .await?;
        for (sid, until) in revoked {
            auth.revoked_elsewhere(&sid, UNIX_EPOCH + Duration::from_millis(until));
        }
        Ok(())
    }

    /// Applies revocations published by any instance to `auth` until
    /// shutdown, resubscribing after a lost connection.
    pub async fn follow(self: Arc<Self>, auth: Arc<Auth>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.follow_once(&auth, &shutdown, &mut backoff).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "revocation subscription lost; resubscribing"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn follow_once(
        &self,
        auth: &Auth,
        shutdown: &CancellationToken,
        backoff: &mut Duration,
    ) -> Result<(), StateError> {
        let mut pubsub = self.redis.client.get_async_pubsub().await?;
        pubsub.subscribe(self.channel()).await?;
        // Subscribed first, then read: nothing falls in between.
        self.load(auth).await?;
        *backoff = Duration::from_millis(100);
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                msg = messages.next() => {
                    let Some(msg) = msg else {
                        return Err(StateError("subscription closed".into()));
                    };
                    let payload: String = match msg.get_payload() {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!(error = %e, "unreadable revocation message");
                            continue;
                        }
                    };
                    match payload.split_once(' ').and_then(|(u, sid)| Some((u.parse::<u64>().ok()?, sid))) {
                        Some((until, sid)) => {
                            auth.revoked_elsewhere(sid, UNIX_EPOCH + Duration::from_millis(until));
                        }
                        None => tracing::warn!(payload, "malformed revocation message"),
                    }
                }
            }
        }
    }
}

#[async_trait]
impl RevocationLog for RedisRevocations {
    async fn publish(&self, session_id: &str, until: SystemTime) -> Result<(), String> {
        let now = millis(SystemTime::now());
        let until = millis(until);
        let mut conn = self.redis.conn().await.map_err(|e| e.to_string())?;
        redis::pipe()
            .cmd("ZADD")
            .arg(self.set_key())
            .arg(until)
            .arg(session_id)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.set_key())
            .arg("-inf")
            .arg(now)
            .ignore()
            // A new key gets an expiry (NX), a live one a later one (GT).
            .cmd("PEXPIREAT")
            .arg(self.set_key())
            .arg(until)
            .arg("NX")
            .ignore()
            .cmd("PEXPIREAT")
            .arg(self.set_key())
            .arg(until)
            .arg("GT")
            .ignore()
            .cmd("PUBLISH")
            .arg(self.channel())
            .arg(format!("{until} {session_id}"))
            .ignore()
            .query_async::<()>(&mut *conn)
            .await
            .map_err(|e| e.to_string())
    }
}
