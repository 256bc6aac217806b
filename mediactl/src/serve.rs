//! `mediactl serve`: wires the embedded adapters to the shared application and runs it; and
//! `mediactl worker`: the same wiring's completion worker alone, on a data directory's queue.

use axum::Router;
use media_cache::adapters::download::DownloadPolicy;
use media_cache::adapters::fs_objects::{FsObjectStore, UrlSigner};
use media_cache::adapters::kling::{KlingAuth, KlingClient, KlingConfig};
use media_cache::adapters::openai::{OpenAiClient, OpenAiConfig};
use media_cache::adapters::sqlite::SqliteStore;
use media_cache::adapters::suno::{SunoClient, SunoConfig};
use media_cache::clock::Clock;
use media_cache::domain::PriceTable;
use media_cache::domain::pricing::PricingError;
use media_cache::http::objects::objects_router;
use media_cache::http::{AppState, router};
use media_cache::ports::{AccountStore, ChargeError, ProviderError, StoreError};
use media_cache::service::accounts::{NewUser, create_user};
use media_cache::service::{CallbackSigner, JobParts, JobPolicy, MediaService, MissPolicy};
use provider_sim::{SimConfig, SimHandle};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Everything `serve` can be told.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where the API listens (port 0 picks a free one).
    pub addr: SocketAddr,
    /// Where the SQLite file, the objects and the URL-signing key live.
    pub data_dir: PathBuf,
    /// Base of result URLs, when clients reach the server under another name.
    pub public_url: Option<String>,
    /// Real OpenAI key; without it the built-in simulator answers.
    pub openai_api_key: Option<String>,
    /// OpenAI base URL (with a key), e.g. a proxy.
    pub openai_base_url: String,
    /// Where the simulator listens when it runs.
    pub sim_addr: SocketAddr,
    /// A pricing file replacing the defaults.
    pub pricing_file: Option<PathBuf>,
    /// How long result URLs stay valid.
    pub url_ttl: Duration,
    /// Credits of the dev user created on first start.
    pub dev_credits: u64,
    /// Timeout of one provider attempt.
    pub provider_timeout: Duration,
    /// Retries after a failed provider attempt.
    pub provider_retries: u32,
    /// First retry delay (doubles per retry) when the provider gives none.
    pub provider_backoff: Duration,
    /// Real Suno (base URL, key); without it the simulator makes music.
    pub suno: Option<(String, String)>,
    /// Real Kling (base URL, credentials); without it the simulator makes video.
    pub kling: Option<(String, KlingAuth)>,
    /// How long the simulator's music and video tasks take.
    pub sim_task_duration: Duration,
    /// How long the simulator takes to answer a speech or image request.
    pub sim_latency: Duration,
    /// How jobs are polled and when they time out.
    pub job_policy: JobPolicy,
    /// How often the job worker looks for due messages when the queue is idle.
    pub worker_idle: Duration,
    /// Each request's budget (answered with a job when it runs out), the settlement margin,
    /// the worker's budget and the slow models that go to the worker at once.
    pub miss_policy: MissPolicy,
    /// Every cache entry private to its account (no sharing across accounts).
    pub private_entries: bool,
    /// `host[:port]` whose results may be downloaded over plain http or from a private address
    /// (a simulator this process did not start); the built-in simulator always may.
    pub download_allowed_hosts: Vec<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("mediactl-data"),
            public_url: None,
            openai_api_key: None,
            openai_base_url: "https://api.openai.com".into(),
            sim_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pricing_file: None,
            url_ttl: Duration::from_secs(3600),
            dev_credits: 1000,
            provider_timeout: Duration::from_secs(120),
            provider_retries: 2,
            provider_backoff: Duration::from_millis(500),
            suno: None,
            kling: None,
            sim_task_duration: Duration::from_secs(3),
            sim_latency: Duration::ZERO,
            job_policy: JobPolicy {
                first_poll: Duration::from_secs(2),
                ..JobPolicy::default()
            },
            worker_idle: Duration::from_millis(250),
            miss_policy: MissPolicy::default(),
            private_entries: false,
            download_allowed_hosts: Vec::new(),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A file or socket problem.
    #[error("{0}")]
    Io(String),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The pricing file is unusable.
    #[error(transparent)]
    Pricing(#[from] PricingError),
    /// The provider client could not be built.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The dev user could not be created.
    #[error(transparent)]
    Account(#[from] ChargeError),
}

fn io_err(context: &str, e: impl std::fmt::Display) -> ServeError {
    ServeError::Io(format!("{context}: {e}"))
}

/// A running server.
pub struct Server {
    /// `http://HOST:PORT` of the API.
    pub base_url: String,
    /// The simulator, when no OpenAI key was given.
    pub sim: Option<SimHandle>,
    /// The dev user made on first start (its key is shown only now).
    pub dev_user: Option<NewUser>,
    /// The store, for admin work next to the running server.
    pub store: SqliteStore,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    worker: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Stops accepting connections, finishes requests in flight, and returns.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
        // A message interrupted mid-work is delivered again after a restart: completion is
        // idempotent.
        self.worker.abort();
    }
}

/// Opens the embedded store of a data directory.
pub fn open_store(data_dir: &Path) -> Result<SqliteStore, ServeError> {
    std::fs::create_dir_all(data_dir).map_err(|e| io_err(&data_dir.display().to_string(), e))?;
    Ok(SqliteStore::open(&data_dir.join("media.db"))?)
}

/// What `serve` and `worker` run on, built one way for both: the data directory's store and
/// objects, the provider simulator when a provider is not configured, the provider clients and
/// the service wired to them.
pub struct Engine {
    /// The data directory's store (and job queue).
    pub store: SqliteStore,
    /// The data directory's media files.
    pub objects: FsObjectStore,
    /// The simulator, when a provider is not configured.
    pub sim: Option<SimHandle>,
    /// The service.
    pub service: Arc<MediaService>,
    /// Each provider's name and the base URL it is called at.
    pub providers: Vec<(&'static str, String)>,
}

/// Builds the [`Engine`] of `config`; result and callback URLs are made on `public_url`.
pub async fn engine(
    config: &ServeConfig,
    public_url: &str,
    clock: Arc<dyn Clock>,
) -> Result<Engine, ServeError> {
    let store = open_store(&config.data_dir)?;
    let pricing = match &config.pricing_file {
        Some(path) => PriceTable::from_toml(
            &std::fs::read_to_string(path).map_err(|e| io_err(&path.display().to_string(), e))?,
        )?,
        None => PriceTable::default(),
    };

    let needs_sim =
        config.openai_api_key.is_none() || config.suno.is_none() || config.kling.is_none();
    let sim = if needs_sim {
        let sim_config = SimConfig {
            task_duration: config.sim_task_duration,
            speech_latency: config.sim_latency,
            image_latency: config.sim_latency,
            callbacks: true,
            ..SimConfig::default()
        };
        Some(
            provider_sim::spawn(sim_config, config.sim_addr)
                .await
                .map_err(|e| io_err("cannot start the provider simulator", e))?,
        )
    } else {
        None
    };
    let sim_url = sim.as_ref().map(|s| s.base_url.clone()).unwrap_or_default();
    let openai = match &config.openai_api_key {
        Some(key) => OpenAiConfig::new(&config.openai_base_url, key),
        None => OpenAiConfig::new(&sim_url, "sim-key"),
    };
    let (suno_url, suno_key) = config
        .suno
        .clone()
        .unwrap_or_else(|| (sim_url.clone(), "sim-key".into()));
    let (kling_url, kling_auth) = config
        .kling
        .clone()
        .unwrap_or_else(|| (sim_url.clone(), KlingAuth::ApiKey("sim-key".into())));
    let providers = vec![
        ("OpenAI", openai.base_url.clone()),
        ("Suno", suno_url.clone()),
        ("Kling", kling_url.clone()),
    ];
    // Results come over https from public addresses only; the local simulator is the one
    // exception (plain http on loopback), with the hosts the configuration names.
    let download = DownloadPolicy::allowing(
        sim.as_ref()
            .and_then(|s| DownloadPolicy::host_of(&s.base_url))
            .into_iter()
            .chain(config.download_allowed_hosts.iter().cloned()),
    );
    let suno = SunoClient::new(SunoConfig {
        download: download.clone(),
        ..SunoConfig::new(suno_url, suno_key)
    })?;
    let kling = KlingClient::new(KlingConfig {
        download: download.clone(),
        ..KlingConfig::new(kling_url, kling_auth)
    })?;
    let openai = Arc::new(OpenAiClient::new(OpenAiConfig {
        timeout: config.provider_timeout,
        max_retries: config.provider_retries,
        initial_backoff: config.provider_backoff,
        download,
        ..openai
    })?);

    let objects = FsObjectStore::new(
        config.data_dir.join("objects"),
        public_url,
        UrlSigner::from_dir(&config.data_dir).map_err(|e| ServeError::Io(e.0))?,
    );
    let signer = UrlSigner::from_dir(&config.data_dir).map_err(|e| ServeError::Io(e.0))?;
    let jobs = JobParts {
        queue: Arc::new(store.clone()),
        // The URL-signing key also signs callbacks (the message says what it signs), as it does
        // for the functions on the embedded store.
        callbacks: CallbackSigner::new(signer.key().to_vec(), public_url),
        policy: config.job_policy,
        miss: config.miss_policy.clone(),
        music: Some(Arc::new(suno)),
        video: Some(Arc::new(kling)),
    };
    let service = Arc::new(
        MediaService::new(
            Arc::new(store.clone()),
            Arc::new(objects.clone()),
            openai.clone(),
            openai,
            pricing,
            clock,
        )
        .with_jobs(jobs)
        .with_private_entries(config.private_entries),
    );
    Ok(Engine {
        store,
        objects,
        sim,
        service,
        providers,
    })
}

/// Starts the API (and the simulator unless every provider is configured) on `clock`.
pub async fn start(config: ServeConfig, clock: Arc<dyn Clock>) -> Result<Server, ServeError> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|e| io_err(&format!("cannot listen on {}", config.addr), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| io_err("local address", e))?;
    let base_url = format!("http://{local}");
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| base_url.clone());
    let Engine {
        store,
        objects,
        sim,
        service,
        providers: _,
    } = engine(&config, &public_url, Arc::clone(&clock)).await?;

    let dev_user = if store.user_count().await? == 0 {
        Some(create_user(&store, config.dev_credits, clock.now()).await?)
    } else {
        None
    };

    let worker = tokio::spawn(run_worker(
        store.clone(),
        Arc::clone(&service),
        config.worker_idle,
    ));
    let app: Router = router(AppState {
        service,
        url_ttl: chrono::Duration::from_std(config.url_ttl).unwrap_or(chrono::Duration::hours(1)),
    })
    .merge(objects_router(objects, Arc::clone(&clock)))
    .merge(crate::observe::router(
        store.clone(),
        format!("sqlite:{}", config.data_dir.join("media.db").display()),
        clock,
    ));
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = rx.await;
        };
        // The peer address lets the dashboard answer loopback clients only.
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "server stopped");
        }
    });
    Ok(Server {
        base_url,
        sim,
        dev_user,
        store,
        shutdown: Some(tx),
        task,
        worker,
    })
}

/// The completion worker running alone (`mediactl worker`).
pub struct Worker {
    /// The simulator, when a provider is not configured.
    pub sim: Option<SimHandle>,
    /// Each provider's name and the base URL it is called at.
    pub providers: Vec<(&'static str, String)>,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    /// Stops the worker. A message interrupted mid-work is delivered again after its visibility
    /// timeout: completion is idempotent.
    pub async fn shutdown(self) {
        self.task.abort();
        // Only waits for the abort: the result is the cancellation, nothing to keep.
        let _ = self.task.await;
    }
}

/// Starts the completion step `serve` runs, alone, on the data directory's queue: for the jobs
/// that other processes (functions under `cargo lambda watch` on the embedded store) queue there.
/// It must call the providers they called: a task is only known to the provider it was
/// submitted to.
pub async fn start_worker(
    config: ServeConfig,
    clock: Arc<dyn Clock>,
) -> Result<Worker, ServeError> {
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.addr));
    let engine = engine(&config, &public_url, clock).await?;
    let task = tokio::spawn(run_worker(engine.store, engine.service, config.worker_idle));
    Ok(Worker {
        sim: engine.sim,
        providers: engine.providers,
        task,
    })
}

/// How long a received message stays hidden while it is worked on.
const VISIBILITY: Duration = Duration::from_secs(120);
/// Receives before a message goes to the dead letters (as the SQS queue's maxReceiveCount).
const MAX_RECEIVES: u32 = 5;

/// How many messages the worker settles at once (a speech generation may take a while).
const WORKER_CONCURRENCY: usize = 16;

/// The embedded completion worker: the SQLite queue's due messages through the same completion
/// step the Lambda function runs, several at once; a failed message is received again after its
/// visibility timeout.
async fn run_worker(store: SqliteStore, service: Arc<MediaService>, idle: Duration) {
    let slots = Arc::new(tokio::sync::Semaphore::new(WORKER_CONCURRENCY));
    loop {
        let free = slots.available_permits().min(10);
        let received = if free == 0 {
            Vec::new()
        } else {
            match store.receive_messages(free, VISIBILITY, MAX_RECEIVES).await {
                Ok(received) => received,
                Err(e) => {
                    tracing::error!(error = %e, "job queue unreadable");
                    Vec::new()
                }
            }
        };
        if received.is_empty() {
            tokio::time::sleep(idle).await;
            continue;
        }
        for message in received {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let (store, service) = (store.clone(), Arc::clone(&service));
            tokio::spawn(async move {
                let _slot = slot;
                match service.process_job(&message.message).await {
                    Ok(()) => {
                        if let Err(e) = store.delete_message(message.receipt).await {
                            tracing::error!(error = %e, "processed message not deleted");
                        }
                    }
                    Err(e) => tracing::warn!(
                        job_id = %message.message.job_id,
                        receive_count = message.receive_count,
                        error = %e,
                        "job message failed; it will be delivered again"
                    ),
                }
            });
        }
    }
}
