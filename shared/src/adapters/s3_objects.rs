//! Object storage on S3: content-addressed keys with their content type, and a fresh presigned
//! GET URL on every answer (or a configured public base URL, e.g. a CDN in front of the bucket).

use crate::ports::{ObjectError, ObjectStore};
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// SigV4 presigned URLs live at most seven days.
const MAX_PRESIGN: Duration = Duration::from_secs(7 * 24 * 3600);

/// Objects in one S3 bucket.
#[derive(Clone)]
pub struct S3ObjectStore {
    client: Client,
    bucket: String,
    public_base_url: Option<String>,
}

impl S3ObjectStore {
    /// Objects in `bucket`; with `public_base_url`, URLs are `{base}/{key}` instead of presigned.
    pub fn new(client: Client, bucket: impl Into<String>, public_base_url: Option<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            public_base_url: public_base_url.map(|b| b.trim_end_matches('/').to_owned()),
        }
    }

    /// The durable location prefix of this bucket's objects: `s3://{bucket}/`.
    pub fn location_prefix(&self) -> String {
        format!("s3://{}/", self.bucket)
    }
}

fn object_err(e: impl std::error::Error) -> ObjectError {
    ObjectError(aws_sdk_s3::error::DisplayErrorContext(e).to_string())
}

#[async_trait]
impl ObjectStore for S3ObjectStore {
    async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> Result<(), ObjectError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(object_err)?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, ObjectError> {
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        let output = match result {
            Ok(output) => output,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(object_err(e)),
        };
        let body = output.body.collect().await.map_err(object_err)?;
        Ok(Some(body.into_bytes()))
    }

    async fn presign_get(
        &self,
        key: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<String, ObjectError> {
        if let Some(base) = &self.public_base_url {
            return Ok(format!("{base}/{key}"));
        }
        // Presigning signs with the real time, whatever clock the caller runs on.
        let lifetime = (expires_at - Utc::now())
            .to_std()
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_secs(1), MAX_PRESIGN);
        let config = PresigningConfig::expires_in(lifetime).map_err(object_err)?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(object_err)?;
        Ok(request.uri().to_owned())
    }
}
