//! OpenAI-compatible drop-ins, through the same cache as the native routes: an app that speaks
//! OpenAI's API only changes its base URL. `POST /v1/audio/speech` answers with the audio itself;
//! `POST /v1/images/generations` with OpenAI's `{created, data: [{url | b64_json}]}`. Credits,
//! cache headers and errors are ours.

use super::{
    ApiError, AppState, call_context, parse_body, presign_keys, set_header, with_cache_headers,
};
use crate::domain::{ImageRequest, TtsRequest, ValidationError};
use crate::service::{CallContext, Generation, MediaRequest, ServiceError};
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, header};
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
    n: Option<u32>,
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
    answer.ready().ok_or_else(|| {
        // Speech and images always answer at once.
        ApiError::new(
            &call.request_id,
            ServiceError::Storage("a speech or image request became a job".into()),
        )
    })
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
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let call = call_context(&headers)?;
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
    let mut response = audio.into_response();
    set_header(
        &mut response,
        header::CONTENT_TYPE.as_str(),
        &generation.content_type,
    );
    Ok(with_cache_headers(response, &call, &generation))
}

/// `POST /v1/images/generations`: OpenAI's answer shape, with URLs (presigned, ours) or base64.
pub(super) async fn images(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let call = call_context(&headers)?;
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
    let data: Vec<_> = if b64 {
        let engine = base64::engine::general_purpose::STANDARD;
        bytes_of(&state, &call, &generation)
            .await?
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
