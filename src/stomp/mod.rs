//! STOMP sessions: one state machine per connection, fed decoded frames by
//! whichever transport carries them (see `transport/`).

pub mod connection;
pub mod frames;
mod session;

pub use session::{Flow, Session, TransportKind};

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::broker::{Broker, Registry};
use crate::chat::Chat;
use crate::config::Config;
use crate::presence::Presence;

/// What every session of the server shares.
pub struct Shared {
    /// Effective configuration.
    pub config: Arc<Config>,
    /// Password and token checks.
    pub auth: Arc<Auth>,
    /// Local subscriptions and delivery.
    pub broker: Arc<Broker>,
    /// Live connections per user.
    pub registry: Arc<Registry>,
    /// Chat rules and delivery.
    pub chat: Arc<Chat>,
    /// Presence.
    pub presence: Arc<Presence>,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
}
