//! `mediactl bench`: a load generator for the media cache API, pointed at `mediactl serve` or a
//! deployed stack.
//!
//! A run sends a fixed sequence of requests (a pure function of the flags and the seed, see
//! [`Workload`]) from `concurrency` tasks, stops at `requests` sends or `duration`, whichever
//! comes first, polls every 202 job until it is done,
//! and reports throughput, latency percentiles by outcome, the hit rate, provider calls (from
//! the simulator's `/_sim/calls`, read before and after) and the credits charged against what
//! the same requests would cost without a cache. See [`BenchReport`] for the report's fields.
//!
//! The client is built like `wrk`'s: `threads` OS threads, each with its own current-thread
//! tokio runtime and its own pool of keep-alive HTTP/1.1 connections, run the tasks (no task
//! or connection ever wakes another thread). Request bodies are built once and shared; latencies
//! go into HDR histograms; counters are atomics or one briefly held lock.

mod report;
mod workload;

pub use report::{
    BenchReport, JobCounts, Latencies, LatencyByOutcome, LatencySummary, Outcomes, TypeCounts,
    render_table,
};
pub use workload::{MediaKind, Mix, RequestSpec, Workload};

use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Client, StatusCode, Url};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The most requests one run may send (the sequence is built in memory, 4 bytes a request).
pub const MAX_REQUESTS: u64 = 100_000_000;
/// The most requests in flight at once.
pub const MAX_CONCURRENCY: u32 = 10_000;
/// The most client threads.
pub const MAX_THREADS: u32 = 64;

/// The simulator counters that are generations (one per distinct request on a cold cache); the
/// others are task polls.
const GENERATION_ENDPOINTS: [&str; 4] = ["speech", "images", "suno_generate", "kling_create"];

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The API's base URL (`http://127.0.0.1:8080`, or a deployed stack's, stage path included).
    pub url: String,
    /// The API key the requests carry (and are charged to).
    pub api_key: String,
    /// How many requests to send (fewer when `duration` runs out first).
    pub requests: u64,
    /// How many distinct requests the sends are drawn from (ignored with `hits_only`).
    pub distinct: u32,
    /// The Zipf exponent of their popularity (0: uniform; ignored with `hits_only`).
    pub zipf: f64,
    /// Requests in flight at once.
    pub concurrency: u32,
    /// Client threads, each with its own runtime and connections (as wrk's `-t`; at most
    /// `concurrency`).
    pub threads: u32,
    /// The share of each media type (ignored with `hits_only`).
    pub mix: Mix,
    /// Seed of the request sequence (and part of every request's text).
    pub seed: u64,
    /// Stop sending after this long (requests in flight still finish, and jobs are polled).
    pub duration: Option<Duration>,
    /// Send one speech request every time (all hits after the first), as `wrk` would.
    pub hits_only: bool,
    /// The provider simulator's base URL, to count provider calls.
    pub sim_url: Option<String>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Timeout of one request.
    pub timeout: Duration,
    /// How long a 202 job is polled before it counts as unfinished.
    pub job_timeout: Duration,
    /// Pause between two polls of a job.
    pub poll_interval: Duration,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8080".into(),
            api_key: String::new(),
            requests: 10_000,
            distinct: 1_000,
            zipf: 1.0,
            concurrency: 32,
            threads: 2,
            mix: Mix::default(),
            seed: 1,
            duration: None,
            hits_only: false,
            sim_url: None,
            progress: false,
            timeout: Duration::from_secs(60),
            job_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_millis(100),
        }
    }
}

/// Why a run could not be made. Problems of single requests are not errors: they are counted in
/// the report.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A flag has an unusable value.
    #[error("{flag}: {reason}")]
    InvalidFlag {
        /// The flag, e.g. `--mix`.
        flag: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// A client thread could not be started.
    #[error("cannot start a client thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The API did not answer at all before the run.
    #[error("cannot reach the API at {url}: {}", causes(.source))]
    Unreachable {
        /// The URL tried.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The simulator's call counters could not be read.
    #[error("cannot read the simulator's call counters at {url}: {reason}")]
    Simulator {
        /// The URL tried.
        url: String,
        /// Why.
        reason: String,
    },
}

/// An error and its causes, outermost first ("error sending request: ...: invalid peer
/// certificate: UnknownIssuer").
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.ends_with(&next) {
            text = format!("{text}: {next}");
        }
        source = cause.source();
    }
    text
}

impl BenchError {
    pub(crate) fn flag(flag: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidFlag {
            flag,
            reason: reason.into(),
        }
    }
}

/// Parses a `--mix` value (for clap).
pub fn parse_mix(s: &str) -> Result<Mix, BenchError> {
    s.parse()
}

/// Parses a `--duration` value: a number with an optional unit `ms`, `s` (the default), `m` or
/// `h`, e.g. `30s`, `1.5m`, `500ms`, `10`.
pub fn parse_duration(s: &str) -> Result<Duration, BenchError> {
    let text = s.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        BenchError::flag(
            "--duration",
            format!("`{s}` is not a duration (e.g. 30s, 2m, 500ms)"),
        )
    })?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(BenchError::flag(
                "--duration",
                format!("unknown unit `{other}` in `{s}` (use ms, s, m or h)"),
            ));
        }
    };
    Duration::try_from_secs_f64(value * scale)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| BenchError::flag("--duration", format!("`{s}` must be more than 0")))
}

/// The base URL without a trailing slash, checked to be http or https.
fn base_url(flag: &'static str, url: &str) -> Result<String, BenchError> {
    let trimmed = url.trim().trim_end_matches('/');
    let parsed =
        Url::parse(trimmed).map_err(|e| BenchError::flag(flag, format!("`{url}`: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(BenchError::flag(
            flag,
            format!("`{url}` is not an http:// or https:// URL"),
        ));
    }
    Ok(trimmed.to_owned())
}

impl BenchConfig {
    /// Checks the flags, naming the one that is wrong.
    pub fn validate(&self) -> Result<(), BenchError> {
        base_url("--url", &self.url)?;
        if let Some(sim) = &self.sim_url {
            base_url("--sim-url", sim)?;
        }
        if self.api_key.trim().is_empty() {
            return Err(BenchError::flag(
                "--api-key",
                "an API key is required (`mediactl serve` prints one)",
            ));
        }
        if HeaderValue::from_str(&format!("Bearer {}", self.api_key.trim())).is_err() {
            return Err(BenchError::flag(
                "--api-key",
                "must be visible ASCII characters",
            ));
        }
        if self.requests == 0 || self.requests > MAX_REQUESTS {
            return Err(BenchError::flag(
                "--requests",
                format!("must be from 1 to {MAX_REQUESTS}"),
            ));
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Err(BenchError::flag(
                "--concurrency",
                format!("must be from 1 to {MAX_CONCURRENCY}"),
            ));
        }
        if self.threads == 0 || self.threads > MAX_THREADS {
            return Err(BenchError::flag(
                "--threads",
                format!("must be from 1 to {MAX_THREADS}"),
            ));
        }
        if !self.hits_only && self.distinct == 0 {
            return Err(BenchError::flag("--distinct", "must be at least 1"));
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return Err(BenchError::flag("--duration", "must be more than 0"));
        }
        for (flag, d) in [
            ("--timeout", self.timeout),
            ("--job-timeout", self.job_timeout),
            ("--poll-interval", self.poll_interval),
        ] {
            if d.is_zero() {
                return Err(BenchError::flag(flag, "must be more than 0"));
            }
        }
        Ok(())
    }

    /// The workload these flags describe.
    pub fn workload(&self) -> Result<Workload, BenchError> {
        if self.hits_only {
            Ok(Workload::hits_only(self.requests, self.seed))
        } else {
            Workload::zipf(
                self.requests,
                self.distinct,
                self.zipf,
                &self.mix,
                self.seed,
            )
        }
    }
}

/// Runs the bench and reports what it saw.
///
/// Credits without the cache: each distinct request's full price is learnt from its MISS answer
/// (the first that generated it; a 202 MISS counts). A distinct request whose MISS was never seen
/// (the cache was already warm, e.g. a second run with the same seed, or its miss failed) is
/// priced at the full price seen for another request of the same media type in this run (the
/// bench builds a type's requests alike: same model, size, duration and text length, so they
/// cost the same), the largest if several were seen. When no request of that type showed a
/// price, its served requests are left out of `credits_without_cache` and counted in
/// `unpriced_requests`; `credits_saved` is then a lower bound (their hit charges are still in
/// `credits_charged`), and on an all-warm run `credits_without_cache` is 0 and `savings_pct`
/// null.
pub async fn run(config: BenchConfig) -> Result<BenchReport, BenchError> {
    config.validate()?;
    let url = base_url("--url", &config.url)?;
    let sim_url = match &config.sim_url {
        Some(s) => Some(base_url("--sim-url", s)?),
        None => None,
    };
    let workload = config.workload()?;
    // reqwest is built with rustls but no crypto provider: https needs one installed (ring, as
    // the provider adapters do; an earlier install wins).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = http_client(&config)?;

    // A first request proves the address answers: a wrong URL is one clear error rather than a
    // report full of transport errors. Its status does not matter (a stack may not route it).
    let health = format!("{url}/healthz");
    client
        .get(&health)
        .send()
        .await
        .map_err(|source| BenchError::Unreachable {
            url: health,
            source,
        })?;

    let calls_before = match &sim_url {
        Some(sim) => Some(sim_calls(&client, sim).await?),
        None => None,
    };

    let mut routes = Vec::with_capacity(MediaKind::ALL.len());
    for kind in MediaKind::ALL {
        let route = format!("{url}{}", kind.path());
        routes.push(Url::parse(&route).map_err(|e| BenchError::flag("--url", e.to_string()))?);
    }
    let auth = HeaderValue::from_str(&format!("Bearer {}", config.api_key.trim()))
        .map_err(|_| BenchError::flag("--api-key", "must be visible ASCII characters"))?;
    let distinct = workload.requests.len();
    let total = workload.sequence.len() as u64;
    let started = Instant::now();
    let shared = Arc::new(Shared {
        auth,
        routes,
        jobs_url: format!("{url}/api/v1/media/jobs/"),
        next: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        hits: AtomicU64::new(0),
        failures: AtomicU64::new(0),
        pending_jobs: AtomicU64::new(0),
        deadline: config.duration.map(|d| started + d),
        job_timeout: config.job_timeout,
        poll_interval: config.poll_interval,
        stats: Mutex::new(Stats::new(distinct)),
        workload,
    });
    let progress = Progress::start(config.progress, total, &shared);
    let threads = config.threads.min(config.concurrency);
    let mut running = Vec::with_capacity(threads as usize);
    for t in 0..threads {
        // Tasks dealt out evenly: the first threads take one more when it does not divide.
        let tasks = config.concurrency / threads + u32::from(t < config.concurrency % threads);
        running.push(client_thread(
            t,
            tasks,
            http_client(&config)?,
            Arc::clone(&shared),
        )?);
    }
    // When the last answer came (job polls afterwards are not part of the duration).
    let mut last_answer = started;
    for done in running {
        if let Ok(at) = done.await {
            last_answer = last_answer.max(at);
        }
    }
    let elapsed = last_answer - started;
    progress.finish();

    let calls = match (&sim_url, calls_before) {
        (Some(sim), Some(before)) => {
            let after = sim_calls(&client, sim).await?;
            Some(
                after
                    .iter()
                    .map(|(k, v)| (k.clone(), v.saturating_sub(*before.get(k).unwrap_or(&0))))
                    .collect::<BTreeMap<String, u64>>(),
            )
        }
        _ => None,
    };
    let stats = shared.stats();
    Ok(build_report(
        &config,
        &url,
        &shared.workload,
        &stats,
        elapsed,
        calls,
    ))
}

/// A client with a keep-alive pool as large as the tasks that share it.
fn http_client(config: &BenchConfig) -> Result<Client, BenchError> {
    Client::builder()
        .pool_max_idle_per_host(config.concurrency as usize)
        .tcp_nodelay(true)
        .timeout(config.timeout)
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("mediactl-bench/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(BenchError::Client)
}

/// Starts client thread `index`: a current-thread runtime running `tasks` workers on `client`
/// (whose connections then live on this thread), then the polls of their jobs. The receiver
/// gets the time of the thread's last answer once its jobs are done too.
fn client_thread(
    index: u32,
    tasks: u32,
    client: Client,
    shared: Arc<Shared>,
) -> Result<oneshot::Receiver<Instant>, BenchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::Thread)?;
    let (done, finished) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("bench-client-{index}"))
        .spawn(move || {
            let last_answer = runtime.block_on(async move {
                let workers: Vec<JoinHandle<Vec<JoinHandle<()>>>> = (0..tasks)
                    .map(|_| tokio::spawn(worker(Arc::clone(&shared), client.clone())))
                    .collect();
                let mut polls = Vec::new();
                for w in workers {
                    if let Ok(handles) = w.await {
                        polls.extend(handles);
                    }
                }
                let last_answer = Instant::now();
                for p in polls {
                    // Each poll records its own outcome; this only waits for it to end.
                    let _ = p.await;
                }
                last_answer
            });
            let _ = done.send(last_answer);
        })
        .map_err(BenchError::Thread)?;
    Ok(finished)
}

/// Reads `/_sim/calls`: endpoint name -> calls so far.
async fn sim_calls(client: &Client, sim_url: &str) -> Result<HashMap<String, u64>, BenchError> {
    let url = format!("{sim_url}/_sim/calls");
    let err = |reason: String| BenchError::Simulator {
        url: url.clone(),
        reason,
    };
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| err(e.to_string()))?;
    if !response.status().is_success() {
        return Err(err(format!("status {}", response.status())));
    }
    response
        .json::<HashMap<String, u64>>()
        .await
        .map_err(|e| err(e.to_string()))
}

/// What the workers share.
struct Shared {
    auth: HeaderValue,
    /// The route of each media kind, indexed like [`MediaKind::ALL`].
    routes: Vec<Url>,
    /// `{url}/api/v1/media/jobs/`: a job id completes it.
    jobs_url: String,
    workload: Workload,
    /// The next step of the sequence to send.
    next: AtomicU64,
    /// Requests finished (answered or failed), for the progress bar.
    answered: AtomicU64,
    hits: AtomicU64,
    failures: AtomicU64,
    pending_jobs: AtomicU64,
    /// No send starts after this.
    deadline: Option<Instant>,
    job_timeout: Duration,
    poll_interval: Duration,
    stats: Mutex<Stats>,
}

impl Shared {
    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A cache outcome as `X-Cache` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheOutcome {
    Hit,
    Miss,
    Coalesced,
    Bypass,
}

impl CacheOutcome {
    fn parse(value: &[u8]) -> Option<Self> {
        match value {
            b"HIT" => Some(Self::Hit),
            b"MISS" => Some(Self::Miss),
            b"COALESCED" => Some(Self::Coalesced),
            b"BYPASS" => Some(Self::Bypass),
            _ => None,
        }
    }

    /// Whether this answer's charge is the request's full price.
    fn full_price(self) -> bool {
        matches!(self, Self::Miss | Self::Bypass)
    }
}

/// How one request ended.
enum Answered {
    /// 200 with a result.
    Ready { outcome: CacheOutcome, charged: u64 },
    /// 202 with a job to poll.
    Accepted {
        outcome: CacheOutcome,
        charged: u64,
        job_id: String,
    },
    /// Any other status.
    Error(StatusCode),
    /// No (readable) answer.
    Transport,
}

/// Everything counted, behind one lock (held for a few hundred nanoseconds per request).
struct Stats {
    overall: Histogram<u64>,
    hit: Histogram<u64>,
    miss: Histogram<u64>,
    coalesced: Histogram<u64>,
    bypass: Histogram<u64>,
    accepted: Histogram<u64>,
    job: Histogram<u64>,
    error: Histogram<u64>,
    outcomes: Outcomes,
    jobs: JobCounts,
    errors: BTreeMap<String, u64>,
    requests: u64,
    charged: u64,
    refunded: u64,
    /// Per distinct request: sent at least once.
    sent: Vec<bool>,
    /// Per distinct request: answers served (200, or a 202 whose job did not fail).
    served: Vec<u64>,
    /// Per distinct request: the full price its MISS answer charged.
    price: Vec<Option<u64>>,
    /// Requests sent per media kind.
    by_kind: [u64; 4],
}

/// The longest latency told apart: an hour, in microseconds (longer ones count as an hour).
const LONGEST_MICROS: u64 = 3_600_000_000;

fn histogram() -> Histogram<u64> {
    // Microseconds, 3 significant digits (about 190 KB each).
    Histogram::new_with_bounds(1, LONGEST_MICROS, 3)
        .expect("1 us to 1 h at 3 significant digits is a valid histogram")
}

impl Stats {
    fn new(distinct: usize) -> Self {
        Self {
            overall: histogram(),
            hit: histogram(),
            miss: histogram(),
            coalesced: histogram(),
            bypass: histogram(),
            accepted: histogram(),
            job: histogram(),
            error: histogram(),
            outcomes: Outcomes::default(),
            jobs: JobCounts::default(),
            errors: BTreeMap::new(),
            requests: 0,
            charged: 0,
            refunded: 0,
            sent: vec![false; distinct],
            served: vec![0; distinct],
            price: vec![None; distinct],
            by_kind: [0; 4],
        }
    }

    fn count_outcome(&mut self, outcome: CacheOutcome) {
        let o = &mut self.outcomes;
        match outcome {
            CacheOutcome::Hit => o.hit += 1,
            CacheOutcome::Miss => o.miss += 1,
            CacheOutcome::Coalesced => o.coalesced += 1,
            CacheOutcome::Bypass => o.bypass += 1,
        }
    }

    /// Records one finished request of distinct request `id`.
    fn record(&mut self, id: usize, kind: MediaKind, micros: u64, answered: &Answered) {
        self.requests += 1;
        self.sent[id] = true;
        self.by_kind[kind.index()] += 1;
        if !matches!(answered, Answered::Transport) {
            self.overall.saturating_record(micros);
        }
        match answered {
            Answered::Ready { outcome, charged } => {
                self.count_outcome(*outcome);
                let h = match outcome {
                    CacheOutcome::Hit => &mut self.hit,
                    CacheOutcome::Miss => &mut self.miss,
                    CacheOutcome::Coalesced => &mut self.coalesced,
                    CacheOutcome::Bypass => &mut self.bypass,
                };
                h.saturating_record(micros);
                self.charge(id, *outcome, *charged);
                self.served[id] += 1;
            }
            Answered::Accepted {
                outcome, charged, ..
            } => {
                self.count_outcome(*outcome);
                self.accepted.saturating_record(micros);
                self.jobs.accepted += 1;
                self.charge(id, *outcome, *charged);
            }
            Answered::Error(status) => {
                self.error.saturating_record(micros);
                *self.errors.entry(status.as_u16().to_string()).or_default() += 1;
            }
            Answered::Transport => {
                *self.errors.entry("transport".into()).or_default() += 1;
            }
        }
    }

    fn charge(&mut self, id: usize, outcome: CacheOutcome, charged: u64) {
        self.charged += charged;
        if outcome.full_price() && self.price[id].is_none() {
            self.price[id] = Some(charged);
        }
    }
}

/// Sends the sequence's next request until it is done or time is up; returns the job polls it
/// started.
async fn worker(shared: Arc<Shared>, client: Client) -> Vec<JoinHandle<()>> {
    let total = shared.workload.sequence.len() as u64;
    let mut polls = Vec::new();
    loop {
        if shared.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let step = shared.next.fetch_add(1, Ordering::Relaxed);
        if step >= total {
            break;
        }
        let id = shared.workload.sequence[step as usize] as usize;
        let spec = &shared.workload.requests[id];
        let started = Instant::now();
        let answered = send(&shared, &client, spec.kind, spec.body.clone()).await;
        let micros = started.elapsed().as_micros() as u64;
        shared.stats().record(id, spec.kind, micros, &answered);
        shared.answered.fetch_add(1, Ordering::Relaxed);
        match answered {
            Answered::Ready {
                outcome: CacheOutcome::Hit | CacheOutcome::Coalesced,
                ..
            } => {
                shared.hits.fetch_add(1, Ordering::Relaxed);
            }
            Answered::Accepted {
                outcome,
                charged,
                job_id,
            } => {
                if outcome == CacheOutcome::Coalesced {
                    shared.hits.fetch_add(1, Ordering::Relaxed);
                }
                shared.pending_jobs.fetch_add(1, Ordering::Relaxed);
                polls.push(tokio::spawn(poll_job(
                    Arc::clone(&shared),
                    client.clone(),
                    id,
                    job_id,
                    charged,
                    started,
                )));
            }
            Answered::Error(_) | Answered::Transport => {
                shared.failures.fetch_add(1, Ordering::Relaxed);
            }
            Answered::Ready { .. } => {}
        }
    }
    polls
}

/// Sends one request and reads its answer: the cache outcome and charge from the headers (the
/// body is read only to free the connection), or from the body when a header is missing.
async fn send(shared: &Shared, client: &Client, kind: MediaKind, body: Bytes) -> Answered {
    let response = client
        .post(shared.routes[kind.index()].clone())
        .header(AUTHORIZATION, shared.auth.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(body)
        .send()
        .await;
    let Ok(response) = response else {
        return Answered::Transport;
    };
    let status = response.status();
    let headers = response.headers();
    let outcome = headers
        .get("x-cache")
        .and_then(|v| CacheOutcome::parse(v.as_bytes()));
    let charged = headers
        .get("x-credits-charged")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Ok(bytes) = response.bytes().await else {
        return Answered::Transport;
    };
    match status {
        StatusCode::OK => match (outcome, charged) {
            (Some(outcome), Some(charged)) => Answered::Ready { outcome, charged },
            _ => {
                let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let cached = json["cached"].as_bool().unwrap_or(false);
                Answered::Ready {
                    outcome: outcome.unwrap_or(if cached {
                        CacheOutcome::Hit
                    } else {
                        CacheOutcome::Miss
                    }),
                    charged: charged.or(json["credits_charged"].as_u64()).unwrap_or(0),
                }
            }
        },
        StatusCode::ACCEPTED => {
            let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let Some(job_id) = json["job_id"].as_str().or(json["id"].as_str()) else {
                return Answered::Error(status);
            };
            let coalesced = json["coalesced"].as_bool().unwrap_or(false);
            Answered::Accepted {
                outcome: outcome.unwrap_or(if coalesced {
                    CacheOutcome::Coalesced
                } else {
                    CacheOutcome::Miss
                }),
                charged: charged.or(json["credits_charged"].as_u64()).unwrap_or(0),
                job_id: job_id.to_owned(),
            }
        }
        _ => Answered::Error(status),
    }
}

/// Polls a job until it is completed or failed, or the job timeout passes. `sent` is when its
/// request was sent (the JOB latency runs from there).
async fn poll_job(
    shared: Arc<Shared>,
    client: Client,
    id: usize,
    job_id: String,
    charged: u64,
    sent: Instant,
) {
    let url = format!("{}{job_id}", shared.jobs_url);
    let give_up = Instant::now() + shared.job_timeout;
    let end = loop {
        tokio::time::sleep(shared.poll_interval).await;
        let polled = client
            .get(&url)
            .header(AUTHORIZATION, shared.auth.clone())
            .send()
            .await;
        let job = match polled {
            Ok(r) if r.status() == StatusCode::OK => r.json::<Value>().await.ok(),
            _ => None,
        };
        match job.as_ref().and_then(|j| j["status"].as_str()) {
            Some("completed") => break JobEnd::Completed,
            Some("failed") => {
                // The API refunds every charge of a failed job (it says so in `refunded`).
                let refunded = job
                    .as_ref()
                    .is_none_or(|j| j["refunded"].as_bool().unwrap_or(true));
                let amount = job
                    .as_ref()
                    .and_then(|j| j["credits_charged"].as_u64())
                    .unwrap_or(charged);
                break JobEnd::Failed {
                    refund: if refunded { amount } else { 0 },
                };
            }
            Some(_) => {}
            None => shared.stats().jobs.poll_errors += 1,
        }
        if Instant::now() >= give_up {
            break JobEnd::Unfinished;
        }
    };
    let micros = sent.elapsed().as_micros() as u64;
    {
        let mut stats = shared.stats();
        match end {
            JobEnd::Completed => {
                stats.jobs.completed += 1;
                stats.job.saturating_record(micros);
                stats.served[id] += 1;
            }
            JobEnd::Failed { refund } => {
                stats.jobs.failed += 1;
                stats.job.saturating_record(micros);
                stats.refunded += refund;
            }
            JobEnd::Unfinished => {
                // Paid for, and maybe still delivered or refunded later.
                stats.jobs.unfinished += 1;
                stats.served[id] += 1;
            }
        }
    }
    shared.pending_jobs.fetch_sub(1, Ordering::Relaxed);
}

enum JobEnd {
    Completed,
    Failed { refund: u64 },
    Unfinished,
}

/// The progress bar (stderr), redrawn from the shared counters ten times a second.
struct Progress {
    bar: ProgressBar,
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    fn start(enabled: bool, total: u64, shared: &Arc<Shared>) -> Self {
        let bar = if enabled {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{wide_bar}] {pos}/{len} {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let task = enabled.then(|| {
            let (bar, stop, s) = (bar.clone(), Arc::clone(&stop), Arc::clone(shared));
            let started = Instant::now();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let answered = s.answered.load(Ordering::Relaxed);
                    let rate = answered as f64 / started.elapsed().as_secs_f64().max(0.001);
                    bar.set_position(answered);
                    bar.set_message(format!(
                        "{rate:.0} req/s, {} hits, {} errors, {} jobs pending",
                        s.hits.load(Ordering::Relaxed),
                        s.failures.load(Ordering::Relaxed),
                        s.pending_jobs.load(Ordering::Relaxed)
                    ));
                    bar.tick();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        });
        Self { bar, stop, task }
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.bar.finish_and_clear();
    }
}

fn build_report(
    config: &BenchConfig,
    url: &str,
    workload: &Workload,
    stats: &Stats,
    elapsed: Duration,
    calls: Option<BTreeMap<String, u64>>,
) -> BenchReport {
    // The full price of each media kind, as seen on any of its MISS answers (the largest).
    let mut kind_price: [Option<u64>; 4] = [None; 4];
    for (spec, price) in workload.requests.iter().zip(&stats.price) {
        if let Some(p) = price {
            let slot = &mut kind_price[spec.kind.index()];
            *slot = Some(slot.map_or(*p, |q| q.max(*p)));
        }
    }
    let mut without_cache = 0u64;
    let mut unpriced = 0u64;
    let mut by_kind_distinct = [0u64; 4];
    for (i, spec) in workload.requests.iter().enumerate() {
        if stats.sent[i] {
            by_kind_distinct[spec.kind.index()] += 1;
        }
        let served = stats.served[i];
        if served == 0 {
            continue;
        }
        match stats.price[i].or(kind_price[spec.kind.index()]) {
            Some(price) => without_cache += served * price,
            None => unpriced += served,
        }
    }
    let charged = stats.charged.saturating_sub(stats.refunded);
    let saved = without_cache as i64 - charged as i64;
    let o = &stats.outcomes;
    let answered = o.hit + o.miss + o.coalesced + o.bypass;
    let duration_s = elapsed.as_secs_f64();
    let kinds: Vec<MediaKind> = if config.hits_only {
        vec![MediaKind::Tts]
    } else {
        config.mix.kinds().collect()
    };
    let by_type = kinds
        .into_iter()
        .map(|k| {
            (
                k.name().to_owned(),
                TypeCounts {
                    requests: stats.by_kind[k.index()],
                    distinct: by_kind_distinct[k.index()],
                },
            )
        })
        .collect();
    BenchReport {
        url: url.to_owned(),
        mode: if config.hits_only {
            "hits-only"
        } else {
            "zipf"
        },
        seed: config.seed,
        zipf: (!config.hits_only).then_some(config.zipf),
        mix: if config.hits_only {
            "tts=1".into()
        } else {
            config.mix.to_string()
        },
        requests: stats.requests,
        distinct: stats.sent.iter().filter(|s| **s).count() as u64,
        concurrency: config.concurrency,
        threads: config.threads.min(config.concurrency),
        duration_s: report::round3(duration_s),
        rps: if duration_s > 0.0 {
            report::round3(stats.requests as f64 / duration_s)
        } else {
            0.0
        },
        hit_rate: if answered == 0 {
            0.0
        } else {
            (o.hit + o.coalesced) as f64 / answered as f64
        },
        outcomes: o.clone(),
        jobs: stats.jobs.clone(),
        by_type,
        provider_calls: calls.as_ref().map(|c| {
            GENERATION_ENDPOINTS
                .iter()
                .map(|e| c.get(*e).copied().unwrap_or(0))
                .sum()
        }),
        provider_calls_by_endpoint: calls,
        credits_charged: charged,
        credits_without_cache: without_cache,
        credits_saved: saved,
        savings_pct: (without_cache > 0)
            .then(|| report::round3(saved as f64 * 100.0 / without_cache as f64)),
        unpriced_requests: unpriced,
        errors: stats.errors.clone(),
        latency_ms: Latencies {
            overall: LatencySummary::of(&stats.overall),
            by_outcome: LatencyByOutcome {
                hit: LatencySummary::of(&stats.hit),
                miss: LatencySummary::of(&stats.miss),
                coalesced: LatencySummary::of(&stats.coalesced),
                bypass: LatencySummary::of(&stats.bypass),
                accepted: LatencySummary::of(&stats.accepted),
                job: LatencySummary::of(&stats.job),
                error: LatencySummary::of(&stats.error),
            },
        },
    }
}
