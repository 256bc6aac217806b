//! Group commit: one thread owns the write connection and commits the writes of concurrent
//! requests together.
//!
//! A write is a closure. The writer takes every write waiting when it wakes (up to
//! [`MAX_BATCH`]), opens one IMMEDIATE transaction, runs each write inside its own savepoint
//! (a write that fails is rolled back alone: one user's 402 never fails the others' charges),
//! commits once, and only then answers each caller. An answer therefore always means committed:
//! a process killed at any point loses only writes that nobody was told had happened.

use super::db_err;
use super::housekeeping::CatchUp;
use crate::ports::StoreError;
use rusqlite::Connection;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use tokio::sync::oneshot;

/// The most writes committed in one transaction: bounds how long the first of them waits.
const MAX_BATCH: usize = 256;

/// What the writer does with one write once the batch is over: answer its caller with its own
/// result, or with the commit's error.
type Answer = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// One write: runs on the connection inside its savepoint, says whether it succeeded (its
/// savepoint is kept) and how to answer.
type Work = Box<dyn FnOnce(&Connection) -> (bool, Answer) + Send>;

/// How many writes and commits the writer has made (how well writes are grouped).
#[derive(Debug, Default)]
pub(super) struct WriterStats {
    writes: AtomicU64,
    commits: AtomicU64,
}

/// Writes and commits so far, for tests and the bench report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Writes run (each in its own savepoint).
    pub writes: u64,
    /// Transactions committed.
    pub commits: u64,
}

/// The handle to the writer thread. The thread ends when the last handle is dropped, after the
/// writes already sent.
pub(super) struct Writer {
    work: mpsc::Sender<Work>,
    stats: Arc<WriterStats>,
}

impl Writer {
    /// Starts the thread that owns `conn`.
    pub(super) fn start(conn: Connection, catch_up: Arc<CatchUp>) -> Result<Self, StoreError> {
        let (work, queue) = mpsc::channel::<Work>();
        let stats = Arc::new(WriterStats::default());
        let counted = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, queue, &counted, &catch_up))
            .map_err(db_err)?;
        Ok(Self { work, stats })
    }

    /// Runs `f` in a transaction shared with the writes sent at the same time; its changes are
    /// kept when it returns Ok and rolled back when it returns an error. Answers once committed.
    /// `settled` runs on the writer thread once the transaction is over, before the answer (so
    /// it runs even when the caller has gone away); it is told whether `f`'s changes were
    /// committed.
    pub(super) async fn write<T, E, F, S>(&self, f: F, settled: S) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        S: FnOnce(bool) + Send + 'static,
    {
        let (answer, answered) = oneshot::channel::<Result<T, E>>();
        let work: Work = Box::new(move |conn| {
            let result = f(conn);
            let ok = result.is_ok();
            let reply: Answer = Box::new(move |commit_error| {
                settled(ok && commit_error.is_none());
                let result = match commit_error {
                    Some(e) if ok => Err(E::from(e.clone())),
                    _ => result,
                };
                let _ = answer.send(result);
            });
            (ok, reply)
        });
        self.work
            .send(work)
            .map_err(|_| E::from(StoreError("the store's writer has stopped".into())))?;
        answered.await.unwrap_or_else(|_| {
            Err(E::from(StoreError(
                "the store's writer dropped a write".into(),
            )))
        })
    }

    pub(super) fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            writes: self.stats.writes.load(Ordering::Relaxed),
            commits: self.stats.commits.load(Ordering::Relaxed),
        }
    }
}

fn run(conn: Connection, queue: mpsc::Receiver<Work>, stats: &WriterStats, catch_up: &CatchUp) {
    while let Ok(first) = queue.recv() {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(work) => batch.push(work),
                Err(_) => break,
            }
        }
        commit_batch(&conn, batch, stats);
        catch_up.run_if_asked(&conn);
    }
}

fn commit_batch(conn: &Connection, batch: Vec<Work>, stats: &WriterStats) {
    if !conn.is_autocommit() {
        // A failed ROLLBACK of the last batch left a transaction open: end it before beginning.
        let _ = conn.execute_batch("ROLLBACK");
    }
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        let e = db_err(e);
        for work in batch {
            // Not run: answered with the error through a write that does nothing.
            fail(work, &e);
        }
        return;
    }
    let mut answers = Vec::with_capacity(batch.len());
    for work in batch {
        if let Err(e) = exec(conn, "SAVEPOINT write") {
            fail(work, &db_err(e));
            continue;
        }
        // In builds that unwind (tests), a panicking write is rolled back and answered with an
        // error (its reply is dropped) and the writer goes on; release builds abort on panic, and
        // nothing of the batch was answered yet.
        let ran = catch_unwind(AssertUnwindSafe(|| work(conn)));
        // SQLite ends the whole transaction itself on some errors (I/O, full disk); statements
        // after that would each commit alone. Such a batch must not go on.
        let lost = conn.is_autocommit();
        let kept = matches!(ran, Ok((true, _))) && !lost;
        let undone = if lost {
            Err(StoreError("SQLite ended the write transaction".into()))
        } else if kept {
            exec(conn, "RELEASE write").map_err(db_err)
        } else {
            exec(conn, "ROLLBACK TO write")
                .and_then(|()| exec(conn, "RELEASE write"))
                .map_err(db_err)
        };
        match (ran, undone) {
            (Ok((_, answer)), Ok(())) => answers.push(answer),
            (Err(_), Ok(())) => {}
            (ran, Err(e)) => {
                // The savepoint is in an unknown state: nothing of this batch may commit.
                tracing::error!(error = %e, "store write batch abandoned");
                let _ = conn.execute_batch("ROLLBACK");
                if let Ok((_, answer)) = ran {
                    answer(Some(&e));
                }
                for answer in answers {
                    answer(Some(&e));
                }
                return;
            }
        }
    }
    stats
        .writes
        .fetch_add(answers.len() as u64, Ordering::Relaxed);
    let committed = exec(conn, "COMMIT").map_err(db_err);
    if committed.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    } else {
        stats.commits.fetch_add(1, Ordering::Relaxed);
    }
    let error = committed.err();
    for answer in answers {
        answer(error.as_ref());
    }
}

/// Runs a transaction control statement, prepared once per connection.
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Answers `work`'s caller with `error` without running what it asks: the work is run on no
/// connection, so it is dropped and its caller sees the writer's error.
fn fail(work: Work, error: &StoreError) {
    tracing::error!(error = %error, "store write not started");
    drop(work);
}
