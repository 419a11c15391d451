//! `/api/auth/*` and `/api/me`.

use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;

use super::client::{self, ClientIp};
use super::error::{ApiError, Json};
use super::ApiState;
use crate::auth::{Principal, Registration, TokenPair, CSRF_COOKIE, SESSION_COOKIE};
use crate::store::User;

/// The public view of an account.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    /// User id.
    pub id: String,
    /// Username as the user chose it.
    pub username: String,
    /// Display name.
    pub display_name: String,
    /// Email address, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
}

impl From<User> for UserView {
    fn from(user: User) -> Self {
        Self {
            created_at: rfc3339(user.created_at),
            id: user.id,
            username: user.username,
            display_name: user.display_name,
            email: user.email,
        }
    }
}

/// Renders a timestamp as RFC 3339 in UTC.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Body of register, login and refresh answers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    /// The account.
    pub user: UserView,
    /// Bearer token.
    pub access_token: String,
    /// One-time refresh token.
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// With `"session": true`: the CSRF token to echo in `X-CSRF-Token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
}

impl From<TokenPair> for TokenResponse {
    fn from(pair: TokenPair) -> Self {
        Self {
            user: pair.user.into(),
            access_token: pair.access_token,
            refresh_token: pair.refresh_token,
            expires_in: pair.expires_in,
            csrf_token: None,
        }
    }
}

/// One `Set-Cookie` value.
fn set_cookie(name: &str, value: &str, max_age: u64, http_only: bool, secure: bool) -> String {
    let mut c = format!("{name}={value}; Path=/; SameSite=Lax; Max-Age={max_age}");
    if http_only {
        c.push_str("; HttpOnly");
    }
    if secure {
        c.push_str("; Secure");
    }
    c
}

/// The token answer; with `session`, also the browser session cookies and
/// `csrfToken`.
pub(super) fn token_answer(
    state: &ApiState,
    headers: &HeaderMap,
    pair: TokenPair,
    session: bool,
    status: StatusCode,
) -> Result<Response, ApiError> {
    if !session {
        return Ok((status, Json(TokenResponse::from(pair))).into_response());
    }
    let browser = state.auth.browser_session(&pair)?;
    let secure = state.cookie_secure || client::behind_tls(headers);
    let max_age = browser.max_age.as_secs();
    let mut body = TokenResponse::from(pair);
    body.csrf_token = Some(browser.csrf.clone());
    let mut response = (status, Json(body)).into_response();
    for cookie in [
        set_cookie(SESSION_COOKIE, &browser.token, max_age, true, secure),
        set_cookie(CSRF_COOKIE, &browser.csrf, max_age, false, secure),
    ] {
        let value = cookie
            .parse()
            .map_err(|e| ApiError::Internal(format!("cookie header: {e}")))?;
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// Headers that remove the browser session cookies.
fn clear_cookies(response: &mut Response) {
    for name in [SESSION_COOKIE, CSRF_COOKIE] {
        if let Ok(value) = set_cookie(name, "", 0, name == SESSION_COOKIE, false).parse() {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RegisterRequest {
    username: String,
    password: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    session: bool,
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginRequest {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    email: Option<String>,
    password: String,
    /// Also start a browser session (cookies + CSRF token).
    #[serde(default)]
    session: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RefreshRequest {
    refresh_token: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogoutRequest {
    #[serde(default)]
    refresh_token: Option<String>,
}

/// `POST /api/auth/register` → 201.
pub(super) async fn register(
    State(state): State<ApiState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Json(req): Json<RegisterRequest>,
) -> Result<Response, ApiError> {
    let pair = state
        .auth
        .register_from(
            ip,
            Registration {
                username: req.username,
                password: req.password,
                email: req.email.filter(|e| !e.trim().is_empty()),
                display_name: req.display_name,
            },
        )
        .await?;
    if let Some(sink) = state.events.clone() {
        // Best effort, like read receipts and presence: an account is not
        // an outbox change.
        let ev = crate::bus::DomainEvent::user_registered(&pair.user);
        tokio::spawn(async move {
            if let Err(e) = sink.emit(vec![ev]).await {
                tracing::warn!(error = %e, "publishing user.registered failed");
            }
        });
    }
    token_answer(&state, &headers, pair, req.session, StatusCode::CREATED)
}

/// `POST /api/auth/login` → 200.
pub(super) async fn login(
    State(state): State<ApiState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Json(req): Json<LoginRequest>,
) -> Result<Response, ApiError> {
    let login = req
        .username
        .or(req.email)
        .filter(|l| !l.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("invalid_request", "username or email is required"))?;
    let pair = state.auth.login_from(ip, &login, &req.password).await?;
    token_answer(&state, &headers, pair, req.session, StatusCode::OK)
}

/// `POST /api/auth/refresh` → 200 with a new pair.
pub(super) async fn refresh(
    State(state): State<ApiState>,
    Json(req): Json<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let pair = state.auth.refresh(&req.refresh_token).await?;
    Ok(Json(pair.into()))
}

/// `POST /api/auth/logout` → 204. The session is named by the bearer token,
/// by the session cookie (with `X-CSRF-Token`; the cookies are cleared), or
/// by `{"refreshToken"}` in the body (which works after the access token
/// expired).
pub(super) async fn logout(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if bearer_token(&headers).is_none() && client::cookie(&headers, SESSION_COOKIE).is_some() {
        let principal = cookie_principal(&state, &Method::POST, &headers).await?;
        if let Some(sid) = principal.session_id {
            state.auth.logout(&sid).await?;
        }
        let mut response = StatusCode::NO_CONTENT.into_response();
        clear_cookies(&mut response);
        return Ok(response);
    }
    let bearer = match bearer_token(&headers) {
        Some(token) => Some(state.auth.verify_access_token(token?)),
        None => None,
    };
    let session_id = match bearer {
        Some(Ok(Principal {
            session_id: Some(sid),
            ..
        })) => sid,
        bearer => {
            let req: LogoutRequest = if body.is_empty() {
                LogoutRequest::default()
            } else {
                serde_json::from_slice(&body)
                    .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?
            };
            match (req.refresh_token, bearer) {
                (Some(token), _) => state.auth.session_of_refresh_token(&token).await?,
                (None, Some(Err(e))) => return Err(e.into()),
                (None, _) => return Err(missing_credentials()),
            }
        }
    };
    state.auth.logout(&session_id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/me`.
pub(super) async fn me(
    State(state): State<ApiState>,
    Authenticated(principal): Authenticated,
) -> Result<Json<UserView>, ApiError> {
    let user = state
        .store
        .user_by_id(&principal.user_id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid_token", "the account no longer exists"))?;
    Ok(Json(user.into()))
}

/// The caller, from `Authorization: Bearer <accessToken>` or the browser
/// session cookie; rejects with 401, or 403 when a cookie-authenticated
/// unsafe request lacks the right `X-CSRF-Token`.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Principal);

impl FromRequestParts<ApiState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        if let Some(token) = bearer_token(&parts.headers) {
            return Ok(Self(state.auth.verify_access_token(token?)?));
        }
        if client::cookie(&parts.headers, SESSION_COOKIE).is_some() {
            return Ok(Self(
                cookie_principal(state, &parts.method, &parts.headers).await?,
            ));
        }
        Err(missing_credentials())
    }
}

/// The caller by session cookie. Unsafe methods must carry `X-CSRF-Token`
/// equal to the `stompline_csrf` cookie and to the session's token.
async fn cookie_principal(
    state: &ApiState,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    let cookie = client::cookie(headers, SESSION_COOKIE).ok_or_else(missing_credentials)?;
    let principal = state.auth.verify_session_cookie(cookie).await?;
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        let presented = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .unwrap_or_default();
        let double_submit = client::cookie(headers, CSRF_COOKIE) == Some(presented);
        let sid = principal.session_id.as_deref().unwrap_or_default();
        if presented.is_empty() || !double_submit || !state.auth.check_csrf(sid, presented) {
            metrics::counter!("stompline_auth_failures_total", "reason" => "csrf").increment(1);
            return Err(ApiError::Csrf(
                "cookie-authenticated requests that change state need X-CSRF-Token".into(),
            ));
        }
    }
    Ok(principal)
}

fn missing_credentials() -> ApiError {
    metrics::counter!("stompline_auth_failures_total", "reason" => "missing_credentials")
        .increment(1);
    ApiError::unauthorized(
        "missing_credentials",
        "an Authorization: Bearer token is required",
    )
}

/// `None` without an Authorization header; an error when it is not a bearer
/// token.
fn bearer_token(headers: &HeaderMap) -> Option<Result<&str, ApiError>> {
    let value = headers.get(header::AUTHORIZATION)?;
    let parsed = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty());
    Some(parsed.ok_or_else(|| {
        ApiError::unauthorized("invalid_token", "Authorization must be \"Bearer <token>\"")
    }))
}
