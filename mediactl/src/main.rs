//! `mediactl`: run the media cache API locally and administer it.

use clap::{Parser, Subcommand};
use media_cache::adapters::dynamodb::DynamoStore;
use media_cache::clock::{Clock, SystemClock};
use media_cache::domain::{CacheKey, MediaType};
use media_cache::ports::{PurgeFilter, Store};
use media_cache::service::accounts::{
    add_key, create_user, create_user_with_key, generate_request_id, statement,
};
use mediactl::providers::ProviderArgs;
use mediactl::serve::{ServeConfig, open_store, start, start_worker};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

// `serve` answers tens of thousands of requests a second from two threads; glibc's allocator
// was a tenth of its CPU. Without transparent huge pages (`no_thp`): with them each of
// mimalloc's arenas is backed by 2 MB pages at once, 42 MB resident after 100,000 hits instead
// of 23 MB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "The media cache API on your machine: serve it, manage users and credits"
)]
struct Cli {
    /// Where the SQLite store, the media files and the URL-signing key live.
    #[arg(
        long,
        global = true,
        env = "MEDIACTL_DATA_DIR",
        default_value = "mediactl-data"
    )]
    data_dir: PathBuf,
    /// Administer the DynamoDB table of a deployed stack instead of the data directory (users
    /// and credits commands; AWS credentials, region and `AWS_ENDPOINT_URL` as the AWS CLI reads
    /// them).
    #[arg(long, global = true, env = "MEDIACTL_TABLE")]
    table: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole API in this process (embedded store, local files, provider simulator).
    Serve(Box<ServeArgs>),
    /// Run only `serve`'s job worker, on the data directory's queue (for functions run locally).
    ///
    /// It completes the jobs that functions under `cargo lambda watch` on the embedded store
    /// queue there. Give it the providers the functions call (the same flags and variables as
    /// `serve`): a task is known only to the provider it was submitted to.
    Worker(Box<WorkerArgs>),
    /// Manage users.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Manage credits.
    #[command(subcommand)]
    Credits(CreditsCommand),
    /// Manage cached results.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Show what the cache saved: per media type, hits, hit rate, credits charged and saved,
    /// provider calls avoided, entries live, and the keys with the most hits (from the ledger).
    Stats(StatsArgs),
    /// Load-test the API (`serve` or a deployed stack) and report throughput, latency, hit rate
    /// and credits saved.
    Bench(Box<BenchArgs>),
}

#[derive(clap::Args)]
struct StatsArgs {
    /// Only ledger lines from then on: an RFC 3339 time or an age (90m, 24h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// The API's base URL.
    #[arg(long, env = "MEDIACTL_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The API key to send (and charge); `serve` prints one.
    #[arg(long, env = "MEDIACTL_API_KEY", hide_env_values = true)]
    api_key: String,
    /// How many requests to send.
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// How many distinct requests (cache keys) they are drawn from.
    #[arg(long, default_value_t = 1_000)]
    distinct: u32,
    /// Zipf exponent of the distinct requests' popularity (0: uniform).
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Requests in flight at once.
    #[arg(long, short = 'c', default_value_t = 32)]
    concurrency: u32,
    /// Client threads, each with its own runtime and connections (as wrk's -t).
    #[arg(long, short = 't', default_value_t = 2)]
    threads: u32,
    /// Share of each media type (tts, image, music, video), e.g. tts=70,image=25,video=5.
    #[arg(long, default_value = "tts=70,image=25,video=5", value_parser = mediactl::bench::parse_mix)]
    mix: mediactl::bench::Mix,
    /// Seed of the request sequence (the same seed sends the same requests).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop sending after this long (e.g. 30s, 2m); requests in flight finish.
    #[arg(long, value_parser = mediactl::bench::parse_duration)]
    duration: Option<Duration>,
    /// Send the same speech request every time (all hits after the first), as wrk would.
    #[arg(long)]
    hits_only: bool,
    /// The provider simulator's base URL (`serve` prints it), to count provider calls.
    #[arg(long, env = "MEDIACTL_SIM_URL")]
    sim_url: Option<String>,
    /// Print the report as JSON on stdout (and no progress bar).
    #[arg(long)]
    json: bool,
    /// Timeout of one request (e.g. 60s).
    #[arg(long, default_value = "60s", value_parser = mediactl::bench::parse_duration)]
    timeout: Duration,
    /// How long a 202 job is polled before it counts as unfinished.
    #[arg(long, default_value = "300s", value_parser = mediactl::bench::parse_duration)]
    job_timeout: Duration,
    /// Pause between two polls of a job.
    #[arg(long, default_value = "100ms", value_parser = mediactl::bench::parse_duration)]
    poll_interval: Duration,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "MEDIACTL_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Base URL of result links, if clients reach the server under another name.
    #[arg(long, env = "MEDIACTL_PUBLIC_URL")]
    public_url: Option<String>,
    /// A pricing file (TOML, the shape of shared/pricing.toml) replacing the defaults.
    #[arg(long, env = "MEDIACTL_PRICING")]
    pricing: Option<PathBuf>,
    /// How long result URLs stay valid, in seconds.
    #[arg(long, env = "MEDIACTL_URL_TTL_SECS", default_value_t = 3600)]
    url_ttl_secs: u64,
    /// Credits of the dev user created on first start.
    #[arg(long, env = "MEDIACTL_DEV_CREDITS", default_value_t = 1000)]
    dev_credits: u64,
    /// Write logs as JSON lines.
    #[arg(long, env = "MEDIACTL_JSON_LOGS")]
    json_logs: bool,
    /// How long a request may take, in milliseconds, before it answers 202 with its job (the
    /// worker finishes it).
    #[arg(long, env = "MEDIACTL_REQUEST_BUDGET_MS", default_value_t = 25_000)]
    request_budget_ms: u64,
    /// Slow generations that go to the worker from the start: `type:model[:quality]`, comma
    /// separated.
    #[arg(
        long,
        env = "MEDIACTL_ASYNC_MODELS",
        default_value = "image:gpt-image-1:high"
    )]
    async_models: String,
    /// Make every cache entry private to the account that asked for it (as if every request
    /// said `Cache-Control: private`): no sharing, and no savings, across accounts.
    #[arg(long, env = "MEDIACTL_PRIVATE_CACHE")]
    private_cache: bool,
    #[command(flatten)]
    providers: ProviderArgs,
}

#[derive(clap::Args)]
struct WorkerArgs {
    /// Write logs as JSON lines.
    #[arg(long, env = "MEDIACTL_JSON_LOGS")]
    json_logs: bool,
    #[command(flatten)]
    providers: ProviderArgs,
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Create a user and print its API key.
    Create {
        /// Starting credits.
        #[arg(long, default_value_t = 100)]
        credits: u64,
        /// Use this API key instead of a random one (e.g. `mc_sample_events_key`, which the
        /// files in events/ carry). At least 16 characters.
        #[arg(long)]
        api_key: Option<String>,
        /// Make the key an admin key (it may purge cached results: `DELETE /api/v1/cache/{key}`).
        #[arg(long)]
        admin: bool,
    },
    /// Print a new API key for an existing user.
    AddKey {
        /// The user id (usr_...).
        user: String,
    },
    /// Set or remove a user's daily spend limit (credits per UTC day; over it, requests are
    /// refused with 429 until 00:00 UTC).
    Limit {
        /// The user id (usr_...).
        user: String,
        /// Credits the user may spend per UTC day.
        #[arg(long, required_unless_present = "none", conflicts_with = "none")]
        daily: Option<u64>,
        /// Remove the limit.
        #[arg(long)]
        none: bool,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Delete cached results: the next request for each is a miss. Results still being
    /// generated are not purged. Give a key, or any of media type, age and account.
    Purge {
        /// One entry: `CACHE#{type}#{hash}` (the `X-Cache-Key` of its answers).
        #[arg(long, conflicts_with_all = ["media_type", "older_than", "account"])]
        key: Option<String>,
        /// Entries of this media type (tts, image, music, video).
        #[arg(long)]
        media_type: Option<String>,
        /// Entries made longer ago than this (e.g. 90m, 24h, 7d) or before a time (RFC 3339).
        #[arg(long)]
        older_than: Option<String>,
        /// The private entries of this account (usr_...).
        #[arg(long)]
        account: Option<String>,
    },
}

#[derive(Subcommand)]
enum CreditsCommand {
    /// Add credits to a user.
    Grant {
        /// The user id (usr_...).
        user: String,
        /// How many credits.
        amount: u64,
    },
    /// Show a user's balance and latest ledger lines.
    Show {
        /// The user id (usr_...).
        user: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("mediactl: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The store the admin commands work on: the data directory's SQLite file, or a DynamoDB table.
async fn admin_store(
    data_dir: &std::path::Path,
    table: Option<&str>,
) -> Result<Arc<dyn Store>, String> {
    match table {
        Some(table) => {
            let sdk = media_cache::lambda::sdk_config().await;
            Ok(Arc::new(DynamoStore::from_sdk(&sdk, table, "")))
        }
        None => Ok(Arc::new(open_store(data_dir).map_err(|e| e.to_string())?)),
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let clock = SystemClock;
    match cli.command {
        Command::Serve(args) => serve(cli.data_dir, *args).await,
        Command::Worker(args) => worker(cli.data_dir, *args).await,
        Command::Bench(args) => bench(*args).await,
        Command::Stats(args) => stats(&cli.data_dir, cli.table.as_deref(), args).await,
        Command::Cache(CacheCommand::Purge {
            key,
            media_type,
            older_than,
            account,
        }) => {
            let store = admin_store(&cli.data_dir, cli.table.as_deref()).await?;
            let purged = match key {
                Some(key) => {
                    let key = CacheKey::parse(&key).ok_or_else(|| {
                        format!("--key `{key}` is not a CACHE#{{type}}#{{hash}} key")
                    })?;
                    u64::from(store.purge_entry(&key).await.map_err(|e| e.to_string())?)
                }
                None => {
                    let filter = PurgeFilter {
                        media_type: media_type
                            .map(|t| {
                                MediaType::parse(&t).ok_or_else(|| {
                                    format!("--media-type `{t}`: one of tts, image, music, video")
                                })
                            })
                            .transpose()?,
                        created_before: older_than
                            .map(|age| {
                                mediactl::stats::parse_since(&age, clock.now())
                                    .map_err(|e| e.replace("--since", "--older-than"))
                            })
                            .transpose()?,
                        owner: account,
                    };
                    if filter == PurgeFilter::default() {
                        return Err(
                            "say what to purge: --key, or --media-type, --older-than, --account"
                                .into(),
                        );
                    }
                    store
                        .purge_entries(&filter)
                        .await
                        .map_err(|e| e.to_string())?
                }
            };
            println!("purged {purged} cached results");
            Ok(())
        }
        Command::Users(UsersCommand::Create {
            credits,
            api_key,
            admin,
        }) => {
            let store = admin_store(&cli.data_dir, cli.table.as_deref()).await?;
            let store = store.as_ref();
            let created = match api_key {
                Some(key) if key.len() < 16 || !key.bytes().all(|b| b.is_ascii_graphic()) => {
                    return Err("--api-key must be at least 16 visible ASCII characters".into());
                }
                Some(key) => create_user_with_key(store, credits, key, clock.now()).await,
                None => create_user(store, credits, clock.now()).await,
            };
            let user = created.map_err(|e| e.to_string())?;
            if admin {
                store
                    .make_admin(&media_cache::domain::api_key_digest(&user.api_key))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            println!(
                "user_id: {}\napi_key: {}\ncredits: {}{}",
                user.user_id,
                user.api_key,
                user.credits,
                if admin { "\nadmin: true" } else { "" }
            );
            Ok(())
        }
        Command::Users(UsersCommand::AddKey { user }) => {
            let store = admin_store(&cli.data_dir, cli.table.as_deref()).await?;
            let store = store.as_ref();
            let key = add_key(store, &user)
                .await
                .map_err(|e| format!("{user}: {e}"))?;
            println!("api_key: {key}");
            Ok(())
        }
        Command::Users(UsersCommand::Limit { user, daily, none }) => {
            let store = admin_store(&cli.data_dir, cli.table.as_deref()).await?;
            let limit = if none { None } else { daily };
            store
                .set_daily_limit(&user, limit)
                .await
                .map_err(|e| format!("{user}: {e}"))?;
            match limit {
                Some(limit) => println!("daily limit of {user}: {limit} credits per UTC day"),
                None => println!("daily limit of {user}: none"),
            }
            Ok(())
        }
        Command::Credits(CreditsCommand::Grant { user, amount }) => {
            let store = admin_store(&cli.data_dir, cli.table.as_deref()).await?;
            let store = store.as_ref();
            let balance = store
                .grant(&user, amount, &generate_request_id(), clock.now())
                .await
                .map_err(|e| format!("{user}: {e}"))?;
            println!("granted {amount} credits to {user}; balance {balance}");
            Ok(())
        }
        Command::Credits(CreditsCommand::Show { user }) => {
            let store = admin_store(&cli.data_dir, cli.table.as_deref()).await?;
            let store = store.as_ref();
            let Some(s) = statement(store, &user, 20)
                .await
                .map_err(|e| e.to_string())?
            else {
                return Err(format!("{user}: unknown user"));
            };
            println!(
                "{}: {} credits remaining, {} used",
                s.account.user_id, s.account.credits_remaining, s.account.credits_used
            );
            let spent = s.account.spend.spent_on(clock.now());
            match s.account.spend.limit {
                Some(limit) => println!(
                    "daily limit: {limit} credits per UTC day, {spent} spent today (resets at 00:00 UTC)"
                ),
                None => println!("daily limit: none, {spent} spent today"),
            }
            for line in s.ledger {
                println!(
                    "  {}  {:>+6}  {:<6}  {}",
                    line.at.format("%Y-%m-%d %H:%M:%S"),
                    line.amount,
                    line.reason.as_str(),
                    line.request_id
                );
            }
            Ok(())
        }
    }
}

async fn serve(data_dir: PathBuf, args: ServeArgs) -> Result<(), String> {
    let _flush_on_exit =
        mediactl::logs::init(args.json_logs).map_err(|e| format!("log output: {e}"))?;
    let config = args.providers.apply(ServeConfig {
        addr: args.addr,
        data_dir: data_dir.clone(),
        public_url: args.public_url,
        pricing_file: args.pricing,
        url_ttl: Duration::from_secs(args.url_ttl_secs),
        dev_credits: args.dev_credits,
        miss_policy: media_cache::service::MissPolicy {
            request_budget: Duration::from_millis(args.request_budget_ms),
            async_models: media_cache::service::MissPolicy::parse_async_models(&args.async_models),
            ..Default::default()
        },
        private_entries: args.private_cache,
        ..ServeConfig::default()
    });
    let server = start(config, Arc::new(SystemClock))
        .await
        .map_err(|e| e.to_string())?;
    println!("media cache API listening on {}", server.base_url);
    println!("data directory: {}", data_dir.display());
    match &server.sim {
        Some(sim) => println!(
            "providers: built-in simulator at {} (set OPENAI_API_KEY, SUNO_API_KEY, KLING_API_KEY for the real ones)",
            sim.base_url
        ),
        None => println!("providers: OpenAI, Suno, Kling"),
    }
    match &server.dev_user {
        Some(user) => {
            println!(
                "\ncreated dev user {} with {} credits",
                user.user_id, user.credits
            );
            println!("API key (shown once): {}\n", user.api_key);
            println!("try it:");
            println!(
                "  curl -s {}/api/v1/media/tts -H 'Authorization: Bearer {}' -H 'Content-Type: application/json' -d '{{\"text\":\"Hello from the cache\"}}'",
                server.base_url, user.api_key
            );
        }
        None => {
            println!("existing users kept; `mediactl users create --credits 100` prints a new key")
        }
    }
    shutdown_signal().await;
    println!("shutting down");
    server.shutdown().await;
    Ok(())
}

async fn worker(data_dir: PathBuf, args: WorkerArgs) -> Result<(), String> {
    let _flush_on_exit =
        mediactl::logs::init(args.json_logs).map_err(|e| format!("log output: {e}"))?;
    let config = args.providers.apply(ServeConfig {
        data_dir: data_dir.clone(),
        ..ServeConfig::default()
    });
    let worker = start_worker(config, Arc::new(SystemClock))
        .await
        .map_err(|e| e.to_string())?;
    println!("media cache worker: completing the jobs queued in the data directory");
    println!("data directory: {}", data_dir.display());
    if let Some(sim) = &worker.sim {
        println!(
            "started the built-in simulator at {} for the providers not configured",
            sim.base_url
        );
    }
    let providers: Vec<String> = worker
        .providers
        .iter()
        .map(|(name, url)| format!("{name} at {url}"))
        .collect();
    println!("providers: {}", providers.join(", "));
    if worker.sim.is_some() {
        println!(
            "(a task is only known to the provider it was submitted to: give the worker the \
             OPENAI_*, SUNO_* and KLING_* settings the functions have)"
        );
    }
    println!("Ctrl-C stops it");
    shutdown_signal().await;
    println!("shutting down");
    worker.shutdown().await;
    Ok(())
}

async fn stats(
    data_dir: &std::path::Path,
    table: Option<&str>,
    args: StatsArgs,
) -> Result<(), String> {
    use media_cache::ports::UsageScan;
    use mediactl::stats;
    use std::io::IsTerminal;
    let now = chrono::Utc::now();
    let since = args
        .since
        .as_deref()
        .map(|s| stats::parse_since(s, now))
        .transpose()?;
    let bar = indicatif::ProgressBar::hidden();
    let (store, source): (Box<dyn UsageScan>, String) = match table {
        Some(table) => {
            let sdk = media_cache::lambda::sdk_config().await;
            let store = DynamoStore::from_sdk(&sdk, table, "");
            let (items, bytes) = store
                .table_size()
                .await
                .map_err(|e| format!("{table}: {e}"))?;
            let (units, usd) = stats::scan_estimate(bytes);
            // A scan reads the whole table, whatever --since says: say what it costs first.
            eprintln!(
                "scanning {table}: about {items} items, {:.1} MB (as DynamoDB last counted them), \
                 about {units:.0} read units, ${usd:.6} on demand",
                bytes as f64 / 1e6
            );
            if std::io::stderr().is_terminal() {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.set_length(items);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} {pos}/{len} items read {msg}",
                    )
                    .map_err(|e| e.to_string())?,
                );
            }
            (Box::new(store), format!("dynamodb:{table}"))
        }
        None => {
            let file = data_dir.join("media.db");
            if !file.exists() {
                return Err(format!(
                    "no store at {} (give --data-dir, or --table for a deployed stack)",
                    file.display()
                ));
            }
            let store = open_store(data_dir).map_err(|e| e.to_string())?;
            (Box::new(store), format!("sqlite:{}", file.display()))
        }
    };
    let records = store
        .usage_records(&|read| {
            bar.set_position(read.items);
            bar.set_message(format!("({:.1} read units)", read.capacity_units));
        })
        .await
        .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    let report = media_cache::domain::usage::UsageReport::of(&records, since, now, &source);
    if args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        println!("{json}");
        // What the scan cost, beside the report (the table shows it in its last line).
        if let Some(read) = &report.read {
            eprintln!("{}", stats::describe_read(read));
        }
    } else {
        print!("{}", stats::render(&report));
    }
    Ok(())
}

async fn bench(args: BenchArgs) -> Result<(), String> {
    use std::io::IsTerminal;
    let config = mediactl::bench::BenchConfig {
        url: args.url,
        api_key: args.api_key,
        requests: args.requests,
        distinct: args.distinct,
        zipf: args.zipf,
        concurrency: args.concurrency,
        threads: args.threads,
        mix: args.mix,
        seed: args.seed,
        duration: args.duration,
        hits_only: args.hits_only,
        sim_url: args.sim_url,
        progress: !args.json && std::io::stderr().is_terminal(),
        timeout: args.timeout,
        job_timeout: args.job_timeout,
        poll_interval: args.poll_interval,
    };
    let report = mediactl::bench::run(config)
        .await
        .map_err(|e| e.to_string())?;
    if args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        println!("{json}");
    } else {
        print!("{}", mediactl::bench::render_table(&report));
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
