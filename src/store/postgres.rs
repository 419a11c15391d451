//! PostgreSQL backend (cluster mode): `tokio-postgres` behind a bb8 pool,
//! without TLS (the database is expected on a private network or loopback).

use std::time::Duration;

use async_trait::async_trait;
use bb8::{Pool, PooledConnection, RunError};
use bb8_postgres::PostgresConnectionManager;
use time::OffsetDateTime;
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};

use super::{
    conflict_field, fold, NewRefreshToken, NewUser, OtpCode, RefreshToken, Session, Store,
    StoreError, User, UserChanges,
};

mod chat;

mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

/// How long to wait for a pooled connection (or a new one) before reporting
/// the database unavailable.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Key of the advisory lock that serialises migrations across instances
/// starting at the same time ("stompline" in ASCII, truncated to 8 bytes).
const MIGRATION_LOCK_KEY: i64 = 0x73746f6d706c696e;

type Manager = PostgresConnectionManager<NoTls>;

/// How often the search index's pending list is merged into the index, off
/// the persister's transactions.
const SEARCH_CLEAN_EVERY: Duration = Duration::from_millis(100);

/// A [`Store`] on PostgreSQL.
pub struct PostgresStore {
    pool: Pool<Manager>,
    /// The search index's cleaner, stopped with the store.
    search_cleaner: tokio::task::AbortHandle,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.search_cleaner.abort();
    }
}

impl PostgresStore {
    /// Builds a pool of at most `pool_size` connections for `url`
    /// (`postgres://user:pass@host:port/db?…`). Connections are made on
    /// demand, so this succeeds even while the database is down.
    pub async fn connect(url: &str, pool_size: u32) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::InvalidUrl(e.to_string()))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECTION_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("stompline");
        }
        let manager = PostgresConnectionManager::new(config, NoTls);
        let pool = Pool::builder()
            .max_size(pool_size.max(1))
            .connection_timeout(CONNECTION_TIMEOUT)
            .build_unchecked(manager);
        let search_cleaner = tokio::spawn(clean_search_index(pool.clone())).abort_handle();
        Ok(Self {
            pool,
            search_cleaner,
        })
    }

    async fn conn(&self) -> Result<PooledConnection<'_, Manager>, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            RunError::User(e) => StoreError::Unavailable(e.to_string()),
            RunError::TimedOut => {
                StoreError::Unavailable("timed out waiting for a database connection".into())
            }
        })
    }
}

/// Merges the full-text index's pending list into the index every
/// [`SEARCH_CLEAN_EVERY`].
///
/// A GIN index with `fastupdate` (the default) takes new entries into an
/// unsorted pending list, which searches read too, and the insert that
/// finds the list over `gin_pending_list_limit` (4 MB) merges all of it
/// inside its own statement. For the persister that was a transaction of a
/// few milliseconds taking a few hundred once every few thousand messages:
/// the tail of SEND→RECEIPT latency. Merged from here, in small steps, the
/// list never reaches the limit; a merge already running makes an insert's
/// own attempt a no-op. Instances doing this at once take turns the same
/// way.
async fn clean_search_index(pool: Pool<Manager>) {
    let mut tick = tokio::time::interval(SEARCH_CLEAN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let Ok(conn) = pool.get().await else {
            continue;
        };
        // Nothing to do before the migrations have created the index.
        let cleaned = conn
            .execute(
                "SELECT gin_clean_pending_list(i) \
                 FROM (SELECT to_regclass('messages_search_idx') AS i) s WHERE i IS NOT NULL",
                &[],
            )
            .await;
        match cleaned {
            Ok(_) => failing = false,
            Err(e) if !failing => {
                // E.g. a role that does not own the index: inserts merge
                // the list themselves, as without this task.
                tracing::warn!(error = %e, "merging the search index's pending list failed");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

fn map_err(e: tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        let constraint = e
            .as_db_error()
            .and_then(|db| db.constraint())
            .unwrap_or("unknown");
        return StoreError::Conflict {
            field: conflict_field(constraint),
        };
    }
    if e.is_closed() {
        return StoreError::Unavailable(e.to_string());
    }
    match e.as_db_error() {
        // Show the server's message and detail, not just "db error".
        Some(db) => StoreError::Backend(format!("{}: {}", db.code().code(), db.message())),
        None => StoreError::Backend(e.to_string()),
    }
}

const USER_COLUMNS: &str = "id, username, display_name, email, phone, password_hash, created_at";

fn user_from_row(row: &Row) -> Result<User, StoreError> {
    Ok(User {
        id: row.try_get(0).map_err(map_err)?,
        username: row.try_get(1).map_err(map_err)?,
        display_name: row.try_get(2).map_err(map_err)?,
        email: row.try_get(3).map_err(map_err)?,
        phone: row.try_get(4).map_err(map_err)?,
        password_hash: row.try_get(5).map_err(map_err)?,
        created_at: row.try_get(6).map_err(map_err)?,
    })
}

fn session_from_row(row: &Row) -> Result<Session, StoreError> {
    Ok(Session {
        id: row.try_get(0).map_err(map_err)?,
        user_id: row.try_get(1).map_err(map_err)?,
        created_at: row.try_get(2).map_err(map_err)?,
        revoked_at: row.try_get(3).map_err(map_err)?,
    })
}

fn refresh_token_from_row(row: &Row) -> Result<RefreshToken, StoreError> {
    Ok(RefreshToken {
        token_hash: row.try_get(0).map_err(map_err)?,
        family_id: row.try_get(1).map_err(map_err)?,
        session_id: row.try_get(2).map_err(map_err)?,
        user_id: row.try_get(3).map_err(map_err)?,
        expires_at: row.try_get(4).map_err(map_err)?,
        spent_at: row.try_get(5).map_err(map_err)?,
        revoked_at: row.try_get(6).map_err(map_err)?,
        created_at: row.try_get(7).map_err(map_err)?,
    })
}

fn otp_from_row(row: &Row) -> Result<OtpCode, StoreError> {
    let attempts: i32 = row.try_get(3).map_err(map_err)?;
    Ok(OtpCode {
        key: row.try_get(0).map_err(map_err)?,
        code_hash: row.try_get(1).map_err(map_err)?,
        target: row.try_get(2).map_err(map_err)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        created_at: row.try_get(4).map_err(map_err)?,
        expires_at: row.try_get(5).map_err(map_err)?,
    })
}

impl PostgresStore {
    async fn user_where(&self, column: &str, key: &str) -> Result<Option<User>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE {column} = $1");
        conn.query_opt(&sql, &[&key])
            .await
            .map_err(map_err)?
            .as_ref()
            .map(user_from_row)
            .transpose()
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        // Instances starting together would otherwise race to create the
        // history table and apply the same migration twice.
        conn.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await
            .map_err(map_err)?;
        let result = embedded::migrations::runner()
            .run_async(&mut *conn)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Migration(e.to_string()));
        let unlock = conn
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
            .await
            .map_err(map_err);
        result?;
        unlock.map(|_| ())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.simple_query("SELECT 1").await.map_err(map_err)?;
        Ok(())
    }

    async fn create_user(&self, user: NewUser) -> Result<User, StoreError> {
        let user = super::truncated(user);
        let conn = self.conn().await?;
        let username_lower = fold(&user.username);
        let email_lower = user.email.as_deref().map(fold);
        conn.execute(
            "INSERT INTO users (id, username, username_lower, display_name, \
             display_name_lower, email, email_lower, phone, password_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &user.id,
                &user.username,
                &username_lower,
                &user.display_name,
                &fold(&user.display_name),
                &user.email,
                &email_lower,
                &user.phone,
                &user.password_hash,
                &user.created_at,
            ],
        )
        .await
        .map_err(map_err)?;
        Ok(User {
            id: user.id,
            username: user.username,
            display_name: user.display_name,
            email: user.email,
            phone: user.phone,
            password_hash: user.password_hash,
            created_at: user.created_at,
        })
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.user_where("id", id).await
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<User>, StoreError> {
        self.user_where("username_lower", &fold(username)).await
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.user_where("email_lower", &fold(email)).await
    }

    async fn user_by_phone(&self, phone: &str) -> Result<Option<User>, StoreError> {
        self.user_where("phone", phone).await
    }

    async fn update_user(
        &self,
        id: &str,
        changes: UserChanges,
    ) -> Result<Option<User>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(map_err)?;
        if let Some(name) = &changes.display_name {
            tx.execute(
                "UPDATE users SET display_name = $2, display_name_lower = $3 WHERE id = $1",
                &[&id, name, &fold(name)],
            )
            .await
            .map_err(map_err)?;
        }
        if let Some(email) = &changes.email {
            tx.execute(
                "UPDATE users SET email = $2, email_lower = $3 WHERE id = $1",
                &[&id, email, &fold(email)],
            )
            .await
            .map_err(map_err)?;
        }
        if let Some(hash) = &changes.password_hash {
            tx.execute(
                "UPDATE users SET password_hash = $2 WHERE id = $1",
                &[&id, hash],
            )
            .await
            .map_err(map_err)?;
        }
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        let user = tx
            .query_opt(&sql, &[&id])
            .await
            .map_err(map_err)?
            .as_ref()
            .map(user_from_row)
            .transpose()?;
        tx.commit().await.map_err(map_err)?;
        Ok(user)
    }

    async fn revoke_other_sessions(
        &self,
        user_id: &str,
        keep: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<Vec<String>, StoreError> {
        let keep = keep.unwrap_or_default();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(map_err)?;
        let rows = tx
            .query(
                "UPDATE sessions SET revoked_at = $3 \
                 WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL RETURNING id",
                &[&user_id, &keep, &at],
            )
            .await
            .map_err(map_err)?;
        tx.execute(
            "UPDATE refresh_tokens SET revoked_at = $3 \
             WHERE user_id = $1 AND session_id <> $2 AND revoked_at IS NULL",
            &[&user_id, &keep, &at],
        )
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        rows.iter()
            .map(|row| row.try_get::<_, String>(0).map_err(map_err))
            .collect()
    }

    async fn put_otp(&self, code: OtpCode) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        let attempts = i32::try_from(code.attempts).unwrap_or(i32::MAX);
        conn.execute(
            "INSERT INTO otp_codes (key, code_hash, target, attempts, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (key) DO UPDATE SET code_hash = excluded.code_hash, \
             target = excluded.target, attempts = excluded.attempts, \
             created_at = excluded.created_at, expires_at = excluded.expires_at",
            &[
                &code.key,
                &code.code_hash,
                &code.target,
                &attempts,
                &code.created_at,
                &code.expires_at,
            ],
        )
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn otp(&self, key: &str) -> Result<Option<OtpCode>, StoreError> {
        let conn = self.conn().await?;
        conn.query_opt(
            "SELECT key, code_hash, target, attempts, created_at, expires_at \
             FROM otp_codes WHERE key = $1",
            &[&key],
        )
        .await
        .map_err(map_err)?
        .as_ref()
        .map(otp_from_row)
        .transpose()
    }

    async fn count_otp_attempt(&self, key: &str) -> Result<Option<u32>, StoreError> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt(
                "UPDATE otp_codes SET attempts = attempts + 1 WHERE key = $1 RETURNING attempts",
                &[&key],
            )
            .await
            .map_err(map_err)?;
        row.map(|row| {
            row.try_get::<_, i32>(0)
                .map(|n| u32::try_from(n).unwrap_or(0))
                .map_err(map_err)
        })
        .transpose()
    }

    async fn consume_otp(&self, key: &str, code_hash: &str) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let n = conn
            .execute(
                "DELETE FROM otp_codes WHERE key = $1 AND code_hash = $2",
                &[&key, &code_hash],
            )
            .await
            .map_err(map_err)?;
        Ok(n == 1)
    }

    async fn delete_expired_otps(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let conn = self.conn().await?;
        conn.execute("DELETE FROM otp_codes WHERE expires_at < $1", &[&before])
            .await
            .map_err(map_err)
    }

    async fn create_session(&self, session: Session) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.execute(
            "INSERT INTO sessions (id, user_id, created_at, revoked_at) VALUES ($1, $2, $3, $4)",
            &[
                &session.id,
                &session.user_id,
                &session.created_at,
                &session.revoked_at,
            ],
        )
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn session_by_id(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let conn = self.conn().await?;
        conn.query_opt(
            "SELECT id, user_id, created_at, revoked_at FROM sessions WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(map_err)?
        .as_ref()
        .map(session_from_row)
        .transpose()
    }

    async fn revoke_session(
        &self,
        session_id: &str,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(map_err)?;
        let changed = tx
            .execute(
                "UPDATE sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&session_id, &at],
            )
            .await
            .map_err(map_err)?;
        tx.execute(
            "UPDATE refresh_tokens SET revoked_at = $2 \
             WHERE session_id = $1 AND revoked_at IS NULL",
            &[&session_id, &at],
        )
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(changed > 0)
    }

    async fn insert_refresh_token(&self, token: NewRefreshToken) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.execute(
            "INSERT INTO refresh_tokens (token_hash, family_id, session_id, user_id, \
             expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &token.token_hash,
                &token.family_id,
                &token.session_id,
                &token.user_id,
                &token.expires_at,
                &token.created_at,
            ],
        )
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn refresh_token_by_hash(&self, hash: &str) -> Result<Option<RefreshToken>, StoreError> {
        let conn = self.conn().await?;
        conn.query_opt(
            "SELECT token_hash, family_id, session_id, user_id, expires_at, spent_at, \
             revoked_at, created_at FROM refresh_tokens WHERE token_hash = $1",
            &[&hash],
        )
        .await
        .map_err(map_err)?
        .as_ref()
        .map(refresh_token_from_row)
        .transpose()
    }

    async fn mark_refresh_token_spent(
        &self,
        hash: &str,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let n = conn
            .execute(
                "UPDATE refresh_tokens SET spent_at = $2 \
                 WHERE token_hash = $1 AND spent_at IS NULL AND revoked_at IS NULL",
                &[&hash, &at],
            )
            .await
            .map_err(map_err)?;
        Ok(n == 1)
    }

    async fn revoke_refresh_family(
        &self,
        family_id: &str,
        at: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let conn = self.conn().await?;
        conn.execute(
            "UPDATE refresh_tokens SET revoked_at = $2 \
             WHERE family_id = $1 AND revoked_at IS NULL",
            &[&family_id, &at],
        )
        .await
        .map_err(map_err)
    }
}
