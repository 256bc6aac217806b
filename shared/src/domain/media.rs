//! Media produced by a provider.

use bytes::Bytes;

/// Bytes a provider generated, with their content type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedMedia {
    /// The media itself.
    pub bytes: Bytes,
    /// Its MIME type, e.g. `audio/mpeg`.
    pub content_type: String,
}

/// The file extension used for a content type in object keys.
pub fn extension_for(content_type: &str) -> &'static str {
    match content_type {
        "audio/mpeg" => "mp3",
        "audio/ogg" | "audio/opus" => "opus",
        "audio/aac" => "aac",
        "audio/flac" => "flac",
        "audio/wav" | "audio/x-wav" => "wav",
        "audio/pcm" | "audio/L16" => "pcm",
        "image/png" => "png",
        "image/jpeg" => "jpeg",
        "image/webp" => "webp",
        "video/mp4" => "mp4",
        _ => "bin",
    }
}

/// The content type served for an object key's extension.
pub fn content_type_for_key(key: &str) -> &'static str {
    match key.rsplit_once('.').map(|(_, ext)| ext) {
        Some("mp3") => "audio/mpeg",
        Some("opus") => "audio/ogg",
        Some("aac") => "audio/aac",
        Some("flac") => "audio/flac",
        Some("wav") => "audio/wav",
        Some("pcm") => "audio/pcm",
        Some("png") => "image/png",
        Some("jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("mp4") => "video/mp4",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_round_trip_to_content_types() {
        for ct in [
            "audio/mpeg",
            "audio/ogg",
            "audio/aac",
            "audio/flac",
            "audio/wav",
            "audio/pcm",
            "image/png",
            "image/jpeg",
            "image/webp",
            "video/mp4",
        ] {
            let key = format!("media/abc.{}", extension_for(ct));
            assert_eq!(content_type_for_key(&key), ct);
        }
    }
}
