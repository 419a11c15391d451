//! Full-text indexing off the persister's transaction (SQLite).
//!
//! A new message only queues its row number (`messages_fts_queue`, filled by
//! a trigger; migration V4). [`SearchIndex`] moves queued rows into
//! `messages_fts` in transactions of up to [`CHUNK`] rows: in the background,
//! a moment after a commit queued some, and before every search, which so
//! never misses a committed message. FTS5 writes one index segment per
//! transaction and merges segments as they pile up; a segment per persister
//! batch (one per few dozen messages under light load) made that merging
//! most of the persister's time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::Notify;

use super::ConnPool;
use crate::store::StoreError;

/// Most rows indexed in one transaction: bounds how long the writer is held
/// away from the persister.
const CHUNK: i64 = 1000;

/// How long the background pass lets rows gather after a commit queued
/// some, so that busy periods index in few, large transactions.
const GATHER: Duration = Duration::from_millis(100);

/// The indexing state of one store.
#[derive(Default)]
pub(super) struct SearchIndex {
    /// A commit may have queued rows since the last pass started.
    dirty: AtomicBool,
    /// Wakes the background pass.
    kick: Notify,
    /// Held by a pass: a search waits for a running pass to finish.
    pass: tokio::sync::Mutex<()>,
    /// The background task runs.
    started: AtomicBool,
}

impl SearchIndex {
    /// A commit queued rows: index them soon.
    pub(super) fn queued(self: &Arc<Self>, writer: &Arc<ConnPool>) {
        self.dirty.store(true, Ordering::SeqCst);
        if !self.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(background(Arc::downgrade(writer), self.clone()));
        }
        self.kick.notify_one();
    }

    /// Indexes everything queued before returning (for a search).
    pub(super) async fn catch_up(&self, writer: &Arc<ConnPool>) -> Result<(), StoreError> {
        let _pass = self.pass.lock().await;
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        drain(writer).await.inspect_err(|_| {
            self.dirty.store(true, Ordering::SeqCst);
        })
    }
}

async fn background(writer: Weak<ConnPool>, index: Arc<SearchIndex>) {
    loop {
        // Also wakes now and then to notice that the store is gone.
        let _ = tokio::time::timeout(Duration::from_secs(5), index.kick.notified()).await;
        if !index.dirty.load(Ordering::SeqCst) {
            if writer.strong_count() == 0 {
                return;
            }
            continue;
        }
        tokio::time::sleep(GATHER).await;
        let Some(writer) = writer.upgrade() else {
            return;
        };
        if let Err(e) = index.catch_up(&writer).await {
            tracing::warn!(error = %e, "full-text indexing failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            index.kick.notify_one();
        }
    }
}

/// Indexes queued rows, one transaction per [`CHUNK`], until none are left.
async fn drain(writer: &Arc<ConnPool>) -> Result<(), StoreError> {
    loop {
        let moved = writer.clone().run(|conn| index_chunk(conn, CHUNK)).await?;
        if moved < CHUNK as usize {
            return Ok(());
        }
    }
}

/// Moves up to `limit` queued rows (lowest row numbers first) into the
/// index in one transaction; returns how many left the queue.
fn index_chunk(conn: &mut Connection, limit: i64) -> rusqlite::Result<usize> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let last: Option<i64> = tx
        .prepare_cached(
            "SELECT max(n) FROM (SELECT n FROM messages_fts_queue ORDER BY n LIMIT ?1)",
        )?
        .query_row([limit.max(1)], |row| row.get(0))?;
    let Some(last) = last else {
        return Ok(0);
    };
    tx.prepare_cached(
        "INSERT INTO messages_fts (rowid, body) \
         SELECT m.n, m.body FROM messages_fts_queue q JOIN messages m ON m.n = q.n \
         WHERE q.n <= ?1 ORDER BY q.n",
    )?
    .execute([last])?;
    let moved = tx
        .prepare_cached("DELETE FROM messages_fts_queue WHERE n <= ?1")?
        .execute([last])?;
    tx.commit()?;
    Ok(moved)
}
