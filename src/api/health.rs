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
/// `{"status":"unavailable","checks":{"database":"ok","kafka":"…"},"error":{…}}`.
/// The database is always checked; Kafka when it is the configured bus.
pub(super) async fn readyz(State(state): State<ApiState>) -> Response {
    let (database, bus) = tokio::join!(
        probe(async { Some(state.store.ping().await.map_err(|e| e.to_string())) }),
        probe(async {
            state
                .chat
                .bus()
                .ready()
                .await
                .map(|r| r.map_err(|e| e.to_string()))
        }),
    );
    let mut checks = serde_json::Map::new();
    let mut failed = Vec::new();
    for (name, outcome) in [("database", database), ("kafka", bus)] {
        match outcome {
            None => {}
            Some(Ok(())) => {
                checks.insert(name.into(), "ok".into());
            }
            Some(Err(detail)) => {
                tracing::warn!(dependency = name, error = %detail, "not ready");
                checks.insert(name.into(), detail.into());
                failed.push(name);
            }
        }
    }
    if failed.is_empty() {
        return axum::Json(json!({ "status": "ready", "checks": checks })).into_response();
    }
    let body = json!({
        "status": "unavailable",
        "checks": checks,
        "error": {
            "code": "dependency_unavailable",
            "message": format!("{} is not answering", failed.join(" and ")),
        },
    });
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// Runs one check within [`PROBE_TIMEOUT`]; `None` when the dependency is
/// not configured.
async fn probe(
    check: impl std::future::Future<Output = Option<Result<(), String>>>,
) -> Option<Result<(), String>> {
    match tokio::time::timeout(PROBE_TIMEOUT, check).await {
        Ok(outcome) => outcome,
        Err(_) => Some(Err(format!(
            "no answer within {}s",
            PROBE_TIMEOUT.as_secs()
        ))),
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
