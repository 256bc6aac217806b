use super::{DynamoStore, Item, get_n, get_s, iso, key, n, s, user_pk};
use crate::domain::budget::parse_day;
use crate::domain::{
    CacheEntry, CacheKey, DailySpend, EntryStatus, Job, JobFailure, JobStatus, LedgerLine,
    LedgerReason, MediaType,
};
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use std::collections::HashMap;

pub(super) fn ledger_item(
    user_id: &str,
    at: DateTime<Utc>,
    request_id: &str,
    amount: i64,
    reason: LedgerReason,
    cache_key: Option<&str>,
) -> Item {
    let at = iso(at);
    let mut item = key(
        user_pk(user_id),
        &format!("LEDGER#{at}#{request_id}#{}", reason.as_str()),
    );
    item.insert("at".into(), s(&at));
    item.insert("request_id".into(), s(request_id));
    item.insert("amount".into(), n(amount));
    item.insert("reason".into(), s(reason.as_str()));
    if let Some(cache_key) = cache_key {
        item.insert("cache_key".into(), s(cache_key));
    }
    item
}

/// A profile's daily limit and spend (`daily_limit`, `spent_day` as YYYY-MM-DD, `spent_today`);
/// None when `spent_day` is not a day (corrupt: never read as "no day", a fresh budget).
pub(super) fn spend_of(profile: &Item) -> Option<DailySpend> {
    let day = match get_s(profile, "spent_day") {
        Some(day) => Some(parse_day(day)?),
        None => None,
    };
    Some(DailySpend {
        limit: get_n(profile, "daily_limit"),
        day,
        spent: get_n(profile, "spent_today").unwrap_or(0),
    })
}

impl DynamoStore {
    pub(super) fn entry_item(&self, e: &CacheEntry) -> Item {
        let mut item = key(e.cache_key.to_string(), "RESULT");
        let locations: Vec<String> = e
            .result_keys
            .iter()
            .map(|k| format!("{}{k}", self.location_prefix))
            .collect();
        if let Some(first) = locations.first() {
            item.insert("result_url".into(), s(first));
        }
        if locations.len() > 1 {
            // Several images: all locations, in order (`result_url` holds the first).
            item.insert(
                "result_urls".into(),
                AttributeValue::L(locations.into_iter().map(s).collect()),
            );
        }
        item.insert("provider".into(), s(&e.provider));
        item.insert("credits_used".into(), n(e.credits_used));
        item.insert("created_at".into(), s(iso(e.created_at)));
        item.insert("hit_count".into(), n(e.hit_count));
        item.insert("ttl".into(), n(e.expires_at.timestamp()));
        item.insert("request_params".into(), s(&e.request_params));
        item.insert("status".into(), s(e.status.as_str()));
        item.insert("content_type".into(), s(&e.content_type));
        if let Some(job) = &e.job_id {
            item.insert("job_id".into(), s(job));
        }
        if let Some(lease) = e.lease_until {
            item.insert("lease_until".into(), n(lease.timestamp()));
        }
        item
    }

    /// Reads an entry item; None when it is not of the expected shape (treated as a miss).
    pub(super) fn parse_entry(&self, item: &Item) -> Option<CacheEntry> {
        let locations: Vec<&str> = match item.get("result_urls").and_then(|v| v.as_l().ok()) {
            Some(list) => list
                .iter()
                .filter_map(|v| v.as_s().ok().map(String::as_str))
                .collect(),
            None => get_s(item, "result_url").into_iter().collect(),
        };
        let result_keys = locations
            .iter()
            .map(|l| l.strip_prefix(&self.location_prefix).map(str::to_owned))
            .collect::<Option<Vec<_>>>()?;
        let request_params = get_s(item, "request_params")?.to_owned();
        let model = serde_json::from_str::<serde_json::Value>(&request_params)
            .ok()
            .and_then(|v| v.get("model")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        Some(CacheEntry {
            cache_key: CacheKey::parse(get_s(item, "PK")?)?,
            status: EntryStatus::parse(get_s(item, "status")?)?,
            result_keys,
            content_type: get_s(item, "content_type")?.to_owned(),
            provider: get_s(item, "provider")?.to_owned(),
            model,
            credits_used: get_n(item, "credits_used")?,
            created_at: DateTime::parse_from_rfc3339(get_s(item, "created_at")?)
                .ok()?
                .with_timezone(&Utc),
            hit_count: get_n(item, "hit_count").unwrap_or(0),
            expires_at: DateTime::from_timestamp(get_n(item, "ttl")?, 0)?,
            request_params,
            job_id: get_s(item, "job_id").map(str::to_owned),
            lease_until: get_n(item, "lease_until").and_then(|t| DateTime::from_timestamp(t, 0)),
        })
    }
}

pub(super) fn job_key(job_id: &str) -> Item {
    key(format!("JOB#{job_id}"), "METADATA")
}

pub(super) fn job_item(j: &Job) -> Item {
    let mut item = job_key(&j.id);
    item.insert("owner".into(), s(&j.owner));
    item.insert("media_type".into(), s(j.media_type.as_str()));
    item.insert("cache_key".into(), s(j.cache_key.to_string()));
    if let Some(leader) = &j.leader {
        item.insert("leader".into(), s(leader));
    }
    item.insert("request_id".into(), s(&j.request_id));
    item.insert("credits_charged".into(), n(j.credits_charged));
    item.insert("provider".into(), s(&j.provider));
    item.insert("model".into(), s(&j.model));
    if let Some(task) = &j.provider_task {
        item.insert("provider_task".into(), s(task));
    }
    item.insert("status".into(), s(j.status.as_str()));
    item.insert("attempts".into(), n(j.attempts));
    item.insert(
        "result_keys".into(),
        AttributeValue::L(j.result_keys.iter().map(s).collect()),
    );
    item.insert("content_type".into(), s(&j.content_type));
    if let Some(failure) = &j.failure {
        item.insert("failure_code".into(), s(&failure.code));
        item.insert("failure_message".into(), s(&failure.message));
    }
    item.insert("request_params".into(), s(&j.request_params));
    item.insert("save_entry".into(), AttributeValue::Bool(j.save_entry));
    item.insert("created_at".into(), s(iso(j.created_at)));
    item.insert("updated_at".into(), s(iso(j.updated_at)));
    item.insert("deadline".into(), s(iso(j.deadline)));
    item.insert("ttl".into(), n(j.expires_at().timestamp()));
    item
}

pub(super) fn parse_job(item: &Item) -> Option<Job> {
    let time = |name: &str| {
        DateTime::parse_from_rfc3339(get_s(item, name)?)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    };
    let failure = match (get_s(item, "failure_code"), get_s(item, "failure_message")) {
        (Some(code), message) => Some(JobFailure::new(code, message.unwrap_or_default())),
        _ => None,
    };
    Some(Job {
        id: get_s(item, "PK")?.strip_prefix("JOB#")?.to_owned(),
        owner: get_s(item, "owner")?.to_owned(),
        media_type: MediaType::parse(get_s(item, "media_type")?)?,
        cache_key: CacheKey::parse(get_s(item, "cache_key")?)?,
        leader: get_s(item, "leader").map(str::to_owned),
        request_id: get_s(item, "request_id")?.to_owned(),
        credits_charged: get_n(item, "credits_charged")?,
        provider: get_s(item, "provider")?.to_owned(),
        model: get_s(item, "model")?.to_owned(),
        provider_task: get_s(item, "provider_task").map(str::to_owned),
        status: JobStatus::parse(get_s(item, "status")?)?,
        attempts: get_n(item, "attempts").unwrap_or(0),
        result_keys: item
            .get("result_keys")
            .and_then(|v| v.as_l().ok())
            .map(|l| {
                l.iter()
                    .filter_map(|v| v.as_s().ok().cloned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
        content_type: get_s(item, "content_type")?.to_owned(),
        failure,
        request_params: get_s(item, "request_params")?.to_owned(),
        save_entry: item
            .get("save_entry")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(true),
        created_at: time("created_at")?,
        updated_at: time("updated_at")?,
        deadline: time("deadline")?,
    })
}

/// A condition that holds while an item is exactly `old` (every attribute equal): a
/// compare-and-swap for items too broken to reason about.
pub(super) fn unchanged(
    old: &Item,
) -> (
    String,
    HashMap<String, String>,
    HashMap<String, AttributeValue>,
) {
    let mut clauses = Vec::with_capacity(old.len());
    let mut names = HashMap::new();
    let mut values = HashMap::new();
    for (i, (name, value)) in old.iter().enumerate() {
        clauses.push(format!("#u{i} = :u{i}"));
        names.insert(format!("#u{i}"), name.clone());
        values.insert(format!(":u{i}"), value.clone());
    }
    (clauses.join(" AND "), names, values)
}

/// Reads a ledger item of `user_id`; None when it is not of the expected shape.
pub(super) fn parse_ledger_line(user_id: &str, item: &Item) -> Option<LedgerLine> {
    Some(LedgerLine {
        user_id: user_id.to_owned(),
        at: DateTime::parse_from_rfc3339(get_s(item, "at")?)
            .ok()?
            .with_timezone(&Utc),
        request_id: get_s(item, "request_id")?.to_owned(),
        amount: get_n(item, "amount")?,
        reason: LedgerReason::parse(get_s(item, "reason")?)?,
        cache_key: get_s(item, "cache_key").map(str::to_owned),
    })
}
