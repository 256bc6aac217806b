//! The Kling video client: text to video and image to video, task queries, result downloads.
//! Auth is a plain API key or a JWT (HS256) made from an access key and a secret key.

use super::download::{DownloadPolicy, Downloader};
use super::task_http::{finished, http_client, send};
use crate::domain::{GeneratedMedia, NormalizedVideoRequest};
use crate::ports::{ProviderError, TaskProvider, TaskState, VideoProvider};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use std::time::Duration;

/// How Kling knows us.
#[derive(Debug, Clone)]
pub enum KlingAuth {
    /// A plain API key, sent as the bearer (newer accounts).
    ApiKey(String),
    /// An access key and a secret key: the bearer is a fresh HS256 JWT.
    AccessKey {
        /// The JWT's `iss`.
        access_key: String,
        /// Signs the JWT.
        secret_key: String,
    },
}

/// Where and how to reach Kling.
#[derive(Debug, Clone)]
pub struct KlingConfig {
    /// Base URL, e.g. `https://api-singapore.klingai.com`.
    pub base_url: String,
    /// Credentials.
    pub auth: KlingAuth,
    /// Timeout of one request (a result download included).
    pub timeout: Duration,
    /// What result URLs may be downloaded: strict by default (https, public addresses, size
    /// caps); a local simulator over http must be in its allow list.
    pub download: DownloadPolicy,
}

impl KlingConfig {
    /// Defaults for `base_url` and `auth`.
    pub fn new(base_url: impl Into<String>, auth: KlingAuth) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            auth,
            timeout: Duration::from_secs(20),
            download: DownloadPolicy::default(),
        }
    }
}

/// The Kling client.
#[derive(Debug, Clone)]
pub struct KlingClient {
    http: reqwest::Client,
    downloads: Downloader,
    config: KlingConfig,
}

/// A JWT (HS256) for Kling: `iss` the access key, valid from 5 s ago for 30 minutes. Made by hand
/// with the HMAC we already link: a JWT crate would add RSA and EC code to every Lambda binary.
pub fn kling_jwt(access_key: &str, secret_key: &str, now_epoch: i64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = json!({"iss": access_key, "exp": now_epoch + 1800, "nbf": now_epoch - 5});
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret_key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

#[derive(Deserialize)]
struct Envelope {
    code: i64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    data: Value,
}

/// Kling's HTTP status and `code` as a provider error.
fn classify(status: u16, code: i64, msg: &str, retry: Option<Duration>) -> ProviderError {
    let message = format!("Kling code {code} (HTTP {status}): {msg}");
    match (status, code) {
        (_, 1302 | 1303) => ProviderError::RateLimited { retry_after: retry },
        // Auth (1000-1004), account and balance (1100-1103): our account.
        (_, 1000..=1004 | 1100..=1103) | (401 | 403, _) => ProviderError::Account { message },
        // Parameters (1200-1201), missing resources (1202-1203), policy and content safety
        // (1300-1301).
        (_, 1200..=1203 | 1300 | 1301) | (400 | 404, _) => ProviderError::Rejected { message },
        (429, _) => ProviderError::RateLimited { retry_after: retry },
        (_, 5000..=5002) | (500..=599, _) => ProviderError::Unavailable {
            message,
            retry_after: retry,
        },
        _ => ProviderError::BadResponse { message },
    }
}

impl KlingClient {
    /// A client for `config`.
    pub fn new(config: KlingConfig) -> Result<Self, ProviderError> {
        Ok(Self {
            http: http_client(config.timeout)?,
            downloads: Downloader::new(&config.download, config.timeout)?,
            config,
        })
    }

    fn bearer(&self) -> String {
        match &self.config.auth {
            KlingAuth::ApiKey(key) => key.clone(),
            KlingAuth::AccessKey {
                access_key,
                secret_key,
            } => kling_jwt(access_key, secret_key, chrono::Utc::now().timestamp()),
        }
    }

    /// Sends `req` and returns `data` of a `code: 0` answer.
    async fn call(&self, req: reqwest::RequestBuilder) -> Result<Value, ProviderError> {
        let answer = send(req, &self.bearer()).await?;
        let (status, retry) = (answer.status, answer.retry_after);
        match serde_json::from_str::<Envelope>(&answer.text) {
            Ok(env) if env.code == 0 && status.is_success() => Ok(env.data),
            Ok(env) => Err(classify(status.as_u16(), env.code, &env.message, retry)),
            Err(_) => Err(classify(status.as_u16(), -1, "unreadable answer", retry)),
        }
    }
}

#[async_trait]
impl TaskProvider for KlingClient {
    fn name(&self) -> &str {
        "kling"
    }

    async fn task_state(&self, task: &str) -> Result<TaskState, ProviderError> {
        // Our reference is `{endpoint}/{task_id}`: the query path depends on the endpoint.
        let Some((kind @ ("text2video" | "image2video"), id)) = task.split_once('/') else {
            return Err(ProviderError::Rejected {
                message: format!("not a Kling task reference: {task}"),
            });
        };
        let url = format!("{}/v1/videos/{kind}/{id}", self.config.base_url);
        let data = self.call(self.http.get(url)).await?;
        let status = data["task_status"].as_str().unwrap_or_default();
        Ok(match status {
            "succeed" => {
                let urls: Vec<String> = data["task_result"]["videos"]
                    .as_array()
                    .map(|videos| {
                        videos
                            .iter()
                            .filter_map(|v| v["url"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                finished(urls)
            }
            "failed" => TaskState::Failed(ProviderError::Failed {
                message: data["task_status_msg"]
                    .as_str()
                    .unwrap_or("the task failed")
                    .to_owned(),
            }),
            "" => {
                return Err(ProviderError::BadResponse {
                    message: "task without task_status".into(),
                });
            }
            stage => TaskState::Running {
                stage: stage.to_owned(),
            },
        })
    }

    async fn download(&self, url: &str) -> Result<GeneratedMedia, ProviderError> {
        self.downloads.fetch(url, "video/mp4", None).await
    }
}

#[async_trait]
impl VideoProvider for KlingClient {
    async fn submit_video(
        &self,
        req: &NormalizedVideoRequest,
        callback_url: &str,
    ) -> Result<String, ProviderError> {
        let mut body = json!({
            "model_name": req.model,
            "prompt": req.prompt,
            "cfg_scale": req.cfg_scale,
            "mode": req.mode,
            "duration": req.duration.to_string(),
            "callback_url": callback_url,
        });
        if let Some(negative) = &req.negative_prompt {
            body["negative_prompt"] = json!(negative);
        }
        let kind = match (&req.image_url, &req.aspect_ratio) {
            (Some(image), _) => {
                body["image"] = json!(image);
                "image2video"
            }
            (None, ratio) => {
                body["aspect_ratio"] = json!(ratio.as_deref().unwrap_or("16:9"));
                "text2video"
            }
        };
        let url = format!("{}/v1/videos/{kind}", self.config.base_url);
        let data = self.call(self.http.post(url).json(&body)).await?;
        let id = data["task_id"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ProviderError::BadResponse {
                message: "create answer without data.task_id".into(),
            })?;
        Ok(format!("{kind}/{id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_code_has_its_class() {
        let class = |status, code| classify(status, code, "x", None).code();
        for code in 1000..=1004 {
            assert_eq!(class(401, code), "provider_account");
        }
        for code in 1100..=1102 {
            assert_eq!(class(429, code), "provider_account");
        }
        assert_eq!(class(403, 1103), "provider_account");
        assert_eq!(class(429, 1302), "provider_rate_limited");
        assert_eq!(class(429, 1303), "provider_rate_limited");
        for code in [1200, 1201, 1300, 1301] {
            assert_eq!(class(400, code), "provider_rejected");
        }
        assert_eq!(class(404, 1202), "provider_rejected");
        for (status, code) in [(500, 5000), (503, 5001), (504, 5002)] {
            assert_eq!(class(status, code), "provider_unavailable");
        }
    }

    #[test]
    fn the_jwt_has_the_documented_header_and_claims() {
        let token = kling_jwt("ak", "sk", 1_000_000);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            claims,
            json!({"iss": "ak", "exp": 1_001_800, "nbf": 999_995})
        );
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header, json!({"alg": "HS256", "typ": "JWT"}));
    }
}
