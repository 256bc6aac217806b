//! OpenAI-compatible drop-ins, through the same cache as the native routes: an app that speaks
//! OpenAI's API only changes its base URL. `POST /v1/audio/speech` answers with the audio itself;
//! `POST /v1/images/generations` with OpenAI's `{created, data: [{url | b64_json}]}`. Credits,
//! cache headers and errors are ours. An answer larger than a function may return
//! (`MAX_ANSWER_BYTES`) is delivered another way: speech as a 303 redirect to the audio's URL
//! (OpenAI's SDKs follow it with a GET), images as URLs instead of base64.

use super::{
    ApiError, AppState, Deadline, MAX_ANSWER_BYTES, call_context, parse_body, presign_keys,
    set_header, with_cache_headers,
};
use crate::domain::{ImageRequest, TtsRequest, ValidationError};
use crate::service::{Answer, CallContext, Generation, MediaRequest, ServiceError};
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::json;

/// OpenAI's speech body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SpeechBody {
    model: Option<String>,
    input: Option<String>,
    voice: Option<String>,
    response_format: Option<String>,
    speed: Option<f64>,
    instructions: Option<String>,
    /// Accepted and ignored: it does not change the audio.
    #[serde(rename = "user")]
    _user: Option<IgnoredAny>,
}

/// OpenAI's image generation body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ImagesBody {
    prompt: Option<String>,
    model: Option<String>,
    #[serde(default, deserialize_with = "crate::domain::error::whole_number")]
    n: Option<i64>,
    size: Option<String>,
    quality: Option<String>,
    style: Option<String>,
    response_format: Option<String>,
    background: Option<String>,
    output_format: Option<String>,
    /// Accepted and ignored: it does not change the images.
    #[serde(rename = "user")]
    _user: Option<IgnoredAny>,
}

/// Names a parameter error by OpenAI's field names (`input`, `response_format`).
fn openai_field_names(error: ServiceError) -> ServiceError {
    match error {
        ServiceError::Invalid(v) => {
            let field = match v.field {
                "text" => "input",
                "format" => "response_format",
                other => other,
            };
            ServiceError::Invalid(ValidationError::new(field, v.message))
        }
        other => other,
    }
}

/// Runs the request; a drop-in answers only with the result (OpenAI's API has no jobs), so
/// it asks for no `Prefer` and an answer that is still a job when the budget runs out is a 504
/// whose job settles (and is delivered to the native job route) on its own.
async fn run(
    state: &AppState,
    call: &CallContext,
    req: MediaRequest,
) -> Result<Generation, ApiError> {
    let answer = state
        .service
        .generate(call, &req)
        .await
        .map_err(|e| ApiError::new(&call.request_id, openai_field_names(e)))?;
    match answer {
        Answer::Ready(generation) => Ok(generation),
        Answer::Job(ticket) => Err(ApiError::new(
            &call.request_id,
            ServiceError::StillRunning {
                job_id: ticket.job_id,
            },
        )),
    }
}

/// The bytes of a result's objects, in order.
async fn bytes_of(
    state: &AppState,
    call: &CallContext,
    generation: &Generation,
) -> Result<Vec<Bytes>, ApiError> {
    let mut all = Vec::with_capacity(generation.object_keys.len());
    for key in &generation.object_keys {
        let bytes = state
            .service
            .objects()
            .get(key)
            .await
            .map_err(|e| ApiError::new(&call.request_id, ServiceError::from(e)))?
            .ok_or_else(|| {
                ApiError::new(
                    &call.request_id,
                    ServiceError::Storage(format!("object {key} is missing")),
                )
            })?;
        all.push(bytes);
    }
    Ok(all)
}

/// `POST /v1/audio/speech`: the audio bytes, with our cache and credit headers.
pub(super) async fn speech(
    State(state): State<AppState>,
    deadline: Deadline,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let mut call = call_context(&headers)?;
    call.deadline = deadline.map(|d| d.0.0);
    call.prefer = Default::default();
    let body: SpeechBody = parse_body(&call.request_id, body)?;
    let req = MediaRequest::Tts(TtsRequest {
        text: body.input,
        voice: body.voice,
        model: body.model,
        format: body.response_format,
        speed: body.speed,
        instructions: body.instructions,
    });
    let generation = run(&state, &call, req).await?;
    let audio = bytes_of(&state, &call, &generation)
        .await?
        .into_iter()
        .next()
        .unwrap_or_default();
    // Binary bodies leave a function base64-encoded: 4 bytes for every 3.
    if audio.len().div_ceil(3) * 4 > MAX_ANSWER_BYTES {
        let (urls, _) = presign_keys(&state, &call, &generation.object_keys).await?;
        let mut response = StatusCode::SEE_OTHER.into_response();
        set_header(
            &mut response,
            header::LOCATION,
            urls.first().map_or("", String::as_str),
        );
        return Ok(with_cache_headers(response, &call, &generation));
    }
    let mut response = audio.into_response();
    set_header(
        &mut response,
        header::CONTENT_TYPE,
        &generation.content_type,
    );
    Ok(with_cache_headers(response, &call, &generation))
}

/// `POST /v1/images/generations`: OpenAI's answer shape, with URLs (presigned, ours) or base64.
pub(super) async fn images(
    State(state): State<AppState>,
    deadline: Deadline,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let mut call = call_context(&headers)?;
    call.deadline = deadline.map(|d| d.0.0);
    call.prefer = Default::default();
    let body: ImagesBody = parse_body(&call.request_id, body)?;
    // OpenAI's defaults, not the native route's: dall-e-2, and URLs except for gpt-image-1.
    let model = body.model.unwrap_or_else(|| "dall-e-2".into());
    let b64 = match body.response_format.as_deref() {
        None | Some("url") => model.trim().eq_ignore_ascii_case("gpt-image-1"),
        Some("b64_json") => true,
        Some(other) => {
            return Err(ApiError::new(
                &call.request_id,
                ServiceError::Invalid(ValidationError::new(
                    "response_format",
                    format!("must be url or b64_json (got {other:?})"),
                )),
            ));
        }
    };
    let req = MediaRequest::Image(ImageRequest {
        prompt: body.prompt,
        model: Some(model),
        size: body.size,
        quality: body.quality,
        style: body.style,
        n: body.n,
        background: body.background,
        output_format: body.output_format,
    });
    let generation = run(&state, &call, req).await?;
    let images = if b64 {
        bytes_of(&state, &call, &generation).await?
    } else {
        Vec::new()
    };
    let encoded: usize = images.iter().map(|b| b.len().div_ceil(3) * 4).sum();
    let data: Vec<_> = if b64 && encoded <= MAX_ANSWER_BYTES {
        let engine = base64::engine::general_purpose::STANDARD;
        images
            .iter()
            .map(|b| json!({"b64_json": engine.encode(b)}))
            .collect()
    } else {
        let (urls, _) = presign_keys(&state, &call, &generation.object_keys).await?;
        urls.into_iter().map(|url| json!({"url": url})).collect()
    };
    let body = json!({"created": generation.created_at.timestamp(), "data": data});
    Ok(with_cache_headers(
        Json(body).into_response(),
        &call,
        &generation,
    ))
}
