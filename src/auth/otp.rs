//! One-time codes: login by email or phone, and confirming a new email
//! address.
//!
//! A code is six digits from a CSPRNG, stored only as an HMAC keyed with
//! the server secret (a stolen table does not reveal live codes), valid for
//! a few minutes and for a few attempts, compared in constant time, and
//! deleted when used. Requests are throttled per identifier (one code per
//! resend interval, a cap per hour — both answered like a success, sending
//! nothing) and per IP (429). Whether an account exists never changes the
//! answer of a request.

use std::net::IpAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::Rng as _;
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use super::abuse::{Action, Limited};
use super::validate::{self, ValidationError};
use super::{Auth, AuthError, TokenPair};
use crate::mail::{self, Recipient};
use crate::store::{self, NewUser, OtpCode, StoreError, User};

/// Rules of one-time codes (`[auth] otp_*`).
#[derive(Debug, Clone, Copy)]
pub struct OtpSettings {
    /// How long a code is valid.
    pub ttl: Duration,
    /// Attempts per code; the next one fails whatever it says.
    pub max_attempts: u32,
    /// Least time between two codes for one identifier.
    pub resend: Duration,
    /// Codes per identifier per hour (0 = no cap).
    pub per_hour: u32,
    /// Requests per IP per hour (0 = no cap).
    pub per_hour_per_ip: u32,
}

impl Default for OtpSettings {
    fn default() -> Self {
        OtpSettings {
            ttl: Duration::from_secs(300),
            max_attempts: 5,
            resend: Duration::from_secs(60),
            per_hour: 5,
            per_hour_per_ip: 20,
        }
    }
}

/// Who a login code is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identifier {
    /// An email address (trimmed; compared ignoring case).
    Email(String),
    /// A phone number in `+digits` form.
    Phone(String),
}

impl Identifier {
    /// Exactly one of `email` and `phone`, checked and normalised.
    ///
    /// # Errors
    ///
    /// When both or neither are given, or the one given is malformed.
    pub fn parse(email: Option<&str>, phone: Option<&str>) -> Result<Identifier, ValidationError> {
        let email = email.filter(|e| !e.trim().is_empty());
        let phone = phone.filter(|p| !p.trim().is_empty());
        match (email, phone) {
            (Some(e), None) => Ok(Identifier::Email(validate::normalize_email(e)?)),
            (None, Some(p)) => Ok(Identifier::Phone(validate::normalize_phone(p)?)),
            (None, None) => Err(ValidationError::InvalidEmail),
            (Some(_), Some(_)) => Err(ValidationError::InvalidEmail),
        }
    }

    fn key(&self) -> String {
        match self {
            Identifier::Email(e) => format!("login:email:{}", e.to_lowercase()),
            Identifier::Phone(p) => format!("login:phone:{p}"),
        }
    }

    fn recipient(&self) -> Recipient {
        match self {
            Identifier::Email(e) => Recipient::Email(e.clone()),
            Identifier::Phone(p) => Recipient::Phone(p.clone()),
        }
    }
}

fn email_change_key(user_id: &str) -> String {
    format!("email-change:{user_id}")
}

fn limited(l: Limited) -> AuthError {
    AuthError::RateLimited(l.retry_after)
}

/// Six decimal digits from the thread-local CSPRNG (ChaCha, seeded from
/// the OS).
fn new_code() -> String {
    format!("{:06}", rand::rng().random_range(0..1_000_000u32))
}

impl Auth {
    /// Keyed hash of `code` for `key`, hex.
    fn code_hash(&self, key: &str, code: &str) -> Result<String, AuthError> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret)
            .map_err(|e| AuthError::Internal(format!("otp key: {e}")))?;
        mac.update(key.as_bytes());
        mac.update(b"\n");
        mac.update(code.as_bytes());
        Ok(mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }

    /// Issues a code under `key` unless one was issued within the resend
    /// interval or the identifier's hourly cap is reached; returns the code
    /// to send, or `None` to send nothing.
    async fn issue_code(
        &self,
        ip: Option<IpAddr>,
        key: &str,
        target: Option<String>,
    ) -> Result<Option<String>, AuthError> {
        self.limits
            .check_ip(Action::RequestOtp, ip)
            .await
            .map_err(limited)?;
        if let Some(ip) = ip {
            self.limits
                .hourly(&format!("otp_ip:{ip}"), self.otp.per_hour_per_ip)
                .await
                .map_err(limited)?;
        }
        let now = store::now();
        let resend = time::Duration::try_from(self.otp.resend).unwrap_or(time::Duration::MINUTE);
        if let Some(existing) = self.store.otp(key).await? {
            if existing.created_at + resend > now && existing.target == target {
                tracing::debug!(key, "code requested again within the resend interval");
                return Ok(None);
            }
        }
        if self
            .limits
            .hourly(&format!("otp_id:{key}"), self.otp.per_hour)
            .await
            .is_err()
        {
            tracing::info!(key, "hourly code cap reached; nothing sent");
            return Ok(None);
        }
        let code = new_code();
        let ttl = time::Duration::try_from(self.otp.ttl).unwrap_or(time::Duration::MINUTE);
        self.store
            .put_otp(OtpCode {
                key: key.to_string(),
                code_hash: self.code_hash(key, &code)?,
                target,
                attempts: 0,
                created_at: now,
                expires_at: now + ttl,
            })
            .await?;
        Ok(Some(code))
    }

    fn deliver(&self, message: mail::Message) {
        match &self.courier {
            Some(courier) => courier.send(message),
            None => tracing::warn!(to = %message.to, "no mail delivery configured; code dropped"),
        }
    }

    /// `POST /api/auth/request-otp`: sends a login code to `id` (throttled
    /// as described in the module docs). Succeeds the same way whether or
    /// not an account exists; only the per-IP limits refuse
    /// ([`AuthError::RateLimited`]).
    pub async fn request_otp(&self, ip: Option<IpAddr>, id: &Identifier) -> Result<(), AuthError> {
        if let Some(code) = self.issue_code(ip, &id.key(), None).await? {
            self.deliver(mail::code_message(id.recipient(), &code, self.otp.ttl));
        }
        Ok(())
    }

    /// Checks `code` against the live code under `key` and spends it.
    /// Every failure looks the same ([`AuthError::InvalidCode`]).
    async fn spend_code(
        &self,
        ip: Option<IpAddr>,
        key: &str,
        code: &str,
    ) -> Result<OtpCode, AuthError> {
        self.limits
            .check_ip(Action::VerifyOtp, ip)
            .await
            .map_err(limited)?;
        self.limits
            .check_account(Action::VerifyOtp, key)
            .await
            .map_err(limited)?;
        match self.try_spend(key, code).await {
            Ok(Some(record)) => {
                self.limits.succeeded(Action::VerifyOtp, key).await;
                Ok(record)
            }
            Ok(None) => {
                metrics::counter!("stompline_auth_failures_total", "reason" => "invalid_code")
                    .increment(1);
                let delay = self.limits.failed(Action::VerifyOtp, key).await;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Err(AuthError::InvalidCode)
            }
            Err(e) => Err(e),
        }
    }

    async fn try_spend(&self, key: &str, code: &str) -> Result<Option<OtpCode>, AuthError> {
        let code = code.trim();
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(None);
        }
        let Some(record) = self.store.otp(key).await? else {
            return Ok(None);
        };
        if record.expires_at <= store::now() {
            return Ok(None);
        }
        // Counted before comparing: parallel guesses cannot get past the
        // limit, and the attempt after the last allowed one fails even with
        // the right code.
        let Some(attempts) = self.store.count_otp_attempt(key).await? else {
            return Ok(None);
        };
        if attempts > self.otp.max_attempts {
            self.store.consume_otp(key, &record.code_hash).await?;
            return Ok(None);
        }
        let hash = self.code_hash(key, code)?;
        let matches: bool = hash.as_bytes().ct_eq(record.code_hash.as_bytes()).into();
        if !matches {
            return Ok(None);
        }
        // Compare-and-delete: of two requests with the right code one wins.
        if !self.store.consume_otp(key, &record.code_hash).await? {
            return Ok(None);
        }
        Ok(Some(record))
    }

    /// `POST /api/auth/verify-otp`: spends the code and opens a session,
    /// creating the account on its first verified login.
    pub async fn verify_otp(
        &self,
        ip: Option<IpAddr>,
        id: &Identifier,
        code: &str,
    ) -> Result<TokenPair, AuthError> {
        self.spend_code(ip, &id.key(), code).await?;
        let user = match self.user_by_identifier(id).await? {
            Some(user) => user,
            None => self.create_otp_user(id).await?,
        };
        self.open_session(user).await
    }

    async fn user_by_identifier(&self, id: &Identifier) -> Result<Option<User>, StoreError> {
        match id {
            Identifier::Email(e) => self.store.user_by_email(e).await,
            Identifier::Phone(p) => self.store.user_by_phone(p).await,
        }
    }

    /// A new password-less account for a verified email or phone, with a
    /// username derived from it (a random suffix on a clash).
    async fn create_otp_user(&self, id: &Identifier) -> Result<User, AuthError> {
        let base: String = match id {
            Identifier::Email(e) => e
                .split('@')
                .next()
                .unwrap_or_default()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                .take(24)
                .collect::<String>()
                .to_lowercase(),
            Identifier::Phone(p) => format!("phone{}", &p[p.len().saturating_sub(4)..]),
        };
        let base = if base.len() < 3 {
            "user".to_string()
        } else {
            base
        };
        let (email, phone) = match id {
            Identifier::Email(e) => (Some(e.clone()), None),
            Identifier::Phone(p) => (None, Some(p.clone())),
        };
        for attempt in 0..8 {
            let username = if attempt == 0 {
                base.clone()
            } else {
                format!("{base}-{:05}", rand::rng().random_range(0..100_000u32))
            };
            let created = self
                .store
                .create_user(NewUser {
                    id: store::new_id(),
                    display_name: username.clone(),
                    username,
                    email: email.clone(),
                    phone: phone.clone(),
                    password_hash: None,
                    created_at: store::now(),
                })
                .await;
            match created {
                Ok(user) => return Ok(user),
                Err(StoreError::Conflict { field }) if field == "username" => continue,
                // Created concurrently by another verified login.
                Err(StoreError::Conflict { .. }) => {
                    if let Some(user) = self.user_by_identifier(id).await? {
                        return Ok(user);
                    }
                    return Err(AuthError::Conflict("email".into()));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(AuthError::Internal("no free username found".into()))
    }

    /// Starts an email change for `user_id`: a code goes to `new_email`.
    /// Throttled like login codes; whether the address is taken is only
    /// told when the code is confirmed.
    pub async fn request_email_change(
        &self,
        ip: Option<IpAddr>,
        user_id: &str,
        new_email: &str,
    ) -> Result<String, AuthError> {
        let email = validate::normalize_email(new_email)?;
        let key = email_change_key(user_id);
        if let Some(code) = self.issue_code(ip, &key, Some(email.clone())).await? {
            self.deliver(mail::email_change_message(&email, &code, self.otp.ttl));
        }
        Ok(email)
    }

    /// Confirms an email change with the code sent to the new address and
    /// applies it.
    pub async fn confirm_email_change(
        &self,
        ip: Option<IpAddr>,
        user_id: &str,
        new_email: &str,
        code: &str,
    ) -> Result<User, AuthError> {
        let email = validate::normalize_email(new_email)?;
        let record = self
            .spend_code(ip, &email_change_key(user_id), code)
            .await?;
        if record.target.as_deref().map(str::to_lowercase) != Some(email.to_lowercase()) {
            return Err(AuthError::InvalidCode);
        }
        self.store
            .update_user(
                user_id,
                store::UserChanges {
                    email: Some(email),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| match e {
                StoreError::Conflict { field } => AuthError::Conflict(field),
                other => other.into(),
            })?
            .ok_or(AuthError::InvalidToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits() {
        for _ in 0..1000 {
            let c = new_code();
            assert_eq!(c.len(), 6);
            assert!(c.bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn identifiers() {
        assert_eq!(
            Identifier::parse(Some(" A@Example.org "), None)
                .unwrap()
                .key(),
            "login:email:a@example.org"
        );
        assert_eq!(
            Identifier::parse(None, Some("+1 555 123 4567")).unwrap(),
            Identifier::Phone("+15551234567".into())
        );
        assert!(Identifier::parse(None, None).is_err());
        assert!(Identifier::parse(Some("a@b.org"), Some("+15551234567")).is_err());
        assert!(Identifier::parse(None, Some("12")).is_err());
    }
}
