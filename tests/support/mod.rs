//! Test support: a real server (the same `mediactl serve` wiring) on a free loopback port, with
//! the provider simulator, a temporary data directory and a clock the test moves.

use chrono::{TimeZone, Utc};
use media_cache::clock::ManualClock;
use media_cache::ports::AccountStore;
use media_cache::service::accounts::{NewUser, create_user};
use mediactl::serve::{ServeConfig, Server, start};
use provider_sim::Endpoint;
use reqwest::header::HeaderMap;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

/// A running API with its simulator, data directory and clock.
pub struct TestApp {
    /// The server.
    pub server: Server,
    /// The clock the server runs on.
    pub clock: Arc<ManualClock>,
    /// An HTTP client.
    pub http: reqwest::Client,
    /// Keeps the data directory alive.
    pub dir: TempDir,
}

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// JSON body (Null when not JSON).
    pub json: Value,
}

impl Answer {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The error message of an error answer.
    pub fn error_message(&self) -> &str {
        self.json["error"]["message"].as_str().unwrap_or("")
    }
}

/// The config tests run with: quick provider retries, a timeout generous for a loaded machine.
pub fn test_config(dir: &TempDir) -> ServeConfig {
    ServeConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        dev_credits: 0,
        provider_timeout: Duration::from_secs(10),
        provider_retries: 2,
        provider_backoff: Duration::from_millis(5),
        sim_task_duration: Duration::from_millis(300),
        job_policy: media_cache::service::JobPolicy {
            first_poll: Duration::from_millis(100),
            max_poll_delay: Duration::from_millis(200),
            timeout: Duration::from_secs(1800),
        },
        worker_idle: Duration::from_millis(20),
        // Requests that run out of time hand over to the worker within seconds.
        miss_policy: media_cache::service::MissPolicy {
            request_budget: Duration::from_secs(5),
            settle_margin: Duration::from_millis(500),
            ..Default::default()
        },
        ..ServeConfig::default()
    }
}

impl TestApp {
    /// Starts a server on a fresh data directory.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(&dir);
        Self::start_with(dir, config).await
    }

    /// Starts a server on `dir` with `config`.
    pub async fn start_with(dir: TempDir, config: ServeConfig) -> Self {
        let clock = Arc::new(ManualClock::new(
            Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap(),
        ));
        let server = start(config, clock.clone()).await.unwrap();
        Self {
            server,
            clock,
            http: reqwest::Client::new(),
            dir,
        }
    }

    /// Creates a user with `credits` and returns it (with its API key).
    pub async fn user(&self, credits: u64) -> NewUser {
        create_user(&self.server.store, credits, self.clock_now())
            .await
            .unwrap()
    }

    fn clock_now(&self) -> chrono::DateTime<Utc> {
        use media_cache::clock::Clock;
        self.clock.now()
    }

    /// The user's balance.
    pub async fn balance(&self, user: &NewUser) -> u64 {
        self.server
            .store
            .account(&user.user_id)
            .await
            .unwrap()
            .unwrap()
            .credits_remaining
    }

    /// The sum of the user's ledger amounts.
    pub async fn ledger_sum(&self, user: &NewUser) -> i64 {
        let lines = self
            .server
            .store
            .ledger(&user.user_id, 10_000)
            .await
            .unwrap();
        lines.iter().map(|l| l.amount).sum()
    }

    /// The ledger lines of the user's request `request_id` (its `X-Request-Id`), as reason and
    /// amount, charges first: `[("miss", -2), ("refund", 2)]` for a refunded miss of 2 credits.
    pub async fn request_ledger(
        &self,
        user: &NewUser,
        request_id: &str,
    ) -> Vec<(&'static str, i64)> {
        let mut lines: Vec<_> = self
            .server
            .store
            .ledger(&user.user_id, 10_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|l| l.request_id == request_id)
            .map(|l| (l.reason.as_str(), l.amount))
            .collect();
        lines.sort_by_key(|&(reason, amount)| (amount, reason));
        lines
    }

    /// Calls the simulator got on `endpoint`.
    pub fn sim_calls(&self, endpoint: Endpoint) -> u64 {
        self.server.sim.as_ref().unwrap().calls(endpoint)
    }

    /// Injects a simulator fault.
    pub fn inject(&self, rule: provider_sim::FaultRule) {
        self.sim().inject(rule);
    }

    /// The simulator's state: its counters, faults and the stage tasks are held at.
    pub fn sim(&self) -> &provider_sim::SimState {
        &self.server.sim.as_ref().unwrap().state
    }

    /// POSTs a raw body to `path` with extra headers.
    pub async fn post_raw(
        &self,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> Answer {
        let mut req = self
            .http
            .post(format!("{}{path}", self.server.base_url))
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        read(req.send().await.unwrap()).await
    }

    /// POSTs JSON to `path` with the user's key.
    pub async fn post(&self, path: &str, user: &NewUser, body: &Value) -> Answer {
        self.post_raw(path, Some(&user.api_key), &[], body.to_string())
            .await
    }

    /// POSTs the same JSON to `path` once per user, all at once; the answers in users' order.
    pub async fn post_concurrently(
        &self,
        path: &str,
        users: &[NewUser],
        body: &Value,
    ) -> Vec<Answer> {
        let url = format!("{}{path}", self.server.base_url);
        let tasks: Vec<_> = users
            .iter()
            .map(|user| {
                let request = self.http.post(&url).bearer_auth(&user.api_key).json(body);
                tokio::spawn(async move { read(request.send().await.unwrap()).await })
            })
            .collect();
        let mut answers = Vec::with_capacity(tasks.len());
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        answers
    }

    /// GETs `path` with an optional key.
    pub async fn get(&self, path: &str, key: Option<&str>) -> Answer {
        let mut req = self.http.get(format!("{}{path}", self.server.base_url));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        read(req.send().await.unwrap()).await
    }

    /// Downloads a result URL: status and bytes.
    pub async fn download(&self, url: &str) -> (u16, Vec<u8>, String) {
        let resp = self.http.get(url).send().await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        (status, resp.bytes().await.unwrap().to_vec(), ct)
    }
}

impl TestApp {
    /// Polls the user's job until it is completed or failed (at most 30 s) and returns it.
    pub async fn wait_job(&self, user: &NewUser, job_id: &str) -> Answer {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let job = self
                .get(&format!("/api/v1/media/jobs/{job_id}"), Some(&user.api_key))
                .await;
            let status = job.json["status"].as_str().unwrap_or_default();
            if job.status != 200 || status == "completed" || status == "failed" {
                return job;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "job {job_id} still {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn read(resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        json,
    }
}
