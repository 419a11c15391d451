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
/// The relay is checked when it spans instances (`relay = "redis"|"amqp"`),
/// Kafka when it is the bus.
pub(super) async fn readyz(State(state): State<ApiState>) -> Response {
    let mut checks = vec![("database", probe(state.store.ping()).await)];
    let relay = state.chat.gateway.relay().clone();
    if relay.spans_instances() {
        checks.push(("relay", probe(relay.ping()).await));
    }
    if let Some(check) = shared_state_check(&state).await {
        checks.push(("shared_state", check));
    }
    if let Some(check) = bus_check(&state).await {
        checks.push(("kafka", check));
    }
    let failed: Vec<&str> = checks
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(name, _)| *name)
        .collect();
    let report: serde_json::Map<String, serde_json::Value> = checks
        .iter()
        .map(|(name, r)| {
            let v = match r {
                Ok(()) => "ok".to_owned(),
                Err(detail) => detail.clone(),
            };
            ((*name).to_owned(), json!(v))
        })
        .collect();
    if failed.is_empty() {
        return axum::Json(json!({ "status": "ready", "checks": report })).into_response();
    }
    for (name, r) in &checks {
        if let Err(detail) = r {
            tracing::warn!(dependency = name, error = %detail, "not ready");
        }
    }
    let body = json!({
        "status": "unavailable",
        "checks": report,
        "error": {
            "code": "dependency_unavailable",
            "message": format!("not answering: {}", failed.join(", ")),
        },
    });
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// Redis holding the shared state, when configured.
async fn shared_state_check(state: &ApiState) -> Option<Result<(), String>> {
    let redis = state.shared_state.as_ref()?;
    Some(probe(redis.ping()).await)
}

/// The bus's backend (Kafka), when it has one.
async fn bus_check(state: &ApiState) -> Option<Result<(), String>> {
    match tokio::time::timeout(PROBE_TIMEOUT, state.chat.bus().ready()).await {
        Ok(outcome) => outcome.map(|r| r.map_err(|e| e.to_string())),
        Err(_) => Some(Err(format!(
            "no answer within {}s",
            PROBE_TIMEOUT.as_secs()
        ))),
    }
}

/// A dependency's answer within [`PROBE_TIMEOUT`].
async fn probe<E: std::fmt::Display>(
    check: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
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
