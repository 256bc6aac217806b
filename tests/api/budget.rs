//! Daily spend limits: 429 `daily_limit_exceeded` with `Retry-After` until 00:00 UTC.

use integration_tests::TestApp;
use media_cache::ports::AccountStore;
use provider_sim::Endpoint;
use serde_json::json;

const TTS: &str = "/api/v1/media/tts";
const CREDITS: &str = "/api/v1/credits";

#[tokio::test]
async fn hits_over_the_daily_limit_are_429_until_the_utc_day_turns() {
    // Given a cached result (made by another user) and a user with a daily limit of 10
    let app = TestApp::start().await; // the clock stands at 2026-11-25 12:00:00 UTC
    let body = json!({"text": "budgeted"});
    let owner = app.user(100).await;
    assert_eq!(app.post(TTS, &owner, &body).await.header("x-cache"), "MISS");
    let user = app.user(100).await;
    app.server
        .store
        .set_daily_limit(&user.user_id, Some(10))
        .await
        .unwrap();
    let key = Some(user.api_key.as_str());

    // When they make ten 1-credit hits, all are served
    for _ in 0..10 {
        let hit = app.post(TTS, &user, &body).await;
        assert_eq!(hit.status, 200, "{:?}", hit.json);
        assert_eq!(hit.header("x-cache"), "HIT");
        assert_eq!(hit.header("x-credits-charged"), "1");
    }
    // Then the eleventh is refused until midnight UTC, charged nothing and generated nothing
    let refused = app.post(TTS, &user, &body).await;
    assert_eq!(refused.status, 429, "{:?}", refused.json);
    assert_eq!(refused.json["error"]["code"], "daily_limit_exceeded");
    assert_eq!(refused.header("retry-after"), (12 * 3600).to_string());
    let message = refused.error_message();
    for said in ["limit is 10 credits", "10 were spent today", "00:00 UTC"] {
        assert!(message.contains(said), "{message}");
    }
    assert_eq!(app.balance(&user).await, 90);
    assert_eq!(
        app.ledger_sum(&user).await,
        90,
        "the refusal has no ledger line"
    );
    assert_eq!(app.sim_calls(Endpoint::Speech), 1);

    // A miss is refused the same way, before any provider call.
    let miss = app.post(TTS, &user, &json!({"text": "new words"})).await;
    assert_eq!(miss.status, 429);
    assert_eq!(app.sim_calls(Endpoint::Speech), 1);

    // The statement shows the limit, today's spend and when the day turns.
    let statement = app.get(CREDITS, key).await;
    assert_eq!(statement.json["daily_limit"], 10);
    assert_eq!(statement.json["spent_today"], 10);
    assert_eq!(statement.json["day_resets_at"], "2026-11-26T00:00:00Z");

    // Later the same day Retry-After counts down with the clock.
    app.clock.advance(chrono::Duration::minutes(11 * 60 + 30));
    let later = app.post(TTS, &user, &body).await;
    assert_eq!(later.status, 429);
    assert_eq!(later.header("retry-after"), "1800");

    // Past midnight UTC the spend starts again.
    app.clock.advance(chrono::Duration::minutes(31));
    let next_day = app.post(TTS, &user, &body).await;
    assert_eq!(next_day.status, 200, "{:?}", next_day.json);
    assert_eq!(next_day.header("x-cache"), "HIT");
    let statement = app.get(CREDITS, key).await;
    assert_eq!(statement.json["spent_today"], 1);
    assert_eq!(statement.json["day_resets_at"], "2026-11-27T00:00:00Z");
    assert_eq!(statement.json["credits_remaining"], 89);
    assert_eq!(app.ledger_sum(&user).await, 89);
}

#[tokio::test]
async fn the_statement_of_a_user_without_a_limit_says_so_and_still_counts_the_spend() {
    let app = TestApp::start().await;
    let user = app.user(100).await;
    let answer = app.post(TTS, &user, &json!({"text": "unlimited"})).await;
    assert_eq!(answer.status, 200);
    let statement = app.get(CREDITS, Some(&user.api_key)).await;
    assert_eq!(statement.json["daily_limit"], serde_json::Value::Null);
    assert_eq!(statement.json["spent_today"], 2);
    // A limit set later in the day counts what was spent before it.
    app.server
        .store
        .set_daily_limit(&user.user_id, Some(3))
        .await
        .unwrap();
    let over = app.post(TTS, &user, &json!({"text": "more words"})).await;
    assert_eq!(over.status, 429);
    assert_eq!(app.balance(&user).await, 98);
    // Removing it lets the request through.
    app.server
        .store
        .set_daily_limit(&user.user_id, None)
        .await
        .unwrap();
    assert_eq!(
        app.post(TTS, &user, &json!({"text": "more words"}))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_request_dearer_than_the_whole_limit_is_refused_without_a_retry_after() {
    let app = TestApp::start().await;
    let user = app.user(100).await;
    app.server
        .store
        .set_daily_limit(&user.user_id, Some(1))
        .await
        .unwrap();
    // A speech miss costs 2: it can never fit in a daily limit of 1.
    let refused = app.post(TTS, &user, &json!({"text": "too dear"})).await;
    assert_eq!(refused.status, 429, "{:?}", refused.json);
    assert_eq!(refused.json["error"]["code"], "daily_limit_exceeded");
    assert_eq!(refused.header("retry-after"), "", "waiting would not help");
    assert!(
        refused
            .error_message()
            .contains("cannot be served under this limit"),
        "{}",
        refused.error_message()
    );
    assert_eq!(app.balance(&user).await, 100);
    assert_eq!(app.sim_calls(Endpoint::Speech), 0);
}
