//! The functions under AWS's real limits, on the strict emulator: DynamoDB cancels transactions
//! that meet another one in flight (`TransactionConflict`), handlers work against the
//! invocation's deadline and are stopped at the timeout, answers over Lambda's payload limit are
//! refused. Every test name says which limit it is about: `conflict`, `deadline` or `settle`
//! (`./scripts/test.sh conflict` runs the first kind).

use crate::support::{
    FunctionLimits, env, jobs_config, jobs_queue, post, run_completion_until, sdk, serve_app,
    serve_app_limited, strict, strict_stats,
};
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use media_cache::adapters::dynamodb::DynamoStore;
use media_cache::domain::{CacheKey, LedgerReason, MediaType, TtsRequest, api_key_digest};
use media_cache::lambda::{Function, LambdaConfig};
use media_cache::ports::{AccountStore, JobStore, LookupStore};
use media_cache::service::accounts::{NewUser, create_user, generate_request_id};
use provider_sim::{Endpoint, FaultKind, FaultRule, SimConfig, SimHandle};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

fn dynamo(sdk: &aws_config::SdkConfig) -> DynamoStore {
    DynamoStore::new(
        aws_sdk_dynamodb::Client::new(sdk),
        env("MEDIA_TEST_TABLE"),
        format!("s3://{}/", env("MEDIA_TEST_BUCKET")),
    )
}

async fn sim_with(config: SimConfig) -> SimHandle {
    provider_sim::spawn(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// The user's balance, after checking that their ledger adds up to it (every line is in one
/// transaction with its balance change: grants, charges, refunds).
async fn balanced(store: &DynamoStore, user: &NewUser) -> u64 {
    let account = store.account(&user.user_id).await.unwrap().unwrap();
    let ledger = store.ledger(&user.user_id, 10_000).await.unwrap();
    let sum: i64 = ledger.iter().map(|l| l.amount).sum();
    assert_eq!(
        sum, account.credits_remaining as i64,
        "ledger of {} == balance",
        user.user_id
    );
    account.credits_remaining
}

async fn users(store: &DynamoStore, n: usize, credits: u64) -> Vec<NewUser> {
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        all.push(
            create_user(store, credits, chrono::Utc::now())
                .await
                .unwrap(),
        );
    }
    all
}

#[tokio::test]
async fn the_strict_emulator_cancels_a_transaction_or_write_that_conflicts_with_one_in_flight() {
    let sdk = sdk().await;
    // No SDK retries: this test looks at what the emulator answers, once.
    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
            .build(),
    );
    let table = env("MEDIA_TEST_TABLE");
    let pk = format!("CONFLICT#{}", generate_request_id());
    // Transactions on this item stay in flight for 800 ms: a deterministic overlap.
    strict(
        Method::POST,
        "/_strict/slow",
        Some(json!({"key_contains": pk, "hold_ms": 800})),
    )
    .await;
    let add = |n: i64| {
        let (client, table, pk) = (client.clone(), table.clone(), pk.clone());
        async move {
            let update = Update::builder()
                .table_name(table)
                .key("PK", AttributeValue::S(pk))
                .key("SK", AttributeValue::S("ITEM".into()))
                .update_expression("ADD n :n")
                .expression_attribute_values(":n", AttributeValue::N(n.to_string()))
                .build()
                .unwrap();
            client
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().update(update).build())
                .send()
                .await
        }
    };
    let first = tokio::spawn(add(1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = add(2).await;
    let plain = client
        .put_item()
        .table_name(&table)
        .item("PK", AttributeValue::S(pk.clone()))
        .item("SK", AttributeValue::S("ITEM".into()))
        .send()
        .await;
    let first = first.await.unwrap();
    strict(
        Method::DELETE,
        &format!("/_strict/slow?key_contains={pk}"),
        None,
    )
    .await;

    assert!(
        first.is_ok(),
        "the transaction in flight commits: {first:?}"
    );
    let cancel = second.unwrap_err();
    let reasons: Vec<_> = match cancel.as_service_error() {
        Some(aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c)) => {
            c.cancellation_reasons().iter().filter_map(|r| r.code().map(str::to_owned)).collect()
        }
        other => panic!("expected a cancellation, got {other:?}"),
    };
    assert_eq!(reasons, vec!["TransactionConflict".to_owned()]);
    let refused = plain.unwrap_err();
    assert_eq!(
        aws_sdk_dynamodb::error::ProvideErrorMetadata::code(&refused),
        Some("TransactionConflictException")
    );
    let item = client
        .get_item()
        .table_name(&table)
        .key("PK", AttributeValue::S(pk))
        .key("SK", AttributeValue::S("ITEM".into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(
        item["n"],
        AttributeValue::N("1".into()),
        "only the first applied"
    );
}

/// 16 identical requests at once through `function`: one provider call, one MISS, every other
/// answer COALESCED or HIT with the hit price, every ledger balanced.
async fn sixteen_identical(function: Function, path: &str, body: Value, endpoint: Endpoint) {
    let _turn = crate::support::burst().await;
    let sim = sim_with(SimConfig {
        speech_latency: Duration::from_millis(700),
        image_latency: Duration::from_millis(700),
        ..SimConfig::default()
    })
    .await;
    let sdk = sdk().await;
    let store = dynamo(&sdk);
    let config = jobs_config(&sim, &jobs_queue(&sdk).await);
    let base = serve_app(&config, function).await;
    let users = users(&store, 4, 100).await;
    let http = reqwest::Client::new();
    let url = format!("{base}{path}");
    let replies = futures_util::future::join_all((0..16).map(|i| {
        let (http, url, user, body) = (&http, &url, &users[i % 4], &body);
        async move { (i % 4, post(http, url, user, body).await) }
    }))
    .await;

    assert_eq!(sim.calls(endpoint), 1, "one provider call");
    let misses: Vec<_> = replies.iter().filter(|(_, r)| r.cache == "MISS").collect();
    assert_eq!(misses.len(), 1, "{replies:?}");
    let full_price = misses[0].1.charged;
    assert!(full_price > 1);
    let mut spent = [0u64; 4];
    for (user, reply) in &replies {
        assert_eq!(reply.status, 200, "{reply:?}");
        if reply.cache != "MISS" {
            assert!(
                reply.cache == "COALESCED" || reply.cache == "HIT",
                "{reply:?}"
            );
            assert_eq!(reply.charged, 1, "the hit price");
        }
        assert!(reply.json["url"].is_string(), "{reply:?}");
        spent[*user] += reply.charged;
    }
    assert_eq!(spent.iter().sum::<u64>(), full_price + 15);
    for (user, spent) in users.iter().zip(spent) {
        assert_eq!(balanced(&store, user).await, 100 - spent);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_identical_speech_requests_under_conflicts_make_one_provider_call() {
    let text = format!("single flight {}", generate_request_id());
    sixteen_identical(
        Function::Tts,
        "/api/v1/media/tts",
        json!({"text": text}),
        Endpoint::Speech,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_identical_image_requests_under_conflicts_make_one_provider_call() {
    let prompt = format!("a lighthouse {}", generate_request_id());
    sixteen_identical(
        Function::Image,
        "/api/v1/media/image",
        json!({"prompt": prompt, "model": "dall-e-2", "size": "256x256"}),
        Endpoint::Images,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_hits_by_fifty_users_on_one_key_never_fail_on_a_conflict() {
    crate::support::logs();
    let _turn = crate::support::burst().await;
    let sim = sim_with(SimConfig::default()).await;
    let sdk = sdk().await;
    let store = dynamo(&sdk);
    let config = jobs_config(&sim, &jobs_queue(&sdk).await);
    let base = serve_app(&config, Function::Tts).await;
    let http = reqwest::Client::new();
    let url = format!("{base}/api/v1/media/tts");
    let text = format!("hot key {}", generate_request_id());
    let body = json!({"text": text});
    let owner = users(&store, 1, 100).await.remove(0);
    assert_eq!(post(&http, &url, &owner, &body).await.cache, "MISS");
    let users = users(&store, 50, 10).await;
    let retries_before = DynamoStore::contention_retries();
    let stats_before = strict_stats().await;

    let replies = futures_util::future::join_all((0..200).map(|i| {
        let (http, url, user, body) = (&http, &url, &users[i % 50], &body);
        async move { post(http, url, user, body).await }
    }))
    .await;

    // The figures of the hit path under contention (exact when this test runs alone:
    // `./scripts/test.sh two_hundred_hits --nocapture`).
    let retries = DynamoStore::contention_retries() - retries_before;
    let stats = strict_stats().await;
    let delta = |name: &str| stats[name].as_u64().unwrap() - stats_before[name].as_u64().unwrap();
    eprintln!(
        "200 concurrent hits: {retries} writes retried after contention; emulator: {} transactions, {} cancelled by a conflict, {} plain writes refused",
        delta("transactions"),
        delta("transaction_conflicts"),
        delta("write_conflicts")
    );
    for reply in &replies {
        assert_eq!(
            (reply.status, reply.cache.as_str()),
            (200, "HIT"),
            "{reply:?}"
        );
    }
    for user in &users {
        assert_eq!(balanced(&store, user).await, 10 - 4);
    }
    let key = CacheKey::parse(replies[0].json["cache_key"].as_str().unwrap()).unwrap();
    let entry = store
        .lookup(&api_key_digest("mc_none"), Some(&key))
        .await
        .unwrap()
        .entry
        .unwrap();
    assert_eq!(entry.hit_count, 200, "every hit counted, once");
    assert_eq!(sim.calls(Endpoint::Speech), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_mixed_requests_of_one_user_under_conflict_are_never_a_5xx() {
    let _turn = crate::support::burst().await;
    let sim = sim_with(SimConfig {
        speech_latency: Duration::from_millis(300),
        image_latency: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let sdk = sdk().await;
    let store = dynamo(&sdk);
    let config = jobs_config(&sim, &jobs_queue(&sdk).await);
    let tts = serve_app(&config, Function::Tts).await;
    let image = serve_app(&config, Function::Image).await;
    let video = serve_app(&config, Function::Video).await;
    let user = users(&store, 1, 60).await.remove(0);
    let http = reqwest::Client::new();
    let tag = generate_request_id();
    let requests: Vec<(String, Value)> = (0..20)
        .map(|i| match i % 4 {
            // Repeats of one text (a miss and its joins), distinct texts, images, a video.
            0 => (
                format!("{tts}/api/v1/media/tts"),
                json!({"text": format!("again {tag}")}),
            ),
            1 => (
                format!("{tts}/api/v1/media/tts"),
                json!({"text": format!("text {i} {tag}")}),
            ),
            2 => (
                format!("{image}/api/v1/media/image"),
                json!({"prompt": format!("image {i} {tag}")}),
            ),
            _ => (
                format!("{video}/api/v1/media/video"),
                json!({"prompt": format!("video {i} {tag}")}),
            ),
        })
        .collect();
    let replies = futures_util::future::join_all(
        requests
            .iter()
            .map(|(url, body)| post(&http, url, &user, body)),
    )
    .await;

    let mut charged = 0;
    for reply in &replies {
        assert!(
            [200, 202, 402].contains(&reply.status),
            "never a 5xx: {reply:?}"
        );
        charged += reply.charged;
    }
    assert!(
        replies.iter().any(|r| r.status == 402),
        "60 credits do not cover all of it"
    );
    assert_eq!(balanced(&store, &user).await, 60 - charged);
}

/// The configuration of a tts function whose requests answer `margin` before its deadline, and
/// whose settlements come one second after it.
fn settling(sim: &SimHandle, queue: &str, margin: Duration) -> LambdaConfig {
    let mut config = jobs_config(sim, queue);
    config.deadline_margin = margin;
    config.miss_policy.settle_margin = Duration::from_secs(1);
    config.miss_policy.worker_budget = Duration::from_secs(15);
    config
}

/// The job behind a pending or finished cache entry of `text`.
async fn job_of_text(store: &DynamoStore, text: &str) -> Option<media_cache::domain::Job> {
    let key = TtsRequest {
        text: Some(text.to_owned()),
        ..Default::default()
    }
    .normalize()
    .unwrap();
    let key = media_cache::domain::NormalizedMedia::cache_key(&key);
    let entry = store
        .lookup(&api_key_digest("mc_none"), Some(&key))
        .await
        .unwrap()
        .entry?;
    store.job(entry.job_id.as_deref()?).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handler_stopped_right_after_the_charge_is_settled_by_the_worker() {
    // The provider takes 2 s; the runtime stops the handler after 1 s, long before the deadline
    // the handler believes in (a crash, as far as the request can tell).
    let sim = sim_with(SimConfig {
        speech_latency: Duration::from_secs(2),
        ..SimConfig::default()
    })
    .await;
    let sdk = sdk().await;
    let store = dynamo(&sdk);
    let queue = jobs_queue(&sdk).await;
    let config = settling(&sim, &queue, Duration::ZERO);
    let limits = FunctionLimits {
        timeout: Duration::from_secs(3),
        stopped_after: Duration::from_secs(1),
    };
    let base = serve_app_limited(&config, Function::Tts, limits).await;
    let user = users(&store, 1, 100).await.remove(0);
    let text = format!("stopped {}", generate_request_id());
    let http = reqwest::Client::new();
    let reply = post(
        &http,
        &format!("{base}/api/v1/media/tts"),
        &user,
        &json!({"text": text}),
    )
    .await;
    assert_eq!(reply.status, 502, "the runtime stopped it: {reply:?}");
    let job = job_of_text(&store, &text).await.expect("the charge's job");
    let price = job.credits_charged;
    assert_eq!(balanced(&store, &user).await, 100 - price, "charged");

    let store_ref = &store;
    let job_id = job.id.clone();
    run_completion_until(&config, &queue, || async {
        store_ref
            .job(&job_id)
            .await
            .unwrap()
            .is_some_and(|j| j.status.is_terminal())
    })
    .await;

    let job = store.job(&job.id).await.unwrap().unwrap();
    assert_eq!(
        job.status,
        media_cache::domain::JobStatus::Completed,
        "{job:?}"
    );
    assert_eq!(balanced(&store, &user).await, 100 - price, "charged once");
    let again = post(
        &http,
        &format!("{base}/api/v1/media/tts"),
        &user,
        &json!({"text": text}),
    )
    .await;
    assert_eq!((again.status, again.cache.as_str()), (200, "HIT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_slower_than_the_deadline_gets_a_202_whose_job_completes() {
    // The provider takes 4 s; the function has 3 s and answers half a second before.
    let sim = sim_with(SimConfig {
        speech_latency: Duration::from_secs(4),
        ..SimConfig::default()
    })
    .await;
    let sdk = sdk().await;
    let store = dynamo(&sdk);
    let queue = jobs_queue(&sdk).await;
    let config = settling(&sim, &queue, Duration::from_millis(500));
    let limits = FunctionLimits {
        timeout: Duration::from_secs(3),
        stopped_after: Duration::from_secs(3),
    };
    let base = serve_app_limited(&config, Function::Tts, limits).await;
    let jobs = serve_app(&config, Function::Jobs).await;
    let user = users(&store, 1, 100).await.remove(0);
    let http = reqwest::Client::new();
    let reply = post(
        &http,
        &format!("{base}/api/v1/media/tts"),
        &user,
        &json!({"text": format!("slow {}", generate_request_id())}),
    )
    .await;
    // A 202 is the proof: the harness answers 502 for a function stopped at its timeout.
    assert_eq!(reply.status, 202, "answered before the deadline: {reply:?}");
    let job_id = reply.json["job_id"].as_str().unwrap().to_owned();

    let poll = |http: reqwest::Client| {
        let url = format!("{jobs}/api/v1/media/jobs/{job_id}");
        let key = user.api_key.clone();
        async move {
            let resp = http.get(url).bearer_auth(key).send().await.unwrap();
            resp.json::<Value>().await.unwrap()
        }
    };
    run_completion_until(&config, &queue, || {
        let poll = poll(http.clone());
        async move { poll.await["status"] == "completed" }
    })
    .await;
    let job = poll(http.clone()).await;
    assert!(job["url"].is_string(), "{job}");
    assert_eq!(
        balanced(&store, &user).await,
        100 - reply.charged,
        "charged once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_that_fails_once_is_settled_exactly_once() {
    let sim = crate::support::task_simulator().await;
    sim.state.inject(FaultRule {
        endpoint: Some(Endpoint::SunoGenerate),
        kind: FaultKind::TaskFailed {
            status: None,
            message: Some("could not sing it".into()),
        },
        times: Some(1),
    });
    let sdk = sdk().await;
    let store = dynamo(&sdk);
    let queue = jobs_queue(&sdk).await;
    // Redelivered one second after a failed attempt.
    aws_sdk_sqs::Client::new(&sdk)
        .set_queue_attributes()
        .queue_url(&queue)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "1",
        )
        .send()
        .await
        .unwrap();
    let config = jobs_config(&sim, &queue);
    let music = serve_app(&config, Function::Music).await;
    let user = users(&store, 1, 100).await.remove(0);
    let http = reqwest::Client::new();
    let reply = post(
        &http,
        &format!("{music}/api/v1/media/music"),
        &user,
        &json!({"prompt": format!("a song {}", generate_request_id())}),
    )
    .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    let job_id = reply.json["job_id"].as_str().unwrap().to_owned();

    // Every transaction on the user's items fails until the fault is lifted: the refund cannot
    // land (the SDK's and the store's own retries included).
    strict(
        Method::POST,
        "/_strict/faults",
        Some(json!({
            "operation": "TransactWriteItems",
            "key_contains": user.user_id,
            "error": "InternalServerError",
            "times": 100000
        })),
    )
    .await;
    let refund_lines = || async {
        store
            .ledger(&user.user_id, 100)
            .await
            .unwrap()
            .iter()
            .filter(|l| l.reason == LedgerReason::Refund)
            .count()
    };
    // The first settlement fails (its message stays in the queue).
    let (service, _) =
        media_cache::lambda::service(&config, &sdk, media_cache::lambda::Role::Completion)
            .await
            .unwrap();
    let message = media_cache::domain::JobMessage::settle(&job_id);
    // Until the task has failed, a settlement only polls.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the task never failed"
        );
        if service.process_job(&message).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(refund_lines().await, 0, "not refunded yet");
    assert_eq!(balanced(&store, &user).await, 100 - reply.charged);

    strict(
        Method::DELETE,
        &format!("/_strict/faults?key_contains={}", user.user_id),
        None,
    )
    .await;
    let store_ref = &store;
    let user_ref = &user;
    run_completion_until(&config, &queue, || async {
        store_ref
            .ledger(&user_ref.user_id, 100)
            .await
            .unwrap()
            .iter()
            .any(|l| l.reason == LedgerReason::Refund)
    })
    .await;
    // A redelivery later changes nothing.
    service.process_job(&message).await.unwrap();
    assert_eq!(refund_lines().await, 1, "refunded exactly once");
    assert_eq!(balanced(&store, &user).await, 100);
    let job = store.job(&job_id).await.unwrap().unwrap();
    assert_eq!(job.status, media_cache::domain::JobStatus::Failed);
    assert_eq!(job.media_type, MediaType::Music);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wav_over_the_response_limit_reaches_the_openai_sdk_by_redirect_within_the_deadline() {
    let sim = sim_with(SimConfig::default()).await;
    let sdk = sdk().await;
    let store = dynamo(&sdk);
    let config = jobs_config(&sim, &jobs_queue(&sdk).await);
    let base = serve_app(&config, Function::Tts).await;
    let user = users(&store, 1, 100).await.remove(0);
    // 500 characters at a quarter speed: two minutes of 24 kHz 16-bit audio, 5.8 MB of wav,
    // 7.7 MB once base64-encoded: more than a function may answer.
    let text = format!("{} {}", "long ".repeat(98), generate_request_id());
    let script = r#"
import sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1] + "/v1", api_key=sys.argv[2], max_retries=0)
audio = client.audio.speech.create(model="tts-1", voice="nova", input=sys.argv[3],
                                   response_format="wav", speed=0.25)
data = audio.read()
print(len(data), data[:4].decode("latin-1"))
"#;
    let (key, python) = (user.api_key.clone(), env("MEDIA_TEST_PYTHON"));
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .args(["-c", script, &base, &key, &text])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        output.status.success(),
        "the SDK failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    let (size, magic) = printed.trim().split_once(' ').unwrap();
    assert_eq!(magic, "RIFF", "a wav");
    assert!(size.parse::<usize>().unwrap() > 5_000_000, "{printed}");
    let spent = 100 - balanced(&store, &user).await;
    assert!(spent > 1, "the full price, once: {spent}");
    let ledger = store.ledger(&user.user_id, 100).await.unwrap();
    assert_eq!(
        ledger
            .iter()
            .filter(|l| l.reason == LedgerReason::Miss)
            .count(),
        1
    );
    assert_eq!(sim.calls(Endpoint::Speech), 1);
}

/// A speech job handed to the worker at once (`Prefer: respond-async`) on a simulator whose
/// speech takes `latency`, with the completion step's service to deliver its settlement by hand.
struct HandedOver {
    sim: SimHandle,
    store: DynamoStore,
    queue: String,
    config: LambdaConfig,
    user: NewUser,
    job_id: String,
    service: std::sync::Arc<media_cache::service::MediaService>,
}

async fn handed_over_speech_job(latency: Duration) -> HandedOver {
    let sim = sim_with(SimConfig {
        speech_latency: latency,
        ..SimConfig::default()
    })
    .await;
    let sdk = sdk().await;
    let store = dynamo(&sdk);
    let queue = jobs_queue(&sdk).await;
    let config = jobs_config(&sim, &queue);
    let base = serve_app(&config, Function::Tts).await;
    let user = users(&store, 1, 100).await.remove(0);
    let resp = reqwest::Client::new()
        .post(format!("{base}/api/v1/media/tts"))
        .bearer_auth(&user.api_key)
        .header("prefer", "respond-async")
        .json(&json!({"text": format!("handed over {}", generate_request_id())}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let job_id = resp.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (service, _) =
        media_cache::lambda::service(&config, &sdk, media_cache::lambda::Role::Completion)
            .await
            .unwrap();
    HandedOver {
        sim,
        store,
        queue,
        config,
        user,
        job_id,
        service,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settlement_delivered_again_while_its_attempt_runs_leaves_it_to_that_attempt() {
    // The provider takes 3 s: the second delivery comes while the first is still waiting on it.
    let HandedOver {
        sim,
        store,
        user,
        job_id,
        service,
        ..
    } = handed_over_speech_job(Duration::from_secs(3)).await;
    let message = media_cache::domain::JobMessage::settle(&job_id);
    let first = tokio::spawn({
        let (service, message) = (service.clone(), message.clone());
        async move { service.process_job(&message).await }
    });
    // Wait until the first delivery's attempt is at the provider (the job is `processing`).
    for _ in 0..300 {
        if sim.calls(Endpoint::Speech) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        sim.calls(Endpoint::Speech),
        1,
        "the first attempt is running"
    );
    service.process_job(&message).await.unwrap();
    assert_eq!(
        sim.calls(Endpoint::Speech),
        1,
        "the second delivery leaves the job to the running attempt"
    );
    first.await.unwrap().unwrap();
    let job = store.job(&job_id).await.unwrap().unwrap();
    assert_eq!(job.status, media_cache::domain::JobStatus::Completed);
    assert_eq!(job.attempts, 1);
    assert_eq!(sim.calls(Endpoint::Speech), 1);
    assert_eq!(balanced(&store, &user).await, 100 - job.credits_charged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settlement_delivered_twice_at_once_calls_the_provider_once() {
    let HandedOver {
        sim,
        store,
        queue,
        config,
        user,
        job_id,
        service,
    } = handed_over_speech_job(Duration::from_millis(600)).await;

    // SQS delivers at least once: two workers get the same settlement at the same time.
    let message = media_cache::domain::JobMessage::settle(&job_id);
    let (a, b) = tokio::join!(service.process_job(&message), service.process_job(&message));
    a.unwrap();
    b.unwrap();
    let job = store.job(&job_id).await.unwrap().unwrap();
    assert_eq!(job.status, media_cache::domain::JobStatus::Completed);
    assert_eq!(sim.calls(Endpoint::Speech), 1, "one provider call");

    // The queue's own copy (sent with a one-second delay) comes later and changes nothing.
    let draining = std::time::Instant::now();
    run_completion_until(&config, &queue, || async {
        draining.elapsed() > Duration::from_secs(4)
    })
    .await;
    assert_eq!(sim.calls(Endpoint::Speech), 1, "still one");
    assert_eq!(balanced(&store, &user).await, 100 - job.credits_charged);
}
