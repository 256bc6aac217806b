//! Suno's and Kling's long-task APIs: create a task, query it, download its results, and call the
//! task's callback URL when it finishes. Tasks finish `task_duration` after creation, unless a
//! test holds them at a stage (`SimState::hold_tasks`).

use crate::media;
use crate::{Endpoint, FaultKind, SimState, TaskStage};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which provider made a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Provider {
    Suno,
    Kling,
}

/// A task the simulator is "working on".
#[derive(Debug, Clone)]
pub(crate) struct SimTask {
    provider: Provider,
    created: Instant,
    duration: Duration,
    seed: [u8; 32],
    /// Video length in seconds (Kling).
    seconds: u32,
    /// Ends failed with (Suno status, message).
    failure: Option<(String, String)>,
    /// Result URLs answer 404.
    expired: bool,
    /// Where the results claim to be instead of `/results/...` (a `ResultUrl` fault).
    result_url: Option<String>,
    /// The stage a test holds every task at, when it does (read with the task).
    held: Option<TaskStage>,
}

impl SimTask {
    fn done(&self) -> bool {
        self.third() == 3
    }

    /// Progress through the task in thirds (Suno's stages).
    fn third(&self) -> u32 {
        if let Some(stage) = self.held {
            return stage as u32;
        }
        if self.duration.is_zero() {
            return 3;
        }
        ((self.created.elapsed().as_secs_f64() / self.duration.as_secs_f64()) * 3.0).min(3.0) as u32
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .filter(|t| !t.is_empty())
}

fn suno(status: StatusCode, code: i64, msg: &str, data: Value) -> Response {
    (
        status,
        Json(json!({"code": code, "msg": msg, "data": data})),
    )
        .into_response()
}

fn kling(status: StatusCode, code: i64, message: &str, data: Value) -> Response {
    let body = json!({"code": code, "message": message, "request_id": "sim", "data": data});
    (status, Json(body)).into_response()
}

/// An injected fault as each provider would answer it; None goes on (maybe marking the task).
async fn fault_response(provider: Provider, fault: &FaultKind) -> Option<Response> {
    let answer = |status: u16, code: i64, msg: &str| {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Some(match provider {
            Provider::Suno => suno(status, code, msg, Value::Null),
            Provider::Kling => kling(status, code, msg, Value::Null),
        })
    };
    match (provider, fault) {
        (_, FaultKind::ProviderCode { status, code }) => answer(*status, *code, "injected fault"),
        (Provider::Suno, FaultKind::RateLimit { .. }) => {
            answer(200, 430, "call frequency too high")
        }
        (Provider::Kling, FaultKind::RateLimit { .. }) => answer(429, 1302, "rate limit exceeded"),
        (Provider::Suno, FaultKind::InsufficientQuota) => answer(200, 429, "insufficient credits"),
        (Provider::Kling, FaultKind::InsufficientQuota) => answer(429, 1102, "balance not enough"),
        (Provider::Suno, FaultKind::ServerError { status }) => answer(*status, 500, "server error"),
        (Provider::Kling, FaultKind::ServerError { status }) => {
            answer(*status, 5000, "server error")
        }
        (Provider::Suno, FaultKind::ContentPolicy) => {
            answer(200, 400, "prompt contains sensitive words")
        }
        (Provider::Kling, FaultKind::ContentPolicy) => {
            answer(400, 1301, "content safety check failed")
        }
        (_, FaultKind::Timeout { delay_ms }) => {
            tokio::time::sleep(Duration::from_millis(*delay_ms)).await;
            None
        }
        (_, FaultKind::ExpiredUrl | FaultKind::TaskFailed { .. } | FaultKind::ResultUrl { .. }) => {
            None
        }
    }
}

/// Records a new task and, if asked, calls back when it finishes.
fn create_task(
    state: &Arc<SimState>,
    provider: Provider,
    fault: Option<FaultKind>,
    seed_input: &[u8],
    seconds: u32,
    callback: Option<String>,
) -> String {
    let seed = media::seed_of(seed_input);
    let id = {
        let mut tasks = state.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let id = format!("{}{:06}", hex::encode(&seed[..6]), tasks.len() + 1);
        let failure = match &fault {
            Some(FaultKind::TaskFailed { status, message }) => Some((
                status
                    .clone()
                    .unwrap_or_else(|| "GENERATE_AUDIO_FAILED".into()),
                message
                    .clone()
                    .unwrap_or_else(|| "generation failed".into()),
            )),
            _ => None,
        };
        tasks.insert(
            id.clone(),
            SimTask {
                provider,
                created: Instant::now(),
                duration: state.config.task_duration,
                seed,
                seconds,
                failure,
                expired: matches!(fault, Some(FaultKind::ExpiredUrl)),
                result_url: match &fault {
                    Some(FaultKind::ResultUrl { url }) => Some(url.clone()),
                    _ => None,
                },
                held: None,
            },
        );
        id
    };
    if let Some(url) = callback.filter(|_| state.config.callbacks) {
        let state = Arc::clone(state);
        let task_id = id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(state.config.task_duration).await;
            state.until_tasks_may_finish().await;
            let Some(body) = callback_body(&state, &task_id) else {
                return;
            };
            let client = reqwest::Client::new();
            if let Err(e) = client.post(&url).json(&body).send().await {
                tracing::warn!(error = %e, url, "callback failed");
            }
        });
    }
    id
}

fn task(state: &SimState, id: &str) -> Option<SimTask> {
    let mut task = state
        .tasks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(id)
        .cloned()?;
    task.held = state.held_stage();
    Some(task)
}

fn result_url(state: &SimState, task_id: &str, n: usize, ext: &str) -> String {
    if let Some(url) = task(state, task_id).and_then(|t| t.result_url) {
        return url;
    }
    format!("{}/results/{task_id}-{n}.{ext}", state.base_url())
}

/// `GET /endless`: a video that never ends (stops after 1 GiB, so nothing runs forever), for
/// the API's download cap.
pub async fn endless() -> axum::response::Response {
    use axum::response::IntoResponse;
    const CHUNK: usize = 64 * 1024;
    let chunks = futures_util::stream::iter(0..(1usize << 30) / CHUNK)
        .map(|_| Ok::<_, std::convert::Infallible>(bytes::Bytes::from_static(&[0u8; CHUNK])));
    (
        [(axum::http::header::CONTENT_TYPE, "video/mp4")],
        axum::body::Body::from_stream(chunks),
    )
        .into_response()
}

fn suno_songs(state: &SimState, id: &str, t: &SimTask, snake: bool) -> Value {
    let songs: Vec<Value> = (0..2)
        .map(|n| {
            let url = result_url(state, id, n, "mp3");
            let (audio, image) = if snake {
                ("audio_url", "image_url")
            } else {
                ("audioUrl", "imageUrl")
            };
            json!({
                "id": format!("{id}-{n}"),
                audio: url,
                if snake { "stream_audio_url" } else { "streamAudioUrl" }: url,
                image: Value::Null,
                "title": "Simulated song",
                "tags": "simulated",
                "duration": 2.0 + f64::from(t.seed[n] % 3),
            })
        })
        .collect();
    json!(songs)
}

fn kling_task(state: &SimState, id: &str, t: &SimTask) -> Value {
    let (status, msg) = match (&t.failure, t.done()) {
        (_, false) if t.third() == 0 => ("submitted", String::new()),
        (_, false) => ("processing", String::new()),
        (Some((_, message)), true) => ("failed", message.clone()),
        (None, true) => ("succeed", String::new()),
    };
    let mut data = json!({
        "task_id": id,
        "task_status": status,
        "task_status_msg": msg,
        "created_at": 0,
        "updated_at": 0,
    });
    if status == "succeed" {
        data["task_result"] = json!({"videos": [{
            "id": format!("{id}-0"),
            "url": result_url(state, id, 0, "mp4"),
            "duration": t.seconds.to_string(),
        }]});
    }
    data
}

fn suno_record(state: &SimState, id: &str, t: &SimTask) -> Value {
    let status = match (&t.failure, t.third()) {
        (_, 0) => "PENDING".to_owned(),
        (_, 1) => "TEXT_SUCCESS".to_owned(),
        (_, 2) => "FIRST_SUCCESS".to_owned(),
        (Some((status, _)), _) => status.clone(),
        (None, _) => "SUCCESS".to_owned(),
    };
    let mut data = json!({
        "taskId": id,
        "status": status,
        "errorCode": Value::Null,
        "errorMessage": Value::Null,
        "response": {"taskId": id, "sunoData": []},
    });
    if let (Some((_, message)), true) = (&t.failure, t.done()) {
        data["errorCode"] = json!(400);
        data["errorMessage"] = json!(message);
    }
    if status == "SUCCESS" {
        data["response"]["sunoData"] = suno_songs(state, id, t, false);
    }
    data
}

/// What a finished task posts to its callback URL.
fn callback_body(state: &SimState, id: &str) -> Option<Value> {
    let t = task(state, id)?;
    Some(match t.provider {
        Provider::Suno => match &t.failure {
            Some((_, message)) => json!({"code": 400, "msg": message, "data": {
                "callbackType": "error", "task_id": id, "data": []}}),
            None => json!({"code": 200, "msg": "All generated successfully.", "data": {
                "callbackType": "complete", "task_id": id, "data": suno_songs(state, id, &t, true)}}),
        },
        Provider::Kling => kling_task(state, id, &t),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SunoGenerate {
    custom_mode: Option<bool>,
    instrumental: Option<bool>,
    model: Option<String>,
    call_back_url: Option<String>,
    prompt: Option<String>,
    style: Option<String>,
    title: Option<String>,
}

/// `POST /api/v1/generate`.
pub(crate) async fn suno_generate(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Result<Json<SunoGenerate>, axum::extract::rejection::JsonRejection>,
) -> Response {
    state.count(Endpoint::SunoGenerate);
    let bad = |msg: &str| suno(StatusCode::OK, 400, msg, Value::Null);
    if bearer(&headers).is_none() {
        return suno(StatusCode::UNAUTHORIZED, 401, "unauthorized", Value::Null);
    }
    let fault = state.next_fault(Endpoint::SunoGenerate);
    if let Some(fault) = &fault
        && let Some(response) = fault_response(Provider::Suno, fault).await
    {
        return response;
    }
    let Ok(Json(req)) = body else {
        return bad("invalid JSON body");
    };
    let (Some(custom), Some(instrumental), Some(model)) =
        (req.custom_mode, req.instrumental, req.model.as_deref())
    else {
        return bad("customMode, instrumental and model are required");
    };
    if !["V4", "V4_5", "V4_5PLUS", "V5"].contains(&model) {
        return bad("invalid model");
    }
    if req.call_back_url.as_deref().unwrap_or_default().is_empty() {
        return bad("callBackUrl is required");
    }
    let prompt = req.prompt.clone().unwrap_or_default();
    if custom {
        if req.style.as_deref().unwrap_or_default().is_empty()
            || req.title.as_deref().unwrap_or_default().is_empty()
        {
            return bad("style and title are required in custom mode");
        }
        if !instrumental && prompt.is_empty() {
            return bad("prompt is required unless instrumental");
        }
    } else if prompt.is_empty() {
        return bad("prompt is required");
    } else if prompt.chars().count() > 500 {
        return suno(StatusCode::OK, 413, "prompt too long", Value::Null);
    }
    let seed_input = format!(
        "suno|{custom}|{instrumental}|{model}|{prompt}|{:?}|{:?}",
        req.style, req.title
    );
    let id = create_task(
        &state,
        Provider::Suno,
        fault,
        seed_input.as_bytes(),
        0,
        req.call_back_url,
    );
    suno(StatusCode::OK, 200, "success", json!({"taskId": id}))
}

/// `GET /api/v1/generate/record-info?taskId=`.
pub(crate) async fn suno_record_info(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    state.count(Endpoint::SunoRecordInfo);
    if bearer(&headers).is_none() {
        return suno(StatusCode::UNAUTHORIZED, 401, "unauthorized", Value::Null);
    }
    if let Some(fault) = state.next_fault(Endpoint::SunoRecordInfo)
        && let Some(response) = fault_response(Provider::Suno, &fault).await
    {
        return response;
    }
    let id = query.get("taskId").cloned().unwrap_or_default();
    match task(&state, &id).filter(|t| t.provider == Provider::Suno) {
        Some(t) => suno(StatusCode::OK, 200, "success", suno_record(&state, &id, &t)),
        None => suno(StatusCode::OK, 400, "task not found", Value::Null),
    }
}

/// Kling's bearer: any non-empty token, or (with a configured secret) a valid HS256 JWT. The
/// refusal is the answer to send.
fn kling_authorized(state: &SimState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let denied = |code, msg: &str| {
        Err(Box::new(kling(
            StatusCode::UNAUTHORIZED,
            code,
            msg,
            Value::Null,
        )))
    };
    let Some(token) = bearer(headers) else {
        return denied(1000, "authorization missing");
    };
    let Some(secret) = &state.config.kling_secret else {
        return Ok(());
    };
    let key = jsonwebtoken::DecodingKey::from_secret(secret.as_bytes());
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "nbf", "iss"]);
    validation.validate_nbf = true;
    match jsonwebtoken::decode::<Value>(token, &key, &validation) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
            denied(1004, "token expired")
        }
        Err(_) => denied(1002, "token invalid"),
    }
}

#[derive(Deserialize)]
pub(crate) struct KlingCreate {
    model_name: Option<String>,
    prompt: Option<String>,
    negative_prompt: Option<String>,
    cfg_scale: Option<f64>,
    mode: Option<String>,
    aspect_ratio: Option<String>,
    duration: Option<String>,
    callback_url: Option<String>,
    image: Option<String>,
}

/// `POST /v1/videos/text2video` and `/v1/videos/image2video`.
pub(crate) async fn kling_create(
    State(state): State<Arc<SimState>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Result<Json<KlingCreate>, axum::extract::rejection::JsonRejection>,
) -> Response {
    state.count(Endpoint::KlingCreate);
    if let Err(denied) = kling_authorized(&state, &headers) {
        return *denied;
    }
    let fault = state.next_fault(Endpoint::KlingCreate);
    if let Some(fault) = &fault
        && let Some(response) = fault_response(Provider::Kling, fault).await
    {
        return response;
    }
    let bad = |msg: &str| kling(StatusCode::BAD_REQUEST, 1201, msg, Value::Null);
    let Ok(Json(req)) = body else {
        return bad("invalid JSON body");
    };
    let image_to_video = match kind.as_str() {
        "text2video" => false,
        "image2video" => true,
        _ => return kling(StatusCode::NOT_FOUND, 1202, "no such endpoint", Value::Null),
    };
    if image_to_video && req.image.as_deref().unwrap_or_default().is_empty() {
        return bad("image is required");
    }
    if !image_to_video
        && !["16:9", "9:16", "1:1"].contains(&req.aspect_ratio.as_deref().unwrap_or("16:9"))
    {
        return bad("invalid aspect_ratio");
    }
    let prompt = req.prompt.clone().unwrap_or_default();
    if prompt.chars().count() > 2500 || (!image_to_video && prompt.is_empty()) {
        return bad("invalid prompt");
    }
    let seconds = match req.duration.as_deref().unwrap_or("5") {
        "5" => 5,
        "10" => 10,
        _ => return bad("duration must be \"5\" or \"10\""),
    };
    if !["std", "pro"].contains(&req.mode.as_deref().unwrap_or("std"))
        || !(0.0..=1.0).contains(&req.cfg_scale.unwrap_or(0.5))
    {
        return bad("invalid mode or cfg_scale");
    }
    let seed_input = format!(
        "kling|{kind}|{:?}|{prompt}|{:?}|{:?}|{:?}|{:?}|{seconds}|{:?}",
        req.model_name, req.negative_prompt, req.cfg_scale, req.mode, req.aspect_ratio, req.image
    );
    let id = create_task(
        &state,
        Provider::Kling,
        fault,
        seed_input.as_bytes(),
        seconds,
        req.callback_url,
    );
    kling(
        StatusCode::OK,
        0,
        "SUCCEED",
        json!({"task_id": id, "task_status": "submitted", "created_at": 0, "updated_at": 0}),
    )
}

/// `GET /v1/videos/{kind}/{task_id}`.
pub(crate) async fn kling_query(
    State(state): State<Arc<SimState>>,
    Path((_kind, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    state.count(Endpoint::KlingQuery);
    if let Err(denied) = kling_authorized(&state, &headers) {
        return *denied;
    }
    if let Some(fault) = state.next_fault(Endpoint::KlingQuery)
        && let Some(response) = fault_response(Provider::Kling, &fault).await
    {
        return response;
    }
    match task(&state, &id).filter(|t| t.provider == Provider::Kling) {
        Some(t) => kling(StatusCode::OK, 0, "SUCCEED", kling_task(&state, &id, &t)),
        None => kling(StatusCode::NOT_FOUND, 1203, "task not found", Value::Null),
    }
}

/// `GET /results/{task}-{n}.{mp3,mp4}`: a finished task's media.
pub(crate) async fn result(
    State(state): State<Arc<SimState>>,
    Path(file): Path<String>,
) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "no such result").into_response();
    let Some((stem, ext)) = file.rsplit_once('.') else {
        return not_found();
    };
    let Some((id, n)) = stem.rsplit_once('-') else {
        return not_found();
    };
    let n: u8 = n.parse().unwrap_or(u8::MAX);
    let Some(t) = task(&state, id).filter(|t| t.done() && t.failure.is_none() && !t.expired) else {
        return not_found();
    };
    let mut seed = t.seed;
    seed[0] ^= n;
    let (bytes, content_type) = match (t.provider, ext, n) {
        (Provider::Suno, "mp3", 0 | 1) => (
            media::mp3(&seed, 2.0 + f64::from(t.seed[n as usize] % 3)),
            "audio/mpeg",
        ),
        (Provider::Kling, "mp4", 0) => match media::mp4(&seed, t.seconds) {
            Ok(bytes) => (bytes, "video/mp4"),
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        },
        _ => return not_found(),
    };
    ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
}
