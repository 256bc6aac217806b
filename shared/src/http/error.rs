//! The one place where errors become HTTP answers: `{"error":{"code","message","request_id"}}`.

use crate::ports::ProviderError;
use crate::service::ServiceError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// What went wrong at the HTTP edge or below it.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The service refused or failed.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The body is not JSON of the expected shape (syntax, unknown field, wrong type).
    #[error("malformed request body: {0}")]
    MalformedBody(String),
    /// The body is larger than the limit.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// No such route or object.
    #[error("not found")]
    NotFound,
    /// The route exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A signed object URL that is invalid or expired.
    #[error("this URL is invalid or has expired")]
    BadSignature,
}

/// The stable code of an error answer, left on the response for the layers around the handler
/// (metrics count errors by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

/// An error answer carrying the request's id.
#[derive(Debug)]
pub struct ApiError {
    /// The request's id.
    pub request_id: String,
    /// The error.
    pub error: HttpError,
}

impl ApiError {
    /// An error of request `request_id`.
    pub fn new(request_id: &str, error: impl Into<HttpError>) -> Self {
        Self {
            request_id: request_id.to_owned(),
            error: error.into(),
        }
    }
}

impl HttpError {
    /// Status, machine-readable code and, where known, seconds to wait before retrying.
    fn classify(&self) -> (StatusCode, &'static str, Option<u64>) {
        use ServiceError as S;
        match self {
            HttpError::MalformedBody(_) => (StatusCode::BAD_REQUEST, "malformed_request", None),
            HttpError::PayloadTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None)
            }
            HttpError::NotFound => (StatusCode::NOT_FOUND, "not_found", None),
            HttpError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", None)
            }
            HttpError::BadSignature => (StatusCode::FORBIDDEN, "invalid_signature", None),
            HttpError::Service(e) => match e {
                S::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_parameter", None),
                S::BadHeader(_) => (StatusCode::BAD_REQUEST, "invalid_header", None),
                S::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", None),
                S::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", None),
                S::InsufficientCredits { .. } => {
                    (StatusCode::PAYMENT_REQUIRED, "insufficient_credits", None)
                }
                // Retry-After: until the UTC day turns and the day's spend starts again.
                // A request that costs more than the whole limit never fits: no Retry-After.
                S::DailyLimitExceeded(e) => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "daily_limit_exceeded",
                    (e.required <= e.limit).then_some(e.retry_after_secs.max(1)),
                ),
                S::IdempotencyConflict => (StatusCode::CONFLICT, "idempotency_conflict", None),
                S::IdempotencyInProgress => {
                    (StatusCode::CONFLICT, "idempotency_in_progress", Some(1))
                }
                S::Storage(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    Some(1),
                ),
                S::Unpriced => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "pricing_misconfigured",
                    None,
                ),
                S::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
                S::NotConfigured(_) => (StatusCode::NOT_IMPLEMENTED, "not_configured", None),
                S::Queue(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "queue_unavailable",
                    Some(1),
                ),
                S::StillRunning { .. } => (StatusCode::GATEWAY_TIMEOUT, "still_running", None),
                S::Generation(failure) => match failure.code.as_str() {
                    "provider_rejected" => {
                        (StatusCode::UNPROCESSABLE_ENTITY, "provider_rejected", None)
                    }
                    "provider_rate_limited" | "provider_unavailable" => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "provider_unavailable",
                        Some(5),
                    ),
                    "provider_timeout" | "timed_out" => {
                        (StatusCode::GATEWAY_TIMEOUT, "provider_timeout", None)
                    }
                    _ => (StatusCode::BAD_GATEWAY, "provider_error", None),
                },
                S::Provider(p) => match p {
                    ProviderError::RateLimited { retry_after } => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "provider_rate_limited",
                        Some(retry_after.map_or(5, |d| d.as_secs().max(1))),
                    ),
                    ProviderError::Unavailable {
                        retry_after: Some(d),
                        ..
                    } => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "provider_unavailable",
                        Some(d.as_secs().max(1)),
                    ),
                    ProviderError::Unavailable { .. } => {
                        (StatusCode::BAD_GATEWAY, "provider_unavailable", None)
                    }
                    ProviderError::Timeout => {
                        (StatusCode::GATEWAY_TIMEOUT, "provider_timeout", None)
                    }
                    ProviderError::Rejected { .. } => {
                        (StatusCode::UNPROCESSABLE_ENTITY, "provider_rejected", None)
                    }
                    ProviderError::Account { .. }
                    | ProviderError::BadResponse { .. }
                    | ProviderError::Refused { .. }
                    | ProviderError::Failed { .. } => {
                        (StatusCode::BAD_GATEWAY, "provider_error", None)
                    }
                },
            },
        }
    }

    /// The message shown to the client: specific for client errors, generic for our own faults.
    fn public_message(&self) -> String {
        match self {
            HttpError::Service(ServiceError::Storage(_)) => {
                "storage is temporarily unavailable; nothing was charged".into()
            }
            HttpError::Service(ServiceError::Queue(_)) => {
                "the job queue is temporarily unavailable; nothing was charged".into()
            }
            HttpError::Service(ServiceError::DailyLimitExceeded(e)) if e.required > e.limit => {
                format!(
                    "this request costs {} credits, more than the daily spend limit of {}: it \
                     cannot be served under this limit; nothing was charged",
                    e.required, e.limit
                )
            }
            HttpError::Service(ServiceError::Provider(p)) => {
                format!("{}; nothing was charged", p.public_message())
            }
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, retry_after) = self.error.classify();
        if status.is_server_error() {
            tracing::warn!(request_id = %self.request_id, error = ?self.error, "request failed");
        }
        let mut body = json!({
            "error": {
                "code": code,
                "message": self.error.public_message(),
                "request_id": self.request_id,
            }
        });
        if let HttpError::Service(ServiceError::Invalid(v)) = &self.error {
            body["error"]["param"] = json!(v.field);
        }
        let mut response = (status, Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(code));
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            headers.insert("x-request-id", v);
        }
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
