//! A provider simulator: an HTTP server speaking OpenAI's speech and image APIs on loopback, with
//! real media bytes, latency and fault knobs, and a call counter, for local runs and tests.

pub mod media;
mod openai;
mod tasks;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The simulated endpoints, for counting and fault targeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `POST /v1/audio/speech`.
    Speech,
    /// `POST /v1/images/generations`.
    Images,
    /// Suno `POST /api/v1/generate`.
    SunoGenerate,
    /// Suno `GET /api/v1/generate/record-info`.
    SunoRecordInfo,
    /// Kling `POST /v1/videos/{text2video,image2video}`.
    KlingCreate,
    /// Kling `GET /v1/videos/{kind}/{task_id}`.
    KlingQuery,
}

impl Endpoint {
    /// Every endpoint.
    pub const ALL: [Endpoint; 6] = [
        Endpoint::Speech,
        Endpoint::Images,
        Endpoint::SunoGenerate,
        Endpoint::SunoRecordInfo,
        Endpoint::KlingCreate,
        Endpoint::KlingQuery,
    ];
}

/// A failure to inject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// 429 `rate_limit_exceeded` with `retry-after-ms` and `retry-after`.
    RateLimit {
        /// The advertised wait.
        retry_after_ms: u64,
    },
    /// 429 `insufficient_quota` (not to be retried).
    InsufficientQuota,
    /// A 5xx answer.
    ServerError {
        /// 500, 502, 503...
        status: u16,
    },
    /// Answer only after this long (longer than the client's timeout, to time it out).
    Timeout {
        /// The delay.
        delay_ms: u64,
    },
    /// 400 `content_policy_violation`.
    ContentPolicy,
    /// Images: answer with a URL that has already expired; Suno and Kling: results whose URLs
    /// answer 404.
    ExpiredUrl,
    /// Suno or Kling: answer with this HTTP status and the provider's own error `code`.
    ProviderCode {
        /// HTTP status.
        status: u16,
        /// Suno's or Kling's `code`.
        code: i64,
    },
    /// Suno or Kling, on task creation: the finished task's results point at `url` (an address
    /// the API must refuse to download from, or the simulator's endless `/endless` body).
    ResultUrl {
        /// Where every result of the task claims to be.
        url: String,
    },
    /// Suno or Kling, on task creation: the task is accepted but ends failed (Suno `status`, e.g.
    /// GENERATE_AUDIO_FAILED or SENSITIVE_WORD_ERROR; Kling `failed`).
    TaskFailed {
        /// Suno's failure status (ignored by Kling).
        #[serde(default)]
        status: Option<String>,
        /// The provider's message.
        #[serde(default)]
        message: Option<String>,
    },
}

/// A fault for the next `times` calls to `endpoint` (all endpoints when None).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRule {
    /// Which endpoint, or any.
    #[serde(default)]
    pub endpoint: Option<Endpoint>,
    /// What to do.
    #[serde(flatten)]
    pub kind: FaultKind,
    /// How many calls it applies to; None means every call until cleared.
    #[serde(default)]
    pub times: Option<u32>,
}

/// Knobs fixed at start.
#[derive(Debug, Clone, Default)]
pub struct SimConfig {
    /// Added to every speech answer.
    pub speech_latency: Duration,
    /// Added to every image answer.
    pub image_latency: Duration,
    /// When set, requests must carry `Authorization: Bearer <this>`.
    pub api_key: Option<String>,
    /// How long a Suno or Kling task takes to finish.
    pub task_duration: Duration,
    /// Call tasks' callback URLs when they finish.
    pub callbacks: bool,
    /// When set, Kling bearers must be HS256 JWTs signed with this secret (else any bearer).
    pub kling_secret: Option<String>,
}

/// The simulator's shared state.
#[derive(Debug, Default)]
pub struct SimState {
    config: SimConfig,
    calls: HashMap<Endpoint, AtomicU64>,
    faults: Mutex<Vec<FaultRule>>,
    files: Mutex<HashMap<String, openai::StoredFile>>,
    tasks: Mutex<HashMap<String, tasks::SimTask>>,
    base_url: Mutex<String>,
    /// The stage every task is held at, whatever its age (None: tasks follow the clock).
    held: Mutex<Option<TaskStage>>,
    /// Wakes callbacks waiting for held tasks to be let go.
    released: tokio::sync::Notify,
}

/// How far a Suno or Kling task has come, in thirds of its work: Suno's `PENDING`,
/// `TEXT_SUCCESS`, `FIRST_SUCCESS` and then its end; Kling's `submitted`, `processing` twice,
/// then its end (`succeed`, or `failed` for a task with a `TaskFailed` fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStage {
    /// Nothing done yet.
    Submitted = 0,
    /// A third done.
    OneThird = 1,
    /// Two thirds done.
    TwoThirds = 2,
    /// Finished, as it was meant to end.
    Finished = 3,
}

impl SimState {
    /// Fresh state with `config`.
    pub fn new(config: SimConfig) -> Self {
        Self {
            config,
            calls: Endpoint::ALL
                .into_iter()
                .map(|e| (e, AtomicU64::new(0)))
                .collect(),
            ..Default::default()
        }
    }

    /// How many calls `endpoint` has received.
    pub fn calls(&self, endpoint: Endpoint) -> u64 {
        self.calls
            .get(&endpoint)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }

    fn count(&self, endpoint: Endpoint) {
        if let Some(c) = self.calls.get(&endpoint) {
            c.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Adds a fault rule.
    pub fn inject(&self, rule: FaultRule) {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(rule);
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Takes the fault that applies to this call of `endpoint`, if any.
    fn next_fault(&self, endpoint: Endpoint) -> Option<FaultKind> {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let index = faults
            .iter()
            .position(|r| r.endpoint.is_none_or(|e| e == endpoint))?;
        let rule = &mut faults[index];
        let kind = rule.kind.clone();
        match &mut rule.times {
            Some(1) => {
                faults.remove(index);
            }
            Some(n) => *n -= 1,
            None => {}
        }
        Some(kind)
    }

    /// Holds every task, old and new, at `stage` whatever its age, until `release_tasks`: a test
    /// then decides when tasks move on instead of racing the clock. Callbacks wait too.
    pub fn hold_tasks(&self, stage: TaskStage) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(stage);
        self.released.notify_waiters();
    }

    /// Lets tasks follow the clock again: those past their duration are finished at once.
    pub fn release_tasks(&self) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.released.notify_waiters();
    }

    fn held_stage(&self) -> Option<TaskStage> {
        *self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns once tasks are not held before their end.
    async fn until_tasks_may_finish(&self) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before the check, so a release in between is not missed.
            released.as_mut().enable();
            if self
                .held_stage()
                .is_none_or(|stage| stage == TaskStage::Finished)
            {
                return;
            }
            released.await;
        }
    }

    fn base_url(&self) -> String {
        self.base_url
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The simulator's routes: the OpenAI endpoints and `/_sim/*` controls.
pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/v1/audio/speech", post(openai::speech))
        .route("/v1/images/generations", post(openai::images))
        .route("/files/{id}", get(openai::file))
        .route("/api/v1/generate", post(tasks::suno_generate))
        .route("/api/v1/generate/record-info", get(tasks::suno_record_info))
        .route("/v1/videos/{kind}", post(tasks::kling_create))
        .route("/v1/videos/{kind}/{id}", get(tasks::kling_query))
        .route("/results/{id}", get(tasks::result))
        .route("/endless", get(tasks::endless))
        .route("/_sim/calls", get(calls))
        .route("/_sim/faults", post(add_fault).delete(clear_faults))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

async fn calls(State(state): State<Arc<SimState>>) -> Json<HashMap<Endpoint, u64>> {
    Json(
        Endpoint::ALL
            .into_iter()
            .map(|e| (e, state.calls(e)))
            .collect(),
    )
}

async fn add_fault(
    State(state): State<Arc<SimState>>,
    Json(rule): Json<FaultRule>,
) -> Json<FaultRule> {
    state.inject(rule.clone());
    Json(rule)
}

async fn clear_faults(State(state): State<Arc<SimState>>) -> &'static str {
    state.clear_faults();
    "cleared"
}

/// A running simulator.
pub struct SimHandle {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// Its state: counters and fault knobs.
    pub state: Arc<SimState>,
    task: tokio::task::JoinHandle<()>,
}

impl SimHandle {
    /// How many calls `endpoint` has received.
    pub fn calls(&self, endpoint: Endpoint) -> u64 {
        self.state.calls(endpoint)
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the simulator on `addr` (port 0 picks a free one) in the current runtime.
pub async fn spawn(config: SimConfig, addr: SocketAddr) -> std::io::Result<SimHandle> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let base_url = format!("http://{}", listener.local_addr()?);
    let state = Arc::new(SimState::new(config));
    *state.base_url.lock().unwrap_or_else(|e| e.into_inner()) = base_url.clone();
    let app = router(Arc::clone(&state));
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "simulator stopped");
        }
    });
    Ok(SimHandle {
        base_url,
        state,
        task,
    })
}
