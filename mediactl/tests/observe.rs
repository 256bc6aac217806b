//! After a known workload (misses, hits, a coalesced job, a failed job), `GET /metrics`,
//! `mediactl stats --json` and the dashboard (rendered by headless Chromium) agree with each
//! other and with the ledger: hits, misses, credits charged and saved. The dashboard's screenshot
//! is kept in `target/artefacts/dashboard.png`.

mod support;

use media_cache::adapters::sqlite::SqliteStore;
use media_cache::domain::LedgerReason;
use media_cache::ports::AccountStore;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{Serve, serve};

const CHROMIUM: &str = "/usr/bin/chromium";

struct Client {
    http: reqwest::Client,
    server: Serve,
}

impl Client {
    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.server.url))
            .bearer_auth(&self.server.api_key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Sends a media request and checks how it was answered.
    async fn expect(&self, path: &str, body: Value, x_cache: &str) -> Value {
        let answer = self.post(path, body).await;
        assert!(answer.status().is_success(), "{path}: {}", answer.status());
        assert_eq!(answer.headers()["x-cache"], x_cache, "{path}");
        answer.json().await.unwrap()
    }

    /// Polls a job until it is completed or failed.
    async fn settle(&self, job_id: &str) -> Value {
        let started = Instant::now();
        loop {
            let job: Value = self
                .http
                .get(format!("{}/api/v1/media/jobs/{job_id}", self.server.url))
                .bearer_auth(&self.server.api_key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if job["status"] == "completed" || job["status"] == "failed" {
                return job;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{job}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text(&self, path: &str) -> String {
        let answer = self
            .http
            .get(format!("{}{path}", self.server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{path}");
        answer.text().await.unwrap()
    }
}

/// The counters of a Prometheus text page: name and sorted labels to value.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let mut labels: Vec<&str> = rest.trim_end_matches('}').split(',').collect();
                labels.sort_unstable();
                (name, labels.join(","))
            }
            None => (series, String::new()),
        };
        out.insert(format!("{name}{{{labels}}}"), value.parse().unwrap());
    }
    out
}

/// Sum of a metric's series whose labels contain every one of `having`.
fn metric(metrics: &HashMap<String, f64>, name: &str, having: &[&str]) -> u64 {
    metrics
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{name}{{")))
        .filter(|(k, _)| having.iter().all(|h| k.contains(h)))
        .map(|(_, v)| *v)
        .sum::<f64>() as u64
}

/// Headless Chromium with what this machine needs (no network beyond loopback, no sandbox as
/// root, a fresh profile).
fn chromium(profile: &Path) -> Command {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium package"
    );
    let mut command = Command::new(CHROMIUM);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1280,1400",
        "--virtual-time-budget=4000",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// The `data-field` / `data-value` pairs of the rendered page.
fn dashboard_fields(dom: &str) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    for tag in dom.split('<').filter(|t| t.contains("data-field=\"")) {
        let attr = |name: &str| {
            let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
            let end = tag[start..].find('"')? + start;
            Some(tag[start..end].to_owned())
        };
        if let (Some(field), Some(value)) = (attr("data-field"), attr("data-value")) {
            fields.insert(field, value);
        }
    }
    fields
}

fn artefacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/artefacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_stats_and_the_dashboard_agree_with_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client {
        http: reqwest::Client::new(),
        server: serve(dir.path(), &["--sim-task-ms", "1500"]),
    };
    let tts = "/api/v1/media/tts";
    let a = json!({"text": "the dashboard's first sentence"});
    let b = json!({"text": "the dashboard's second sentence"});

    // Speech: two misses, four hits. Image: a miss and a hit.
    client.expect(tts, a.clone(), "MISS").await;
    for _ in 0..3 {
        client.expect(tts, a.clone(), "HIT").await;
    }
    client.expect(tts, b.clone(), "MISS").await;
    client.expect(tts, b.clone(), "HIT").await;
    let image = json!({"prompt": "a lighthouse drawn for the dashboard", "model": "dall-e-3"});
    client
        .expect("/api/v1/media/image", image.clone(), "MISS")
        .await;
    client.expect("/api/v1/media/image", image, "HIT").await;

    // Music: two identical requests at once, one provider task: a miss and a join.
    let music = json!({"prompt": "a dashboard waltz", "model": "V4"});
    let (first, second) = tokio::join!(client.post("/api/v1/media/music", music.clone()), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.post("/api/v1/media/music", music.clone()).await
    });
    let mut outcomes: Vec<String> = Vec::new();
    let mut jobs = Vec::new();
    for answer in [first, second] {
        assert!(answer.status().is_success(), "{}", answer.status());
        outcomes.push(answer.headers()["x-cache"].to_str().unwrap().to_owned());
        let body: Value = answer.json().await.unwrap();
        if let Some(id) = body["job_id"].as_str() {
            jobs.push(id.to_owned());
        }
    }
    outcomes.sort();
    assert_eq!(outcomes, ["COALESCED", "MISS"]);

    // Video: the provider's task fails, the charge is refunded.
    let faults = reqwest::Client::new()
        .post(format!("{}/_sim/faults", client.server.sim_url))
        .json(&json!({"endpoint": "kling_create", "kind": "task_failed", "times": 1}))
        .send()
        .await
        .unwrap();
    assert!(faults.status().is_success());
    let video = client
        .expect(
            "/api/v1/media/video",
            json!({"prompt": "a dashboard that fails", "duration": 5}),
            "MISS",
        )
        .await;
    for id in &jobs {
        assert_eq!(client.settle(id).await["status"], "completed");
    }
    let failed = client.settle(video["job_id"].as_str().unwrap()).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["refunded"], true);

    // What each view says.
    let metrics = parse_prometheus(&client.text("/metrics").await);
    let stats = Command::new(env!("CARGO_BIN_EXE_mediactl"))
        .args(["--data-dir", &dir.path().display().to_string()])
        .args(["stats", "--json"])
        .output()
        .unwrap();
    assert!(stats.status.success(), "{stats:?}");
    let stats: Value = serde_json::from_slice(&stats.stdout).unwrap();
    let dashboard_url = format!("{}/dashboard", client.server.url);
    let profile = tempfile::tempdir().unwrap();
    let dom = chromium(profile.path())
        .args(["--dump-dom", &dashboard_url])
        .output()
        .unwrap();
    assert!(dom.status.success(), "chromium failed: {dom:?}");
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page never loaded its data:\n{dom}"
    );
    let shown = dashboard_fields(&dom);
    let shot = artefacts_dir().join("dashboard.png");
    let screenshot = chromium(profile.path())
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&dashboard_url)
        .output()
        .unwrap();
    assert!(
        screenshot.status.success() && shot.exists(),
        "{screenshot:?}"
    );

    // The ledger, read from the file.
    let mut server = client.server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let store = SqliteStore::open(&dir.path().join("media.db")).unwrap();
    let ledger = store.ledger(&server.user_id, 10_000).await.unwrap();
    let refunded: HashSet<&str> = ledger
        .iter()
        .filter(|l| l.reason == LedgerReason::Refund)
        .map(|l| l.request_id.as_str())
        .collect();
    let ledger_hits = ledger
        .iter()
        .filter(|l| l.reason == LedgerReason::Hit && !refunded.contains(l.request_id.as_str()))
        .count() as u64;
    let ledger_misses = ledger
        .iter()
        .filter(|l| l.reason == LedgerReason::Miss)
        .count() as u64;
    let ledger_charged = -ledger
        .iter()
        .filter(|l| l.reason != LedgerReason::Grant)
        .map(|l| l.amount)
        .sum::<i64>() as u64;
    let balance = store
        .account(&server.user_id)
        .await
        .unwrap()
        .unwrap()
        .credits_remaining;
    assert_eq!(
        support::CREDITS - balance,
        ledger_charged,
        "ledger == balance"
    );

    // The workload, as the ledger has it: 4 + 1 hits and a join; 2 + 1 + 1 + 1 misses.
    assert_eq!(ledger_hits, 6);
    assert_eq!(ledger_misses, 5);

    // Hits and misses.
    let totals = &stats["totals"];
    assert_eq!(totals["hits"], ledger_hits);
    assert_eq!(totals["misses"], ledger_misses);
    assert_eq!(
        metric(&metrics, "mediacache_requests_total", &["outcome=\"hit\""])
            + metric(
                &metrics,
                "mediacache_requests_total",
                &["outcome=\"coalesced\""]
            ),
        ledger_hits
    );
    assert_eq!(
        metric(&metrics, "mediacache_requests_total", &["outcome=\"miss\""]),
        ledger_misses
    );
    assert_eq!(
        metric(
            &metrics,
            "mediacache_requests_total",
            &["media_type=\"tts\"", "outcome=\"hit\""]
        ),
        4
    );
    assert_eq!(
        stats["media_types"][0]["media_type"], "tts",
        "media types in order"
    );
    assert_eq!(stats["media_types"][0]["hits"], 4);

    // Credits charged (net of the refund) and saved.
    assert_eq!(totals["credits_charged"], ledger_charged);
    assert_eq!(
        metric(&metrics, "mediacache_credits_charged_total", &[])
            - metric(&metrics, "mediacache_credits_refunded_total", &[]),
        ledger_charged
    );
    assert!(totals["credits_refunded"].as_u64().unwrap() > 0);
    assert_eq!(
        totals["credits_refunded"].as_u64().unwrap(),
        metric(&metrics, "mediacache_credits_refunded_total", &[])
    );
    let saved = metric(&metrics, "mediacache_credits_saved_total", &[]);
    assert!(saved > 0);
    assert_eq!(totals["credits_saved"], saved);
    assert_eq!(totals["provider_calls_avoided"], ledger_hits);
    assert_eq!(stats["jobs"]["failed"], 1);
    assert_eq!(
        metric(
            &metrics,
            "mediacache_jobs_total",
            &["media_type=\"video\"", "status=\"failed\""]
        ),
        1
    );
    // Provider generation calls: 2 speech, 1 image, 1 music task, 1 video task.
    assert_eq!(metric(&metrics, "mediacache_provider_calls_total", &[]), 5);

    // The dashboard shows the same figures.
    let number = |field: &str| -> f64 {
        shown
            .get(field)
            .unwrap_or_else(|| panic!("the dashboard shows no {field}"))
            .parse()
            .unwrap()
    };
    for field in [
        "hits",
        "misses",
        "credits_charged",
        "credits_saved",
        "provider_calls_avoided",
        "entries_live",
    ] {
        assert_eq!(
            number(&format!("totals.{field}")),
            totals[field].as_f64().unwrap(),
            "totals.{field}"
        );
    }
    assert!((number("totals.hit_rate") - totals["hit_rate"].as_f64().unwrap()).abs() < 1e-9);
    assert_eq!(number("media_types.tts.hits"), 4.0);
    assert_eq!(number("jobs.failed"), 1.0);
    assert_eq!(
        number("top_keys.0.hits"),
        3.0,
        "the first sentence has 3 hits"
    );
}
