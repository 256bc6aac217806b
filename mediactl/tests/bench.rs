//! `mediactl bench` against a real `serve` (simulator, SQLite store) in this process: its report
//! must agree with the simulator's call counters and with the store's ledger. Plus the workload
//! (mix parsing, Zipf determinism) and the flag errors.

use media_cache::clock::{Clock, SystemClock};
use media_cache::ports::AccountStore;
use media_cache::service::accounts::{NewUser, create_user};
use media_cache::service::{JobPolicy, MissPolicy};
use mediactl::bench::{
    BenchConfig, BenchError, BenchReport, MediaKind, Mix, Workload, parse_duration, render_table,
    run,
};
use mediactl::serve::{ServeConfig, Server, start};
use provider_sim::{Endpoint, FaultKind, FaultRule};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

/// Default prices (shared/pricing.toml) of the bench's requests: a short tts-1 text, a 256x256
/// dall-e-2 image, a Suno task, a 5 s standard video; and a hit.
const TTS_PRICE: u64 = 2;
const IMAGE_PRICE: u64 = 5;
const VIDEO_PRICE: u64 = 50;
const HIT_PRICE: u64 = 1;
const GRANT: u64 = 100_000;

struct App {
    server: Server,
    user: NewUser,
    _dir: TempDir,
}

/// `serve` on a free port with a fresh data directory, quick simulated tasks and job polls, and
/// a user with `GRANT` credits.
async fn app() -> App {
    let dir = tempfile::tempdir().unwrap();
    let config = ServeConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        dev_credits: 0,
        provider_timeout: Duration::from_secs(10),
        provider_backoff: Duration::from_millis(5),
        sim_task_duration: Duration::from_millis(300),
        job_policy: JobPolicy {
            first_poll: Duration::from_millis(100),
            max_poll_delay: Duration::from_millis(200),
            timeout: Duration::from_secs(1800),
        },
        worker_idle: Duration::from_millis(20),
        miss_policy: MissPolicy {
            request_budget: Duration::from_secs(10),
            settle_margin: Duration::from_millis(500),
            ..Default::default()
        },
        ..ServeConfig::default()
    };
    let server = start(config, Arc::new(SystemClock)).await.unwrap();
    let user = create_user(&server.store, GRANT, SystemClock.now())
        .await
        .unwrap();
    App {
        server,
        user,
        _dir: dir,
    }
}

impl App {
    fn bench(&self) -> BenchConfig {
        BenchConfig {
            url: self.server.base_url.clone(),
            api_key: self.user.api_key.clone(),
            sim_url: self.server.sim.as_ref().map(|s| s.base_url.clone()),
            poll_interval: Duration::from_millis(20),
            job_timeout: Duration::from_secs(60),
            ..BenchConfig::default()
        }
    }

    /// The user's balance, and the sum of its ledger lines other than grants (charges are
    /// negative, refunds positive).
    async fn money(&self) -> (u64, i64) {
        let store = &self.server.store;
        let balance = store
            .account(&self.user.user_id)
            .await
            .unwrap()
            .unwrap()
            .credits_remaining;
        let lines = store.ledger(&self.user.user_id, 100_000).await.unwrap();
        let spent = lines
            .iter()
            .filter(|l| l.reason.as_str() != "grant")
            .map(|l| l.amount)
            .sum();
        (balance, spent)
    }

    /// Checks the report's credits against the store: the ledger's charge and refund lines sum
    /// to minus what the report says was charged, and so does the change in balance.
    ///
    /// A joined job's poll says `failed` (and `refunded`) as soon as the job it joined failed,
    /// a moment before the worker has written the joiners' refunds one by one: the ledger is
    /// given a few seconds to catch up.
    async fn assert_credits_match_the_ledger(&self, report: &BenchReport) {
        let expected = -(report.credits_charged as i64);
        let give_up = std::time::Instant::now() + Duration::from_secs(15);
        let (balance, spent) = loop {
            let (balance, spent) = self.money().await;
            let settled = spent == expected && GRANT - balance == report.credits_charged;
            if settled || std::time::Instant::now() > give_up {
                break (balance, spent);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(spent, expected, "ledger lines vs the report");
        assert_eq!(
            GRANT - balance,
            report.credits_charged,
            "balance change vs the report"
        );
    }
}

fn assert_no_errors(report: &BenchReport) {
    assert!(report.errors.is_empty(), "errors: {:?}", report.errors);
}

fn assert_ordered(report: &BenchReport) {
    let l = &report.latency_ms;
    for s in [&l.overall, &l.by_outcome.hit, &l.by_outcome.job] {
        if s.count > 0 {
            let (p50, p90, p99, max) = (
                s.p50.unwrap(),
                s.p90.unwrap(),
                s.p99.unwrap(),
                s.max.unwrap(),
            );
            assert!(0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max, "{s:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zipf_run_calls_the_provider_once_per_distinct_request_and_its_credits_match_the_ledger()
{
    let app = app().await;
    let report = run(BenchConfig {
        requests: 500,
        distinct: 50,
        zipf: 1.0,
        concurrency: 8,
        mix: "tts=60,image=30,video=10".parse().unwrap(),
        seed: 11,
        ..app.bench()
    })
    .await
    .unwrap();

    assert_no_errors(&report);
    assert_eq!(report.requests, 500);
    assert!(
        report.distinct > 10 && report.distinct <= 50,
        "{}",
        report.distinct
    );
    assert_eq!(
        report.provider_calls,
        Some(report.distinct),
        "one generation per distinct request: {:?}",
        report.provider_calls_by_endpoint
    );
    assert_eq!(report.outcomes.miss, report.distinct);
    assert_eq!(
        report.outcomes.hit + report.outcomes.coalesced,
        report.requests - report.distinct
    );
    let expected_rate = (report.requests - report.distinct) as f64 / report.requests as f64;
    assert!(
        (report.hit_rate - expected_rate).abs() < 1e-9,
        "{}",
        report.hit_rate
    );

    // Every type of the mix was sent; videos answered 202 on a miss and their jobs completed.
    let types: Vec<&str> = report.by_type.keys().map(String::as_str).collect();
    assert_eq!(types, ["image", "tts", "video"]);
    let (tts, image, video) = (
        &report.by_type["tts"],
        &report.by_type["image"],
        &report.by_type["video"],
    );
    assert_eq!(tts.requests + image.requests + video.requests, 500);
    assert_eq!(
        tts.distinct + image.distinct + video.distinct,
        report.distinct
    );
    assert!(video.requests > 0 && report.jobs.accepted >= video.distinct);
    assert_eq!(report.jobs.completed, report.jobs.accepted);
    assert_eq!(report.jobs.failed + report.jobs.unfinished, 0);

    // Money: each distinct request paid its full price once, every other request the hit price;
    // without the cache every request would have paid the full price.
    let full = |t: &mediactl::bench::TypeCounts, price: u64| t.distinct * price;
    assert_eq!(
        report.credits_charged,
        full(tts, TTS_PRICE)
            + full(image, IMAGE_PRICE)
            + full(video, VIDEO_PRICE)
            + (report.requests - report.distinct) * HIT_PRICE
    );
    assert_eq!(
        report.credits_without_cache,
        tts.requests * TTS_PRICE + image.requests * IMAGE_PRICE + video.requests * VIDEO_PRICE
    );
    assert_eq!(report.unpriced_requests, 0);
    assert_eq!(
        report.credits_saved,
        report.credits_without_cache as i64 - report.credits_charged as i64
    );
    assert!(report.savings_pct.unwrap() > 50.0);
    app.assert_credits_match_the_ledger(&report).await;

    // Latencies: every answer in the overall figures, each outcome in its own.
    let l = &report.latency_ms;
    assert_eq!(l.overall.count, report.requests);
    assert_eq!(l.by_outcome.accepted.count, report.jobs.accepted);
    assert_eq!(l.by_outcome.job.count, report.jobs.completed);
    assert_eq!(
        l.by_outcome.hit.count
            + l.by_outcome.miss.count
            + l.by_outcome.coalesced.count
            + l.by_outcome.accepted.count,
        report.requests
    );
    assert_ordered(&report);
    assert!(report.rps > 0.0 && report.duration_s > 0.0);

    let table = render_table(&report);
    assert!(
        table.contains(&format!(
            "provider calls  {0} for {0} distinct requests",
            report.distinct
        )),
        "{table}"
    );
    assert!(table.contains("errors          none"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_only_sends_one_request_so_every_answer_after_the_first_is_a_hit() {
    let app = app().await;
    let report = run(BenchConfig {
        requests: 200,
        concurrency: 4,
        hits_only: true,
        ..app.bench()
    })
    .await
    .unwrap();
    assert_no_errors(&report);
    assert_eq!(report.mode, "hits-only");
    assert_eq!((report.requests, report.distinct), (200, 1));
    assert_eq!(report.provider_calls, Some(1));
    assert_eq!(report.outcomes.miss, 1);
    assert_eq!(report.outcomes.hit + report.outcomes.coalesced, 199);
    assert!((report.hit_rate - 199.0 / 200.0).abs() < 1e-9);
    assert_eq!(report.credits_charged, TTS_PRICE + 199 * HIT_PRICE);
    assert_eq!(report.credits_without_cache, 200 * TTS_PRICE);
    app.assert_credits_match_the_ledger(&report).await;
    let json = serde_json::to_value(&report).unwrap();
    for field in [
        "requests",
        "distinct",
        "concurrency",
        "duration_s",
        "rps",
        "hit_rate",
        "provider_calls",
        "credits_charged",
        "credits_without_cache",
        "errors",
    ] {
        assert!(json.get(field).is_some(), "no {field} in {json}");
    }
    assert!(json["latency_ms"]["overall"]["p99"].is_f64(), "{json}");
    assert!(
        json["latency_ms"]["by_outcome"]["HIT"]["p50"].is_f64(),
        "{json}"
    );
    assert!(
        json["latency_ms"]["by_outcome"]["JOB"]["p50"].is_null(),
        "{json}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duration_stops_sending_before_the_request_count_is_reached() {
    let app = app().await;
    let report = run(BenchConfig {
        requests: 1_000_000,
        concurrency: 4,
        threads: 1,
        hits_only: true,
        duration: Some(Duration::from_millis(300)),
        ..app.bench()
    })
    .await
    .unwrap();
    assert_no_errors(&report);
    assert!(
        report.requests > 0 && report.requests < 1_000_000,
        "{}",
        report.requests
    );
    assert!(
        report.duration_s >= 0.3 && report.duration_s < 5.0,
        "{}",
        report.duration_s
    );
    assert_eq!(report.latency_ms.overall.count, report.requests);
    app.assert_credits_match_the_ledger(&report).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_with_the_same_seed_finds_every_request_cached_and_no_price() {
    let app = app().await;
    let config = BenchConfig {
        requests: 100,
        distinct: 10,
        concurrency: 4,
        mix: "tts=1".parse().unwrap(),
        seed: 5,
        ..app.bench()
    };
    let first = run(config.clone()).await.unwrap();
    let second = run(config).await.unwrap();
    assert_no_errors(&second);
    assert_eq!(second.by_type, first.by_type, "the same requests");
    assert_eq!(second.provider_calls, Some(0));
    assert_eq!(second.outcomes.hit, 100);
    assert_eq!(second.credits_charged, 100 * HIT_PRICE);
    // No MISS was seen, so no full price is known: left out, and said so.
    assert_eq!(second.credits_without_cache, 0);
    assert_eq!(second.unpriced_requests, 100);
    assert_eq!(second.savings_pct, None);
    let (balance, spent) = app.money().await;
    let both = first.credits_charged + second.credits_charged;
    assert_eq!((GRANT - balance, spent), (both, -(both as i64)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_jobs_are_refunded_and_left_out_of_both_credit_sums() {
    let app = app().await;
    let sim = app.server.sim.as_ref().unwrap();
    sim.state.inject(FaultRule {
        endpoint: Some(Endpoint::KlingCreate),
        kind: FaultKind::TaskFailed {
            status: None,
            message: Some("no".into()),
        },
        times: None,
    });
    let report = run(BenchConfig {
        requests: 20,
        distinct: 2,
        concurrency: 4,
        mix: "video=1".parse().unwrap(),
        ..app.bench()
    })
    .await
    .unwrap();
    assert_no_errors(&report);
    assert_eq!(report.jobs.accepted, 20);
    assert_eq!(report.jobs.failed, 20, "{:?}", report.jobs);
    assert_eq!(report.latency_ms.by_outcome.job.count, 20);
    assert_eq!(report.credits_charged, 0, "every charge refunded");
    assert_eq!(report.credits_without_cache, 0, "nothing was served");
    app.assert_credits_match_the_ledger(&report).await;
}

#[tokio::test]
async fn bad_flags_are_named_errors_before_anything_is_sent() {
    let base = BenchConfig {
        api_key: "mc_test_key_that_is_long".into(),
        // Nothing listens there: a config error must come first.
        url: "http://127.0.0.1:9".into(),
        ..BenchConfig::default()
    };
    let flag_of = |e: BenchError| match e {
        BenchError::InvalidFlag { flag, .. } => flag,
        other => panic!("not a flag error: {other}"),
    };
    let cases = [
        (
            BenchConfig {
                concurrency: 0,
                ..base.clone()
            },
            "--concurrency",
        ),
        (
            BenchConfig {
                requests: 0,
                ..base.clone()
            },
            "--requests",
        ),
        (
            BenchConfig {
                distinct: 0,
                ..base.clone()
            },
            "--distinct",
        ),
        (
            BenchConfig {
                distinct: 2,
                ..base.clone()
            },
            "--distinct",
        ),
        (
            BenchConfig {
                threads: 0,
                ..base.clone()
            },
            "--threads",
        ),
        (
            BenchConfig {
                zipf: -1.0,
                ..base.clone()
            },
            "--zipf",
        ),
        (
            BenchConfig {
                url: "ftp://example".into(),
                ..base.clone()
            },
            "--url",
        ),
        (
            BenchConfig {
                api_key: " ".into(),
                ..base.clone()
            },
            "--api-key",
        ),
    ];
    for (config, flag) in cases {
        assert_eq!(flag_of(run(config).await.unwrap_err()), flag);
    }
    let unreachable = run(base).await.unwrap_err();
    assert!(
        matches!(unreachable, BenchError::Unreachable { .. }),
        "{unreachable}"
    );
    assert!(unreachable.to_string().contains("127.0.0.1:9"));
}

#[test]
fn a_mix_is_type_weight_pairs_and_mistakes_are_named() {
    let mix: Mix = " tts=70, image=25 ,VIDEO=5".parse().unwrap();
    assert_eq!(mix.weight(MediaKind::Tts), 70);
    assert_eq!(mix.weight(MediaKind::Image), 25);
    assert_eq!(mix.weight(MediaKind::Music), 0);
    assert_eq!(mix.weight(MediaKind::Video), 5);
    assert_eq!(mix.to_string(), "tts=70,image=25,video=5");
    assert_eq!(mix, Mix::default());
    assert_eq!(
        "music=1"
            .parse::<Mix>()
            .unwrap()
            .kinds()
            .collect::<Vec<_>>(),
        [MediaKind::Music]
    );
    for (bad, says) in [
        ("tts=70,foo=5", "unknown media type `foo`"),
        ("tts", "not type=weight"),
        ("tts=x", "whole number"),
        ("tts=-1", "whole number"),
        ("tts=1,tts=2", "given twice"),
        ("tts=0,image=0", "add up to 0"),
        ("", "empty entry"),
        ("tts=1,", "empty entry"),
    ] {
        let err = bad.parse::<Mix>().unwrap_err().to_string();
        assert!(err.starts_with("--mix: "), "{bad}: {err}");
        assert!(err.contains(says), "{bad}: {err}");
    }
}

#[test]
fn durations_take_a_unit_and_refuse_nonsense() {
    assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
    assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
    assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    for bad in ["", "0s", "soon", "5 days", "-1s", "1e999"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_same_seed_gives_the_same_sequence_with_zipf_popularity_and_the_mix_shares() {
    let mix = Mix::default();
    let a = Workload::zipf(20_000, 100, 1.2, &mix, 42).unwrap();
    let b = Workload::zipf(20_000, 100, 1.2, &mix, 42).unwrap();
    let c = Workload::zipf(20_000, 100, 1.2, &mix, 43).unwrap();
    assert_eq!(a.sequence, b.sequence);
    assert_ne!(a.sequence, c.sequence);
    assert_eq!(a.requests.len(), 100);
    let bodies = |w: &Workload| {
        w.requests
            .iter()
            .map(|r| r.body.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(bodies(&a), bodies(&b));
    assert_ne!(
        bodies(&a),
        bodies(&c),
        "another seed is another set of cache keys"
    );

    // The mix is the share of requests (tts 70 %, image 25 %, video 5 %).
    let mut per_kind = [0u64; 4];
    let mut per_id = vec![0u64; a.requests.len()];
    for id in &a.sequence {
        per_kind[a.requests[*id as usize].kind.index()] += 1;
        per_id[*id as usize] += 1;
    }
    let share = |k: MediaKind| per_kind[k.index()] as f64 / 20_000.0;
    assert!((share(MediaKind::Tts) - 0.70).abs() < 0.02, "{per_kind:?}");
    assert!(
        (share(MediaKind::Image) - 0.25).abs() < 0.02,
        "{per_kind:?}"
    );
    assert!(
        (share(MediaKind::Video) - 0.05).abs() < 0.01,
        "{per_kind:?}"
    );
    assert_eq!(per_kind[MediaKind::Music.index()], 0);

    // Within a type, rank 1 (its first request) is the most popular, then rank 2, and so on.
    let tts: Vec<u64> = a
        .requests
        .iter()
        .zip(&per_id)
        .filter(|(r, _)| r.kind == MediaKind::Tts)
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(tts.len(), 70);
    assert!(
        tts[0] > tts[1] && tts[1] > tts[4] && tts[4] > tts[40],
        "{tts:?}"
    );
    // Zipf(1.2) over 70: rank 1 has about 1 / H(70, 1.2) of the type's requests, over a quarter.
    let first = tts[0] as f64 / tts.iter().sum::<u64>() as f64;
    assert!((0.25..0.40).contains(&first), "{first}");

    // s = 0 is uniform: no request is more than twice as popular as another on average.
    let flat = Workload::zipf(20_000, 10, 0.0, &"tts=1".parse().unwrap(), 1).unwrap();
    let mut counts = vec![0u64; 10];
    for id in &flat.sequence {
        counts[*id as usize] += 1;
    }
    let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(*hi < 2 * *lo, "{counts:?}");
}

#[test]
fn the_command_names_a_bad_flag_and_exits_non_zero() {
    for (args, says) in [
        (&["--mix", "tts=70,gif=30"][..], "unknown media type `gif`"),
        (&["--concurrency", "0"][..], "--concurrency: must be from 1"),
        (&["--duration", "soon"][..], "not a duration"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_mediactl"))
            .args(["bench", "--api-key", "mc_some_key_long_enough", "--url"])
            .arg("http://127.0.0.1:9")
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
