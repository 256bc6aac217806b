//! A `serve` process killed (SIGKILL) in the middle of a stream of hits loses no acknowledged
//! hit: every 200 a client saw has its ledger line after the kill, every ledger line has its
//! debit (the ledger sums to the balance), and the entry's hit count is the number of hit lines.

use media_cache::adapters::sqlite::SqliteStore;
use media_cache::domain::{CacheKey, LedgerReason};
use media_cache::ports::{AccountStore, LookupStore};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;

use support::{CREDITS, serve};

const BODY: &str = r#"{"text": "killed mid-flight"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_loses_no_acknowledged_hit() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &[]);
    let http = reqwest::Client::new();
    let tts = format!("{}/api/v1/media/tts", server.url);
    let send = |http: &reqwest::Client| {
        http.post(&tts)
            .bearer_auth(&server.api_key)
            .header("content-type", "application/json")
            .body(BODY)
            .send()
    };
    let miss = send(&http).await.unwrap();
    assert_eq!(miss.status(), 200);
    assert_eq!(miss.headers()["x-cache"], "MISS");
    let cache_key: CacheKey = CacheKey::parse(miss.headers()["x-cache-key"].to_str().unwrap())
        .expect("a cache key header");

    // 16 clients send hits as fast as they are answered; the server is killed while they do.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let request = http
                .post(&tts)
                .bearer_auth(&server.api_key)
                .header("content-type", "application/json")
                .body(BODY);
            let acknowledged = Arc::clone(&acknowledged);
            tokio::spawn(async move {
                loop {
                    let Ok(answer) = request.try_clone().unwrap().send().await else {
                        return;
                    };
                    if answer.status() != 200 {
                        return;
                    }
                    assert_eq!(answer.headers()["x-cache"], "HIT");
                    let id = answer.headers()["x-request-id"]
                        .to_str()
                        .unwrap()
                        .to_owned();
                    // Acknowledged once the whole answer is read, as a client would use it.
                    if answer.bytes().await.is_ok() {
                        acknowledged.lock().unwrap().push(id);
                    }
                }
            })
        })
        .collect();
    // Kill once a good number of hits went through, with requests still in flight.
    while acknowledged.lock().unwrap().len() < 300 {
        assert!(started.elapsed() < Duration::from_secs(60), "hits too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    for client in clients {
        client.await.unwrap();
    }
    let acknowledged: Vec<String> = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 300);

    // What the file says after the crash (opening it recovers the WAL, as a restart would).
    let store = SqliteStore::open(&dir.path().join("media.db")).unwrap();
    let users = server.user_id.clone();
    let ledger = store.ledger(&users, 10_000_000).await.unwrap();
    let hit_lines: HashSet<&str> = ledger
        .iter()
        .filter(|l| l.reason == LedgerReason::Hit)
        .map(|l| l.request_id.as_str())
        .collect();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|id| !hit_lines.contains(id.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged hits without a ledger line: {lost:?}"
    );
    assert!(
        ledger
            .iter()
            .filter(|l| l.reason == LedgerReason::Hit)
            .all(|l| l.amount == -1)
    );

    let account = store.account(&users).await.unwrap().unwrap();
    let sum: i64 = ledger.iter().map(|l| l.amount).sum();
    assert_eq!(
        sum, account.credits_remaining as i64,
        "every line has its debit"
    );
    assert_eq!(account.credits_used as i64, CREDITS as i64 - sum);
    let entry = store
        .lookup("-", Some(&cache_key))
        .await
        .unwrap()
        .entry
        .unwrap();
    assert_eq!(
        entry.hit_count,
        hit_lines.len() as u64,
        "one count per hit line"
    );
}
