//! Read connections. In WAL mode a reader sees the last commit and never waits for the writer,
//! so reads run on connections of their own, as many at once as there are blocking threads
//! asking; idle ones are kept for the next read.

use super::db_err;
use crate::ports::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Idle read connections kept open; more are opened under load and closed when returned.
const KEEP_IDLE: usize = 4;

pub(super) struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    pub(super) fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on a read connection off the async runtime.
    pub(super) async fn read<T, E, F>(self: &Arc<Self>, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let result = f(&conn);
            pool.give_back(conn);
            result
        })
        .await
        .map_err(|e| E::from(db_err(e)))?
    }

    fn take(&self) -> Result<Connection, StoreError> {
        if let Some(conn) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db_err)?;
        // A checkpoint that restarts the WAL can hold readers back for a moment.
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        // The hit path reads from memory; a read connection keeps a small page cache of its own
        // (SQLite's default is 2 MB per connection).
        conn.execute_batch("PRAGMA cache_size = -512;")
            .map_err(db_err)?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < KEEP_IDLE {
            idle.push(conn);
        }
    }
}
