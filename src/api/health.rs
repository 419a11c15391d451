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
/// `{"status":"unavailable","checks":{"database":"…","relay":"ok"},"error":{…}}`.
/// The relay is checked when it spans instances (`relay = "redis"|"amqp"`).
pub(super) async fn readyz(State(state): State<ApiState>) -> Response {
    let mut checks = serde_json::Map::new();
    let mut failed = Vec::new();
    let database = probe(state.store.ping()).await;
    record(&mut checks, &mut failed, "database", database);
    let relay = state.chat.gateway.relay().clone();
    if relay.spans_instances() {
        let outcome = probe(relay.ping()).await;
        record(&mut checks, &mut failed, "relay", outcome);
    }
    if failed.is_empty() {
        return axum::Json(json!({ "status": "ready", "checks": checks })).into_response();
    }
    let body = json!({
        "status": "unavailable",
        "checks": checks,
        "error": {
            "code": "dependency_unavailable",
            "message": format!("{} is not answering", failed.join(", ")),
        },
    });
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// Runs one readiness probe within [`PROBE_TIMEOUT`].
async fn probe<E: std::fmt::Display>(
    f: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, f).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
    }
}

fn record(
    checks: &mut serde_json::Map<String, serde_json::Value>,
    failed: &mut Vec<&'static str>,
    name: &'static str,
    outcome: Result<(), String>,
) {
    match outcome {
        Ok(()) => {
            checks.insert(name.into(), "ok".into());
        }
        Err(detail) => {
            tracing::warn!(dependency = name, error = %detail, "not ready");
            checks.insert(name.into(), detail.into());
            failed.push(name);
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
