//! The embedded store on SQLite: the records of the data model in one durable file, every credit
//! movement in one transaction with its ledger line.

use crate::domain::{
    Account, CacheEntry, CacheKey, Charge, ClaimOutcome, EntryStatus, IDEMPOTENCY_LEASE,
    IDEMPOTENCY_TTL, IdempotencyClaim, Job, JobFailure, JobMessage, JobStatus, LedgerLine,
    LedgerReason, MediaType, Refund,
};
use crate::ports::{
    AccountStore, CacheStore, ChargeError, CreditStore, IdempotencyStore, JobQueue, JobStart,
    JobStore, Lookup, LookupStore, QueueError, StoreError,
};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::Path;
use std::sync::{Arc, Mutex};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cache_entries (
    pk TEXT PRIMARY KEY,              -- CACHE#{type}#{hash}
    status TEXT NOT NULL,             -- READY | PENDING
    result_keys TEXT NOT NULL,        -- JSON array of object keys
    content_type TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    credits_used INTEGER NOT NULL,
    created_at TEXT NOT NULL,         -- ISO 8601
    hit_count INTEGER NOT NULL DEFAULT 0,
    ttl INTEGER NOT NULL,             -- epoch seconds
    request_params TEXT NOT NULL,     -- canonical JSON
    job_id TEXT,                      -- while PENDING: the job producing it
    lease_until INTEGER               -- while PENDING: epoch seconds
);
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    credits_remaining INTEGER NOT NULL CHECK (credits_remaining >= 0),
    credits_used INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    digest TEXT PRIMARY KEY,          -- SHA-256 of the key; the key itself is never stored
    user_id TEXT NOT NULL REFERENCES users(id)
);
CREATE TABLE IF NOT EXISTS ledger (
    user_id TEXT NOT NULL REFERENCES users(id),
    sk TEXT NOT NULL,                 -- LEDGER#{time}#{request id}#{reason}
    at TEXT NOT NULL,
    request_id TEXT NOT NULL,
    amount INTEGER NOT NULL,
    reason TEXT NOT NULL,
    cache_key TEXT,
    job_id TEXT,
    PRIMARY KEY (user_id, sk),
    UNIQUE (user_id, request_id, reason)
);
CREATE TABLE IF NOT EXISTS idempotency (
    user_id TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,              -- pending | done
    answer TEXT,
    lease_until INTEGER NOT NULL,
    ttl INTEGER NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    media_type TEXT NOT NULL,
    cache_key TEXT NOT NULL,
    leader TEXT,                      -- the job whose provider task this one joined
    request_id TEXT NOT NULL,
    credits_charged INTEGER NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    provider_task TEXT,
    status TEXT NOT NULL,             -- queued | processing | completed | failed
    attempts INTEGER NOT NULL,
    result_keys TEXT NOT NULL,        -- JSON array
    content_type TEXT NOT NULL,
    failure TEXT,                     -- JSON {code, message}
    request_params TEXT NOT NULL,
    save_entry INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deadline TEXT NOT NULL,
    ttl INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_leader ON jobs (leader) WHERE leader IS NOT NULL;
-- The embedded stand-in for SQS: messages become visible at `visible_at` (ms), are hidden for a
-- visibility timeout when received, and go dead after too many receives.
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    dead INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queue_visible ON queue (dead, visible_at);
";

/// Schema version 2 added jobs, the queue and the pending columns of cache entries.
const SCHEMA_VERSION: i64 = 2;

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

fn read_entry(conn: &Connection, pk: &str) -> rusqlite::Result<Option<CacheEntry>> {
    conn.prepare_cached(
        "SELECT status, result_keys, content_type, provider, model, credits_used, created_at,
                hit_count, ttl, request_params, job_id, lease_until
         FROM cache_entries WHERE pk = ?1",
    )?
    .query_row([pk], |row| {
        let status: String = row.get(0)?;
        let keys: String = row.get(1)?;
        let created_at: String = row.get(6)?;
        let corrupt = || rusqlite::Error::InvalidQuery;
        Ok(CacheEntry {
            cache_key: CacheKey::parse(pk).ok_or_else(corrupt)?,
            status: EntryStatus::parse(&status).ok_or_else(corrupt)?,
            result_keys: serde_json::from_str(&keys).map_err(|_| corrupt())?,
            content_type: row.get(2)?,
            provider: row.get(3)?,
            model: row.get(4)?,
            credits_used: row.get::<_, i64>(5)? as u64,
            created_at: parse_iso(&created_at)?,
            hit_count: row.get::<_, i64>(7)? as u64,
            expires_at: from_epoch(row.get(8)?),
            request_params: row.get(9)?,
            job_id: row.get(10)?,
            lease_until: row.get::<_, Option<i64>>(11)?.map(from_epoch),
        })
    })
    .optional()
}

#[async_trait]
impl LookupStore for SqliteStore {
    async fn lookup(
        &self,
        api_key_digest: &str,
        cache_key: Option<&CacheKey>,
    ) -> Result<Lookup, StoreError> {
        let digest = api_key_digest.to_owned();
        let pk = cache_key.map(ToString::to_string);
        self.run(move |conn| {
            let user_id: Option<String> = conn
                .prepare_cached("SELECT user_id FROM api_keys WHERE digest = ?1")
                .and_then(|mut stmt| stmt.query_row([&digest], |r| r.get(0)))
                .optional()
                .map_err(db_err)?;
            let balance = match &user_id {
                Some(user) => conn
                    .prepare_cached("SELECT credits_remaining FROM users WHERE id = ?1")
                    .and_then(|mut stmt| stmt.query_row([user], |r| r.get::<_, i64>(0)))
                    .optional()
                    .map_err(db_err)?
                    .map(|b| b as u64),
                None => None,
            };
            let entry = match pk {
                Some(pk) => read_entry(conn, &pk).unwrap_or_else(|e| {
                    // An unreadable entry is a miss: the cache never fails a request by itself.
                    tracing::warn!(cache_key = %pk, error = %e, "unreadable cache entry");
                    None
                }),
                None => None,
            };
            Ok(Lookup {
                user_id,
                entry,
                balance,
            })
        })
        .await
    }
}

fn insert_ledger(
    tx: &rusqlite::Transaction<'_>,
    user_id: &str,
    at: DateTime<Utc>,
    request_id: &str,
    amount: i64,
    reason: LedgerReason,
    cache_key: Option<&str>,
) -> rusqlite::Result<usize> {
    let at = iso(at);
    let sk = format!("LEDGER#{at}#{request_id}#{}", reason.as_str());
    tx.prepare_cached(
        "INSERT OR IGNORE INTO ledger (user_id, sk, at, request_id, amount, reason, cache_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        user_id,
        sk,
        at,
        request_id,
        amount,
        reason.as_str(),
        cache_key
    ])
}

/// Debits `amount` unless it takes the balance below zero; returns the new balance.
fn debit(tx: &rusqlite::Transaction<'_>, user_id: &str, amount: u64) -> Result<u64, ChargeError> {
    let amount = amount as i64;
    let updated: Option<i64> = tx
        .prepare_cached(
            "UPDATE users SET credits_remaining = credits_remaining - ?2,
                              credits_used = credits_used + ?2
             WHERE id = ?1 AND credits_remaining >= ?2
             RETURNING credits_remaining",
        )
        .and_then(|mut stmt| stmt.query_row(params![user_id, amount], |r| r.get(0)))
        .optional()
        .map_err(db_err)?;
    if let Some(balance) = updated {
        return Ok(balance as u64);
    }
    let balance: Option<i64> = tx
        .query_row(
            "SELECT credits_remaining FROM users WHERE id = ?1",
            [user_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(db_err)?;
    match balance {
        None => Err(ChargeError::UnknownUser),
        Some(available) => Err(ChargeError::InsufficientCredits {
            available: available as u64,
            required: amount as u64,
        }),
    }
}

/// The debit, its ledger line and the hit count of `c`, inside `tx`; returns the new balance.
fn charge_in(tx: &rusqlite::Transaction<'_>, c: &Charge) -> Result<u64, ChargeError> {
    let balance = debit(tx, &c.user_id, c.amount)?;
    let key = c.cache_key.to_string();
    let inserted = insert_ledger(
        tx,
        &c.user_id,
        c.at,
        &c.request_id,
        -(c.amount as i64),
        c.reason,
        Some(&key),
    )
    .map_err(db_err)?;
    if inserted == 0 {
        // Same request charged twice: refuse rather than double-charge.
        return Err(StoreError(format!("request {} already charged", c.request_id)).into());
    }
    if c.count_hit {
        tx.prepare_cached("UPDATE cache_entries SET hit_count = hit_count + 1 WHERE pk = ?1")
            .and_then(|mut stmt| stmt.execute([&key]))
            .map_err(db_err)?;
    }
    Ok(balance)
}

#[async_trait]
impl CreditStore for SqliteStore {
    async fn charge(&self, charge: &Charge) -> Result<u64, ChargeError> {
        let c = charge.clone();
        self.transact(move |tx| {
            let balance = charge_in(tx, &c)?;
            Ok(balance)
        })
        .await
    }

    async fn refund(&self, refund: &Refund) -> Result<Option<u64>, StoreError> {
        let r = refund.clone();
        self.transact(move |tx| {
            let key = r.cache_key.to_string();
            let inserted = insert_ledger(
                tx,
                &r.user_id,
                r.at,
                &r.request_id,
                r.amount as i64,
                LedgerReason::Refund,
                Some(&key),
            )
            .map_err(db_err)?;
            if inserted == 0 {
                return Ok(None);
            }
            let balance: i64 = tx
                .query_row(
                    "UPDATE users SET credits_remaining = credits_remaining + ?2,
                                      credits_used = MAX(credits_used - ?2, 0)
                     WHERE id = ?1 RETURNING credits_remaining",
                    params![r.user_id, r.amount as i64],
                    |row| row.get(0),
                )
                .map_err(db_err)?;
            Ok(Some(balance as u64))
        })
        .await
    }
}

fn write_entry(conn: &Connection, e: &CacheEntry) -> rusqlite::Result<()> {
    let keys = serde_json::to_string(&e.result_keys)
        .map_err(|err| rusqlite::Error::ToSqlConversionFailure(err.into()))?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO cache_entries (pk, status, result_keys, content_type,
            provider, model, credits_used, created_at, hit_count, ttl, request_params, job_id,
            lease_until)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        e.cache_key.to_string(),
        e.status.as_str(),
        keys,
        e.content_type,
        e.provider,
        e.model,
        e.credits_used as i64,
        iso(e.created_at),
        e.hit_count as i64,
        e.expires_at.timestamp(),
        e.request_params,
        e.job_id,
        e.lease_until.map(|t| t.timestamp()),
    ])?;
    Ok(())
}

#[async_trait]
impl CacheStore for SqliteStore {
    async fn put_entry(&self, entry: &CacheEntry) -> Result<(), StoreError> {
        let e = entry.clone();
        self.run(move |conn| write_entry(conn, &e).map_err(db_err))
            .await
    }
}

#[async_trait]
impl IdempotencyStore for SqliteStore {
    async fn claim(&self, claim: &IdempotencyClaim) -> Result<ClaimOutcome, StoreError> {
        let c = claim.clone();
        self.transact(move |tx| {
            let now = c.at.timestamp();
            let existing: Option<(String, String, Option<String>, i64, i64)> = tx
                .query_row(
                    "SELECT fingerprint, state, answer, lease_until, ttl FROM idempotency
                     WHERE user_id = ?1 AND key = ?2",
                    params![c.user_id, c.key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()
                .map_err(db_err)?;
            let outcome = match existing {
                Some((_, _, _, _, ttl)) if ttl <= now => None,
                Some((fp, _, _, _, _)) if fp != c.fingerprint => Some(ClaimOutcome::Conflict),
                Some((_, state, Some(answer), _, _)) if state == "done" => {
                    Some(ClaimOutcome::Replay(answer))
                }
                Some((_, _, _, lease, _)) if lease > now => Some(ClaimOutcome::InProgress),
                _ => None,
            };
            if let Some(outcome) = outcome {
                return Ok(outcome);
            }
            tx.execute(
                "INSERT OR REPLACE INTO idempotency
                    (user_id, key, fingerprint, state, answer, lease_until, ttl)
                 VALUES (?1, ?2, ?3, 'pending', NULL, ?4, ?5)",
                params![
                    c.user_id,
                    c.key,
                    c.fingerprint,
                    (c.at + IDEMPOTENCY_LEASE).timestamp(),
                    (c.at + IDEMPOTENCY_TTL).timestamp()
                ],
            )
            .map_err(db_err)?;
            Ok(ClaimOutcome::Claimed)
        })
        .await
    }

    async fn complete(
        &self,
        user_id: &str,
        key: &str,
        answer: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (user_id, key, answer) = (user_id.to_owned(), key.to_owned(), answer.to_owned());
        self.run(move |conn| {
            conn.execute(
                "UPDATE idempotency SET state = 'done', answer = ?3, ttl = ?4
                 WHERE user_id = ?1 AND key = ?2",
                params![user_id, key, answer, (now + IDEMPOTENCY_TTL).timestamp()],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn release(&self, user_id: &str, key: &str) -> Result<(), StoreError> {
        let (user_id, key) = (user_id.to_owned(), key.to_owned());
        self.run(move |conn| {
            conn.execute(
                "DELETE FROM idempotency WHERE user_id = ?1 AND key = ?2 AND state = 'pending'",
                params![user_id, key],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_user(&self, user_id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        let user_id = user_id.to_owned();
        self.run(move |conn| {
            conn.execute(
                "INSERT INTO users (id, credits_remaining, credits_used, created_at)
                 VALUES (?1, 0, 0, ?2)",
                params![user_id, iso(now)],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn add_api_key(&self, api_key_digest: &str, user_id: &str) -> Result<(), StoreError> {
        let (digest, user_id) = (api_key_digest.to_owned(), user_id.to_owned());
        self.run(move |conn| {
            conn.execute(
                "INSERT INTO api_keys (digest, user_id) VALUES (?1, ?2)",
                params![digest, user_id],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn grant(
        &self,
        user_id: &str,
        amount: u64,
        request_id: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, ChargeError> {
        let (user_id, request_id) = (user_id.to_owned(), request_id.to_owned());
        self.transact(move |tx| {
            let balance: Option<i64> = tx
                .query_row(
                    "UPDATE users SET credits_remaining = credits_remaining + ?2
                     WHERE id = ?1 RETURNING credits_remaining",
                    params![user_id, amount as i64],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            let Some(balance) = balance else {
                return Err(ChargeError::UnknownUser);
            };
            let inserted = insert_ledger(
                tx,
                &user_id,
                now,
                &request_id,
                amount as i64,
                LedgerReason::Grant,
                None,
            )
            .map_err(db_err)?;
            if inserted == 0 {
                return Err(StoreError(format!("grant {request_id} already applied")).into());
            }
            Ok(balance as u64)
        })
        .await
    }

    async fn account(&self, user_id: &str) -> Result<Option<Account>, StoreError> {
        let user_id = user_id.to_owned();
        self.run(move |conn| {
            conn.query_row(
                "SELECT credits_remaining, credits_used, created_at FROM users WHERE id = ?1",
                [&user_id],
                |r| {
                    let created_at: String = r.get(2)?;
                    Ok(Account {
                        user_id: user_id.clone(),
                        credits_remaining: r.get::<_, i64>(0)? as u64,
                        credits_used: r.get::<_, i64>(1)? as u64,
                        created_at: parse_iso(&created_at)?,
                    })
                },
            )
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn ledger(&self, user_id: &str, limit: usize) -> Result<Vec<LedgerLine>, StoreError> {
        let user_id = user_id.to_owned();
        self.run(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT at, request_id, amount, reason, cache_key FROM ledger
                     WHERE user_id = ?1 ORDER BY at DESC, rowid DESC LIMIT ?2",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![user_id, limit as i64], |r| {
                    let at: String = r.get(0)?;
                    let reason: String = r.get(3)?;
                    Ok(LedgerLine {
                        user_id: user_id.clone(),
                        at: parse_iso(&at)?,
                        request_id: r.get(1)?,
                        amount: r.get(2)?,
                        reason: LedgerReason::parse(&reason)
                            .ok_or(rusqlite::Error::InvalidQuery)?,
                        cache_key: r.get(4)?,
                    })
                })
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    async fn user_count(&self) -> Result<u64, StoreError> {
        self.run(|conn| {
            conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(db_err)
        })
        .await
    }
}

const JOB_COLUMNS: &str = "id, owner, media_type, cache_key, leader, request_id, credits_charged,
    provider, model, provider_task, status, attempts, result_keys, content_type, failure,
    request_params, save_entry, created_at, updated_at, deadline, ttl";

fn write_job(conn: &Connection, j: &Job) -> rusqlite::Result<()> {
    let to_sql = |e: serde_json::Error| rusqlite::Error::ToSqlConversionFailure(e.into());
    let failure = j
        .failure
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(to_sql)?;
    conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO jobs ({JOB_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
                 ?19, ?20, ?21)"
    ))?
    .execute(params![
        j.id,
        j.owner,
        j.media_type.as_str(),
        j.cache_key.to_string(),
        j.leader,
        j.request_id,
        j.credits_charged as i64,
        j.provider,
        j.model,
        j.provider_task,
        j.status.as_str(),
        j.attempts,
        serde_json::to_string(&j.result_keys).map_err(to_sql)?,
        j.content_type,
        failure,
        j.request_params,
        j.save_entry,
        iso(j.created_at),
        iso(j.updated_at),
        iso(j.deadline),
        j.expires_at().timestamp(),
    ])?;
    Ok(())
}

fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    let corrupt = || rusqlite::Error::InvalidQuery;
    let text = |i: usize| row.get::<_, String>(i);
    let failure: Option<String> = row.get(14)?;
    Ok(Job {
        id: text(0)?,
        owner: text(1)?,
        media_type: MediaType::parse(&text(2)?).ok_or_else(corrupt)?,
        cache_key: CacheKey::parse(&text(3)?).ok_or_else(corrupt)?,
        leader: row.get(4)?,
        request_id: text(5)?,
        credits_charged: row.get::<_, i64>(6)? as u64,
        provider: text(7)?,
        model: text(8)?,
        provider_task: row.get(9)?,
        status: JobStatus::parse(&text(10)?).ok_or_else(corrupt)?,
        attempts: row.get(11)?,
        result_keys: serde_json::from_str(&text(12)?).map_err(|_| corrupt())?,
        content_type: text(13)?,
        failure: failure
            .map(|f| serde_json::from_str::<JobFailure>(&f))
            .transpose()
            .map_err(|_| corrupt())?,
        request_params: text(15)?,
        save_entry: row.get(16)?,
        created_at: parse_iso(&text(17)?)?,
        updated_at: parse_iso(&text(18)?)?,
        deadline: parse_iso(&text(19)?)?,
    })
}

fn read_job(conn: &Connection, id: &str) -> rusqlite::Result<Option<Job>> {
    conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))?
        .query_row([id], job_from_row)
        .optional()
}

/// Whether the stored job `id` is still open (exists and not terminal).
fn job_is_open(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    Ok(read_job(conn, id)?.is_some_and(|j| !j.status.is_terminal()))
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn start_job(
        &self,
        job: &Job,
        pending: &CacheEntry,
        bypass_ready: bool,
        charge: &Charge,
    ) -> Result<JobStart, ChargeError> {
        let (job, pending, charge) = (job.clone(), pending.clone(), charge.clone());
        self.transact(move |tx| {
            let now = job.created_at;
            let pk = pending.cache_key.to_string();
            // An unreadable entry is overwritten, like a missing one.
            let existing = read_entry(tx, &pk).ok().flatten();
            let servable = match &existing {
                Some(e) if e.joinable_job(now).is_some() => {
                    return Ok(JobStart::EntryTaken(Box::new(e.clone())));
                }
                Some(e) if e.is_servable(now) => {
                    if !bypass_ready {
                        return Ok(JobStart::EntryTaken(Box::new(e.clone())));
                    }
                    true
                }
                _ => false,
            };
            let balance = charge_in(tx, &charge)?;
            write_job(tx, &job).map_err(db_err)?;
            // A bypass leaves the entry others are served from; it is replaced on success only.
            if !servable {
                write_entry(tx, &pending).map_err(db_err)?;
            }
            Ok(JobStart::Started { balance })
        })
        .await
    }

    async fn join_job(&self, job: &Job, charge: &Charge) -> Result<Option<u64>, ChargeError> {
        let (job, charge) = (job.clone(), charge.clone());
        self.transact(move |tx| {
            let entry = read_entry(tx, &job.cache_key.to_string()).map_err(db_err)?;
            let still_pending = entry
                .as_ref()
                .and_then(|e| e.joinable_job(charge.at))
                .is_some_and(|leader| Some(leader) == job.leader.as_deref());
            if !still_pending {
                return Ok(None);
            }
            let balance = charge_in(tx, &charge)?;
            write_job(tx, &job).map_err(db_err)?;
            Ok(Some(balance))
        })
        .await
    }

    async fn job(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        let id = job_id.to_owned();
        self.run(move |conn| read_job(conn, &id).map_err(db_err))
            .await
    }

    async fn update_job(&self, job: &Job) -> Result<bool, StoreError> {
        let job = job.clone();
        self.transact(move |tx| {
            if !job_is_open(tx, &job.id).map_err(db_err)? {
                return Ok(false);
            }
            write_job(tx, &job).map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    async fn finish_job(&self, job: &Job, ready: Option<&CacheEntry>) -> Result<bool, StoreError> {
        let (job, ready) = (job.clone(), ready.cloned());
        self.transact(move |tx| {
            if !job_is_open(tx, &job.id).map_err(db_err)? {
                return Ok(false);
            }
            write_job(tx, &job).map_err(db_err)?;
            let pk = job.cache_key.to_string();
            let existing = read_entry(tx, &pk).ok().flatten();
            let ours = existing.as_ref().is_some_and(|e| {
                e.status == EntryStatus::Pending && e.job_id.as_deref() == Some(&job.id)
            });
            let claimed_by_another = existing.as_ref().is_some_and(|e| {
                e.joinable_job(job.updated_at)
                    .is_some_and(|other| other != job.id)
            });
            match &ready {
                Some(entry) if !claimed_by_another => write_entry(tx, entry).map_err(db_err)?,
                None if ours => {
                    tx.execute("DELETE FROM cache_entries WHERE pk = ?1", [&pk])
                        .map_err(db_err)?;
                }
                _ => {}
            }
            Ok(true)
        })
        .await
    }

    async fn followers(&self, leader_id: &str) -> Result<Vec<Job>, StoreError> {
        let leader = leader_id.to_owned();
        self.run(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE leader = ?1 ORDER BY created_at, id"
                ))
                .map_err(db_err)?;
            let rows = stmt.query_map([&leader], job_from_row).map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }
}

/// A message received from the embedded queue, hidden from other receivers until it is deleted
/// or its visibility timeout ends.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// Deletes it.
    pub receipt: i64,
    /// What it carries.
    pub message: JobMessage,
    /// How many times it has been received, this time included.
    pub receive_count: u32,
}

fn epoch_ms() -> i64 {
    // Queue timing is infrastructure time, like SQS's own: the wall clock, not the app's clock.
    Utc::now().timestamp_millis()
}

impl SqliteStore {
    /// Receives up to `max` visible messages, hiding each for `visibility`. A message received
    /// more than `max_receives` times goes dead instead (the embedded dead-letter queue).
    pub async fn receive_messages(
        &self,
        max: usize,
        visibility: std::time::Duration,
        max_receives: u32,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        self.transact(move |tx| {
            let now = epoch_ms();
            tx.execute(
                "UPDATE queue SET dead = 1 WHERE dead = 0 AND visible_at <= ?1 AND receive_count >= ?2",
                params![now, max_receives],
            )
            .map_err(db_err)?;
            let rows: Vec<(i64, String, u32)> = {
                let mut stmt = tx
                    .prepare_cached(
                        "UPDATE queue SET receive_count = receive_count + 1, visible_at = ?2
                         WHERE id IN (SELECT id FROM queue WHERE dead = 0 AND visible_at <= ?1
                                      ORDER BY visible_at, id LIMIT ?3)
                         RETURNING id, body, receive_count",
                    )
                    .map_err(db_err)?;
                let hidden_until = now + visibility.as_millis() as i64;
                stmt.query_map(params![now, hidden_until, max as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(db_err)?
                .collect::<Result<_, _>>()
                .map_err(db_err)?
            };
            let mut received = Vec::with_capacity(rows.len());
            for (receipt, body, receive_count) in rows {
                match serde_json::from_str(&body) {
                    Ok(message) => received.push(ReceivedMessage {
                        receipt,
                        message,
                        receive_count,
                    }),
                    Err(e) => {
                        tracing::error!(receipt, error = %e, "unreadable queue message dropped");
                        tx.execute("UPDATE queue SET dead = 1 WHERE id = ?1", [receipt])
                            .map_err(db_err)?;
                    }
                }
            }
            Ok(received)
        })
        .await
    }

    /// Deletes a received message: its work is done.
    pub async fn delete_message(&self, receipt: i64) -> Result<(), StoreError> {
        self.run(move |conn| {
            conn.execute("DELETE FROM queue WHERE id = ?1", [receipt])
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    /// Messages waiting (visible or delayed) and dead ones.
    pub async fn queue_depth(&self) -> Result<(u64, u64), StoreError> {
        self.run(|conn| {
            conn.query_row(
                "SELECT COALESCE(SUM(dead = 0), 0), COALESCE(SUM(dead = 1), 0) FROM queue",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .map_err(db_err)
        })
        .await
    }
}

#[async_trait]
impl JobQueue for SqliteStore {
    async fn send(
        &self,
        message: &JobMessage,
        delay: std::time::Duration,
    ) -> Result<(), QueueError> {
        let body = serde_json::to_string(message).map_err(|e| QueueError(e.to_string()))?;
        let visible_at =
            epoch_ms() + delay.min(std::time::Duration::from_secs(900)).as_millis() as i64;
        self.run(move |conn| {
            conn.execute(
                "INSERT INTO queue (body, visible_at) VALUES (?1, ?2)",
                params![body, visible_at],
            )
            .map_err(db_err)?;
            Ok::<_, StoreError>(())
        })
        .await
        .map_err(|e| QueueError(e.0))
    }
}
