//! The JSON REST API, health probes and the metrics endpoint.
//!
//! [`router`] returns a complete `axum::Router` with its state applied and no
//! top-level fallback, so the server can merge it with other routes (such as
//! `/ws`). Unknown paths under `/api` answer 404 in the API error shape.

pub mod accounts;
pub mod error;
mod health;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::auth::Auth;
use crate::store::Store;
pub use accounts::{Authenticated, TokenResponse, UserView};
pub use error::{ApiError, Json};

/// Largest JSON body the account endpoints accept.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// What handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    /// Authentication service.
    pub auth: Arc<Auth>,
    /// Storage.
    pub store: Arc<dyn Store>,
    /// Renders `/metrics`; `None` answers 404 there.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// Builds the REST router: `/api/…`, `/healthz`, `/readyz`, `/metrics`.
pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/auth/register", post(accounts::register))
        .route("/auth/login", post(accounts::login))
        .route("/auth/refresh", post(accounts::refresh))
        .route("/auth/logout", post(accounts::logout))
        .route("/me", get(accounts::me))
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
