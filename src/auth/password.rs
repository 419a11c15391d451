//! argon2id password hashing on the blocking thread pool.

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::TryRngCore as _;
use tokio::sync::OnceCell;

use super::AuthError;

/// Hashes and verifies passwords with fixed argon2id parameters.
pub(crate) struct Passwords {
    argon: Argon2<'static>,
    /// Hash of a random password, verified against when the account does
    /// not exist so that both answers take the same time.
    dummy: OnceCell<String>,
}

impl Passwords {
    pub(crate) fn new(
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
    ) -> Result<Self, AuthError> {
        let params = Params::new(memory_kib, iterations, parallelism, None)
            .map_err(|e| AuthError::Internal(format!("argon2 parameters: {e}")))?;
        Ok(Self {
            argon: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            dummy: OnceCell::new(),
        })
    }

    /// Returns the PHC string (`$argon2id$v=19$m=…`) for `password`.
    pub(crate) async fn hash(&self, password: &str) -> Result<String, AuthError> {
        let argon = self.argon.clone();
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut salt = [0u8; 16];
            rand::rngs::OsRng
                .try_fill_bytes(&mut salt)
                .map_err(|e| AuthError::Internal(format!("random source: {e}")))?;
            let salt = SaltString::encode_b64(&salt)
                .map_err(|e| AuthError::Internal(format!("salt: {e}")))?;
            argon
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| AuthError::Internal(format!("hashing password: {e}")))
        })
        .await
        .map_err(|e| AuthError::Internal(format!("hashing task: {e}")))?
    }

    /// Checks `password` against `hash`, or against a dummy hash when there
    /// is none, so the cost is the same whether or not the account exists or
    /// has a password. The parameters come from the stored hash.
    pub(crate) async fn verify(
        &self,
        password: &str,
        hash: Option<&str>,
    ) -> Result<bool, AuthError> {
        let (hash, real) = match hash {
            Some(hash) => (hash.to_owned(), true),
            None => (self.dummy_hash().await?.to_owned(), false),
        };
        let argon = self.argon.clone();
        let password = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || match PasswordHash::new(&hash) {
            Ok(parsed) => argon.verify_password(password.as_bytes(), &parsed).is_ok(),
            Err(e) => {
                tracing::error!(error = %e, "stored password hash is not a PHC string");
                false
            }
        })
        .await
        .map_err(|e| AuthError::Internal(format!("verifying task: {e}")))?;
        Ok(real && matches)
    }

    async fn dummy_hash(&self) -> Result<&str, AuthError> {
        self.dummy
            .get_or_try_init(|| async {
                let mut random = [0u8; 24];
                rand::rngs::OsRng
                    .try_fill_bytes(&mut random)
                    .map_err(|e| AuthError::Internal(format!("random source: {e}")))?;
                self.hash(&format!("{random:?}")).await
            })
            .await
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let p = Passwords::new(1024, 1, 1).unwrap();
        let hash = p.hash("correct horse").await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{hash}");
        assert!(p.verify("correct horse", Some(&hash)).await.unwrap());
        assert!(!p.verify("wrong horse", Some(&hash)).await.unwrap());
        assert!(!p.verify("correct horse", None).await.unwrap());
        assert!(!p.verify("x", Some("not a phc string")).await.unwrap());
        // Salted: the same password hashes differently each time.
        assert_ne!(hash, p.hash("correct horse").await.unwrap());
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(Passwords::new(1, 0, 0).is_err());
    }
}
