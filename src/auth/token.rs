//! Access tokens (HS256 JWTs), refresh tokens (random, stored hashed) and the
//! signing key.

use std::io::{ErrorKind, Write as _};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::TryRngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::AuthError;

/// Name of the generated key file inside the data directory.
pub(crate) const KEY_FILE: &str = "jwt.key";

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claims {
    /// User id.
    pub sub: String,
    /// Session id.
    pub sid: String,
    /// Username at issue time.
    pub username: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issue time, seconds since the Unix epoch.
    pub iat: u64,
    /// `None` for access tokens; `"session"` for the browser session
    /// cookie, which is refused as a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// Signs and checks access tokens.
pub(crate) struct Signer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Signer {
    pub(crate) fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Tokens are issued and checked by the same cluster; no grace period,
        // so a token is refused from the second after its `exp`.
        validation.leeway = 0;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub(crate) fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| AuthError::Internal(format!("signing token: {e}")))
    }

    pub(crate) fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        use jsonwebtoken::errors::ErrorKind as Kind;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                Kind::ExpiredSignature => AuthError::TokenExpired,
                _ => AuthError::InvalidToken,
            })
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh refresh token: 32 random bytes, base64url without padding.
pub(crate) fn new_refresh_token() -> Result<String, AuthError> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| AuthError::Internal(format!("random source: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether `token` has the shape [`new_refresh_token`] produces; anything
/// else is refused without a database round trip.
pub(crate) fn looks_like_refresh_token(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What is stored for a refresh token: hex SHA-256 of it. The token has 256
/// bits of entropy, so a fast hash is enough.
pub(crate) fn hash_refresh_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The signing secret: the configured one, or the one kept in
/// `<data_dir>/jwt.key`, generated (32 random bytes, base64) with mode 0600
/// on first start.
pub(crate) fn load_secret(configured: Option<&str>, data_dir: &Path) -> Result<Vec<u8>, AuthError> {
    if let Some(secret) = configured.filter(|s| !s.is_empty()) {
        if secret.len() < 32 {
            tracing::warn!("auth.jwt_secret is shorter than 32 bytes; use a longer random secret");
        }
        return Ok(secret.as_bytes().to_vec());
    }
    let path = data_dir.join(KEY_FILE);
    // A second instance sharing the data directory may be writing the file
    // right now; give it a moment rather than failing or overwriting.
    for _ in 0..50 {
        match read_key_file(&path)? {
            Some(key) => return Ok(key),
            None if path.exists() => std::thread::sleep(Duration::from_millis(20)),
            None => {
                if let Some(key) = create_key_file(data_dir, &path)? {
                    return Ok(key);
                }
            }
        }
    }
    Err(AuthError::Internal(format!(
        "{} stays empty",
        path.display()
    )))
}

/// `Ok(None)` when the file is missing or still empty.
fn read_key_file(path: &Path) -> Result<Option<Vec<u8>>, AuthError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(AuthError::Internal(format!(
                "reading {}: {e}",
                path.display()
            )))
        }
    };
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let key = STANDARD
        .decode(text)
        .map_err(|e| AuthError::Internal(format!("{} is not base64: {e}", path.display())))?;
    if key.len() < 32 {
        return Err(AuthError::Internal(format!(
            "{} holds {} bytes; at least 32 are needed",
            path.display(),
            key.len()
        )));
    }
    Ok(Some(key))
}

/// `Ok(None)` when another process created the file first.
fn create_key_file(data_dir: &Path, path: &Path) -> Result<Option<Vec<u8>>, AuthError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| AuthError::Internal(format!("creating {}: {e}", data_dir.display())))?;
    let mut key = vec![0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut key)
        .map_err(|e| AuthError::Internal(format!("random source: {e}")))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(None),
        Err(e) => {
            return Err(AuthError::Internal(format!(
                "creating {}: {e}",
                path.display()
            )))
        }
    };
    file.write_all(format!("{}\n", STANDARD.encode(&key)).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| AuthError::Internal(format!("writing {}: {e}", path.display())))?;
    tracing::info!(path = %path.display(), "generated a new token signing key");
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "u1".into(),
            sid: "s1".into(),
            username: "alice".into(),
            exp,
            iat: unix_now(),
            kind: None,
        }
    }

    #[test]
    fn access_token_round_trip() {
        let signer = Signer::new(b"0123456789abcdef0123456789abcdef");
        let c = claims(unix_now() + 60);
        let token = signer.sign(&c).unwrap();
        assert_eq!(signer.verify(&token).unwrap(), c);
    }

    #[test]
    fn expired_tampered_and_foreign_tokens_are_refused() {
        let signer = Signer::new(b"0123456789abcdef0123456789abcdef");
        let expired = signer.sign(&claims(unix_now() - 5)).unwrap();
        assert!(matches!(
            signer.verify(&expired),
            Err(AuthError::TokenExpired)
        ));

        let token = signer.sign(&claims(unix_now() + 60)).unwrap();
        let mut tampered = token.clone();
        tampered.insert(token.find('.').unwrap() + 2, 'x');
        assert!(matches!(
            signer.verify(&tampered),
            Err(AuthError::InvalidToken)
        ));

        let other = Signer::new(b"another secret of at least 32 bytes!");
        assert!(matches!(other.verify(&token), Err(AuthError::InvalidToken)));
        assert!(matches!(
            signer.verify("garbage"),
            Err(AuthError::InvalidToken)
        ));
        assert!(matches!(signer.verify(""), Err(AuthError::InvalidToken)));
    }

    #[test]
    fn refresh_tokens() {
        let a = new_refresh_token().unwrap();
        let b = new_refresh_token().unwrap();
        assert_ne!(a, b);
        assert!(looks_like_refresh_token(&a));
        assert!(!looks_like_refresh_token("short"));
        assert!(!looks_like_refresh_token(&format!("{}=", &a[..42])));
        let h = hash_refresh_token(&a);
        assert_eq!(h.len(), 64);
        assert_eq!(h, hash_refresh_token(&a));
        assert_ne!(h, hash_refresh_token(&b));
    }

    #[test]
    fn key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("nested/data");
        let first = load_secret(None, &data).unwrap();
        assert_eq!(first.len(), 32);
        let second = load_secret(None, &data).unwrap();
        assert_eq!(first, second);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(data.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A configured secret wins and touches no file.
        let other = tempfile::tempdir().unwrap();
        assert_eq!(
            load_secret(Some("configured"), other.path()).unwrap(),
            b"configured"
        );
        assert!(!other.path().join(KEY_FILE).exists());
        // Empty means "not configured".
        assert_eq!(load_secret(Some(""), &data).unwrap(), first);
    }
}
