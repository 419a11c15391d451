//! Typing indicators in Redis: one sorted set per deployment,
//! `typing` → `<conversation>|<user>` scored by the indicator's deadline
//! (ms). Any instance's periodic expiry takes the indicators past their
//! deadline in one script, so each expiry is announced once, also when the
//! instance that set the indicator is gone.

use std::time::Duration;

use async_trait::async_trait;

use super::{script, RedisShared, StateError};
use crate::chat::TypingState;

/// Indicators expired per call.
const EXPIRE_LIMIT: usize = 500;

/// KEYS: set. ARGV: member, expiry. Returns 1 when the member is new.
const START: &str = r"
local added = redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 4 + 60000)
return added
";

/// KEYS: set. ARGV: limit. Returns the members past their deadline,
/// removed.
const EXPIRE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
";

/// Typing indicators shared by every instance.
pub struct RedisTyping {
    redis: RedisShared,
    expiry: Duration,
    start: redis::Script,
    expire: redis::Script,
}

impl RedisTyping {
    /// Indicators lasting `expiry` without renewal.
    pub fn new(redis: RedisShared, expiry: Duration) -> Self {
        RedisTyping {
            redis,
            expiry,
            start: script(START),
            expire: script(EXPIRE),
        }
    }

    fn key(&self) -> String {
        self.redis.key(&["typing"])
    }
}

fn member(cid: &str, user_id: &str) -> String {
    format!("{cid}|{user_id}")
}

#[async_trait]
impl TypingState for RedisTyping {
    async fn set(&self, cid: &str, user_id: &str, typing: bool) -> Result<bool, StateError> {
        let mut conn = self.redis.conn().await?;
        let changed: i64 = if typing {
            self.start
                .key(self.key())
                .arg(member(cid, user_id))
                .arg(u64::try_from(self.expiry.as_millis()).unwrap_or(u64::MAX))
                .invoke_async(&mut *conn)
                .await?
        } else {
            redis::cmd("ZREM")
                .arg(self.key())
                .arg(member(cid, user_id))
                .query_async(&mut *conn)
                .await?
        };
        Ok(changed == 1)
    }

    async fn expire(&self) -> Result<Vec<(String, String)>, StateError> {
        let mut conn = self.redis.conn().await?;
        let due: Vec<String> = self
            .expire
            .key(self.key())
            .arg(EXPIRE_LIMIT)
            .invoke_async(&mut *conn)
            .await?;
        // Conversation ids never contain `|`; user ids after it are whole.
        Ok(due
            .into_iter()
            .filter_map(|m| m.split_once('|').map(|(c, u)| (c.to_owned(), u.to_owned())))
            .collect())
    }
}
