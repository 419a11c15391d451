//! Presence: `online` while a user has a connection, `away` on request,
//! `offline` once the last connection has been closed for the grace period.
//!
//! Many tabs or a flapping network produce one `online` and one `offline`
//! event: a reconnect within the grace cancels the pending `offline`, and
//! further connections of an online user change nothing. Changes go to the
//! user's audience (explicit contacts, co-members and those who list the
//! user as a contact) on `/user/queue/presence`.
//!
//! The state lives behind [`PresenceState`]: in memory on a single node, in
//! Redis (`shared_state = "redis"`) across instances, where a user online on
//! two instances is still one `online` and, after the last connection
//! anywhere closed plus the grace, one `offline`.

mod memory;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::chat::events::{self, kind, rfc3339, user_queue, Event};
use crate::relay::Relay;
use crate::shared_state::StateError;
use crate::store::{self, Store};

pub use memory::MemoryPresence;

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

    /// The status named by [`Status::as_str`].
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "online" => Some(Status::Online),
            "away" => Some(Status::Away),
            "offline" => Some(Status::Offline),
            _ => None,
        }
    }
}

/// A change to announce: the user and the status since `at`.
pub type Transition = (String, Status, OffsetDateTime);

/// Where presence is kept: this process ([`MemoryPresence`]) or Redis,
/// shared by every instance. Each method reports the transitions the
/// caller must announce; across instances exactly one caller hears of each.
#[async_trait]
pub trait PresenceState: Send + Sync {
    /// A connection of `user_id` opened on this instance; `Some(at)` when the
    /// user came online with it.
    async fn connected(&self, user_id: &str) -> Result<Option<OffsetDateTime>, StateError>;

    /// A connection of `user_id` closed on this instance; `Some(wait)` when
    /// the user has no connection left anywhere: call
    /// [`PresenceState::settle`] after `wait`.
    async fn disconnected(&self, user_id: &str) -> Result<Option<Duration>, StateError>;

    /// Ends the user's presence when the user is still without connections
    /// past the grace; `Some(last_seen)` when the user went offline now.
    async fn settle(&self, user_id: &str) -> Result<Option<OffsetDateTime>, StateError>;

    /// Sets `online` or `away` for a connected user; `Some(at)` when it
    /// changed.
    async fn set_status(
        &self,
        user_id: &str,
        status: Status,
    ) -> Result<Option<OffsetDateTime>, StateError>;

    /// Status and last-seen time of each user that is not offline, in the
    /// order asked; `None` for offline users.
    async fn get(
        &self,
        user_ids: &[String],
    ) -> Result<Vec<Option<(Status, OffsetDateTime)>>, StateError>;

    /// Periodic work (every `presence.refresh_ms`): keeping this instance's
    /// users alive and ending the presence of users whose instance is gone.
    async fn tick(&self) -> Result<Vec<Transition>, StateError>;
}

/// Presence of every user, announced to their audiences.
pub struct Presence {
    store: Arc<dyn Store>,
    relay: Arc<dyn Relay>,
    state: Arc<dyn PresenceState>,
}

impl Presence {
    /// In-memory presence with an offline grace period.
    pub fn new(store: Arc<dyn Store>, relay: Arc<dyn Relay>, grace: Duration) -> Arc<Presence> {
        Presence::with_state(store, relay, Arc::new(MemoryPresence::new(grace)))
    }

    /// Presence kept in `state`.
    pub fn with_state(
        store: Arc<dyn Store>,
        relay: Arc<dyn Relay>,
        state: Arc<dyn PresenceState>,
    ) -> Arc<Presence> {
        Arc::new(Presence {
            store,
            relay,
            state,
        })
    }

    /// A connection of `user_id` was authenticated.
    pub async fn connected(&self, user_id: &str) {
        match self.state.connected(user_id).await {
            Ok(Some(at)) => self.announce(user_id, Status::Online, at).await,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "recording a connection's presence failed"),
        }
    }

    /// A connection of `user_id` closed: after the grace period with no
    /// connection, the user goes offline.
    pub fn disconnected(self: &Arc<Self>, user_id: &str) {
        let me = self.clone();
        let user = user_id.to_owned();
        tokio::spawn(async move {
            let wait = match me.state.disconnected(&user).await {
                Ok(Some(wait)) => wait,
                Ok(None) => return,
                Err(e) => {
                    // The periodic sweep of another instance still ends it.
                    tracing::warn!(error = %e, "recording a disconnection's presence failed");
                    return;
                }
            };
            tokio::time::sleep(wait).await;
            match me.state.settle(&user).await {
                Ok(Some(last_seen)) => me.went_offline(&user, last_seen).await,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "ending presence failed"),
            }
        });
    }

    /// `/app/presence.set`: `online` or `away`.
    pub async fn set_status(&self, user_id: &str, status: &str) -> Result<(), &'static str> {
        let status = match status {
            "online" => Status::Online,
            "away" => Status::Away,
            _ => return Err("status must be online or away"),
        };
        match self.state.set_status(user_id, status).await {
            Ok(Some(at)) => self.announce(user_id, status, at).await,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "setting presence failed"),
        }
        Ok(())
    }

    /// Current presence of each user: `(status, lastSeenAt)`.
    pub async fn get(
        &self,
        user_ids: &[String],
    ) -> Result<Vec<(String, Status, Option<OffsetDateTime>)>, store::StoreError> {
        let known = self
            .state
            .get(user_ids)
            .await
            .map_err(|e| store::StoreError::Unavailable(e.to_string()))?;
        let mut out = Vec::with_capacity(user_ids.len());
        let mut unknown = Vec::new();
        for (id, state) in user_ids.iter().zip(known) {
            match state {
                Some((status, seen)) => out.push((id.clone(), status, Some(seen))),
                None => unknown.push(id.clone()),
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

    /// Runs the periodic work of the presence state until shutdown.
    pub async fn run(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.state.tick().await {
                Ok(changes) => {
                    for (user, status, at) in changes {
                        if status == Status::Offline {
                            self.went_offline(&user, at).await;
                        } else {
                            self.announce(&user, status, at).await;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "refreshing presence failed"),
            }
        }
    }

    async fn went_offline(&self, user_id: &str, last_seen: OffsetDateTime) {
        if let Err(e) = self.store.set_last_seen(user_id, last_seen).await {
            tracing::warn!(error = %e, "recording last seen failed");
        }
        self.announce(user_id, Status::Offline, last_seen).await;
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
