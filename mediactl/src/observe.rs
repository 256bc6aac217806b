//! What `serve` shows about itself: Prometheus text at `GET /metrics`, and the dashboard page at
//! `GET /dashboard` with its data at `GET /dashboard/data.json` (the usage report of the store,
//! the same one `mediactl stats --json` prints). Answered to loopback clients only: they show
//! every account's usage and the top keys.

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use media_cache::adapters::sqlite::SqliteStore;
use media_cache::clock::Clock;
use media_cache::domain::usage::UsageReport;
use media_cache::ports::UsageScan;
use media_cache::telemetry;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

/// The page, self-contained (inline CSS and script, SVG drawn in the browser).
const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// The process's Prometheus recorder, installed on first use (one per process: servers started
/// in one process, as tests do, share it).
pub fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => {
                telemetry::describe();
                Some(handle)
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed; /metrics is off");
                None
            }
        })
        .clone()
}

#[derive(Clone)]
struct ObserveState {
    store: SqliteStore,
    source: String,
    clock: Arc<dyn Clock>,
    metrics: Option<PrometheusHandle>,
}

/// The routes of `/metrics` and the dashboard over `store` (found at `source`).
pub fn router(store: SqliteStore, source: String, clock: Arc<dyn Clock>) -> Router {
    let state = ObserveState {
        store,
        source,
        clock,
        metrics: prometheus(),
    };
    Router::new()
        .route("/metrics", get(metrics))
        .route("/dashboard", get(dashboard))
        .route("/dashboard/", get(dashboard))
        .route("/dashboard/data.json", get(data))
        .route_layer(axum::middleware::from_fn(loopback_only))
        .with_state(state)
}

/// Refuses clients that are not on this machine.
async fn loopback_only(request: Request, next: Next) -> Response {
    let local = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(peer)| peer.ip().is_loopback());
    if !local {
        return refusal(
            StatusCode::FORBIDDEN,
            "forbidden",
            "metrics and the dashboard answer clients on this machine only",
        );
    }
    next.run(request).await
}

fn refusal(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

async fn metrics(State(state): State<ObserveState>) -> Response {
    let Some(handle) = &state.metrics else {
        return refusal(
            StatusCode::NOT_IMPLEMENTED,
            "not_configured",
            "no metrics recorder in this process",
        );
    };
    // The queue's gauges are read when asked for, not kept up to date on every change.
    match state.store.queue_depth().await {
        Ok((depth, dead)) => telemetry::queue(depth, dead),
        Err(e) => tracing::warn!(error = %e, "queue depth unreadable"),
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD_HTML)
}

async fn data(State(state): State<ObserveState>) -> Response {
    match state.store.usage_records(&|_| {}).await {
        Ok(records) => {
            let report = UsageReport::of(&records, None, state.clock.now(), &state.source);
            ([(header::CACHE_CONTROL, "no-store")], axum::Json(report)).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "usage report unreadable");
            refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "the store could not be read; try again",
            )
        }
    }
}
