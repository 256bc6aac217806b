//! The cache controls users expect from a gateway: `max-age`, `Age`, private entries, purge.

use chrono::Duration;
use integration_tests::{TestApp, test_config};
use media_cache::domain::{CacheKey, api_key_digest};
use media_cache::ports::AdminKeys;
use provider_sim::Endpoint;
use serde_json::json;

const TTS: &str = "/api/v1/media/tts";

#[tokio::test]
async fn max_age_makes_an_old_entry_a_miss_and_age_grows_with_time() {
    let app = TestApp::start().await;
    let user = app.user(100).await;
    let body = json!({"text": "how old is this sentence"}).to_string();
    let send = |cache_control: Option<&'static str>| {
        let headers: Vec<(&str, &str)> = cache_control
            .map(|v| vec![("cache-control", v)])
            .unwrap_or_default();
        let body = body.clone();
        let app = &app;
        let key = user.api_key.clone();
        async move { app.post_raw(TTS, Some(&key), &headers, body).await }
    };

    let miss = send(None).await;
    assert_eq!(miss.header("x-cache"), "MISS");
    assert_eq!(miss.header("age"), "", "a miss has no age");
    app.clock.advance(Duration::seconds(60));
    let young_enough = send(Some("max-age=120")).await;
    assert_eq!(young_enough.header("x-cache"), "HIT");
    assert_eq!(young_enough.header("age"), "60");
    app.clock.advance(Duration::seconds(5));
    assert_eq!(send(None).await.header("age"), "65", "Age grows with time");

    let too_old = send(Some("max-age=30")).await;
    assert_eq!(too_old.status, 200, "{:?}", too_old.json);
    assert_eq!(too_old.header("x-cache"), "MISS");
    assert_eq!(
        too_old.json["credits_charged"], 2,
        "a miss costs the full price"
    );
    assert_eq!(app.sim_calls(Endpoint::Speech), 2, "regenerated");
    // The new result replaced the entry: young again, for everyone.
    let after = send(Some("max-age=30")).await;
    assert_eq!(after.header("x-cache"), "HIT");
    assert_eq!(after.header("age"), "0");
    assert_eq!(app.sim_calls(Endpoint::Speech), 2);
    assert_eq!(app.ledger_sum(&user).await, app.balance(&user).await as i64);
}

#[tokio::test]
async fn a_malformed_max_age_is_a_clear_400() {
    let app = TestApp::start().await;
    let user = app.user(100).await;
    let answer = app
        .post_raw(
            TTS,
            Some(&user.api_key),
            &[("cache-control", "max-age=soon")],
            json!({"text": "when"}).to_string(),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json["error"]["code"], "invalid_header");
    assert!(answer.error_message().contains("max-age"));
    assert_eq!(app.balance(&user).await, 100, "nothing charged");
}

#[tokio::test]
async fn a_private_entry_is_its_accounts_alone_and_reveals_nothing_to_others() {
    let app = TestApp::start().await;
    let (owner, other) = (app.user(100).await, app.user(100).await);
    let body = json!({"text": "my own secret sentence"}).to_string();
    let private = [("cache-control", "private")];

    let first = app
        .post_raw(TTS, Some(&owner.api_key), &private, body.clone())
        .await;
    assert_eq!(first.header("x-cache"), "MISS");
    let key = first.header("x-cache-key").to_owned();
    assert!(
        CacheKey::parse(&key)
            .unwrap()
            .hash()
            .starts_with(&CacheKey::owner_tag(&owner.user_id)),
        "the key is in the owner's key space"
    );
    let again = app
        .post_raw(TTS, Some(&owner.api_key), &private, body.clone())
        .await;
    assert_eq!(again.header("x-cache"), "HIT", "the owner hits it");
    assert_eq!(again.header("x-cache-key"), key);

    // Another account, private or shared: a cold miss, as if the entry did not exist.
    for headers in [&private[..], &[]] {
        let theirs = app
            .post_raw(TTS, Some(&other.api_key), headers, body.clone())
            .await;
        assert_eq!(theirs.status, first.status);
        assert_eq!(theirs.header("x-cache"), "MISS");
        assert_ne!(theirs.header("x-cache-key"), key);
        assert_eq!(
            theirs.json["credits_charged"],
            first.json["credits_charged"]
        );
        let mut names: Vec<_> = theirs.headers.keys().map(|h| h.as_str()).collect();
        let mut cold: Vec<_> = first.headers.keys().map(|h| h.as_str()).collect();
        names.sort_unstable();
        cold.sort_unstable();
        assert_eq!(names, cold, "the same headers as a cold miss");
    }
    assert_eq!(app.sim_calls(Endpoint::Speech), 3);
}

#[tokio::test]
async fn the_private_cache_option_shares_nothing_across_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let config = mediactl::serve::ServeConfig {
        private_entries: true,
        ..test_config(&dir)
    };
    let app = TestApp::start_with(dir, config).await;
    let (a, b) = (app.user(100).await, app.user(100).await);
    let body = json!({"text": "nobody else's"});
    assert_eq!(app.post(TTS, &a, &body).await.header("x-cache"), "MISS");
    assert_eq!(app.post(TTS, &a, &body).await.header("x-cache"), "HIT");
    assert_eq!(app.post(TTS, &b, &body).await.header("x-cache"), "MISS");
    assert_eq!(app.sim_calls(Endpoint::Speech), 2);
}

#[tokio::test]
async fn an_admin_key_purges_an_entry_and_the_next_request_misses() {
    let app = TestApp::start().await;
    let (admin, user) = (app.user(100).await, app.user(100).await);
    app.server
        .store
        .make_admin(&api_key_digest(&admin.api_key))
        .await
        .unwrap();
    let body = json!({"text": "purge me"});
    let miss = app.post(TTS, &user, &body).await;
    let key = miss.header("x-cache-key").to_owned();
    assert_eq!(app.post(TTS, &user, &body).await.header("x-cache"), "HIT");

    let purge = |api_key: Option<String>, key: String| {
        let mut request = app.http.delete(format!(
            "{}/api/v1/cache/{}",
            app.server.base_url,
            key.replace('#', "%23")
        ));
        if let Some(api_key) = api_key {
            request = request.bearer_auth(api_key);
        }
        async move {
            let answer = request.send().await.unwrap();
            let status = answer.status().as_u16();
            let body: serde_json::Value = answer.json().await.unwrap_or_default();
            (
                status,
                body["error"]["code"].as_str().unwrap_or("").to_owned(),
            )
        }
    };
    assert_eq!(purge(None, key.clone()).await, (401, "unauthorized".into()));
    assert_eq!(
        purge(Some(user.api_key.clone()), key.clone()).await,
        (403, "forbidden".into())
    );
    assert_eq!(
        app.post(TTS, &user, &body).await.header("x-cache"),
        "HIT",
        "a refused purge deletes nothing"
    );
    assert_eq!(purge(Some(admin.api_key.clone()), key.clone()).await.0, 204);
    let after = app.post(TTS, &user, &body).await;
    assert_eq!(
        after.header("x-cache"),
        "MISS",
        "a purged entry is a miss at once"
    );
    assert_eq!(app.sim_calls(Endpoint::Speech), 2);
    assert_eq!(
        purge(Some(admin.api_key.clone()), "CACHE#tts#nothex".into()).await,
        (404, "not_found".into())
    );
}
