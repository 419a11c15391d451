//! `/api/auth/request-otp`, `/api/auth/verify-otp` and `PATCH /api/me`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::accounts::{token_answer, Authenticated, UserView};
use super::client::ClientIp;
use super::error::{ApiError, Json};
use super::ApiState;
use crate::auth::{AuthError, Identifier};

#[derive(Debug, Deserialize)]
pub(super) struct OtpRequest {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    phone: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct OtpVerification {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    phone: Option<String>,
    code: String,
    /// Also start a browser session (cookies + CSRF token).
    #[serde(default)]
    session: bool,
}

fn identifier(email: Option<&str>, phone: Option<&str>) -> Result<Identifier, ApiError> {
    Identifier::parse(email, phone).map_err(|e| match (email, phone) {
        (Some(_), Some(_)) | (None, None) => {
            ApiError::bad_request("invalid_request", "give exactly one of email and phone")
        }
        _ => AuthError::from(e).into(),
    })
}

/// `POST /api/auth/request-otp` → 202, whether or not an account exists
/// and whether or not a code was actually sent (throttling); 429 only for
/// the per-IP limits.
pub(super) async fn request_otp(
    State(state): State<ApiState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<OtpRequest>,
) -> Result<Response, ApiError> {
    let id = identifier(req.email.as_deref(), req.phone.as_deref())?;
    state.auth.request_otp(ip, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "status": "sent" }))).into_response())
}

/// `POST /api/auth/verify-otp` → 200 with a token pair; 401
/// `invalid_code` for a wrong, expired, spent or exhausted code.
pub(super) async fn verify_otp(
    State(state): State<ApiState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Json(req): Json<OtpVerification>,
) -> Result<Response, ApiError> {
    let id = identifier(req.email.as_deref(), req.phone.as_deref())?;
    let pair = state.auth.verify_otp(ip, &id, &req.code).await?;
    token_answer(&state, &headers, pair, req.session, StatusCode::OK)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct MeChanges {
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    current_password: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_code: Option<String>,
}

/// `PATCH /api/me` → 200 with the updated user.
///
/// - `displayName`: changed at once.
/// - `password` (+ `currentPassword` when the account has one): changed,
///   and every other session of the user is revoked.
/// - `email` alone: a code goes to the new address and the answer carries
///   `pendingEmail`; `email` + `emailCode`: the change is applied.
pub(super) async fn update_me(
    State(state): State<ApiState>,
    ClientIp(ip): ClientIp,
    Authenticated(principal): Authenticated,
    Json(req): Json<MeChanges>,
) -> Result<Response, ApiError> {
    let user_id = principal.user_id.as_str();
    let auth = &state.auth;
    if let Some(password) = &req.password {
        auth.change_password(
            user_id,
            principal.session_id.as_deref(),
            req.current_password.as_deref(),
            password,
        )
        .await?;
    }
    if let Some(name) = &req.display_name {
        auth.change_display_name(user_id, name).await?;
    }
    let mut pending = None;
    if let Some(email) = req.email.as_deref().filter(|e| !e.trim().is_empty()) {
        match req.email_code.as_deref() {
            Some(code) => {
                auth.confirm_email_change(ip, user_id, email, code).await?;
            }
            None => pending = Some(auth.request_email_change(ip, user_id, email).await?),
        }
    }
    let user =
        state.store.user_by_id(user_id).await?.ok_or_else(|| {
            ApiError::unauthorized("invalid_token", "the account no longer exists")
        })?;
    let mut body = serde_json::to_value(UserView::from(user))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if let (Some(pending), Some(map)) = (pending, body.as_object_mut()) {
        map.insert("pendingEmail".into(), json!(pending));
    }
    Ok(Json(body).into_response())
}
