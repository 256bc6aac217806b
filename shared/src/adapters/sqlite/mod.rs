//! The embedded store on SQLite: the records of the data model in one durable file, every credit
//! movement in one transaction with its ledger line.

use crate::ports::StoreError;
use chrono::{DateTime, SecondsFormat, Utc};
use housekeeping::{CatchUp, Housekeeping};
use memo::Memo;
use readers::ReadPool;
use rusqlite::Connection;
use schema::{ADD_DAILY_SPEND, COPY_LEDGER, SCHEMA, SCHEMA_VERSION, SET_ASIDE_LEDGER};
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
        // 1 KB pages (new files; an older file keeps its size): a hit changes a few rows of a
        // few hundred bytes, and every page it touches is written to the log whole, so smaller
        // pages write a quarter of the bytes (the p99 of hits at one connection went from
        // 2.0-2.5 ms to 1.35-1.5 ms, README "Performance").
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        conn.execute_batch(
            "PRAGMA page_size = 1024; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
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

/// Brings a file of an older schema version up to this one, in one transaction: a process
/// stopped half way, or two processes opening an old file at once (`serve` and a `mediactl`
/// admin command), never leave a half-migrated file or add a column twice.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE").map_err(db_err)?;
    let migrated = migrate_in(conn);
    let end = if migrated.is_ok() {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    let ended = conn.execute_batch(end).map_err(db_err);
    migrated.and(ended)
}

fn migrate_in(conn: &Connection) -> Result<(), StoreError> {
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
    // By the columns themselves, not only the version: a build of version 2 opening a file of
    // version 3 sets the version back to 2, and adding a column twice fails.
    if (1..3).contains(&version) && !has_column(conn, "users", "daily_limit")? {
        conn.execute_batch(ADD_DAILY_SPEND).map_err(db_err)?;
    }
    // By the table itself, as above.
    let rebuild_ledger = (1..4).contains(&version) && ledger_keyed_by_sk(conn)?;
    if rebuild_ledger {
        conn.execute_batch(SET_ASIDE_LEDGER).map_err(db_err)?;
    }
    conn.execute_batch(SCHEMA).map_err(db_err)?;
    if rebuild_ledger {
        conn.execute_batch(COPY_LEDGER).map_err(db_err)?;
    }
    conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))
        .map_err(db_err)
}

/// Whether the ledger still has the primary key of versions 1 to 3.
fn ledger_keyed_by_sk(conn: &Connection) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT COUNT(*) FROM pragma_index_list('ledger') WHERE origin = 'pk'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .map_err(db_err)
}

/// Whether `table` has `column`.
fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .map_err(db_err)
}

#[cfg(test)]
mod tests {
    use super::SqliteStore;
    use crate::domain::{CacheKey, Charge, DailySpend, LedgerReason, MediaType};
    use crate::ports::{AccountStore, ChargeError, CreditStore, StoreError};
    use chrono::{TimeZone, Utc};

    fn hit(user_id: &str, n: usize) -> Charge {
        Charge {
            user_id: user_id.to_owned(),
            amount: 1,
            reason: LedgerReason::Hit,
            request_id: format!("req_{user_id}_{n}"),
            cache_key: CacheKey::of_canonical(MediaType::Tts, "{}"),
            count_hit: false,
            seen_balance: None,
            seen_spend: None,
            at: Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap(),
        }
    }

    /// Charges sent while the writer is busy are applied together as one run in one commit; when
    /// the run fails on the store's side (here a trigger refusing one user's update), it is
    /// undone and each charge is made alone: that user's charges fail and nobody else's do.
    #[tokio::test]
    async fn charges_waiting_together_share_a_commit_and_a_failed_run_is_charged_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.db");
        let store = SqliteStore::open(&path).unwrap();
        let at = Utc.with_ymd_and_hms(2026, 11, 27, 0, 0, 0).unwrap();
        for user in ["usr_a", "usr_b", "usr_bad"] {
            store.create_user(user, at).await.unwrap();
            store
                .grant(user, 10, &format!("g_{user}"), at)
                .await
                .unwrap();
        }

        // Holds the writer while `charges` are sent, so they wait together for the next batch.
        let batch = |charges: Vec<Charge>| {
            let store = store.clone();
            async move {
                let (started, running) = tokio::sync::oneshot::channel::<()>();
                let (held, hold) = tokio::sync::oneshot::channel::<()>();
                let holding = tokio::spawn({
                    let store = store.clone();
                    async move {
                        store
                            .write(move |_| {
                                let _ = started.send(());
                                let _ = hold.blocking_recv();
                                Ok::<_, StoreError>(())
                            })
                            .await
                    }
                });
                running.await.unwrap();
                let sent: Vec<_> = charges
                    .into_iter()
                    .map(|c| {
                        let store = store.clone();
                        tokio::spawn(async move { store.charge(&c).await })
                    })
                    .collect();
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                held.send(()).unwrap();
                let mut results = Vec::new();
                for s in sent {
                    results.push(s.await.unwrap());
                }
                holding.await.unwrap().unwrap();
                results
            }
        };

        let before = store.group_commit_stats();
        let results = batch(
            (0..4)
                .flat_map(|n| [hit("usr_a", n), hit("usr_b", n)])
                .collect(),
        )
        .await;
        let after = store.group_commit_stats();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(
            after.writes - before.writes,
            9,
            "the held write and 8 charges"
        );
        assert_eq!(
            after.commits - before.commits,
            2,
            "the held write's commit, then one"
        );

        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER refuse_bad BEFORE UPDATE ON users WHEN NEW.id = 'usr_bad'
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        let results = batch(
            (4..7)
                .flat_map(|n| [hit("usr_a", n), hit("usr_bad", n), hit("usr_b", n)])
                .collect(),
        )
        .await;
        for (i, r) in results.iter().enumerate() {
            if i % 3 == 1 {
                assert!(matches!(r, Err(ChargeError::Store(_))), "{i}: {r:?}");
            } else {
                assert!(r.is_ok(), "{i}: {r:?}");
            }
        }
        for (user, balance, lines) in [("usr_a", 3, 8), ("usr_b", 3, 8), ("usr_bad", 10, 1)] {
            let account = store.account(user).await.unwrap().unwrap();
            assert_eq!(account.credits_remaining, balance, "{user}");
            let ledger = store.ledger(user, 100).await.unwrap();
            assert_eq!(ledger.len(), lines, "{user}");
            assert_eq!(
                ledger.iter().map(|l| l.amount).sum::<i64>(),
                balance as i64,
                "{user}: the ledger sums to the balance"
            );
        }
    }

    #[tokio::test]
    async fn a_version_2_file_gains_the_daily_limit_columns_and_keeps_its_users() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.db");
        {
            // The users table as version 2 made it, with a user in it.
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE users (
                     id TEXT PRIMARY KEY,
                     credits_remaining INTEGER NOT NULL CHECK (credits_remaining >= 0),
                     credits_used INTEGER NOT NULL,
                     created_at TEXT NOT NULL
                 );
                 CREATE TABLE cache_entries (pk TEXT PRIMARY KEY, status TEXT NOT NULL,
                     result_keys TEXT NOT NULL, content_type TEXT NOT NULL, provider TEXT NOT NULL,
                     model TEXT NOT NULL, credits_used INTEGER NOT NULL, created_at TEXT NOT NULL,
                     hit_count INTEGER NOT NULL DEFAULT 0, ttl INTEGER NOT NULL,
                     request_params TEXT NOT NULL, job_id TEXT, lease_until INTEGER);
                 INSERT INTO users VALUES ('usr_old', 7, 3, '2026-11-25T12:00:00Z');
                 PRAGMA user_version = 2;",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let account = store.account("usr_old").await.unwrap().unwrap();
        assert_eq!(account.credits_remaining, 7);
        assert_eq!(account.spend, DailySpend::default());
        store.set_daily_limit("usr_old", Some(5)).await.unwrap();
        let account = store.account("usr_old").await.unwrap().unwrap();
        assert_eq!(account.spend.limit, Some(5));
        drop(store);
        // Opening it again finds the current version and changes nothing.
        let again = SqliteStore::open(&path).unwrap();
        let account = again.account("usr_old").await.unwrap().unwrap();
        assert_eq!(account.spend.limit, Some(5));
        drop(again);
        // A version-2 build opening the file sets its version back to 2: the columns are there
        // already, and the next open must not add them twice.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 2;")
            .unwrap();
        let reopened = SqliteStore::open(&path).unwrap();
        let account = reopened.account("usr_old").await.unwrap().unwrap();
        assert_eq!(account.spend.limit, Some(5));
    }

    #[tokio::test]
    async fn a_version_3_ledger_loses_its_sk_key_and_keeps_its_lines_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.db");
        {
            // The users and ledger tables as version 3 made them: two lines written in the same
            // microsecond (their order is the rowid's) and a grant.
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE users (id TEXT PRIMARY KEY,
                     credits_remaining INTEGER NOT NULL CHECK (credits_remaining >= 0),
                     credits_used INTEGER NOT NULL, created_at TEXT NOT NULL,
                     daily_limit INTEGER, spent_day TEXT, spent_today INTEGER NOT NULL DEFAULT 0);
                 CREATE TABLE ledger (user_id TEXT NOT NULL REFERENCES users(id),
                     sk TEXT NOT NULL, at TEXT NOT NULL, request_id TEXT NOT NULL,
                     amount INTEGER NOT NULL, reason TEXT NOT NULL, cache_key TEXT, job_id TEXT,
                     PRIMARY KEY (user_id, sk), UNIQUE (user_id, request_id, reason));
                 INSERT INTO users VALUES ('usr_old', 7, 3, '2026-11-25T12:00:00Z', NULL, NULL, 0);
                 INSERT INTO ledger VALUES ('usr_old', 'LEDGER#2026-11-25T12:00:00.000000Z#g#grant',
                     '2026-11-25T12:00:00.000000Z', 'g', 10, 'grant', NULL, NULL);
                 INSERT INTO ledger VALUES ('usr_old', 'LEDGER#2026-11-25T12:00:01.000000Z#z#hit',
                     '2026-11-25T12:00:01.000000Z', 'z', -1, 'hit', 'CACHE#tts#a', NULL);
                 INSERT INTO ledger VALUES ('usr_old', 'LEDGER#2026-11-25T12:00:01.000000Z#a#hit',
                     '2026-11-25T12:00:01.000000Z', 'a', -2, 'hit', 'CACHE#tts#b', NULL);
                 PRAGMA user_version = 3;",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let lines = |store: &SqliteStore| {
            let store = store.clone();
            async move {
                store
                    .ledger("usr_old", 10)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|l| (l.request_id, l.amount))
                    .collect::<Vec<_>>()
            }
        };
        // Newest first, and of two in the same microsecond the one written last.
        let expected = vec![
            ("a".to_owned(), -2),
            ("z".to_owned(), -1),
            ("g".to_owned(), 10),
        ];
        assert_eq!(lines(&store).await, expected);
        let keys: i64 = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT COUNT(*) FROM pragma_index_list('ledger') WHERE origin = 'pk'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(keys, 0, "the ledger keeps no index on sk");
        // The unique triple still refuses a second line for the same request and reason.
        let again = store
            .grant(
                "usr_old",
                5,
                "g",
                Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap(),
            )
            .await;
        assert!(matches!(again, Err(ChargeError::Store(_))), "{again:?}");
        assert_eq!(
            store
                .account("usr_old")
                .await
                .unwrap()
                .unwrap()
                .credits_remaining,
            7
        );
        // `sk` is kept for old lines and written for new ones.
        let at = Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap();
        store.grant("usr_old", 5, "g2", at).await.unwrap();
        let sk = |request_id: &str| -> String {
            rusqlite::Connection::open(&path)
                .unwrap()
                .query_row(
                    "SELECT sk FROM ledger WHERE request_id = ?1",
                    [request_id],
                    |r| r.get(0),
                )
                .unwrap()
        };
        assert_eq!(sk("z"), "LEDGER#2026-11-25T12:00:01.000000Z#z#hit");
        assert_eq!(sk("g2"), "LEDGER#2026-11-26T00:00:00.000000Z#g2#grant");
        // A build of version 3 (which lists `sk` in its insert) still writes to the file, and the
        // unique triple still refuses its duplicates.
        let old_build_insert = "INSERT OR IGNORE INTO ledger
            (user_id, sk, at, request_id, amount, reason, cache_key)
            VALUES ('usr_old', 'LEDGER#2026-11-26T00:00:01.000000Z#h#hit',
                    '2026-11-26T00:00:01.000000Z', 'h', -1, 'hit', 'CACHE#tts#c')";
        let conn = rusqlite::Connection::open(&path).unwrap();
        assert_eq!(conn.execute(old_build_insert, []).unwrap(), 1);
        assert_eq!(conn.execute(old_build_insert, []).unwrap(), 0);
        drop(conn);
        drop(store);
        let reopened = SqliteStore::open(&path).unwrap();
        let mut expected = expected;
        expected.insert(0, ("g2".to_owned(), 5));
        expected.insert(0, ("h".to_owned(), -1));
        assert_eq!(lines(&reopened).await, expected);
    }
}
