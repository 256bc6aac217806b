//! Music and video jobs on DynamoDB, S3 and SQS: the music, video and jobs functions served on
//! loopback, the completion function fed from the emulator's queue, the simulator's Suno and Kling.

use crate::support::{
    env, jobs_config, jobs_queue, run_completion_until, sdk, serve_app, task_simulator,
};
use media_cache::adapters::dynamodb::DynamoStore;
use media_cache::lambda::Function;
use media_cache::ports::AccountStore;
use media_cache::service::accounts::{NewUser, create_user, generate_request_id};
use provider_sim::{Endpoint, FaultKind, FaultRule};
use serde_json::{Value, json};

fn dynamo(sdk: &aws_config::SdkConfig) -> DynamoStore {
    DynamoStore::new(
        aws_sdk_dynamodb::Client::new(sdk),
        env("MEDIA_TEST_TABLE"),
        format!("s3://{}/", env("MEDIA_TEST_BUCKET")),
    )
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    user: &NewUser,
    body: &Value,
) -> (u16, String, Value) {
    let reply = crate::support::post(http, url, user, body).await;
    (reply.status, reply.cache, reply.json)
}

async fn get_job(http: &reqwest::Client, jobs: &str, user: &NewUser, id: &str) -> (u16, Value) {
    let resp = http
        .get(format!("{jobs}/api/v1/media/jobs/{id}"))
        .bearer_auth(&user.api_key)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

async fn all_finished(http: &reqwest::Client, jobs: &str, owned: &[(NewUser, String)]) -> bool {
    for (user, id) in owned {
        let (_, job) = get_job(http, jobs, user, id).await;
        if !matches!(job["status"].as_str(), Some("completed" | "failed")) {
            return false;
        }
    }
    true
}

async fn ledger_sum(store: &DynamoStore, user: &NewUser) -> i64 {
    let lines = store.ledger(&user.user_id, 1000).await.unwrap();
    lines.iter().map(|l| l.amount).sum()
}

async fn balance(store: &DynamoStore, user: &NewUser) -> u64 {
    store
        .account(&user.user_id)
        .await
        .unwrap()
        .unwrap()
        .credits_remaining
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_identical_video_requests_make_one_task_and_complete_as_one() {
    let _turn = crate::support::burst().await;
    let sim = task_simulator().await;
    let sdk = sdk().await;
    let queue = jobs_queue(&sdk).await;
    let config = jobs_config(&sim, &queue);
    let video = serve_app(&config, Function::Video).await;
    let jobs = serve_app(&config, Function::Jobs).await;
    let store = dynamo(&sdk);
    let http = reqwest::Client::new();
    let mut users = Vec::new();
    for _ in 0..20 {
        users.push(create_user(&store, 200, chrono::Utc::now()).await.unwrap());
    }
    let body = json!({"prompt": format!("twenty on dynamodb {}", generate_request_id())});
    let url = format!("{video}/api/v1/media/video");
    let tasks: Vec<_> = users
        .iter()
        .map(|u| {
            let (http, url, user, body) = (http.clone(), url.clone(), u.clone(), body.clone());
            tokio::spawn(async move { post(&http, &url, &user, &body).await })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert_eq!(sim.calls(Endpoint::KlingCreate), 1, "one provider task");
    let outcomes: Vec<&str> = answers.iter().map(|a| a.1.as_str()).collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "MISS").count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(outcomes.iter().filter(|o| **o == "COALESCED").count(), 19);
    let owned: Vec<(NewUser, String)> = users
        .iter()
        .zip(&answers)
        .map(|(u, a)| {
            assert_eq!(a.0, 202, "{:?}", a.2);
            (u.clone(), a.2["job_id"].as_str().unwrap().to_owned())
        })
        .collect();

    run_completion_until(&config, &queue, || all_finished(&http, &jobs, &owned)).await;
    let mut paths = Vec::new();
    for ((user, id), answer) in owned.iter().zip(&answers) {
        let (_, job) = get_job(&http, &jobs, user, id).await;
        assert_eq!(job["status"], "completed", "{job}");
        let url = job["url"].as_str().unwrap();
        assert!(url.contains("X-Amz-Signature"), "presigned S3 URL");
        paths.push(url.split('?').next().unwrap().to_owned());
        let charged = if answer.1 == "MISS" { 50 } else { 1 };
        assert_eq!(balance(&store, user).await, 200 - charged);
        assert_eq!(ledger_sum(&store, user).await, (200 - charged) as i64);
    }
    paths.dedup();
    assert_eq!(paths.len(), 1, "the same result for everyone");

    // The same request after completion: a hit, no provider call.
    let (status, cache, hit) = post(&http, &url, &users[0], &body).await;
    assert_eq!((status, cache.as_str()), (200, "HIT"), "{hit}");
    assert_eq!(
        hit["url"].as_str().unwrap().split('?').next().unwrap(),
        paths[0]
    );
    assert_eq!(sim.calls(Endpoint::KlingCreate), 1);

    // A duplicate delivery after completion changes nothing.
    let before = get_job(&http, &jobs, &owned[0].0, &owned[0].1).await.1;
    let balance_before = balance(&store, &users[0]).await;
    let polls = sim.calls(Endpoint::KlingQuery);
    let leader = owned
        .iter()
        .zip(&answers)
        .find(|(_, a)| a.1 == "MISS")
        .map(|((_, id), _)| id.clone())
        .unwrap();
    let duplicate = json!({"job_id": leader, "poll": true}).to_string();
    aws_sdk_sqs::Client::new(&sdk)
        .send_message()
        .queue_url(&queue)
        .message_body(&duplicate)
        .send()
        .await
        .unwrap();
    let mut rounds = 0;
    let handled = run_completion_until(&config, &queue, || {
        rounds += 1;
        async move { rounds > 3 }
    })
    .await;
    // The duplicate was delivered and handled (what follows is what it changed).
    assert_eq!(
        handled.iter().filter(|b| **b == duplicate).count(),
        1,
        "the duplicate among the messages handled: {handled:?}"
    );
    let after = get_job(&http, &jobs, &owned[0].0, &owned[0].1).await.1;
    assert_eq!(after["updated_at"], before["updated_at"]);
    assert_eq!(balance(&store, &users[0]).await, balance_before);
    assert_eq!(sim.calls(Endpoint::KlingQuery), polls, "no provider call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_task_refunds_every_user_and_strangers_and_forgers_get_404() {
    let sim = task_simulator().await;
    sim.state.inject(FaultRule {
        endpoint: Some(Endpoint::SunoGenerate),
        kind: FaultKind::TaskFailed {
            status: Some("SENSITIVE_WORD_ERROR".into()),
            message: Some("lyrics refused".into()),
        },
        times: Some(1),
    });
    let sdk = sdk().await;
    let queue = jobs_queue(&sdk).await;
    let config = jobs_config(&sim, &queue);
    let music = serve_app(&config, Function::Music).await;
    let jobs = serve_app(&config, Function::Jobs).await;
    let store = dynamo(&sdk);
    let http = reqwest::Client::new();
    let mut users = Vec::new();
    for _ in 0..3 {
        users.push(create_user(&store, 100, chrono::Utc::now()).await.unwrap());
    }
    let body = json!({"prompt": format!("refused {}", generate_request_id())});
    let url = format!("{music}/api/v1/media/music");
    let mut owned = Vec::new();
    for user in &users {
        let (status, _, answer) = post(&http, &url, user, &body).await;
        assert_eq!(status, 202, "{answer}");
        owned.push((user.clone(), answer["job_id"].as_str().unwrap().to_owned()));
    }
    assert_eq!(sim.calls(Endpoint::SunoGenerate), 1);

    // Before it finishes: a stranger and a forged callback see nothing.
    let stranger = create_user(&store, 1, chrono::Utc::now()).await.unwrap();
    assert_eq!(get_job(&http, &jobs, &stranger, &owned[0].1).await.0, 404);
    let forged = http
        .post(format!(
            "{jobs}/api/v1/callbacks/suno/{}.{}",
            owned[0].1,
            "ab".repeat(32)
        ))
        .json(&json!({"code": 200, "data": {"callbackType": "complete"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 404);

    run_completion_until(&config, &queue, || all_finished(&http, &jobs, &owned)).await;
    for (user, id) in &owned {
        let (_, job) = get_job(&http, &jobs, user, id).await;
        assert_eq!(job["status"], "failed");
        assert_eq!(job["error"]["code"], "provider_rejected", "{job}");
        assert_eq!(balance(&store, user).await, 100, "refunded");
        assert_eq!(ledger_sum(&store, user).await, 100, "ledger balanced");
    }
}

/// A warm join is a hit's two round trips: the batch read and one transaction (charge, follower,
/// the check that the entry is still pending), with the balance known from the read.
#[tokio::test]
async fn a_warm_join_is_two_dynamodb_round_trips() {
    use crate::support::CallLog;
    use media_cache::adapters::kling::{KlingAuth, KlingClient, KlingConfig};
    use media_cache::adapters::s3_objects::S3ObjectStore;
    use media_cache::adapters::sqs_queue::SqsJobQueue;
    use media_cache::domain::{PriceTable, VideoRequest};
    use media_cache::service::{
        Answer, CacheOutcome, CallContext, CallbackSigner, JobParts, JobPolicy, MediaRequest,
        MediaService,
    };
    use std::sync::Arc;

    let sim = provider_sim::spawn(
        provider_sim::SimConfig {
            task_duration: std::time::Duration::from_secs(3600),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let sdk = sdk().await;
    let queue = jobs_queue(&sdk).await;
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
    let kling = KlingClient::new(KlingConfig::new(
        &sim.base_url,
        KlingAuth::ApiKey("k".into()),
    ))
    .unwrap();
    let openai = Arc::new(
        media_cache::adapters::openai::OpenAiClient::new(
            media_cache::adapters::openai::OpenAiConfig::new(&sim.base_url, "k"),
        )
        .unwrap(),
    );
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
        Arc::new(media_cache::clock::SystemClock),
    )
    .with_jobs(JobParts {
        miss: Default::default(),
        queue: Arc::new(SqsJobQueue::new(aws_sdk_sqs::Client::new(&sdk), queue)),
        callbacks: CallbackSigner::new(b"secret".to_vec(), "http://127.0.0.1:9"),
        policy: JobPolicy::default(),
        music: None,
        video: Some(Arc::new(kling)),
    });
    let leader = create_user(store.as_ref(), 100, chrono::Utc::now())
        .await
        .unwrap();
    let joiner = create_user(store.as_ref(), 100, chrono::Utc::now())
        .await
        .unwrap();
    let request = MediaRequest::Video(VideoRequest {
        prompt: Some(format!("round trips {}", generate_request_id())),
        ..Default::default()
    });
    let call = |user: &NewUser| CallContext {
        api_key: Some(user.api_key.clone()),
        request_id: generate_request_id(),
        ..Default::default()
    };
    let started = service.generate(&call(&leader), &request).await.unwrap();
    assert!(matches!(started, Answer::Job(ref t) if t.outcome == CacheOutcome::Miss));
    // The joiner's instance learns who owns its key (as any earlier request would teach it).
    service.statement(&call(&joiner), 1).await.unwrap();

    log.clear();
    let joined = service.generate(&call(&joiner), &request).await.unwrap();
    let Answer::Job(ticket) = joined else {
        panic!("{joined:?}")
    };
    assert_eq!(ticket.outcome, CacheOutcome::Coalesced);
    assert_eq!(log.calls(), vec!["BatchGetItem", "TransactWriteItems"]);
    assert_eq!(ticket.credits_remaining, 99);
    assert_eq!(
        balance(&store, &joiner).await,
        99,
        "the reported balance is real"
    );
}
