//! The Lambda entry point: configuration from the environment, clients built once in `main`, the
//! function's axum routes handed to `lambda_http::run`.

use crate::adapters::download::DownloadPolicy;
use crate::adapters::dynamodb::DynamoStore;
use crate::adapters::kling::{KlingAuth, KlingClient, KlingConfig};
use crate::adapters::openai::{OpenAiClient, OpenAiConfig};
use crate::adapters::s3_objects::S3ObjectStore;
use crate::adapters::sqs_queue::SqsJobQueue;
use crate::adapters::suno::{SunoClient, SunoConfig};
use crate::clock::{Clock, SystemClock};
use crate::domain::{JobMessage, PriceTable};
pub use crate::http::Function;
use crate::http::RequestDeadline;
use crate::http::{AppState, function_router};
use crate::ports::{JobQueue, ObjectStore, Store};
use crate::service::{CallbackSigner, JobParts, JobPolicy, MediaService, MissPolicy};
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use axum::Router;
use std::sync::Arc;
use std::time::Duration;

/// A configuration or start-up failure, reported before the function takes traffic.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartupError(pub String);

/// Where the OpenAI key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The key itself (`OPENAI_API_KEY`), for local runs.
    Value(String),
    /// The name of an SSM SecureString parameter holding it (`OPENAI_API_KEY_PARAMETER`).
    SsmParameter(String),
    /// Not configured: functions that need it refuse to start.
    Unset,
}

/// Which store and object storage the function uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// DynamoDB table and S3 bucket.
    Aws {
        /// `TABLE_NAME`.
        table: String,
        /// `BUCKET_NAME`.
        bucket: String,
    },
    /// SQLite and local files under `MEDIA_DATA_DIR` (`MEDIA_STORE=embedded`), for
    /// `cargo lambda watch`; needs the function's `embedded` feature.
    Embedded {
        /// The data directory.
        data_dir: std::path::PathBuf,
    },
}

/// Everything a function reads from its environment.
#[derive(Debug, Clone)]
pub struct LambdaConfig {
    /// Store and objects.
    pub backend: Backend,
    /// Base of result URLs instead of presigned ones (e.g. a CDN), `PUBLIC_BASE_URL`.
    pub public_base_url: Option<String>,
    /// `OPENAI_BASE_URL`, default `https://api.openai.com`.
    pub openai_base_url: String,
    /// The OpenAI key's source.
    pub openai_api_key: SecretSource,
    /// `URL_TTL_SECS`, default 3600.
    pub url_ttl: Duration,
    /// `PROVIDER_TIMEOUT_SECS`, default 25 (API Gateway gives up after 30 s).
    pub provider_timeout: Duration,
    /// `PRICING_TOML`: a whole price list, replacing the defaults.
    pub pricing_toml: Option<String>,
    /// `JOBS_QUEUE_URL`: the SQS queue of music and video jobs (unset: no jobs).
    pub jobs_queue_url: Option<String>,
    /// `CALLBACK_SECRET` or `CALLBACK_SECRET_PARAMETER`: signs provider callback URLs.
    pub callback_secret: Option<SecretSource>,
    /// `PUBLIC_API_URL`: the API as providers reach it, for callback URLs.
    pub public_api_url: String,
    /// `SUNO_BASE_URL` and `SUNO_API_KEY` or `SUNO_API_KEY_PARAMETER` (unset: no music).
    pub suno: Option<(String, SecretSource)>,
    /// `KLING_BASE_URL` and `KLING_API_KEY` or `KLING_API_KEY_PARAMETER` (unset: no video): an
    /// API key, or `ACCESS_KEY:SECRET_KEY` for JWT auth.
    pub kling: Option<(String, SecretSource)>,
    /// `JOB_FIRST_POLL_SECS`, `JOB_MAX_POLL_SECS`, `JOB_TIMEOUT_SECS`.
    pub job_policy: JobPolicy,
    /// `DEADLINE_MARGIN_MS` (default 2000): how long before the function's deadline a request
    /// answers, `SETTLE_MARGIN_SECS`, `WORKER_BUDGET_SECS` and `ASYNC_MODELS` (slow models that go
    /// to the worker from the start, e.g. `image:gpt-image-1:high`).
    pub deadline_margin: Duration,
    /// Deadlines and slow models of the miss path.
    pub miss_policy: MissPolicy,
    /// Every cache entry private to its account (`PRIVATE_CACHE=true`): no sharing across
    /// accounts.
    pub private_entries: bool,
    /// `DOWNLOAD_ALLOWED_HOSTS`: `host[:port]` list whose results may be downloaded over plain
    /// http and from private addresses (a local simulator); empty in production.
    pub download_allowed_hosts: Vec<String>,
}

impl LambdaConfig {
    /// Reads the configuration from `var` (the process environment in production).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, StartupError> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let required =
            |name: &str| var(name).ok_or_else(|| StartupError(format!("{name} is not set")));
        let secs = |name: &str, default: u64| -> Result<Duration, StartupError> {
            match var(name) {
                None => Ok(Duration::from_secs(default)),
                Some(v) => v
                    .parse()
                    .map(Duration::from_secs)
                    .map_err(|_| StartupError(format!("{name} must be a number of seconds"))),
            }
        };
        let backend = match var("MEDIA_STORE").as_deref() {
            Some("embedded") => Backend::Embedded {
                data_dir: var("MEDIA_DATA_DIR")
                    .unwrap_or_else(|| "mediactl-data".into())
                    .into(),
            },
            None | Some("aws") => Backend::Aws {
                table: required("TABLE_NAME")?,
                bucket: required("BUCKET_NAME")?,
            },
            Some(other) => {
                return Err(StartupError(format!(
                    "MEDIA_STORE must be aws or embedded, not {other:?}"
                )));
            }
        };
        let secret = |value: &str, parameter: &str| match (var(value), var(parameter)) {
            (Some(key), _) => Some(SecretSource::Value(key)),
            (None, Some(name)) => Some(SecretSource::SsmParameter(name)),
            (None, None) => None,
        };
        let openai_api_key = secret("OPENAI_API_KEY", "OPENAI_API_KEY_PARAMETER");
        let defaults = JobPolicy::default();
        let miss = MissPolicy::default();
        let job_policy = JobPolicy {
            first_poll: secs("JOB_FIRST_POLL_SECS", defaults.first_poll.as_secs())?,
            max_poll_delay: secs("JOB_MAX_POLL_SECS", defaults.max_poll_delay.as_secs())?,
            timeout: secs("JOB_TIMEOUT_SECS", defaults.timeout.as_secs())?,
        };
        Ok(Self {
            backend,
            public_base_url: var("PUBLIC_BASE_URL"),
            openai_base_url: var("OPENAI_BASE_URL")
                .unwrap_or_else(|| "https://api.openai.com".into()),
            openai_api_key: openai_api_key.unwrap_or(SecretSource::Unset),
            url_ttl: secs("URL_TTL_SECS", 3600)?,
            provider_timeout: secs("PROVIDER_TIMEOUT_SECS", 25)?,
            pricing_toml: var("PRICING_TOML"),
            jobs_queue_url: var("JOBS_QUEUE_URL"),
            callback_secret: secret("CALLBACK_SECRET", "CALLBACK_SECRET_PARAMETER"),
            public_api_url: var("PUBLIC_API_URL").unwrap_or_default(),
            suno: secret("SUNO_API_KEY", "SUNO_API_KEY_PARAMETER").map(|key| {
                let base = var("SUNO_BASE_URL").unwrap_or_else(|| "https://api.sunoapi.org".into());
                (base, key)
            }),
            kling: secret("KLING_API_KEY", "KLING_API_KEY_PARAMETER").map(|key| {
                let base = var("KLING_BASE_URL")
                    .unwrap_or_else(|| "https://api-singapore.klingai.com".into());
                (base, key)
            }),
            job_policy,
            deadline_margin: match var("DEADLINE_MARGIN_MS") {
                None => Duration::from_secs(2),
                Some(v) => v.parse().map(Duration::from_millis).map_err(|_| {
                    StartupError("DEADLINE_MARGIN_MS must be a number of milliseconds".into())
                })?,
            },
            miss_policy: MissPolicy {
                settle_margin: secs("SETTLE_MARGIN_SECS", miss.settle_margin.as_secs())?,
                worker_budget: secs("WORKER_BUDGET_SECS", miss.worker_budget.as_secs())?,
                async_models: var("ASYNC_MODELS")
                    .map(|list| MissPolicy::parse_async_models(&list))
                    .unwrap_or(miss.async_models),
                ..miss
            },
            download_allowed_hosts: var("DOWNLOAD_ALLOWED_HOSTS")
                .map(|v| DownloadPolicy::parse_hosts(&v))
                .unwrap_or_default(),
            private_entries: match var("PRIVATE_CACHE").as_deref() {
                None | Some("" | "false" | "0") => false,
                Some("true" | "1") => true,
                Some(_) => {
                    return Err(StartupError("PRIVATE_CACHE must be true or false".into()));
                }
            },
        })
    }
}

/// The AWS SDK configuration of this process: region, credentials, `AWS_ENDPOINT_URL`, and one
/// HTTPS client (hyper, rustls with ring, the process's trusted roots) shared by every AWS client.
pub async fn sdk_config() -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(SharedHttpClient::new(SdkHttpClient::default()));
    let found = SdkEnvironment::from_vars(|name| std::env::var(name).ok());
    if let Some(region) = found.region {
        loader = loader.region(aws_config::Region::new(region));
    }
    if found.credentials {
        loader = loader.credentials_provider(
            aws_config::environment::credentials::EnvironmentVariableCredentialsProvider::new(),
        );
    }
    with_blank_settings_unset(loader.load().await)
}

/// The SDK configuration with its per-service settings (`AWS_ENDPOINT_URL`,
/// `AWS_ENDPOINT_URL_DYNAMODB`...) read through [`BlankIsUnset`].
fn with_blank_settings_unset(sdk: aws_config::SdkConfig) -> aws_config::SdkConfig {
    let loaded = sdk.clone();
    sdk.into_builder()
        .service_config(BlankIsUnset(loaded))
        .build()
}

/// Per-service settings from the environment and profile, with a blank value read as unset. The
/// template declares `AWS_ENDPOINT_URL` empty (so that `sam local invoke --env-vars` may set it),
/// and each client reads its endpoint here: an empty one reached the endpoint resolver as the URL
/// "", which panics on the first call (aws-smithy-types: "URL was unset").
#[derive(Debug)]
struct BlankIsUnset(aws_config::SdkConfig);

impl aws_types::service_config::LoadServiceConfig for BlankIsUnset {
    fn load_config(&self, key: aws_types::service_config::ServiceConfigKey<'_>) -> Option<String> {
        self.0
            .service_config()?
            .load_config(key)
            .filter(|value| !value.trim().is_empty())
    }
}

/// What the SDK's default chains would find first in the environment, as Lambda sets it
/// (`AWS_REGION`, and the role's keys in `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`). Taken
/// from there directly, the chains behind (profile files, web identity, container and instance
/// metadata providers, about 0.3 ms of a function's start to build) are not built; when a value
/// is missing (a profile on a workstation, SnapStart's container credentials) the default chain
/// resolves it as before.
#[derive(Debug, PartialEq, Eq)]
struct SdkEnvironment {
    region: Option<String>,
    credentials: bool,
}

impl SdkEnvironment {
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        Self {
            region: var("AWS_REGION"),
            credentials: var("AWS_ACCESS_KEY_ID").is_some()
                && var("AWS_SECRET_ACCESS_KEY").is_some(),
        }
    }
}

/// The SDK's HTTPS client (aws-smithy-http-client: hyper, rustls with ring) trusting the roots of
/// `adapters::tls`, made at the first AWS call rather than at start-up. Given to the SDK as is,
/// that client reads the system store and builds a TLS configuration (parsing every root) for
/// each AWS client created, only to check it (three times before a function takes its first
/// event), then once more for the first request. Here the first request builds the one
/// configuration, with a TCP connection and a TLS handshake to pay for anyway: measured against
/// a local endpoint, it takes about 0.8 ms longer than before, where init is 11 ms shorter (see
/// the README's cold start). Connectors are cached by timeout settings and shared by every AWS
/// client of the process.
#[derive(Debug, Default)]
struct SdkHttpClient(std::sync::OnceLock<SharedHttpClient>);

impl HttpClient for SdkHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        use aws_smithy_http_client::tls::{
            Provider, TlsContext, TrustStore, rustls_provider::CryptoMode,
        };
        let client = self.0.get_or_init(|| {
            let roots = TrustStore::empty()
                .with_pem_certificate(crate::adapters::tls::roots_pem().to_vec());
            let tls = TlsContext::builder()
                .with_trust_store(roots)
                .build()
                .expect("a TLS context of PEM roots");
            aws_smithy_http_client::Builder::new()
                .tls_provider(Provider::Rustls(CryptoMode::Ring))
                .tls_context(tls)
                .build_https()
        });
        client.http_connector(settings, components)
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        Some(ConnectorMetadata::new(
            "hyper",
            Some(std::borrow::Cow::Borrowed("1.x")),
        ))
    }
}

/// An S3 client; path-style addressing when a custom endpoint (an emulator) is configured.
pub fn s3_client(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(sdk.endpoint_url().is_some())
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

async fn secret_value(
    sdk: &aws_config::SdkConfig,
    source: &SecretSource,
) -> Result<String, StartupError> {
    match source {
        SecretSource::Unset => Err(StartupError(
            "a secret this function needs is not set (see the README's AWS configuration)".into(),
        )),
        SecretSource::Value(key) => Ok(key.clone()),
        SecretSource::SsmParameter(name) => aws_sdk_ssm::Client::new(sdk)
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| {
                StartupError(format!(
                    "reading SSM parameter {name}: {}",
                    aws_sdk_ssm::error::DisplayErrorContext(e)
                ))
            })?
            .parameter
            .and_then(|p| p.value)
            .ok_or_else(|| StartupError(format!("SSM parameter {name} has no value"))),
    }
}

/// What a backend provides.
struct Parts {
    store: Arc<dyn Store>,
    objects: Arc<dyn ObjectStore>,
    /// Extra routes (the embedded object server).
    routes: Router,
    /// The job queue, when jobs are configured.
    queue: Option<Arc<dyn JobQueue>>,
    /// The callback secret when none is configured (embedded: the data directory's key).
    default_callback_secret: Option<Vec<u8>>,
}

/// What a process of the stack runs: one HTTP function, or the completion worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An HTTP function behind API Gateway.
    Http(Function),
    /// The SQS consumer that settles jobs (it polls tasks and generates speech and images).
    Completion,
}

/// API Gateway stops waiting for an HTTP API integration after 30 s, whatever the function's
/// own timeout.
const API_GATEWAY_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds the function's application: clients, store, objects, provider, service, routes.
pub async fn app(
    config: &LambdaConfig,
    sdk: &aws_config::SdkConfig,
    function: Function,
) -> Result<Router, StartupError> {
    let (service, extra) = service(config, sdk, Role::Http(function)).await?;
    let state = AppState {
        service,
        url_ttl: chrono::Duration::from_std(config.url_ttl).unwrap_or(chrono::Duration::hours(1)),
    };
    Ok(with_deadlines(
        function_router(state, function).merge(extra),
        config.deadline_margin,
    ))
}

/// Gives each request the Lambda invocation's deadline (from the context `lambda_http` puts in
/// the request) less `margin`, and never more than API Gateway waits: the request answers, with
/// a job if need be, before the function is killed or the gateway gives up.
pub fn with_deadlines(router: Router, margin: Duration) -> Router {
    router.layer(axum::middleware::map_request(
        move |mut request: axum::extract::Request| async move {
            if let Some(context) = request.extensions().get::<lambda_http::Context>() {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis() as u64;
                let left = request_budget(context.deadline, now_ms, margin);
                request
                    .extensions_mut()
                    .insert(RequestDeadline(tokio::time::Instant::now() + left));
            }
            request
        },
    ))
}

/// How long a request that starts at `now_ms` may take: until the invocation's deadline (epoch
/// milliseconds) less `margin`, within API Gateway's wait. A deadline already past when the
/// request starts is no deadline Lambda gives: `cargo lambda watch` sends 600000 (ten minutes
/// into 1970) to every invocation, so API Gateway's wait alone bounds the request (rather than
/// answering every request at once with its job).
fn request_budget(deadline_ms: u64, now_ms: u64, margin: Duration) -> Duration {
    let left = match deadline_ms.checked_sub(now_ms) {
        Some(left) if left > 0 => Duration::from_millis(left),
        _ => API_GATEWAY_TIMEOUT,
    };
    left.min(API_GATEWAY_TIMEOUT).saturating_sub(margin)
}

/// The OpenAI key, required only where speech and images are generated.
async fn openai_key(
    config: &LambdaConfig,
    sdk: &aws_config::SdkConfig,
    role: Role,
) -> Result<String, StartupError> {
    let needs_key = matches!(
        role,
        Role::Http(Function::Tts | Function::Image) | Role::Completion
    );
    match (&config.openai_api_key, needs_key) {
        (SecretSource::Unset, true) => Err(StartupError(
            "set OPENAI_API_KEY_PARAMETER (an SSM SecureString name) or OPENAI_API_KEY".into(),
        )),
        (source, true) => secret_value(sdk, source).await,
        // The other functions never call OpenAI: no key, no SSM read, no permission needed.
        (_, false) => Ok(String::new()),
    }
}

/// The service of `role`.
pub async fn service(
    config: &LambdaConfig,
    sdk: &aws_config::SdkConfig,
    role: Role,
) -> Result<(Arc<MediaService>, Router), StartupError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let pricing = match &config.pricing_toml {
        Some(text) => PriceTable::from_toml(text).map_err(|e| StartupError(e.to_string()))?,
        None => PriceTable::default(),
    };
    let openai = Arc::new(
        OpenAiClient::new(OpenAiConfig {
            timeout: config.provider_timeout,
            max_retries: 1,
            download: DownloadPolicy::allowing(config.download_allowed_hosts.clone()),
            ..OpenAiConfig::new(
                &config.openai_base_url,
                openai_key(config, sdk, role).await?,
            )
        })
        .map_err(|e| StartupError(e.to_string()))?,
    );
    let function = match role {
        Role::Http(function) => function,
        Role::Completion => Function::Jobs,
    };
    let parts = match &config.backend {
        Backend::Aws { table, bucket } => {
            let objects =
                S3ObjectStore::new(s3_client(sdk), bucket, config.public_base_url.clone());
            let store = DynamoStore::new(
                aws_sdk_dynamodb::Client::new(sdk),
                table,
                objects.location_prefix(),
            );
            let queue = config.jobs_queue_url.as_ref().map(|url| {
                Arc::new(SqsJobQueue::new(aws_sdk_sqs::Client::new(sdk), url)) as Arc<dyn JobQueue>
            });
            Parts {
                store: Arc::new(store),
                objects: Arc::new(objects),
                routes: Router::new(),
                queue,
                default_callback_secret: None,
            }
        }
        Backend::Embedded { data_dir } => embedded(config, data_dir, function, Arc::clone(&clock))?,
    };
    let service = MediaService::new(
        parts.store,
        parts.objects,
        openai.clone(),
        openai,
        pricing,
        clock,
    )
    .with_private_entries(config.private_entries);
    // Every miss is settled through the queue, so every function that takes one needs it.
    let queue = parts.queue.ok_or_else(|| {
        StartupError(
            "JOBS_QUEUE_URL is not set: every miss is settled through the job queue".into(),
        )
    })?;
    // Only music, video, the jobs function and the worker make or check callback URLs.
    let needs_callbacks = !matches!(role, Role::Http(Function::Tts | Function::Image));
    let secret = match (&config.callback_secret, needs_callbacks) {
        (Some(source), true) => secret_value(sdk, source).await?.into_bytes(),
        (None, true) => parts.default_callback_secret.ok_or_else(|| {
            StartupError("JOBS_QUEUE_URL needs CALLBACK_SECRET_PARAMETER or CALLBACK_SECRET".into())
        })?,
        // Never used: a secret nobody knows.
        (_, false) => uuid::Uuid::new_v4().as_bytes().to_vec(),
    };
    let service = service.with_jobs(job_parts(config, sdk, queue, secret).await?);
    Ok((Arc::new(service), parts.routes))
}

/// The queue, callback signer, policies and long-task providers.
async fn job_parts(
    config: &LambdaConfig,
    sdk: &aws_config::SdkConfig,
    queue: Arc<dyn JobQueue>,
    callback_secret: Vec<u8>,
) -> Result<JobParts, StartupError> {
    let err = |e: &dyn std::fmt::Display| StartupError(e.to_string());
    let timeout = config.provider_timeout;
    let music = match &config.suno {
        Some((base, key)) => {
            let suno = SunoClient::new(SunoConfig {
                timeout,
                download: DownloadPolicy::allowing(config.download_allowed_hosts.clone()),
                ..SunoConfig::new(base, secret_value(sdk, key).await?)
            })
            .map_err(|e| err(&e))?;
            Some(Arc::new(suno) as Arc<dyn crate::ports::MusicProvider>)
        }
        None => None,
    };
    let video = match &config.kling {
        Some((base, key)) => {
            let key = secret_value(sdk, key).await?;
            let auth = match key.split_once(':') {
                Some((access_key, secret_key)) => KlingAuth::AccessKey {
                    access_key: access_key.to_owned(),
                    secret_key: secret_key.to_owned(),
                },
                None => KlingAuth::ApiKey(key),
            };
            let kling = KlingClient::new(KlingConfig {
                timeout,
                download: DownloadPolicy::allowing(config.download_allowed_hosts.clone()),
                ..KlingConfig::new(base, auth)
            })
            .map_err(|e| err(&e))?;
            Some(Arc::new(kling) as Arc<dyn crate::ports::VideoProvider>)
        }
        None => None,
    };
    Ok(JobParts {
        queue,
        callbacks: CallbackSigner::new(callback_secret, &config.public_api_url),
        policy: config.job_policy,
        miss: config.miss_policy.clone(),
        music,
        video,
    })
}

#[cfg(feature = "embedded")]
fn embedded(
    config: &LambdaConfig,
    data_dir: &std::path::Path,
    function: Function,
    clock: Arc<dyn Clock>,
) -> Result<Parts, StartupError> {
    use crate::adapters::fs_objects::{FsObjectStore, UrlSigner};
    use crate::adapters::sqlite::SqliteStore;
    let err = |e: &dyn std::fmt::Display| StartupError(e.to_string());
    std::fs::create_dir_all(data_dir).map_err(|e| err(&e))?;
    let store = SqliteStore::open(&data_dir.join("media.db")).map_err(|e| err(&e))?;
    let signer = UrlSigner::from_dir(data_dir).map_err(|e| err(&e))?;
    let secret = signer.key().to_vec();
    // `cargo lambda watch` serves function F under /lambda-url/F.
    let base = config
        .public_base_url
        .clone()
        .unwrap_or_else(|| format!("http://127.0.0.1:9000/lambda-url/{}", function.name()));
    let objects = FsObjectStore::new(data_dir.join("objects"), &base, signer);
    let route = crate::http::objects::objects_router(objects.clone(), clock);
    Ok(Parts {
        store: Arc::new(store.clone()),
        objects: Arc::new(objects),
        routes: route,
        queue: Some(Arc::new(store)),
        default_callback_secret: Some(secret),
    })
}

#[cfg(not(feature = "embedded"))]
fn embedded(
    _config: &LambdaConfig,
    _data_dir: &std::path::Path,
    _function: Function,
    _clock: Arc<dyn Clock>,
) -> Result<Parts, StartupError> {
    Err(StartupError(
        "MEDIA_STORE=embedded needs the function built with --features embedded".into(),
    ))
}

/// JSON log lines for CloudWatch, at `AWS_LAMBDA_LOG_LEVEL` (set by the template's LoggingConfig)
/// or `RUST_LOG`, INFO by default.
fn init_logging() {
    let level = ["AWS_LAMBDA_LOG_LEVEL", "RUST_LOG"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .json()
        .with_max_level(level)
        .with_current_span(false)
        .with_ansi(false)
        .with_target(false)
        .init();
}

/// Installs the function's metrics recorder: embedded-metric-format documents in namespace
/// `MediaCache`, each metric with the dimension `function` (the short name: `tts`, ...,
/// `completion`) and its labels as further dimensions. The runtime's layer writes them to
/// stdout after every invocation, with the logs; nothing is sent over the network.
pub fn metrics_recorder(
    function: &'static str,
) -> Result<&'static metrics_cloudwatch_embedded::Collector, StartupError> {
    let collector = metrics_cloudwatch_embedded::Builder::new()
        .cloudwatch_namespace(crate::telemetry::NAMESPACE)
        .with_dimension("function", function)
        .with_lambda_request_id("RequestId")
        .init()
        .map_err(|e| StartupError(format!("metrics recorder: {e}")))?;
    crate::telemetry::describe();
    Ok(collector)
}

/// Runs an HTTP function: reads the environment, builds everything once, serves events (each
/// invocation's metrics flushed after it).
pub async fn run(function: Function) -> Result<(), lambda_http::Error> {
    init_logging();
    let config = LambdaConfig::from_vars(|name| std::env::var(name).ok())?;
    let metrics = metrics_recorder(function.name())?;
    let sdk = sdk_config().await;
    let app = app(&config, &sdk, function).await?;
    metrics_cloudwatch_embedded::lambda::service::run_http(metrics, app).await
}

/// The completion step over one SQS batch: every message through `MediaService::process_job`,
/// concurrently (a speech generation may take a while); those that failed are reported so SQS
/// delivers only them again.
pub async fn complete_batch(service: &MediaService, event: SqsEvent) -> SqsBatchResponse {
    let outcomes = event.records.into_iter().map(|record| async move {
        let id = record.message_id.clone().unwrap_or_default();
        let message: JobMessage = match serde_json::from_str(record.body.as_deref().unwrap_or("")) {
            Ok(message) => message,
            Err(e) => {
                // Retrying cannot make it readable: drop it, loudly.
                tracing::error!(message_id = %id, error = %e, "unreadable job message dropped");
                return None;
            }
        };
        match service.process_job(&message).await {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(message_id = %id, job_id = %message.job_id, error = %e, "job message failed; SQS will deliver it again");
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                Some(failure)
            }
        }
    });
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = futures_util::future::join_all(outcomes)
        .await
        .into_iter()
        .flatten()
        .collect();
    response
}

/// Runs the completion function: an SQS consumer reporting partial batch failures.
pub async fn run_completion() -> Result<(), lambda_runtime::Error> {
    init_logging();
    let config = LambdaConfig::from_vars(|name| std::env::var(name).ok())?;
    let sdk = sdk_config().await;
    let metrics = metrics_recorder("completion")?;
    let (service, _) = service(&config, &sdk, Role::Completion).await?;
    metrics_cloudwatch_embedded::lambda::service::run(
        metrics,
        lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<SqsEvent>| {
            let service = Arc::clone(&service);
            async move {
                Ok::<_, lambda_runtime::Error>(complete_batch(&service, event.payload).await)
            }
        }),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<LambdaConfig, StartupError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        LambdaConfig::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn private_cache_is_off_unless_set_and_refuses_other_words() {
        let base = [
            ("TABLE_NAME", "t"),
            ("BUCKET_NAME", "b"),
            ("OPENAI_API_KEY_PARAMETER", "/media/openai"),
        ];
        assert!(!config(&base).unwrap().private_entries);
        let with = |value| {
            let mut vars = base.to_vec();
            vars.push(("PRIVATE_CACHE", value));
            config(&vars)
        };
        assert!(with("true").unwrap().private_entries);
        assert!(!with("false").unwrap().private_entries);
        assert!(with("yes please").unwrap_err().0.contains("PRIVATE_CACHE"));
    }

    #[test]
    fn aws_is_the_default_backend_and_needs_table_and_bucket() {
        let c = config(&[
            ("TABLE_NAME", "t"),
            ("BUCKET_NAME", "b"),
            ("OPENAI_API_KEY_PARAMETER", "/media/openai"),
        ])
        .unwrap();
        assert_eq!(
            c.backend,
            Backend::Aws {
                table: "t".into(),
                bucket: "b".into()
            }
        );
        assert_eq!(
            c.openai_api_key,
            SecretSource::SsmParameter("/media/openai".into())
        );
        assert_eq!(c.provider_timeout, Duration::from_secs(25));
        let missing = config(&[("BUCKET_NAME", "b"), ("OPENAI_API_KEY", "k")]).unwrap_err();
        assert!(missing.0.contains("TABLE_NAME"), "{missing}");
    }

    #[test]
    fn deadlines_and_slow_models_are_read_by_name() {
        let c = config(&[
            ("MEDIA_STORE", "embedded"),
            ("DEADLINE_MARGIN_MS", "1500"),
            ("SETTLE_MARGIN_SECS", "4"),
            ("ASYNC_MODELS", "image:gpt-image-1:high, TTS:tts-1-hd"),
            ("DOWNLOAD_ALLOWED_HOSTS", "127.0.0.1:9100"),
        ])
        .unwrap();
        assert_eq!(c.deadline_margin, Duration::from_millis(1500));
        assert_eq!(c.miss_policy.settle_margin, Duration::from_secs(4));
        assert_eq!(
            c.miss_policy.async_models,
            vec!["image:gpt-image-1:high", "tts:tts-1-hd"]
        );
        assert_eq!(c.download_allowed_hosts, vec!["127.0.0.1:9100"]);
        let defaults = config(&[("MEDIA_STORE", "embedded")]).unwrap();
        assert_eq!(defaults.deadline_margin, Duration::from_secs(2));
        assert!(
            defaults.download_allowed_hosts.is_empty(),
            "strict by default"
        );
        let bad = config(&[("MEDIA_STORE", "embedded"), ("DEADLINE_MARGIN_MS", "2s")]).unwrap_err();
        assert!(bad.0.contains("DEADLINE_MARGIN_MS"), "{bad}");
    }

    #[test]
    fn the_sdk_takes_region_and_keys_from_the_environment_only_when_both_keys_are_there() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let lambda = SdkEnvironment::from_vars(vars(&[
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_SESSION_TOKEN", "token"),
        ]));
        assert_eq!(
            lambda,
            SdkEnvironment {
                region: Some("eu-west-1".into()),
                credentials: true
            }
        );
        let workstation = SdkEnvironment::from_vars(vars(&[
            ("AWS_PROFILE", "dev"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_REGION", " "),
        ]));
        assert_eq!(
            workstation,
            SdkEnvironment {
                region: None,
                credentials: false
            },
            "the default chains decide"
        );
    }

    #[test]
    fn a_request_answers_before_the_invocation_deadline_and_the_gateway_wait() {
        let now = 1_795_000_000_000;
        let margin = Duration::from_secs(2);
        assert_eq!(
            request_budget(now + 10_000, now, margin),
            Duration::from_secs(8)
        );
        assert_eq!(
            request_budget(now + 900_000, now, margin),
            Duration::from_secs(28),
            "API Gateway waits 30 s"
        );
        assert_eq!(
            request_budget(now + 1_000, now, margin),
            Duration::ZERO,
            "too late for anything but the job"
        );
    }

    #[test]
    fn a_deadline_already_past_as_cargo_lambda_watch_sends_it_leaves_the_gateway_wait() {
        let now = 1_795_000_000_000;
        assert_eq!(
            request_budget(600_000, now, Duration::from_secs(2)),
            Duration::from_secs(28)
        );
    }

    /// A stand-in for the environment: `AWS_ENDPOINT_URL` set to the given value.
    #[derive(Debug)]
    struct EndpointSetting(String);

    impl aws_types::service_config::LoadServiceConfig for EndpointSetting {
        fn load_config(
            &self,
            key: aws_types::service_config::ServiceConfigKey<'_>,
        ) -> Option<String> {
            (key.env() == "AWS_ENDPOINT_URL").then(|| self.0.clone())
        }
    }

    /// A DynamoDB client configured as `sdk_config` configures it, with `AWS_ENDPOINT_URL` set to
    /// `endpoint`.
    fn dynamodb_with_endpoint_setting(endpoint: &str) -> aws_sdk_dynamodb::Client {
        let sdk = with_blank_settings_unset(
            aws_config::SdkConfig::builder()
                .behavior_version(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new("us-east-1"))
                .http_client(SharedHttpClient::new(SdkHttpClient::default()))
                .service_config(EndpointSetting(endpoint.to_string()))
                .build(),
        );
        let credentials = aws_sdk_dynamodb::config::Credentials::new("a", "b", None, None, "test");
        aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&sdk)
                .credentials_provider(credentials)
                .build(),
        )
    }

    #[tokio::test]
    async fn an_empty_endpoint_setting_is_no_endpoint_setting() {
        // As the template leaves it on AWS. Read as the URL "", the first call panicked.
        let client = dynamodb_with_endpoint_setting("");
        let call = tokio::time::timeout(
            Duration::from_secs(10),
            client.describe_table().table_name("t").send(),
        )
        .await;
        // This machine has no route to AWS: the call fails on its way to the region's endpoint
        // (DNS or connect) or outlasts the wait; it must not fail to be built.
        if let Ok(Err(e)) = &call {
            assert!(
                matches!(
                    e,
                    aws_sdk_dynamodb::error::SdkError::DispatchFailure(_)
                        | aws_sdk_dynamodb::error::SdkError::TimeoutError(_)
                ),
                "{e:?}"
            );
        }
        assert!(
            !matches!(call, Ok(Ok(_))),
            "no answer can come from AWS here"
        );
    }

    #[tokio::test]
    async fn a_set_endpoint_setting_is_where_the_calls_go() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let client = dynamodb_with_endpoint_setting(&format!("http://{address}"));
        let call =
            tokio::spawn(async move { client.describe_table().table_name("t").send().await });
        let accepted = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await;
        call.abort();
        assert!(
            matches!(accepted, Ok(Ok(_))),
            "the call did not come to {address}"
        );
    }

    #[test]
    fn bad_values_are_reported_by_name() {
        let no_key = config(&[("TABLE_NAME", "t"), ("BUCKET_NAME", "b")]).unwrap();
        assert_eq!(no_key.openai_api_key, SecretSource::Unset);
        let bad_ttl = config(&[
            ("MEDIA_STORE", "embedded"),
            ("OPENAI_API_KEY", "k"),
            ("URL_TTL_SECS", "soon"),
        ])
        .unwrap_err();
        assert!(bad_ttl.0.contains("URL_TTL_SECS"));
        let bad_store = config(&[("MEDIA_STORE", "redis"), ("OPENAI_API_KEY", "k")]).unwrap_err();
        assert!(bad_store.0.contains("MEDIA_STORE"));
    }
}
