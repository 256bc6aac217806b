use super::item::{job_item, job_key, parse_job, unchanged};
use super::tx::{Charged, TransactFailure, contended, retrying, transact};
use super::{DynamoStore, Item, build_err, get_s, iso, key, n, s, store_err};
use crate::domain::{CacheEntry, CacheKey, Charge, EntryStatus, Job, JobStatus};
use crate::ports::{ChargeError, JobStart, JobStore, StoreError};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    ConditionCheck, Delete, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// The condition that a stored job is not finished.
const JOB_OPEN: &str = "attribute_exists(PK) AND NOT (#status IN (:completed, :failed))";

impl DynamoStore {
    /// A put of `job` that holds only while the stored job is open.
    fn put_open_job(&self, job: &Job) -> Result<Put, StoreError> {
        Put::builder()
            .table_name(&self.table)
            .set_item(Some(job_item(job)))
            .condition_expression(JOB_OPEN)
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":completed", s(JobStatus::Completed.as_str()))
            .expression_attribute_values(":failed", s(JobStatus::Failed.as_str()))
            .build()
            .map_err(build_err)
    }

    /// Saves `job` while the stored one is open (and, for a claim, still at the prior attempt
    /// count with no attempt begun after the given time still `processing`); returns whether it
    /// was saved. A save that leaves the job open never takes it back to an earlier attempt.
    async fn save_open_job(
        &self,
        job: &Job,
        claim: Option<(u32, DateTime<Utc>)>,
    ) -> Result<bool, StoreError> {
        let put = self.put_open_job(job)?;
        let mut condition = JOB_OPEN.to_owned();
        let mut values = put
            .expression_attribute_values()
            .cloned()
            .unwrap_or_default();
        if let Some((prior, lapsed_at)) = claim {
            // Times are stored as fixed-width RFC 3339 (UTC, microseconds): they order as strings.
            condition.push_str(
                " AND attempts = :prior AND (#status <> :processing OR updated_at <= :lapsed)",
            );
            values.insert(":prior".into(), n(prior));
            values.insert(":processing".into(), s(JobStatus::Processing.as_str()));
            values.insert(":lapsed".into(), s(iso(lapsed_at)));
        } else if !job.status.is_terminal() {
            condition.push_str(" AND (attribute_not_exists(attempts) OR attempts <= :attempts)");
            values.insert(":attempts".into(), n(job.attempts));
        }
        let request = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(put.item().clone()))
            .condition_expression(condition)
            .set_expression_attribute_names(put.expression_attribute_names().cloned())
            .set_expression_attribute_values(Some(values));
        let result = retrying("write", || request.clone().send(), contended).await;
        match result {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(store_err(e)),
        }
    }

    /// The entry's item as stored, read consistently.
    async fn read_entry_item(&self, cache_key: &CacheKey) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(cache_key.to_string(), "RESULT")))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_err)?;
        Ok(out.item)
    }
}

/// The condition of an entry that belongs to the pending job `:job`.
const PENDING_ON_JOB: &str = "#status = :pending AND job_id = :job";

#[async_trait]
impl JobStore for DynamoStore {
    async fn start_job(
        &self,
        job: &Job,
        pending: &CacheEntry,
        bypass_ready: bool,
        charge: &Charge,
    ) -> Result<JobStart, ChargeError> {
        let now = charge.at;
        let free = Put::builder()
            .table_name(&self.table)
            .set_item(Some(self.entry_item(pending)))
            .condition_expression(
                "attribute_not_exists(PK) OR #ttl <= :now \
                 OR (#status = :pending AND lease_until <= :now)",
            )
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":now", n(now.timestamp()))
            .expression_attribute_values(":pending", s(EntryStatus::Pending.as_str()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(build_err)?;
        let claim = |entry: Put| -> Result<[TransactWriteItem; 2], StoreError> {
            Ok([
                self.put_new_item(job_item(job))?,
                TransactWriteItem::builder().put(entry).build(),
            ])
        };
        let old = match self.charge_with(charge, &claim(free)?).await? {
            Charged::Done(balance) => return Ok(JobStart::Started { balance }),
            Charged::ExtraFailed { index: 1, old } => old,
            Charged::ExtraFailed { .. } => {
                return Err(StoreError(format!("job {} already exists", job.id)).into());
            }
        };
        let old = match old {
            Some(old) => old,
            None => match self.read_entry_item(&pending.cache_key).await? {
                Some(old) => old,
                // Gone in between: the caller tries again.
                None => return Err(StoreError("the cache entry changed; try again".into()).into()),
            },
        };
        match self.parse_entry(&old) {
            Some(entry) if entry.joinable_job(now).is_some() => {
                Ok(JobStart::EntryTaken(Box::new(entry)))
            }
            Some(entry) if entry.is_servable(now) && !bypass_ready => {
                Ok(JobStart::EntryTaken(Box::new(entry)))
            }
            Some(entry) if entry.is_servable(now) => {
                // `no-cache`: the entry stays served to others; only the job and its charge.
                match self
                    .charge_with(charge, &[self.put_new_item(job_item(job))?])
                    .await?
                {
                    Charged::Done(balance) => Ok(JobStart::Started { balance }),
                    Charged::ExtraFailed { .. } => {
                        Err(StoreError(format!("job {} already exists", job.id)).into())
                    }
                }
            }
            // Unreadable, or neither servable nor pending: overwrite it, if still as read.
            parsed => {
                if parsed.is_none() {
                    tracing::warn!(cache_key = %pending.cache_key, "unreadable cache entry overwritten");
                }
                let (condition, names, values) = unchanged(&old);
                let overwrite = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(self.entry_item(pending)))
                    .condition_expression(condition)
                    .set_expression_attribute_names(Some(names))
                    .set_expression_attribute_values(Some(values))
                    .build()
                    .map_err(build_err)?;
                match self.charge_with(charge, &claim(overwrite)?).await? {
                    Charged::Done(balance) => Ok(JobStart::Started { balance }),
                    Charged::ExtraFailed { index: 1, .. } => {
                        Err(StoreError("the cache entry changed; try again".into()).into())
                    }
                    Charged::ExtraFailed { .. } => {
                        Err(StoreError(format!("job {} already exists", job.id)).into())
                    }
                }
            }
        }
    }

    async fn join_job(&self, job: &Job, charge: &Charge) -> Result<Option<u64>, ChargeError> {
        let Some(leader) = &job.leader else {
            return Err(StoreError("a joining job needs its leader".into()).into());
        };
        let mut link = key(format!("JOB#{leader}"), &format!("FOLLOWER#{}", job.id));
        link.insert("job_id".into(), s(&job.id));
        link.insert("ttl".into(), n(job.expires_at().timestamp()));
        let still_pending = ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(key(job.cache_key.to_string(), "RESULT")))
            .condition_expression(format!("{PENDING_ON_JOB} AND lease_until > :now"))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":pending", s(EntryStatus::Pending.as_str()))
            .expression_attribute_values(":job", s(leader))
            .expression_attribute_values(":now", n(charge.at.timestamp()))
            .build()
            .map_err(build_err)?;
        let extra = [
            self.put_new_item(job_item(job))?,
            self.put_new_item(link)?,
            TransactWriteItem::builder()
                .condition_check(still_pending)
                .build(),
        ];
        match self.charge_with(charge, &extra).await? {
            Charged::Done(balance) => Ok(Some(balance)),
            Charged::ExtraFailed { index: 2, .. } => Ok(None),
            Charged::ExtraFailed { .. } => {
                Err(StoreError(format!("job {} already exists", job.id)).into())
            }
        }
    }

    async fn job(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(job_key(job_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_err)?;
        match out.item {
            None => Ok(None),
            Some(item) => parse_job(&item)
                .map(Some)
                .ok_or_else(|| StoreError(format!("unreadable job {job_id}"))),
        }
    }

    async fn update_job(&self, job: &Job) -> Result<bool, StoreError> {
        self.save_open_job(job, None).await
    }

    async fn claim_attempt(&self, job: &Job, lapsed_at: DateTime<Utc>) -> Result<bool, StoreError> {
        match job.attempts.checked_sub(1) {
            Some(prior) => self.save_open_job(job, Some((prior, lapsed_at))).await,
            None => Ok(false),
        }
    }

    async fn finish_job(&self, job: &Job, ready: Option<&CacheEntry>) -> Result<bool, StoreError> {
        // A result replaces the entry unless another job's live claim holds it; a failure
        // deletes the entry only while it is pending on this job (never a READY one).
        let mut names = HashMap::from([("#status".to_owned(), "status".to_owned())]);
        let mut values = HashMap::from([
            (":pending".to_owned(), s(EntryStatus::Pending.as_str())),
            (":job".to_owned(), s(&job.id)),
        ]);
        let entry_item = match ready {
            Some(entry) => {
                names.insert("#ttl".into(), "ttl".into());
                values.insert(":now".into(), n(job.updated_at.timestamp()));
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&self.table)
                            .set_item(Some(self.entry_item(entry)))
                            .condition_expression(format!(
                                "({PENDING_ON_JOB}) OR attribute_not_exists(PK) OR #status <> :pending \
                                 OR lease_until <= :now OR #ttl <= :now"
                            ))
                            .set_expression_attribute_names(Some(names))
                            .set_expression_attribute_values(Some(values))
                            .build()
                            .map_err(build_err)?,
                    )
                    .build()
            }
            None => TransactWriteItem::builder()
                .delete(
                    Delete::builder()
                        .table_name(&self.table)
                        .set_key(Some(key(job.cache_key.to_string(), "RESULT")))
                        .condition_expression(PENDING_ON_JOB)
                        .set_expression_attribute_names(Some(names))
                        .set_expression_attribute_values(Some(values))
                        .build()
                        .map_err(build_err)?,
                )
                .build(),
        };
        let items = vec![
            TransactWriteItem::builder()
                .put(self.put_open_job(job)?)
                .build(),
            entry_item,
        ];
        match transact(&self.client, items).await {
            Ok(()) => Ok(true),
            Err(TransactFailure::Condition { index: 0, .. }) => Ok(false),
            // The entry is no longer this job's (expired and taken over): finish the job alone.
            Err(TransactFailure::Condition { .. }) => self.update_job(job).await,
            Err(TransactFailure::Store(e)) => Err(e),
        }
    }

    async fn followers(&self, leader_id: &str) -> Result<Vec<Job>, StoreError> {
        let mut ids = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("PK = :pk AND begins_with(SK, :follower)")
                .expression_attribute_values(":pk", s(format!("JOB#{leader_id}")))
                .expression_attribute_values(":follower", s("FOLLOWER#"))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(store_err)?;
            ids.extend(
                out.items()
                    .iter()
                    .filter_map(|i| get_s(i, "job_id").map(str::to_owned)),
            );
            match out.last_evaluated_key() {
                Some(k) => start = Some(k.clone()),
                None => break,
            }
        }
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(job) = self.job(&id).await? {
                jobs.push(job);
            }
        }
        jobs.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(jobs)
    }
}
