//! Storage behind a small interface owned by the domain.
//!
//! The rest of the server talks to [`Store`] only; the two backends
//! ([`sqlite`] for the embedded default, [`postgres`] for a cluster) are picked
//! by [`open`] from the database URL. Migrations live in `migrations/sqlite/`
//! and `migrations/postgres/` and are embedded into the binary; later features
//! add tables as new `V<n>__name.sql` files next to the existing ones.
//!
//! Chat storage ([`ChatStore`], in [`chat`]) is a supertrait of [`Store`], so
//! one `Arc<dyn Store>` serves both.
//!
//! Timestamps are UTC with microsecond precision (what PostgreSQL keeps);
//! [`now`] gives a value that survives a round trip through either backend
//! unchanged.

pub mod chat;
pub mod postgres;
pub mod sqlite;

pub use chat::*;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint refused the write; `field` names what clashed
    /// (`username`, `email`, `phone`, or the constraint name for others).
    #[error("{field} already exists")]
    Conflict {
        /// The clashing field or constraint.
        field: String,
    },
    /// A row the operation depends on does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The database URL could not be understood.
    #[error("invalid database url: {0}")]
    InvalidUrl(String),
    /// The database could not be reached or gave no connection in time.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// Any other backend failure.
    #[error("database error: {0}")]
    Backend(String),
}

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Stable id (UUIDv7 text).
    pub id: String,
    /// The username as the user chose it; unique case-insensitively.
    pub username: String,
    /// Name shown to other users.
    pub display_name: String,
    /// Email address as given; unique case-insensitively.
    pub email: Option<String>,
    /// Phone number (normalised by the caller); unique.
    pub phone: Option<String>,
    /// PHC-format argon2id hash; `None` for accounts that log in by OTP only.
    pub password_hash: Option<String>,
    /// When the account was created (UTC).
    pub created_at: OffsetDateTime,
}

/// What [`Store::create_user`] needs. The store derives the lower-cased
/// uniqueness keys itself.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Id to assign (see [`new_id`]).
    pub id: String,
    /// Username as given.
    pub username: String,
    /// Display name.
    pub display_name: String,
    /// Optional email address.
    pub email: Option<String>,
    /// Optional phone number.
    pub phone: Option<String>,
    /// Optional password hash.
    pub password_hash: Option<String>,
    /// Creation time (UTC).
    pub created_at: OffsetDateTime,
}

/// A login session: the unit that logout and refresh-token reuse revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Session id (the `sid` claim of access tokens).
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// When the session started.
    pub created_at: OffsetDateTime,
    /// When it was revoked, if it was.
    pub revoked_at: Option<OffsetDateTime>,
}

/// A refresh token as stored: only its hash, never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    /// Hex SHA-256 of the token.
    pub token_hash: String,
    /// Rotation chain this token belongs to.
    pub family_id: String,
    /// Session the token refreshes.
    pub session_id: String,
    /// Owner.
    pub user_id: String,
    /// After this instant the token is useless.
    pub expires_at: OffsetDateTime,
    /// Set once the token has been exchanged for a new pair.
    pub spent_at: Option<OffsetDateTime>,
    /// Set when the family or session was revoked.
    pub revoked_at: Option<OffsetDateTime>,
    /// When it was issued.
    pub created_at: OffsetDateTime,
}

/// What [`Store::insert_refresh_token`] needs.
#[derive(Debug, Clone)]
pub struct NewRefreshToken {
    /// Hex SHA-256 of the token.
    pub token_hash: String,
    /// Rotation chain.
    pub family_id: String,
    /// Session (must exist).
    pub session_id: String,
    /// Owner (must exist).
    pub user_id: String,
    /// Expiry.
    pub expires_at: OffsetDateTime,
    /// Issue time.
    pub created_at: OffsetDateTime,
}

/// A one-time code as stored: a keyed hash, never the code itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtpCode {
    /// What the code is for: `login:email:<address>`, `login:phone:<number>`
    /// or `email-change:<user id>`. One live code per key.
    pub key: String,
    /// Keyed hash of the code.
    pub code_hash: String,
    /// What the code proves beyond the key (the new address of an email
    /// change).
    pub target: Option<String>,
    /// Verification attempts so far.
    pub attempts: u32,
    /// When it was issued.
    pub created_at: OffsetDateTime,
    /// After this instant it is refused.
    pub expires_at: OffsetDateTime,
}

/// Changes to an account; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    /// New display name.
    pub display_name: Option<String>,
    /// New email address.
    pub email: Option<String>,
    /// New password hash.
    pub password_hash: Option<String>,
}

/// The storage interface: accounts here, chat in [`ChatStore`].
///
/// Lookups that find nothing answer `Ok(None)`; errors are reserved for
/// conflicts and for the database itself failing.
#[async_trait]
pub trait Store: ChatStore + Send + Sync {
    /// Applies pending migrations. Safe to call on every start, and from
    /// several instances at once.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Cheap round trip to the database, for readiness checks.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Creates a user. A username or email that exists already in any letter
    /// case, or a phone number in use, gives [`StoreError::Conflict`].
    async fn create_user(&self, user: NewUser) -> Result<User, StoreError>;

    /// Looks a user up by id.
    async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError>;

    /// Looks a user up by username, ignoring letter case.
    async fn user_by_username(&self, username: &str) -> Result<Option<User>, StoreError>;

    /// Looks a user up by email address, ignoring letter case.
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError>;

    /// Looks a user up by phone number (as normalised by the caller).
    async fn user_by_phone(&self, phone: &str) -> Result<Option<User>, StoreError>;

    /// Applies `changes` to the user and returns the updated account, or
    /// `None` when there is no such user. An email in use by another
    /// account gives [`StoreError::Conflict`].
    async fn update_user(&self, id: &str, changes: UserChanges)
        -> Result<Option<User>, StoreError>;

    /// Revokes every live session of `user_id` except `keep` (and their
    /// refresh tokens); returns the ids revoked.
    async fn revoke_other_sessions(
        &self,
        user_id: &str,
        keep: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<Vec<String>, StoreError>;

    /// Stores a one-time code, replacing any code under the same key (its
    /// attempts start again at zero).
    async fn put_otp(&self, code: OtpCode) -> Result<(), StoreError>;

    /// The live or expired code under `key`, if any.
    async fn otp(&self, key: &str) -> Result<Option<OtpCode>, StoreError>;

    /// Counts one verification attempt against the code under `key` and
    /// returns the new count (`None` when there is no code). Counted before
    /// the comparison, so concurrent guesses cannot exceed the limit.
    async fn count_otp_attempt(&self, key: &str) -> Result<Option<u32>, StoreError>;

    /// Deletes the code under `key` if its hash is still `code_hash`;
    /// `true` for the single caller that spent it.
    async fn consume_otp(&self, key: &str, code_hash: &str) -> Result<bool, StoreError>;

    /// Deletes codes expired before `before`; returns how many.
    async fn delete_expired_otps(&self, before: OffsetDateTime) -> Result<u64, StoreError>;

    /// Records a new session for `user_id`.
    async fn create_session(&self, session: Session) -> Result<(), StoreError>;

    /// Looks a session up by id.
    async fn session_by_id(&self, id: &str) -> Result<Option<Session>, StoreError>;

    /// Marks the session revoked and revokes every refresh token of it.
    /// Returns whether the session was live before the call.
    async fn revoke_session(
        &self,
        session_id: &str,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Stores a newly issued refresh token (by hash).
    async fn insert_refresh_token(&self, token: NewRefreshToken) -> Result<(), StoreError>;

    /// Looks a refresh token up by the hash of its value.
    async fn refresh_token_by_hash(&self, hash: &str) -> Result<Option<RefreshToken>, StoreError>;

    /// Marks the token spent if it is neither spent nor revoked yet. Returns
    /// `true` only for the single caller that spent it, so two concurrent
    /// refreshes with one token cannot both succeed.
    async fn mark_refresh_token_spent(
        &self,
        hash: &str,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Revokes every not yet revoked token of a family; returns how many.
    async fn revoke_refresh_family(
        &self,
        family_id: &str,
        at: OffsetDateTime,
    ) -> Result<u64, StoreError>;
}

/// Opens the store named by `url` and returns it without migrating (call
/// [`Store::migrate`] next).
///
/// - empty: SQLite at `<data_dir>/stompline.db` (the directory is created);
/// - `sqlite://PATH` (or `sqlite:PATH`): that SQLite file;
/// - `postgres://…` / `postgresql://…`: PostgreSQL with a pool of
///   `pool_size` connections.
pub async fn open(
    url: &str,
    data_dir: &Path,
    pool_size: u32,
) -> Result<Arc<dyn Store>, StoreError> {
    let pool_size = pool_size.max(1);
    let url = url.trim();
    if url.is_empty() {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let store = sqlite::SqliteStore::open(&data_dir.join("stompline.db"), pool_size).await?;
        return Ok(Arc::new(store));
    }
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        if path.is_empty() {
            return Err(StoreError::InvalidUrl("sqlite url without a path".into()));
        }
        // Every connection of the pool would get a database of its own.
        if path == ":memory:" || path.contains("mode=memory") {
            return Err(StoreError::InvalidUrl(
                "in-memory SQLite is not supported; use a file".into(),
            ));
        }
        let path = Path::new(path);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let store = sqlite::SqliteStore::open(path, pool_size).await?;
        return Ok(Arc::new(store));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = postgres::PostgresStore::connect(url, pool_size).await?;
        return Ok(Arc::new(store));
    }
    let scheme = url.split(':').next().unwrap_or_default();
    Err(StoreError::InvalidUrl(format!(
        "unsupported scheme {scheme:?} (use sqlite://PATH or postgres://…)"
    )))
}

/// The current time, truncated to the microsecond precision both backends
/// keep.
pub fn now() -> OffsetDateTime {
    truncate_to_micros(OffsetDateTime::now_utc())
}

/// Truncates a timestamp to whole microseconds.
pub fn truncate_to_micros(t: OffsetDateTime) -> OffsetDateTime {
    let nanos = t.nanosecond();
    t.replace_nanosecond(nanos - nanos % 1_000).unwrap_or(t)
}

/// `user` with its creation time truncated to what the backends keep, so the
/// returned [`User`] equals what a later lookup reads.
fn truncated(mut user: NewUser) -> NewUser {
    user.created_at = truncate_to_micros(user.created_at);
    user
}

/// A new time-ordered id (UUIDv7, hyphenated lower-case text).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Maps a unique constraint name to the field it protects.
fn conflict_field(constraint: &str) -> String {
    let field = if constraint.contains("username") {
        "username"
    } else if constraint.contains("email") {
        "email"
    } else if constraint.contains("phone") {
        "phone"
    } else if constraint.contains("direct_key") {
        "direct_key"
    } else {
        constraint
    };
    field.to_string()
}

/// Lower-case key used for case-insensitive uniqueness.
fn fold(s: &str) -> String {
    s.to_lowercase()
}
