//! Browser sessions: an HttpOnly cookie carrying a signed session token,
//! and a CSRF token for the double-submit check.
//!
//! The cookie's token is a JWT of kind `session` (refused as a bearer
//! token) that lives as long as refresh tokens do; every use checks the
//! session in the store, so logout ends it at once on every instance. The
//! CSRF token is an HMAC of the session id under the server secret: the
//! page reads it from the `stompline_csrf` cookie (or the login answer) and
//! echoes it in `X-CSRF-Token`, which a cross-site form cannot do.

use std::time::{Duration, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use super::token::{self, Claims};
use super::{count_failure, Auth, AuthError, Principal, TokenPair};

/// Name of the HttpOnly session cookie.
pub const SESSION_COOKIE: &str = "stompline_session";
/// Name of the script-readable CSRF cookie.
pub const CSRF_COOKIE: &str = "stompline_csrf";

/// `kind` claim of session cookie tokens.
const KIND: &str = "session";

/// What a login with `"session": true` hands the browser.
#[derive(Debug, Clone)]
pub struct BrowserSession {
    /// Value of the session cookie.
    pub token: String,
    /// Value of the CSRF cookie and of `X-CSRF-Token`.
    pub csrf: String,
    /// Cookie lifetime.
    pub max_age: Duration,
}

impl Auth {
    /// A browser session for the session of `pair`.
    pub fn browser_session(&self, pair: &TokenPair) -> Result<BrowserSession, AuthError> {
        let iat = token::unix_now();
        let max_age = self.refresh_ttl;
        let token = self.signer.sign(&Claims {
            sub: pair.user.id.clone(),
            sid: pair.session_id.clone(),
            username: pair.user.username.clone(),
            exp: iat + max_age.as_secs().max(1),
            iat,
            kind: Some(KIND.into()),
        })?;
        Ok(BrowserSession {
            token,
            csrf: self.csrf_token(&pair.session_id)?,
            max_age,
        })
    }

    /// Checks a session cookie: signature, expiry, kind, and that the
    /// session is still live in the store.
    pub async fn verify_session_cookie(&self, cookie: &str) -> Result<Principal, AuthError> {
        let claims = self.signer.verify(cookie).map_err(count_failure)?;
        if claims.kind.as_deref() != Some(KIND) {
            return Err(count_failure(AuthError::InvalidToken));
        }
        if self.is_revoked(&claims.sid) {
            return Err(count_failure(AuthError::SessionRevoked));
        }
        match self.store.session_by_id(&claims.sid).await? {
            Some(s) if s.revoked_at.is_none() && s.user_id == claims.sub => {}
            _ => return Err(count_failure(AuthError::SessionRevoked)),
        }
        Ok(Principal {
            user_id: claims.sub,
            username: claims.username,
            session_id: Some(claims.sid),
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(claims.exp)),
        })
    }

    /// The CSRF token of a session.
    pub fn csrf_token(&self, session_id: &str) -> Result<String, AuthError> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret)
            .map_err(|e| AuthError::Internal(format!("csrf key: {e}")))?;
        mac.update(b"csrf\n");
        mac.update(session_id.as_bytes());
        Ok(URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    /// Whether `presented` is the CSRF token of `session_id` (constant
    /// time).
    pub fn check_csrf(&self, session_id: &str, presented: &str) -> bool {
        match self.csrf_token(session_id) {
            Ok(expected) => expected.as_bytes().ct_eq(presented.as_bytes()).into(),
            Err(_) => false,
        }
    }
}
