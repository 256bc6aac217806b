//! Group commit: one thread owns the write connection and commits the writes of concurrent
//! requests together.
//!
//! A write is a closure. The writer takes every write waiting when it wakes (up to
//! [`MAX_BATCH`]), opens one IMMEDIATE transaction, runs each write inside its own savepoint
//! (a write that fails is rolled back alone: one user's 402 never fails the others' charges),
//! commits once, and only then answers each caller. An answer therefore always means committed:
//! a process killed at any point loses only writes that nobody was told had happened.
//!
//! Charges, the write of every hit, are data rather than closures: consecutive charges of a
//! batch are applied as one run (`tx::charge_run`: each checked in order, one read and one
//! update per user and entry), and one by one, each in its savepoint, if the run fails.

use super::db_err;
use super::housekeeping::CatchUp;
use super::tx::{charge_in, charge_run};
use crate::domain::Charge;
use crate::ports::{ChargeError, StoreError};
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
type Run = Box<dyn FnOnce(&Connection) -> (bool, Answer) + Send>;

/// What the writer is sent.
enum Work {
    Write(Run),
    Charge(PendingCharge),
}

/// A charge and how to answer it once its result is known.
struct PendingCharge {
    charge: Charge,
    reply: Box<dyn FnOnce(Result<u64, ChargeError>) -> Answer + Send>,
}

impl PendingCharge {
    /// The charge as a write of its own.
    fn alone(self) -> Run {
        Box::new(move |conn| {
            let result = charge_in(conn, &self.charge);
            (result.is_ok(), (self.reply)(result))
        })
    }
}

/// How many writes and commits the writer has made (how well writes are grouped).
#[derive(Debug, Default)]
pub(super) struct WriterStats {
    writes: AtomicU64,
    commits: AtomicU64,
}

/// Writes and commits so far, for tests and the bench report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Writes run to their end, kept or refused (one per caller).
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
        let reply = reply(answer, settled);
        let work = Work::Write(Box::new(move |conn| {
            let result = f(conn);
            (result.is_ok(), reply(result))
        }));
        self.send(work, answered).await
    }

    /// Charges `charge` in a transaction shared with the writes sent at the same time (see
    /// `tx::charge_run`); like [`Writer::write`] of `tx::charge_in`.
    pub(super) async fn charge<S>(&self, charge: Charge, settled: S) -> Result<u64, ChargeError>
    where
        S: FnOnce(bool) + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let reply = Box::new(reply(answer, settled));
        self.send(Work::Charge(PendingCharge { charge, reply }), answered)
            .await
    }

    async fn send<T, E>(
        &self,
        work: Work,
        answered: oneshot::Receiver<Result<T, E>>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
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

/// How a write's result becomes its answer: `settled` is told whether it was committed, then the
/// caller gets the result, or the commit's error when the write had succeeded.
fn reply<T, E, S>(
    answer: oneshot::Sender<Result<T, E>>,
    settled: S,
) -> impl FnOnce(Result<T, E>) -> Answer + Send + 'static
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    S: FnOnce(bool) + Send + 'static,
{
    move |result| {
        let ok = result.is_ok();
        Box::new(move |commit_error: Option<&StoreError>| {
            settled(ok && commit_error.is_none());
            let result = match commit_error {
                Some(e) if ok => Err(E::from(e.clone())),
                _ => result,
            };
            let _ = answer.send(result);
        })
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
        // Not run: each caller is answered with an error when its write is dropped.
        tracing::error!(error = %db_err(e), "store writes not started");
        return;
    }
    let mut answers = Vec::with_capacity(batch.len());
    let mut works = batch.into_iter().peekable();
    while let Some(work) = works.next() {
        let ran = match work {
            Work::Write(run) => run_alone(conn, run, &mut answers),
            Work::Charge(first) => {
                let mut charges = vec![first];
                while let Some(Work::Charge(_)) = works.peek() {
                    if let Some(Work::Charge(next)) = works.next() {
                        charges.push(next);
                    }
                }
                run_charges(conn, charges, &mut answers)
            }
        };
        if let Err(e) = ran {
            // A savepoint is in an unknown state: nothing of this batch may commit.
            tracing::error!(error = %e, "store write batch abandoned");
            let _ = conn.execute_batch("ROLLBACK");
            for answer in answers {
                answer(Some(&e));
            }
            return;
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

/// Runs one write in its own savepoint and keeps its answer. An error means the batch must be
/// abandoned (the write's own answer, if any, is among `answers`).
fn run_alone(conn: &Connection, run: Run, answers: &mut Vec<Answer>) -> Result<(), StoreError> {
    if let Err(e) = exec(conn, "SAVEPOINT write") {
        // Not run: its caller is answered with an error when it is dropped.
        let e = db_err(e);
        tracing::error!(error = %e, "store write not started");
        return Ok(());
    }
    // In builds that unwind (tests), a panicking write is rolled back and answered with an
    // error (its reply is dropped) and the writer goes on; release builds abort on panic, and
    // nothing of the batch was answered yet.
    let ran = catch_unwind(AssertUnwindSafe(|| run(conn)));
    let kept = matches!(ran, Ok((true, _)));
    let ended = end_savepoint(conn, "write", kept);
    if let Ok((_, answer)) = ran {
        answers.push(answer);
    }
    ended
}

/// Runs consecutive charges as one run in a savepoint; if the run fails (the store's error, not
/// a charge's refusal), undoes it and runs each charge alone.
fn run_charges(
    conn: &Connection,
    charges: Vec<PendingCharge>,
    answers: &mut Vec<Answer>,
) -> Result<(), StoreError> {
    if charges.len() > 1 && exec(conn, "SAVEPOINT charges").is_ok() {
        let all: Vec<&Charge> = charges.iter().map(|p| &p.charge).collect();
        let ran = catch_unwind(AssertUnwindSafe(|| charge_run(conn, &all)));
        let results = match ran {
            // One result per charge, or no reply may be dropped: the run is not kept otherwise.
            Ok(Ok(results)) if results.len() == charges.len() => Some(results),
            Ok(Ok(_)) => {
                tracing::error!("a run of charges lost results; charged one by one");
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "charges run one by one");
                None
            }
            Err(_) => None,
        };
        end_savepoint(conn, "charges", results.is_some())?;
        if let Some(results) = results {
            for (pending, result) in charges.into_iter().zip(results) {
                answers.push((pending.reply)(result));
            }
            return Ok(());
        }
    }
    for pending in charges {
        run_alone(conn, pending.alone(), answers)?;
    }
    Ok(())
}

/// Releases savepoint `name`, after rolling back to it unless `keep`. SQLite ends the whole
/// transaction itself on some errors (I/O, full disk), and statements after that would each
/// commit alone: such a batch must not go on.
fn end_savepoint(conn: &Connection, name: &str, keep: bool) -> Result<(), StoreError> {
    if conn.is_autocommit() {
        return Err(StoreError("SQLite ended the write transaction".into()));
    }
    let release = format!("RELEASE {name}");
    if keep {
        exec(conn, &release).map_err(db_err)
    } else {
        exec(conn, &format!("ROLLBACK TO {name}"))
            .and_then(|()| exec(conn, &release))
            .map_err(db_err)
    }
}

/// Runs a transaction control statement, prepared once per connection.
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}
