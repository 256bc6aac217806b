//! OpenAI speech and image clients over HTTP, speaking the real API: bearer auth, JSON bodies,
//! bounded retries on 408/409/429/5xx and connection failures honouring `retry-after-ms` and
//! `retry-after`, and every failure classified for the caller.

use super::download::{DownloadPolicy, Downloader};
use super::task_http::transport_error;
use crate::domain::{
    GeneratedMedia, NormalizedImageRequest, NormalizedMedia, NormalizedTtsRequest,
};
use crate::ports::{ImageProvider, ProviderError, SpeechProvider};
use async_trait::async_trait;
use base64::Engine;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Where and how to reach OpenAI.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Base URL without `/v1`, e.g. `https://api.openai.com`.
    pub base_url: String,
    /// The API key.
    pub api_key: String,
    /// Timeout of one attempt.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff delay; doubles per retry.
    pub initial_backoff: Duration,
    /// A `Retry-After` longer than this is not waited for: the error goes back to the client.
    pub max_retry_wait: Duration,
    /// What image URLs may be downloaded, when an answer carries a URL instead of `b64_json`:
    /// strict by default (https, public addresses, size caps); a local simulator over http must
    /// be in its allow list.
    pub download: DownloadPolicy,
}

impl OpenAiConfig {
    /// Production defaults for `base_url` and `api_key`.
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            api_key: api_key.into(),
            timeout: Duration::from_secs(120),
            max_retries: 2,
            initial_backoff: Duration::from_millis(500),
            max_retry_wait: Duration::from_secs(20),
            download: DownloadPolicy::default(),
        }
    }
}

/// The OpenAI client; one per process, cheap to share.
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    downloads: Downloader,
    config: OpenAiConfig,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct ImagesResponse {
    data: Vec<ImageDatum>,
}

#[derive(Deserialize)]
struct ImageDatum {
    b64_json: Option<String>,
    url: Option<String>,
}

/// One attempt's failure, and whether another attempt may help.
struct AttemptError {
    error: ProviderError,
    retryable: bool,
    retry_after: Option<Duration>,
}

/// The shortest provider attempt worth starting: less than this before the deadline and the call
/// is not made (it could not finish).
const MIN_ATTEMPT: Duration = Duration::from_millis(500);

impl OpenAiClient {
    /// A client for `config`.
    pub fn new(config: OpenAiConfig) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(super::tls::client_config())
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ProviderError::BadResponse {
                message: format!("HTTP client: {e}"),
            })?;
        let downloads = Downloader::new(&config.download, config.timeout)?;
        Ok(Self {
            http,
            downloads,
            config,
        })
    }

    /// POSTs `body` to `path` with retries; returns the successful response. No attempt or retry
    /// starts that cannot end by `deadline`: each attempt's timeout is cut to the time left.
    async fn post(
        &self,
        path: &str,
        body: &Value,
        deadline: Instant,
    ) -> Result<reqwest::Response, ProviderError> {
        let url = format!("{}{path}", self.config.base_url);
        let mut attempt = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < MIN_ATTEMPT {
                return Err(ProviderError::Timeout);
            }
            let result = self
                .http
                .post(&url)
                .timeout(left.min(self.config.timeout))
                .bearer_auth(&self.config.api_key)
                .json(body)
                .send()
                .await;
            let failure = match result {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => classify_status(resp).await,
                Err(e) => classify_transport(&e),
            };
            let wait = failure
                .retry_after
                .unwrap_or_else(|| backoff(self.config.initial_backoff, attempt));
            let retry_fits = Instant::now() + wait + MIN_ATTEMPT <= deadline;
            if !failure.retryable
                || attempt >= self.config.max_retries
                || wait > self.config.max_retry_wait
                || !retry_fits
            {
                return Err(failure.error);
            }
            tracing::debug!(
                path,
                attempt,
                wait_ms = wait.as_millis() as u64,
                "retrying provider call"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

fn backoff(initial: Duration, attempt: u32) -> Duration {
    let base = initial.saturating_mul(2u32.saturating_pow(attempt));
    // Up to 25% jitter so clients retrying together spread out.
    let jitter = base.mul_f64(rand::random::<f64>() * 0.25);
    (base + jitter).min(Duration::from_secs(8))
}

/// `retry-after-ms`, else `retry-after` in seconds.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok();
    header("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0))
        .or_else(|| header("retry-after").map(|s| Duration::from_secs_f64(s.max(0.0))))
}

async fn classify_status(resp: reqwest::Response) -> AttemptError {
    let status = resp.status();
    let retry_after = retry_after(resp.headers());
    let detail = resp
        .json::<ErrorBody>()
        .await
        .map(|b| b.error)
        .unwrap_or(ErrorDetail {
            message: String::new(),
            code: None,
            kind: None,
        });
    let message = if detail.message.is_empty() {
        format!("HTTP {status}")
    } else {
        detail.message.clone()
    };
    let quota =
        [detail.code.as_deref(), detail.kind.as_deref()].contains(&Some("insufficient_quota"));
    let (error, retryable) = match status {
        StatusCode::TOO_MANY_REQUESTS if quota => (ProviderError::Account { message }, false),
        StatusCode::TOO_MANY_REQUESTS => (ProviderError::RateLimited { retry_after }, true),
        StatusCode::REQUEST_TIMEOUT => (ProviderError::Timeout, true),
        StatusCode::CONFLICT => (
            ProviderError::Unavailable {
                message,
                retry_after,
            },
            true,
        ),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            (ProviderError::Account { message }, false)
        }
        s if s.is_server_error() => (
            ProviderError::Unavailable {
                message,
                retry_after,
            },
            true,
        ),
        _ => (ProviderError::Rejected { message }, false),
    };
    AttemptError {
        error,
        retryable,
        retry_after,
    }
}

fn classify_transport(e: &reqwest::Error) -> AttemptError {
    let error = transport_error(e);
    AttemptError {
        retryable: !matches!(error, ProviderError::BadResponse { .. }),
        error,
        retry_after: None,
    }
}

#[async_trait]
impl SpeechProvider for OpenAiClient {
    fn name(&self) -> &str {
        "openai"
    }

    async fn synthesize(
        &self,
        req: &NormalizedTtsRequest,
        deadline: Instant,
    ) -> Result<GeneratedMedia, ProviderError> {
        let mut body = json!({
            "model": req.model,
            "input": req.text,
            "voice": req.voice,
            "response_format": req.format,
            "speed": req.speed,
        });
        if let Some(instructions) = &req.instructions {
            body["instructions"] = json!(instructions);
        }
        let resp = self.post("/v1/audio/speech", &body, deadline).await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| classify_transport(&e).error)?;
        if bytes.is_empty() {
            return Err(ProviderError::BadResponse {
                message: "empty audio".into(),
            });
        }
        // Stored under our canonical type for the requested format, whatever alias the provider
        // sends (`audio/mp3`, `audio/opus`...).
        Ok(GeneratedMedia {
            bytes,
            content_type: req.content_type().to_owned(),
        })
    }
}

#[async_trait]
impl ImageProvider for OpenAiClient {
    fn name(&self) -> &str {
        "openai"
    }

    async fn generate(
        &self,
        req: &NormalizedImageRequest,
        deadline: Instant,
    ) -> Result<Vec<GeneratedMedia>, ProviderError> {
        let mut body = json!({
            "model": req.model,
            "prompt": req.prompt,
            "n": req.n,
            "size": req.size,
            "quality": req.quality,
        });
        if req.model.starts_with("dall-e") {
            // Bytes in the answer: nothing to fetch from a URL that dies in 60 minutes.
            body["response_format"] = json!("b64_json");
        }
        for (name, value) in [
            ("style", &req.style),
            ("background", &req.background),
            ("output_format", &req.output_format),
        ] {
            if let Some(v) = value {
                body[name] = json!(v);
            }
        }
        let resp = self.post("/v1/images/generations", &body, deadline).await?;
        let parsed: ImagesResponse = resp.json().await.map_err(|e| ProviderError::BadResponse {
            message: format!("images answer: {e}"),
        })?;
        let mut media = Vec::with_capacity(parsed.data.len());
        for datum in parsed.data {
            // We ask for b64_json; an answer with a URL instead (it dies in 60 minutes) is
            // fetched now, under the download policy and within the deadline.
            let b64 = match (datum.b64_json, datum.url) {
                (Some(b64), _) => b64,
                (None, Some(url)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left < MIN_ATTEMPT {
                        return Err(ProviderError::Timeout);
                    }
                    let image = self
                        .downloads
                        .fetch(
                            &url,
                            req.content_type(),
                            Some(left.min(self.config.timeout)),
                        )
                        .await?;
                    media.push(image);
                    continue;
                }
                (None, None) => {
                    return Err(ProviderError::BadResponse {
                        message: "image without b64_json or url".into(),
                    });
                }
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| ProviderError::BadResponse {
                    message: format!("b64_json: {e}"),
                })?
                .into();
            media.push(GeneratedMedia {
                bytes,
                content_type: req.content_type().to_owned(),
            });
        }
        Ok(media)
    }
}
