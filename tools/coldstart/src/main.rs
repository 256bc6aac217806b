//! Cold start of Lambda function binaries, measured against a local stub of the Lambda runtime API.
//!
//! Each run spawns one binary with `AWS_LAMBDA_RUNTIME_API` pointing at the stub and the
//! environment a function of this stack needs (dummy credentials, table, bucket, queue, an OpenAI
//! key so that no SSM parameter is read), and measures **init**: from just before the process is
//! spawned to the arrival of its first `GET /2018-06-01/runtime/invocation/next`, the moment the
//! Lambda service would consider the function initialised. The stub then hands the binary one event
//! (by default an API Gateway v2 `GET /healthz`, which touches no AWS service), waits for its
//! answer on `/invocation/{id}/response` (the **first event** time: `next` to response) and kills
//! the process. Binaries alternate, each round starting with the next one, so that a machine busy
//! with something else slows all of them alike; warm-up rounds (page cache) are not counted.
//!
//! ```text
//! coldstart [--runs 20] [--warmup 2] [--max-ratio 2] [--env K=V]... BASELINE[=EVENT.json] BIN[=EVENT.json]...
//! ```
//!
//! `--env K=V` adds to or overrides that environment; `{stub}` in V is the stub's `host:port`
//! (`--env AWS_ENDPOINT_URL=http://{stub}` sends the AWS calls of the first event to the stub,
//! which answers 404: the first event then includes the SDK's first connection).
//!
//! The first binary is the baseline (a hello-world `lambda_runtime` function, `tools/hello-lambda`):
//! every other one is reported as a ratio of it. With `--max-ratio`, the exit status
//! is 1 when a binary's median init exceeds that ratio. See `scripts/coldstart.sh`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{oneshot, watch};

/// The event handed to a binary given without one.
const HEALTHZ_EVENT: &str = include_str!("../events/healthz.json");

/// How long a binary may take to ask for its first event, then to answer it.
const RUN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the stub knows of the run in progress.
struct Run {
    request_id: String,
    event: Bytes,
    /// Taken by the first `next`.
    first_next: Option<oneshot::Sender<Instant>>,
    /// Taken by the answer to the event (or an init error).
    answered: Option<oneshot::Sender<(Instant, Answer)>>,
    /// Set when the run is over: the `next` calls that wait for a second event give up.
    over: watch::Receiver<bool>,
}

/// How a binary answered.
#[derive(Debug)]
enum Answer {
    Response,
    Error(String),
    InitError(String),
}

type Stub = Arc<Mutex<Option<Run>>>;

fn stub_router(stub: Stub) -> Router {
    Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(|state, id, body| answer(state, id, body, false)),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/error",
            post(|state, id, body| answer(state, id, body, true)),
        )
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(stub)
}

async fn next(State(stub): State<Stub>) -> Response {
    let arrived = Instant::now();
    let (event, mut over) = {
        let mut current = stub.lock().unwrap();
        let Some(run) = current.as_mut() else {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        };
        match run.first_next.take() {
            Some(first) => {
                let _ = first.send(arrived);
                (Some((run.request_id.clone(), run.event.clone())), None)
            }
            // A second `next`: there is no second event; hold it until the process is killed.
            None => (None, Some(run.over.clone())),
        }
    };
    if let Some(over) = over.as_mut() {
        // Only waits for the run to end (a closed channel ends it too).
        let _ = over.wait_for(|over| *over).await;
        return StatusCode::GONE.into_response();
    }
    let (request_id, event) = event.expect("a first next has an event");
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        + Duration::from_secs(30);
    let mut headers = HeaderMap::new();
    let header = |v: &str| HeaderValue::from_str(v).expect("ASCII header");
    headers.insert("content-type", header("application/json"));
    headers.insert("lambda-runtime-aws-request-id", header(&request_id));
    headers.insert(
        "lambda-runtime-deadline-ms",
        header(&deadline.as_millis().to_string()),
    );
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        header("arn:aws:lambda:us-east-1:123456789012:function:coldstart"),
    );
    headers.insert(
        "lambda-runtime-trace-id",
        header("Root=1-00000000-000000000000000000000000;Sampled=0"),
    );
    (headers, event).into_response()
}

async fn answer(
    State(stub): State<Stub>,
    Path(id): Path<String>,
    body: Bytes,
    error: bool,
) -> StatusCode {
    let at = Instant::now();
    let mut current = stub.lock().unwrap();
    let Some(run) = current.as_mut().filter(|run| run.request_id == id) else {
        return StatusCode::NOT_FOUND;
    };
    let answer = if error {
        Answer::Error(String::from_utf8_lossy(&body).into_owned())
    } else {
        Answer::Response
    };
    if let Some(answered) = run.answered.take() {
        let _ = answered.send((at, answer));
    }
    StatusCode::ACCEPTED
}

async fn init_error(State(stub): State<Stub>, body: Bytes) -> StatusCode {
    let at = Instant::now();
    if let Some(answered) = stub
        .lock()
        .unwrap()
        .as_mut()
        .and_then(|r| r.answered.take())
    {
        let _ = answered.send((
            at,
            Answer::InitError(String::from_utf8_lossy(&body).into_owned()),
        ));
    }
    StatusCode::ACCEPTED
}

/// One binary to measure.
struct Target {
    path: PathBuf,
    name: String,
    event: Bytes,
}

/// What one run measured.
#[derive(Clone, Copy)]
struct Sample {
    /// Spawn to the first `next`.
    init: Duration,
    /// The first `next` to the event's response.
    first_event: Duration,
}

struct Options {
    runs: usize,
    warmup: usize,
    max_ratio: Option<f64>,
    env: Vec<(String, String)>,
    targets: Vec<Target>,
}

const USAGE: &str = "usage: coldstart [--runs N] [--warmup N] [--max-ratio X] [--env K=V]... \
                     BASELINE[=EVENT.json] BIN[=EVENT.json]...";

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        runs: 20,
        warmup: 2,
        max_ratio: None,
        env: Vec::new(),
        targets: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--runs" => options.runs = value("--runs")?.parse().map_err(|_| "bad --runs")?,
            "--warmup" => {
                options.warmup = value("--warmup")?.parse().map_err(|_| "bad --warmup")?
            }
            "--max-ratio" => {
                options.max_ratio = Some(value("--max-ratio")?.parse().map_err(|_| "bad ratio")?)
            }
            "--env" => {
                let pair = value("--env")?;
                let (k, v) = pair.split_once('=').ok_or("--env takes K=V")?;
                options.env.push((k.to_owned(), v.to_owned()));
            }
            "-h" | "--help" => return Err(USAGE.into()),
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}\n{USAGE}")),
            _ => {
                let (path, event) = match arg.split_once('=') {
                    Some((path, file)) => {
                        let event = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
                        (PathBuf::from(path), Bytes::from(event))
                    }
                    None => (
                        PathBuf::from(&arg),
                        Bytes::from_static(HEALTHZ_EVENT.as_bytes()),
                    ),
                };
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| arg.clone());
                let path =
                    std::fs::canonicalize(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                options.targets.push(Target { path, name, event });
            }
        }
    }
    if options.targets.is_empty() || options.runs == 0 {
        return Err(USAGE.into());
    }
    Ok(options)
}

/// The environment of a function of this stack under the stub: what Lambda sets, and what
/// `media_cache::lambda::LambdaConfig` requires, with nothing that makes a network call at init
/// (the OpenAI key and callback secret as values, not SSM parameters). The measuring process's own
/// environment is not passed on (no `HOME`, no `SSL_CERT_FILE`: Lambda sets neither).
fn function_env(name: &str, runtime_api: &str) -> Vec<(String, String)> {
    [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("LANG", "en_US.UTF-8"),
        ("TZ", ":UTC"),
        ("AWS_LAMBDA_RUNTIME_API", runtime_api),
        ("AWS_LAMBDA_FUNCTION_NAME", name),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512"),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/coldstart"),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "coldstart"),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "AKIDCOLDSTART"),
        ("AWS_SECRET_ACCESS_KEY", "coldstart-secret"),
        ("AWS_SESSION_TOKEN", "coldstart-token"),
        ("TABLE_NAME", "coldstart"),
        ("BUCKET_NAME", "coldstart"),
        (
            "JOBS_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/123456789012/coldstart",
        ),
        ("OPENAI_API_KEY", "sk-coldstart"),
        ("CALLBACK_SECRET", "coldstart"),
        ("PUBLIC_API_URL", "https://api.example.com"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Reads `pipe` to its end in a task of its own.
fn drain(
    pipe: Option<impl AsyncRead + Unpin + Send + 'static>,
) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        if let Some(mut pipe) = pipe {
            // The function's output, shown only when it fails: what could be read is enough.
            let _ = pipe.read_to_end(&mut out).await;
        }
        out
    })
}

/// Runs `target` once under the stub.
async fn run_once(
    stub: &Stub,
    runtime_api: &str,
    target: &Target,
    extra_env: &[(String, String)],
    round: usize,
) -> Result<Sample, String> {
    let (first_tx, first_rx) = oneshot::channel();
    let (answer_tx, answer_rx) = oneshot::channel();
    let (over_tx, over_rx) = watch::channel(false);
    *stub.lock().unwrap() = Some(Run {
        request_id: format!("coldstart-{round}-{}", target.name),
        event: target.event.clone(),
        first_next: Some(first_tx),
        answered: Some(answer_tx),
        over: over_rx,
    });
    let mut command = tokio::process::Command::new(&target.path);
    command
        .env_clear()
        .envs(function_env(&target.name, runtime_api))
        .envs(
            extra_env
                .iter()
                .map(|(k, v)| (k, v.replace("{stub}", runtime_api))),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let start = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|e| format!("{}: {e}", target.path.display()))?;
    // Drained concurrently, so that a chatty binary never blocks on a full pipe.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let outcome = async {
        let first_next = tokio::select! {
            at = first_rx => at.map_err(|_| "the stub dropped the run".to_owned())?,
            status = child.wait() => {
                return Err(format!("exited before asking for an event ({})", status.map_or_else(|e| e.to_string(), |s| s.to_string())));
            }
            () = tokio::time::sleep(RUN_TIMEOUT) => return Err("no `next` call within 10 s".into()),
        };
        let (answered, answer) = tokio::select! {
            answer = answer_rx => answer.map_err(|_| "the stub dropped the run".to_owned())?,
            status = child.wait() => {
                return Err(format!("exited before answering its event ({})", status.map_or_else(|e| e.to_string(), |s| s.to_string())));
            }
            () = tokio::time::sleep(RUN_TIMEOUT) => return Err("no answer to the event within 10 s".into()),
        };
        match answer {
            Answer::Response => Ok(Sample {
                init: first_next - start,
                first_event: answered - first_next,
            }),
            Answer::Error(body) => Err(format!("answered its event with an error: {body}")),
            Answer::InitError(body) => Err(format!("reported an init error: {body}")),
        }
    }
    .await;
    // The measurement is taken; the process is only stopped (it may have exited already).
    let _ = child.start_kill();
    let _ = child.wait().await;
    let _ = over_tx.send(true);
    *stub.lock().unwrap() = None;
    let stdout = stdout.await.unwrap_or_default();
    let stderr = stderr.await.unwrap_or_default();
    outcome.map_err(|e| {
        format!(
            "{}: {e}\n--- stdout\n{}--- stderr\n{}",
            target.name,
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )
    })
}

/// Nearest-rank percentile `p` (0 to 100) of sorted `values`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Summary {
    min: Duration,
    median: Duration,
    p90: Duration,
    max: Duration,
}

fn summary(values: impl Iterator<Item = Duration>) -> Summary {
    let mut sorted: Vec<Duration> = values.collect();
    sorted.sort();
    Summary {
        min: sorted[0],
        median: percentile(&sorted, 50.0),
        p90: percentile(&sorted, 90.0),
        max: sorted[sorted.len() - 1],
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on 127.0.0.1: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime_api = listener.local_addr().expect("bound").to_string();
    let stub: Stub = Arc::new(Mutex::new(None));
    let server = axum::serve(listener, stub_router(Arc::clone(&stub)));
    tokio::spawn(async move { server.await });

    let n = options.targets.len();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); n];
    println!(
        "runtime API stub on {runtime_api}; {} runs of each binary (alternating), {} warm-up rounds",
        options.runs, options.warmup
    );
    for round in 0..options.warmup + options.runs {
        for k in 0..n {
            let i = (round + k) % n;
            let target = &options.targets[i];
            match run_once(&stub, &runtime_api, target, &options.env, round).await {
                Ok(sample) if round >= options.warmup => samples[i].push(sample),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }

    println!(
        "\n{:<16} {:>5} {:>9} {:>9} {:>9} {:>9}   {:>13} {:>10}",
        "init (ms)", "runs", "min", "median", "p90", "max", "1st event med", "size (MB)"
    );
    let summaries: Vec<Summary> = samples
        .iter()
        .map(|s| summary(s.iter().map(|s| s.init)))
        .collect();
    for (i, target) in options.targets.iter().enumerate() {
        let s = &summaries[i];
        let first = summary(samples[i].iter().map(|s| s.first_event));
        let size = std::fs::metadata(&target.path).map_or(0, |m| m.len());
        println!(
            "{:<16} {:>5} {:>9} {:>9} {:>9} {:>9}   {:>13} {:>10.2}",
            target.name,
            samples[i].len(),
            ms(s.min),
            ms(s.median),
            ms(s.p90),
            ms(s.max),
            ms(first.median),
            size as f64 / 1e6
        );
    }
    let base = &summaries[0];
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    let mut over = false;
    for (i, target) in options.targets.iter().enumerate().skip(1) {
        let s = &summaries[i];
        let median = ratio(s.median, base.median);
        println!(
            "{} / {}: min {:.2}x, median {:.2}x, p90 {:.2}x",
            target.name,
            options.targets[0].name,
            ratio(s.min, base.min),
            median,
            ratio(s.p90, base.p90)
        );
        if let Some(max) = options.max_ratio
            && median > max
        {
            println!("  over the limit: median ratio {median:.2} > {max}");
            over = true;
        }
    }
    if over {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 50.0), Duration::from_millis(10));
        assert_eq!(percentile(&values, 90.0), Duration::from_millis(18));
        assert_eq!(percentile(&values, 100.0), Duration::from_millis(20));
        assert_eq!(percentile(&values[..1], 90.0), Duration::from_millis(1));
    }
}
