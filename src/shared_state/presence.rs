//! Presence in Redis.
//!
//! Keys (after the prefix):
//! - `presence:conn:<user>`: hash, instance id → deadline (ms). An instance
//!   holds an entry while it has connections of the user, and renews it
//!   every refresh interval (one script call for all its users); an entry
//!   past its deadline belongs to an instance that is gone.
//! - `presence:user:<user>`: hash with `status` (`online`/`away`) and
//!   `seen` (ms); absent = offline.
//! - `presence:due`: sorted set, user → when to check whether the user went
//!   offline (last connection closed + grace, or last deadline + grace).
//!
//! The `online` transition is `HSETNX status` inside the connect script and
//! the `offline` one is the settle script deleting the user hash, so each is
//! announced by exactly one instance however many race.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use time::OffsetDateTime;

use super::{from_millis, script, RedisShared, StateError};
use crate::presence::{PresenceState, Status, Transition};

/// Users refreshed per script call.
const REFRESH_CHUNK: usize = 500;
/// Due users settled per tick.
const SWEEP_LIMIT: isize = 200;

/// KEYS: conn, user, due. ARGV: instance, ttl, grace, user id.
/// Returns `{came_online, now}`.
const CONNECT: &str = r"
local ttl = tonumber(ARGV[2])
local grace = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], now + ttl)
redis.call('PEXPIRE', KEYS[1], ttl + grace)
redis.call('ZADD', KEYS[3], 'GT', now + ttl + grace, ARGV[4])
local came = redis.call('HSETNX', KEYS[2], 'status', 'online')
redis.call('HSET', KEYS[2], 'seen', now)
return {came, now}
";

/// KEYS: conn, user, due. ARGV: instance, grace, user id.
/// Returns 1 when no connection of the user is left anywhere.
const DISCONNECT: &str = r"
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'seen', now)
end
local c = redis.call('HGETALL', KEYS[1])
for i = 1, #c, 2 do
  if tonumber(c[i + 1]) > now then return 0 end
end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), ARGV[3])
return 1
";

/// KEYS: conn, user, due. ARGV: user id, grace.
/// Returns the last-seen time when the user went offline now, else nil.
const SETTLE: &str = r"
local due = redis.call('ZSCORE', KEYS[3], ARGV[1])
if not due or tonumber(due) > now then return false end
local live = 0
local c = redis.call('HGETALL', KEYS[1])
for i = 1, #c, 2 do
  local d = tonumber(c[i + 1])
  if d > now then
    if d > live then live = d end
  else
    redis.call('HDEL', KEYS[1], c[i])
  end
end
if live > 0 then
  redis.call('ZADD', KEYS[3], live + tonumber(ARGV[2]), ARGV[1])
  return false
end
redis.call('ZREM', KEYS[3], ARGV[1])
local u = redis.call('HMGET', KEYS[2], 'status', 'seen')
redis.call('DEL', KEYS[2])
if not u[1] then return false end
return tonumber(u[2]) or now
";

/// KEYS: user. ARGV: status. Returns the time when it changed, else nil.
const SET_STATUS: &str = r"
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur or cur == ARGV[1] then return false end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'seen', now)
return now
";

/// KEYS: due, then conn and user per user. ARGV: instance, ttl, grace,
/// then the user ids. Returns the users that came (back) online, e.g.
/// after Redis lost its data.
const REFRESH: &str = r"
local ttl = tonumber(ARGV[2])
local grace = tonumber(ARGV[3])
local came = {}
for i = 4, #ARGV do
  local conn = KEYS[2 * (i - 3)]
  local user = KEYS[2 * (i - 3) + 1]
  redis.call('HSET', conn, ARGV[1], now + ttl)
  redis.call('PEXPIRE', conn, ttl + grace)
  redis.call('ZADD', KEYS[1], 'GT', now + ttl + grace, ARGV[i])
  if redis.call('HSETNX', user, 'status', 'online') == 1 then
    came[#came + 1] = ARGV[i]
  end
  redis.call('HSET', user, 'seen', now)
end
return {now, came}
";

/// Presence shared by every instance through Redis.
pub struct RedisPresence {
    redis: RedisShared,
    instance: String,
    /// How long an instance's entry lives without a refresh.
    ttl: Duration,
    grace: Duration,
    /// This instance's connections per user.
    local: Mutex<HashMap<String, usize>>,
    connect: redis::Script,
    disconnect: redis::Script,
    settle: redis::Script,
    set_status: redis::Script,
    refresh: redis::Script,
}

impl RedisPresence {
    /// Presence of `instance`'s users; entries live `ttl` without refresh,
    /// users stay online `grace` after their last connection.
    pub fn new(redis: RedisShared, instance: &str, ttl: Duration, grace: Duration) -> Self {
        RedisPresence {
            redis,
            instance: instance.to_owned(),
            ttl,
            grace,
            local: Mutex::new(HashMap::new()),
            connect: script(CONNECT),
            disconnect: script(DISCONNECT),
            settle: script(SETTLE),
            set_status: script(SET_STATUS),
            refresh: script(REFRESH),
        }
    }

    fn conn_key(&self, user_id: &str) -> String {
        self.redis.key(&["presence", "conn", user_id])
    }

    fn user_key(&self, user_id: &str) -> String {
        self.redis.key(&["presence", "user", user_id])
    }

    fn due_key(&self) -> String {
        self.redis.key(&["presence", "due"])
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    fn grace_ms(&self) -> u64 {
        u64::try_from(self.grace.as_millis()).unwrap_or(u64::MAX)
    }

    /// Renews this instance's entries; returns users that came online.
    async fn refresh_local(&self) -> Result<Vec<Transition>, StateError> {
        let users: Vec<String> = self.local.lock().keys().cloned().collect();
        let mut came = Vec::new();
        let mut conn = self.redis.conn().await?;
        for chunk in users.chunks(REFRESH_CHUNK) {
            let mut call = self.refresh.prepare_invoke();
            call.key(self.due_key());
            for u in chunk {
                call.key(self.conn_key(u)).key(self.user_key(u));
            }
            call.arg(&self.instance)
                .arg(self.ttl_ms())
                .arg(self.grace_ms());
            for u in chunk {
                call.arg(u);
            }
            let (now, online): (i64, Vec<String>) = call.invoke_async(&mut *conn).await?;
            came.extend(
                online
                    .into_iter()
                    .map(|u| (u, Status::Online, from_millis(now))),
            );
        }
        Ok(came)
    }

    /// Settles users whose check time has passed (after an instance died,
    /// or an instance's own settle timer was lost).
    async fn sweep(&self) -> Result<Vec<Transition>, StateError> {
        let due: Vec<String> = {
            let mut conn = self.redis.conn().await?;
            let now = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
            redis::cmd("ZRANGEBYSCORE")
                .arg(self.due_key())
                .arg("-inf")
                .arg(i64::try_from(now).unwrap_or(i64::MAX))
                .arg("LIMIT")
                .arg(0)
                .arg(SWEEP_LIMIT)
                .query_async(&mut *conn)
                .await?
        };
        let mut gone = Vec::new();
        for user in due {
            if let Some(seen) = self.settle(&user).await? {
                gone.push((user, Status::Offline, seen));
            }
        }
        Ok(gone)
    }
}

#[async_trait]
impl PresenceState for RedisPresence {
    async fn connected(&self, user_id: &str) -> Result<Option<OffsetDateTime>, StateError> {
        *self.local.lock().entry(user_id.to_owned()).or_insert(0) += 1;
        let mut conn = self.redis.conn().await?;
        let (came, now): (i64, i64) = self
            .connect
            .key(self.conn_key(user_id))
            .key(self.user_key(user_id))
            .key(self.due_key())
            .arg(&self.instance)
            .arg(self.ttl_ms())
            .arg(self.grace_ms())
            .arg(user_id)
            .invoke_async(&mut *conn)
            .await?;
        Ok((came == 1).then(|| from_millis(now)))
    }

    async fn disconnected(&self, user_id: &str) -> Result<Option<Duration>, StateError> {
        {
            let mut local = self.local.lock();
            let Some(n) = local.get_mut(user_id) else {
                return Ok(None);
            };
            *n = n.saturating_sub(1);
            if *n > 0 {
                return Ok(None);
            }
            local.remove(user_id);
        }
        let mut conn = self.redis.conn().await?;
        let none_left: i64 = self
            .disconnect
            .key(self.conn_key(user_id))
            .key(self.user_key(user_id))
            .key(self.due_key())
            .arg(&self.instance)
            .arg(self.grace_ms())
            .arg(user_id)
            .invoke_async(&mut *conn)
            .await?;
        Ok((none_left == 1).then_some(self.grace))
    }

    async fn settle(&self, user_id: &str) -> Result<Option<OffsetDateTime>, StateError> {
        let mut conn = self.redis.conn().await?;
        let seen: Option<i64> = self
            .settle
            .key(self.conn_key(user_id))
            .key(self.user_key(user_id))
            .key(self.due_key())
            .arg(user_id)
            .arg(self.grace_ms())
            .invoke_async(&mut *conn)
            .await?;
        Ok(seen.map(from_millis))
    }

    async fn set_status(
        &self,
        user_id: &str,
        status: Status,
    ) -> Result<Option<OffsetDateTime>, StateError> {
        let mut conn = self.redis.conn().await?;
        let at: Option<i64> = self
            .set_status
            .key(self.user_key(user_id))
            .arg(status.as_str())
            .invoke_async(&mut *conn)
            .await?;
        Ok(at.map(from_millis))
    }

    async fn get(
        &self,
        user_ids: &[String],
    ) -> Result<Vec<Option<(Status, OffsetDateTime)>>, StateError> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for u in user_ids {
            pipe.cmd("HMGET")
                .arg(self.user_key(u))
                .arg("status")
                .arg("seen");
        }
        let mut conn = self.redis.conn().await?;
        let rows: Vec<(Option<String>, Option<i64>)> = pipe.query_async(&mut *conn).await?;
        Ok(rows
            .into_iter()
            .map(|(status, seen)| {
                let status = status.as_deref().and_then(Status::parse)?;
                Some((status, from_millis(seen.unwrap_or(0))))
            })
            .collect())
    }

    async fn tick(&self) -> Result<Vec<Transition>, StateError> {
        let mut changes = self.refresh_local().await?;
        changes.extend(self.sweep().await?);
        Ok(changes)
    }
}
