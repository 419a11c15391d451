//! Live connections by user: the per-user connection limit, and closing
//! every connection of a revoked login session.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::stomp::connection::Connection;

/// The user already holds the maximum number of connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many connections for this user")]
pub struct TooManyConnections;

struct Entry {
    conn: Arc<Connection>,
    auth_session: Option<Arc<str>>,
}

/// Authenticated connections, by user id.
#[derive(Default)]
pub struct Registry {
    users: Mutex<HashMap<Arc<str>, Vec<Entry>>>,
}

impl Registry {
    /// Registers `conn` for `user_id` unless the user is at `max`.
    pub fn register(
        &self,
        user_id: &Arc<str>,
        auth_session: Option<Arc<str>>,
        conn: &Arc<Connection>,
        max: usize,
    ) -> Result<(), TooManyConnections> {
        let mut users = self.users.lock();
        let list = users.entry(user_id.clone()).or_default();
        if list.len() >= max {
            return Err(TooManyConnections);
        }
        list.push(Entry {
            conn: conn.clone(),
            auth_session,
        });
        Ok(())
    }

    /// Forgets `conn`.
    pub fn unregister(&self, user_id: &str, conn_id: &str) {
        let mut users = self.users.lock();
        if let Some(list) = users.get_mut(user_id) {
            list.retain(|e| &*e.conn.id != conn_id);
            if list.is_empty() {
                users.remove(user_id);
            }
        }
    }

    /// Number of live connections of `user_id`.
    pub fn count(&self, user_id: &str) -> usize {
        self.users.lock().get(user_id).map_or(0, Vec::len)
    }

    /// Closes every connection authenticated by login session `sid` with
    /// ERROR `message`. Returns how many were closed.
    pub fn close_auth_session(&self, sid: &str, message: &'static str) -> usize {
        let conns: Vec<Arc<Connection>> = self
            .users
            .lock()
            .values()
            .flatten()
            .filter(|e| e.auth_session.as_deref() == Some(sid))
            .map(|e| e.conn.clone())
            .collect();
        for c in &conns {
            c.kick_with_error(message, "the login session was ended");
        }
        conns.len()
    }

    /// Closes every connection of `user_id` with ERROR `message`.
    pub fn close_user(&self, user_id: &str, message: &'static str) -> usize {
        let conns: Vec<Arc<Connection>> = self
            .users
            .lock()
            .get(user_id)
            .map(|l| l.iter().map(|e| e.conn.clone()).collect())
            .unwrap_or_default();
        for c in &conns {
            c.kick_with_error(message, "the account's sessions were ended");
        }
        conns.len()
    }
}
