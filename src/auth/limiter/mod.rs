//! Sliding-window rate limiting: how many events a key (an IP, an account)
//! had within the last window, and when the oldest of them leaves it.
//!
//! [`Limiter`] is the interface; [`MemoryLimiter`] keeps the windows in
//! this process (the embedded default), [`RedisLimiter`] keeps them in Redis
//! sorted sets so every instance of a cluster shares the counts.

mod memory;
mod redis;

use std::time::Duration;

use async_trait::async_trait;

pub use self::redis::RedisLimiter;
pub use memory::MemoryLimiter;

/// The outcome of [`Limiter::hit`] or [`Limiter::peek`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Within the limit; `count` events are in the window (including this
    /// one for a hit).
    Allowed {
        /// Events in the window.
        count: u32,
    },
    /// Over the limit; nothing was recorded.
    Limited {
        /// When the oldest event leaves the window.
        retry_after: Duration,
    },
}

impl Decision {
    /// Whether the event may go ahead.
    pub fn allowed(&self) -> bool {
        matches!(self, Self::Allowed { .. })
    }
}

/// Why the limiter could not answer.
#[derive(Debug, thiserror::Error)]
#[error("rate limiter unavailable: {0}")]
pub struct LimiterError(pub String);

/// Sliding-window counters per key.
#[async_trait]
pub trait Limiter: Send + Sync {
    /// Records an event on `key` if fewer than `limit` are in the last
    /// `window`; otherwise records nothing and says when to retry. Atomic:
    /// concurrent hits never let more than `limit` through.
    async fn hit(&self, key: &str, limit: u32, window: Duration) -> Result<Decision, LimiterError>;

    /// Like [`Limiter::hit`] without recording anything.
    async fn peek(&self, key: &str, limit: u32, window: Duration)
        -> Result<Decision, LimiterError>;

    /// Records an event on `key` whatever the count; returns the count in
    /// the window afterwards.
    async fn record(&self, key: &str, window: Duration) -> Result<u32, LimiterError>;

    /// Forgets every event of `key`.
    async fn clear(&self, key: &str) -> Result<(), LimiterError>;
}
