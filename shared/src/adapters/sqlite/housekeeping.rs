//! Housekeeping off the request path: WAL checkpoints.
//!
//! SQLite's default checkpoints run inside the commit that crosses 1,000 WAL pages, so one
//! request in so many pays for copying the log into the database (the 20 ms p99 at one
//! connection). The writer connection has automatic checkpoints turned off; this thread, on a
//! connection of its own, runs a PASSIVE checkpoint (it never waits for readers or the writer)
//! every [`INTERVAL`], and stops when the store is dropped.
//!
//! Under a steady stream of commits a background checkpoint never quite catches up with the
//! writer, and the log only starts over from its beginning once every frame is copied: left
//! alone it grows without end (700 MB after a minute of hits), and appending to a growing file
//! costs more than rewriting one. When the log passes [`CATCH_UP_FRAMES`], this thread asks
//! the writer to finish the copy between two batches ([`CatchUp`]): little is left to copy by
//! then, and the next commit starts the log over.

use super::db_err;
use crate::ports::StoreError;
use rusqlite::Connection;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

const INTERVAL: Duration = Duration::from_millis(200);

/// WAL frames (pages) past which the writer is asked to catch up: about 16 MB.
const CATCH_UP_FRAMES: i64 = 4096;

/// Set by housekeeping when the log is long; the writer checkpoints between batches and clears
/// it.
#[derive(Default)]
pub(super) struct CatchUp(AtomicBool);

impl CatchUp {
    /// Runs a checkpoint on the writer's connection if one was asked for.
    pub(super) fn run_if_asked(&self, conn: &Connection) {
        if self.0.swap(false, Ordering::AcqRel) {
            checkpoint(conn);
        }
    }
}

/// Dropping it stops the thread.
pub(super) struct Housekeeping {
    _stop: mpsc::Sender<()>,
}

impl Housekeeping {
    pub(super) fn start(path: &Path, catch_up: Arc<CatchUp>) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(db_err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
        // Checkpoints copy pages from the log to the file; they need no cache of their own.
        conn.execute_batch("PRAGMA cache_size = -64;")
            .map_err(db_err)?;
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("sqlite-housekeeping".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                    if checkpoint(&conn) > CATCH_UP_FRAMES {
                        catch_up.0.store(true, Ordering::Release);
                    }
                }
                // A last full checkpoint leaves a small WAL behind a clean stop.
                checkpoint(&conn);
            })
            .map_err(db_err)?;
        Ok(Self { _stop: stop })
    }
}

/// A PASSIVE checkpoint; returns the frames in the log.
fn checkpoint(conn: &Connection) -> i64 {
    let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    });
    match done {
        Ok((log, copied)) => {
            tracing::trace!(log_frames = log, copied_frames = copied, "checkpoint");
            log
        }
        Err(e) => {
            tracing::warn!(error = %e, "checkpoint failed");
            0
        }
    }
}
