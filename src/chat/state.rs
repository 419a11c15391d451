//! Chat state that instances of a cluster share: typing indicators and the
//! per-user send rate. In memory on a single node; in Redis with
//! `shared_state = "redis"` (see `crate::shared_state`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::shared_state::StateError;

/// Who is typing where. Entries end by themselves after the typing expiry
/// unless renewed, even when the instance that set them is gone.
#[async_trait]
pub trait TypingState: Send + Sync {
    /// Starts or renews (`typing`) or ends the user's indicator in a
    /// conversation; `true` when it was not in that state before.
    async fn set(&self, cid: &str, user_id: &str, typing: bool) -> Result<bool, StateError>;

    /// Takes the indicators not renewed within the expiry, each handed to
    /// exactly one caller across instances: `(conversation, user)`.
    async fn expire(&self) -> Result<Vec<(String, String)>, StateError>;
}

/// The per-user chat send rate: `chat.rate_per_sec` sustained,
/// `chat.rate_burst` at once.
#[async_trait]
pub trait SendRate: Send + Sync {
    /// Takes one send from the user's allowance; `Err(retry_after)` when it
    /// is used up.
    async fn take(&self, user_id: &str) -> Result<Result<(), Duration>, StateError>;
}

/// The chat state parts one backend provides.
#[derive(Clone)]
pub struct ChatState {
    /// Typing indicators.
    pub typing: Arc<dyn TypingState>,
    /// Send rate.
    pub send_rate: Arc<dyn SendRate>,
}

impl ChatState {
    /// In this process's memory.
    pub fn memory(typing_expiry: Duration, rate_per_sec: u32, rate_burst: u32) -> ChatState {
        ChatState {
            typing: Arc::new(MemoryTyping::new(typing_expiry)),
            send_rate: Arc::new(MemorySendRate::new(rate_per_sec, rate_burst)),
        }
    }
}

/// Typing indicators in memory.
pub struct MemoryTyping {
    expiry: Duration,
    /// (conversation, user) -> last renewal.
    typing: Mutex<HashMap<(String, String), Instant>>,
}

impl MemoryTyping {
    /// Indicators lasting `expiry` without renewal.
    pub fn new(expiry: Duration) -> MemoryTyping {
        MemoryTyping {
            expiry,
            typing: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl TypingState for MemoryTyping {
    async fn set(&self, cid: &str, user_id: &str, typing: bool) -> Result<bool, StateError> {
        let key = (cid.to_owned(), user_id.to_owned());
        let mut t = self.typing.lock();
        Ok(if typing {
            t.insert(key, Instant::now()).is_none()
        } else {
            t.remove(&key).is_some()
        })
    }

    async fn expire(&self) -> Result<Vec<(String, String)>, StateError> {
        let mut t = self.typing.lock();
        let now = Instant::now();
        let keys: Vec<_> = t
            .iter()
            .filter(|(_, at)| now.duration_since(**at) >= self.expiry)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            t.remove(k);
        }
        Ok(keys)
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A token bucket per user, in memory.
pub struct MemorySendRate {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl MemorySendRate {
    /// `rate_per_sec` sustained (> 0), `burst` at once.
    pub fn new(rate_per_sec: u32, burst: u32) -> MemorySendRate {
        MemorySendRate {
            rate: f64::from(rate_per_sec.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl SendRate for MemorySendRate {
    async fn take(&self, user_id: &str) -> Result<Result<(), Duration>, StateError> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let b = buckets.entry(user_id.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens < 1.0 {
            return Ok(Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate)));
        }
        b.tokens -= 1.0;
        Ok(Ok(()))
    }
}
