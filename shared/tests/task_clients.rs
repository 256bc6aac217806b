//! The Suno and Kling clients against the provider simulator over HTTP: submit, the task's stages,
//! results downloaded as real media, JWT auth checked by an independent implementation, and
//! failures classified; Suno lyrics sent with their line breaks.

use media_cache::adapters::download::DownloadPolicy;
use media_cache::adapters::kling::{KlingAuth, KlingClient, KlingConfig};
use media_cache::adapters::suno::{SunoClient, SunoConfig};
use media_cache::domain::{MusicRequest, VideoRequest};
use media_cache::ports::{MusicProvider, ProviderError, TaskProvider, TaskState, VideoProvider};
use provider_sim::{Endpoint, FaultKind, FaultRule, SimConfig, SimHandle, TaskStage};
use std::time::Duration;

async fn sim(config: SimConfig) -> SimHandle {
    provider_sim::spawn(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// The simulator serves results over http on loopback: its origin must be allowed.
fn sim_downloads(sim: &SimHandle) -> DownloadPolicy {
    DownloadPolicy::allowing(DownloadPolicy::host_of(&sim.base_url))
}

fn suno(sim: &SimHandle) -> SunoClient {
    SunoClient::new(SunoConfig {
        download: sim_downloads(sim),
        ..SunoConfig::new(&sim.base_url, "k")
    })
    .unwrap()
}

fn kling(sim: &SimHandle, auth: KlingAuth) -> KlingClient {
    KlingClient::new(KlingConfig {
        download: sim_downloads(sim),
        ..KlingConfig::new(&sim.base_url, auth)
    })
    .unwrap()
}

async fn wait_done(provider: &dyn TaskProvider, task: &str) -> (Vec<String>, TaskState) {
    let mut stages = Vec::new();
    for _ in 0..100 {
        let state = provider.task_state(task).await.unwrap();
        match &state {
            TaskState::Running { stage } => {
                if stages.last() != Some(stage) {
                    stages.push(stage.clone());
                }
            }
            _ => return (stages, state),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {task} never finished");
}

#[tokio::test]
async fn suno_goes_through_its_stages_to_two_real_songs() {
    let sim = sim(SimConfig::default()).await;
    // The test moves the task from stage to stage: no window of time to hit.
    sim.state.hold_tasks(TaskStage::Submitted);
    let suno = suno(&sim);
    let req = MusicRequest {
        prompt: Some("la la la".into()),
        style: Some("synthwave".into()),
        title: Some("Loop".into()),
        ..Default::default()
    }
    .normalize()
    .unwrap();
    let task = suno
        .submit_music(&req, "http://127.0.0.1:9/cb")
        .await
        .unwrap();
    for (stage, expected) in [
        (TaskStage::Submitted, "PENDING"),
        (TaskStage::OneThird, "TEXT_SUCCESS"),
        (TaskStage::TwoThirds, "FIRST_SUCCESS"),
    ] {
        sim.state.hold_tasks(stage);
        assert_eq!(
            suno.task_state(&task).await.unwrap(),
            TaskState::Running {
                stage: expected.into()
            },
            "{stage:?}"
        );
    }
    sim.state.hold_tasks(TaskStage::Finished);
    let done = suno.task_state(&task).await.unwrap();
    let TaskState::Succeeded { urls } = done else {
        panic!("{done:?}")
    };
    assert_eq!(urls.len(), 2);
    let song = suno.download(&urls[0]).await.unwrap();
    assert_eq!(song.content_type, "audio/mpeg");
    assert!(song.bytes.starts_with(b"ID3"));
}

#[tokio::test]
async fn kling_jwts_pass_an_independent_check_and_image_to_video_polls_its_own_path() {
    let sim = sim(SimConfig {
        kling_secret: Some("kling-secret".into()),
        ..SimConfig::default()
    })
    .await;
    let jwt = |secret: &str| {
        kling(
            &sim,
            KlingAuth::AccessKey {
                access_key: "ak".into(),
                secret_key: secret.into(),
            },
        )
    };
    let req = VideoRequest {
        prompt: Some("the cat jumps".into()),
        image_url: Some("https://example.com/cat.png".into()),
        ..Default::default()
    }
    .normalize()
    .unwrap();
    let good = jwt("kling-secret");
    let task = good
        .submit_video(&req, "http://127.0.0.1:9/cb")
        .await
        .unwrap();
    assert!(task.starts_with("image2video/"), "{task}");
    let (_, done) = wait_done(&good, &task).await;
    let TaskState::Succeeded { urls } = done else {
        panic!("{done:?}")
    };
    let video = good.download(&urls[0]).await.unwrap();
    assert_eq!(video.content_type, "video/mp4");
    assert_eq!(&video.bytes[4..8], b"ftyp");

    let forged = jwt("not-the-secret")
        .submit_video(&req, "http://127.0.0.1:9/cb")
        .await
        .unwrap_err();
    assert!(
        matches!(forged, ProviderError::Account { .. }),
        "{forged:?}"
    );
    let plain_key = kling(&sim, KlingAuth::ApiKey("not-a-jwt".into()));
    assert!(matches!(
        plain_key.task_state(&task).await.unwrap_err(),
        ProviderError::Account { .. }
    ));
}

#[tokio::test]
async fn expired_results_and_unknown_tasks_are_final_unreachable_providers_are_not() {
    let sim = sim(SimConfig::default()).await;
    sim.state.inject(FaultRule {
        endpoint: Some(Endpoint::KlingCreate),
        kind: FaultKind::ExpiredUrl,
        times: Some(1),
    });
    let kling = kling(&sim, KlingAuth::ApiKey("k".into()));
    let req = VideoRequest {
        prompt: Some("gone".into()),
        ..Default::default()
    }
    .normalize()
    .unwrap();
    let task = kling
        .submit_video(&req, "http://127.0.0.1:9/cb")
        .await
        .unwrap();
    let (_, done) = wait_done(&kling, &task).await;
    let TaskState::Succeeded { urls } = done else {
        panic!("{done:?}")
    };
    let expired = kling.download(&urls[0]).await.unwrap_err();
    assert!(
        matches!(expired, ProviderError::Rejected { .. }),
        "{expired:?}"
    );
    assert!(!expired.is_transient());

    let unknown = kling.task_state("text2video/nope").await.unwrap_err();
    assert_eq!(unknown.code(), "provider_rejected");

    let nowhere = SunoClient::new(SunoConfig::new("http://127.0.0.1:9", "k")).unwrap();
    let down = nowhere.task_state("t").await.unwrap_err();
    assert!(down.is_transient(), "{down:?}");
}

#[tokio::test]
async fn suno_custom_mode_sends_the_lyrics_with_their_line_breaks() {
    use axum::routing::post;
    use serde_json::{Value, json};
    use std::sync::{Arc, Mutex};

    // A stand-in for Suno's create endpoint that keeps the body it was sent.
    let received: Arc<Mutex<Option<Value>>> = Arc::default();
    let keep = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/api/v1/generate",
        post(move |axum::Json(body): axum::Json<Value>| async move {
            *keep.lock().unwrap() = Some(body);
            axum::Json(json!({"code": 200, "msg": "success", "data": {"taskId": "t1"}}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let req = MusicRequest {
        prompt: Some("\r\n  Neon  lights,\r\ncity nights \r\n\r\n\r\nChorus  here\r\n".into()),
        style: Some("synthwave".into()),
        title: Some("Loop".into()),
        ..Default::default()
    }
    .normalize()
    .unwrap();
    let suno = SunoClient::new(SunoConfig::new(&base, "k")).unwrap();
    let task = suno
        .submit_music(&req, "http://127.0.0.1:9/cb")
        .await
        .unwrap();
    assert_eq!(task, "t1");
    let body = received.lock().unwrap().clone().expect("a create call");
    assert_eq!(body["customMode"], json!(true));
    assert_eq!(
        body["prompt"],
        json!("Neon lights,\ncity nights\n\nChorus here")
    );
    assert_eq!(body["prompt"].as_str(), Some(req.prompt.as_str()));
}
