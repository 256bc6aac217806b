//! `mediactl serve` as a child process, for the tests that need a real server process.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Credits of the dev user.
pub const CREDITS: u64 = 1_000_000;

/// A running `serve` and what it printed.
pub struct Serve {
    pub child: Child,
    pub url: String,
    pub api_key: String,
    pub user_id: String,
    /// The provider simulator's base URL.
    #[allow(dead_code)] // each test binary compiles this module; not all of them read it
    pub sim_url: String,
}

/// `mediactl serve` on a free port over `data_dir`, with a dev user of `CREDITS`.
pub fn serve(data_dir: &std::path::Path, extra: &[&str]) -> Serve {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mediactl"))
        .args(["--data-dir", &data_dir.display().to_string(), "serve"])
        .args([
            "--addr",
            "127.0.0.1:0",
            "--dev-credits",
            &CREDITS.to_string(),
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut url, mut api_key, mut user_id, mut sim_url) = (None, None, None, None);
    while url.is_none() || api_key.is_none() || user_id.is_none() || sim_url.is_none() {
        let line = lines
            .next()
            .expect("serve printed its address and key")
            .unwrap();
        if let Some(rest) = line.strip_prefix("media cache API listening on ") {
            url = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.strip_prefix("API key (shown once): ") {
            api_key = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.strip_prefix("providers: built-in simulator at ") {
            sim_url = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(rest) = line.strip_prefix("created dev user ") {
            user_id = rest.split_whitespace().next().map(str::to_owned);
        }
    }
    // Keep reading so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Serve {
        child,
        url: url.unwrap(),
        api_key: api_key.unwrap(),
        user_id: user_id.unwrap(),
        sim_url: sim_url.unwrap(),
    }
}
