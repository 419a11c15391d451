//! The one error type of the REST API and the JSON extractor that reports
//! bad bodies through it.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::auth::AuthError;
use crate::chat::ChatError;
use crate::store::StoreError;

/// An API failure; renders as `{"error":{"code","message"}}` with the
/// matching status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or breaks a rule.
    #[error("{message}")]
    BadRequest {
        /// snake_case code.
        code: &'static str,
        /// Human text.
        message: String,
    },
    /// 401: missing, invalid or expired credentials.
    #[error("{message}")]
    Unauthorized {
        /// snake_case code.
        code: &'static str,
        /// Human text.
        message: String,
    },
    /// 403: authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 403: a cookie-authenticated unsafe request without the right
    /// `X-CSRF-Token`, or a cross-site request from an origin not allowed.
    #[error("{0}")]
    Csrf(String),
    /// 404: no such thing (or not visible to the caller).
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: clashes with existing state.
    #[error("{message}")]
    Conflict {
        /// snake_case code.
        code: &'static str,
        /// Human text.
        message: String,
    },
    /// 413: body over the limit.
    #[error("request body too large")]
    PayloadTooLarge,
    /// 413: a field of an accepted body is over its own limit (e.g. a chat
    /// message body).
    #[error("{message}")]
    TooLarge {
        /// snake_case code.
        code: &'static str,
        /// Human text.
        message: String,
    },
    /// 415: body is not `application/json`.
    #[error("expected a JSON body with content-type application/json")]
    UnsupportedMediaType,
    /// 429: slow down; `retry_after` is in seconds.
    #[error("too many requests")]
    TooManyRequests {
        /// Seconds until a retry may succeed.
        retry_after: u64,
    },
    /// 503: a dependency is down.
    #[error("{0}")]
    Unavailable(String),
    /// 500: our fault; the detail is logged, not sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// 400 with a code and message.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// 401 with a code and message.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::Unauthorized {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::Csrf(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge | Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The snake_case code of the body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. }
            | Self::Unauthorized { code, .. }
            | Self::Conflict { code, .. }
            | Self::TooLarge { code, .. } => code,
            Self::Forbidden(_) => "forbidden",
            Self::Csrf(_) => "csrf_failed",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::TooManyRequests { .. } => "rate_limited",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(detail) = &self {
            tracing::error!(error = %detail, "request failed");
        }
        let status = self.status();
        let body = json!({ "error": { "code": self.code(), "message": self.to_string() } });
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::TooManyRequests { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            // RFC 6750: tell bearer-token clients what went wrong; a failed
            // password login is not a token problem and gets no challenge.
            Self::Unauthorized { code, .. } if *code == "missing_credentials" => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Unauthorized { code, .. }
                if *code != "invalid_credentials" && *code != "invalid_code" =>
            {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            _ => {}
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let message = e.to_string();
        match e {
            AuthError::InvalidCredentials
            | AuthError::TokenExpired
            | AuthError::InvalidToken
            | AuthError::SessionRevoked
            | AuthError::RefreshTokenReused
            | AuthError::InvalidCode => Self::unauthorized(e.reason(), message),
            AuthError::WrongPassword => Self::Forbidden(message),
            AuthError::RateLimited(wait) => Self::TooManyRequests {
                retry_after: retry_after_secs(wait),
            },
            AuthError::Validation(v) => Self::bad_request(v.code(), message),
            AuthError::Conflict(field) => Self::Conflict {
                code: match field.as_str() {
                    "username" => "username_taken",
                    "email" => "email_taken",
                    "phone" => "phone_taken",
                    _ => "conflict",
                },
                message,
            },
            AuthError::Store(e) => e.into(),
            AuthError::Internal(detail) => Self::Internal(detail),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { field } => Self::Conflict {
                code: "conflict",
                message: format!("{field} already exists"),
            },
            StoreError::NotFound(what) => Self::NotFound(format!("{what} not found")),
            StoreError::Unavailable(detail) => {
                tracing::error!(error = %detail, "database unavailable");
                Self::Unavailable("database unavailable".into())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        let code = e.code();
        let message = e.to_string();
        match e {
            ChatError::NotFound(_) => Self::NotFound(message),
            ChatError::Forbidden(_) => Self::Forbidden(message),
            ChatError::Invalid { code, message } => Self::BadRequest { code, message },
            ChatError::TooLarge(_) => Self::TooLarge { code, message },
            ChatError::RateLimited { retry_after } => Self::TooManyRequests {
                retry_after: retry_after_secs(retry_after),
            },
            ChatError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "chat operation unavailable");
                Self::Unavailable(detail)
            }
            ChatError::Store(e) => e.into(),
        }
    }
}

/// Whole seconds for `Retry-After`, rounded up and at least 1 (a client
/// told "0" would retry at once and be refused again).
fn retry_after_secs(d: std::time::Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonSyntaxError(e) => Self::bad_request("invalid_json", e.body_text()),
            JsonRejection::JsonDataError(e) => Self::bad_request("invalid_request", e.body_text()),
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType,
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            other => Self::bad_request("invalid_request", other.body_text()),
        }
    }
}

/// `axum::Json` whose rejections are [`ApiError`]s, so malformed bodies get
/// the same error shape as everything else.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_errors_map_to_401_with_their_reason() {
        for (e, code) in [
            (AuthError::InvalidCredentials, "invalid_credentials"),
            (AuthError::TokenExpired, "token_expired"),
            (AuthError::InvalidToken, "invalid_token"),
            (AuthError::SessionRevoked, "session_revoked"),
            (AuthError::RefreshTokenReused, "refresh_token_reused"),
        ] {
            let api: ApiError = e.into();
            assert_eq!(api.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(api.code(), code);
        }
        let api: ApiError = AuthError::Conflict("username".into()).into();
        assert_eq!(
            (api.status(), api.code()),
            (StatusCode::CONFLICT, "username_taken")
        );
    }

    #[test]
    fn rate_limit_carries_retry_after() {
        let response = ApiError::TooManyRequests { retry_after: 7 }.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
    }

    #[test]
    fn chat_errors_map_to_their_statuses() {
        use std::time::Duration;
        for (e, status, code) in [
            (
                ChatError::NotFound("no such conversation"),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                ChatError::Forbidden("no"),
                StatusCode::FORBIDDEN,
                "forbidden",
            ),
            (
                ChatError::Invalid {
                    code: "empty_message",
                    message: "message body is empty".into(),
                },
                StatusCode::BAD_REQUEST,
                "empty_message",
            ),
            (
                ChatError::TooLarge(16),
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
            ),
            (
                ChatError::Unavailable("down".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
            ),
            (
                ChatError::Store(StoreError::Conflict {
                    field: "direct_key".into(),
                }),
                StatusCode::CONFLICT,
                "conflict",
            ),
        ] {
            let api: ApiError = e.into();
            assert_eq!((api.status(), api.code()), (status, code));
        }
        for (wait, secs) in [
            (Duration::ZERO, "1"),
            (Duration::from_millis(10), "1"),
            (Duration::from_millis(1000), "1"),
            (Duration::from_millis(1001), "2"),
            (Duration::from_secs(3), "3"),
        ] {
            let api: ApiError = ChatError::RateLimited { retry_after: wait }.into();
            let response = api.into_response();
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(response.headers()[header::RETRY_AFTER], secs, "{wait:?}");
        }
    }

    #[test]
    fn internal_detail_is_not_sent() {
        let e = ApiError::Internal("secret connection string".into());
        assert_eq!(e.to_string(), "internal error");
    }
}
