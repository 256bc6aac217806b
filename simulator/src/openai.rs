//! OpenAI's speech and image endpoints, validated like the real service.

use crate::media;
use crate::{Endpoint, FaultKind, SimState};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const VOICES: &[&str] = &[
    "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
    "marin", "cedar",
];
/// Result URLs live this long, as OpenAI's do.
const URL_LIFETIME: Duration = Duration::from_secs(60 * 60);

/// An image kept for `response_format: url`.
#[derive(Debug)]
pub(crate) struct StoredFile {
    bytes: Bytes,
    content_type: &'static str,
    expires: Instant,
}

/// An error in OpenAI's shape: `{"error":{"message","type","param","code"}}`.
pub(crate) struct OaiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    param: Option<&'static str>,
    message: String,
}

impl IntoResponse for OaiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message, "type": self.kind, "param": self.param, "code": self.code,
        }});
        (self.status, Json(body)).into_response()
    }
}

fn error(
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    param: Option<&'static str>,
    message: &str,
) -> Response {
    OaiError {
        status,
        kind,
        code,
        param,
        message: message.into(),
    }
    .into_response()
}

fn invalid_error(param: &'static str, message: &str) -> OaiError {
    OaiError {
        status: StatusCode::BAD_REQUEST,
        kind: "invalid_request_error",
        code: None,
        param: Some(param),
        message: message.into(),
    }
}

fn invalid(param: &'static str, message: &str) -> Response {
    invalid_error(param, message).into_response()
}

fn authorize(state: &SimState, headers: &HeaderMap) -> Result<(), OaiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.is_empty());
    let ok = match (&state.config.api_key, token) {
        (_, None) => false,
        (Some(expected), Some(token)) => expected == token,
        (None, Some(_)) => true,
    };
    if ok {
        Ok(())
    } else {
        Err(OaiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "invalid_request_error",
            code: Some("invalid_api_key"),
            param: None,
            message: "Incorrect API key provided.".into(),
        })
    }
}

/// Applies an injected fault; Some(response) ends the call, None goes on (maybe with an expired URL).
async fn apply_fault(fault: &Option<FaultKind>) -> Option<Response> {
    match fault.as_ref()? {
        FaultKind::RateLimit { retry_after_ms } => {
            let mut resp = error(
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                Some("rate_limit_exceeded"),
                None,
                "Rate limit reached for requests.",
            );
            let headers = resp.headers_mut();
            headers.insert("retry-after-ms", (*retry_after_ms).into());
            headers.insert("retry-after", retry_after_ms.div_ceil(1000).into());
            Some(resp)
        }
        FaultKind::InsufficientQuota => Some(error(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            Some("insufficient_quota"),
            None,
            "You exceeded your current quota, please check your plan and billing details.",
        )),
        FaultKind::ServerError { status } => Some(error(
            StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "server_error",
            None,
            None,
            "The server had an error while processing your request.",
        )),
        FaultKind::Timeout { delay_ms } => {
            tokio::time::sleep(Duration::from_millis(*delay_ms)).await;
            None
        }
        FaultKind::ContentPolicy => Some(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("content_policy_violation"),
            Some("prompt"),
            "Your request was rejected as a result of our safety system.",
        )),
        FaultKind::ProviderCode { status, .. } => Some(error(
            StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "server_error",
            None,
            None,
            "Injected provider error.",
        )),
        // Task faults concern Suno and Kling only.
        FaultKind::ExpiredUrl | FaultKind::TaskFailed { .. } | FaultKind::ResultUrl { .. } => None,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SpeechBody {
    model: String,
    input: String,
    voice: String,
    #[serde(default)]
    instructions: Option<String>,
    #[serde(default)]
    response_format: Option<String>,
    #[serde(default)]
    speed: Option<f64>,
}

pub(crate) async fn speech(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.count(Endpoint::Speech);
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    let fault = state.next_fault(Endpoint::Speech);
    if let Some(resp) = apply_fault(&fault).await {
        return resp;
    }
    let req: SpeechBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return invalid("body", &e.to_string()),
    };
    if !["tts-1", "tts-1-hd", "gpt-4o-mini-tts"].contains(&req.model.as_str()) {
        return invalid("model", &format!("Invalid model: {}", req.model));
    }
    let chars = req.input.chars().count();
    if chars == 0 || chars > 4096 {
        return invalid("input", "input must be between 1 and 4096 characters");
    }
    if !VOICES.contains(&req.voice.as_str()) {
        return invalid("voice", &format!("Invalid voice: {}", req.voice));
    }
    if req.instructions.is_some() && req.model != "gpt-4o-mini-tts" {
        return invalid(
            "instructions",
            "instructions are not supported for this model",
        );
    }
    let speed = req.speed.unwrap_or(1.0);
    if !(0.25..=4.0).contains(&speed) {
        return invalid("speed", "speed must be between 0.25 and 4.0");
    }
    let format = req.response_format.as_deref().unwrap_or("mp3");
    tokio::time::sleep(state.config.speech_latency).await;

    let seed = media::seed_of(&body);
    // Roughly 60 ms a character at speed 1, at least half a second: 4096 characters at speed
    // 0.25 are over 16 minutes, a 47 MB wav, as from the real service.
    let seconds = (chars as f64 * 0.06 / speed).max(0.5);
    let (bytes, content_type) = match format {
        "mp3" => (media::mp3(&seed, seconds), "audio/mpeg"),
        "wav" => (media::wav(&media::tone(&seed, seconds)), "audio/wav"),
        "pcm" => (media::pcm(&media::tone(&seed, seconds)), "audio/pcm"),
        "flac" => (media::flac(&media::tone(&seed, seconds)), "audio/flac"),
        "aac" => (media::aac(seconds), "audio/aac"),
        "opus" => (media::opus(seconds), "audio/ogg"),
        other => {
            return invalid(
                "response_format",
                &format!("Invalid response_format: {other}"),
            );
        }
    };
    ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImagesBody {
    prompt: String,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    quality: Option<String>,
    #[serde(default)]
    style: Option<String>,
    #[serde(default)]
    response_format: Option<String>,
    #[serde(default)]
    background: Option<String>,
    #[serde(default)]
    output_format: Option<String>,
    #[serde(default)]
    output_compression: Option<u8>,
    #[serde(default)]
    user: Option<String>,
}

/// Checks an image request like the real API; Err is the 400 answer.
fn validate_images(req: &ImagesBody) -> Result<(u32, u32), OaiError> {
    let model = req.model.as_deref().unwrap_or("dall-e-2");
    let (max_prompt, max_n, sizes, qualities): (usize, u32, &[&str], &[&str]) = match model {
        "dall-e-2" => (
            1000,
            10,
            &["256x256", "512x512", "1024x1024"],
            &["standard"],
        ),
        "dall-e-3" => (
            4000,
            1,
            &["1024x1024", "1792x1024", "1024x1792"],
            &["standard", "hd"],
        ),
        "gpt-image-1" => (
            32000,
            10,
            &["1024x1024", "1536x1024", "1024x1536", "auto"],
            &["low", "medium", "high", "auto"],
        ),
        other => return Err(invalid_error("model", &format!("Invalid model: {other}"))),
    };
    let chars = req.prompt.chars().count();
    if chars == 0 || chars > max_prompt {
        return Err(invalid_error(
            "prompt",
            &format!("prompt must be 1 to {max_prompt} characters"),
        ));
    }
    let n = req.n.unwrap_or(1);
    if n == 0 || n > max_n {
        return Err(invalid_error(
            "n",
            &format!("n must be between 1 and {max_n} for {model}"),
        ));
    }
    let size = req.size.as_deref().unwrap_or("1024x1024");
    if !sizes.contains(&size) {
        return Err(invalid_error(
            "size",
            &format!("Invalid size {size} for {model}"),
        ));
    }
    if let Some(q) = &req.quality
        && !qualities.contains(&q.as_str())
    {
        return Err(invalid_error(
            "quality",
            &format!("Invalid quality {q} for {model}"),
        ));
    }
    if req.style.is_some() && model != "dall-e-3" {
        return Err(invalid_error(
            "style",
            "style is only supported for dall-e-3",
        ));
    }
    let gpt = model == "gpt-image-1";
    if req.response_format.is_some() && gpt {
        return Err(invalid_error(
            "response_format",
            "response_format is not supported for gpt-image-1",
        ));
    }
    if !gpt
        && (req.background.is_some()
            || req.output_format.is_some()
            || req.output_compression.is_some())
    {
        return Err(invalid_error(
            "output_format",
            "output options are only supported for gpt-image-1",
        ));
    }
    let (w, h) = size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .unwrap_or((1024, 1024));
    Ok((w, h))
}

pub(crate) async fn images(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.count(Endpoint::Images);
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    let fault = state.next_fault(Endpoint::Images);
    if let Some(resp) = apply_fault(&fault).await {
        return resp;
    }
    let req: ImagesBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return invalid("body", &e.to_string()),
    };
    let (width, height) = match validate_images(&req) {
        Ok(size) => size,
        Err(e) => return e.into_response(),
    };
    let _ = &req.user;
    tokio::time::sleep(state.config.image_latency).await;

    let model = req.model.clone().unwrap_or_else(|| "dall-e-2".into());
    let format = req.output_format.clone().unwrap_or_else(|| "png".into());
    let n = req.n.unwrap_or(1);
    let body_seed = body.clone();
    let encoded = tokio::task::spawn_blocking(move || {
        (0..n)
            .map(|i| {
                let mut input = body_seed.to_vec();
                input.extend_from_slice(&i.to_le_bytes());
                let rgb = media::gradient(&media::seed_of(&input), width, height);
                match format.as_str() {
                    "jpeg" => media::jpeg(&rgb, width, height).map(|b| (b, "image/jpeg")),
                    "webp" => media::webp(&rgb, width, height).map(|b| (b, "image/webp")),
                    _ => media::png(&rgb, width, height).map(|b| (b, "image/png")),
                }
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await;
    let images = match encoded {
        Ok(Ok(images)) => images,
        _ => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                None,
                "encoding failed",
            );
        }
    };

    let wants_url = model != "gpt-image-1" && req.response_format.as_deref() != Some("b64_json");
    let expired = matches!(fault, Some(FaultKind::ExpiredUrl));
    let data: Vec<_> = images
        .into_iter()
        .enumerate()
        .map(|(i, (bytes, content_type))| {
            let mut datum = if wants_url {
                let id = format!(
                    "img-{}-{i}.{}",
                    hex::encode(&media::seed_of(&body)[..8]),
                    content_type.rsplit('/').next().unwrap_or("png")
                );
                let expires = if expired {
                    Instant::now()
                } else {
                    Instant::now() + URL_LIFETIME
                };
                state
                    .files
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        id.clone(),
                        StoredFile {
                            bytes: bytes.into(),
                            content_type,
                            expires,
                        },
                    );
                json!({"url": format!("{}/files/{id}", state.base_url())})
            } else {
                json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(&bytes)})
            };
            if model == "dall-e-3" {
                datum["revised_prompt"] = json!(req.prompt);
            }
            datum
        })
        .collect();
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Json(json!({"created": created, "data": data})).into_response()
}

pub(crate) async fn file(State(state): State<Arc<SimState>>, Path(id): Path<String>) -> Response {
    let files = state.files.lock().unwrap_or_else(|e| e.into_inner());
    match files.get(&id) {
        Some(f) if f.expires > Instant::now() => {
            ([(header::CONTENT_TYPE, f.content_type)], f.bytes.clone()).into_response()
        }
        Some(_) => (
            StatusCode::FORBIDDEN,
            "AuthenticationFailed: signed expiry time has passed",
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "BlobNotFound").into_response(),
    }
}
