//! Runs one storage check on both backends: SQLite in a temporary file and
//! a fresh PostgreSQL database (see `pg.rs`), each migrated first.
//! Included by the storage suites with `#[path]`.

use std::future::Future;
use std::sync::Arc;

use stompline::store::{self, Store};

use super::pg::PgDatabase;

/// Runs `check` against a migrated SQLite store in a temporary directory.
pub async fn on_sqlite<F, Fut>(check: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store::open("", dir.path(), 4).await.expect("open sqlite");
    store.migrate().await.expect("migrate sqlite");
    check(store).await;
}

/// Runs `check` against a migrated PostgreSQL store on a database of its own,
/// dropped afterwards (also when `check` panics).
pub async fn on_postgres<F, Fut>(check: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    on_postgres_with_url(|store, _url| check(store)).await;
}

/// [`on_postgres`], also handing `check` the scratch database's URL (for
/// looking at the database beside the store).
pub async fn on_postgres_with_url<F, Fut>(check: F)
where
    F: FnOnce(Arc<dyn Store>, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let scratch = tempfile::tempdir().expect("tempdir");
    let outcome = async {
        let store = store::open(&db.url, scratch.path(), 8)
            .await
            .expect("open postgres");
        store.migrate().await.expect("migrate postgres");
        // A task of its own so a failed assertion still lets us drop the
        // database below.
        tokio::spawn(check(store, db.url.clone())).await
    }
    .await;
    db.drop_database().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Declares each check as a SQLite test and a `pg_` PostgreSQL test.
#[macro_export]
macro_rules! on_both_backends {
    ($($check:ident => $sqlite:ident, $pg:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            backends::on_sqlite($check).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $pg() {
            backends::on_postgres($check).await;
        }
    )*};
}
