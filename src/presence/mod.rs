//! Presence: `online` while a user has a connection, `away` on request,
//! `offline` once the last connection has been closed for the grace period.
//!
//! Many tabs or a flapping network produce one `online` and one `offline`
//! event: a reconnect within the grace cancels the pending `offline`, and
//! further connections of an online user change nothing. Changes go to the
//! user's audience (explicit contacts, co-members and those who list the
//! user as a contact) on `/user/queue/presence`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use time::OffsetDateTime;

use crate::chat::events::{self, kind, rfc3339, user_queue, Event};
use crate::relay::Relay;
use crate::store::{self, Store};

/// A user's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Connected and active.
    Online,
    /// Connected, marked away.
    Away,
    /// Not connected (past the grace period).
    Offline,
}

impl Status {
    /// `online`, `away` or `offline`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Away => "away",
            Status::Offline => "offline",
        }
    }
}

struct UserState {
    connections: usize,
    status: Status,
    /// Bumped on every connect, so a stale offline timer does nothing.
    generation: u64,
    last_seen: OffsetDateTime,
}

/// Presence of this instance's users.
pub struct Presence {
    store: Arc<dyn Store>,
    relay: Arc<dyn Relay>,
    grace: Duration,
    users: Mutex<HashMap<String, UserState>>,
}

impl Presence {
    /// Presence with an offline grace period.
    pub fn new(store: Arc<dyn Store>, relay: Arc<dyn Relay>, grace: Duration) -> Arc<Presence> {
        Arc::new(Presence {
            store,
            relay,
            grace,
            users: Mutex::new(HashMap::new()),
        })
    }

    /// A connection of `user_id` was authenticated.
    pub async fn connected(&self, user_id: &str) {
        let now = store::now();
        let changed = {
            let mut users = self.users.lock();
            let u = users.entry(user_id.to_owned()).or_insert(UserState {
                connections: 0,
                status: Status::Offline,
                generation: 0,
                last_seen: now,
            });
            u.connections += 1;
            u.generation += 1;
            u.last_seen = now;
            if u.status == Status::Offline {
                u.status = Status::Online;
                true
            } else {
                false
            }
        };
        if changed {
            self.announce(user_id, Status::Online, now).await;
        }
    }

    /// A connection of `user_id` closed: after the grace period with no
    /// connection, the user goes offline.
    pub fn disconnected(self: &Arc<Self>, user_id: &str) {
        let generation = {
            let mut users = self.users.lock();
            let Some(u) = users.get_mut(user_id) else {
                return;
            };
            u.connections = u.connections.saturating_sub(1);
            u.last_seen = store::now();
            if u.connections > 0 {
                return;
            }
            u.generation
        };
        let me = self.clone();
        let user = user_id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(me.grace).await;
            let last_seen = {
                let mut users = me.users.lock();
                match users.get(&user) {
                    Some(u) if u.connections == 0 && u.generation == generation => {
                        let seen = u.last_seen;
                        users.remove(&user);
                        seen
                    }
                    _ => return,
                }
            };
            if let Err(e) = me.store.set_last_seen(&user, last_seen).await {
                tracing::warn!(error = %e, "recording last seen failed");
            }
            me.announce(&user, Status::Offline, last_seen).await;
        });
    }

    /// `/app/presence.set`: `online` or `away`.
    pub async fn set_status(&self, user_id: &str, status: &str) -> Result<(), &'static str> {
        let status = match status {
            "online" => Status::Online,
            "away" => Status::Away,
            _ => return Err("status must be online or away"),
        };
        let now = store::now();
        let changed = {
            let mut users = self.users.lock();
            match users.get_mut(user_id) {
                Some(u) if u.connections > 0 && u.status != status => {
                    u.status = status;
                    u.last_seen = now;
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.announce(user_id, status, now).await;
        }
        Ok(())
    }

    /// Current presence of each user: `(status, lastSeenAt)`.
    pub async fn get(
        &self,
        user_ids: &[String],
    ) -> Result<Vec<(String, Status, Option<OffsetDateTime>)>, store::StoreError> {
        let mut out = Vec::with_capacity(user_ids.len());
        let mut unknown = Vec::new();
        {
            let users = self.users.lock();
            for id in user_ids {
                match users.get(id) {
                    Some(u) => out.push((id.clone(), u.status, Some(u.last_seen))),
                    None => unknown.push(id.clone()),
                }
            }
        }
        if !unknown.is_empty() {
            for (id, seen) in self.store.last_seen(unknown).await? {
                out.push((id, Status::Offline, seen));
            }
        }
        let order: HashMap<&String, usize> =
            user_ids.iter().enumerate().map(|(i, u)| (u, i)).collect();
        out.sort_by_key(|(id, _, _)| order.get(id).copied().unwrap_or(usize::MAX));
        Ok(out)
    }

    async fn announce(&self, user_id: &str, status: Status, at: OffsetDateTime) {
        let audience = match self.store.presence_audience(user_id).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "loading the presence audience failed");
                return;
            }
        };
        let payload = serde_json::json!({"userId": user_id, "status": status.as_str(), "lastSeenAt": rfc3339(at)});
        let ev = Event::for_user_queue(kind::PRESENCE, user_queue::PRESENCE, None, payload);
        let bytes = ev.to_bytes();
        for u in audience {
            let _ = self
                .relay
                .publish(&events::user_channel(&u), bytes.clone())
                .await;
        }
    }
}
