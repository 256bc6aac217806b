//! Object storage on the local filesystem, served by the local server through HMAC-signed,
//! expiring URLs (`/objects/{key}?expires=..&sig=..`).

use crate::ports::{ObjectError, ObjectStore};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::path::{Path, PathBuf};

/// Signs and verifies object URLs with a secret key.
#[derive(Clone)]
pub struct UrlSigner {
    secret: Vec<u8>,
}

impl UrlSigner {
    /// The secret, to derive other signatures from (each signs a message of its own shape).
    pub fn key(&self) -> &[u8] {
        &self.secret
    }

    /// A signer with this secret (at least 32 bytes of randomness, kept private).
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            secret: secret.into(),
        }
    }

    /// The signer of a data directory: its key file `url-signing.key` (32 random bytes, readable
    /// only by its owner) is made on first use.
    pub fn from_dir(data_dir: &Path) -> Result<Self, ObjectError> {
        let path = data_dir.join("url-signing.key");
        let io = |e: std::io::Error| ObjectError(format!("{}: {e}", path.display()));
        match std::fs::read(&path) {
            Ok(secret) if secret.len() >= 32 => return Ok(Self::new(secret)),
            Ok(_) => return Err(ObjectError(format!("{} is too short", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let secret = rand::random::<[u8; 32]>().to_vec();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path).map_err(io)?;
        std::io::Write::write_all(&mut file, &secret).map_err(io)?;
        Ok(Self::new(secret))
    }

    fn mac(&self, key: &str, expires: i64) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(format!("GET\n{key}\n{expires}").as_bytes());
        mac
    }

    /// The hex signature of `key` valid until `expires` (epoch seconds).
    pub fn sign(&self, key: &str, expires: i64) -> String {
        hex::encode(self.mac(key, expires).finalize().into_bytes())
    }

    /// Whether `sig` signs `key` until `expires`, and `expires` is still ahead of `now`.
    pub fn verify(&self, key: &str, expires: i64, sig: &str, now: DateTime<Utc>) -> bool {
        let Ok(sig) = hex::decode(sig) else {
            return false;
        };
        expires > now.timestamp() && self.mac(key, expires).verify_slice(&sig).is_ok()
    }
}

/// Whether `key` is a safe object key: relative, no `..`, only `[A-Za-z0-9._/-]`.
pub fn is_valid_object_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 512
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
}

/// Objects as files under a root directory.
#[derive(Clone)]
pub struct FsObjectStore {
    root: PathBuf,
    public_base_url: String,
    signer: UrlSigner,
}

impl FsObjectStore {
    /// Objects under `root`, served at `{public_base_url}/objects/{key}`.
    pub fn new(root: impl Into<PathBuf>, public_base_url: &str, signer: UrlSigner) -> Self {
        Self {
            root: root.into(),
            public_base_url: public_base_url.trim_end_matches('/').to_owned(),
            signer,
        }
    }

    /// The signer, for the route that serves the objects.
    pub fn signer(&self) -> &UrlSigner {
        &self.signer
    }

    /// The file of a valid key.
    pub fn path_of(&self, key: &str) -> Option<PathBuf> {
        is_valid_object_key(key).then(|| self.root.join(key))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[async_trait]
impl ObjectStore for FsObjectStore {
    async fn put(&self, key: &str, bytes: Bytes, _content_type: &str) -> Result<(), ObjectError> {
        // The content type is implied by the key's extension when served.
        let path = self
            .path_of(key)
            .ok_or_else(|| ObjectError(format!("invalid object key {key:?}")))?;
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(()); // content-addressed: same key, same bytes
        }
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| ObjectError(format!("{}: {e}", dir.display())))?;
        // Write then rename, so a reader never sees half a file.
        let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        tokio::fs::write(&tmp, &bytes)
            .await
            .map_err(|e| ObjectError(format!("{}: {e}", tmp.display())))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| ObjectError(format!("{}: {e}", path.display())))
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, ObjectError> {
        let Some(path) = self.path_of(key) else {
            return Ok(None);
        };
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(bytes.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ObjectError(format!("{}: {e}", path.display()))),
        }
    }

    async fn presign_get(
        &self,
        key: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<String, ObjectError> {
        if !is_valid_object_key(key) {
            return Err(ObjectError(format!("invalid object key {key:?}")));
        }
        let expires = expires_at.timestamp();
        let sig = self.signer.sign(key, expires);
        Ok(format!(
            "{}/objects/{key}?expires={expires}&sig={sig}",
            self.public_base_url
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn signatures_bind_key_and_expiry() {
        let s = UrlSigner::new(b"secret".to_vec());
        let now = Utc::now();
        let exp = (now + Duration::hours(1)).timestamp();
        let sig = s.sign("tts/a.mp3", exp);
        assert!(s.verify("tts/a.mp3", exp, &sig, now));
        assert!(!s.verify("tts/b.mp3", exp, &sig, now), "other key");
        assert!(!s.verify("tts/a.mp3", exp + 1, &sig, now), "other expiry");
        assert!(
            !s.verify("tts/a.mp3", exp, &sig, now + Duration::hours(2)),
            "expired"
        );
        assert!(!UrlSigner::new(b"other".to_vec()).verify("tts/a.mp3", exp, &sig, now));
        assert!(!s.verify("tts/a.mp3", exp, "zz", now));
    }

    #[test]
    fn keys_cannot_escape_the_root() {
        assert!(is_valid_object_key("image/abc.png"));
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "",
            "a/./b",
            "a b",
            "a\\b",
        ] {
            assert!(!is_valid_object_key(bad), "{bad}");
        }
    }
}
