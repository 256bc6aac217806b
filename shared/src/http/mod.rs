//! The HTTP application (axum): routes, request parsing, answers. The same `Router` runs under
//! `mediactl serve` and, through `lambda_http`, on AWS Lambda.

mod contract;
pub mod error;
#[cfg(feature = "embedded")]
pub mod objects;
mod openai_compat;
mod routes;

pub use contract::OPENAPI_JSON;

pub use error::{ApiError, ErrorCode, HttpError};

use crate::domain::budget::next_day_start;
use crate::domain::{JobStatus, MediaType};
use crate::service::accounts::generate_request_id;
use crate::service::{
    Answer, CacheControl, CacheOutcome, CallContext, CallbackOutcome, Generation, JobTicket,
    MediaRequest, MediaService, Prefer, ServiceError,
};
use crate::telemetry;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Extension, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use chrono::{DateTime, Duration, SubsecRound, Utc};
use routes::Routes;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::sync::Arc;

/// Largest accepted request body (a 32,000-character image prompt fits with room to spare).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The largest answer a function may return: Lambda refuses response payloads over 6 MB
/// (binary bodies travel base64-encoded), less room for the headers and the event's envelope.
pub const MAX_ANSWER_BYTES: usize = 6 * 1024 * 1024 - 64 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The application.
    pub service: Arc<MediaService>,
    /// How long a result URL stays valid.
    pub url_ttl: Duration,
}

/// When the answer to this request must be sent: set by the runtime (the Lambda context's
/// deadline less a margin); without it the service's request budget applies.
#[derive(Debug, Clone, Copy)]
pub struct RequestDeadline(pub tokio::time::Instant);

/// The deadline extension, if the runtime set one.
type Deadline = Option<Extension<RequestDeadline>>;

/// The HTTP functions of the API on AWS; each serves its own routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// `POST /api/v1/media/tts`, `POST /v1/audio/speech`.
    Tts,
    /// `POST /api/v1/media/image`, `POST /v1/images/generations`.
    Image,
    /// `POST /api/v1/media/music`.
    Music,
    /// `POST /api/v1/media/video`.
    Video,
    /// `GET /api/v1/media/jobs/{id}`, `GET /api/v1/credits`, `DELETE /api/v1/cache/{key}`,
    /// provider callbacks, `GET /openapi.json`.
    Jobs,
}

impl Function {
    /// Every HTTP function.
    pub const ALL: [Function; 5] = [
        Function::Tts,
        Function::Image,
        Function::Music,
        Function::Video,
        Function::Jobs,
    ];

    /// The function's name (its binary and its `cargo lambda watch` path).
    pub fn name(self) -> &'static str {
        match self {
            Function::Tts => "tts",
            Function::Image => "image",
            Function::Music => "music",
            Function::Video => "video",
            Function::Jobs => "jobs",
        }
    }

    /// Every route goes through `Routes`, which lists them for the contract test.
    fn routes(self) -> Routes {
        match self {
            Function::Tts => counted(
                MediaType::Tts,
                Routes::new()
                    .route("/api/v1/media/tts", post(tts))
                    .route("/v1/audio/speech", post(openai_compat::speech)),
            ),
            Function::Image => counted(
                MediaType::Image,
                Routes::new()
                    .route("/api/v1/media/image", post(image))
                    .route("/v1/images/generations", post(openai_compat::images)),
            ),
            Function::Music => counted(
                MediaType::Music,
                Routes::new().route("/api/v1/media/music", post(music)),
            ),
            Function::Video => counted(
                MediaType::Video,
                Routes::new().route("/api/v1/media/video", post(video)),
            ),
            Function::Jobs => Routes::new()
                .route("/api/v1/media/jobs/{id}", get(job))
                .route("/api/v1/credits", get(credits))
                .route("/api/v1/cache/{key}", axum::routing::delete(purge))
                .route("/api/v1/callbacks/{provider}/{token}", post(callback))
                .route("/openapi.json", get(contract::openapi_json)),
        }
    }
}

/// Counts the answers of a media type's routes by outcome: the outcome an answer carries (see
/// `with_cache_headers`) or the code of an error. A replayed answer carries none and is not
/// counted again.
fn counted(media_type: MediaType, routes: Routes) -> Routes {
    routes.map_router(|router| {
        router.route_layer(axum::middleware::map_response_with_state(
            media_type,
            count_answer,
        ))
    })
}

async fn count_answer(State(media_type): State<MediaType>, response: Response) -> Response {
    let extensions = response.extensions();
    if let Some(outcome) = extensions.get::<telemetry::Outcome>() {
        telemetry::request(media_type, *outcome, None);
    } else if let Some(ErrorCode(code)) = extensions.get::<ErrorCode>() {
        telemetry::request(media_type, telemetry::Outcome::Error, Some(code));
    } else if response.status().is_client_error() || response.status().is_server_error() {
        telemetry::request(media_type, telemetry::Outcome::Error, Some("http_error"));
    }
    response
}

/// Every route of the API (what `mediactl serve` runs).
pub fn router(state: AppState) -> Router {
    finish(api_routes(), state)
}

/// Every function's routes.
fn api_routes() -> Routes {
    Function::ALL
        .into_iter()
        .fold(Routes::new(), |routes, f| routes.merge(f.routes()))
}

/// The routes one Lambda function serves, and the health check.
pub fn function_router(state: AppState, function: Function) -> Router {
    finish(function.routes(), state)
}

/// The routes every router has besides its own: the health check.
fn common_routes(routes: Routes) -> Routes {
    routes.route("/healthz", get(healthz))
}

/// Adds what every router has: the common routes, JSON 404/405, the body limit.
fn finish(routes: Routes, state: AppState) -> Router {
    common_routes(routes)
        .into_router()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Marks the answers of the fallbacks: the request matched no route (a route's own 404, say an
/// unknown job, is not marked). Invisible to clients; the contract test reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unrouted;

async fn not_found() -> Response {
    unrouted(HttpError::NotFound)
}

pub(crate) async fn method_not_allowed() -> Response {
    unrouted(HttpError::MethodNotAllowed)
}

fn unrouted(error: HttpError) -> Response {
    let mut response = ApiError::new(&generate_request_id(), error).into_response();
    response.extensions_mut().insert(Unrouted);
    response
}

async fn tts(
    State(state): State<AppState>,
    deadline: Deadline,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    generate(
        &state,
        &headers,
        deadline,
        body,
        MediaType::Tts,
        MediaRequest::Tts,
    )
    .await
}

async fn image(
    State(state): State<AppState>,
    deadline: Deadline,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    generate(
        &state,
        &headers,
        deadline,
        body,
        MediaType::Image,
        MediaRequest::Image,
    )
    .await
}

async fn music(
    State(state): State<AppState>,
    deadline: Deadline,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    generate(
        &state,
        &headers,
        deadline,
        body,
        MediaType::Music,
        MediaRequest::Music,
    )
    .await
}

async fn video(
    State(state): State<AppState>,
    deadline: Deadline,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    generate(
        &state,
        &headers,
        deadline,
        body,
        MediaType::Video,
        MediaRequest::Video,
    )
    .await
}

/// `GET /api/v1/media/jobs/{id}`: the caller's job, with fresh URLs once it is complete.
async fn job(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let call = call_context(&headers)?;
    let id = path_params(path, &call.request_id)?;
    let job = state
        .service
        .job_status(&call, &id)
        .await
        .map_err(|e| ApiError::new(&call.request_id, e))?;
    let (urls, expires_at) = presign_keys(&state, &call, &job.result_keys).await?;
    let mut body = json!({
        "id": job.id,
        "job_id": job.id,
        "status": job.status,
        "media_type": job.media_type,
        "cache_key": job.cache_key.to_string(),
        "provider": job.provider,
        "model": job.model,
        "credits_charged": job.credits_charged,
        "poll_url": poll_url(&job.id),
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "coalesced": job.leader.is_some(),
    });
    if job.status == JobStatus::Completed {
        body["url"] = json!(urls.first());
        body["urls"] = json!(urls);
        body["content_type"] = json!(job.content_type);
        body["expires_at"] = json!(expires_at);
    }
    if let Some(failure) = &job.failure {
        body["error"] = json!({"code": failure.code, "message": failure.message});
        body["refunded"] = json!(job.status == JobStatus::Failed);
    }
    let mut response = Json(body).into_response();
    set_header(&mut response, X_REQUEST_ID, &call.request_id);
    Ok(response)
}

/// `POST /api/v1/callbacks/{provider}/{token}`: a provider says a task moved. The body is not
/// read: the job is checked with the provider itself.
async fn callback(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let request_id = generate_request_id();
    let (provider, token) = path_params(path, &request_id)?;
    let outcome = state
        .service
        .callback(&provider, &token)
        .await
        .map_err(|e| ApiError::new(&request_id, e))?;
    let status = match outcome {
        CallbackOutcome::Accepted => "accepted",
        CallbackOutcome::AlreadyFinished => "already_finished",
    };
    Ok(Json(json!({"status": status})).into_response())
}

/// `DELETE /api/v1/cache/{key}` (admin keys): the entry is gone, its next request a miss.
async fn purge(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let call = call_context(&headers)?;
    let key = path_params(path, &call.request_id)?;
    state
        .service
        .purge(&call, &key)
        .await
        .map_err(|e| ApiError::new(&call.request_id, e))?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    set_header(&mut response, X_REQUEST_ID, &call.request_id);
    Ok(response)
}

/// A route's path parameters. One that is not text (invalid UTF-8 once percent-decoded) names
/// nothing the API has: 404, in JSON (axum's own answer would be a 400 in plain text).
pub(crate) fn path_params<T>(
    path: Result<Path<T>, PathRejection>,
    request_id: &str,
) -> Result<T, ApiError> {
    path.map(|Path(params)| params)
        .map_err(|_| ApiError::new(request_id, HttpError::NotFound))
}

fn poll_url(job_id: &str) -> String {
    format!("/api/v1/media/jobs/{job_id}")
}

/// Parses the body as `R` (unless the same bytes were prepared before), runs the request
/// through the service, renders the answer.
async fn generate<R: DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    deadline: Deadline,
    body: Result<Bytes, BytesRejection>,
    media_type: MediaType,
    wrap: fn(R) -> MediaRequest,
) -> Result<Response, ApiError> {
    let mut call = call_context(headers)?;
    call.deadline = deadline.map(|Extension(d)| d.0);
    let body = body_bytes(&call.request_id, body)?;
    let (prepared, remembered) = match state.service.prepared(media_type, &body) {
        Some(prepared) => (prepared, true),
        None => {
            let req = wrap(parse_json(&call.request_id, &body)?);
            let prepared = state
                .service
                .prepare(&req)
                .map_err(|e| ApiError::new(&call.request_id, e))?;
            (prepared, false)
        }
    };
    let generation = state
        .service
        .serve_prepared(&call, prepared.clone())
        .await
        .map_err(|e| ApiError::new(&call.request_id, e))?;
    if !remembered {
        state.service.remember_body(&body, &prepared);
    }
    answer(state, &call, generation).await
}

async fn credits(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let call = call_context(&headers)?;
    let statement = state
        .service
        .statement(&call, 20)
        .await
        .map_err(|e| ApiError::new(&call.request_id, e))?;
    // The daily limit on the service's clock: today's spend (0 when the stored day is older) and
    // when the day turns.
    let now = state.service.clock().now();
    let spend = statement.account.spend;
    let body = json!({
        "user_id": statement.account.user_id,
        "credits_remaining": statement.account.credits_remaining,
        "credits_used": statement.account.credits_used,
        "daily_limit": spend.limit,
        "spent_today": spend.spent_on(now),
        "day_resets_at": next_day_start(now),
        "ledger": statement.ledger,
    });
    let mut response = Json(body).into_response();
    set_header(&mut response, X_REQUEST_ID, &call.request_id);
    Ok(response)
}

/// Reads the headers the API honours. A malformed one is a 400, never ignored.
fn call_context(headers: &HeaderMap) -> Result<CallContext, ApiError> {
    let request_id = generate_request_id();
    let api_key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        })
        .filter(|t| !t.is_empty());
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let key = v.to_str().ok().map(str::trim).filter(|k| {
                !k.is_empty()
                    && k.len() <= MAX_IDEMPOTENCY_KEY_LEN
                    && k.bytes().all(|b| b.is_ascii_graphic())
            });
            let Some(key) = key else {
                return Err(ApiError::new(
                    &request_id,
                    ServiceError::BadHeader(format!(
                        "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
                    )),
                ));
            };
            Some(key.to_owned())
        }
    };
    let mut cache_control = CacheControl::default();
    for value in headers.get_all(header::CACHE_CONTROL) {
        for directive in value.to_str().unwrap_or_default().split(',') {
            let directive = directive.trim().to_ascii_lowercase();
            match directive.as_str() {
                "no-cache" => cache_control.no_cache = true,
                "no-store" => cache_control.no_store = true,
                "private" => cache_control.private = true,
                _ => {
                    if let Some(seconds) = directive.strip_prefix("max-age=") {
                        let seconds = seconds.trim_matches('"').parse::<u64>().map_err(|_| {
                            ApiError::new(
                                &request_id,
                                ServiceError::BadHeader(
                                    "Cache-Control max-age must be a whole number of seconds"
                                        .into(),
                                ),
                            )
                        })?;
                        // Of two, the stricter (RFC 9111 leaves it open; a cache may be strict).
                        cache_control.max_age =
                            Some(cache_control.max_age.map_or(seconds, |m| m.min(seconds)));
                    }
                    // Other directives (max-stale, only-if-cached...) are not honoured.
                }
            }
        }
    }
    // API Gateway sets Host to the API's domain and X-Forwarded-Proto to https.
    let origin = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .map(|host| {
            let proto = headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .filter(|p| *p == "https" || *p == "http")
                .unwrap_or("http");
            format!("{proto}://{host}")
        });
    let prefer = prefer(headers).map_err(|e| ApiError::new(&request_id, e))?;
    Ok(CallContext {
        api_key,
        request_id,
        idempotency_key,
        cache_control,
        origin,
        deadline: None,
        prefer,
    })
}

/// The preferences of RFC 7240 the API honours: `respond-async` and `wait=N` (seconds).
/// Others are ignored, as the RFC says; a `wait` that is not a number is a 400.
fn prefer(headers: &HeaderMap) -> Result<Prefer, ServiceError> {
    let mut prefer = Prefer::default();
    for value in headers.get_all("prefer") {
        let text = value.to_str().unwrap_or_default();
        for preference in text.split(',') {
            // Parameters after `;` qualify a preference; none is used here.
            let token = preference.split(';').next().unwrap_or_default().trim();
            let (name, value) = match token.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (token, None),
            };
            if name.eq_ignore_ascii_case("respond-async") {
                prefer.respond_async = true;
            } else if name.eq_ignore_ascii_case("wait") {
                let secs = value.and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| {
                    ServiceError::BadHeader("Prefer: wait must be a whole number of seconds".into())
                })?;
                prefer.wait = Some(std::time::Duration::from_secs(secs));
            }
        }
    }
    Ok(prefer)
}

/// Parses a JSON body; an oversized body is 413, anything malformed 400 with serde's reason.
fn parse_body<T: DeserializeOwned>(
    request_id: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    parse_json(request_id, &body_bytes(request_id, body)?)
}

/// The body's bytes, or why there are none (too large, not readable).
fn body_bytes(request_id: &str, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let error = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HttpError::PayloadTooLarge(MAX_BODY_BYTES)
        } else {
            HttpError::MalformedBody(rejection.body_text())
        };
        ApiError::new(request_id, error)
    })
}

/// `bytes` as JSON of `T`, or a 400 naming the field at fault.
fn parse_json<T: DeserializeOwned>(request_id: &str, bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        // Name the field when the error is inside one ("`speed`: invalid type...").
        let message = match e.path().to_string().as_str() {
            "." | "" => e.inner().to_string(),
            path => format!("`{path}`: {}", e.inner()),
        };
        ApiError::new(request_id, HttpError::MalformedBody(message))
    })?;
    de.end()
        .map_err(|e| ApiError::new(request_id, HttpError::MalformedBody(e.to_string())))?;
    Ok(value)
}

// The API's own response headers, made once (a name given as text is parsed on every insert).
pub(crate) const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub(crate) const X_CACHE_KEY: HeaderName = HeaderName::from_static("x-cache-key");
pub(crate) const X_CREDITS_CHARGED: HeaderName = HeaderName::from_static("x-credits-charged");
pub(crate) const X_CREDITS_REMAINING: HeaderName = HeaderName::from_static("x-credits-remaining");
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
pub(crate) const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

fn set_header(response: &mut Response, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, v);
    }
}

/// Fresh URLs for a result's objects, and when they expire.
async fn presign_keys(
    state: &AppState,
    call: &CallContext,
    keys: &[String],
) -> Result<(Vec<String>, DateTime<Utc>), ApiError> {
    let expires_at = (state.service.clock().now() + state.url_ttl).trunc_subsecs(0);
    let mut urls = Vec::with_capacity(keys.len());
    for key in keys {
        let url = state
            .service
            .result_url(key, expires_at)
            .await
            .map_err(|e| ApiError::new(&call.request_id, ServiceError::from(e)))?;
        urls.push(url);
    }
    Ok((urls, expires_at))
}

/// What the cache and credit headers say.
struct CacheHeaders<'a> {
    outcome: CacheOutcome,
    cache_key: &'a str,
    credits_charged: u64,
    credits_remaining: u64,
    age_seconds: Option<u64>,
    replayed: bool,
}

impl<'a> From<&'a Generation> for CacheHeaders<'a> {
    fn from(g: &'a Generation) -> Self {
        Self {
            outcome: g.outcome,
            cache_key: &g.cache_key,
            credits_charged: g.credits_charged,
            credits_remaining: g.credits_remaining,
            age_seconds: g.age_seconds,
            replayed: g.replayed,
        }
    }
}

impl<'a> From<&'a JobTicket> for CacheHeaders<'a> {
    fn from(t: &'a JobTicket) -> Self {
        Self {
            outcome: t.outcome,
            cache_key: &t.cache_key,
            credits_charged: t.credits_charged,
            credits_remaining: t.credits_remaining,
            age_seconds: None,
            replayed: t.replayed,
        }
    }
}

/// Adds the cache and credit headers of an answer.
fn with_cache_headers<'a>(
    mut response: Response,
    call: &CallContext,
    answer: impl Into<CacheHeaders<'a>>,
) -> Response {
    let h = answer.into();
    if !h.replayed {
        response.extensions_mut().insert(match h.outcome {
            CacheOutcome::Hit => telemetry::Outcome::Hit,
            CacheOutcome::Miss => telemetry::Outcome::Miss,
            CacheOutcome::Bypass => telemetry::Outcome::Bypass,
            CacheOutcome::Coalesced => telemetry::Outcome::Coalesced,
        });
    }
    set_header(&mut response, X_CACHE, h.outcome.as_str());
    set_header(&mut response, X_CACHE_KEY, h.cache_key);
    set_header(
        &mut response,
        X_CREDITS_CHARGED,
        &h.credits_charged.to_string(),
    );
    set_header(
        &mut response,
        X_CREDITS_REMAINING,
        &h.credits_remaining.to_string(),
    );
    set_header(&mut response, X_REQUEST_ID, &call.request_id);
    if h.replayed {
        set_header(&mut response, IDEMPOTENT_REPLAYED, "true");
    } else if let Some(age) = h.age_seconds {
        // RFC 9111: seconds since the stored response was made.
        set_header(&mut response, header::AGE, &age.to_string());
    }
    let applied: Vec<String> = [
        call.prefer
            .respond_async
            .then(|| "respond-async".to_owned()),
        call.prefer.wait.map(|w| format!("wait={}", w.as_secs())),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !applied.is_empty() {
        set_header(&mut response, PREFERENCE_APPLIED, &applied.join(", "));
    }
    response
}

/// Renders an answer: a result (200) or a job to poll (202).
async fn answer(
    state: &AppState,
    call: &CallContext,
    answer: Answer,
) -> Result<Response, ApiError> {
    match answer {
        Answer::Ready(generation) => result(state, call, generation).await,
        Answer::Job(ticket) => Ok(accepted(call, &ticket)),
    }
}

/// A job answer: 202 with where to poll it.
fn accepted(call: &CallContext, ticket: &JobTicket) -> Response {
    let poll = poll_url(&ticket.job_id);
    let body = json!({
        "id": ticket.job_id,
        "job_id": ticket.job_id,
        "status": ticket.status,
        "poll_url": poll,
        "media_type": ticket.media_type,
        "cached": false,
        "coalesced": ticket.outcome == crate::service::CacheOutcome::Coalesced,
        "credits_charged": ticket.credits_charged,
        "credits_remaining": ticket.credits_remaining,
        "cache_key": ticket.cache_key,
        "provider": ticket.provider,
        "model": ticket.model,
        "created_at": ticket.created_at,
    });
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    set_header(&mut response, header::LOCATION, &poll);
    with_cache_headers(response, call, ticket)
}

/// Renders a result with fresh URLs and the cache and credit headers.
async fn result(
    state: &AppState,
    call: &CallContext,
    generation: Generation,
) -> Result<Response, ApiError> {
    let (urls, expires_at) = presign_keys(state, call, &generation.object_keys).await?;
    let body = ResultBody {
        cache_expires_at: generation.cache_expires_at,
        cache_key: &generation.cache_key,
        cached: generation.outcome == crate::service::CacheOutcome::Hit,
        content_type: &generation.content_type,
        created_at: generation.created_at,
        credits_charged: generation.credits_charged,
        credits_remaining: generation.credits_remaining,
        expires_at,
        id: &generation.id,
        media_type: generation.media_type,
        model: &generation.model,
        provider: &generation.provider,
        status: "completed",
        url: urls.first().map(String::as_str),
        urls: &urls,
    };
    Ok(with_cache_headers(
        Json(body).into_response(),
        call,
        &generation,
    ))
}

/// The body of a result (the `MediaResult` schema). A struct rather than a `json!` map: every
/// hit renders one, and a map allocates each key and value on the way. Fields in alphabetical
/// order, as the map wrote them.
#[derive(serde::Serialize)]
struct ResultBody<'a> {
    cache_expires_at: Option<DateTime<Utc>>,
    cache_key: &'a str,
    cached: bool,
    content_type: &'a str,
    created_at: DateTime<Utc>,
    credits_charged: u64,
    credits_remaining: u64,
    expires_at: DateTime<Utc>,
    id: &'a str,
    media_type: MediaType,
    model: &'a str,
    provider: &'a str,
    status: &'static str,
    url: Option<&'a str>,
    urls: &'a [String],
}
