//! `mediactl worker` as the README runs it beside `cargo lambda watch`: the music function on the
//! embedded store queues a job in a data directory, and a worker process started on that
//! directory, given the providers the function was given, completes it.

use media_cache::adapters::download::DownloadPolicy;
use media_cache::adapters::sqlite::SqliteStore;
use media_cache::lambda::{Function, LambdaConfig, app};
use media_cache::service::accounts::create_user_with_key;
use provider_sim::{Endpoint, SimConfig};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "mc_sample_events_key";

/// Serves `router` on a free loopback port, as `cargo lambda watch` serves a function URL.
async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

/// Stops the child on drop, whatever the test did.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_completes_a_music_job_that_a_function_queued_in_its_data_directory() {
    // Given the simulator, and the music and jobs functions on a data directory's embedded store
    // with the environment the README gives them.
    let sim = provider_sim::spawn(
        SimConfig {
            task_duration: Duration::from_millis(300),
            // Only the worker's polls can see the task finish.
            callbacks: false,
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().display().to_string();
    let allowed = DownloadPolicy::host_of(&sim.base_url).unwrap();
    let providers = [
        ("OPENAI_BASE_URL", sim.base_url.as_str()),
        ("OPENAI_API_KEY", "sim"),
        ("SUNO_BASE_URL", sim.base_url.as_str()),
        ("SUNO_API_KEY", "sim"),
        ("KLING_BASE_URL", sim.base_url.as_str()),
        ("KLING_API_KEY", "sim"),
        ("DOWNLOAD_ALLOWED_HOSTS", allowed.as_str()),
    ];
    let function_env: Vec<(&str, &str)> = providers
        .iter()
        .copied()
        .chain([
            ("MEDIA_STORE", "embedded"),
            ("MEDIA_DATA_DIR", data_dir.as_str()),
            ("JOB_FIRST_POLL_SECS", "1"),
        ])
        .collect();
    let config = LambdaConfig::from_vars(|name| {
        function_env
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    })
    .unwrap();
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build();
    let store = SqliteStore::open(&dir.path().join("media.db")).unwrap();
    create_user_with_key(&store, 100, KEY.into(), chrono::Utc::now())
        .await
        .unwrap();
    let music = serve(app(&config, &sdk, Function::Music).await.unwrap()).await;
    let jobs = serve(app(&config, &sdk, Function::Jobs).await.unwrap()).await;

    // When the music function takes a miss, and a worker starts on the data directory.
    let http = reqwest::Client::new();
    let queued = http
        .post(format!("{music}/api/v1/media/music"))
        .bearer_auth(KEY)
        .json(&json!({"prompt": "a worker of its own", "instrumental": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(queued.status(), 202);
    let queued: Value = queued.json().await.unwrap();
    assert_eq!(queued["status"], "queued");
    let poll_url = format!("{jobs}{}", queued["poll_url"].as_str().unwrap());

    let mut child = Command::new(env!("CARGO_BIN_EXE_mediactl"))
        .args(["--data-dir", &data_dir, "worker"])
        .envs(providers)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let worker = Reaped(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = Vec::new();
    while !printed
        .iter()
        .any(|l: &String| l.starts_with("providers: "))
    {
        printed.push(
            lines
                .next()
                .expect("the worker says what it runs on")
                .unwrap(),
        );
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let printed = printed.join("\n");
    assert!(
        printed.contains(&format!("data directory: {data_dir}")),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("Suno at {}", sim.base_url)),
        "{printed}"
    );
    assert!(
        !printed.contains("built-in simulator"),
        "every provider given: {printed}"
    );

    // Then the job completes with the simulator's two songs, polled there by the worker.
    let started = Instant::now();
    let job = loop {
        let job: Value = http
            .get(&poll_url)
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["status"] == "completed" || job["status"] == "failed" {
            break job;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not done in time: {job}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["urls"].as_array().unwrap().len(), 2, "{job}");
    assert!(sim.calls(Endpoint::SunoRecordInfo) >= 1);
    let mut logs = Vec::new();
    while !logs.iter().any(|l: &String| l.contains("job completed")) {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(line) => logs.push(line),
            Err(_) => panic!("the worker says what it did: {logs:?}"),
        }
    }

    // And SIGTERM stops it cleanly.
    let pid = worker.0.id().to_string();
    let mut worker = worker;
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = worker.0.try_wait().unwrap() {
            break status;
        }
        assert!(stopped.elapsed() < Duration::from_secs(10), "still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}
