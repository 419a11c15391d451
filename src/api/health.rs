//! `/healthz`, `/readyz` and `/metrics`.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, ApiState};

/// How long a dependency may take to answer a readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// 200 while the process serves requests.
pub(super) async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

/// 200 when every dependency answers; otherwise 503 naming the failed ones:
/// `{"status":"unavailable","checks":{"database":"…"},"error":{…}}`.
pub(super) async fn readyz(State(state): State<ApiState>) -> Response {
    let database = match tokio::time::timeout(PROBE_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
    };
    match database {
        Ok(()) => {
            axum::Json(json!({ "status": "ready", "checks": { "database": "ok" } })).into_response()
        }
        Err(detail) => {
            tracing::warn!(dependency = "database", error = %detail, "not ready");
            let body = json!({
                "status": "unavailable",
                "checks": { "database": detail },
                "error": { "code": "dependency_unavailable", "message": "database is not answering" },
            });
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
        }
    }
}

/// Prometheus text exposition, or 404 when metrics are not enabled.
pub(super) async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let handle = state
        .metrics
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("metrics are not enabled".into()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response())
}
