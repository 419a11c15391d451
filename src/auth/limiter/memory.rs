//! The in-process sliding window: a log of event instants per key.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{Decision, Limiter, LimiterError};

/// Keys kept before a sweep drops those whose events all left their window.
const SWEEP_AT: usize = 10_000;

/// Event logs per key in this process.
#[derive(Default)]
pub struct MemoryLimiter {
    keys: Mutex<HashMap<String, Window>>,
}

struct Window {
    events: VecDeque<Instant>,
    /// The longest window this key was asked about; events older than it
    /// can go.
    span: Duration,
}

impl Window {
    fn prune(&mut self, now: Instant) {
        while self
            .events
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.span)
        {
            self.events.pop_front();
        }
    }

    fn decide(&self, limit: u32, window: Duration, now: Instant) -> Decision {
        let inside: Vec<&Instant> = self
            .events
            .iter()
            .filter(|t| now.duration_since(**t) < window)
            .collect();
        let count = u32::try_from(inside.len()).unwrap_or(u32::MAX);
        if count < limit {
            return Decision::Allowed { count };
        }
        // The event that must leave before one more fits.
        let index = inside.len() - limit as usize;
        let retry_after = window.saturating_sub(now.duration_since(*inside[index]));
        Decision::Limited { retry_after }
    }
}

impl MemoryLimiter {
    /// An empty limiter.
    pub fn new() -> MemoryLimiter {
        MemoryLimiter::default()
    }

    fn with_window<T>(&self, key: &str, window: Duration, f: impl FnOnce(&mut Window) -> T) -> T {
        let now = Instant::now();
        let mut keys = self.keys.lock();
        if keys.len() >= SWEEP_AT && !keys.contains_key(key) {
            keys.retain(|_, w| {
                w.prune(now);
                !w.events.is_empty()
            });
        }
        let w = keys.entry(key.to_string()).or_insert_with(|| Window {
            events: VecDeque::new(),
            span: window,
        });
        w.span = w.span.max(window);
        w.prune(now);
        f(w)
    }
}

#[async_trait]
impl Limiter for MemoryLimiter {
    async fn hit(&self, key: &str, limit: u32, window: Duration) -> Result<Decision, LimiterError> {
        let now = Instant::now();
        Ok(
            self.with_window(key, window, |w| match w.decide(limit, window, now) {
                Decision::Allowed { count } => {
                    w.events.push_back(now);
                    Decision::Allowed { count: count + 1 }
                }
                limited => limited,
            }),
        )
    }

    async fn peek(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> Result<Decision, LimiterError> {
        let now = Instant::now();
        Ok(self.with_window(key, window, |w| w.decide(limit, window, now)))
    }

    async fn record(&self, key: &str, window: Duration) -> Result<u32, LimiterError> {
        let now = Instant::now();
        Ok(self.with_window(key, window, |w| {
            w.events.push_back(now);
            u32::try_from(w.events.len()).unwrap_or(u32::MAX)
        }))
    }

    async fn clear(&self, key: &str) -> Result<(), LimiterError> {
        self.keys.lock().remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn allows_up_to_the_limit_then_names_the_wait() {
        let l = MemoryLimiter::new();
        let w = Duration::from_secs(60);
        for n in 1..=3 {
            assert_eq!(
                l.hit("k", 3, w).await.unwrap(),
                Decision::Allowed { count: n }
            );
        }
        match l.hit("k", 3, w).await.unwrap() {
            Decision::Limited { retry_after } => {
                assert!(retry_after > Duration::from_secs(59) && retry_after <= w)
            }
            other => panic!("{other:?}"),
        }
        // Other keys are separate; peek records nothing.
        assert_eq!(
            l.peek("j", 3, w).await.unwrap(),
            Decision::Allowed { count: 0 }
        );
        assert_eq!(l.record("j", w).await.unwrap(), 1);
        l.clear("k").await.unwrap();
        assert!(l.hit("k", 3, w).await.unwrap().allowed());
    }

    #[tokio::test]
    async fn events_leave_the_window() {
        let l = MemoryLimiter::new();
        let w = Duration::from_millis(50);
        assert!(l.hit("k", 1, w).await.unwrap().allowed());
        assert!(!l.hit("k", 1, w).await.unwrap().allowed());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !l.peek("k", 1, w).await.unwrap().allowed() {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(l.hit("k", 1, w).await.unwrap().allowed());
    }
}
