//! Test support for the AWS side: environment, the Lambda application served on loopback, a
//! DynamoDB call recorder.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use media_cache::lambda::{Backend, LambdaConfig, SecretSource};
use media_cache::lambda::{Function, Role};
use provider_sim::{SimConfig, SimHandle};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A variable the test script sets; its absence means the emulator is not running.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run ./scripts/test.sh, which starts the AWS emulator")
    })
}

/// Held by the tests that send hundreds of requests at once, so that they take turns on the
/// emulator (one Python process) instead of starving each other's conflict retries.
pub async fn burst() -> tokio::sync::MutexGuard<'static, ()> {
    static BURST: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    BURST.lock().await
}

/// Warnings and errors of the code under test in the test's output (shown when it fails).
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_test_writer()
        .try_init();
}

/// The SDK configuration pointing at the emulator.
pub async fn sdk() -> aws_config::SdkConfig {
    env("AWS_ENDPOINT_URL");
    media_cache::lambda::sdk_config().await
}

/// A simulator on a free loopback port.
pub async fn simulator() -> SimHandle {
    provider_sim::spawn(SimConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// The Lambda configuration of the test table and bucket, with the simulator as OpenAI.
pub fn lambda_config(sim: &SimHandle) -> LambdaConfig {
    LambdaConfig {
        backend: Backend::Aws {
            table: env("MEDIA_TEST_TABLE"),
            bucket: env("MEDIA_TEST_BUCKET"),
        },
        public_base_url: None,
        openai_base_url: sim.base_url.clone(),
        openai_api_key: SecretSource::Value("sim-key".into()),
        url_ttl: Duration::from_secs(600),
        provider_timeout: Duration::from_secs(10),
        pricing_toml: None,
        jobs_queue_url: None,
        callback_secret: None,
        public_api_url: String::new(),
        suno: None,
        kling: None,
        job_policy: Default::default(),
        deadline_margin: Duration::from_secs(2),
        miss_policy: Default::default(),
        private_entries: false,
        download_allowed_hosts: media_cache::adapters::download::DownloadPolicy::host_of(
            &sim.base_url,
        )
        .into_iter()
        .collect(),
    }
}

/// A function's application served on a loopback port, with its own job queue: its base URL.
pub async fn serve_function(sim: &SimHandle, function: Function) -> String {
    let queue = jobs_queue(&sdk().await).await;
    serve_app(&jobs_config(sim, &queue), function).await
}

/// What Lambda imposes on one invocation, played around a function's application: the
/// invocation's deadline (in the context `lambda_http` hands the app), the runtime stopping the
/// handler at the timeout, and the response payload limit.
#[derive(Debug, Clone, Copy)]
pub struct FunctionLimits {
    /// The function's timeout: the invocation's deadline is this far from its start.
    pub timeout: Duration,
    /// When the handler's future is dropped: the timeout, unless a test plays a crash earlier.
    pub stopped_after: Duration,
}

impl Default for FunctionLimits {
    fn default() -> Self {
        // template.yaml's Globals.Function.Timeout.
        Self {
            timeout: Duration::from_secs(29),
            stopped_after: Duration::from_secs(29),
        }
    }
}

/// Lambda refuses a response payload over 6 MB (binary bodies count base64-encoded).
pub const LAMBDA_RESPONSE_LIMIT: usize = 6 * 1024 * 1024;

/// A function's application with `config` served on a loopback port: its base URL.
pub async fn serve_app(config: &LambdaConfig, function: Function) -> String {
    serve_app_limited(config, function, FunctionLimits::default()).await
}

/// A function's application served under Lambda's `limits`: its base URL. A stopped handler
/// answers 502 with `x-lambda: timed-out`; a response over the payload limit is replaced by a 502
/// with `x-lambda: response-too-large`, as Lambda does.
pub async fn serve_app_limited(
    config: &LambdaConfig,
    function: Function,
    limits: FunctionLimits,
) -> String {
    let app = media_cache::lambda::app(config, &sdk().await, function)
        .await
        .unwrap()
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                invoke(limits, request, next)
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// One invocation under `limits`.
async fn invoke(
    limits: FunctionLimits,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut context = lambda_http::Context::default();
    context.deadline = now_ms + limits.timeout.as_millis() as u64;
    request.extensions_mut().insert(context);
    let Ok(response) = tokio::time::timeout(limits.stopped_after, next.run(request)).await else {
        let headers = [("x-lambda", "timed-out")];
        return (
            axum::http::StatusCode::BAD_GATEWAY,
            headers,
            "Task timed out",
        )
            .into_response();
    };
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let textual = parts
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|t| t.starts_with("text/") || t.starts_with("application/json"));
    let body_size = if textual {
        bytes.len()
    } else {
        bytes.len().div_ceil(3) * 4
    };
    let header_size: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 6)
        .sum();
    // The event's envelope (status, flags) takes a few hundred bytes more.
    if body_size + header_size + 512 > LAMBDA_RESPONSE_LIMIT {
        let headers = [("x-lambda", "response-too-large")];
        return (
            axum::http::StatusCode::BAD_GATEWAY,
            headers,
            "Response payload size exceeded",
        )
            .into_response();
    }
    axum::response::Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// The strict emulator's counters (`transactions`, `transaction_conflicts`, `write_conflicts`).
pub async fn strict_stats() -> serde_json::Value {
    let url = format!("{}/_strict/stats", env("AWS_ENDPOINT_URL"));
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// One answer of a function: status, `X-Cache`, credits charged, body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// `X-Cache`.
    pub cache: String,
    /// `X-Credits-Charged` (0 when absent).
    pub charged: u64,
    /// The JSON body (Null when not JSON).
    pub json: serde_json::Value,
}

/// POSTs `body` to `url` with the user's key.
pub async fn post(
    http: &reqwest::Client,
    url: &str,
    user: &media_cache::service::accounts::NewUser,
    body: &serde_json::Value,
) -> Reply {
    let resp = http
        .post(url)
        .bearer_auth(&user.api_key)
        .json(body)
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (cache, charged) = (header("x-cache"), header("x-credits-charged"));
    Reply {
        status: resp.status().as_u16(),
        cache,
        charged: charged.parse().unwrap_or(0),
        json: resp.json().await.unwrap_or(serde_json::Value::Null),
    }
}

/// A control call to the strict emulator (`scripts/moto_server.py`).
pub async fn strict(method: reqwest::Method, path: &str, body: Option<serde_json::Value>) {
    let url = format!("{}{path}", env("AWS_ENDPOINT_URL"));
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
}

/// Records every DynamoDB operation a client sends: its name, when it started and ended.
#[derive(Debug, Clone, Default)]
pub struct CallLog(Arc<Mutex<Vec<(String, Instant, Instant)>>>);

/// When the operation being sent started (kept in the request's config bag).
#[derive(Debug, Clone, Copy)]
struct Started(Instant);

impl Storable for Started {
    type Storer = StoreReplace<Self>;
}

impl CallLog {
    /// The operations sent so far, in the order they finished.
    pub fn calls(&self) -> Vec<String> {
        self.0.lock().unwrap().iter().map(|c| c.0.clone()).collect()
    }

    /// The operations grouped into sequential round trips: calls that overlapped in time share
    /// one (names sorted within it).
    pub fn round_trips(&self) -> Vec<Vec<String>> {
        let mut calls = self.0.lock().unwrap().clone();
        calls.sort_by_key(|c| c.1);
        let mut rounds: Vec<Vec<String>> = Vec::new();
        let mut round_end: Option<Instant> = None;
        for (name, start, end) in calls {
            match round_end {
                Some(until) if start < until => {
                    rounds.last_mut().unwrap().push(name);
                    round_end = Some(until.max(end));
                }
                _ => {
                    rounds.push(vec![name]);
                    round_end = Some(end);
                }
            }
        }
        for round in &mut rounds {
            round.sort();
        }
        rounds
    }

    /// Forgets them.
    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

impl Intercept for CallLog {
    fn name(&self) -> &'static str {
        "CallLog"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state().store_put(Started(Instant::now()));
        Ok(())
    }

    fn read_after_execution(
        &self,
        _context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let started = cfg.load::<Started>().map_or_else(Instant::now, |s| s.0);
        if let Some(metadata) = cfg.load::<Metadata>() {
            self.0
                .lock()
                .unwrap()
                .push((metadata.name().to_owned(), started, Instant::now()));
        }
        Ok(())
    }
}

/// A simulator whose Suno and Kling tasks take 300 ms and call nobody back.
pub async fn task_simulator() -> SimHandle {
    let config = SimConfig {
        task_duration: Duration::from_millis(300),
        ..SimConfig::default()
    };
    provider_sim::spawn(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// A fresh SQS queue on the emulator (one per test: a queue shared with another test's
/// simulator would meet tasks it does not know).
pub async fn jobs_queue(sdk: &aws_config::SdkConfig) -> String {
    let name = format!(
        "jobs-{}",
        media_cache::service::accounts::generate_request_id()
    );
    aws_sdk_sqs::Client::new(sdk)
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap()
}

/// The Lambda configuration with jobs: the queue, a callback secret, Suno and Kling on the
/// simulator, immediate polls.
pub fn jobs_config(sim: &SimHandle, queue_url: &str) -> LambdaConfig {
    LambdaConfig {
        jobs_queue_url: Some(queue_url.to_owned()),
        callback_secret: Some(SecretSource::Value("moto-callback-secret".into())),
        public_api_url: "http://127.0.0.1:9".into(),
        suno: Some((sim.base_url.clone(), SecretSource::Value("sim".into()))),
        kling: Some((sim.base_url.clone(), SecretSource::Value("sim".into()))),
        job_policy: media_cache::service::JobPolicy {
            first_poll: Duration::ZERO,
            max_poll_delay: Duration::from_secs(1),
            timeout: Duration::from_secs(1800),
        },
        ..lambda_config(sim)
    }
}

/// Plays the SQS event source for the completion function: receives batches from the queue,
/// runs each through `complete_batch` and deletes what it did not report as failed, until
/// `done` says so (at most 60 s). Returns the bodies of the messages it handled (deleted), in
/// the order received.
pub async fn run_completion_until<F, Fut>(
    config: &LambdaConfig,
    queue_url: &str,
    mut done: F,
) -> Vec<String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
    let sdk = sdk().await;
    let (service, _) = media_cache::lambda::service(config, &sdk, Role::Completion)
        .await
        .unwrap();
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut handled = Vec::new();
    while !done().await {
        assert!(std::time::Instant::now() < deadline, "jobs did not finish");
        let received = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        let messages = received.messages.unwrap_or_default();
        let mut event = SqsEvent::default();
        for m in &messages {
            let mut record = SqsMessage::default();
            record.message_id = m.message_id.clone();
            record.receipt_handle = m.receipt_handle.clone();
            record.body = m.body.clone();
            event.records.push(record);
        }
        let response = media_cache::lambda::complete_batch(&service, event).await;
        let failed: Vec<String> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone())
            .collect();
        for m in messages {
            if !failed.contains(&m.message_id.clone().unwrap_or_default()) {
                sqs.delete_message()
                    .queue_url(queue_url)
                    .receipt_handle(m.receipt_handle.unwrap_or_default())
                    .send()
                    .await
                    .unwrap();
                handled.push(m.body.unwrap_or_default());
            }
        }
    }
    handled
}
