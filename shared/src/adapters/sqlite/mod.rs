//! The embedded store on SQLite: the records of the data model in one durable file, every credit
//! movement in one transaction with its ledger line.

use crate::ports::StoreError;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, TransactionBehavior};
use schema::{SCHEMA, SCHEMA_VERSION};
use std::path::Path;
use std::sync::{Arc, Mutex};

mod accounts;
mod credits;
mod entries;
mod idempotency;
mod jobs;
mod lookup;
mod queue;
mod schema;
mod tx;

pub use queue::ReceivedMessage;

/// The SQLite store. Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
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
        Self::init(conn)
    }

    /// A private in-memory database, for tests and benchmarks.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory().map_err(db_err)?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        // WAL lets `mediactl` admin commands write while `serve` runs; NORMAL sync in WAL mode
        // never corrupts and loses at most the last commits on power loss, not on a crash.
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .map_err(db_err)?;
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
            .map_err(db_err)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` in one IMMEDIATE transaction off the async runtime; commits when it returns Ok
    /// (an error rolls everything back).
    async fn transact<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, E> + Send + 'static,
    {
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let value = f(&tx)?;
            tx.commit().map_err(db_err)?;
            Ok(value)
        })
        .await
    }

    /// Runs `f` on the connection off the async runtime.
    async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| E::from(db_err(e)))?
    }
}
