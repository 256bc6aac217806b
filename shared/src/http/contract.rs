//! The API's contract: `openapi.yaml` at the repository root, turned into JSON when the crate is
//! built (`build.rs`) and served at `GET /openapi.json`. The tests below hold the router, the
//! SAM template and the document to the same set of operations.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The OpenAPI document, as JSON.
pub const OPENAPI_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

/// `GET /openapi.json`: the contract, no auth.
pub(super) async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

#[cfg(all(test, feature = "embedded"))]
mod tests {
    use super::OPENAPI_JSON;
    use crate::adapters::fs_objects::{FsObjectStore, UrlSigner};
    use crate::adapters::openai::{OpenAiClient, OpenAiConfig};
    use crate::adapters::sqlite::SqliteStore;
    use crate::clock::SystemClock;
    use crate::domain::PriceTable;
    use crate::http::objects::{OBJECTS_ROUTE, objects_router};
    use crate::http::{AppState, Function, Unrouted, api_routes, common_routes, function_router};
    use crate::service::MediaService;
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use serde_json::Value;
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use tower::ServiceExt;

    /// (method, path) with OpenAPI's spelling of parameters (`{key}`, not axum's `{*key}`).
    type Operation = (String, String);

    /// The methods an OpenAPI path item may have, but HEAD: axum answers HEAD on every GET route
    /// by itself, and the document does not list it.
    const METHODS: [Method; 7] = [
        Method::GET,
        Method::PUT,
        Method::POST,
        Method::DELETE,
        Method::OPTIONS,
        Method::PATCH,
        Method::TRACE,
    ];

    fn spec() -> Value {
        serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON")
    }

    /// Every operation of the document; with `local` false, without those marked
    /// `x-local-only` (served by `mediactl serve` alone, not by a function).
    fn spec_operations(local: bool) -> BTreeSet<Operation> {
        let spec = spec();
        let mut operations = BTreeSet::new();
        for (path, item) in spec["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("a path item") {
                let is_method = METHODS
                    .iter()
                    .any(|m| m.as_str().eq_ignore_ascii_case(method));
                let local_only = operation["x-local-only"] == Value::Bool(true);
                if is_method && (local || !local_only) {
                    operations.insert((method.to_ascii_uppercase(), path.clone()));
                }
            }
        }
        operations
    }

    /// axum's `{*name}` (a wildcard) is OpenAPI's `{name}`.
    fn openapi_path(axum_path: &str) -> String {
        axum_path.replace("{*", "{")
    }

    /// A request path for a route: every parameter given a value.
    fn concrete(path: &str) -> String {
        path.split('/')
            .map(|segment| {
                if segment.starts_with("{*") {
                    "tts/contract.mp3"
                } else if segment.starts_with('{') {
                    "contract"
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Whether `app` routes `method` on `path`: the answer did not come from the fallbacks of
    /// `finish` (they mark theirs `Unrouted`; a route's own 404, say an unknown job, does not).
    /// axum's bare 405 (no JSON body) means a router was merged after the fallbacks were set.
    async fn routed(app: &Router, method: &Method, path: &str) -> bool {
        let request = Request::builder()
            .method(method.clone())
            .uri(concrete(path))
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let unrouted = response.extensions().get::<Unrouted>().is_some();
        assert!(
            unrouted || response.status() != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: a 405 that is not the API's JSON answer (a router merged after \
             `finish` set the fallbacks?)"
        );
        !unrouted
    }

    /// Every (method, path) `app` routes among `paths`, asking it each method.
    async fn routed_operations(app: &Router, paths: &[&str]) -> BTreeSet<Operation> {
        let mut operations = BTreeSet::new();
        for path in paths {
            for method in &METHODS {
                if routed(app, method, path).await {
                    operations.insert((method.to_string(), openapi_path(path)));
                }
            }
        }
        operations
    }

    fn state(dir: &std::path::Path) -> (AppState, FsObjectStore) {
        let store = SqliteStore::open(&dir.join("media.db")).unwrap();
        let objects = FsObjectStore::new(
            dir.join("objects"),
            "http://127.0.0.1:8080",
            UrlSigner::new(vec![7u8; 32]),
        );
        // Never called: the probes carry no API key.
        let openai =
            Arc::new(OpenAiClient::new(OpenAiConfig::new("http://127.0.0.1:9", "unused")).unwrap());
        let service = MediaService::new(
            Arc::new(store),
            Arc::new(objects.clone()),
            openai.clone(),
            openai,
            PriceTable::default(),
            Arc::new(SystemClock),
        );
        let state = AppState {
            service: Arc::new(service),
            url_ttl: chrono::Duration::hours(1),
        };
        (state, objects)
    }

    fn difference(a: &BTreeSet<Operation>, b: &BTreeSet<Operation>) -> Vec<String> {
        a.difference(b).map(|(m, p)| format!("{m} {p}")).collect()
    }

    #[tokio::test]
    async fn the_router_of_serve_routes_exactly_the_operations_of_openapi_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let (state, objects) = state(dir.path());
        // What `mediactl serve` runs (less /metrics and the dashboard, which are not the API).
        let app = crate::http::router(state).merge(objects_router(objects, Arc::new(SystemClock)));
        let mut paths = common_routes(api_routes()).paths().to_vec();
        paths.push(OBJECTS_ROUTE);

        let routed = routed_operations(&app, &paths).await;
        let documented = spec_operations(true);
        let undocumented = difference(&routed, &documented);
        let unrouted = difference(&documented, &routed);
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "the router and openapi.yaml disagree.\n  routed, not in openapi.yaml: \
             {undocumented:?}\n  in openapi.yaml, not routed: {unrouted:?}"
        );
    }

    /// The (function binary, method, path) of every HttpApi event of template.yaml.
    fn template_routes() -> BTreeSet<(String, String, String)> {
        let template = include_str!("../../../template.yaml");
        let mut routes = BTreeSet::new();
        let mut binary = String::new();
        let mut path: Option<String> = None;
        for line in template.lines() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix("Binary: ") {
                binary = name.trim().to_owned();
            } else if let Some(p) = line.strip_prefix("Path: ") {
                path = Some(p.trim().to_owned());
            } else if let Some(method) = line.strip_prefix("Method: ") {
                let path = path.take().expect("a Path before each Method");
                routes.insert((binary.clone(), method.trim().to_ascii_uppercase(), path));
            }
        }
        routes
    }

    #[tokio::test]
    async fn api_gateway_sends_each_operation_to_a_function_that_routes_it() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = state(dir.path());
        let routes = template_routes();
        assert!(
            routes.len() >= 10,
            "template.yaml's events were read: {routes:?}"
        );
        for (binary, method, path) in &routes {
            let function = Function::ALL
                .into_iter()
                .find(|f| f.name() == binary)
                .unwrap_or_else(|| panic!("template.yaml routes {method} {path} to {binary}"));
            let app = function_router(state.clone(), function);
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert!(
                routed(&app, &method, path).await,
                "template.yaml sends {method} {path} to {binary}, whose router does not route it"
            );
        }
        let in_template: BTreeSet<Operation> = routes.into_iter().map(|(_, m, p)| (m, p)).collect();
        let missing = difference(&spec_operations(false), &in_template);
        assert!(
            missing.is_empty(),
            "in openapi.yaml but no HttpApi event of template.yaml: {missing:?}"
        );
    }

    /// Sends `method` `uri` to `app`; the status and the JSON error code of the answer.
    async fn error_code(app: &Router, method: &str, uri: &str) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let json: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("{method} {uri}: not JSON: {body:?}"));
        (status, json["error"]["code"].clone())
    }

    #[tokio::test]
    async fn a_path_parameter_that_is_not_utf8_is_a_json_404_on_every_route() {
        let dir = tempfile::tempdir().unwrap();
        let (state, objects) = state(dir.path());
        let app = crate::http::router(state).merge(objects_router(objects, Arc::new(SystemClock)));
        for (method, path) in spec_operations(true) {
            if !path.contains('{') {
                continue;
            }
            // Every parameter percent-encodes a byte that is not UTF-8.
            let uri = path
                .split('/')
                .map(|s| if s.starts_with('{') { "%FF" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            let (status, code) = error_code(&app, &method, &uri).await;
            assert_eq!(
                (status, code),
                (StatusCode::NOT_FOUND, Value::from("not_found")),
                "{method} {uri}"
            );
        }
    }

    #[tokio::test]
    async fn an_object_url_whose_query_is_not_one_signature_is_a_json_403() {
        let dir = tempfile::tempdir().unwrap();
        let (_, objects) = state(dir.path());
        let app = objects_router(objects, Arc::new(SystemClock));
        let uri = "/objects/tts/a.mp3?expires=1&expires=2&sig=x";
        let (status, code) = error_code(&app, "GET", uri).await;
        assert_eq!(
            (status, code),
            (StatusCode::FORBIDDEN, Value::from("invalid_signature"))
        );
    }

    #[tokio::test]
    async fn get_openapi_json_answers_the_document_without_an_api_key() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = state(dir.path());
        let app = function_router(state, Function::Jobs);
        let request = Request::get("/openapi.json").body(Body::empty()).unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = axum::body::to_bytes(response.into_body(), 1 << 22)
            .await
            .unwrap();
        let served: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(served, spec());
        assert!(served["openapi"].as_str().unwrap().starts_with("3.1."));
    }
}
