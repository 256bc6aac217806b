//! The media providers, as the application sees them.

use crate::domain::{
    GeneratedMedia, NormalizedImageRequest, NormalizedMusicRequest, NormalizedTtsRequest,
    NormalizedVideoRequest,
};
use async_trait::async_trait;
use std::time::{Duration, Instant};

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
    /// The provider's result was not downloaded: our download policy refused it (not https, a
    /// private address, too large, not media). The message names the rule only.
    #[error("{message}")]
    Refused {
        /// Which rule refused it (fixed texts, safe to show).
        message: String,
    },
    /// A long task ended without a result.
    #[error("provider could not generate it: {message}")]
    Failed {
        /// What it said.
        message: String,
    },
}

impl ProviderError {
    /// A stable code for job failure reasons and logs.
    pub fn code(&self) -> &'static str {
        match self {
            ProviderError::RateLimited { .. } => "provider_rate_limited",
            ProviderError::Unavailable { .. } => "provider_unavailable",
            ProviderError::Timeout => "provider_timeout",
            ProviderError::Rejected { .. } => "provider_rejected",
            ProviderError::Account { .. } => "provider_account",
            ProviderError::BadResponse { .. } => "provider_bad_response",
            ProviderError::Refused { .. } => "provider_result_refused",
            ProviderError::Failed { .. } => "generation_failed",
        }
    }

    /// What a client may be told: the provider's own words where they concern the request
    /// (a refusal, a failed task), never transport detail or our own addresses.
    pub fn public_message(&self) -> String {
        /// Provider text is shown, but bounded.
        fn bounded(text: &str) -> String {
            let mut out: String = text.chars().take(300).collect();
            if out.len() < text.len() {
                out.push('…');
            }
            out
        }
        match self {
            ProviderError::RateLimited { .. } => "the provider is rate limiting requests".into(),
            ProviderError::Unavailable { .. } => "the provider is unavailable".into(),
            ProviderError::Timeout => "the provider did not answer in time".into(),
            ProviderError::Rejected { message } => {
                format!("the provider rejected the request: {}", bounded(message))
            }
            ProviderError::Account { .. } | ProviderError::BadResponse { .. } => {
                "the provider could not be used".into()
            }
            ProviderError::Refused { message } => message.clone(),
            ProviderError::Failed { message } => {
                format!("the provider could not generate it: {}", bounded(message))
            }
        }
    }

    /// Whether asking again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ProviderError::RateLimited { .. }
                | ProviderError::Unavailable { .. }
                | ProviderError::Timeout
        )
    }
}

/// What a long task is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// Not finished; `stage` is the provider's word for where it is.
    Running {
        /// E.g. `TEXT_SUCCESS`, `processing`.
        stage: String,
    },
    /// Finished: where to download the media (provider URLs, never kept).
    Succeeded {
        /// One URL per result.
        urls: Vec<String>,
    },
    /// Finished without a result.
    Failed(ProviderError),
}

/// A provider of long tasks: ask for a task's state, download its results.
#[async_trait]
pub trait TaskProvider: Send + Sync {
    /// The provider's name, e.g. "suno".
    fn name(&self) -> &str;
    /// The state of a task submitted earlier.
    async fn task_state(&self, task: &str) -> Result<TaskState, ProviderError>;
    /// Downloads one result URL the task reported.
    async fn download(&self, url: &str) -> Result<GeneratedMedia, ProviderError>;
}

/// Music generation (Suno).
#[async_trait]
pub trait MusicProvider: TaskProvider {
    /// Submits a task; returns its reference. `callback_url` is told when it finishes.
    async fn submit_music(
        &self,
        req: &NormalizedMusicRequest,
        callback_url: &str,
    ) -> Result<String, ProviderError>;
}

/// Video generation (Kling).
#[async_trait]
pub trait VideoProvider: TaskProvider {
    /// Submits a task; returns its reference. `callback_url` is told when it finishes.
    async fn submit_video(
        &self,
        req: &NormalizedVideoRequest,
        callback_url: &str,
    ) -> Result<String, ProviderError>;
}

/// Text to speech.
#[async_trait]
pub trait SpeechProvider: Send + Sync {
    /// The provider's name, e.g. "openai".
    fn name(&self) -> &str;
    /// Speaks the request's text; no attempt starts that cannot end by `deadline`.
    async fn synthesize(
        &self,
        req: &NormalizedTtsRequest,
        deadline: Instant,
    ) -> Result<GeneratedMedia, ProviderError>;
}

/// Image generation.
#[async_trait]
pub trait ImageProvider: Send + Sync {
    /// The provider's name, e.g. "openai".
    fn name(&self) -> &str;
    /// Draws `req.n` images; no attempt starts that cannot end by `deadline`.
    async fn generate(
        &self,
        req: &NormalizedImageRequest,
        deadline: Instant,
    ) -> Result<Vec<GeneratedMedia>, ProviderError>;
}
