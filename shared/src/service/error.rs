//! Errors of the application service. They are mapped to HTTP in one place (`http::error`).

use crate::domain::{DailyLimitExceeded, ValidationError};
use crate::ports::{ChargeError, ObjectError, ProviderError, StoreError};

/// Why a request was not served.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A parameter is missing or out of range.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A header is malformed.
    #[error("{0}")]
    BadHeader(String),
    /// No API key, or an unknown one.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The API key is valid but may not do this (e.g. purge without the admin flag).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The balance does not cover the price; nothing was generated.
    #[error("not enough credits: this request costs {required}, {available} available")]
    InsufficientCredits {
        /// The price.
        required: u64,
        /// The balance.
        available: u64,
    },
    /// The charge would take the day's spend over the user's daily limit; nothing was charged.
    #[error(transparent)]
    DailyLimitExceeded(DailyLimitExceeded),
    /// The idempotency key was used with another request.
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyConflict,
    /// The first request with this idempotency key has not finished.
    #[error("a request with this Idempotency-Key is still in progress; retry later")]
    IdempotencyInProgress,
    /// The provider failed; any charge was refunded.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The store or object storage failed.
    #[error("storage is temporarily unavailable")]
    Storage(String),
    /// The price list has no price for a request the API accepts (a configuration error).
    #[error("this request has no configured price")]
    Unpriced,
    /// No such thing for this caller (a job of another user is not found either).
    #[error("{0}")]
    NotFound(&'static str),
    /// This deployment does not offer the feature (e.g. no provider key for it).
    #[error("{0}")]
    NotConfigured(&'static str),
    /// The identical request this one joined failed; this request's charge was refunded.
    #[error("{}; nothing was charged", .0.message)]
    Generation(crate::domain::JobFailure),
    /// A drop-in request ran out of time; its job finishes on its own (charged once).
    #[error(
        "the generation is taking longer than this request may wait; it completes as job {job_id}"
    )]
    StillRunning {
        /// The job, visible at `GET /api/v1/media/jobs/{id}`.
        job_id: String,
    },
    /// The job queue refused a message; any charge was refunded.
    #[error("the job queue is temporarily unavailable")]
    Queue(String),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        ServiceError::Storage(e.0)
    }
}

impl From<ObjectError> for ServiceError {
    fn from(e: ObjectError) -> Self {
        ServiceError::Storage(e.0)
    }
}

impl From<ChargeError> for ServiceError {
    fn from(e: ChargeError) -> Self {
        match e {
            ChargeError::InsufficientCredits {
                available,
                required,
            } => ServiceError::InsufficientCredits {
                required,
                available,
            },
            ChargeError::DailyLimitExceeded(e) => ServiceError::DailyLimitExceeded(e),
            ChargeError::UnknownUser => {
                ServiceError::Unauthorized("the user of this API key no longer exists")
            }
            ChargeError::Store(e) => e.into(),
        }
    }
}
