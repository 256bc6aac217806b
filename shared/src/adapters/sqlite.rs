//! The embedded store on SQLite: the records of the data model in one durable file, every credit
//! movement in one transaction with its ledger line.

use crate::domain::{
    Account, CacheEntry, CacheKey, Charge, ClaimOutcome, EntryStatus, IDEMPOTENCY_LEASE,
    IDEMPOTENCY_TTL, IdempotencyClaim, LedgerLine, LedgerReason, Refund,
};
use crate::ports::{
    AccountStore, CacheStore, ChargeError, CreditStore, IdempotencyStore, Lookup, LookupStore,
    StoreError,
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
    request_params TEXT NOT NULL      -- canonical JSON
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
PRAGMA user_version = 1;
";

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
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
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
                hit_count, ttl, request_params
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

#[async_trait]
impl CreditStore for SqliteStore {
    async fn charge(&self, charge: &Charge) -> Result<u64, ChargeError> {
        let c = charge.clone();
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let balance = debit(&tx, &c.user_id, c.amount)?;
            let key = c.cache_key.to_string();
            let inserted = insert_ledger(
                &tx,
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
                tx.prepare_cached(
                    "UPDATE cache_entries SET hit_count = hit_count + 1 WHERE pk = ?1",
                )
                .and_then(|mut stmt| stmt.execute([&key]))
                .map_err(db_err)?;
            }
            tx.commit().map_err(db_err)?;
            Ok(balance)
        })
        .await
    }

    async fn refund(&self, refund: &Refund) -> Result<Option<u64>, StoreError> {
        let r = refund.clone();
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let key = r.cache_key.to_string();
            let inserted = insert_ledger(
                &tx,
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
            tx.commit().map_err(db_err)?;
            Ok(Some(balance as u64))
        })
        .await
    }
}

#[async_trait]
impl CacheStore for SqliteStore {
    async fn put_entry(&self, entry: &CacheEntry) -> Result<(), StoreError> {
        let e = entry.clone();
        self.run(move |conn| {
            let keys = serde_json::to_string(&e.result_keys).map_err(db_err)?;
            conn.execute(
                "INSERT OR REPLACE INTO cache_entries (pk, status, result_keys, content_type,
                    provider, model, credits_used, created_at, hit_count, ttl, request_params)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
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
                ],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl IdempotencyStore for SqliteStore {
    async fn claim(&self, claim: &IdempotencyClaim) -> Result<ClaimOutcome, StoreError> {
        let c = claim.clone();
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
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
            tx.commit().map_err(db_err)?;
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
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
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
                &tx,
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
            tx.commit().map_err(db_err)?;
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
