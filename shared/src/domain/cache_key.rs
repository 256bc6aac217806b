//! Cache keys: `CACHE#{type}#{sha256 hex}` over a key-format version, the media type and the
//! canonical JSON of the normalised parameters.

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fmt;

/// Bumped whenever normalisation changes, so old entries are simply never matched again.
pub const KEY_FORMAT_VERSION: u32 = 1;

/// The kinds of media the API generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaType {
    /// Text to speech.
    Tts,
    /// Image generation.
    Image,
    /// Music generation (a long job).
    Music,
    /// Video generation (a long job).
    Video,
}

impl MediaType {
    /// The lowercase name used in keys and routes.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaType::Tts => "tts",
            MediaType::Image => "image",
            MediaType::Music => "music",
            MediaType::Video => "video",
        }
    }

    /// Parses the name used in keys.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tts" => Some(MediaType::Tts),
            "image" => Some(MediaType::Image),
            "music" => Some(MediaType::Music),
            "video" => Some(MediaType::Video),
            _ => None,
        }
    }
}

impl MediaType {
    /// Whether a miss answers at once (speech, images) or starts a long job (music, video).
    pub fn is_async(self) -> bool {
        matches!(self, MediaType::Music | MediaType::Video)
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated request with every default filled in: equal requests are equal values, and their
/// canonical JSON is what the cache key hashes.
pub trait NormalizedMedia: Serialize + Sized {
    /// The media type.
    const MEDIA_TYPE: MediaType;

    /// The cache key of this request.
    fn cache_key(&self) -> CacheKey {
        CacheKey::of(Self::MEDIA_TYPE, self)
    }

    /// The MIME type of the media this request produces.
    fn content_type(&self) -> &'static str;

    /// The canonical model name.
    fn model(&self) -> &str;
}

/// The identity of one generated result.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    media_type: MediaType,
    hash: String,
}

impl CacheKey {
    /// The key of `params` (normalised parameters) of `media_type`.
    pub fn of<P: Serialize>(media_type: MediaType, params: &P) -> Self {
        Self::of_canonical(media_type, &canonical_json(params))
    }

    /// The key of parameters already in their canonical JSON (`canonical_json`).
    pub fn of_canonical(media_type: MediaType, canonical: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(format!("v{KEY_FORMAT_VERSION}\n{media_type}\n").as_bytes());
        hasher.update(canonical.as_bytes());
        Self {
            media_type,
            hash: hex::encode(hasher.finalize()),
        }
    }

    /// This key in `user_id`'s own key space (`Cache-Control: private`): no other account's
    /// request can compute it, so none can hit the entry or learn that it exists. Its hash starts
    /// with the owner's tag (`owner_tag`), which finds an account's private entries (to purge
    /// them) without a record of who owns what.
    pub fn private_to(&self, user_id: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(
            format!(
                "v{KEY_FORMAT_VERSION}\n{}\nprivate\n{user_id}\n{}",
                self.media_type, self.hash
            )
            .as_bytes(),
        );
        let digest = hex::encode(hasher.finalize());
        let tag = Self::owner_tag(user_id);
        Self {
            media_type: self.media_type,
            hash: format!("{tag}{}", &digest[tag.len()..]),
        }
    }

    /// The first hex digits of every private key of `user_id` (64 bits: a shared key starts with
    /// them by chance about once in 10^19).
    pub fn owner_tag(user_id: &str) -> String {
        let digest = Sha256::digest(format!("owner\n{user_id}").as_bytes());
        hex::encode(&digest[..8])
    }

    /// Parses `CACHE#{type}#{hash}`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('#');
        let (Some("CACHE"), Some(t), Some(hash), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let valid_hash = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        Some(Self {
            media_type: MediaType::parse(t)?,
            hash: valid_hash.then(|| hash.to_owned())?,
        })
    }

    /// The media type this key belongs to.
    pub fn media_type(&self) -> MediaType {
        self.media_type
    }

    /// The SHA-256 hex digest part.
    pub fn hash(&self) -> &str {
        &self.hash
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CACHE#{}#{}", self.media_type, self.hash)
    }
}

/// JSON with object keys sorted at every level and numbers in serde_json's single shortest form.
pub fn canonical_json<P: Serialize>(params: &P) -> String {
    // serde_json's Map is a BTreeMap (no `preserve_order`), so going through Value sorts keys.
    // Serialising our own plain structs cannot fail.
    serde_json::to_value(params)
        .map(|v| v.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_has_documented_shape_and_parses_back() {
        let key = CacheKey::of(MediaType::Tts, &json!({"text": "hi"}));
        let s = key.to_string();
        assert!(s.starts_with("CACHE#tts#"));
        assert_eq!(s.len(), "CACHE#tts#".len() + 64);
        assert_eq!(CacheKey::parse(&s), Some(key));
        assert_eq!(CacheKey::parse("CACHE#tts#xyz"), None);
        assert_eq!(CacheKey::parse("CACHE#music#"), None);
    }

    #[test]
    fn canonical_json_sorts_keys() {
        assert_eq!(
            canonical_json(&json!({"b": 1, "a": {"d": 2, "c": 1.5}})),
            r#"{"a":{"c":1.5,"d":2},"b":1}"#
        );
    }

    #[test]
    fn type_is_part_of_the_hash() {
        let p = json!({"x": 1});
        assert_ne!(
            CacheKey::of(MediaType::Tts, &p).hash(),
            CacheKey::of(MediaType::Image, &p).hash()
        );
    }
}
