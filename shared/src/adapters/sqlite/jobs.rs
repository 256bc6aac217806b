use super::schema::{JOB_COLUMNS, job_from_row, read_entry, read_job, write_entry, write_job};
use super::tx::charge_in;
use super::{SqliteStore, db_err};
use crate::domain::{CacheEntry, Charge, EntryStatus, Job, JobStatus};
use crate::ports::{ChargeError, JobStart, JobStore, StoreError};
use async_trait::async_trait;
use rusqlite::Connection;

/// Whether the stored job `id` is still open (exists and not terminal).
fn job_is_open(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    Ok(read_job(conn, id)?.is_some_and(|j| !j.status.is_terminal()))
}

/// The entry under `pk`; an unreadable one is treated as missing (it gets overwritten), unless
/// reading it ended the transaction (SQLite rolls back on I/O errors), when nothing may follow.
fn readable_entry(tx: &Connection, pk: &str) -> Result<Option<CacheEntry>, StoreError> {
    match read_entry(tx, pk) {
        Ok(entry) => Ok(entry),
        Err(e) if tx.is_autocommit() => Err(db_err(e)),
        Err(_) => Ok(None),
    }
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
        self.write_entry(pending.cache_key.to_string(), move |tx| {
            let now = job.created_at;
            let pk = pending.cache_key.to_string();
            // An unreadable entry is overwritten, like a missing one.
            let existing = readable_entry(tx, &pk)?;
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
        self.write(move |tx| {
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
        self.read(move |conn| read_job(conn, &id).map_err(db_err))
            .await
    }

    async fn update_job(&self, job: &Job) -> Result<bool, StoreError> {
        let job = job.clone();
        self.write(move |tx| {
            let current = read_job(tx, &job.id).map_err(db_err)?;
            let saved = current.is_some_and(|c| {
                !c.status.is_terminal() && (job.status.is_terminal() || c.attempts <= job.attempts)
            });
            if !saved {
                return Ok(false);
            }
            write_job(tx, &job).map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    async fn claim_attempt(
        &self,
        job: &Job,
        lapsed_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        let job = job.clone();
        self.write(move |tx| {
            let prior = job.attempts.checked_sub(1);
            let current = read_job(tx, &job.id).map_err(db_err)?;
            let claimable = current.is_some_and(|c| {
                !c.status.is_terminal()
                    && Some(c.attempts) == prior
                    && (c.status != JobStatus::Processing || c.updated_at <= lapsed_at)
            });
            if !claimable {
                return Ok(false);
            }
            write_job(tx, &job).map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    async fn finish_job(&self, job: &Job, ready: Option<&CacheEntry>) -> Result<bool, StoreError> {
        let (job, ready) = (job.clone(), ready.cloned());
        self.write_entry(job.cache_key.to_string(), move |tx| {
            if !job_is_open(tx, &job.id).map_err(db_err)? {
                return Ok(false);
            }
            write_job(tx, &job).map_err(db_err)?;
            let pk = job.cache_key.to_string();
            let existing = readable_entry(tx, &pk)?;
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
        self.read(move |conn| {
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
