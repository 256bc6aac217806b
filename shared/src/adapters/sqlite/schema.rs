use super::{from_epoch, iso, parse_iso};
use crate::domain::budget::parse_day;
use crate::domain::{
    CacheEntry, CacheKey, DailySpend, EntryStatus, Job, JobFailure, JobStatus, MediaType,
};
use rusqlite::{Connection, OptionalExtension, params};

pub(super) const SCHEMA: &str = "
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
    created_at TEXT NOT NULL,
    daily_limit INTEGER,              -- credits per UTC day; NULL: no limit
    spent_day TEXT,                   -- YYYY-MM-DD: the UTC day spent_today belongs to
    spent_today INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS api_keys (
    digest TEXT PRIMARY KEY,          -- SHA-256 of the key; the key itself is never stored
    user_id TEXT NOT NULL REFERENCES users(id)
);
-- API keys allowed to administer the cache (purge).
CREATE TABLE IF NOT EXISTS admin_keys (
    digest TEXT PRIMARY KEY REFERENCES api_keys(digest)
);
-- One line per (user, request, reason), in the order written (rowid). `sk` is DynamoDB's sort key,
-- made of the time and that triple: stored (older builds write it too) but not indexed, so a hit
-- writes two B-trees, not three.
CREATE TABLE IF NOT EXISTS ledger (
    user_id TEXT NOT NULL REFERENCES users(id),
    sk TEXT NOT NULL,                 -- LEDGER#{time}#{request id}#{reason}
    at TEXT NOT NULL,
    request_id TEXT NOT NULL,
    amount INTEGER NOT NULL,
    reason TEXT NOT NULL,
    cache_key TEXT,
    job_id TEXT,
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

/// Schema version 2 added jobs, the queue and the pending columns of cache entries; version 3
/// the daily limit and spend of users; version 4 dropped the ledger's index on `sk`.
pub(super) const SCHEMA_VERSION: i64 = 4;

/// Version 4's ledger is rebuilt from an older one: the old table is set aside, [`SCHEMA`]
/// creates the new one, and its lines are copied over with their order (rowids). The old table
/// had `PRIMARY KEY (user_id, sk)` as well, implied by the unique triple (`sk` is made of it)
/// and kept up on every write for nothing. The columns are unchanged, so a build of version 3
/// still writes to a file of version 4.
pub(super) const SET_ASIDE_LEDGER: &str = "ALTER TABLE ledger RENAME TO ledger_v3;";

/// See [`SET_ASIDE_LEDGER`].
pub(super) const COPY_LEDGER: &str = "
INSERT INTO ledger (rowid, user_id, sk, at, request_id, amount, reason, cache_key, job_id)
    SELECT rowid, user_id, sk, at, request_id, amount, reason, cache_key, job_id FROM ledger_v3;
DROP TABLE ledger_v3;
";

/// The user columns of the daily limit, added by version 3 (see `migrate`).
pub(super) const ADD_DAILY_SPEND: &str = "
ALTER TABLE users ADD COLUMN daily_limit INTEGER;
ALTER TABLE users ADD COLUMN spent_day TEXT;
ALTER TABLE users ADD COLUMN spent_today INTEGER NOT NULL DEFAULT 0;
";

/// The columns `entry_from_row` reads, in its order.
pub(super) const ENTRY_COLUMNS: &str = "pk, status, result_keys, content_type, provider, model,
    credits_used, created_at, hit_count, ttl, request_params, job_id, lease_until";

pub(super) fn read_entry(conn: &Connection, pk: &str) -> rusqlite::Result<Option<CacheEntry>> {
    conn.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM cache_entries WHERE pk = ?1"
    ))?
    .query_row([pk], entry_from_row)
    .optional()
}

/// An entry from a row of `ENTRY_COLUMNS`.
pub(super) fn entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<CacheEntry> {
    let pk: String = row.get(0)?;
    let status: String = row.get(1)?;
    let keys: String = row.get(2)?;
    let created_at: String = row.get(7)?;
    let corrupt = || rusqlite::Error::InvalidQuery;
    Ok(CacheEntry {
        cache_key: CacheKey::parse(&pk).ok_or_else(corrupt)?,
        status: EntryStatus::parse(&status).ok_or_else(corrupt)?,
        result_keys: serde_json::from_str(&keys).map_err(|_| corrupt())?,
        content_type: row.get(3)?,
        provider: row.get(4)?,
        model: row.get(5)?,
        credits_used: row.get::<_, i64>(6)? as u64,
        created_at: parse_iso(&created_at)?,
        hit_count: row.get::<_, i64>(8)? as u64,
        expires_at: from_epoch(row.get(9)?),
        request_params: row.get(10)?,
        job_id: row.get(11)?,
        lease_until: row.get::<_, Option<i64>>(12)?.map(from_epoch),
    })
}

pub(super) fn write_entry(conn: &Connection, e: &CacheEntry) -> rusqlite::Result<()> {
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

pub(super) const JOB_COLUMNS: &str =
    "id, owner, media_type, cache_key, leader, request_id, credits_charged,
    provider, model, provider_task, status, attempts, result_keys, content_type, failure,
    request_params, save_entry, created_at, updated_at, deadline, ttl";

pub(super) fn write_job(conn: &Connection, j: &Job) -> rusqlite::Result<()> {
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

pub(super) fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
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

pub(super) fn read_job(conn: &Connection, id: &str) -> rusqlite::Result<Option<Job>> {
    conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))?
        .query_row([id], job_from_row)
        .optional()
}

/// The user columns `spend_from_row` reads, in its order.
pub(super) const SPEND_COLUMNS: &str = "daily_limit, spent_day, spent_today";

/// A user's daily limit and spend from `SPEND_COLUMNS`, starting at column `first`. A day that
/// is not one is corrupt (never read as "no day": that would give a fresh budget).
pub(super) fn spend_from_row(
    row: &rusqlite::Row<'_>,
    first: usize,
) -> rusqlite::Result<DailySpend> {
    let day = row
        .get::<_, Option<String>>(first + 1)?
        .map(|d| {
            parse_day(&d).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    first + 1,
                    rusqlite::types::Type::Text,
                    format!("spent_day {d:?} is not a day").into(),
                )
            })
        })
        .transpose()?;
    Ok(DailySpend {
        limit: row.get::<_, Option<i64>>(first)?.map(|l| l.max(0) as u64),
        day,
        spent: row.get::<_, i64>(first + 2)?.max(0) as u64,
    })
}
