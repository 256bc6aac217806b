//! The ceiling the hit path is measured against: a trivial axum handler answering a constant,
//! on two worker threads, as `serve` runs. Run it beside `serve` and load both the same way
//! (`scripts/perf.sh` does):
//!
//! ```text
//! cargo run --release -p mediactl --example ceiling -- 127.0.0.1:8090
//! ```

use axum::Router;
use axum::routing::post;

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(async {
            let app = Router::new().route("/api/v1/media/tts", post(|| async { "{\"ok\":true}" }));
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            eprintln!("ceiling listening on http://{}", listener.local_addr()?);
            axum::serve(listener, app).await
        })
}
