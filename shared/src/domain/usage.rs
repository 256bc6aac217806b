//! What the cache saved, computed from the ledger: the report `mediactl stats` prints and the
//! dashboard draws. The ledger is the truth (every credit that moved has its line), so the report
//! agrees with the balances by construction.
//!
//! - A *hit* is a line charged at the hit price (a hit, or a join of an identical request in
//!   flight) that was not refunded: each one is a provider call avoided.
//! - A *miss* is a line charged at the full price (misses and `no-cache` bypasses), refunded or
//!   not: the provider was called either way.
//! - *Credits saved* by a hit: the key's full price (the entry's `credits_used`, or the price its
//!   miss line paid) less what the hit was charged.
//! - *Credits charged* is net: charges less refunds.

use super::{
    CacheEntry, CacheKey, EntryStatus, Job, JobStatus, LedgerLine, LedgerReason, MediaType,
};
use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Media types in the order reports list them.
const MEDIA_TYPES: [MediaType; 4] = [
    MediaType::Tts,
    MediaType::Image,
    MediaType::Music,
    MediaType::Video,
];

/// How many keys the report names.
const TOP_KEYS: usize = 10;

/// Time buckets of the series, by the span they cover: the first whose 60 buckets cover it.
const BUCKETS: [i64; 7] = [60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400];

/// The usage report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageReport {
    /// When it was made.
    pub generated_at: DateTime<Utc>,
    /// The ledger lines it covers start here (all of them when None).
    pub since: Option<DateTime<Utc>>,
    /// Where it was read: `sqlite:{path}` or `dynamodb:{table}`.
    pub source: String,
    /// Width of the series' buckets.
    pub bucket_seconds: i64,
    /// All media types together.
    pub totals: UsageFigures,
    /// Per media type: tts, image, music, video.
    pub media_types: Vec<MediaUsage>,
    /// The keys with the most hits.
    pub top_keys: Vec<KeyUsage>,
    /// Provider generations (leader jobs).
    pub jobs: JobCounts,
    /// Hits, misses and savings over time, oldest first.
    pub series: Vec<UsageBucket>,
    /// What reading the store cost, where reads are paid for.
    pub read: Option<ReadCost>,
}

/// The figures of one media type, or of all.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageFigures {
    /// Hits and misses.
    pub requests: u64,
    /// Served from the cache or shared with an identical request in flight, not refunded.
    pub hits: u64,
    /// Charged at the full price (the provider was called), refunded or not.
    pub misses: u64,
    /// hits / requests (0 without requests).
    pub hit_rate: f64,
    /// Charges less refunds.
    pub credits_charged: u64,
    /// Refunds.
    pub credits_refunded: u64,
    /// What the hits saved against generating each one.
    pub credits_saved: u64,
    /// What the same requests cost without the cache: charged + saved.
    pub credits_without_cache: u64,
    /// saved / without cache, in percent.
    pub saved_percent: f64,
    /// Provider calls the hits made unnecessary.
    pub provider_calls_avoided: u64,
    /// READY entries not expired.
    pub entries_live: u64,
}

/// One media type's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MediaUsage {
    /// Which.
    pub media_type: MediaType,
    /// Its figures.
    #[serde(flatten)]
    pub figures: UsageFigures,
}

/// A key's hits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyUsage {
    /// `CACHE#{type}#{hash}`.
    pub cache_key: String,
    /// Its media type.
    pub media_type: MediaType,
    /// Hits in the period.
    pub hits: u64,
    /// What they saved.
    pub credits_saved: u64,
}

/// Provider generations by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct JobCounts {
    /// Queued or processing now.
    pub in_flight: u64,
    /// Completed in the period.
    pub completed: u64,
    /// Failed (and refunded) in the period.
    pub failed: u64,
}

/// One bucket of the series.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageBucket {
    /// Its start.
    pub start: DateTime<Utc>,
    /// Hits in it.
    pub hits: u64,
    /// Misses in it.
    pub misses: u64,
    /// Credits saved in it.
    pub credits_saved: u64,
}

/// What a scan of the store read and, where reads are paid for, cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ReadCost {
    /// Items read.
    pub items: u64,
    /// Pages (requests) it took.
    pub pages: u64,
    /// Read capacity units consumed (DynamoDB).
    pub capacity_units: f64,
}

/// Everything a report is computed from: the whole ledger (older lines give the prices of keys
/// hit in the period), the stored entries and jobs.
#[derive(Debug, Clone, Default)]
pub struct UsageRecords {
    /// Every ledger line of every user.
    pub ledger: Vec<LedgerLine>,
    /// Every stored cache entry (expired ones too, until the store deletes them).
    pub entries: Vec<CacheEntry>,
    /// Every stored job.
    pub jobs: Vec<Job>,
    /// What reading them cost.
    pub read: Option<ReadCost>,
}

impl UsageReport {
    /// The report of `records` from `since` (everything when None) up to `now`.
    pub fn of(
        records: &UsageRecords,
        since: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        source: &str,
    ) -> Self {
        let in_period = |at: DateTime<Utc>| since.is_none_or(|s| at >= s);
        let refunded: HashSet<(&str, &str)> = records
            .ledger
            .iter()
            .filter(|l| l.reason == LedgerReason::Refund)
            .map(|l| (l.user_id.as_str(), l.request_id.as_str()))
            .collect();
        let prices = full_prices(records);

        let start = since
            .or_else(|| records.ledger.iter().map(|l| l.at).min())
            .unwrap_or(now);
        let bucket_seconds = bucket_width(now - start);
        let bucket = Duration::seconds(bucket_seconds);
        let first = start.duration_trunc(bucket).unwrap_or(start);
        let mut series: BTreeMap<DateTime<Utc>, UsageBucket> = BTreeMap::new();
        let mut at = first;
        while at <= now {
            series.insert(
                at,
                UsageBucket {
                    start: at,
                    ..UsageBucket::default()
                },
            );
            at += bucket;
        }

        let mut figures: HashMap<MediaType, UsageFigures> = HashMap::new();
        let mut keys: HashMap<&str, KeyUsage> = HashMap::new();
        for line in records.ledger.iter().filter(|l| in_period(l.at)) {
            let Some(key) = line.cache_key.as_deref().and_then(CacheKey::parse) else {
                continue; // grants
            };
            let media_type = key.media_type();
            let f = figures.entry(media_type).or_default();
            let slot = line
                .at
                .duration_trunc(bucket)
                .ok()
                .and_then(|b| series.get_mut(&b));
            match line.reason {
                LedgerReason::Miss => {
                    f.misses += 1;
                    f.credits_charged += line.amount.unsigned_abs();
                    if let Some(b) = slot {
                        b.misses += 1;
                    }
                }
                LedgerReason::Hit => {
                    f.credits_charged += line.amount.unsigned_abs();
                    if refunded.contains(&(line.user_id.as_str(), line.request_id.as_str())) {
                        continue;
                    }
                    let charged = line.amount.unsigned_abs();
                    let saved = prices
                        .get(line.cache_key.as_deref().unwrap_or_default())
                        .map_or(0, |price| price.saturating_sub(charged));
                    f.hits += 1;
                    f.credits_saved += saved;
                    let k = keys
                        .entry(line.cache_key.as_deref().unwrap_or_default())
                        .or_insert_with(|| KeyUsage {
                            cache_key: key.to_string(),
                            media_type,
                            hits: 0,
                            credits_saved: 0,
                        });
                    k.hits += 1;
                    k.credits_saved += saved;
                    if let Some(b) = slot {
                        b.hits += 1;
                        b.credits_saved += saved;
                    }
                }
                LedgerReason::Refund => {
                    f.credits_refunded += line.amount.unsigned_abs();
                }
                LedgerReason::Grant => {}
            }
        }
        for entry in &records.entries {
            if entry.status == EntryStatus::Ready && entry.expires_at > now {
                figures
                    .entry(entry.cache_key.media_type())
                    .or_default()
                    .entries_live += 1;
            }
        }

        let mut totals = UsageFigures::default();
        let media_types = MEDIA_TYPES
            .iter()
            .map(|&media_type| {
                let mut f = figures.remove(&media_type).unwrap_or_default();
                f.credits_charged = f.credits_charged.saturating_sub(f.credits_refunded);
                totals.hits += f.hits;
                totals.misses += f.misses;
                totals.credits_charged += f.credits_charged;
                totals.credits_refunded += f.credits_refunded;
                totals.credits_saved += f.credits_saved;
                totals.entries_live += f.entries_live;
                MediaUsage {
                    media_type,
                    figures: f.finished(),
                }
            })
            .collect();

        let mut top_keys: Vec<KeyUsage> = keys.into_values().collect();
        top_keys.sort_by(|a, b| b.hits.cmp(&a.hits).then(a.cache_key.cmp(&b.cache_key)));
        top_keys.truncate(TOP_KEYS);

        let mut jobs = JobCounts::default();
        for job in records.jobs.iter().filter(|j| j.leader.is_none()) {
            match job.status {
                JobStatus::Queued | JobStatus::Processing => jobs.in_flight += 1,
                JobStatus::Completed if in_period(job.updated_at) => jobs.completed += 1,
                JobStatus::Failed if in_period(job.updated_at) => jobs.failed += 1,
                JobStatus::Completed | JobStatus::Failed => {}
            }
        }

        UsageReport {
            generated_at: now,
            since,
            source: source.to_owned(),
            bucket_seconds,
            totals: totals.finished(),
            media_types,
            top_keys,
            jobs,
            series: series.into_values().collect(),
            read: records.read,
        }
    }
}

impl UsageFigures {
    /// Fills in what follows from the counts.
    fn finished(mut self) -> Self {
        self.requests = self.hits + self.misses;
        self.hit_rate = ratio(self.hits, self.requests);
        self.provider_calls_avoided = self.hits;
        self.credits_without_cache = self.credits_charged + self.credits_saved;
        self.saved_percent = 100.0 * ratio(self.credits_saved, self.credits_without_cache);
        self
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The full price of each key: the stored entry's, else the highest miss line's.
fn full_prices(records: &UsageRecords) -> HashMap<String, u64> {
    let mut prices: HashMap<String, u64> = HashMap::new();
    for line in &records.ledger {
        if let (LedgerReason::Miss, Some(key)) = (line.reason, &line.cache_key) {
            let price = prices.entry(key.clone()).or_default();
            *price = (*price).max(line.amount.unsigned_abs());
        }
    }
    for entry in &records.entries {
        prices.insert(entry.cache_key.to_string(), entry.credits_used);
    }
    prices
}

/// The narrowest bucket width whose 60 buckets cover `span`.
fn bucket_width(span: Duration) -> i64 {
    BUCKETS
        .into_iter()
        .find(|w| span.num_seconds() <= w * 60)
        .unwrap_or(BUCKETS[BUCKETS.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()
    }

    fn key(media_type: MediaType, n: u32) -> CacheKey {
        CacheKey::of(media_type, &serde_json::json!({ "n": n }))
    }

    fn line(
        user: &str,
        request: &str,
        reason: LedgerReason,
        amount: i64,
        key: &CacheKey,
        at: DateTime<Utc>,
    ) -> LedgerLine {
        LedgerLine {
            user_id: user.into(),
            at,
            request_id: request.into(),
            amount,
            reason,
            cache_key: Some(key.to_string()),
        }
    }

    fn miss(user: &str, request: &str, key: &CacheKey, price: i64) -> LedgerLine {
        line(user, request, LedgerReason::Miss, -price, key, t0())
    }

    fn hit(user: &str, request: &str, key: &CacheKey, price: i64) -> LedgerLine {
        line(user, request, LedgerReason::Hit, -price, key, t0())
    }

    fn refund(user: &str, request: &str, key: &CacheKey, amount: i64) -> LedgerLine {
        line(user, request, LedgerReason::Refund, amount, key, t0())
    }

    fn grant(user: &str, amount: i64) -> LedgerLine {
        LedgerLine {
            user_id: user.into(),
            at: t0(),
            request_id: "req_grant".into(),
            amount,
            reason: LedgerReason::Grant,
            cache_key: None,
        }
    }

    fn entry(key: &CacheKey, credits_used: u64) -> CacheEntry {
        CacheEntry {
            cache_key: key.clone(),
            status: EntryStatus::Ready,
            result_keys: vec!["tts/a.mp3".into()],
            content_type: "audio/mpeg".into(),
            provider: "openai".into(),
            model: "tts-1".into(),
            credits_used,
            created_at: t0(),
            hit_count: 0,
            expires_at: t0() + Duration::days(7),
            request_params: "{}".into(),
            job_id: None,
            lease_until: None,
        }
    }

    fn job(id: &str, leader: Option<&str>, status: JobStatus, updated_at: DateTime<Utc>) -> Job {
        Job {
            id: id.into(),
            owner: "usr_a".into(),
            media_type: MediaType::Video,
            cache_key: key(MediaType::Video, 0),
            leader: leader.map(Into::into),
            request_id: format!("req_{id}"),
            credits_charged: 50,
            provider: "kling".into(),
            model: "kling-v2-5-turbo".into(),
            provider_task: None,
            status,
            attempts: 0,
            result_keys: Vec::new(),
            content_type: "video/mp4".into(),
            failure: None,
            request_params: "{}".into(),
            save_entry: true,
            created_at: t0() - Duration::hours(2),
            updated_at,
            deadline: t0() + Duration::hours(1),
        }
    }

    fn ledger(lines: Vec<LedgerLine>) -> UsageRecords {
        UsageRecords {
            ledger: lines,
            ..UsageRecords::default()
        }
    }

    /// The report of everything, made an hour after `t0`.
    fn report(records: &UsageRecords) -> UsageReport {
        UsageReport::of(records, None, t0() + Duration::hours(1), "test")
    }

    fn of(report: &UsageReport, media_type: MediaType) -> &UsageFigures {
        &report
            .media_types
            .iter()
            .find(|m| m.media_type == media_type)
            .unwrap()
            .figures
    }

    #[test]
    fn hits_and_misses_are_counted_per_media_type() {
        let (tts, image, video) = (
            key(MediaType::Tts, 1),
            key(MediaType::Image, 1),
            key(MediaType::Video, 1),
        );
        let report = report(&ledger(vec![
            grant("usr_a", 100),
            miss("usr_a", "r1", &tts, 4),
            hit("usr_b", "r2", &tts, 1),
            hit("usr_c", "r3", &tts, 1),
            miss("usr_a", "r4", &image, 10),
            hit("usr_b", "r5", &image, 1),
            miss("usr_a", "r6", &video, 50),
        ]));

        let counts = |m| {
            let f = of(&report, m);
            (f.requests, f.hits, f.misses)
        };
        assert_eq!(counts(MediaType::Tts), (3, 2, 1));
        assert_eq!(counts(MediaType::Image), (2, 1, 1));
        assert_eq!(counts(MediaType::Video), (1, 0, 1));
        assert_eq!(counts(MediaType::Music), (0, 0, 0));
        assert_eq!(
            (
                report.totals.requests,
                report.totals.hits,
                report.totals.misses
            ),
            (6, 3, 3),
            "the grant is no request"
        );
        assert_eq!(report.totals.hit_rate, 0.5);
        assert_eq!(report.totals.provider_calls_avoided, 3);
        assert!((of(&report, MediaType::Tts).hit_rate - 2.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn a_refunded_join_is_neither_a_hit_nor_saved_and_its_credits_are_netted_out() {
        let video = key(MediaType::Video, 1);
        let report = report(&ledger(vec![
            miss("usr_leader", "r1", &video, 50),
            hit("usr_follower", "r2", &video, 1),
            refund("usr_follower", "r2", &video, 1),
        ]));

        let f = of(&report, MediaType::Video);
        assert_eq!((f.hits, f.misses), (0, 1));
        assert_eq!(f.credits_saved, 0);
        assert_eq!(f.credits_refunded, 1);
        assert_eq!(f.credits_charged, 50, "51 charged, 1 refunded");
        assert!(report.top_keys.is_empty());
    }

    #[test]
    fn a_refund_cancels_only_the_hit_of_its_own_user_and_request() {
        let tts = key(MediaType::Tts, 1);
        let report = report(&ledger(vec![
            miss("usr_a", "r1", &tts, 4),
            hit("usr_b", "r2", &tts, 1),
            hit("usr_c", "r3", &tts, 1),
            // Same request id as usr_b's hit, another user: not its refund.
            refund("usr_c", "r2", &tts, 1),
            // Same user as usr_c's hit, another request.
            refund("usr_c", "r9", &tts, 1),
        ]));

        assert_eq!(report.totals.hits, 2);
        assert_eq!(report.totals.credits_saved, 6);
    }

    #[test]
    fn a_refunded_miss_is_still_a_miss_and_nets_to_nothing_charged() {
        let video = key(MediaType::Video, 1);
        let report = report(&ledger(vec![
            miss("usr_a", "r1", &video, 50),
            refund("usr_a", "r1", &video, 50),
        ]));

        let f = of(&report, MediaType::Video);
        assert_eq!(f.misses, 1, "the provider was called");
        assert_eq!((f.credits_charged, f.credits_refunded), (0, 50));
    }

    #[test]
    fn saved_is_the_entry_price_less_the_hit_price() {
        let tts = key(MediaType::Tts, 1);
        let records = UsageRecords {
            // An older miss paid 4; the entry stored now says 5.
            ledger: vec![miss("usr_a", "r1", &tts, 4), hit("usr_b", "r2", &tts, 1)],
            entries: vec![entry(&tts, 5)],
            ..UsageRecords::default()
        };

        let report = report(&records);
        assert_eq!(report.totals.credits_saved, 4);
        assert_eq!(report.totals.credits_charged, 5);
        assert_eq!(report.totals.credits_without_cache, 9);
        assert!((report.totals.saved_percent - 100.0 * 4.0 / 9.0).abs() < 1e-9);
    }

    #[test]
    fn saved_falls_back_to_the_highest_miss_price_when_the_entry_is_gone() {
        let tts = key(MediaType::Tts, 1);
        let report = report(&ledger(vec![
            miss("usr_a", "r1", &tts, 6),
            miss("usr_a", "r2", &tts, 4),
            hit("usr_b", "r3", &tts, 1),
        ]));

        assert_eq!(report.totals.credits_saved, 5);
    }

    #[test]
    fn a_hit_without_an_entry_or_a_miss_line_saves_nothing() {
        let tts = key(MediaType::Tts, 1);
        let report = report(&ledger(vec![hit("usr_b", "r1", &tts, 1)]));

        assert_eq!((report.totals.hits, report.totals.credits_saved), (1, 0));
    }

    #[test]
    fn since_excludes_older_lines_but_an_older_miss_still_gives_the_price() {
        let tts = key(MediaType::Tts, 1);
        let at = |minutes| t0() + Duration::minutes(minutes);
        let records = ledger(vec![
            line("usr_a", "r1", LedgerReason::Miss, -4, &tts, at(-120)),
            line("usr_b", "r2", LedgerReason::Hit, -1, &tts, at(-60)),
            line("usr_b", "r3", LedgerReason::Hit, -1, &tts, at(10)),
        ]);

        let report = UsageReport::of(&records, Some(t0()), at(60), "test");
        assert_eq!((report.totals.hits, report.totals.misses), (1, 0));
        assert_eq!(report.totals.credits_charged, 1);
        assert_eq!(report.totals.credits_saved, 3);
    }

    #[test]
    fn top_keys_are_the_most_hit_first_at_most_ten() {
        let mut lines = Vec::new();
        for n in 1..=12u32 {
            let k = key(MediaType::Image, n);
            lines.push(miss("usr_a", &format!("m{n}"), &k, 10));
            for i in 0..n {
                lines.push(hit("usr_b", &format!("h{n}-{i}"), &k, 1));
            }
        }

        let report = report(&ledger(lines));
        let hits: Vec<u64> = report.top_keys.iter().map(|k| k.hits).collect();
        assert_eq!(hits, (3..=12).rev().collect::<Vec<u64>>());
        let first = &report.top_keys[0];
        assert_eq!(first.cache_key, key(MediaType::Image, 12).to_string());
        assert_eq!(first.media_type, MediaType::Image);
        assert_eq!(first.credits_saved, 12 * 9);
    }

    #[test]
    fn top_keys_with_as_many_hits_are_in_key_order() {
        let (a, b) = (key(MediaType::Tts, 1), key(MediaType::Tts, 2));
        let report = report(&ledger(vec![
            hit("usr_b", "r1", &a, 1),
            hit("usr_b", "r2", &b, 1),
        ]));

        let keys: Vec<&str> = report
            .top_keys
            .iter()
            .map(|k| k.cache_key.as_str())
            .collect();
        let mut expected = vec![a.to_string(), b.to_string()];
        expected.sort();
        assert_eq!(keys, expected);
    }

    #[test]
    fn jobs_count_leaders_only_finished_ones_in_the_period() {
        let before = t0() - Duration::hours(1);
        let records = UsageRecords {
            jobs: vec![
                job("queued", None, JobStatus::Queued, t0()),
                // In flight now, however long ago it last changed.
                job("processing", None, JobStatus::Processing, before),
                job("completed", None, JobStatus::Completed, t0()),
                job("failed", None, JobStatus::Failed, t0()),
                job("completed_before", None, JobStatus::Completed, before),
                job("failed_before", None, JobStatus::Failed, before),
                job(
                    "follower_done",
                    Some("completed"),
                    JobStatus::Completed,
                    t0(),
                ),
                job("follower_waiting", Some("queued"), JobStatus::Queued, t0()),
            ],
            ..UsageRecords::default()
        };

        let report = UsageReport::of(&records, Some(t0()), t0() + Duration::hours(1), "test");
        assert_eq!(
            report.jobs,
            JobCounts {
                in_flight: 2,
                completed: 1,
                failed: 1,
            }
        );
    }

    #[test]
    fn entries_live_are_ready_unexpired_entries_by_media_type() {
        let now = t0() + Duration::hours(1);
        let expired = CacheEntry {
            expires_at: now,
            ..entry(&key(MediaType::Tts, 2), 4)
        };
        let pending = CacheEntry {
            status: EntryStatus::Pending,
            ..entry(&key(MediaType::Tts, 3), 4)
        };
        let records = UsageRecords {
            entries: vec![
                entry(&key(MediaType::Tts, 1), 4),
                entry(&key(MediaType::Music, 1), 8),
                expired,
                pending,
            ],
            ..UsageRecords::default()
        };

        let report = UsageReport::of(&records, None, now, "test");
        assert_eq!(of(&report, MediaType::Tts).entries_live, 1);
        assert_eq!(of(&report, MediaType::Music).entries_live, 1);
        assert_eq!(report.totals.entries_live, 2);
    }

    #[test]
    fn the_bucket_width_is_the_narrowest_whose_sixty_buckets_cover_the_span() {
        assert_eq!(bucket_width(Duration::zero()), 60);
        assert_eq!(bucket_width(Duration::minutes(60)), 60);
        assert_eq!(bucket_width(Duration::minutes(61)), 300);
        assert_eq!(bucket_width(Duration::hours(2)), 300);
        assert_eq!(bucket_width(Duration::hours(60)), 3600);
        assert_eq!(bucket_width(Duration::days(3)), 6 * 3600);
        assert_eq!(bucket_width(Duration::days(60)), 86400);
        assert_eq!(bucket_width(Duration::days(1000)), 7 * 86400, "the widest");
    }

    #[test]
    fn the_series_spans_from_the_oldest_line_without_since() {
        let tts = key(MediaType::Tts, 1);
        let records = ledger(vec![line(
            "usr_a",
            "r1",
            LedgerReason::Miss,
            -4,
            &tts,
            t0() - Duration::hours(2),
        )]);

        let report = UsageReport::of(&records, None, t0(), "test");
        assert_eq!(report.bucket_seconds, 300);
        assert_eq!(
            report.series.len(),
            25,
            "two hours of five minutes, both ends"
        );
        assert_eq!(report.series[0].start, t0() - Duration::hours(2));
        assert_eq!(report.series[0].misses, 1);
    }

    #[test]
    fn series_counts_land_in_the_bucket_of_their_line() {
        let tts = key(MediaType::Tts, 1);
        let at = |seconds| t0() + Duration::seconds(seconds);
        let records = UsageRecords {
            ledger: vec![
                line("usr_a", "r1", LedgerReason::Miss, -4, &tts, at(30)),
                line("usr_b", "r2", LedgerReason::Hit, -1, &tts, at(5 * 60)),
                line("usr_b", "r3", LedgerReason::Hit, -1, &tts, at(5 * 60 + 59)),
            ],
            entries: vec![entry(&tts, 4)],
            ..UsageRecords::default()
        };

        let report = UsageReport::of(&records, Some(t0()), at(10 * 60), "test");
        assert_eq!(report.bucket_seconds, 60);
        assert_eq!(report.series.len(), 11);
        let starts: Vec<_> = report.series.iter().map(|b| b.start).collect();
        let expected: Vec<_> = (0..=10).map(|m| at(m * 60)).collect();
        assert_eq!(starts, expected, "oldest first, one a minute");
        let figures: Vec<_> = report
            .series
            .iter()
            .map(|b| (b.hits, b.misses, b.credits_saved))
            .collect();
        let mut expected = vec![(0, 0, 0); 11];
        expected[0] = (0, 1, 0);
        expected[5] = (2, 0, 6);
        assert_eq!(figures, expected);
    }

    #[test]
    fn an_empty_ledger_gives_zeros_and_no_nan() {
        let report = report(&UsageRecords::default());

        assert_eq!(report.totals, UsageFigures::default());
        assert!(!report.totals.hit_rate.is_nan() && !report.totals.saved_percent.is_nan());
        assert_eq!(report.media_types.len(), 4);
        assert!(
            report
                .media_types
                .iter()
                .all(|m| m.figures == UsageFigures::default())
        );
        assert!(report.top_keys.is_empty());
        assert_eq!(report.jobs, JobCounts::default());
        assert_eq!(report.bucket_seconds, 60);
        assert_eq!(report.series.len(), 1);
        assert_eq!(report.series[0].hits + report.series[0].misses, 0);
    }

    #[test]
    fn the_read_cost_is_passed_through() {
        let cost = ReadCost {
            items: 3,
            pages: 1,
            capacity_units: 1.5,
        };
        let records = UsageRecords {
            read: Some(cost),
            ..UsageRecords::default()
        };

        assert_eq!(report(&records).read, Some(cost));
    }
}
