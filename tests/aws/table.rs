//! The Lambda application on DynamoDB and S3: concurrency, round trips, the data model.

use crate::support::{CallLog, env, jobs_queue, sdk, serve_function, simulator};
use media_cache::adapters::dynamodb::DynamoStore;
use media_cache::adapters::openai::{OpenAiClient, OpenAiConfig};
use media_cache::adapters::s3_objects::S3ObjectStore;
use media_cache::adapters::sqs_queue::SqsJobQueue;
use media_cache::clock::SystemClock;
use media_cache::domain::{LedgerReason, PriceTable, TtsRequest};
use media_cache::ports::AccountStore;
use media_cache::service::accounts::{create_user, generate_request_id};
use media_cache::service::{CacheOutcome, CallContext, MediaRequest, MediaService};
use media_cache::service::{CallbackSigner, JobParts};
use serde_json::{Value, json};
use std::sync::Arc;

fn dynamo(sdk: &aws_config::SdkConfig) -> DynamoStore {
    DynamoStore::new(
        aws_sdk_dynamodb::Client::new(sdk),
        env("MEDIA_TEST_TABLE"),
        format!("s3://{}/", env("MEDIA_TEST_BUCKET")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_concurrent_hits_on_fifty_credits_succeed_fifty_times() {
    let _turn = crate::support::burst().await;
    let sim = simulator().await;
    let base = serve_function(&sim, media_cache::lambda::Function::Tts).await;
    let sdk = sdk().await;
    let store = dynamo(&sdk);
    let http = reqwest::Client::new();
    let body = json!({"text": format!("concurrency {}", generate_request_id())});

    let rich = create_user(&store, 100, chrono::Utc::now()).await.unwrap();
    let miss = http
        .post(format!("{base}/api/v1/media/tts"))
        .bearer_auth(&rich.api_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(miss.headers()["x-cache"], "MISS");

    let user = create_user(&store, 50, chrono::Utc::now()).await.unwrap();
    let requests: Vec<_> = (0..60)
        .map(|_| {
            let request = http
                .post(format!("{base}/api/v1/media/tts"))
                .bearer_auth(&user.api_key)
                .json(&body);
            tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for r in requests {
        statuses.push(r.await.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 402).count();
    assert_eq!((ok, refused), (50, 10), "{statuses:?}");
    let account = store.account(&user.user_id).await.unwrap().unwrap();
    assert_eq!(account.credits_remaining, 0);
    let ledger = store.ledger(&user.user_id, 1000).await.unwrap();
    assert_eq!(
        ledger
            .iter()
            .filter(|l| l.reason == LedgerReason::Hit)
            .count(),
        50
    );
    assert_eq!(ledger.iter().map(|l| l.amount).sum::<i64>(), 0);
    assert_eq!(sim.calls(provider_sim::Endpoint::Speech), 1);
}

#[tokio::test]
async fn a_warm_hit_is_one_batch_read_then_one_write_round_trip() {
    let sim = simulator().await;
    let sdk = sdk().await;
    let log = CallLog::default();
    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .interceptor(log.clone())
            .build(),
    );
    let store = Arc::new(DynamoStore::new(
        client,
        env("MEDIA_TEST_TABLE"),
        format!("s3://{}/", env("MEDIA_TEST_BUCKET")),
    ));
    let openai = Arc::new(OpenAiClient::new(OpenAiConfig::new(&sim.base_url, "k")).unwrap());
    let service = MediaService::new(
        store.clone(),
        Arc::new(S3ObjectStore::new(
            media_cache::lambda::s3_client(&sdk),
            env("MEDIA_TEST_BUCKET"),
            None,
        )),
        openai.clone(),
        openai,
        PriceTable::default(),
        Arc::new(SystemClock),
    )
    .with_jobs(JobParts {
        queue: Arc::new(SqsJobQueue::new(
            aws_sdk_sqs::Client::new(&sdk),
            jobs_queue(&sdk).await,
        )),
        callbacks: CallbackSigner::new(b"secret".to_vec(), "http://127.0.0.1:9"),
        policy: Default::default(),
        miss: Default::default(),
        music: None,
        video: None,
    });
    let user = create_user(store.as_ref(), 100, chrono::Utc::now())
        .await
        .unwrap();
    let request = MediaRequest::Tts(TtsRequest {
        text: Some(format!("round trips {}", generate_request_id())),
        ..Default::default()
    });
    let call = || CallContext {
        api_key: Some(user.api_key.clone()),
        request_id: generate_request_id(),
        ..Default::default()
    };
    let miss = service
        .generate(&call(), &request)
        .await
        .unwrap()
        .ready()
        .unwrap();
    assert_eq!(miss.outcome, CacheOutcome::Miss);

    log.clear();
    let hit = service
        .generate(&call(), &request)
        .await
        .unwrap()
        .ready()
        .unwrap();
    assert_eq!(hit.outcome, CacheOutcome::Hit);
    // The hit count (UpdateItem) is sent beside the charge, never inside its transaction.
    assert_eq!(
        log.round_trips(),
        vec![
            vec!["BatchGetItem".to_owned()],
            vec!["TransactWriteItems".to_owned(), "UpdateItem".to_owned()]
        ]
    );
    assert_eq!(hit.credits_remaining, 100 - miss.credits_charged - 1);
    let account = store.account(&user.user_id).await.unwrap().unwrap();
    assert_eq!(
        account.credits_remaining, hit.credits_remaining,
        "the reported balance is real"
    );
}

/// One item as an independent client (boto3) reads it: attribute name -> DynamoDB type.
fn item_types(pk: &str, sk: &str) -> serde_json::Map<String, Value> {
    let out = std::process::Command::new(env("MEDIA_TEST_PYTHON"))
        .args([
            "scripts/aws_emulator.py",
            "item",
            &env("MEDIA_TEST_TABLE"),
            pk,
            sk,
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let item: Value = serde_json::from_slice(&out.stdout).unwrap();
    item.as_object()
        .unwrap_or_else(|| panic!("no item {pk} {sk}"))
        .clone()
}

fn assert_types(item: &serde_json::Map<String, Value>, expected: &[(&str, &str)]) {
    let mut names: Vec<&str> = item.keys().map(String::as_str).collect();
    names.sort();
    let mut wanted: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
    wanted.sort();
    assert_eq!(names, wanted, "attribute names");
    for (name, ty) in expected {
        assert!(
            item[*name].get(*ty).is_some(),
            "{name} should be {ty}: {:?}",
            item[*name]
        );
    }
}

#[tokio::test]
async fn items_have_the_names_and_types_of_the_data_model() {
    let sim = simulator().await;
    let base = serve_function(&sim, media_cache::lambda::Function::Tts).await;
    let store = dynamo(&sdk().await);
    let user = create_user(&store, 20, chrono::Utc::now()).await.unwrap();
    store
        .set_daily_limit(&user.user_id, Some(15))
        .await
        .unwrap();
    let answer: Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/media/tts"))
        .bearer_auth(&user.api_key)
        .json(&json!({"text": format!("data model {}", generate_request_id())}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cache_key = answer["cache_key"].as_str().unwrap();

    let entry = item_types(cache_key, "RESULT");
    assert_types(
        &entry,
        &[
            ("PK", "S"),
            ("SK", "S"),
            ("result_url", "S"),
            ("provider", "S"),
            ("credits_used", "N"),
            ("created_at", "S"),
            ("hit_count", "N"),
            ("ttl", "N"),
            ("request_params", "S"),
            ("status", "S"),
            ("content_type", "S"),
        ],
    );
    let url = entry["result_url"]["S"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("s3://{}/tts/", env("MEDIA_TEST_BUCKET"))),
        "{url}"
    );
    let created = entry["created_at"]["S"].as_str().unwrap();
    let created = chrono::DateTime::parse_from_rfc3339(created).expect("ISO 8601");
    let ttl: i64 = entry["ttl"]["N"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        ttl - created.timestamp(),
        7 * 24 * 3600,
        "ttl is created + 7 days"
    );
    let params: Value =
        serde_json::from_str(entry["request_params"]["S"].as_str().unwrap()).unwrap();
    assert_eq!(params["voice"], "nova");
    assert_eq!(entry["status"]["S"], "READY");

    let digest = media_cache::domain::api_key_digest(&user.api_key);
    assert_types(
        &item_types(&format!("APIKEY#{digest}"), "LOOKUP"),
        &[("PK", "S"), ("SK", "S"), ("user_id", "S")],
    );
    assert_types(
        &item_types(&format!("USER#{}", user.user_id), "PROFILE"),
        &[
            ("PK", "S"),
            ("SK", "S"),
            ("credits_remaining", "N"),
            ("credits_used", "N"),
            ("created_at", "S"),
            ("daily_limit", "N"),
            ("spent_day", "S"),
            ("spent_today", "N"),
        ],
    );
    let profile = item_types(&format!("USER#{}", user.user_id), "PROFILE");
    let day = profile["spent_day"]["S"].as_str().unwrap();
    assert!(
        chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").is_ok() && day.len() == 10,
        "spent_day is YYYY-MM-DD: {day}"
    );
    let line = store
        .ledger(&user.user_id, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.reason == LedgerReason::Miss)
        .unwrap();
    let sk = format!(
        "LEDGER#{}#{}#miss",
        line.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        line.request_id
    );
    assert_types(
        &item_types(&format!("USER#{}", user.user_id), &sk),
        &[
            ("PK", "S"),
            ("SK", "S"),
            ("at", "S"),
            ("request_id", "S"),
            ("amount", "N"),
            ("reason", "S"),
            ("cache_key", "S"),
        ],
    );
}
