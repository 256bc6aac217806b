//! The service's metrics: one set of names on both runtimes, recorded through the `metrics`
//! facade. `serve` installs a Prometheus recorder (`GET /metrics`); each Lambda function installs
//! an embedded-metric-format recorder that writes its lines to the log after every invocation.
//! With no recorder installed (tests, tools) every call here is a no-op.
//!
//! Nothing here touches a store: a hit's metrics are a few in-memory counter updates.
//!
//! | name | labels | what |
//! | --- | --- | --- |
//! | `mediacache_requests_total` | `media_type`, `outcome` | media requests answered: `hit`, `miss`, `coalesced`, `bypass`, `error` (replays of an idempotent request are not counted again) |
//! | `mediacache_errors_total` | `media_type`, `code` | error answers by their stable code |
//! | `mediacache_credits_charged_total` | `media_type` | credits charged (hits, misses, joins) |
//! | `mediacache_credits_refunded_total` | `media_type` | credits given back for generations that failed |
//! | `mediacache_credits_saved_total` | `media_type` | the miss price of each hit or delivered join, less what it was charged |
//! | `mediacache_provider_calls_total` | `provider`, `result` | generation calls: `ok`, `rejected` (the provider refused the request), `error` |
//! | `mediacache_provider_latency_seconds` | `provider` | generation call latency (histogram) |
//! | `mediacache_jobs_total` | `media_type`, `status` | jobs `started`, `completed`, `failed` (leaders: one per provider generation) |
//! | `mediacache_job_duration_seconds` | `media_type`, `status` | from a job's start to its end (histogram) |
//! | `mediacache_store_retries_total` | `operation` | store calls retried after a conflict, throttle or 5xx |
//! | `mediacache_queue_depth` | | messages waiting in the job queue (`serve`) |
//! | `mediacache_dead_letters` | | messages moved to the dead-letter queue (`serve`) |

use crate::domain::MediaType;
use crate::ports::ProviderError;
use std::time::Duration;

/// The CloudWatch namespace of the Lambda functions' metrics.
pub const NAMESPACE: &str = "MediaCache";

/// Media requests answered, by media type and outcome.
pub const REQUESTS: &str = "mediacache_requests_total";
/// Error answers, by media type and code.
pub const ERRORS: &str = "mediacache_errors_total";
/// Credits charged.
pub const CREDITS_CHARGED: &str = "mediacache_credits_charged_total";
/// Credits refunded.
pub const CREDITS_REFUNDED: &str = "mediacache_credits_refunded_total";
/// Credits the cache saved its callers.
pub const CREDITS_SAVED: &str = "mediacache_credits_saved_total";
/// Provider generation calls, by provider and result.
pub const PROVIDER_CALLS: &str = "mediacache_provider_calls_total";
/// Provider generation call latency.
pub const PROVIDER_LATENCY: &str = "mediacache_provider_latency_seconds";
/// Jobs by status.
pub const JOBS: &str = "mediacache_jobs_total";
/// Time from a job's start to its end.
pub const JOB_DURATION: &str = "mediacache_job_duration_seconds";
/// Store calls retried.
pub const STORE_RETRIES: &str = "mediacache_store_retries_total";
/// Messages waiting in the job queue.
pub const QUEUE_DEPTH: &str = "mediacache_queue_depth";
/// Messages moved to the dead-letter queue.
pub const DEAD_LETTERS: &str = "mediacache_dead_letters";

/// Every metric name, for checks that dashboards and alarms use only these.
pub const ALL: [&str; 12] = [
    REQUESTS,
    ERRORS,
    CREDITS_CHARGED,
    CREDITS_REFUNDED,
    CREDITS_SAVED,
    PROVIDER_CALLS,
    PROVIDER_LATENCY,
    JOBS,
    JOB_DURATION,
    STORE_RETRIES,
    QUEUE_DEPTH,
    DEAD_LETTERS,
];

/// How a media request was answered, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served from the cache.
    Hit,
    /// Generated because nothing was cached.
    Miss,
    /// Joined an identical request in flight.
    Coalesced,
    /// Generated because the client asked to skip the cache.
    Bypass,
    /// Answered with an error.
    Error,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
            Outcome::Bypass => "bypass",
            Outcome::Error => "error",
        }
    }
}

/// Describes every metric once (units and help texts), after a recorder is installed.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(REQUESTS, Unit::Count, "Media requests answered, by outcome");
    describe_counter!(ERRORS, Unit::Count, "Error answers, by stable code");
    describe_counter!(CREDITS_CHARGED, Unit::Count, "Credits charged");
    describe_counter!(CREDITS_REFUNDED, Unit::Count, "Credits refunded");
    describe_counter!(
        CREDITS_SAVED,
        Unit::Count,
        "Miss price of each hit or delivered join, less what it was charged"
    );
    describe_counter!(PROVIDER_CALLS, Unit::Count, "Provider generation calls");
    describe_histogram!(
        PROVIDER_LATENCY,
        Unit::Seconds,
        "Provider generation call latency"
    );
    describe_counter!(JOBS, Unit::Count, "Jobs started, completed and failed");
    describe_histogram!(JOB_DURATION, Unit::Seconds, "Job start to end");
    describe_counter!(STORE_RETRIES, Unit::Count, "Store calls retried");
    describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "Messages waiting in the job queue"
    );
    describe_gauge!(
        DEAD_LETTERS,
        Unit::Count,
        "Messages in the dead-letter queue"
    );
}

/// A media request answered: its outcome, and its error code when it failed.
pub fn request(media_type: MediaType, outcome: Outcome, error_code: Option<&'static str>) {
    let media_type = media_type.as_str();
    metrics::counter!(REQUESTS, "media_type" => media_type, "outcome" => outcome.as_str())
        .increment(1);
    if let Some(code) = error_code {
        metrics::counter!(ERRORS, "media_type" => media_type, "code" => code).increment(1);
    }
}

/// Credits charged (a committed charge).
pub fn charged(media_type: MediaType, credits: u64) {
    metrics::counter!(CREDITS_CHARGED, "media_type" => media_type.as_str()).increment(credits);
}

/// Credits refunded (a refund applied, not a repeated one).
pub fn refunded(media_type: MediaType, credits: u64) {
    metrics::counter!(CREDITS_REFUNDED, "media_type" => media_type.as_str()).increment(credits);
}

/// Credits saved: a hit charged, or a join delivered.
pub fn saved(media_type: MediaType, miss_price: u64, charged: u64) {
    metrics::counter!(CREDITS_SAVED, "media_type" => media_type.as_str())
        .increment(miss_price.saturating_sub(charged));
}

/// A provider generation call that took `latency`.
pub fn provider_call<T>(provider: &str, result: &Result<T, ProviderError>, latency: Duration) {
    let result = match result {
        Ok(_) => "ok",
        Err(ProviderError::Rejected { .. }) => "rejected",
        Err(_) => "error",
    };
    // Provider names are a fixed set (the adapters' `name()`), so labels stay bounded.
    let provider = provider.to_owned();
    metrics::counter!(PROVIDER_CALLS, "provider" => provider.clone(), "result" => result)
        .increment(1);
    metrics::histogram!(PROVIDER_LATENCY, "provider" => provider).record(latency.as_secs_f64());
}

/// A job's status changed: `started`, `completed` or `failed`, with the time since it started
/// when it ended.
pub fn job(media_type: MediaType, status: &'static str, ran_for: Option<Duration>) {
    let media_type = media_type.as_str();
    metrics::counter!(JOBS, "media_type" => media_type, "status" => status).increment(1);
    if let Some(d) = ran_for {
        metrics::histogram!(JOB_DURATION, "media_type" => media_type, "status" => status)
            .record(d.as_secs_f64());
    }
}

/// A store call about to be retried.
pub fn store_retry(operation: &'static str) {
    metrics::counter!(STORE_RETRIES, "operation" => operation).increment(1);
}

/// The job queue's depth and dead letters, as last seen.
pub fn queue(depth: u64, dead_letters: u64) {
    metrics::gauge!(QUEUE_DEPTH).set(depth as f64);
    metrics::gauge!(DEAD_LETTERS).set(dead_letters as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SAM template's alarms and dashboard read these metrics by name: a renamed metric
    /// would leave them watching nothing, silently.
    #[test]
    fn the_template_names_only_metrics_that_exist_and_has_its_alarms() {
        let template = include_str!("../../template.yaml");
        let mut named = 0;
        for (at, _) in template.match_indices("mediacache_") {
            let name: String = template[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            assert!(ALL.contains(&name.as_str()), "template.yaml names {name}");
            named += 1;
        }
        assert!(named > 10, "the alarms and dashboard read the metrics");
        for resource in [
            "CacheHitRateAlarm",
            "ProviderOpenAiErrorRateAlarm",
            "ProviderSunoErrorRateAlarm",
            "ProviderKlingErrorRateAlarm",
            "ApiServerErrorRateAlarm",
            "JobsDeadLetterAlarm",
            "ServiceDashboard",
        ] {
            assert!(
                template.contains(&format!("\n  {resource}:\n")),
                "template.yaml has no {resource}"
            );
        }
        assert!(template.contains(&format!("Namespace: {NAMESPACE}")));
    }
}
