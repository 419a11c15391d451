//! The shared sliding window: one Redis sorted set per key, scored by the
//! event time in milliseconds (Redis's own clock, so instances with skewed
//! clocks still agree), trimmed and counted in one Lua script so a check
//! and its record are atomic across instances.

use std::time::Duration;

use async_trait::async_trait;
use bb8::Pool;
use bb8_redis::RedisConnectionManager;

use super::{Decision, Limiter, LimiterError};

/// How long to wait for a pooled connection.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// `KEYS[1]` the set; `ARGV` limit, window (ms), a unique member suffix,
/// mode (`hit`, `peek`, `record`). Returns `{allowed, count, retry_ms}`.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local mode = ARGV[4]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if mode == 'record' or count < limit then
  if mode ~= 'peek' then
    redis.call('ZADD', KEYS[1], now, now .. ':' .. ARGV[3])
    if redis.call('PTTL', KEYS[1]) < window then
      redis.call('PEXPIRE', KEYS[1], window)
    end
    count = count + 1
  end
  return {1, count, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
return {0, count, tonumber(oldest[2]) + window - now}
";

/// Sliding windows in Redis, shared by every instance using the same
/// server and key prefix.
pub struct RedisLimiter {
    pool: Pool<RedisConnectionManager>,
    prefix: String,
    script: redis::Script,
}

impl RedisLimiter {
    /// A limiter on the Redis at `url` whose keys start with `prefix`
    /// (then `rl:`). Connects lazily, so this succeeds while Redis is down.
    ///
    /// # Errors
    ///
    /// When `url` is not a Redis URL.
    pub fn new(url: &str, prefix: &str) -> Result<RedisLimiter, LimiterError> {
        let manager =
            RedisConnectionManager::new(url).map_err(|e| LimiterError(format!("{url}: {e}")))?;
        let pool = Pool::builder()
            .max_size(16)
            .connection_timeout(CONNECTION_TIMEOUT)
            .build_unchecked(manager);
        Ok(RedisLimiter {
            pool,
            prefix: format!("{prefix}rl:"),
            script: redis::Script::new(SCRIPT),
        })
    }

    async fn run(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
        mode: &str,
    ) -> Result<(bool, u32, Duration), LimiterError> {
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| LimiterError(e.to_string()))?;
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let member = uuid::Uuid::new_v4().simple().to_string();
        let (allowed, count, retry_ms): (i64, i64, i64) = self
            .script
            .key(format!("{}{key}", self.prefix))
            .arg(limit)
            .arg(window_ms)
            .arg(member)
            .arg(mode)
            .invoke_async(&mut *conn)
            .await
            .map_err(|e| LimiterError(e.to_string()))?;
        Ok((
            allowed == 1,
            u32::try_from(count).unwrap_or(u32::MAX),
            Duration::from_millis(u64::try_from(retry_ms).unwrap_or(0)),
        ))
    }

    async fn decide(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
        mode: &str,
    ) -> Result<Decision, LimiterError> {
        let (allowed, count, retry_after) = self.run(key, limit, window, mode).await?;
        Ok(if allowed {
            Decision::Allowed { count }
        } else {
            Decision::Limited { retry_after }
        })
    }
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn hit(&self, key: &str, limit: u32, window: Duration) -> Result<Decision, LimiterError> {
        self.decide(key, limit, window, "hit").await
    }

    async fn peek(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> Result<Decision, LimiterError> {
        self.decide(key, limit, window, "peek").await
    }

    async fn record(&self, key: &str, window: Duration) -> Result<u32, LimiterError> {
        Ok(self.run(key, u32::MAX, window, "record").await?.1)
    }

    async fn clear(&self, key: &str) -> Result<(), LimiterError> {
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| LimiterError(e.to_string()))?;
        redis::cmd("DEL")
            .arg(format!("{}{key}", self.prefix))
            .query_async::<()>(&mut *conn)
            .await
            .map_err(|e| LimiterError(e.to_string()))
    }
}
