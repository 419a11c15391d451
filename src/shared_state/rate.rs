//! The chat send rate in Redis: a token bucket per user
//! (`rate:chat:<user>`, fields `tokens` and `at`), refilled and taken in one
//! script so every instance draws from the same allowance.

use std::time::Duration;

use async_trait::async_trait;

use super::{script, RedisShared, StateError};
use crate::chat::SendRate;

/// KEYS: bucket. ARGV: rate per second, burst.
/// Returns `{1, 0}` when a token was taken, else `{0, retry_after_ms}`.
const TAKE: &str = r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local ok, wait = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  ok = 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {ok, wait}
";

/// Per-user token buckets shared by every instance.
pub struct RedisSendRate {
    redis: RedisShared,
    rate: u32,
    burst: u32,
    take: redis::Script,
}

impl RedisSendRate {
    /// `rate_per_sec` sustained (> 0), `burst` at once.
    pub fn new(redis: RedisShared, rate_per_sec: u32, burst: u32) -> Self {
        RedisSendRate {
            redis,
            rate: rate_per_sec.max(1),
            burst: burst.max(1),
            take: script(TAKE),
        }
    }
}

#[async_trait]
impl SendRate for RedisSendRate {
    async fn take(&self, user_id: &str) -> Result<Result<(), Duration>, StateError> {
        let mut conn = self.redis.conn().await?;
        let (ok, wait_ms): (i64, u64) = self
            .take
            .key(self.redis.key(&["rate", "chat", user_id]))
            .arg(self.rate)
            .arg(self.burst)
            .invoke_async(&mut *conn)
            .await?;
        Ok(if ok == 1 {
            Ok(())
        } else {
            Err(Duration::from_millis(wait_ms.max(1)))
        })
    }
}
