//! Presence kept in this process: a single node.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use time::OffsetDateTime;

use super::{PresenceState, Status, Transition};
use crate::shared_state::StateError;
use crate::store;

struct UserState {
    connections: usize,
    status: Status,
    /// When the last connection closed, so a timer started by an earlier
    /// disconnect does nothing after a reconnect.
    left: Instant,
    last_seen: OffsetDateTime,
}

/// This instance's users, in memory.
pub struct MemoryPresence {
    grace: Duration,
    users: Mutex<HashMap<String, UserState>>,
}

impl MemoryPresence {
    /// Presence with an offline grace period.
    pub fn new(grace: Duration) -> MemoryPresence {
        MemoryPresence {
            grace,
            users: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl PresenceState for MemoryPresence {
    async fn connected(&self, user_id: &str) -> Result<Option<OffsetDateTime>, StateError> {
        let now = store::now();
        let mut users = self.users.lock();
        let u = users.entry(user_id.to_owned()).or_insert(UserState {
            connections: 0,
            status: Status::Offline,
            left: Instant::now(),
            last_seen: now,
        });
        u.connections += 1;
        u.last_seen = now;
        if u.status == Status::Offline {
            u.status = Status::Online;
            return Ok(Some(now));
        }
        Ok(None)
    }

    async fn disconnected(&self, user_id: &str) -> Result<Option<Duration>, StateError> {
        let mut users = self.users.lock();
        let Some(u) = users.get_mut(user_id) else {
            return Ok(None);
        };
        u.connections = u.connections.saturating_sub(1);
        u.last_seen = store::now();
        if u.connections > 0 {
            return Ok(None);
        }
        u.left = Instant::now();
        Ok(Some(self.grace))
    }

    async fn settle(&self, user_id: &str) -> Result<Option<OffsetDateTime>, StateError> {
        let mut users = self.users.lock();
        match users.get(user_id) {
            Some(u) if u.connections == 0 && u.left.elapsed() >= self.grace => {
                let seen = u.last_seen;
                users.remove(user_id);
                Ok(Some(seen))
            }
            _ => Ok(None),
        }
    }

    async fn set_status(
        &self,
        user_id: &str,
        status: Status,
    ) -> Result<Option<OffsetDateTime>, StateError> {
        let now = store::now();
        let mut users = self.users.lock();
        match users.get_mut(user_id) {
            Some(u) if u.connections > 0 && u.status != status => {
                u.status = status;
                u.last_seen = now;
                Ok(Some(now))
            }
            _ => Ok(None),
        }
    }

    async fn get(
        &self,
        user_ids: &[String],
    ) -> Result<Vec<Option<(Status, OffsetDateTime)>>, StateError> {
        let users = self.users.lock();
        Ok(user_ids
            .iter()
            .map(|id| users.get(id).map(|u| (u.status, u.last_seen)))
            .collect())
    }

    async fn tick(&self) -> Result<Vec<Transition>, StateError> {
        // Offline timers do all the work on a single node.
        Ok(Vec::new())
    }
}
