//! Revocations every instance hears of. A session revoked here (logout,
//! refresh-token reuse) is published through a [`RevocationLog`] when one is
//! configured; revocations published elsewhere come back through
//! [`Auth::revoked_elsewhere`], after which this instance refuses the
//! session's access tokens and closes its live connections. Refresh-token
//! families need nothing of this: they are checked in the shared database.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::Auth;

/// Where revoked sessions are published for the other instances.
#[async_trait]
pub trait RevocationLog: Send + Sync {
    /// Announces that `session_id`'s access tokens are refused until
    /// `until` (when the last of them would have expired anyway).
    async fn publish(&self, session_id: &str, until: SystemTime) -> Result<(), String>;
}

impl Auth {
    /// Publishes this instance's revocations through `log` from now on.
    /// Only the first call counts.
    pub fn share_revocations(&self, log: Arc<dyn RevocationLog>) {
        let _ = self.revocation_log.set(log);
    }

    /// A session revoked by another instance: refuse its access tokens until
    /// `until` and tell [`Auth::subscribe_revocations`] (once per session).
    pub fn revoked_elsewhere(&self, session_id: &str, until: SystemTime) {
        let now = SystemTime::now();
        if until <= now {
            return;
        }
        {
            let mut revoked = self.revoked.lock();
            if revoked.get(session_id).is_some_and(|u| *u >= until) {
                return;
            }
            revoked.retain(|_, u| *u > now);
            revoked.insert(session_id.to_owned(), until);
        }
        let _ = self.revocations.send(session_id.to_owned());
    }

    /// Publishes a revocation made here. A failure is logged: the session
    /// is revoked in the database either way, and its refresh tokens stop
    /// working everywhere.
    pub(super) async fn publish_revoked(&self, session_id: &str) {
        let Some(log) = self.revocation_log.get() else {
            return;
        };
        // One second of margin: `exp` has whole-second resolution.
        let until = SystemTime::now() + Duration::from_secs(self.access_ttl_secs + 1);
        if let Err(e) = log.publish(session_id, until).await {
            tracing::warn!(error = %e, session_id, "publishing a revocation failed");
        }
    }
}
