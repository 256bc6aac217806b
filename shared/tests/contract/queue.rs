//! The job queue contract: what is sent arrives whole, and a delay holds it back.

use media_cache::domain::JobMessage;
use media_cache::ports::JobQueue;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Receives (and deletes) what is visible now.
pub type Receive =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Vec<JobMessage>> + Send>> + Send + Sync>;

/// A queue adapter and how to read it back, with whatever keeps it alive.
pub struct QueueHarness {
    /// The adapter under test.
    pub queue: Arc<dyn JobQueue>,
    /// The consumer's side.
    pub receive: Receive,
    /// Dropped after the test.
    pub _guard: Box<dyn std::any::Any + Send>,
}

fn message(poll: bool) -> JobMessage {
    JobMessage {
        job_id: format!(
            "job_{}",
            media_cache::service::accounts::generate_request_id()
        ),
        poll,
        sent_at: poll.then(chrono::Utc::now),
    }
}

pub async fn a_sent_message_arrives_whole(h: QueueHarness) {
    let (polling, nudge) = (message(true), message(false));
    h.queue.send(&polling, Duration::ZERO).await.unwrap();
    h.queue.send(&nudge, Duration::ZERO).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        got.extend((h.receive)().await);
        if got.len() >= 2 {
            break;
        }
    }
    got.sort_by_key(|m| m.poll);
    assert_eq!(got, vec![nudge, polling]);
}

pub async fn a_delayed_message_waits_its_delay(h: QueueHarness) {
    // Queue delays are wall-clock time on every adapter (as on SQS), so the test measures from
    // before the send: a message seen earlier than its delay after that is a failure, however
    // slow the machine; seeing it later, or not at the first look, is not.
    let delay = Duration::from_secs(2);
    let delayed = message(true);
    let sent = Instant::now();
    h.queue.send(&delayed, delay).await.unwrap();
    let mut got = Vec::new();
    while got.is_empty() && sent.elapsed() < delay + Duration::from_secs(30) {
        got.extend((h.receive)().await);
        if got.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Read when the look that found it had ended: if that is before the delay, it came early.
    let seen_after = sent.elapsed();
    assert_eq!(got, vec![delayed], "arrives once its delay is over");
    assert!(
        seen_after >= delay,
        "seen {seen_after:?} after it was sent with a {delay:?} delay"
    );
}
