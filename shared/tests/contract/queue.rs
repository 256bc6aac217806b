//! The job queue contract: what is sent arrives whole, and a delay holds it back.

use media_cache::domain::JobMessage;
use media_cache::ports::JobQueue;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

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
    let delayed = message(true);
    h.queue
        .send(&delayed, Duration::from_secs(2))
        .await
        .unwrap();
    assert!((h.receive)().await.is_empty(), "not before its delay");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut got = Vec::new();
    for _ in 0..20 {
        got.extend((h.receive)().await);
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(got, vec![delayed]);
}
