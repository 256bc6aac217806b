//! The embedded store on SQLite: the records of the data model in one durable file, every credit
//! movement in one transaction with its ledger line.

use crate::ports::StoreError;
use chrono::{DateTime, SecondsFormat, Utc};
use housekeeping::{CatchUp, Housekeeping};
use memo::Memo;
use readers::ReadPool;
use rusqlite::Connection;
use schema::{SCHEMA, SCHEMA_VERSION};
use std::path::Path;
use std::sync::Arc;
use writer::Writer;

mod accounts;
mod credits;
mod entries;
mod housekeeping;
mod idempotency;
mod jobs;
mod lookup;
mod memo;
mod queue;
mod readers;
mod schema;
mod tx;
mod usage;
mod writer;

pub use queue::ReceivedMessage;
pub use writer::GroupCommitStats;

/// The SQLite store. Cheap to clone; all clones share one writer thread (group commit), one
/// pool of read connections and one memo of what the hit path reads.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Writer,
    readers: Arc<ReadPool>,
    memo: Arc<Memo>,
    _housekeeping: Housekeeping,
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_iso(s: &str) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
        })
}

fn from_epoch(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(db_err)?;
        // WAL: readers never wait for the writer, and `mediactl` admin commands can write while
        // `serve` runs. NORMAL sync in WAL mode: a commit is in the log before it is answered,
        // so a killed process loses nothing it acknowledged; a power loss may lose the last
        // commits. Checkpoints run on their own thread (`housekeeping`), never in a commit.
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
             PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = 67108864;",
        )
        .map_err(db_err)?;
        migrate(&conn)?;
        let catch_up = Arc::new(CatchUp::default());
        Ok(Self {
            inner: Arc::new(Inner {
                writer: Writer::start(conn, Arc::clone(&catch_up))?,
                readers: Arc::new(ReadPool::new(path.to_owned())),
                memo: Arc::new(Memo::default()),
                _housekeeping: Housekeeping::start(path, catch_up)?,
            }),
        })
    }

    /// How the writer has grouped writes into commits so far.
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.inner.writer.stats()
    }

    /// Runs `f` in a transaction (shared with concurrent writes, each in its own savepoint);
    /// its changes are kept when it returns Ok and undone when it returns an error. Answers once
    /// committed.
    async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, E> + Send + 'static,
    {
        self.inner.writer.write(f, |_| {}).await
    }

    /// [`SqliteStore::write`] of a change to the cache entry `pk`: the memo forgets it once
    /// the transaction is over.
    async fn write_entry<T, E, F>(&self, pk: String, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, E> + Send + 'static,
    {
        let memo = Arc::clone(&self.inner.memo);
        self.inner
            .writer
            .write(f, move |_| memo.forget_entry(&pk))
            .await
    }

    /// Runs `f` on a read connection: it sees the last commit.
    async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, E> + Send + 'static,
    {
        self.inner.readers.read(f).await
    }
}

/// Brings a file of an older schema version up to this one.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db_err)?;
    if version == 1 {
        conn.execute_batch(
            "ALTER TABLE cache_entries ADD COLUMN job_id TEXT;
             ALTER TABLE cache_entries ADD COLUMN lease_until INTEGER;",
        )
        .map_err(db_err)?;
    }
    conn.execute_batch(SCHEMA).map_err(db_err)?;
    conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))
        .map_err(db_err)
}
