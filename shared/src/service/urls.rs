//! Result URLs signed this second, kept in memory: a URL is valid until the whole second it
//! names, so every answer for the same object within one second carries the same URL, and it is
//! signed once (an HMAC on local files, a SigV4 signature on S3) instead of once per answer.

use crate::ports::{ObjectError, ObjectStore};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::RwLock;

/// The most objects remembered; when full, all are forgotten.
const CAPACITY: usize = 4096;

#[derive(Default)]
pub(super) struct SignedUrls {
    /// Object key -> the expiry its URL was signed for, and the URL.
    urls: RwLock<HashMap<String, (DateTime<Utc>, String)>>,
}

impl SignedUrls {
    /// The URL of `key` valid until `expires_at`, signed by `objects` unless it was this second.
    pub(super) async fn get(
        &self,
        objects: &dyn ObjectStore,
        key: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<String, ObjectError> {
        let known = self
            .urls
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .filter(|(until, _)| *until == expires_at)
            .map(|(_, url)| url.clone());
        if let Some(url) = known {
            return Ok(url);
        }
        let url = objects.presign_get(key, expires_at).await?;
        let mut urls = self.urls.write().unwrap_or_else(|e| e.into_inner());
        if urls.len() >= CAPACITY {
            urls.clear();
        }
        urls.insert(key.to_owned(), (expires_at, url.clone()));
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::fs_objects::{FsObjectStore, UrlSigner};
    use chrono::TimeZone;

    #[tokio::test]
    async fn a_url_is_the_one_signed_for_its_key_and_second() {
        let dir = tempfile::tempdir().unwrap();
        let objects = FsObjectStore::new(dir.path(), "http://x", UrlSigner::new(b"k".to_vec()));
        let urls = SignedUrls::default();
        let second = Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap();
        let next = second + chrono::Duration::seconds(1);

        let a = urls.get(&objects, "tts/a.mp3", second).await.unwrap();
        assert_eq!(a, objects.presign_get("tts/a.mp3", second).await.unwrap());
        assert_eq!(urls.get(&objects, "tts/a.mp3", second).await.unwrap(), a);
        // Another second or another object: its own signature.
        let later = urls.get(&objects, "tts/a.mp3", next).await.unwrap();
        assert_eq!(later, objects.presign_get("tts/a.mp3", next).await.unwrap());
        assert_ne!(later, a);
        let b = urls.get(&objects, "tts/b.mp3", next).await.unwrap();
        assert_eq!(b, objects.presign_get("tts/b.mp3", next).await.unwrap());
        // A key the store refuses is refused every time, never remembered.
        assert!(urls.get(&objects, "../etc/passwd", next).await.is_err());
        assert!(urls.get(&objects, "../etc/passwd", next).await.is_err());
        assert_eq!(urls.urls.read().unwrap().len(), 2);
    }
}
