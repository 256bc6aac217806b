//! The object store contract: what is put downloads, over HTTP, through a presigned URL.

use bytes::Bytes;
use chrono::{Duration, Utc};
use media_cache::ports::ObjectStore;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Every object the adapter's own storage holds under a key prefix (a temporary or second copy
/// counts), read around the port.
pub type ListUnder =
    Box<dyn Fn(String) -> Pin<Box<dyn Future<Output = Vec<String>> + Send>> + Send + Sync>;

/// An object store and an HTTP client that can fetch its URLs.
pub struct Harness {
    /// The adapter under test.
    pub store: Arc<dyn ObjectStore>,
    /// Lists the storage under a prefix.
    pub list_under: ListUnder,
    /// Keeps whatever serves the URLs alive.
    pub _guard: Box<dyn std::any::Any + Send>,
}

async fn fetch(url: &str) -> (u16, String, Vec<u8>) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, ct, resp.bytes().await.unwrap().to_vec())
}

fn unique(ext: &str) -> String {
    format!("tts/{}.{ext}", uuid::Uuid::new_v4().simple())
}

pub async fn a_stored_object_downloads_through_its_presigned_url(h: Harness) {
    let key = unique("wav");
    let bytes = Bytes::from_static(b"RIFF....WAVEfmt ");
    h.store.put(&key, bytes.clone(), "audio/wav").await.unwrap();
    let url = h
        .store
        .presign_get(&key, Utc::now() + Duration::minutes(5))
        .await
        .unwrap();
    let (status, ct, body) = fetch(&url).await;
    assert_eq!(status, 200);
    assert_eq!(ct, "audio/wav");
    assert_eq!(body, bytes.to_vec());
}

pub async fn a_stored_object_reads_back_and_a_missing_one_is_none(h: Harness) {
    let key = unique("flac");
    let bytes = Bytes::from_static(b"fLaC and more");
    h.store
        .put(&key, bytes.clone(), "audio/flac")
        .await
        .unwrap();
    assert_eq!(h.store.get(&key).await.unwrap(), Some(bytes));
    assert_eq!(h.store.get(&unique("flac")).await.unwrap(), None);
}

pub async fn putting_the_same_key_twice_keeps_one_object(h: Harness) {
    // A key space of its own (the bucket is shared with other tests).
    let space = format!("image/{}/", uuid::Uuid::new_v4().simple());
    let key = format!("{space}same.png");
    let bytes = Bytes::from_static(b"\x89PNG\r\n\x1a\nsame");
    h.store.put(&key, bytes.clone(), "image/png").await.unwrap();
    h.store.put(&key, bytes.clone(), "image/png").await.unwrap();
    assert_eq!((h.list_under)(space).await, vec![key.clone()], "one object");
    let url = h
        .store
        .presign_get(&key, Utc::now() + Duration::minutes(5))
        .await
        .unwrap();
    assert_eq!(fetch(&url).await.2, bytes.to_vec());
}

/// Signature enforcement is the server's: our filesystem server checks it; S3 does too, but the
/// emulator does not verify presigned signatures, so this runs on the filesystem adapter only.
#[allow(dead_code, reason = "run by the filesystem suite only")]
pub async fn a_url_for_one_key_does_not_serve_another(h: Harness) {
    let (a, b) = (unique("mp3"), unique("mp3"));
    h.store
        .put(&a, Bytes::from_static(b"a"), "audio/mpeg")
        .await
        .unwrap();
    h.store
        .put(&b, Bytes::from_static(b"b"), "audio/mpeg")
        .await
        .unwrap();
    let url = h
        .store
        .presign_get(&a, Utc::now() + Duration::minutes(5))
        .await
        .unwrap();
    let forged = url.replace(&a, &b);
    let (status, _, _) = fetch(&forged).await;
    assert_eq!(status, 403);
}
