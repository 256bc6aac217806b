//! Serves objects of the filesystem store through their signed, expiring URLs.

use super::error::{ApiError, HttpError};
use crate::adapters::fs_objects::FsObjectStore;
use crate::clock::Clock;
use crate::domain::media::content_type_for_key;
use crate::ports::ObjectStore;
use crate::service::ServiceError;
use crate::service::accounts::generate_request_id;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Clone)]
struct ObjectsState {
    store: FsObjectStore,
    clock: Arc<dyn Clock>,
}

#[derive(Deserialize)]
struct Signature {
    expires: Option<String>,
    sig: Option<String>,
}

/// `GET /objects/{key}?expires=..&sig=..`.
pub fn objects_router(store: FsObjectStore, clock: Arc<dyn Clock>) -> Router {
    Router::new()
        .route("/objects/{*key}", get(serve_object))
        .with_state(ObjectsState { store, clock })
}

async fn serve_object(
    State(state): State<ObjectsState>,
    Path(key): Path<String>,
    Query(signature): Query<Signature>,
) -> Result<Response, ApiError> {
    let request_id = generate_request_id();
    let expires = signature.expires.and_then(|e| e.parse::<i64>().ok());
    let (Some(expires), Some(sig)) = (expires, signature.sig) else {
        return Err(ApiError::new(&request_id, HttpError::BadSignature));
    };
    if !state
        .store
        .signer()
        .verify(&key, expires, &sig, state.clock.now())
    {
        return Err(ApiError::new(&request_id, HttpError::BadSignature));
    }
    let bytes = state
        .store
        .get(&key)
        .await
        .map_err(|e| ApiError::new(&request_id, ServiceError::from(e)))?
        .ok_or_else(|| ApiError::new(&request_id, HttpError::NotFound))?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type_for_key(&key)),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        bytes,
    )
        .into_response())
}
