use super::item::{parse_job, parse_ledger_line};
use super::tx::{contended, retrying};
use super::{DynamoStore, Item, get_s, store_err};
use crate::domain::usage::{ReadCost, UsageRecords};
use crate::ports::{StoreError, UsageScan};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::ReturnConsumedCapacity;

#[async_trait]
impl UsageScan for DynamoStore {
    async fn usage_records(
        &self,
        progress: &(dyn Fn(ReadCost) + Send + Sync),
    ) -> Result<UsageRecords, StoreError> {
        let mut records = UsageRecords::default();
        let mut cost = ReadCost::default();
        let mut start = None;
        loop {
            // Eventually consistent: a report can miss the last second's writes, and such a
            // read costs half of a consistent one.
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(false)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .set_exclusive_start_key(start);
            let out = retrying("scan", || page.clone().send(), contended)
                .await
                .map_err(store_err)?;
            cost.pages += 1;
            cost.items += out.items().len() as u64;
            cost.capacity_units += out
                .consumed_capacity()
                .and_then(|c| c.capacity_units())
                .unwrap_or(0.0);
            for item in out.items() {
                self.collect(item, &mut records);
            }
            progress(cost);
            match out.last_evaluated_key() {
                Some(k) => start = Some(k.clone()),
                None => break,
            }
        }
        records.read = Some(cost);
        Ok(records)
    }
}

impl DynamoStore {
    /// Adds `item` to `records` when it is a ledger line, a cache entry or a job; any other
    /// kind (profiles, API keys, refund markers, follower links, idempotency records) is
    /// skipped, and so is an unreadable one, with a warning: one corrupt item never fails a
    /// report.
    fn collect(&self, item: &Item, records: &mut UsageRecords) {
        let pk = get_s(item, "PK").unwrap_or_default();
        let sk = get_s(item, "SK").unwrap_or_default();
        let unreadable = if let Some(user_id) = pk.strip_prefix("USER#")
            && sk.starts_with("LEDGER#")
        {
            match parse_ledger_line(user_id, item) {
                Some(line) => {
                    records.ledger.push(line);
                    return;
                }
                None => "ledger line",
            }
        } else if pk.starts_with("CACHE#") && sk == "RESULT" {
            match self.parse_entry(item) {
                Some(entry) => {
                    records.entries.push(entry);
                    return;
                }
                None => "cache entry",
            }
        } else if pk.starts_with("JOB#") && sk == "METADATA" {
            match parse_job(item) {
                Some(job) => {
                    records.jobs.push(job);
                    return;
                }
                None => "job",
            }
        } else {
            return;
        };
        tracing::warn!(
            pk,
            sk,
            kind = unreadable,
            "unreadable item left out of the usage report"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::item::{job_item, ledger_item};
    use super::super::{key, n, s, user_pk};
    use super::*;
    use crate::domain::{
        CacheEntry, CacheKey, EntryStatus, Job, JobStatus, LedgerLine, LedgerReason, MediaType,
    };
    use aws_sdk_dynamodb::Client;
    use chrono::{DateTime, Duration, TimeZone, Utc};

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()
    }

    /// A store that is never sent a request.
    fn store() -> DynamoStore {
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version_latest()
            .build();
        DynamoStore::new(Client::from_conf(config), "table", "s3://bucket/")
    }

    fn video_key() -> CacheKey {
        CacheKey::of(MediaType::Video, &serde_json::json!({ "prompt": "x" }))
    }

    fn entry() -> CacheEntry {
        CacheEntry {
            cache_key: video_key(),
            status: EntryStatus::Ready,
            result_keys: vec!["video/a.mp4".into()],
            content_type: "video/mp4".into(),
            provider: "kling".into(),
            model: "kling-v2-5-turbo".into(),
            credits_used: 50,
            created_at: t0(),
            hit_count: 3,
            expires_at: t0() + Duration::days(7),
            request_params: r#"{"model":"kling-v2-5-turbo","prompt":"x"}"#.into(),
            job_id: None,
            lease_until: None,
        }
    }

    fn job() -> Job {
        Job {
            id: "job_1".into(),
            owner: "usr_1".into(),
            media_type: MediaType::Video,
            cache_key: video_key(),
            leader: None,
            request_id: "req_1".into(),
            credits_charged: 50,
            provider: "kling".into(),
            model: "kling-v2-5-turbo".into(),
            provider_task: None,
            status: JobStatus::Queued,
            attempts: 0,
            result_keys: Vec::new(),
            content_type: "video/mp4".into(),
            failure: None,
            request_params: r#"{"model":"kling-v2-5-turbo","prompt":"x"}"#.into(),
            save_entry: true,
            created_at: t0(),
            updated_at: t0(),
            deadline: t0() + Duration::minutes(30),
        }
    }

    fn miss_line() -> LedgerLine {
        LedgerLine {
            user_id: "usr_1".into(),
            at: t0(),
            request_id: "req_1".into(),
            amount: -50,
            reason: LedgerReason::Miss,
            cache_key: Some(video_key().to_string()),
        }
    }

    fn miss_item() -> Item {
        ledger_item(
            "usr_1",
            t0(),
            "req_1",
            -50,
            LedgerReason::Miss,
            Some(&video_key().to_string()),
        )
    }

    fn collected(items: &[Item]) -> UsageRecords {
        let store = store();
        let mut records = UsageRecords::default();
        for item in items {
            store.collect(item, &mut records);
        }
        records
    }

    #[test]
    fn ledger_lines_entries_and_jobs_are_collected_with_the_user_of_their_key() {
        let store = store();
        let records = collected(&[miss_item(), store.entry_item(&entry()), job_item(&job())]);

        assert_eq!(records.ledger, vec![miss_line()]);
        assert_eq!(records.entries, vec![entry()]);
        assert_eq!(records.jobs, vec![job()]);
    }

    #[test]
    fn items_of_other_kinds_are_skipped() {
        let mut profile = key(user_pk("usr_1"), "PROFILE");
        profile.insert("credits_remaining".into(), n(5));
        let mut api_key = key("APIKEY#abc".into(), "LOOKUP");
        api_key.insert("user_id".into(), s("usr_1"));
        let mut follower = key("JOB#job_1".into(), "FOLLOWER#job_2");
        follower.insert("job_id".into(), s("job_2"));
        let others = [
            profile,
            api_key,
            follower,
            key(user_pk("usr_1"), "REFUND#req_1"),
            key("IDEMPOTENCY#usr_1#k".into(), "REQUEST"),
        ];

        let records = collected(&others);

        assert!(records.ledger.is_empty() && records.entries.is_empty() && records.jobs.is_empty());
    }

    #[test]
    fn an_unreadable_item_is_skipped_and_the_others_kept() {
        let mut no_amount = miss_item();
        no_amount.remove("amount");
        let mut unknown_reason = miss_item();
        unknown_reason.insert("reason".into(), s("gift"));
        let mut no_status = store().entry_item(&entry());
        no_status.remove("status");
        let mut no_owner = job_item(&job());
        no_owner.remove("owner");

        let records = collected(&[no_amount, unknown_reason, no_status, no_owner, miss_item()]);

        assert_eq!(records.ledger, vec![miss_line()]);
        assert!(records.entries.is_empty() && records.jobs.is_empty());
    }
}
