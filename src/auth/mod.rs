//! Accounts and authentication: argon2id passwords, short-lived HS256 access
//! tokens and rotating refresh tokens with reuse detection.
//!
//! One login (registration, password login, later OTP) opens a *session*.
//! Its access tokens carry the session id as `sid`; its refresh tokens form
//! one *family*. Refreshing spends the presented token and issues a new pair
//! in the same family. Presenting a spent token again means it leaked (or a
//! client raced itself): the whole family and its session are revoked.
//! Logout revokes the session likewise.
//!
//! Access tokens are checked without a database round trip. Revoked sessions
//! are remembered in memory until their last access token would have expired
//! anyway, and announced on [`Auth::subscribe_revocations`] so live STOMP
//! connections of the session can be closed.
//!
//! Usernames are stored and returned as the user typed them; uniqueness and
//! login ignore letter case.

pub mod abuse;
mod account;
mod cookie;
pub mod limiter;
mod otp;
mod password;
mod revocation;
mod token;
pub mod validate;

pub use revocation::RevocationLog;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::mail::Courier;
use crate::store::{self, NewRefreshToken, NewUser, Session, Store, StoreError, User};
pub use abuse::{Action, Limited, RateLimits};
pub use cookie::{BrowserSession, CSRF_COOKIE, SESSION_COOKIE};
pub use otp::{Identifier, OtpSettings};
use password::Passwords;
use token::{Claims, Signer};
pub use validate::ValidationError;

/// Settings of [`Auth`].
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// HS256 secret; `None` (or empty) uses `<data_dir>/jwt.key`, generated
    /// on first start. Every instance of a cluster needs the same secret.
    pub jwt_secret: Option<String>,
    /// Where the generated key file lives.
    pub data_dir: PathBuf,
    /// Lifetime of access tokens (whole seconds, at least one).
    pub access_ttl: Duration,
    /// Lifetime of a refresh token from its issue; each refresh starts a new
    /// one.
    pub refresh_ttl: Duration,
    /// argon2id memory cost in KiB.
    pub argon2_memory_kib: u32,
    /// argon2id number of passes.
    pub argon2_iterations: u32,
    /// argon2id lanes.
    pub argon2_parallelism: u32,
    /// One-time code rules.
    pub otp: OtpSettings,
}

impl Default for AuthSettings {
    /// Production defaults: 15 minute access tokens, 30 day refresh tokens,
    /// argon2id m=19456 KiB, t=2, p=1 (the OWASP baseline), data in `./data`.
    fn default() -> Self {
        Self {
            jwt_secret: None,
            data_dir: PathBuf::from("data"),
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            otp: OtpSettings::default(),
        }
    }
}

/// Who is calling, as established by a password or an access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// User id.
    pub user_id: String,
    /// Username (as stored).
    pub username: String,
    /// Session of the access token; `None` for password logins over STOMP.
    pub session_id: Option<String>,
    /// Expiry of the access token; `None` for password logins.
    pub expires_at: Option<SystemTime>,
}

/// The answer to register, login and refresh.
#[derive(Debug, Clone)]
pub struct TokenPair {
    /// The account.
    pub user: User,
    /// Session the tokens belong to.
    pub session_id: String,
    /// Bearer token for REST and STOMP.
    pub access_token: String,
    /// One-time token for [`Auth::refresh`].
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

/// A registration request.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    /// Wanted username.
    pub username: String,
    /// Password in clear.
    pub password: String,
    /// Optional email address.
    pub email: Option<String>,
    /// Optional display name; defaults to the username.
    pub display_name: Option<String>,
}

/// Why authentication failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown user or wrong password (deliberately indistinguishable).
    #[error("invalid username or password")]
    InvalidCredentials,
    /// The token was valid but has expired.
    #[error("token expired")]
    TokenExpired,
    /// Not a token this server issued, malformed, or unknown.
    #[error("invalid token")]
    InvalidToken,
    /// The session was logged out or revoked after refresh-token reuse.
    #[error("session revoked")]
    SessionRevoked,
    /// A spent refresh token was presented again; its family and session
    /// are now revoked.
    #[error("refresh token reused; the session has been revoked")]
    RefreshTokenReused,
    /// A registration field broke a rule.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// The username or email is taken; names the field.
    #[error("{0} is already taken")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Too many attempts; retry after the given time.
    #[error("too many attempts; retry later")]
    RateLimited(Duration),
    /// A one-time code that is wrong, expired, spent or out of attempts
    /// (deliberately indistinguishable).
    #[error("the code is wrong or no longer valid")]
    InvalidCode,
    /// The current password given with a password change is wrong.
    #[error("the current password is wrong")]
    WrongPassword,
    /// Anything else that is our fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AuthError {
    /// Short snake_case name, used as the API error code and as the `reason`
    /// label of `stompline_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidCredentials => "invalid_credentials",
            Self::TokenExpired => "token_expired",
            Self::InvalidToken => "invalid_token",
            Self::SessionRevoked => "session_revoked",
            Self::RefreshTokenReused => "refresh_token_reused",
            Self::Validation(v) => v.code(),
            Self::Conflict(_) => "conflict",
            Self::RateLimited(_) => "rate_limited",
            Self::InvalidCode => "invalid_code",
            Self::WrongPassword => "wrong_password",
            Self::Store(_) | Self::Internal(_) => "internal",
        }
    }

    /// Whether the caller's credentials were refused (as opposed to bad
    /// input or a server fault).
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            Self::InvalidCredentials
                | Self::TokenExpired
                | Self::InvalidToken
                | Self::SessionRevoked
                | Self::RefreshTokenReused
                | Self::InvalidCode
        )
    }
}

/// Capacity of the revocation channel; a receiver that lags this far behind
/// gets `Lagged` and should re-check its sessions with [`Auth::is_revoked`].
const REVOCATION_CHANNEL: usize = 1024;

/// The authentication service.
pub struct Auth {
    store: Arc<dyn Store>,
    signer: Signer,
    passwords: Passwords,
    access_ttl_secs: u64,
    refresh_ttl: Duration,
    /// Revoked session id → until when access tokens of it could still be
    /// unexpired.
    revoked: Mutex<HashMap<String, SystemTime>>,
    revocations: broadcast::Sender<String>,
    /// Key of the one-time code and CSRF hashes (the signing secret).
    secret: Vec<u8>,
    otp: OtpSettings,
    limits: RateLimits,
    /// Delivers one-time codes; `None` drops them (with a warning).
    courier: Option<Arc<Courier>>,
    /// Where revocations made here go for the other instances.
    revocation_log: OnceLock<Arc<dyn RevocationLog>>,
}

impl Auth {
    /// Builds the service, loading or generating the signing key.
    pub fn new(settings: AuthSettings, store: Arc<dyn Store>) -> Result<Self, AuthError> {
        let secret = token::load_secret(settings.jwt_secret.as_deref(), &settings.data_dir)?;
        let passwords = Passwords::new(
            settings.argon2_memory_kib,
            settings.argon2_iterations,
            settings.argon2_parallelism,
        )?;
        Ok(Self {
            store,
            signer: Signer::new(&secret),
            passwords,
            access_ttl_secs: settings.access_ttl.as_secs().max(1),
            refresh_ttl: settings.refresh_ttl,
            revoked: Mutex::new(HashMap::new()),
            revocations: broadcast::channel(REVOCATION_CHANNEL).0,
            secret,
            otp: settings.otp,
            limits: RateLimits::default(),
            courier: None,
            revocation_log: OnceLock::new(),
        })
    }

    /// Uses `limits` for logins, registrations and codes (the default
    /// counts only the hourly code caps).
    pub fn with_rate_limits(mut self, limits: RateLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Delivers one-time codes through `courier`.
    pub fn with_courier(mut self, courier: Arc<Courier>) -> Self {
        self.courier = Some(courier);
        self
    }

    /// The rate-limit policy.
    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    /// Lifetime of access tokens.
    pub fn access_ttl(&self) -> Duration {
        Duration::from_secs(self.access_ttl_secs)
    }

    /// Checks a username (or, if it contains `@`, an email address) and
    /// password. Creates no session or tokens. Costs the same whether or not
    /// the account exists.
    pub async fn authenticate_password(
        &self,
        username_or_email: &str,
        password: &str,
    ) -> Result<Principal, AuthError> {
        let user = self.check_password(username_or_email, password).await?;
        Ok(Principal {
            user_id: user.id,
            username: user.username,
            session_id: None,
            expires_at: None,
        })
    }

    /// Checks an access token: signature, expiry and (for sessions revoked
    /// through this instance) revocation. No I/O.
    pub fn verify_access_token(&self, token: &str) -> Result<Principal, AuthError> {
        let claims = self.signer.verify(token).map_err(count_failure)?;
        // A session cookie's token is not a bearer token.
        if claims.kind.is_some() {
            return Err(count_failure(AuthError::InvalidToken));
        }
        if self.is_revoked(&claims.sid) {
            return Err(count_failure(AuthError::SessionRevoked));
        }
        Ok(Principal {
            user_id: claims.sub,
            username: claims.username,
            session_id: Some(claims.sid),
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(claims.exp)),
        })
    }

    /// Creates an account and logs it in.
    pub async fn register(&self, registration: Registration) -> Result<TokenPair, AuthError> {
        validate::validate_username(&registration.username)?;
        validate::validate_new_password(&registration.password)?;
        let email = registration
            .email
            .as_deref()
            .map(validate::normalize_email)
            .transpose()?;
        let display_name = match registration.display_name.as_deref() {
            Some(name) => validate::normalize_display_name(name)?,
            None => registration.username.clone(),
        };
        let password_hash = self.passwords.hash(&registration.password).await?;
        let user = self
            .store
            .create_user(NewUser {
                id: store::new_id(),
                username: registration.username,
                display_name,
                email,
                phone: None,
                password_hash: Some(password_hash),
                created_at: store::now(),
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict { field } => AuthError::Conflict(field),
                other => AuthError::Store(other),
            })?;
        self.open_session(user).await
    }

    /// [`Auth::authenticate_password`] under the rate limits: the caller's
    /// IP and the account's failures may refuse it
    /// ([`AuthError::RateLimited`]), and a failure is answered late once
    /// the account has failed repeatedly.
    pub async fn authenticate_password_from(
        &self,
        action: Action,
        ip: Option<std::net::IpAddr>,
        username_or_email: &str,
        password: &str,
    ) -> Result<Principal, AuthError> {
        let user = self
            .guarded(action, ip, username_or_email, password)
            .await?;
        Ok(Principal {
            user_id: user.id,
            username: user.username,
            session_id: None,
            expires_at: None,
        })
    }

    /// [`Auth::login`] under the rate limits (see
    /// [`Auth::authenticate_password_from`]).
    pub async fn login_from(
        &self,
        ip: Option<std::net::IpAddr>,
        username_or_email: &str,
        password: &str,
    ) -> Result<TokenPair, AuthError> {
        let user = self
            .guarded(Action::Login, ip, username_or_email, password)
            .await?;
        self.open_session(user).await
    }

    async fn guarded(
        &self,
        action: Action,
        ip: Option<std::net::IpAddr>,
        login: &str,
        password: &str,
    ) -> Result<User, AuthError> {
        let limited = |l: Limited| AuthError::RateLimited(l.retry_after);
        self.limits.check_ip(action, ip).await.map_err(limited)?;
        // Failures count per account, whichever name (username or email)
        // an attacker uses for it; unknown names count as given.
        let user = self.find_login(login).await?;
        let account = user
            .as_ref()
            .map_or_else(|| login.trim().to_lowercase(), |u| format!("user:{}", u.id));
        self.limits
            .check_account(action, &account)
            .await
            .map_err(limited)?;
        match self.verify_login(user, password).await {
            Ok(user) => {
                self.limits.succeeded(action, &account).await;
                Ok(user)
            }
            Err(AuthError::InvalidCredentials) => {
                let delay = self.limits.failed(action, &account).await;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Err(AuthError::InvalidCredentials)
            }
            Err(e) => Err(e),
        }
    }

    /// [`Auth::register`] under the per-IP limit.
    pub async fn register_from(
        &self,
        ip: Option<std::net::IpAddr>,
        registration: Registration,
    ) -> Result<TokenPair, AuthError> {
        self.limits
            .check_ip(Action::Register, ip)
            .await
            .map_err(|l| AuthError::RateLimited(l.retry_after))?;
        self.register(registration).await
    }

    /// Checks a password and opens a new session.
    pub async fn login(
        &self,
        username_or_email: &str,
        password: &str,
    ) -> Result<TokenPair, AuthError> {
        let user = self.check_password(username_or_email, password).await?;
        self.open_session(user).await
    }

    /// Opens a new session for an already authenticated user (for example
    /// after a verified OTP).
    pub async fn open_session(&self, user: User) -> Result<TokenPair, AuthError> {
        let now = store::now();
        let session_id = store::new_id();
        self.store
            .create_session(Session {
                id: session_id.clone(),
                user_id: user.id.clone(),
                created_at: now,
                revoked_at: None,
            })
            .await?;
        self.issue(user, session_id, store::new_id()).await
    }

    /// Exchanges a refresh token for a new pair in the same session. A token
    /// that was already spent revokes its family and session and answers
    /// [`AuthError::RefreshTokenReused`].
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, AuthError> {
        self.refresh_inner(refresh_token)
            .await
            .map_err(count_failure)
    }

    async fn refresh_inner(&self, refresh_token: &str) -> Result<TokenPair, AuthError> {
        if !token::looks_like_refresh_token(refresh_token) {
            return Err(AuthError::InvalidToken);
        }
        let hash = token::hash_refresh_token(refresh_token);
        let record = self
            .store
            .refresh_token_by_hash(&hash)
            .await?
            .ok_or(AuthError::InvalidToken)?;
        if record.revoked_at.is_some() {
            return Err(AuthError::SessionRevoked);
        }
        if record.spent_at.is_some() {
            return Err(self.reused(&record.family_id, &record.session_id).await);
        }
        let now = store::now();
        if record.expires_at <= now {
            return Err(AuthError::TokenExpired);
        }
        // Spending is a compare-and-set: of two concurrent refreshes with one
        // token only one gets here with `true`; the other is a reuse.
        if !self.store.mark_refresh_token_spent(&hash, now).await? {
            return Err(self.reused(&record.family_id, &record.session_id).await);
        }
        let session = self.store.session_by_id(&record.session_id).await?;
        if session.is_none_or(|s| s.revoked_at.is_some()) {
            return Err(AuthError::SessionRevoked);
        }
        let user = self
            .store
            .user_by_id(&record.user_id)
            .await?
            .ok_or(AuthError::InvalidToken)?;
        self.issue(user, record.session_id, record.family_id).await
    }

    /// Ends a session: its refresh tokens stop working at once, its access
    /// tokens are refused by this instance, and subscribers of
    /// [`Auth::subscribe_revocations`] hear about it. Idempotent.
    pub async fn logout(&self, session_id: &str) -> Result<(), AuthError> {
        self.store.revoke_session(session_id, store::now()).await?;
        self.remember_revoked(session_id);
        self.publish_revoked(session_id).await;
        Ok(())
    }

    /// Finds the session a refresh token belongs to (for logging out with a
    /// refresh token instead of an access token).
    pub async fn session_of_refresh_token(&self, refresh_token: &str) -> Result<String, AuthError> {
        if !token::looks_like_refresh_token(refresh_token) {
            return Err(count_failure(AuthError::InvalidToken));
        }
        let hash = token::hash_refresh_token(refresh_token);
        match self.store.refresh_token_by_hash(&hash).await? {
            Some(record) => Ok(record.session_id),
            None => Err(count_failure(AuthError::InvalidToken)),
        }
    }

    /// Whether this instance knows the session as revoked.
    pub fn is_revoked(&self, session_id: &str) -> bool {
        self.revoked
            .lock()
            .get(session_id)
            .is_some_and(|until| *until > SystemTime::now())
    }

    /// Session ids revoked from now on (logout, refresh-token reuse). The
    /// STOMP layer closes connections of these sessions.
    pub fn subscribe_revocations(&self) -> broadcast::Receiver<String> {
        self.revocations.subscribe()
    }

    async fn check_password(
        &self,
        username_or_email: &str,
        password: &str,
    ) -> Result<User, AuthError> {
        let user = self.find_login(username_or_email).await?;
        self.verify_login(user, password).await
    }

    /// The account a login name (username, or email when it has `@`)
    /// names; `None` also for names too long to be one.
    async fn find_login(&self, username_or_email: &str) -> Result<Option<User>, AuthError> {
        let login = username_or_email.trim();
        if login.is_empty() || login.len() > 254 {
            return Ok(None);
        }
        Ok(if login.contains('@') {
            self.store.user_by_email(login).await?
        } else {
            self.store.user_by_username(login).await?
        })
    }

    /// Checks `password` against `user`'s hash, at the same cost when there
    /// is no user or no hash.
    async fn verify_login(&self, user: Option<User>, password: &str) -> Result<User, AuthError> {
        // Over-long input is refused before hashing; that says nothing about
        // whether the account exists.
        if password.len() > validate::MAX_PASSWORD_BYTES {
            return Err(count_failure(AuthError::InvalidCredentials));
        }
        let hash = user.as_ref().and_then(|u| u.password_hash.as_deref());
        if self.passwords.verify(password, hash).await? {
            // `verify` is only true with a real hash, hence a real user.
            user.ok_or(AuthError::InvalidCredentials)
        } else {
            Err(count_failure(AuthError::InvalidCredentials))
        }
    }

    async fn issue(
        &self,
        user: User,
        session_id: String,
        family_id: String,
    ) -> Result<TokenPair, AuthError> {
        let now = store::now();
        let refresh_token = token::new_refresh_token()?;
        let refresh_ttl = time::Duration::try_from(self.refresh_ttl)
            .map_err(|e| AuthError::Internal(format!("refresh ttl: {e}")))?;
        self.store
            .insert_refresh_token(NewRefreshToken {
                token_hash: token::hash_refresh_token(&refresh_token),
                family_id,
                session_id: session_id.clone(),
                user_id: user.id.clone(),
                expires_at: now.saturating_add(refresh_ttl),
                created_at: now,
            })
            .await?;
        let iat = token::unix_now();
        let access_token = self.signer.sign(&Claims {
            sub: user.id.clone(),
            sid: session_id.clone(),
            username: user.username.clone(),
            exp: iat + self.access_ttl_secs,
            iat,
            kind: None,
        })?;
        Ok(TokenPair {
            user,
            session_id,
            access_token,
            refresh_token,
            expires_in: self.access_ttl_secs,
        })
    }

    /// Handles a replayed refresh token: revoke everything of its family and
    /// session. Returns the error to answer with.
    async fn reused(&self, family_id: &str, session_id: &str) -> AuthError {
        tracing::warn!(session_id, "refresh token reused; revoking its session");
        let now = store::now();
        if let Err(e) = self.store.revoke_refresh_family(family_id, now).await {
            return e.into();
        }
        if let Err(e) = self.store.revoke_session(session_id, now).await {
            return e.into();
        }
        self.remember_revoked(session_id);
        self.publish_revoked(session_id).await;
        AuthError::RefreshTokenReused
    }

    fn remember_revoked(&self, session_id: &str) {
        let now = SystemTime::now();
        // One second of margin: `exp` has whole-second resolution.
        let until = now + Duration::from_secs(self.access_ttl_secs + 1);
        {
            let mut revoked = self.revoked.lock();
            revoked.retain(|_, until| *until > now);
            revoked.insert(session_id.to_string(), until);
        }
        // No receivers is fine.
        let _ = self.revocations.send(session_id.to_string());
    }
}

/// Counts a refused credential in `stompline_auth_failures_total`.
fn count_failure(e: AuthError) -> AuthError {
    if e.is_auth_failure() {
        metrics::counter!("stompline_auth_failures_total", "reason" => e.reason()).increment(1);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn auth(access_ttl: Duration) -> (Auth, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = store::open("", dir.path(), 2).await.unwrap();
        store.migrate().await.unwrap();
        let settings = AuthSettings {
            data_dir: dir.path().to_path_buf(),
            access_ttl,
            argon2_memory_kib: 4096,
            argon2_iterations: 1,
            ..AuthSettings::default()
        };
        (Auth::new(settings, store).unwrap(), dir)
    }

    fn alice() -> Registration {
        Registration {
            username: "Alice".into(),
            password: "correct horse".into(),
            email: Some("Alice@Example.org".into()),
            display_name: None,
        }
    }

    #[tokio::test]
    async fn register_then_password_and_token_logins() {
        let (auth, _dir) = auth(Duration::from_secs(60)).await;
        let pair = auth.register(alice()).await.unwrap();
        assert_eq!(pair.user.username, "Alice");
        assert_eq!(pair.user.display_name, "Alice");

        let by_token = auth.verify_access_token(&pair.access_token).unwrap();
        assert_eq!(by_token.user_id, pair.user.id);
        assert_eq!(
            by_token.session_id.as_deref(),
            Some(pair.session_id.as_str())
        );
        assert!(by_token.expires_at.unwrap() > SystemTime::now());

        for login in ["alice", "ALICE", "alice@example.org"] {
            let p = auth
                .authenticate_password(login, "correct horse")
                .await
                .unwrap();
            assert_eq!(p.user_id, pair.user.id);
            assert_eq!((p.session_id, p.expires_at), (None, None));
        }
        for (login, password) in [
            ("alice", "wrong horse"),
            ("nobody", "correct horse"),
            ("", "x"),
        ] {
            assert!(matches!(
                auth.authenticate_password(login, password).await,
                Err(AuthError::InvalidCredentials)
            ));
        }
        assert!(matches!(
            auth.register(Registration { username: "ALICE".into(), email: None, ..alice() }).await,
            Err(AuthError::Conflict(field)) if field == "username"
        ));
        assert!(matches!(
            auth.register(Registration { username: "bob".into(), ..alice() }).await,
            Err(AuthError::Conflict(field)) if field == "email"
        ));
        assert!(matches!(
            auth.register(Registration {
                username: "b".into(),
                ..alice()
            })
            .await,
            Err(AuthError::Validation(ValidationError::InvalidUsername))
        ));
    }

    #[tokio::test]
    async fn refresh_rotates_and_reuse_revokes_the_session() {
        let (auth, _dir) = auth(Duration::from_secs(60)).await;
        let mut revocations = auth.subscribe_revocations();
        let first = auth.register(alice()).await.unwrap();
        let second = auth.refresh(&first.refresh_token).await.unwrap();
        assert_eq!(second.session_id, first.session_id);
        assert_ne!(second.refresh_token, first.refresh_token);

        assert!(matches!(
            auth.refresh(&first.refresh_token).await,
            Err(AuthError::RefreshTokenReused)
        ));
        assert!(matches!(
            auth.refresh(&second.refresh_token).await,
            Err(AuthError::SessionRevoked)
        ));
        assert!(matches!(
            auth.verify_access_token(&second.access_token),
            Err(AuthError::SessionRevoked)
        ));
        assert_eq!(revocations.recv().await.unwrap(), first.session_id);

        // Another session of the same user is untouched.
        let other = auth.login("alice", "correct horse").await.unwrap();
        assert!(auth.verify_access_token(&other.access_token).is_ok());
        assert!(auth.refresh(&other.refresh_token).await.is_ok());

        assert!(matches!(
            auth.refresh("not a token").await,
            Err(AuthError::InvalidToken)
        ));
        let unknown = token::new_refresh_token().unwrap();
        assert!(matches!(
            auth.refresh(&unknown).await,
            Err(AuthError::InvalidToken)
        ));
    }

    #[tokio::test]
    async fn logout_revokes_tokens_of_that_session_only() {
        let (auth, _dir) = auth(Duration::from_secs(60)).await;
        let first = auth.register(alice()).await.unwrap();
        let second = auth.login("alice", "correct horse").await.unwrap();
        auth.logout(&first.session_id).await.unwrap();
        auth.logout(&first.session_id).await.unwrap();
        assert!(matches!(
            auth.verify_access_token(&first.access_token),
            Err(AuthError::SessionRevoked)
        ));
        assert!(matches!(
            auth.refresh(&first.refresh_token).await,
            Err(AuthError::SessionRevoked)
        ));
        assert!(auth.verify_access_token(&second.access_token).is_ok());
    }

    #[tokio::test]
    async fn access_tokens_expire() {
        let (auth, _dir) = auth(Duration::from_millis(1)).await;
        let pair = auth.register(alice()).await.unwrap();
        assert_eq!(pair.expires_in, 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match auth.verify_access_token(&pair.access_token) {
                Err(AuthError::TokenExpired) => break,
                Ok(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                other => panic!("token still accepted or wrong error: {other:?}"),
            }
        }
        // The refresh token still works and yields a fresh access token.
        let renewed = auth.refresh(&pair.refresh_token).await.unwrap();
        assert!(auth.verify_access_token(&renewed.access_token).is_ok());
    }
}
