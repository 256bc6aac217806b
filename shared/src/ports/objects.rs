//! Object storage for generated media.

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

/// Object storage failed.
#[derive(Debug, thiserror::Error)]
#[error("object storage error: {0}")]
pub struct ObjectError(pub String);

/// Durable storage of media under content-addressed keys, served through expiring URLs.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Stores `bytes` under `key` with its content type (idempotent: same key, same bytes).
    async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> Result<(), ObjectError>;

    /// The bytes stored under `key`, if any (for answers that carry the media itself).
    async fn get(&self, key: &str) -> Result<Option<Bytes>, ObjectError>;

    /// A fresh URL that serves `key` until `expires_at`. Never stored: made on every answer.
    async fn presign_get(
        &self,
        key: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<String, ObjectError>;
}
