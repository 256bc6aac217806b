//! The Suno music client (sunoapi.org style): create a task, read its record, download the songs.
//! Every answer is `{"code", "msg", "data"}`; `code` says what happened whatever the HTTP status.

use super::download::{DownloadPolicy, Downloader};
use super::task_http::{finished, http_client, send};
use crate::domain::{GeneratedMedia, NormalizedMusicRequest};
use crate::ports::{MusicProvider, ProviderError, TaskProvider, TaskState};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

/// Where and how to reach Suno.
#[derive(Debug, Clone)]
pub struct SunoConfig {
    /// Base URL, e.g. `https://api.sunoapi.org`.
    pub base_url: String,
    /// The API key.
    pub api_key: String,
    /// Timeout of one request (a result download included).
    pub timeout: Duration,
    /// What result URLs may be downloaded: strict by default (https, public addresses, size
    /// caps); a local simulator over http must be in its allow list.
    pub download: DownloadPolicy,
}

impl SunoConfig {
    /// Defaults for `base_url` and `api_key`.
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            api_key: api_key.into(),
            timeout: Duration::from_secs(20),
            download: DownloadPolicy::default(),
        }
    }
}

/// The Suno client.
#[derive(Debug, Clone)]
pub struct SunoClient {
    http: reqwest::Client,
    downloads: Downloader,
    config: SunoConfig,
}

#[derive(Deserialize)]
struct Envelope {
    code: i64,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    data: Value,
}

/// Suno's `code` (or, without one, the HTTP status) as a provider error.
fn classify(code: i64, msg: &str, retry: Option<Duration>) -> ProviderError {
    let message = if msg.is_empty() {
        format!("Suno code {code}")
    } else {
        format!("Suno code {code}: {msg}")
    };
    match code {
        400 | 413 => ProviderError::Rejected { message },
        401 | 403 => ProviderError::Account { message },
        // 429 is Suno's "out of credits": our account, not a rate limit.
        429 => ProviderError::Account { message },
        405 | 430 => ProviderError::RateLimited { retry_after: retry },
        455 | 500..=599 => ProviderError::Unavailable {
            message,
            retry_after: retry,
        },
        _ => ProviderError::BadResponse { message },
    }
}

impl SunoClient {
    /// A client for `config`.
    pub fn new(config: SunoConfig) -> Result<Self, ProviderError> {
        Ok(Self {
            http: http_client(config.timeout)?,
            downloads: Downloader::new(&config.download, config.timeout)?,
            config,
        })
    }

    /// Sends `req` and returns `data` of a `code: 200` answer.
    async fn call(&self, req: reqwest::RequestBuilder) -> Result<Value, ProviderError> {
        let answer = send(req, &self.config.api_key).await?;
        let (status, retry) = (answer.status, answer.retry_after);
        match serde_json::from_str::<Envelope>(&answer.text) {
            Ok(env) if env.code == 200 && status.is_success() => Ok(env.data),
            Ok(env) if env.code != 200 => Err(classify(env.code, &env.msg, retry)),
            _ => Err(classify(i64::from(status.as_u16()), "", retry)),
        }
    }
}

fn task_failed(status: &str, data: &Value) -> ProviderError {
    let detail = data["errorMessage"].as_str().unwrap_or_default();
    let message = format!("{status}: {detail}")
        .trim_end_matches([':', ' '])
        .to_owned();
    if status == "SENSITIVE_WORD_ERROR" {
        ProviderError::Rejected { message }
    } else {
        ProviderError::Failed { message }
    }
}

#[async_trait]
impl TaskProvider for SunoClient {
    fn name(&self) -> &str {
        "suno"
    }

    async fn task_state(&self, task: &str) -> Result<TaskState, ProviderError> {
        let base = format!("{}/api/v1/generate/record-info", self.config.base_url);
        let url = reqwest::Url::parse_with_params(&base, &[("taskId", task)]).map_err(|e| {
            ProviderError::BadResponse {
                message: format!("record-info URL: {e}"),
            }
        })?;
        let data = self.call(self.http.get(url)).await?;
        let status = data["status"].as_str().unwrap_or_default();
        Ok(match status {
            "SUCCESS" => {
                let urls: Vec<String> = data["response"]["sunoData"]
                    .as_array()
                    .map(|songs| {
                        songs
                            .iter()
                            .filter_map(|s| s["audioUrl"].as_str().map(str::to_owned))
                            .filter(|u| !u.is_empty())
                            .collect()
                    })
                    .unwrap_or_default();
                finished(urls)
            }
            "CREATE_TASK_FAILED"
            | "GENERATE_AUDIO_FAILED"
            | "CALLBACK_EXCEPTION"
            | "SENSITIVE_WORD_ERROR" => TaskState::Failed(task_failed(status, &data)),
            "" => {
                return Err(ProviderError::BadResponse {
                    message: "record-info without a status".into(),
                });
            }
            stage => TaskState::Running {
                stage: stage.to_owned(),
            },
        })
    }

    async fn download(&self, url: &str) -> Result<GeneratedMedia, ProviderError> {
        self.downloads.fetch(url, "audio/mpeg", None).await
    }
}

#[async_trait]
impl MusicProvider for SunoClient {
    async fn submit_music(
        &self,
        req: &NormalizedMusicRequest,
        callback_url: &str,
    ) -> Result<String, ProviderError> {
        let mut body = json!({
            "customMode": req.custom_mode,
            "instrumental": req.instrumental,
            "model": req.model,
            "callBackUrl": callback_url,
            "prompt": req.prompt,
        });
        if let (Some(style), Some(title)) = (&req.style, &req.title) {
            body["style"] = json!(style);
            body["title"] = json!(title);
        }
        let url = format!("{}/api/v1/generate", self.config.base_url);
        let data = self.call(self.http.post(url).json(&body)).await?;
        data["taskId"]
            .as_str()
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::BadResponse {
                message: "generate answer without data.taskId".into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_code_has_its_class() {
        let class = |code| classify(code, "x", None).code();
        assert_eq!(class(400), "provider_rejected");
        assert_eq!(class(413), "provider_rejected");
        assert_eq!(class(401), "provider_account");
        assert_eq!(class(429), "provider_account");
        assert_eq!(class(405), "provider_rate_limited");
        assert_eq!(class(430), "provider_rate_limited");
        assert_eq!(class(455), "provider_unavailable");
        assert_eq!(class(500), "provider_unavailable");
    }
}
