//! SQLite backend (the embedded default).
//!
//! SQLite allows one writer at a time, so writes go through a single
//! connection while reads use a small pool of read-only connections; in WAL
//! mode readers see the last committed state and never wait for the writer.
//! Every call runs on tokio's blocking pool. Timestamps are stored as INTEGER
//! microseconds since the Unix epoch (UTC).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use time::OffsetDateTime;
use tokio::sync::Semaphore;

use super::{
    conflict_field, fold, NewRefreshToken, NewUser, OtpCode, RefreshToken, Session, Store,
    StoreError, User, UserChanges,
};

mod chat;
mod search_index;

mod embedded {
    refinery::embed_migrations!("migrations/sqlite");
}

/// How long a statement waits for a lock held by another connection or
/// process before giving up with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`Store`] on a SQLite file.
pub struct SqliteStore {
    writer: Arc<ConnPool>,
    readers: Arc<ConnPool>,
    search_index: Arc<search_index::SearchIndex>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file with one writer and
    /// `readers` read-only connections.
    pub async fn open(path: &Path, readers: u32) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let readers = readers.clamp(1, 64) as usize;
        // The writer opens first: it creates the file and switches it to WAL,
        // which read-only connections cannot do.
        let writer = Arc::new(ConnPool::new(path.clone(), Role::Writer, 1).await?);
        let readers = ConnPool::new(path.clone(), Role::Reader, readers).await?;
        spawn_checkpointer(path, Arc::downgrade(&writer));
        Ok(Self {
            writer,
            readers: Arc::new(readers),
            search_index: Arc::default(),
        })
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
        T: Send + 'static,
    {
        self.readers.clone().run(f).await
    }

    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
        T: Send + 'static,
    {
        self.writer.clone().run(f).await
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Writer,
    Reader,
}

/// A fixed set of connections handed out one per call.
struct ConnPool {
    path: PathBuf,
    role: Role,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl ConnPool {
    async fn new(path: PathBuf, role: Role, size: usize) -> Result<Self, StoreError> {
        let open_path = path.clone();
        let conns = tokio::task::spawn_blocking(move || {
            (0..size)
                .map(|_| open_connection(&open_path, role))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| StoreError::Backend(format!("opening sqlite: {e}")))?
        .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        Ok(Self {
            path,
            role,
            idle: Mutex::new(conns),
            permits: Arc::new(Semaphore::new(size)),
        })
    }

    /// Runs `f` on a connection of this pool on the blocking thread pool.
    ///
    /// The permit and the connection travel into the blocking task, so a
    /// caller that stops waiting (a dropped future) never leaks either: the
    /// task finishes and puts the connection back.
    async fn run<T, F>(self: Arc<Self>, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
        T: Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("sqlite pool closed".into()))?;
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let taken = pool.idle.lock().pop();
            let mut conn = match taken {
                Some(conn) => conn,
                // Only after a panic lost a connection: replace it.
                None => open_connection(&pool.path, pool.role).map_err(map_err)?,
            };
            let result = f(&mut conn).map_err(map_err);
            pool.idle.lock().push(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("sqlite task failed: {e}")))?
    }
}

/// How often the checkpointer copies committed WAL frames into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// WAL pages after which a commit itself checkpoints (SQLite's automatic
/// checkpoint), as a backstop: the checkpointer normally keeps the WAL far
/// shorter, so this only copies what it had not reached yet.
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 4000;

/// Checkpoints the WAL from a connection of its own, off the writer's
/// commits: SQLite's automatic checkpoint runs inside the commit that
/// crosses its threshold, and copying (and fsyncing) a thousand pages there
/// held up the persister. `PASSIVE` never blocks the writer or readers. The
/// thread ends once the store is gone.
fn spawn_checkpointer(path: PathBuf, writer: std::sync::Weak<ConnPool>) {
    let spawned = std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            let conn = match Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            )
            .and_then(|c| c.busy_timeout(BUSY_TIMEOUT).map(|()| c))
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "the WAL checkpointer cannot open the database; commits checkpoint instead");
                    return;
                }
            };
            while writer.strong_count() > 0 {
                std::thread::sleep(CHECKPOINT_EVERY);
                if let Err(e) =
                    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                {
                    tracing::debug!(error = %e, "WAL checkpoint failed");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the WAL checkpointer; commits checkpoint instead");
    }
}

fn open_connection(path: &Path, role: Role) -> Result<Connection, rusqlite::Error> {
    let flags = match role {
        Role::Writer => {
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI
        }
        Role::Reader => {
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI
        }
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    if role == Role::Writer {
        // WAL: readers never block the writer or each other. FULL keeps a
        // commit durable across power loss, which message receipts promise.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)?;
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

fn map_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ffi::{SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE};
    match &e {
        rusqlite::Error::SqliteFailure(code, msg)
            if code.extended_code == SQLITE_CONSTRAINT_UNIQUE
                || code.extended_code == SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            // "UNIQUE constraint failed: users.username_lower"
            let column = msg
                .as_deref()
                .and_then(|m| m.rsplit(": ").next())
                .unwrap_or("unknown");
            StoreError::Conflict {
                field: conflict_field(column),
            }
        }
        rusqlite::Error::SqliteFailure(code, _)
            if matches!(
                code.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::CannotOpen
            ) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

fn to_micros(t: OffsetDateTime) -> i64 {
    // i64 microseconds cover ±292,000 years; saturate rather than wrap.
    let micros = t.unix_timestamp_nanos() / 1_000;
    micros.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

fn from_micros(micros: i64) -> Result<OffsetDateTime, rusqlite::Error> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Integer, Box::new(e))
    })
}

fn opt_from_micros(micros: Option<i64>) -> Result<Option<OffsetDateTime>, rusqlite::Error> {
    micros.map(from_micros).transpose()
}

const USER_COLUMNS: &str = "id, username, display_name, email, phone, password_hash, created_at";

fn user_from_row(row: &Row<'_>) -> Result<User, rusqlite::Error> {
    Ok(User {
        id: row.get(0)?,
        username: row.get(1)?,
        display_name: row.get(2)?,
        email: row.get(3)?,
        phone: row.get(4)?,
        password_hash: row.get(5)?,
        created_at: from_micros(row.get(6)?)?,
    })
}

fn session_from_row(row: &Row<'_>) -> Result<Session, rusqlite::Error> {
    Ok(Session {
        id: row.get(0)?,
        user_id: row.get(1)?,
        created_at: from_micros(row.get(2)?)?,
        revoked_at: opt_from_micros(row.get(3)?)?,
    })
}

fn refresh_token_from_row(row: &Row<'_>) -> Result<RefreshToken, rusqlite::Error> {
    Ok(RefreshToken {
        token_hash: row.get(0)?,
        family_id: row.get(1)?,
        session_id: row.get(2)?,
        user_id: row.get(3)?,
        expires_at: from_micros(row.get(4)?)?,
        spent_at: opt_from_micros(row.get(5)?)?,
        revoked_at: opt_from_micros(row.get(6)?)?,
        created_at: from_micros(row.get(7)?)?,
    })
}

fn otp_from_row(row: &Row<'_>) -> Result<OtpCode, rusqlite::Error> {
    Ok(OtpCode {
        key: row.get(0)?,
        code_hash: row.get(1)?,
        target: row.get(2)?,
        attempts: row.get(3)?,
        created_at: from_micros(row.get(4)?)?,
        expires_at: from_micros(row.get(5)?)?,
    })
}

fn user_where(
    column: &'static str,
    key: String,
) -> impl FnOnce(&mut Connection) -> Result<Option<User>, rusqlite::Error> {
    move |conn| {
        conn.prepare_cached(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE {column} = ?1"
        ))?
        .query_row([key], user_from_row)
        .optional()
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.writer
            .clone()
            .run(|conn| Ok(embedded::migrations::runner().run(conn)))
            .await?
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        // Rows a crash left queued for the full-text index.
        self.search_index.queued(&self.writer);
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())))
            .await
    }

    async fn create_user(&self, user: NewUser) -> Result<User, StoreError> {
        let user = super::truncated(user);
        let created = User {
            id: user.id.clone(),
            username: user.username.clone(),
            display_name: user.display_name.clone(),
            email: user.email.clone(),
            phone: user.phone.clone(),
            password_hash: user.password_hash.clone(),
            created_at: user.created_at,
        };
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO users (id, username, username_lower, display_name, \
                 display_name_lower, email, email_lower, phone, password_hash, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                user.id,
                user.username,
                fold(&user.username),
                user.display_name,
                fold(&user.display_name),
                user.email,
                user.email.as_deref().map(fold),
                user.phone,
                user.password_hash,
                to_micros(user.created_at),
            ])
            .map(|_| ())
        })
        .await?;
        Ok(created)
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.read(user_where("id", id.to_string())).await
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<User>, StoreError> {
        self.read(user_where("username_lower", fold(username)))
            .await
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.read(user_where("email_lower", fold(email))).await
    }

    async fn user_by_phone(&self, phone: &str) -> Result<Option<User>, StoreError> {
        self.read(user_where("phone", phone.to_string())).await
    }

    async fn update_user(
        &self,
        id: &str,
        changes: UserChanges,
    ) -> Result<Option<User>, StoreError> {
        let id = id.to_string();
        self.write(move |conn| {
            let tx = conn.transaction()?;
            if let Some(name) = &changes.display_name {
                tx.execute(
                    "UPDATE users SET display_name = ?2, display_name_lower = ?3 WHERE id = ?1",
                    params![id, name, fold(name)],
                )?;
            }
            if let Some(email) = &changes.email {
                tx.execute(
                    "UPDATE users SET email = ?2, email_lower = ?3 WHERE id = ?1",
                    params![id, email, fold(email)],
                )?;
            }
            if let Some(hash) = &changes.password_hash {
                tx.execute(
                    "UPDATE users SET password_hash = ?2 WHERE id = ?1",
                    params![id, hash],
                )?;
            }
            let user = tx
                .prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))?
                .query_row([&id], user_from_row)
                .optional()?;
            tx.commit()?;
            Ok(user)
        })
        .await
    }

    async fn revoke_other_sessions(
        &self,
        user_id: &str,
        keep: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<Vec<String>, StoreError> {
        let user_id = user_id.to_string();
        let keep = keep.unwrap_or_default().to_string();
        let at = to_micros(at);
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let ids = tx
                .prepare(
                    "UPDATE sessions SET revoked_at = ?3 \
                     WHERE user_id = ?1 AND id <> ?2 AND revoked_at IS NULL RETURNING id",
                )?
                .query_map(params![user_id, keep, at], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            tx.execute(
                "UPDATE refresh_tokens SET revoked_at = ?3 \
                 WHERE user_id = ?1 AND session_id <> ?2 AND revoked_at IS NULL",
                params![user_id, keep, at],
            )?;
            tx.commit()?;
            Ok(ids)
        })
        .await
    }

    async fn put_otp(&self, code: OtpCode) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO otp_codes (key, code_hash, target, attempts, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (key) DO UPDATE SET code_hash = excluded.code_hash, \
                 target = excluded.target, attempts = excluded.attempts, \
                 created_at = excluded.created_at, expires_at = excluded.expires_at",
            )?
            .execute(params![
                code.key,
                code.code_hash,
                code.target,
                code.attempts,
                to_micros(code.created_at),
                to_micros(code.expires_at),
            ])
            .map(|_| ())
        })
        .await
    }

    async fn otp(&self, key: &str) -> Result<Option<OtpCode>, StoreError> {
        let key = key.to_string();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT key, code_hash, target, attempts, created_at, expires_at \
                 FROM otp_codes WHERE key = ?1",
            )?
            .query_row([key], otp_from_row)
            .optional()
        })
        .await
    }

    async fn count_otp_attempt(&self, key: &str) -> Result<Option<u32>, StoreError> {
        let key = key.to_string();
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE otp_codes SET attempts = attempts + 1 WHERE key = ?1 RETURNING attempts",
            )?
            .query_row([key], |row| row.get(0))
            .optional()
        })
        .await
    }

    async fn consume_otp(&self, key: &str, code_hash: &str) -> Result<bool, StoreError> {
        let (key, code_hash) = (key.to_string(), code_hash.to_string());
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM otp_codes WHERE key = ?1 AND code_hash = ?2")?
                .execute(params![key, code_hash])
                .map(|n| n == 1)
        })
        .await
    }

    async fn delete_expired_otps(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let before = to_micros(before);
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM otp_codes WHERE expires_at < ?1")?
                .execute([before])
                .map(|n| n as u64)
        })
        .await
    }

    async fn create_session(&self, session: Session) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO sessions (id, user_id, created_at, revoked_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                session.id,
                session.user_id,
                to_micros(session.created_at),
                session.revoked_at.map(to_micros),
            ])
            .map(|_| ())
        })
        .await
    }

    async fn session_by_id(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, user_id, created_at, revoked_at FROM sessions WHERE id = ?1",
            )?
            .query_row([id], session_from_row)
            .optional()
        })
        .await
    }

    async fn revoke_session(
        &self,
        session_id: &str,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let session_id = session_id.to_string();
        let at = to_micros(at);
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let changed = tx.execute(
                "UPDATE sessions SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![session_id, at],
            )?;
            tx.execute(
                "UPDATE refresh_tokens SET revoked_at = ?2 \
                 WHERE session_id = ?1 AND revoked_at IS NULL",
                params![session_id, at],
            )?;
            tx.commit()?;
            Ok(changed > 0)
        })
        .await
    }

    async fn insert_refresh_token(&self, token: NewRefreshToken) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO refresh_tokens (token_hash, family_id, session_id, user_id, \
                 expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                token.token_hash,
                token.family_id,
                token.session_id,
                token.user_id,
                to_micros(token.expires_at),
                to_micros(token.created_at),
            ])
            .map(|_| ())
        })
        .await
    }

    async fn refresh_token_by_hash(&self, hash: &str) -> Result<Option<RefreshToken>, StoreError> {
        let hash = hash.to_string();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT token_hash, family_id, session_id, user_id, expires_at, spent_at, \
                 revoked_at, created_at FROM refresh_tokens WHERE token_hash = ?1",
            )?
            .query_row([hash], refresh_token_from_row)
            .optional()
        })
        .await
    }

    async fn mark_refresh_token_spent(
        &self,
        hash: &str,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let hash = hash.to_string();
        let at = to_micros(at);
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE refresh_tokens SET spent_at = ?2 \
                 WHERE token_hash = ?1 AND spent_at IS NULL AND revoked_at IS NULL",
            )?
            .execute(params![hash, at])
            .map(|n| n == 1)
        })
        .await
    }

    async fn revoke_refresh_family(
        &self,
        family_id: &str,
        at: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let family_id = family_id.to_string();
        let at = to_micros(at);
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE refresh_tokens SET revoked_at = ?2 \
                 WHERE family_id = ?1 AND revoked_at IS NULL",
            )?
            .execute(params![family_id, at])
            .map(|n| n as u64)
        })
        .await
    }
}
