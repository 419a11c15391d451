//! The JSON REST API, health probes and the metrics endpoint.
//!
//! [`router`] returns a complete `axum::Router` with its state applied and no
//! top-level fallback, so the server can merge it with other routes (such as
//! `/ws`). Unknown paths under `/api` answer 404 in the API error shape.

pub mod accounts;
pub mod client;
mod contacts;
mod conversations;
pub mod error;
mod health;
mod identity;
mod messages;
mod params;
pub mod security;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, patch, post};
use axum::Router;

use crate::auth::Auth;
use crate::store::Store;
pub use accounts::{Authenticated, TokenResponse, UserView};
pub use error::{ApiError, Json};

/// Largest JSON body the endpoints accept.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Largest JSON body of the endpoints that carry a message text: room for a
/// body at a raised `chat.message_max_bytes` with JSON escaping. The chat
/// service enforces the configured message limit itself (413 `too_large`).
const MAX_MESSAGE_BODY_BYTES: usize = 1024 * 1024;

/// What handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    /// Authentication service.
    pub auth: Arc<Auth>,
    /// Storage.
    pub store: Arc<dyn Store>,
    /// Renders `/metrics`; `None` answers 404 there.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Chat rules and delivery.
    pub chat: Arc<crate::chat::Chat>,
    /// Presence.
    pub presence: Arc<crate::presence::Presence>,
    /// Mark browser session cookies `Secure` even without TLS in front.
    pub cookie_secure: bool,
    /// The domain-events topic, in a cluster (`user.registered`).
    pub events: Option<Arc<dyn crate::bus::EventSink>>,
    /// Redis holding the shared state (`shared_state = "redis"`), checked
    /// by `/readyz`.
    pub shared_state: Option<crate::shared_state::RedisShared>,
}

/// Builds the REST router: `/api/…`, `/healthz`, `/readyz`, `/metrics`.
pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/auth/register", post(accounts::register))
        .route("/auth/login", post(accounts::login))
        .route("/auth/refresh", post(accounts::refresh))
        .route("/auth/logout", post(accounts::logout))
        .route("/auth/request-otp", post(identity::request_otp))
        .route("/auth/verify-otp", post(identity::verify_otp))
        .route("/me", get(accounts::me).patch(identity::update_me))
        .route(
            "/conversations",
            get(conversations::list).post(conversations::create),
        )
        .route(
            "/conversations/{id}",
            get(conversations::get).patch(conversations::rename),
        )
        .route(
            "/conversations/{id}/members",
            post(conversations::add_members),
        )
        .route(
            "/conversations/{id}/members/{user_id}",
            delete(conversations::remove_member),
        )
        .route(
            "/conversations/{id}/messages",
            get(messages::history)
                .post(messages::send)
                .layer(DefaultBodyLimit::max(MAX_MESSAGE_BODY_BYTES)),
        )
        .route("/conversations/{id}/read", post(conversations::read))
        .route(
            "/messages/{id}",
            patch(messages::edit)
                .delete(messages::delete)
                .layer(DefaultBodyLimit::max(MAX_MESSAGE_BODY_BYTES)),
        )
        .route("/unread", get(conversations::unread))
        .route("/search", get(messages::search))
        .route("/presence", get(contacts::presence))
        .route("/contacts", get(contacts::list).post(contacts::add))
        .route("/contacts/{user_id}", delete(contacts::remove))
        .route("/blocks", post(contacts::block))
        .route("/blocks/{user_id}", delete(contacts::unblock))
        .route("/users", get(contacts::search))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));

    Router::new()
        .nest("/api", api)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
