//! Hits, misses, normalisation, expiry, cache directives and restarts.

use chrono::Duration;
use integration_tests::{TestApp, test_config};
use media_cache::domain::{CacheEntry, CacheKey};
use media_cache::ports::LookupStore;
use provider_sim::Endpoint;
use serde_json::json;

const TTS: &str = "/api/v1/media/tts";
const IMAGE: &str = "/api/v1/media/image";

#[tokio::test]
async fn a_miss_generates_once_and_a_normalised_equal_request_hits() {
    let app = TestApp::start().await;
    let user = app.user(100).await;

    let miss = app.post(TTS, &user, &json!({"text": "Hello world"})).await;
    assert_eq!(miss.status, 200, "{:?}", miss.json);
    assert_eq!(miss.header("x-cache"), "MISS");
    assert_eq!(miss.json["cached"], false);
    assert_eq!(miss.json["credits_charged"], 2);
    assert_eq!(miss.json["credits_remaining"], 98);
    assert_eq!(miss.header("x-credits-charged"), "2");
    assert_eq!(miss.header("x-credits-remaining"), "98");
    assert!(miss.header("x-request-id").starts_with("req_"));
    assert_eq!(app.sim_calls(Endpoint::Speech), 1);

    // Keys reordered, a default spelled out, the voice in capitals, extra spaces.
    let body = r#"{"voice":"NOVA","speed":1.0,"model":"tts-1","text":"  Hello    world "}"#;
    let hit = app.post_raw(TTS, Some(&user.api_key), &[], body).await;
    assert_eq!(hit.status, 200, "{:?}", hit.json);
    assert_eq!(hit.header("x-cache"), "HIT");
    assert_eq!(hit.json["cached"], true);
    assert_eq!(hit.json["credits_charged"], 1);
    assert_eq!(hit.json["credits_remaining"], 97);
    assert_eq!(hit.json["cache_key"], miss.json["cache_key"]);
    assert_eq!(hit.header("x-cache-key"), miss.header("x-cache-key"));
    assert_eq!(
        app.sim_calls(Endpoint::Speech),
        1,
        "a hit calls no provider"
    );

    let (s1, miss_bytes, ct) = app.download(miss.json["url"].as_str().unwrap()).await;
    let (s2, hit_bytes, _) = app.download(hit.json["url"].as_str().unwrap()).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(ct, "audio/mpeg");
    assert_eq!(&miss_bytes[..3], b"ID3", "an MP3 with its tag");
    assert_eq!(miss_bytes, hit_bytes);

    let key = CacheKey::parse(miss.json["cache_key"].as_str().unwrap()).unwrap();
    let entry = app
        .server
        .store
        .lookup("no-such-key", Some(&key))
        .await
        .unwrap()
        .entry
        .unwrap();
    assert_eq!(entry.hit_count, 1);
    assert_eq!(entry.credits_used, 2);
}

#[tokio::test]
async fn images_are_stored_and_served_as_png_and_hit() {
    let app = TestApp::start().await;
    let user = app.user(100).await;
    let body = json!({"prompt": "a lighthouse at dusk", "size": "1024x1024"});
    let miss = app.post(IMAGE, &user, &body).await;
    assert_eq!(miss.status, 200, "{:?}", miss.json);
    assert_eq!(miss.json["credits_charged"], 10, "dall-e-3 standard");
    assert_eq!(miss.json["content_type"], "image/png");
    let (status, bytes, ct) = app.download(miss.json["url"].as_str().unwrap()).await;
    assert_eq!((status, ct.as_str()), (200, "image/png"));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");

    let hit = app
        .post(IMAGE, &user, &json!({"prompt": "A lighthouse at dusk ", "quality": "STANDARD", "model": "dall-e-3", "style": "vivid"}))
        .await;
    // The prompt's case is content, so this is a different image.
    assert_eq!(hit.header("x-cache"), "MISS");
    let hit = app
        .post(IMAGE, &user, &json!({"prompt": " a lighthouse   at dusk", "quality": "STANDARD", "model": "dall-e-3", "style": "vivid", "n": 1}))
        .await;
    assert_eq!(hit.header("x-cache"), "HIT");
    assert_eq!(app.sim_calls(Endpoint::Images), 2);

    let two = app
        .post(
            IMAGE,
            &user,
            &json!({"prompt": "two cats", "model": "dall-e-2", "n": 2, "size": "256x256"}),
        )
        .await;
    assert_eq!(two.status, 200, "{:?}", two.json);
    let urls = two.json["urls"].as_array().unwrap();
    assert_eq!(urls.len(), 2);
    assert_eq!(two.json["credits_charged"], 10, "5 credits times n = 2");
    let (_, a, _) = app.download(urls[0].as_str().unwrap()).await;
    let (_, b, _) = app.download(urls[1].as_str().unwrap()).await;
    assert_ne!(a, b, "two different images");
}

#[tokio::test]
async fn an_entry_past_its_ttl_is_a_miss_while_still_stored() {
    let app = TestApp::start().await;
    let user = app.user(100).await;
    let body = json!({"text": "expiring soon"});
    let first = app.post(TTS, &user, &body).await;
    assert_eq!(first.header("x-cache"), "MISS");

    app.clock.advance(Duration::days(7) - Duration::seconds(1));
    let still = app.post(TTS, &user, &body).await;
    assert_eq!(still.header("x-cache"), "HIT", "one second before expiry");

    app.clock.advance(Duration::seconds(1));
    let key = CacheKey::parse(first.json["cache_key"].as_str().unwrap()).unwrap();
    let stored = app
        .server
        .store
        .lookup("-", Some(&key))
        .await
        .unwrap()
        .entry;
    assert!(stored.is_some(), "the expired entry is still in the store");
    let expired = app.post(TTS, &user, &body).await;
    assert_eq!(expired.header("x-cache"), "MISS");
    assert_eq!(expired.json["credits_charged"], 2);
    assert_eq!(app.sim_calls(Endpoint::Speech), 2);

    let again = app.post(TTS, &user, &body).await;
    assert_eq!(
        again.header("x-cache"),
        "HIT",
        "the regenerated entry serves again"
    );
}

/// The stored entry of `key`, read from the store.
async fn stored_entry(app: &TestApp, key: &CacheKey) -> CacheEntry {
    app.server
        .store
        .lookup("-", Some(key))
        .await
        .unwrap()
        .entry
        .unwrap()
}

#[tokio::test]
async fn cache_control_no_cache_bypasses_and_no_store_does_not_save() {
    let app = TestApp::start().await;
    let user = app.user(100).await;
    let body = json!({"text": "directive"}).to_string();
    let key = Some(user.api_key.as_str());
    let first = app.post_raw(TTS, key, &[], body.clone()).await;
    assert_eq!(first.header("x-cache"), "MISS");
    let cache_key = CacheKey::parse(first.json["cache_key"].as_str().unwrap()).unwrap();
    assert_eq!(
        app.post_raw(TTS, key, &[], body.clone())
            .await
            .header("x-cache"),
        "HIT"
    );
    let old = stored_entry(&app, &cache_key).await;
    assert_eq!(old.hit_count, 1);

    app.clock.advance(Duration::minutes(10));
    let bypass = app
        .post_raw(TTS, key, &[("cache-control", "no-cache")], body.clone())
        .await;
    assert_eq!(bypass.status, 200);
    assert_eq!(bypass.header("x-cache"), "BYPASS");
    assert_eq!(bypass.json["credits_charged"], 2);
    assert_eq!(app.sim_calls(Endpoint::Speech), 2);
    // The new result replaced the entry (README: "until the new result replaces it").
    let new = stored_entry(&app, &cache_key).await;
    assert_eq!(new.created_at, old.created_at + Duration::minutes(10));
    assert_eq!(new.expires_at, old.expires_at + Duration::minutes(10));
    assert_eq!(new.hit_count, 0, "a new entry: {new:?}");
    let hit = app.post_raw(TTS, key, &[], body.clone()).await;
    assert_eq!(hit.header("x-cache"), "HIT");
    assert_eq!(
        hit.json["created_at"], bypass.json["created_at"],
        "{:?}",
        hit.json
    );
    assert_eq!(app.sim_calls(Endpoint::Speech), 2);

    let other = json!({"text": "not to be kept"}).to_string();
    let first = app
        .post_raw(TTS, key, &[("cache-control", "no-store")], other.clone())
        .await;
    assert_eq!(first.header("x-cache"), "MISS");
    assert!(first.json["cache_expires_at"].is_null());
    let second = app.post_raw(TTS, key, &[], other).await;
    assert_eq!(second.header("x-cache"), "MISS", "nothing was saved");
    assert_eq!(app.sim_calls(Endpoint::Speech), 4);
}

#[tokio::test]
async fn result_urls_are_signed_and_expire() {
    let app = TestApp::start().await;
    let user = app.user(100).await;
    let answer = app
        .post(TTS, &user, &json!({"text": "signed", "format": "wav"}))
        .await;
    let url = answer.json["url"].as_str().unwrap().to_owned();
    let (status, bytes, ct) = app.download(&url).await;
    assert_eq!((status, ct.as_str()), (200, "audio/wav"));
    assert_eq!(&bytes[..4], b"RIFF");

    let tampered = url.replace("sig=", "sig=00");
    assert_eq!(app.download(&tampered).await.0, 403);
    let other_key = url.replace(".wav?", ".mp3?");
    assert_eq!(app.download(&other_key).await.0, 403);
    let unsigned = url.split('?').next().unwrap();
    assert_eq!(app.download(unsigned).await.0, 403);

    app.clock.advance(Duration::hours(1) + Duration::seconds(1));
    assert_eq!(app.download(&url).await.0, 403, "expired after the URL TTL");
    let fresh = app
        .post(TTS, &user, &json!({"text": "signed", "format": "wav"}))
        .await;
    assert_eq!(fresh.header("x-cache"), "HIT");
    assert_eq!(
        app.download(fresh.json["url"].as_str().unwrap()).await.0,
        200,
        "a hit signs a fresh URL"
    );
}

#[tokio::test]
async fn data_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir);
    let app = TestApp::start_with(dir, config.clone()).await;
    let user = app.user(50).await;
    let first = app.post(TTS, &user, &json!({"text": "persistent"})).await;
    assert_eq!(first.header("x-cache"), "MISS");
    let TestApp { server, dir, .. } = app;
    server.shutdown().await;

    let app = TestApp::start_with(dir, config).await;
    assert!(app.server.dev_user.is_none(), "no second dev user");
    let again = app.post(TTS, &user, &json!({"text": "persistent"})).await;
    assert_eq!(again.status, 200, "{:?}", again.json);
    assert_eq!(again.header("x-cache"), "HIT");
    assert_eq!(again.json["credits_remaining"], 47);
    assert_eq!(
        app.download(again.json["url"].as_str().unwrap()).await.0,
        200
    );
}
