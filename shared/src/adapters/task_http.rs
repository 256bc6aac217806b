//! What the provider clients share: the HTTP client, failures of the transport, and (for the
//! long-task clients, Suno and Kling) sending a call and reading a finished task. Downloading a
//! result from the provider's CDN is `download`'s.

use crate::ports::{ProviderError, TaskState};
use std::time::Duration;

/// An HTTP client with `timeout` per request, on the process's TLS configuration (`tls`).
pub(crate) fn http_client(timeout: Duration) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(super::tls::client_config())
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| ProviderError::BadResponse {
            message: format!("HTTP client: {e}"),
        })
}

/// A request that got no answer.
pub(crate) fn transport_error(e: &reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout
    } else if e.is_decode() || e.is_body() {
        ProviderError::BadResponse {
            message: e.to_string(),
        }
    } else {
        ProviderError::Unavailable {
            message: format!("cannot reach provider: {e}"),
            retry_after: None,
        }
    }
}

/// `Retry-After` in seconds, when the provider sent one.
pub(crate) fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A provider's answer, read whole: status, `Retry-After`, body.
pub(crate) struct Answer {
    /// HTTP status.
    pub status: reqwest::StatusCode,
    /// `Retry-After`, when sent.
    pub retry_after: Option<Duration>,
    /// The body.
    pub text: String,
}

/// Sends `req` with `bearer` and reads the whole answer; only a failed exchange is an error.
pub(crate) async fn send(
    req: reqwest::RequestBuilder,
    bearer: &str,
) -> Result<Answer, ProviderError> {
    let resp = req
        .bearer_auth(bearer)
        .send()
        .await
        .map_err(|e| transport_error(&e))?;
    let status = resp.status();
    let retry_after = retry_after(&resp);
    let text = resp.text().await.map_err(|e| transport_error(&e))?;
    Ok(Answer {
        status,
        retry_after,
        text,
    })
}

/// A task the provider reports finished with these result URLs (none is a bad answer).
pub(crate) fn finished(urls: Vec<String>) -> TaskState {
    if urls.is_empty() {
        TaskState::Failed(ProviderError::BadResponse {
            message: "a finished task without result URLs".into(),
        })
    } else {
        TaskState::Succeeded { urls }
    }
}
