//! Brute-force protection on top of a [`Limiter`]: a per-IP request limit
//! per action, a per-account failure limit, and a growing delay after
//! repeated failed logins of one account.
//!
//! Lockout is bounded by design: only *failures* within the sliding window
//! count against an account, so an account is usable again at most one
//! window after an attack stops, and one-time-code login keeps its own
//! counters.
//!
//! When the limiter cannot answer (Redis down) requests go through and a
//! warning is logged: an outage of the shared store must not lock every
//! user out.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::limiter::{Decision, Limiter, MemoryLimiter};
use crate::config::RateLimitConfig;
use crate::metrics::{labels, names};

/// What is being attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `POST /api/auth/register`.
    Register,
    /// `POST /api/auth/login`.
    Login,
    /// `POST /api/auth/request-otp`.
    RequestOtp,
    /// `POST /api/auth/verify-otp`.
    VerifyOtp,
    /// STOMP CONNECT with login and password.
    StompConnect,
}

impl Action {
    /// Name used in keys and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Login => "login",
            Self::RequestOtp => "request_otp",
            Self::VerifyOtp => "verify_otp",
            Self::StompConnect => "stomp_connect",
        }
    }

    /// Password logins over REST and STOMP share one failure count per
    /// account, so switching protocol gains an attacker nothing.
    fn account_scope(self) -> &'static str {
        match self {
            Self::Login | Self::StompConnect => "password",
            other => other.name(),
        }
    }
}

/// A refused attempt: retry after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// When a retry may succeed.
    pub retry_after: Duration,
}

/// The rate-limit policy of `[rate_limit]` over a [`Limiter`].
#[derive(Clone)]
pub struct RateLimits {
    limiter: Arc<dyn Limiter>,
    config: RateLimitConfig,
}

impl Default for RateLimits {
    /// Disabled limits over an in-memory limiter (the hourly code caps
    /// still count).
    fn default() -> Self {
        RateLimits {
            limiter: Arc::new(MemoryLimiter::new()),
            config: RateLimitConfig {
                enabled: false,
                ..RateLimitConfig::default()
            },
        }
    }
}

impl RateLimits {
    /// The policy `config` describes, counted in `limiter`.
    pub fn new(limiter: Arc<dyn Limiter>, config: RateLimitConfig) -> RateLimits {
        RateLimits { limiter, config }
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.config.window_secs.max(1))
    }

    fn refused(action: &str, decision: Decision) -> Result<(), Limited> {
        match decision {
            Decision::Allowed { .. } => Ok(()),
            Decision::Limited { retry_after } => {
                metrics::counter!(names::RATE_LIMITED, labels::KIND => action.to_string())
                    .increment(1);
                Err(Limited { retry_after })
            }
        }
    }

    fn unavailable(e: impl std::fmt::Display) -> Decision {
        tracing::warn!(error = %e, "rate limiter unavailable; request let through");
        Decision::Allowed { count: 0 }
    }

    /// Counts one request of `action` from `ip` and refuses it beyond
    /// `per_ip` per window.
    pub async fn check_ip(&self, action: Action, ip: Option<IpAddr>) -> Result<(), Limited> {
        let (Some(ip), true, limit) = (ip, self.config.enabled, self.config.per_ip) else {
            return Ok(());
        };
        if limit == 0 {
            return Ok(());
        }
        let key = format!("ip:{}:{ip}", action.name());
        let decision = self
            .limiter
            .hit(&key, limit, self.window())
            .await
            .unwrap_or_else(Self::unavailable);
        Self::refused(action.name(), decision)
    }

    /// Refuses an attempt on `account` once it has `per_account` failures
    /// in the window.
    pub async fn check_account(&self, action: Action, account: &str) -> Result<(), Limited> {
        if !self.config.enabled || self.config.per_account == 0 {
            return Ok(());
        }
        let decision = self
            .limiter
            .peek(
                &account_key(action, account),
                self.config.per_account,
                self.window(),
            )
            .await
            .unwrap_or_else(Self::unavailable);
        Self::refused(action.name(), decision)
    }

    /// Records a failed attempt on `account` and returns how long to hold
    /// the answer back (zero for the first `failure_delay_after` failures
    /// in the window, then doubling up to the maximum).
    pub async fn failed(&self, action: Action, account: &str) -> Duration {
        if !self.config.enabled {
            return Duration::ZERO;
        }
        let failures = match self
            .limiter
            .record(&account_key(action, account), self.window())
            .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "rate limiter unavailable; failure not counted");
                return Duration::ZERO;
            }
        };
        self.delay_after(failures)
    }

    fn delay_after(&self, failures: u32) -> Duration {
        let c = &self.config;
        if failures <= c.failure_delay_after {
            return Duration::ZERO;
        }
        let doublings = (failures - c.failure_delay_after - 1).min(20);
        Duration::from_millis(
            c.failure_delay_ms
                .saturating_mul(1u64 << doublings)
                .min(c.failure_delay_max_ms),
        )
    }

    /// Forgets the failures of `account` after a success.
    pub async fn succeeded(&self, action: Action, account: &str) {
        if !self.config.enabled {
            return;
        }
        if let Err(e) = self.limiter.clear(&account_key(action, account)).await {
            tracing::warn!(error = %e, "rate limiter unavailable; failures not cleared");
        }
    }

    /// Counts one event of an hourly cap (`limit` 0 = no cap); these apply
    /// even with `[rate_limit] enabled = false`.
    pub async fn hourly(&self, key: &str, limit: u32) -> Result<(), Limited> {
        if limit == 0 {
            return Ok(());
        }
        let decision = self
            .limiter
            .hit(&format!("hour:{key}"), limit, Duration::from_secs(3600))
            .await
            .unwrap_or_else(Self::unavailable);
        Self::refused(key.split(':').next().unwrap_or("hourly"), decision)
    }
}

fn account_key(action: Action, account: &str) -> String {
    format!(
        "acct:{}:{}",
        action.account_scope(),
        account.trim().to_lowercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_ip: u32, per_account: u32) -> RateLimits {
        RateLimits::new(
            Arc::new(MemoryLimiter::new()),
            RateLimitConfig {
                per_ip,
                per_account,
                ..RateLimitConfig::default()
            },
        )
    }

    #[tokio::test]
    async fn per_ip_counts_each_action_separately() {
        let l = limits(2, 10);
        let ip = Some("10.0.0.1".parse().unwrap());
        assert!(l.check_ip(Action::Login, ip).await.is_ok());
        assert!(l.check_ip(Action::Login, ip).await.is_ok());
        let refused = l.check_ip(Action::Login, ip).await.unwrap_err();
        assert!(refused.retry_after > Duration::ZERO);
        assert!(l.check_ip(Action::Register, ip).await.is_ok());
        assert!(l
            .check_ip(Action::Login, Some("10.0.0.2".parse().unwrap()))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn failures_delay_then_refuse_and_success_clears() {
        let l = limits(100, 6);
        let mut delays = Vec::new();
        for _ in 0..6 {
            assert!(l.check_account(Action::Login, "Alice").await.is_ok());
            delays.push(l.failed(Action::Login, "alice").await.as_millis());
        }
        assert_eq!(delays, [0, 0, 0, 250, 500, 1000]);
        // STOMP password logins share the count.
        assert!(l
            .check_account(Action::StompConnect, "ALICE")
            .await
            .is_err());
        assert!(l.check_account(Action::VerifyOtp, "alice").await.is_ok());
        l.succeeded(Action::Login, "alice").await;
        assert!(l.check_account(Action::Login, "alice").await.is_ok());
    }

    #[test]
    fn delay_is_capped() {
        let l = limits(1, 1);
        assert_eq!(l.delay_after(100), Duration::from_millis(4000));
    }

    #[tokio::test]
    async fn disabled_limits_let_everything_through_but_hourly_caps_count() {
        let l = RateLimits::default();
        for _ in 0..100 {
            assert!(l
                .check_ip(Action::Login, Some([1, 2, 3, 4].into()))
                .await
                .is_ok());
        }
        assert!(l.hourly("otp:a", 1).await.is_ok());
        assert!(l.hourly("otp:a", 1).await.is_err());
        assert!(l.hourly("otp:b", 0).await.is_ok());
    }
}
