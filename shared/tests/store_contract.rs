//! The store, job queue and object storage contracts on the embedded adapters (SQLite, local
//! files).

mod contract;

mod sqlite {
    use super::contract::store::StoreHarness;
    use media_cache::adapters::sqlite::SqliteStore;
    use std::sync::Arc;

    async fn store() -> StoreHarness {
        // A file, not memory: the same WAL and locking path `mediactl serve` uses.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("contract.db");
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        StoreHarness {
            store: store.clone(),
            usage: store,
            // A READY row whose result keys are not JSON, written by another connection.
            corrupt: Box::new(move |key| {
                let path = path.clone();
                Box::pin(async move {
                    let conn = rusqlite::Connection::open(&path).unwrap();
                    conn.execute(
                        "INSERT OR REPLACE INTO cache_entries (pk, status, result_keys, content_type,
                            provider, model, credits_used, created_at, ttl, request_params)
                         VALUES (?1, 'READY', 'not json', 'video/mp4', 'kling', 'm', 50,
                            '2026-11-25T12:00:00Z', 4102444800, '{}')",
                        [key.to_string()],
                    )
                    .unwrap();
                })
            }),
            _guard: Box::new(dir),
        }
    }

    crate::store_contract!(store());
}

mod filesystem {
    use super::contract::objects::Harness;
    use media_cache::adapters::fs_objects::{FsObjectStore, UrlSigner};
    use media_cache::clock::SystemClock;
    use media_cache::http::objects::objects_router;
    use std::path::Path;
    use std::sync::Arc;

    async fn harness() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let store = FsObjectStore::new(dir.path(), &base, UrlSigner::new(vec![7u8; 32]));
        let app = objects_router(store.clone(), Arc::new(SystemClock));
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let root = dir.path().to_path_buf();
        Harness {
            store: Arc::new(store),
            // Every file under the prefix's directory, hidden ones (a temporary file) too.
            list_under: Box::new(move |prefix| {
                let root = root.clone();
                Box::pin(async move { files_under(&root, &prefix) })
            }),
            _guard: Box::new((dir, server)),
        }
    }

    /// The files under `root/prefix` (a directory), as keys relative to `root`, sorted.
    fn files_under(root: &Path, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut dirs = vec![root.join(prefix)];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    let key = path.strip_prefix(root).unwrap();
                    keys.push(key.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        keys.sort();
        keys
    }

    crate::object_contract!(harness());

    #[tokio::test]
    async fn a_url_for_one_key_does_not_serve_another() {
        super::contract::objects::a_url_for_one_key_does_not_serve_another(harness().await).await;
    }
}

mod sqlite_queue {
    use super::contract::queue::QueueHarness;
    use media_cache::adapters::sqlite::SqliteStore;
    use std::sync::Arc;
    use std::time::Duration;

    async fn harness() -> QueueHarness {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("queue.db")).unwrap();
        let consumer = store.clone();
        QueueHarness {
            queue: Arc::new(store),
            receive: Box::new(move || {
                let consumer = consumer.clone();
                Box::pin(async move {
                    let received = consumer
                        .receive_messages(10, Duration::from_secs(30), 5)
                        .await
                        .unwrap();
                    let mut messages = Vec::new();
                    for r in received {
                        consumer.delete_message(r.receipt).await.unwrap();
                        messages.push(r.message);
                    }
                    messages
                })
            }),
            _guard: Box::new(dir),
        }
    }

    crate::queue_contract!(harness());
}
