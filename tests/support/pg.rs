#![allow(dead_code)]

//! A scratch PostgreSQL database per test.
//!
//! The server comes from `STOMPLINE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); the role must be allowed
//! to create databases. When it cannot be reached, [`PgDatabase::create`]
//! prints a notice and returns `None` (the test passes without running),
//! unless `STOMPLINE_REQUIRE_SERVICES=1`, which makes it fail.

use std::time::Duration;

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A freshly created database; [`PgDatabase::drop_database`] removes it.
pub struct PgDatabase {
    /// URL of the scratch database.
    pub url: String,
    name: String,
    admin_url: String,
    admin: tokio_postgres::Client,
}

impl PgDatabase {
    /// Creates `stompline_test_<uuid>`, or `None` when PostgreSQL is
    /// unreachable and not required.
    pub async fn create() -> Option<PgDatabase> {
        let admin_url = std::env::var("STOMPLINE_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_POSTGRES_URL.to_string());
        PgDatabase::create_on(&admin_url).await
    }

    /// Creates `stompline_test_<uuid>` on the server of `admin_url` (a
    /// role allowed to create databases), or `None` as [`Self::create`].
    pub async fn create_on(admin_url: &str) -> Option<PgDatabase> {
        let admin_url = admin_url.to_string();
        let admin = admin_connection(&admin_url).await?;
        let name = format!("stompline_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
        Some(PgDatabase {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
            admin,
        })
    }

    /// Drops the database from a thread of its own, with a fresh admin
    /// connection: usable from `Drop`, where the test's runtime (which
    /// drives the original admin connection) cannot make progress.
    pub fn drop_database_blocking(self) {
        let PgDatabase {
            name, admin_url, ..
        } = self;
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    if let Err(e) = client.batch_execute(&sql).await {
                        eprintln!("note: could not drop test database {name}: {e}");
                    }
                }
            });
        })
        .join();
    }

    /// Drops the database, closing whatever still uses it.
    pub async fn drop_database(self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = self.admin.batch_execute(&sql).await {
            eprintln!("note: could not drop test database {}: {e}", self.name);
        }
    }
}

async fn admin_connection(url: &str) -> Option<tokio_postgres::Client> {
    let connect = tokio_postgres::connect(url, tokio_postgres::NoTls);
    let failure = match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok((client, connection))) => {
            tokio::spawn(async move {
                let _ = connection.await;
            });
            return Some(client);
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_string(),
    };
    if std::env::var("STOMPLINE_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("PostgreSQL at {url} is required (STOMPLINE_REQUIRE_SERVICES=1) but unreachable: {failure}");
    }
    eprintln!(
        "SKIPPED: PostgreSQL at {url} unreachable ({failure}); set STOMPLINE_TEST_POSTGRES_URL"
    );
    None
}

/// `url` with its database name replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    format!("{}/{db}{query}", &base[..path_start])
}
