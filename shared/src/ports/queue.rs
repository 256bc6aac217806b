//! The queue that carries long jobs to the completion function.

use crate::domain::JobMessage;
use async_trait::async_trait;
use std::time::Duration;

/// The queue refused the message.
#[derive(Debug, thiserror::Error)]
#[error("queue error: {0}")]
pub struct QueueError(pub String);

/// Sends job messages, possibly delayed (at most 15 minutes, SQS's limit).
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Delivers `message` to the completion function after `delay`.
    async fn send(&self, message: &JobMessage, delay: Duration) -> Result<(), QueueError>;
}
