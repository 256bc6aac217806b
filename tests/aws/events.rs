//! Every file in events/ through its function's handler: the event is parsed the way the Lambda
//! runtime parses it and answered by the function's application on the emulator.

use crate::support::{lambda_config, sdk, simulator};
use media_cache::lambda::Function;
use media_cache::service::accounts::create_user_with_key;
use serde_json::Value;
use tower::ServiceExt;

/// The key the sample events carry.
const EVENTS_KEY: &str = "mc_sample_events_key";

/// What each event must get: its function and status.
fn expectation(file: &str) -> (Function, u16) {
    match file {
        "tts-valid.json" => (Function::Tts, 200),
        "tts-bad-request.json" => (Function::Tts, 422),
        "tts-unauthenticated.json" => (Function::Tts, 401),
        "image-valid.json" => (Function::Image, 200),
        "image-bad-request.json" => (Function::Image, 422),
        "image-unauthenticated.json" => (Function::Image, 401),
        other => panic!("events/{other} has no expectation here: add one"),
    }
}

#[tokio::test]
async fn every_sample_event_gets_its_expected_answer() {
    let sim = simulator().await;
    let sdk = sdk().await;
    let config = lambda_config(&sim);
    let store = media_cache::adapters::dynamodb::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        crate::support::env("MEDIA_TEST_TABLE"),
        "s3://unused/",
    );
    create_user_with_key(&store, 1000, EVENTS_KEY.into(), chrono::Utc::now())
        .await
        .unwrap();

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../events");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "the sample events are there");
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (media, status) = expectation(&name);
        let app = media_cache::lambda::app(&config, &sdk, media)
            .await
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let request = lambda_http::request::from_str(&text)
            .unwrap_or_else(|e| panic!("{name} is not an API Gateway event: {e}"));
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{name}");
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let json: Value = serde_json::from_slice(&body).unwrap();
        if status == 200 {
            assert!(
                json["url"].as_str().unwrap().contains("X-Amz-Signature"),
                "{name}: presigned"
            );
            assert!(
                json["cache_key"].as_str().unwrap().starts_with("CACHE#"),
                "{name}"
            );
        } else {
            assert!(json["error"]["message"].is_string(), "{name}: {json}");
        }
    }
}

#[tokio::test]
async fn a_function_runs_on_the_embedded_store_for_cargo_lambda_watch() {
    let sim = simulator().await;
    let sdk = sdk().await;
    let dir = tempfile::tempdir().unwrap();
    let config = media_cache::lambda::LambdaConfig {
        backend: media_cache::lambda::Backend::Embedded {
            data_dir: dir.path().to_path_buf(),
        },
        ..lambda_config(&sim)
    };
    let store =
        media_cache::adapters::sqlite::SqliteStore::open(&dir.path().join("media.db")).unwrap();
    create_user_with_key(&store, 100, EVENTS_KEY.into(), chrono::Utc::now())
        .await
        .unwrap();
    let app = media_cache::lambda::app(&config, &sdk, Function::Tts)
        .await
        .unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../events/tts-valid.json"
    ))
    .unwrap();
    let request = lambda_http::request::from_str(&text).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let json: Value = serde_json::from_slice(&body).unwrap();
    let url = json["url"].as_str().unwrap();
    let prefix = "http://127.0.0.1:9000/lambda-url/tts";
    assert!(url.starts_with(prefix), "{url}");

    // The function serves its own objects under that URL.
    let object = axum::http::Request::get(&url[prefix.len()..])
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.oneshot(object).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "audio/mpeg");
}
