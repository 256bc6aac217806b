//! Charges, refunds, idempotency and the ledger.

use integration_tests::{TestApp, test_config};
use media_cache::ports::AccountStore;
use mediactl::ServeConfig;
use provider_sim::{Endpoint, FaultKind, FaultRule};
use serde_json::json;

const TTS: &str = "/api/v1/media/tts";
const IMAGE: &str = "/api/v1/media/image";

fn fault(endpoint: Endpoint, kind: FaultKind, times: u32) -> FaultRule {
    FaultRule {
        endpoint: Some(endpoint),
        kind,
        times: Some(times),
    }
}

#[tokio::test]
async fn not_enough_credits_is_402_and_nothing_is_generated() {
    let app = TestApp::start().await;
    let user = app.user(9).await;
    let answer = app
        .post(IMAGE, &user, &json!({"prompt": "expensive"}))
        .await;
    assert_eq!(answer.status, 402);
    assert_eq!(answer.json["error"]["code"], "insufficient_credits");
    assert!(
        answer.error_message().contains("costs 10"),
        "{}",
        answer.error_message()
    );
    assert_eq!(app.sim_calls(Endpoint::Images), 0);
    assert_eq!(app.balance(&user).await, 9);
    assert_eq!(app.ledger_sum(&user).await, 9, "only the grant");
}

#[tokio::test]
async fn a_provider_5xx_is_refunded() {
    let app = TestApp::start().await;
    let user = app.user(100).await;
    app.inject(fault(
        Endpoint::Speech,
        FaultKind::ServerError { status: 500 },
        3,
    ));
    let answer = app.post(TTS, &user, &json!({"text": "doomed"})).await;
    assert_eq!(answer.status, 502, "{:?}", answer.json);
    assert_eq!(answer.json["error"]["code"], "provider_unavailable");
    assert_eq!(
        app.sim_calls(Endpoint::Speech),
        3,
        "first try and two retries"
    );
    assert_eq!(app.balance(&user).await, 100, "refunded");
    assert_eq!(
        app.request_ledger(&user, answer.header("x-request-id"))
            .await,
        vec![("miss", -2), ("refund", 2)],
        "charged, then refunded"
    );
    let lines = app.server.store.ledger(&user.user_id, 10).await.unwrap();
    let mut reasons: Vec<_> = lines
        .iter()
        .map(|l| (l.reason.as_str(), l.amount))
        .collect();
    reasons.sort();
    assert_eq!(reasons, vec![("grant", 100), ("miss", -2), ("refund", 2)]);

    // The next identical request generates normally: the failure was not cached.
    let retry = app.post(TTS, &user, &json!({"text": "doomed"})).await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.header("x-cache"), "MISS");
}

#[tokio::test]
async fn rate_limits_are_retried_and_outlasting_ones_answer_503_with_retry_after() {
    let app = TestApp::start().await;
    let user = app.user(100).await;
    app.inject(fault(
        Endpoint::Speech,
        FaultKind::RateLimit { retry_after_ms: 20 },
        1,
    ));
    let ok = app.post(TTS, &user, &json!({"text": "patience"})).await;
    assert_eq!(ok.status, 200, "{:?}", ok.json);
    assert_eq!(app.sim_calls(Endpoint::Speech), 2);
    assert_eq!(app.balance(&user).await, 98, "charged once");
    assert_eq!(
        app.request_ledger(&user, ok.header("x-request-id")).await,
        vec![("miss", -2)]
    );

    // A wait longer than the client is willing to sleep goes back to the caller.
    app.inject(fault(
        Endpoint::Speech,
        FaultKind::RateLimit {
            retry_after_ms: 60_000,
        },
        1,
    ));
    let limited = app.post(TTS, &user, &json!({"text": "too busy"})).await;
    assert_eq!(limited.status, 503);
    assert_eq!(limited.json["error"]["code"], "provider_rate_limited");
    assert_eq!(limited.header("retry-after"), "60");
    assert_eq!(app.balance(&user).await, 98, "refunded");
    assert_eq!(
        app.request_ledger(&user, limited.header("x-request-id"))
            .await,
        vec![("miss", -2), ("refund", 2)],
        "charged, then refunded"
    );
}

#[tokio::test]
async fn provider_timeouts_hand_the_job_to_the_worker_which_completes_it_charged_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServeConfig {
        provider_timeout: std::time::Duration::from_millis(300),
        ..test_config(&dir)
    };
    let app = TestApp::start_with(dir, config).await;
    let user = app.user(100).await;
    // Every attempt of the request times out (the client tries three times).
    app.inject(fault(
        Endpoint::Speech,
        FaultKind::Timeout { delay_ms: 1_500 },
        3,
    ));
    let answer = app.post(TTS, &user, &json!({"text": "slow"})).await;
    assert_eq!(answer.status, 202, "{:?}", answer.json);
    assert_eq!(answer.header("x-cache"), "MISS");
    let job = app
        .wait_job(&user, answer.json["job_id"].as_str().unwrap())
        .await;
    assert_eq!(job.json["status"], "completed", "{:?}", job.json);
    assert_eq!(app.balance(&user).await, 98, "charged once");
    assert_eq!(app.ledger_sum(&user).await, 98);
}

#[tokio::test]
async fn content_policy_and_quota_errors_are_classified_and_refunded() {
    let app = TestApp::start().await;
    let user = app.user(100).await;
    app.inject(fault(Endpoint::Images, FaultKind::ContentPolicy, 1));
    let rejected = app
        .post(IMAGE, &user, &json!({"prompt": "something forbidden"}))
        .await;
    assert_eq!(rejected.status, 422);
    assert_eq!(rejected.json["error"]["code"], "provider_rejected");
    assert!(
        rejected.error_message().contains("safety"),
        "{}",
        rejected.error_message()
    );
    assert_eq!(
        app.sim_calls(Endpoint::Images),
        1,
        "a rejection is not retried"
    );
    assert_eq!(
        app.request_ledger(&user, rejected.header("x-request-id"))
            .await,
        vec![("miss", -10), ("refund", 10)],
        "charged, then refunded"
    );

    app.inject(fault(Endpoint::Images, FaultKind::InsufficientQuota, 1));
    let quota = app.post(IMAGE, &user, &json!({"prompt": "anything"})).await;
    assert_eq!(quota.status, 502);
    assert_eq!(
        app.sim_calls(Endpoint::Images),
        2,
        "no quota is not retried"
    );
    assert_eq!(
        app.request_ledger(&user, quota.header("x-request-id"))
            .await,
        vec![("miss", -10), ("refund", 10)],
        "charged, then refunded"
    );
    assert_eq!(app.balance(&user).await, 100);
}

#[tokio::test]
async fn an_idempotent_retry_charges_once_and_another_body_conflicts() {
    let app = TestApp::start().await;
    let user = app.user(100).await;
    let key = Some(user.api_key.as_str());
    let body = json!({"text": "exactly once"}).to_string();
    let headers = [("idempotency-key", "order-42")];

    let first = app.post_raw(TTS, key, &headers, body.clone()).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-cache"), "MISS");
    let retry = app.post_raw(TTS, key, &headers, body.clone()).await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.header("idempotent-replayed"), "true");
    assert_eq!(retry.json["id"], first.json["id"], "the first answer");
    assert_eq!(retry.header("x-cache"), "MISS");
    assert_eq!(retry.json["credits_remaining"], 98);
    assert_eq!(
        app.download(retry.json["url"].as_str().unwrap()).await.0,
        200
    );
    assert_eq!(app.balance(&user).await, 98, "charged once");
    assert_eq!(app.sim_calls(Endpoint::Speech), 1);

    let other = json!({"text": "something else"}).to_string();
    let conflict = app.post_raw(TTS, key, &headers, other).await;
    assert_eq!(conflict.status, 409);
    assert_eq!(conflict.json["error"]["code"], "idempotency_conflict");
    assert_eq!(app.balance(&user).await, 98);

    // Keys are per user: another user may use the same key.
    let someone = app.user(10).await;
    let theirs = app
        .post_raw(TTS, Some(&someone.api_key), &headers, body)
        .await;
    assert_eq!(theirs.status, 200);
    assert!(theirs.headers.get("idempotent-replayed").is_none());
}

#[tokio::test]
async fn a_failed_idempotent_request_can_be_retried() {
    let app = TestApp::start().await;
    let user = app.user(100).await;
    let key = Some(user.api_key.as_str());
    let headers = [("idempotency-key", "retry-me")];
    let body = json!({"text": "second time lucky"}).to_string();
    app.inject(fault(
        Endpoint::Speech,
        FaultKind::ServerError { status: 503 },
        3,
    ));
    let failed = app.post_raw(TTS, key, &headers, body.clone()).await;
    assert_eq!(failed.status, 502);
    assert_eq!(
        app.request_ledger(&user, failed.header("x-request-id"))
            .await,
        vec![("miss", -2), ("refund", 2)],
        "the failure charged, then refunded"
    );
    let ok = app.post_raw(TTS, key, &headers, body).await;
    assert_eq!(ok.status, 200, "{:?}", ok.json);
    assert!(ok.headers.get("idempotent-replayed").is_none());
    assert_eq!(
        app.request_ledger(&user, ok.header("x-request-id")).await,
        vec![("miss", -2)],
        "the retry charged once"
    );
    assert_eq!(app.balance(&user).await, 98);
}

#[tokio::test]
async fn after_a_mixed_run_the_ledger_sums_to_the_balance() {
    let app = TestApp::start().await;
    let user = app.user(60).await;
    let key = Some(user.api_key.as_str());
    let mut expected_calls = 0;
    for i in 0..4 {
        let text = json!({"text": format!("clip {}", i % 2)}).to_string();
        assert_eq!(app.post_raw(TTS, key, &[], text).await.status, 200);
    }
    expected_calls += 2;
    app.inject(fault(
        Endpoint::Images,
        FaultKind::ServerError { status: 500 },
        3,
    ));
    assert_eq!(
        app.post(IMAGE, &user, &json!({"prompt": "fails"}))
            .await
            .status,
        502
    );
    expected_calls += 3;
    assert_eq!(
        app.post(IMAGE, &user, &json!({"prompt": "works"}))
            .await
            .status,
        200
    );
    expected_calls += 1;
    let idem = [("idempotency-key", "k1")];
    let body = json!({"prompt": "works", "n": 1}).to_string();
    assert_eq!(
        app.post_raw(IMAGE, key, &idem, body.clone())
            .await
            .header("x-cache"),
        "HIT"
    );
    assert_eq!(
        app.post_raw(IMAGE, key, &idem, body)
            .await
            .header("idempotent-replayed"),
        "true"
    );
    assert_eq!(
        app.post(
            IMAGE,
            &user,
            &json!({"prompt": "too expensive", "model": "gpt-image-1", "quality": "high"})
        )
        .await
        .status,
        402
    );
    app.clock.advance(chrono::Duration::seconds(1));
    assert_eq!(
        app.post_raw(
            TTS,
            key,
            &[("cache-control", "no-cache")],
            json!({"text": "clip 0"}).to_string()
        )
        .await
        .status,
        200
    );
    expected_calls += 1;

    let balance = app.balance(&user).await as i64;
    // 60 - (2 + 1 + 2 + 1) tts - 10 image miss - 1 image hit - 2 bypass
    assert_eq!(balance, 60 - 6 - 10 - 1 - 2);
    assert_eq!(
        app.ledger_sum(&user).await,
        balance,
        "ledger == balance change from zero"
    );
    assert_eq!(
        app.sim_calls(Endpoint::Speech) + app.sim_calls(Endpoint::Images),
        expected_calls
    );

    let statement = app.get("/api/v1/credits", key).await;
    assert_eq!(statement.status, 200);
    assert_eq!(statement.json["credits_remaining"], balance);
    assert_eq!(
        statement.json["ledger"][0]["reason"], "miss",
        "newest first: the bypass"
    );
    assert_eq!(statement.json["ledger"][0]["amount"], -2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_hits_are_committed_together_and_refused_one_by_one() {
    let app = TestApp::start().await;
    let body = json!({"text": "group commit"});
    let owner = app.user(100).await;
    assert_eq!(app.post(TTS, &owner, &body).await.header("x-cache"), "MISS");

    // 60 hits by a user who can pay for exactly 50, mixed with 60 by three users who can pay
    // for all of theirs, all in flight at once.
    let poor = app.user(50).await;
    let mut rich = Vec::new();
    for _ in 0..3 {
        rich.push(app.user(100).await);
    }
    let callers: Vec<_> = (0..120)
        .map(|i| {
            if i % 2 == 0 {
                poor.clone()
            } else {
                rich[i % 3].clone()
            }
        })
        .collect();
    let before = app.server.store.group_commit_stats();
    let answers = app.post_concurrently(TTS, &callers, &body).await;
    let after = app.server.store.group_commit_stats();

    let statuses = |pick: &dyn Fn(usize) -> bool| {
        let mut counts = std::collections::BTreeMap::new();
        for (i, a) in answers.iter().enumerate().filter(|(i, _)| pick(*i)) {
            *counts.entry(a.status).or_insert(0) += 1;
            if a.status == 200 {
                assert_eq!(a.header("x-cache"), "HIT", "answer {i}");
            } else {
                assert_eq!(
                    a.json["error"]["code"], "insufficient_credits",
                    "answer {i}"
                );
            }
        }
        counts
    };
    assert_eq!(
        statuses(&|i| i % 2 == 0),
        [(200, 50), (402, 10)].into_iter().collect()
    );
    assert_eq!(statuses(&|i| i % 2 == 1), [(200, 60)].into_iter().collect());

    // Every charge is a row of its own in shared commits: fewer commits than charges.
    let charges = after.writes - before.writes;
    let commits = after.commits - before.commits;
    assert!(charges >= 110, "{before:?} -> {after:?}");
    assert!(commits < charges, "{commits} commits for {charges} writes");

    assert_eq!(app.balance(&poor).await, 0);
    assert_eq!(app.ledger_sum(&poor).await, 0, "50 granted, 50 hits of 1");
    let hits = app
        .server
        .store
        .ledger(&poor.user_id, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.amount == -1)
        .count();
    assert_eq!(hits, 50);
    for user in &rich {
        assert_eq!(app.balance(user).await, 80);
        assert_eq!(app.ledger_sum(user).await, 80);
    }
}
