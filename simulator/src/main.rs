//! `provider-sim`: run the provider simulator on its own.

use clap::Parser;
use provider_sim::{FaultKind, FaultRule, SimConfig};
use std::net::SocketAddr;
use std::time::Duration;

/// Serves OpenAI's speech and image, Suno's music and Kling's video APIs with real media bytes on
/// loopback.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "SIM_ADDR", default_value = "127.0.0.1:9100")]
    addr: SocketAddr,
    /// Latency added to every speech answer, in milliseconds.
    #[arg(long, env = "SIM_SPEECH_LATENCY_MS", default_value_t = 0)]
    speech_latency_ms: u64,
    /// Latency added to every image answer, in milliseconds.
    #[arg(long, env = "SIM_IMAGE_LATENCY_MS", default_value_t = 0)]
    image_latency_ms: u64,
    /// Require this bearer key (any non-empty key is accepted otherwise).
    #[arg(long, env = "SIM_API_KEY")]
    api_key: Option<String>,
    /// How long a Suno or Kling task takes, in milliseconds.
    #[arg(long, env = "SIM_TASK_DURATION_MS", default_value_t = 3000)]
    task_duration_ms: u64,
    /// Do not call tasks' callback URLs.
    #[arg(long, env = "SIM_NO_CALLBACKS")]
    no_callbacks: bool,
    /// Require Kling bearers to be HS256 JWTs signed with this secret key.
    #[arg(long, env = "SIM_KLING_SECRET")]
    kling_secret: Option<String>,
    /// Fail every call with this HTTP status (429 rate limit, 5xx); change at run time with
    /// `POST /_sim/faults`.
    #[arg(long, env = "SIM_FAIL_STATUS")]
    fail_status: Option<u16>,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let args = Args::parse();
    let config = SimConfig {
        speech_latency: Duration::from_millis(args.speech_latency_ms),
        image_latency: Duration::from_millis(args.image_latency_ms),
        api_key: args.api_key,
        task_duration: Duration::from_millis(args.task_duration_ms),
        callbacks: !args.no_callbacks,
        kling_secret: args.kling_secret,
    };
    let sim = provider_sim::spawn(config, args.addr).await?;
    if let Some(status) = args.fail_status {
        let kind = if status == 429 {
            FaultKind::RateLimit {
                retry_after_ms: 1000,
            }
        } else {
            FaultKind::ServerError { status }
        };
        sim.state.inject(FaultRule {
            endpoint: None,
            kind,
            times: None,
        });
    }
    println!("provider simulator listening on {}", sim.base_url);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
