//! The media providers, as the application sees them.

use crate::domain::{GeneratedMedia, NormalizedImageRequest, NormalizedTtsRequest};
use async_trait::async_trait;
use std::time::Duration;

/// A provider call that did not produce media.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider throttled us and retries ran out.
    #[error("provider is rate limiting requests")]
    RateLimited {
        /// When to try again, if the provider said.
        retry_after: Option<Duration>,
    },
    /// The provider is down or answered 5xx.
    #[error("provider is unavailable: {message}")]
    Unavailable {
        /// What it said.
        message: String,
        /// When to try again, if the provider said.
        retry_after: Option<Duration>,
    },
    /// The provider did not answer in time.
    #[error("provider timed out")]
    Timeout,
    /// The provider refused this request's content (policy, invalid parameter).
    #[error("provider rejected the request: {message}")]
    Rejected {
        /// What it said.
        message: String,
    },
    /// Our account with the provider is unusable (bad key, no quota).
    #[error("provider account problem: {message}")]
    Account {
        /// What it said.
        message: String,
    },
    /// The provider answered something we could not use.
    #[error("provider sent an invalid response: {message}")]
    BadResponse {
        /// What was wrong.
        message: String,
    },
}

/// Text to speech.
#[async_trait]
pub trait SpeechProvider: Send + Sync {
    /// The provider's name, e.g. "openai".
    fn name(&self) -> &str;
    /// Speaks the request's text.
    async fn synthesize(&self, req: &NormalizedTtsRequest)
    -> Result<GeneratedMedia, ProviderError>;
}

/// Image generation.
#[async_trait]
pub trait ImageProvider: Send + Sync {
    /// The provider's name, e.g. "openai".
    fn name(&self) -> &str;
    /// Draws `req.n` images.
    async fn generate(
        &self,
        req: &NormalizedImageRequest,
    ) -> Result<Vec<GeneratedMedia>, ProviderError>;
}
