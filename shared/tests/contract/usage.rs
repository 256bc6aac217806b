//! The usage scan contract: what `mediactl stats` and the dashboard read. A store may hold other
//! tests' records (the DynamoDB table is shared), so each case looks only at its own users, keys
//! and jobs.

use super::store::{
    StoreHarness, charge, entry, job, job_charge, key, pending, start, t0, video_key,
};
use chrono::{DateTime, Duration, Utc};
use media_cache::domain::usage::{JobCounts, ReadCost, UsageRecords, UsageReport};
use media_cache::domain::{
    CacheEntry, CacheKey, Charge, Job, JobStatus, LedgerLine, LedgerReason, MediaType, Refund,
};
use media_cache::ports::{Store, UsageScan};
use media_cache::service::accounts::create_user;
use serde_json::json;
use std::sync::Mutex;

/// What `given_usage` wrote.
struct Usage {
    /// Pays the misses: a TTS generation and two video jobs.
    payer: String,
    /// Hits the TTS entry twice and joins the first job, which fails.
    hitter: String,
    tts: CacheKey,
    miss: Charge,
    hits: Vec<Charge>,
    /// The first job, failed: it and its follower were refunded.
    failed: Job,
    follower: Job,
    /// The second job, in flight.
    running: Job,
}

impl Usage {
    /// The records of this case's users, keys and jobs, in the order the store returned them.
    fn mine(&self, records: &UsageRecords) -> UsageRecords {
        let users = [self.payer.as_str(), self.hitter.as_str()];
        let keys = [&self.tts, &self.failed.cache_key, &self.running.cache_key];
        let jobs = [&self.failed.id, &self.follower.id, &self.running.id];
        UsageRecords {
            ledger: records
                .ledger
                .iter()
                .filter(|l| users.contains(&l.user_id.as_str()))
                .cloned()
                .collect(),
            entries: records
                .entries
                .iter()
                .filter(|e| keys.contains(&&e.cache_key))
                .cloned()
                .collect(),
            jobs: records
                .jobs
                .iter()
                .filter(|j| jobs.contains(&&j.id))
                .cloned()
                .collect(),
            read: records.read,
        }
    }
}

/// Two users; a TTS miss, its READY entry and two hits on it; a video job that a follower joins
/// and that fails (both refunded, its pending entry gone); a second video job still queued.
async fn given_usage(store: &dyn Store) -> Usage {
    let payer = create_user(store, 200, t0()).await.unwrap().user_id;
    let hitter = create_user(store, 10, t0()).await.unwrap().user_id;

    let tts = key(1);
    let miss = charge(&payer, 4, &tts);
    store.charge(&miss).await.unwrap();
    store.put_entry(&entry(&tts)).await.unwrap();
    let mut hits = Vec::new();
    for _ in 0..2 {
        let hit = Charge {
            reason: LedgerReason::Hit,
            count_hit: true,
            ..charge(&hitter, 1, &tts)
        };
        store.charge(&hit).await.unwrap();
        hits.push(hit);
    }

    let leader = job(&payer, &video_key(), None, 50);
    start(store, &leader, false).await;
    let follower = job(&hitter, &leader.cache_key, Some(&leader.id), 1);
    let joined = store
        .join_job(&follower, &job_charge(&follower, LedgerReason::Hit))
        .await
        .unwrap();
    assert!(joined.is_some(), "the follower joins");
    let failed = Job {
        status: JobStatus::Failed,
        ..leader
    };
    assert!(store.finish_job(&failed, None).await.unwrap());
    for j in [&failed, &follower] {
        let refund = Refund {
            user_id: j.owner.clone(),
            amount: j.credits_charged,
            request_id: j.request_id.clone(),
            cache_key: j.cache_key.clone(),
            charged_at: j.created_at,
            at: t0() + Duration::seconds(1),
        };
        assert!(store.refund(&refund).await.unwrap().is_some());
    }

    let running = job(&payer, &video_key(), None, 50);
    start(store, &running, false).await;

    Usage {
        payer,
        hitter,
        tts,
        miss,
        hits,
        failed,
        follower,
        running,
    }
}

/// A ledger line as compared here: who, when, why, how much, which key, which request (the
/// grants' request ids are made by `create_user`, so they read as "grant").
type Line = (
    String,
    DateTime<Utc>,
    &'static str,
    i64,
    Option<String>,
    String,
);

fn line(l: &LedgerLine) -> Line {
    let request = match l.reason {
        LedgerReason::Grant => "grant".to_owned(),
        _ => l.request_id.clone(),
    };
    (
        l.user_id.clone(),
        l.at,
        l.reason.as_str(),
        l.amount,
        l.cache_key.clone(),
        request,
    )
}

fn expected(
    user: &str,
    at: DateTime<Utc>,
    reason: LedgerReason,
    amount: i64,
    cache_key: Option<&CacheKey>,
    request: &str,
) -> Line {
    (
        user.to_owned(),
        at,
        reason.as_str(),
        amount,
        cache_key.map(ToString::to_string),
        request.to_owned(),
    )
}

async fn scan(usage: &dyn UsageScan) -> (UsageRecords, Vec<ReadCost>) {
    let heard = Mutex::new(Vec::new());
    let records = usage
        .usage_records(&|cost| heard.lock().unwrap().push(cost))
        .await
        .unwrap();
    (records, heard.into_inner().unwrap())
}

pub async fn usage_records_hold_every_ledger_line_with_its_user(harness: StoreHarness) {
    let given = given_usage(harness.store.as_ref()).await;

    let (records, _) = scan(harness.usage.as_ref()).await;

    let mut lines: Vec<Line> = given.mine(&records).ledger.iter().map(line).collect();
    lines.sort();
    let (payer, hitter) = (given.payer.as_str(), given.hitter.as_str());
    let (failed, follower, running) = (&given.failed, &given.follower, &given.running);
    let refunded = t0() + Duration::seconds(1);
    let mut want = vec![
        expected(payer, t0(), LedgerReason::Grant, 200, None, "grant"),
        expected(
            payer,
            t0(),
            LedgerReason::Miss,
            -4,
            Some(&given.tts),
            &given.miss.request_id,
        ),
        expected(
            payer,
            t0(),
            LedgerReason::Miss,
            -50,
            Some(&failed.cache_key),
            &failed.request_id,
        ),
        expected(
            payer,
            refunded,
            LedgerReason::Refund,
            50,
            Some(&failed.cache_key),
            &failed.request_id,
        ),
        expected(
            payer,
            t0(),
            LedgerReason::Miss,
            -50,
            Some(&running.cache_key),
            &running.request_id,
        ),
        expected(hitter, t0(), LedgerReason::Grant, 10, None, "grant"),
        expected(
            hitter,
            t0(),
            LedgerReason::Hit,
            -1,
            Some(&follower.cache_key),
            &follower.request_id,
        ),
        expected(
            hitter,
            refunded,
            LedgerReason::Refund,
            1,
            Some(&follower.cache_key),
            &follower.request_id,
        ),
    ];
    for hit in &given.hits {
        want.push(expected(
            hitter,
            t0(),
            LedgerReason::Hit,
            -1,
            Some(&given.tts),
            &hit.request_id,
        ));
    }
    want.sort();
    assert_eq!(lines, want);
}

pub async fn usage_records_hold_every_entry_and_job(harness: StoreHarness) {
    let given = given_usage(harness.store.as_ref()).await;

    let (records, _) = scan(harness.usage.as_ref()).await;

    let mine = given.mine(&records);
    let ready = CacheEntry {
        hit_count: 2,
        ..entry(&given.tts)
    };
    let mut entries = mine.entries.clone();
    entries.sort_by_key(|e| e.status.as_str());
    assert_eq!(
        entries,
        vec![pending(&given.running), ready],
        "the failed job's pending entry is gone"
    );
    assert_eq!(mine.jobs.len(), 3, "each job once");
    for j in [&given.failed, &given.follower, &given.running] {
        assert_eq!(mine.jobs.iter().find(|m| m.id == j.id), Some(j));
    }
}

pub async fn usage_records_read_every_page_and_report_progress_after_each(harness: StoreHarness) {
    // Three entries of 350 kB: more than DynamoDB's 1 MB page, so its scan takes several.
    let big: Vec<CacheEntry> = (0..3)
        .map(|i| CacheEntry {
            request_params: json!({"model": "tts-1", "text": "x".repeat(350_000), "i": i})
                .to_string(),
            ..entry(&key(100 + i))
        })
        .collect();
    for e in &big {
        harness.store.put_entry(e).await.unwrap();
    }

    let (records, heard) = scan(harness.usage.as_ref()).await;

    for e in &big {
        assert!(
            records.entries.contains(e),
            "{} missing from the scan",
            e.cache_key
        );
    }
    let last = *heard.last().expect("progress heard at least once");
    for (i, cost) in heard.iter().enumerate() {
        assert_eq!(cost.pages, i as u64 + 1, "one report per page: {heard:?}");
    }
    assert!(
        heard.windows(2).all(|w| w[0].items <= w[1].items),
        "a running total: {heard:?}"
    );
    let returned = records.ledger.len() + records.entries.len() + records.jobs.len();
    assert!(
        last.items >= returned as u64,
        "{} items read, {returned} returned",
        last.items
    );
    // Where reads are paid for, the records say what they cost: the last total heard.
    if let Some(read) = records.read {
        assert_eq!(read, last);
        assert!(read.capacity_units > 0.0, "{read:?}");
    }
}

pub async fn a_usage_report_of_the_records_nets_refunds_and_prices_hits_by_their_entry(
    harness: StoreHarness,
) {
    let given = given_usage(harness.store.as_ref()).await;

    let (records, _) = scan(harness.usage.as_ref()).await;

    let report = UsageReport::of(
        &given.mine(&records),
        None,
        t0() + Duration::hours(1),
        "contract",
    );
    let t = &report.totals;
    assert_eq!(
        (t.requests, t.hits, t.misses),
        (5, 2, 3),
        "the refunded join is no hit"
    );
    assert_eq!(
        t.credits_charged,
        4 + 2 + 50 + 1 + 50 - 51,
        "net of refunds"
    );
    assert_eq!(t.credits_refunded, 51);
    assert_eq!(
        t.credits_saved,
        2 * (4 - 1),
        "the entry's price less the hit's"
    );
    assert_eq!(t.entries_live, 1);
    let of = |media_type| {
        let m = report
            .media_types
            .iter()
            .find(|m| m.media_type == media_type)
            .unwrap();
        (m.figures.hits, m.figures.misses, m.figures.credits_saved)
    };
    assert_eq!(of(MediaType::Tts), (2, 1, 6));
    assert_eq!(of(MediaType::Video), (0, 2, 0));
    assert_eq!(
        report.jobs,
        JobCounts {
            in_flight: 1,
            completed: 0,
            failed: 1,
        },
        "leaders only"
    );
    assert_eq!(report.top_keys.len(), 1);
    assert_eq!(report.top_keys[0].cache_key, given.tts.to_string());
}
