//! Every file in events/ through its function's handler: the event is parsed the way the Lambda
//! runtime parses it and answered by the function's application on the emulator.

use crate::support::{jobs_config, jobs_queue, lambda_config, sdk, simulator, task_simulator};
use media_cache::lambda::Function;
use media_cache::ports::LookupStore;
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
        "music-valid.json" => (Function::Music, 202),
        "music-bad-request.json" => (Function::Music, 422),
        "video-valid.json" => (Function::Video, 202),
        "video-bad-request.json" => (Function::Video, 422),
        "jobs-status-unknown.json" => (Function::Jobs, 404),
        "jobs-credits.json" => (Function::Jobs, 200),
        "jobs-callback-forged.json" => (Function::Jobs, 404),
        other => panic!("events/{other} has no expectation here: add one"),
    }
}

#[tokio::test]
async fn every_sample_event_gets_its_expected_answer() {
    let sim = task_simulator().await;
    let sdk = sdk().await;
    let queue = jobs_queue(&sdk).await;
    let config = jobs_config(&sim, &queue);
    let store = media_cache::adapters::dynamodb::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        crate::support::env("MEDIA_TEST_TABLE"),
        "s3://unused/",
    );
    // Once per table (a re-run on the same emulator finds the user there).
    let known = store
        .lookup(&media_cache::domain::api_key_digest(EVENTS_KEY), None)
        .await
        .unwrap();
    if known.user_id.is_none() {
        create_user_with_key(&store, 1000, EVENTS_KEY.into(), chrono::Utc::now())
            .await
            .unwrap();
    }

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../events");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        // The SQS event goes to the completion function: tested below. sam-local-env.json is
        // not an event: `sam local invoke --env-vars` reads it (scripts/sam-local.sh).
        .filter(|p| !p.ends_with("completion-sqs.json") && !p.ends_with("sam-local-env.json"))
        .collect();
    files.sort();
    assert!(files.len() >= 13, "the sample events are there");
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
        if status == 202 {
            assert!(
                json["job_id"].as_str().unwrap().starts_with("job_"),
                "{name}"
            );
            assert!(json["poll_url"].is_string(), "{name}");
        } else if name == "jobs-credits.json" {
            assert!(json["credits_remaining"].is_u64(), "{name}: {json}");
        } else if status == 200 {
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

/// The completion function's SQS event: an unknown job's message is done (nothing to do), an
/// unreadable one is dropped (retrying cannot fix it); with the store unreachable, only the
/// readable message is reported as a batch item failure, so SQS delivers just that one again.
#[tokio::test]
async fn the_sqs_event_goes_through_the_completion_step_with_partial_failures() {
    let sim = task_simulator().await;
    let sdk = sdk().await;
    let queue = jobs_queue(&sdk).await;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../events/completion-sqs.json"
    ))
    .unwrap();
    let event: aws_lambda_events::event::sqs::SqsEvent = serde_json::from_str(&text).unwrap();
    let first_id = event.records[0].message_id.clone().unwrap();

    let config = jobs_config(&sim, &queue);
    let (service, _) =
        media_cache::lambda::service(&config, &sdk, media_cache::lambda::Role::Completion)
            .await
            .unwrap();
    let done = media_cache::lambda::complete_batch(&service, event.clone()).await;
    assert!(done.batch_item_failures.is_empty(), "{done:?}");

    let mut broken = config.clone();
    broken.backend = media_cache::lambda::Backend::Aws {
        table: "no-such-table".into(),
        bucket: crate::support::env("MEDIA_TEST_BUCKET"),
    };
    let (service, _) =
        media_cache::lambda::service(&broken, &sdk, media_cache::lambda::Role::Completion)
            .await
            .unwrap();
    let failed = media_cache::lambda::complete_batch(&service, event).await;
    let ids: Vec<&str> = failed
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(ids, vec![first_id.as_str()]);
}
