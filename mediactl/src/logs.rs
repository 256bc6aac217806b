//! `serve`'s log output: one line per request at tens of thousands of requests a second.
//!
//! Lines are appended to a buffer in memory and a thread of their own writes the buffer out
//! every [`FLUSH_EVERY`], or at once when it passes [`FLUSH_AT`]. A request pays for formatting
//! its line and a short lock, never for a write to the terminal or for waking a writer thread
//! per line (which is what a channel-per-line appender costs). No line is ever dropped: past
//! [`HOLD_AT`] the logging thread itself writes the buffer out before adding to it.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;

const FLUSH_EVERY: Duration = Duration::from_millis(50);
const FLUSH_AT: usize = 256 * 1024;
const HOLD_AT: usize = 8 * 1024 * 1024;

#[derive(Default)]
struct Shared {
    lines: Mutex<Lines>,
    wake: Condvar,
}

#[derive(Default)]
struct Lines {
    buf: Vec<u8>,
    closed: bool,
}

/// Where tracing writes lines: cheap to clone, shared with the flushing thread.
#[derive(Clone)]
pub struct BufferedStdout {
    shared: Arc<Shared>,
}

/// Flushes what is left and stops the thread when dropped (keep it until `main` returns).
pub struct FlushOnDrop {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BufferedStdout {
    /// Starts the flushing thread.
    pub fn start() -> std::io::Result<(Self, FlushOnDrop)> {
        let shared = Arc::new(Shared::default());
        let flusher = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || flush_loop(&flusher))?;
        Ok((
            Self {
                shared: Arc::clone(&shared),
            },
            FlushOnDrop {
                shared,
                thread: Some(thread),
            },
        ))
    }
}

/// Sends this process's logs (`serve`'s, `worker`'s) through a [`BufferedStdout`]: compact lines
/// (coloured on a terminal) or JSON, filtered by `RUST_LOG` (info by default). Keep the guard
/// until `main` returns.
pub fn init(json: bool) -> std::io::Result<FlushOnDrop> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (logs, flush_on_drop) = BufferedStdout::start()?;
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(logs)
            .init();
    } else {
        tracing_subscriber::fmt()
            .compact()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .with_env_filter(filter)
            .with_writer(logs)
            .init();
    }
    Ok(flush_on_drop)
}

fn flush_loop(shared: &Shared) {
    let mut out = Vec::new();
    loop {
        let closed = {
            let lines = lock(shared);
            let (mut lines, _) = shared
                .wake
                .wait_timeout_while(lines, FLUSH_EVERY, |l| !l.closed && l.buf.len() < FLUSH_AT)
                .unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut lines.buf, &mut out);
            lines.closed
        };
        write_out(&out);
        out.clear();
        if closed {
            return;
        }
    }
}

fn write_out(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    // Nowhere to report a failed log write; the next flush tries again with new lines.
    let _ = stdout.write_all(bytes).and_then(|()| stdout.flush());
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Lines> {
    shared.lines.lock().unwrap_or_else(|e| e.into_inner())
}

impl Write for BufferedStdout {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut lines = lock(&self.shared);
        if lines.buf.len() >= HOLD_AT {
            // The flusher is behind: write the backlog out here rather than grow or drop.
            write_out(&std::mem::take(&mut lines.buf));
        }
        lines.buf.extend_from_slice(bytes);
        if lines.buf.len() >= FLUSH_AT {
            self.shared.wake.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedStdout {
    type Writer = BufferedStdout;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        lock(&self.shared).closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_buffer_whole_and_in_order() {
        let shared = Arc::new(Shared::default());
        let mut writer = BufferedStdout {
            shared: Arc::clone(&shared),
        };
        writer.write_all(b"first\n").unwrap();
        writer.write_all(b"second\n").unwrap();
        assert_eq!(lock(&shared).buf, b"first\nsecond\n");
    }
}
