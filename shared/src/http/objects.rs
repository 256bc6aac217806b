//! Serves objects of the filesystem store through their signed, expiring URLs.

use super::error::{ApiError, HttpError};
use crate::adapters::fs_objects::FsObjectStore;
use crate::clock::Clock;
use crate::domain::media::content_type_for_key;
use crate::ports::ObjectStore;
use crate::service::ServiceError;
use crate::service::accounts::generate_request_id;
use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
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

/// The route of stored objects (`{*key}`: the key's `/` are part of the path).
pub const OBJECTS_ROUTE: &str = "/objects/{*key}";

/// `GET /objects/{key}?expires=..&sig=..`. Merged into the API's router after its fallbacks
/// were set, so it brings its own JSON 405.
pub fn objects_router(store: FsObjectStore, clock: Arc<dyn Clock>) -> Router {
    Router::new()
        .route(OBJECTS_ROUTE, get(serve_object))
        .method_not_allowed_fallback(super::method_not_allowed)
        .with_state(ObjectsState { store, clock })
}

async fn serve_object(
    State(state): State<ObjectsState>,
    key: Result<Path<String>, PathRejection>,
    signature: Result<Query<Signature>, QueryRejection>,
) -> Result<Response, ApiError> {
    let request_id = generate_request_id();
    let key = super::path_params(key, &request_id)?;
    // A query that is not one signature (a field given twice...) signs nothing: 403, in JSON.
    let Ok(Query(signature)) = signature else {
        return Err(ApiError::new(&request_id, HttpError::BadSignature));
    };
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
