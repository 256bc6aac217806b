//! Music and video as long jobs, end to end: a miss answers 202 with a job, the embedded worker
//! completes it through the simulator's Suno and Kling, single flight, refunds, callbacks.

use integration_tests::{TestApp, test_config};
use media_cache::domain::JobMessage;
use media_cache::ports::{JobQueue, JobStore};
use media_cache::service::accounts::NewUser;
use provider_sim::{Endpoint, FaultKind, FaultRule, TaskStage};
use serde_json::{Value, json};
use std::time::Duration;

fn video(prompt: &str) -> Value {
    json!({"prompt": prompt, "mode": "std", "duration": 5})
}

/// The path of a result URL (its query string is a fresh signature on every answer).
fn object_path(url: &str) -> &str {
    url.split('?').next().unwrap()
}

async fn balanced(app: &TestApp, user: &NewUser, granted: u64) {
    let balance = app.balance(user).await;
    assert_eq!(
        app.ledger_sum(user).await,
        balance as i64,
        "ledger sums to the balance"
    );
    assert!(balance <= granted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_identical_video_requests_make_one_provider_task() {
    let app = TestApp::start().await;
    let mut users = Vec::new();
    for _ in 0..20 {
        users.push(app.user(200).await);
    }
    let body = video("a lighthouse in a storm, twenty at once");
    // The task stays unfinished until every request has its answer: a request arriving after
    // it finished would rightly be a hit, and the count below would not be about joining.
    app.sim().hold_tasks(TaskStage::OneThird);
    let answers = app
        .post_concurrently("/api/v1/media/video", &users, &body)
        .await;
    app.sim().release_tasks();

    assert_eq!(app.sim_calls(Endpoint::KlingCreate), 1, "one provider task");
    let misses: Vec<_> = answers
        .iter()
        .filter(|a| a.header("x-cache") == "MISS")
        .collect();
    let joined = answers
        .iter()
        .filter(|a| a.header("x-cache") == "COALESCED")
        .count();
    assert_eq!((misses.len(), joined), (1, 19), "{answers:?}");
    for a in &answers {
        assert_eq!(a.status, 202, "{:?}", a.json);
        assert!(
            a.json["poll_url"]
                .as_str()
                .unwrap()
                .starts_with("/api/v1/media/jobs/job_")
        );
    }

    let mut paths = Vec::new();
    for (user, answer) in users.iter().zip(&answers) {
        let job = app
            .wait_job(user, answer.json["job_id"].as_str().unwrap())
            .await;
        assert_eq!(job.json["status"], "completed", "{:?}", job.json);
        paths.push(object_path(job.json["url"].as_str().unwrap()).to_owned());
        let charged = if answer.header("x-cache") == "MISS" {
            50
        } else {
            1
        };
        assert_eq!(app.balance(user).await, 200 - charged);
        balanced(&app, user, 200).await;
    }
    paths.dedup();
    assert_eq!(paths.len(), 1, "every job has the same result");
    assert_eq!(app.sim_calls(Endpoint::KlingCreate), 1);
}

#[tokio::test]
async fn a_failed_task_refunds_every_charged_user() {
    let app = TestApp::start().await;
    app.inject(FaultRule {
        endpoint: Some(Endpoint::KlingCreate),
        kind: FaultKind::TaskFailed {
            status: None,
            message: Some("the model could not render this".into()),
        },
        times: Some(1),
    });
    let users = [
        app.user(100).await,
        app.user(100).await,
        app.user(100).await,
    ];
    let body = video("a doomed video");
    // Unfinished until all three have answered: one that came after the failure would start a
    // second task, and the test would not be about refunding the joined ones.
    app.sim().hold_tasks(TaskStage::OneThird);
    let answers = app
        .post_concurrently("/api/v1/media/video", &users, &body)
        .await;
    app.sim().release_tasks();
    assert_eq!(app.sim_calls(Endpoint::KlingCreate), 1);
    for (user, answer) in users.iter().zip(&answers) {
        assert_eq!(answer.status, 202);
        let job = app
            .wait_job(user, answer.json["job_id"].as_str().unwrap())
            .await;
        assert_eq!(job.json["status"], "failed");
        assert_eq!(job.json["error"]["code"], "generation_failed");
        assert!(
            job.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("could not render")
        );
        // Charged (the task's price, or a hit's to join it), then given it back.
        let charge = match answer.header("x-cache") {
            "MISS" => ("miss", -50),
            _ => ("hit", -1),
        };
        assert_eq!(
            app.request_ledger(user, answer.header("x-request-id"))
                .await,
            vec![charge, ("refund", -charge.1)],
            "{:?}",
            answer.json
        );
        assert_eq!(app.balance(user).await, 100, "refunded");
        balanced(&app, user, 100).await;
    }
    // The failed entry is gone: the next identical request starts a new task.
    let again = app.post("/api/v1/media/video", &users[0], &body).await;
    assert_eq!((again.status, again.header("x-cache")), (202, "MISS"));
    assert_eq!(app.sim_calls(Endpoint::KlingCreate), 2);
}

#[tokio::test]
async fn after_completion_the_same_request_is_a_hit_and_a_redelivery_changes_nothing() {
    let app = TestApp::start().await;
    let user = app.user(100).await;
    let body = json!({"prompt": "a sea shanty about caching", "style": "folk", "title": "Hit"});
    let first = app.post("/api/v1/media/music", &user, &body).await;
    assert_eq!((first.status, first.header("x-cache")), (202, "MISS"));
    assert_eq!(first.json["credits_charged"], 20);
    let job_id = first.json["job_id"].as_str().unwrap().to_owned();
    let done = app.wait_job(&user, &job_id).await;
    assert_eq!(done.json["status"], "completed");
    let urls = done.json["urls"].as_array().unwrap();
    assert_eq!(urls.len(), 2, "a Suno task makes two songs");
    let (status, bytes, content_type) = app.download(urls[0].as_str().unwrap()).await;
    assert_eq!((status, content_type.as_str()), (200, "audio/mpeg"));
    assert!(bytes.starts_with(b"ID3"), "an MP3");

    let balance = app.balance(&user).await;
    let polls = app.sim_calls(Endpoint::SunoRecordInfo);
    let stored = app.server.store.job(&job_id).await.unwrap().unwrap();
    // The same message again, minutes after the work is done: a rewrite of the job would carry
    // the new time.
    app.clock.advance(chrono::Duration::minutes(5));
    app.server
        .store
        .send(&JobMessage::settle(&job_id), Duration::ZERO)
        .await
        .unwrap();
    wait_queue_empty(&app).await;
    let after = app.wait_job(&user, &job_id).await;
    assert_eq!(after.json["updated_at"], done.json["updated_at"]);
    assert_eq!(
        app.server.store.job(&job_id).await.unwrap().unwrap(),
        stored,
        "the job is not rewritten"
    );
    assert_eq!(app.balance(&user).await, balance);
    assert_eq!(
        app.sim_calls(Endpoint::SunoRecordInfo),
        polls,
        "no provider call"
    );

    let hit = app.post("/api/v1/media/music", &user, &body).await;
    assert_eq!(
        (hit.status, hit.header("x-cache")),
        (200, "HIT"),
        "{:?}",
        hit.json
    );
    assert_eq!(hit.json["credits_charged"], 1);
    assert_eq!(
        object_path(hit.json["url"].as_str().unwrap()),
        object_path(urls[0].as_str().unwrap())
    );
    assert_eq!(app.sim_calls(Endpoint::SunoGenerate), 1);
    balanced(&app, &user, 100).await;
}

async fn wait_queue_empty(app: &TestApp) {
    for _ in 0..200 {
        if app.server.store.queue_depth().await.unwrap().0 == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the queue did not drain");
}

#[tokio::test]
async fn a_video_is_a_real_mp4_and_a_callback_completes_it_before_the_next_poll() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir);
    // The first poll comes after a minute: only the callback can finish the job sooner.
    config.job_policy.first_poll = Duration::from_secs(60);
    config.job_policy.max_poll_delay = Duration::from_secs(60);
    let app = TestApp::start_with(dir, config).await;
    let user = app.user(100).await;
    let answer = app
        .post("/api/v1/media/video", &user, &video("a callback race"))
        .await;
    assert_eq!(answer.status, 202);
    let job = app
        .wait_job(&user, answer.json["job_id"].as_str().unwrap())
        .await;
    assert_eq!(job.json["status"], "completed");
    let (status, bytes, content_type) = app.download(job.json["url"].as_str().unwrap()).await;
    assert_eq!((status, content_type.as_str()), (200, "video/mp4"));
    assert_eq!(&bytes[4..8], b"ftyp", "an MP4");
    assert!(
        bytes.windows(4).any(|w| w == b"avc1"),
        "with an H.264 track"
    );
}

#[tokio::test]
async fn a_forged_callback_is_not_found_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir);
    config.sim_task_duration = Duration::from_secs(3600);
    // The job's first poll is an hour away, so the worker touches nothing while the test
    // compares the queue: what it holds then can only change by a callback's doing.
    config.job_policy.first_poll = Duration::from_secs(3600);
    config.job_policy.max_poll_delay = Duration::from_secs(3600);
    let app = TestApp::start_with(dir, config).await;
    let user = app.user(100).await;
    let answer = app
        .post("/api/v1/media/video", &user, &video("forged"))
        .await;
    let job_id = answer.json["job_id"].as_str().unwrap();
    let before = app.server.store.queue_depth().await.unwrap();
    assert_eq!(before, (1, 0), "the job's one delayed poll");
    for token in [
        format!("{job_id}.{}", "0".repeat(64)),
        job_id.to_owned(),
        "job_unknown.abcd".to_owned(),
    ] {
        let forged = app
            .post_raw(&format!("/api/v1/callbacks/kling/{token}"), None, &[], "{}")
            .await;
        assert_eq!(forged.status, 404, "{token}");
        assert_eq!(forged.json["error"]["code"], "not_found");
    }
    assert_eq!(app.server.store.queue_depth().await.unwrap(), before);
    assert_eq!(
        app.sim_calls(Endpoint::KlingQuery),
        0,
        "nothing asked Kling"
    );
    let job = app
        .get(&format!("/api/v1/media/jobs/{job_id}"), Some(&user.api_key))
        .await;
    assert!(matches!(
        job.json["status"].as_str(),
        Some("queued" | "processing")
    ));
}

#[tokio::test]
async fn another_users_job_is_not_found() {
    let app = TestApp::start().await;
    let (owner, other) = (app.user(100).await, app.user(100).await);
    let answer = app
        .post("/api/v1/media/video", &owner, &video("mine"))
        .await;
    let path = format!(
        "/api/v1/media/jobs/{}",
        answer.json["job_id"].as_str().unwrap()
    );
    assert_eq!(app.get(&path, Some(&owner.api_key)).await.status, 200);
    let theirs = app.get(&path, Some(&other.api_key)).await;
    assert_eq!(theirs.status, 404);
    assert_eq!(app.get(&path, None).await.status, 401);
    let unknown = app
        .get("/api/v1/media/jobs/job_nope", Some(&owner.api_key))
        .await;
    assert_eq!(unknown.status, 404);
    let huge = format!("/api/v1/media/jobs/job_{}", "a".repeat(4000));
    let huge = app.get(&huge, Some(&owner.api_key)).await;
    assert_eq!(huge.status, 404, "{:?}", huge.json);
    assert_eq!(huge.json["error"]["code"], "not_found");
}

#[tokio::test]
async fn provider_errors_of_each_class_fail_clearly_and_refund() {
    let app = TestApp::start().await;
    let user = app.user(1000).await;
    // At submit time: the request itself fails with the class's HTTP status, refunded.
    let submit_cases = [
        (Endpoint::SunoGenerate, 200, 400, 422, "provider_rejected"),
        (Endpoint::SunoGenerate, 200, 413, 422, "provider_rejected"),
        (Endpoint::SunoGenerate, 401, 401, 502, "provider_error"),
        (Endpoint::SunoGenerate, 200, 429, 502, "provider_error"),
        (
            Endpoint::SunoGenerate,
            200,
            430,
            503,
            "provider_rate_limited",
        ),
        (
            Endpoint::SunoGenerate,
            200,
            455,
            502,
            "provider_unavailable",
        ),
        (
            Endpoint::SunoGenerate,
            500,
            500,
            502,
            "provider_unavailable",
        ),
        (Endpoint::KlingCreate, 401, 1004, 502, "provider_error"),
        (Endpoint::KlingCreate, 429, 1102, 502, "provider_error"),
        (
            Endpoint::KlingCreate,
            429,
            1303,
            503,
            "provider_rate_limited",
        ),
        (Endpoint::KlingCreate, 403, 1103, 502, "provider_error"),
        (Endpoint::KlingCreate, 400, 1201, 422, "provider_rejected"),
        (Endpoint::KlingCreate, 400, 1301, 422, "provider_rejected"),
        (
            Endpoint::KlingCreate,
            503,
            5001,
            502,
            "provider_unavailable",
        ),
    ];
    for (i, (endpoint, status, code, expected, error_code)) in submit_cases.into_iter().enumerate()
    {
        app.inject(FaultRule {
            endpoint: Some(endpoint),
            kind: FaultKind::ProviderCode { status, code },
            times: Some(1),
        });
        let (path, body) = match endpoint {
            Endpoint::SunoGenerate => (
                "/api/v1/media/music",
                json!({"prompt": format!("song {i}")}),
            ),
            _ => ("/api/v1/media/video", video(&format!("clip {i}"))),
        };
        let answer = app.post(path, &user, &body).await;
        assert_eq!(
            answer.status, expected,
            "{endpoint:?} {code}: {:?}",
            answer.json
        );
        assert_eq!(
            answer.json["error"]["code"], error_code,
            "{endpoint:?} {code}"
        );
        let price = match endpoint {
            Endpoint::SunoGenerate => 20,
            _ => 50,
        };
        assert_eq!(
            app.request_ledger(&user, answer.header("x-request-id"))
                .await,
            vec![("miss", -price), ("refund", price)],
            "{endpoint:?} {code}: charged, then refunded"
        );
        assert_eq!(
            app.balance(&user).await,
            1000,
            "{endpoint:?} {code}: refunded"
        );
    }
    // While the task runs: the job fails with the reason, refunded.
    let task_cases = [
        (
            Endpoint::SunoGenerate,
            "GENERATE_AUDIO_FAILED",
            "generation_failed",
        ),
        (
            Endpoint::SunoGenerate,
            "CREATE_TASK_FAILED",
            "generation_failed",
        ),
        (
            Endpoint::SunoGenerate,
            "CALLBACK_EXCEPTION",
            "generation_failed",
        ),
        (
            Endpoint::SunoGenerate,
            "SENSITIVE_WORD_ERROR",
            "provider_rejected",
        ),
        (Endpoint::KlingCreate, "failed", "generation_failed"),
    ];
    for (i, (endpoint, status, error_code)) in task_cases.into_iter().enumerate() {
        app.inject(FaultRule {
            endpoint: Some(endpoint),
            kind: FaultKind::TaskFailed {
                status: Some(status.into()),
                message: Some(format!("{status} happened")),
            },
            times: Some(1),
        });
        let (path, body) = match endpoint {
            Endpoint::SunoGenerate => (
                "/api/v1/media/music",
                json!({"prompt": format!("task {i}")}),
            ),
            _ => ("/api/v1/media/video", video(&format!("task clip {i}"))),
        };
        let answer = app.post(path, &user, &body).await;
        assert_eq!(answer.status, 202, "{:?}", answer.json);
        let job = app
            .wait_job(&user, answer.json["job_id"].as_str().unwrap())
            .await;
        assert_eq!(job.json["status"], "failed", "{status}");
        assert_eq!(
            job.json["error"]["code"], error_code,
            "{status}: {:?}",
            job.json
        );
        assert!(
            job.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("happened")
        );
        assert_eq!(job.json["refunded"], true);
        let price = match endpoint {
            Endpoint::SunoGenerate => 20,
            _ => 50,
        };
        assert_eq!(
            app.request_ledger(&user, answer.header("x-request-id"))
                .await,
            vec![("miss", -price), ("refund", price)],
            "{status}: charged, then refunded"
        );
        assert_eq!(app.balance(&user).await, 1000, "{status}: refunded");
    }
    balanced(&app, &user, 1000).await;
}

#[tokio::test]
async fn an_idempotent_retry_of_a_job_request_gets_the_same_job_and_pays_once() {
    let app = TestApp::start().await;
    let user = app.user(100).await;
    let body = video("retried").to_string();
    let headers = [("idempotency-key", "video-retry-1")];
    let first = app
        .post_raw(
            "/api/v1/media/video",
            Some(&user.api_key),
            &headers,
            body.clone(),
        )
        .await;
    let retry = app
        .post_raw("/api/v1/media/video", Some(&user.api_key), &headers, body)
        .await;
    assert_eq!((first.status, retry.status), (202, 202));
    assert_eq!(retry.json["job_id"], first.json["job_id"]);
    assert_eq!(retry.header("idempotent-replayed"), "true");
    assert_eq!(app.sim_calls(Endpoint::KlingCreate), 1);
    assert_eq!(app.balance(&user).await, 50, "charged once");
}
