//! Video requests (Kling): the client's body, its validation against Kling's limits, and the
//! normalised form that is hashed and sent to the provider.

use super::cache_key::{MediaType, NormalizedMedia};
use super::error::{ValidationError, at_most_chars, one_of};
use super::text::{normalize_text, normalize_token};
use serde::{Deserialize, Serialize};

/// The Kling models.
pub const VIDEO_MODELS: &[&str] = &[
    "kling-v1-6",
    "kling-v2-master",
    "kling-v2-1-master",
    "kling-v2-5-turbo",
    "kling-v2-6",
];
/// Kling's modes.
pub const VIDEO_MODES: &[&str] = &["std", "pro"];
/// Kling's aspect ratios (text to video).
pub const ASPECT_RATIOS: &[&str] = &["16:9", "9:16", "1:1"];
/// Longest prompt and negative prompt.
pub const MAX_VIDEO_PROMPT_CHARS: usize = 2500;
/// Longest accepted `image_url`.
pub const MAX_IMAGE_URL_LEN: usize = 2048;

/// The body of `POST /api/v1/media/video` as the client sent it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VideoRequest {
    /// What to film (required).
    pub prompt: Option<String>,
    /// What to avoid.
    pub negative_prompt: Option<String>,
    /// Model, default "kling-v2-5-turbo".
    pub model: Option<String>,
    /// "std" (default) or "pro".
    pub mode: Option<String>,
    /// Seconds: 5 (default) or 10.
    #[serde(default, deserialize_with = "crate::domain::error::whole_number")]
    pub duration: Option<i64>,
    /// "16:9" (default), "9:16" or "1:1"; not for image to video.
    pub aspect_ratio: Option<String>,
    /// An http(s) image to animate: makes it image to video.
    pub image_url: Option<String>,
    /// Prompt adherence 0..=1, default 0.5.
    pub cfg_scale: Option<f64>,
}

/// A validated video request with every default filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NormalizedVideoRequest {
    /// Normalised prompt.
    pub prompt: String,
    /// Normalised negative prompt, when non-empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    /// Canonical model name.
    pub model: String,
    /// "std" or "pro".
    pub mode: String,
    /// 5 or 10 seconds.
    pub duration: u32,
    /// Aspect ratio (text to video only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aspect_ratio: Option<String>,
    /// The image to animate (image to video only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    /// Prompt adherence.
    pub cfg_scale: f64,
}

impl VideoRequest {
    /// Validates the request and fills in defaults.
    pub fn normalize(&self) -> Result<NormalizedVideoRequest, ValidationError> {
        let prompt = normalize_text(self.prompt.as_deref().unwrap_or_default());
        if prompt.is_empty() {
            return Err(ValidationError::new(
                "prompt",
                "is required and must not be empty",
            ));
        }
        at_most_chars("prompt", &prompt, MAX_VIDEO_PROMPT_CHARS)?;
        let negative_prompt = self
            .negative_prompt
            .as_deref()
            .map(normalize_text)
            .filter(|s| !s.is_empty());
        if let Some(negative) = &negative_prompt {
            at_most_chars("negative_prompt", negative, MAX_VIDEO_PROMPT_CHARS)?;
        }
        let model = normalize_token(self.model.as_deref().unwrap_or("kling-v2-5-turbo"));
        one_of("model", &model, VIDEO_MODELS)?;
        let mode = normalize_token(self.mode.as_deref().unwrap_or("std"));
        one_of("mode", &mode, VIDEO_MODES)?;
        let duration: u32 = match self.duration.unwrap_or(5) {
            5 => 5,
            10 => 10,
            other => {
                return Err(ValidationError::new(
                    "duration",
                    format!("must be 5 or 10 seconds (got {other})"),
                ));
            }
        };
        let cfg_scale = self.cfg_scale.unwrap_or(0.5);
        if !(0.0..=1.0).contains(&cfg_scale) {
            return Err(ValidationError::new(
                "cfg_scale",
                format!("must be between 0 and 1 (got {cfg_scale})"),
            ));
        }
        let image_url = self
            .image_url
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let (aspect_ratio, image_url) = match image_url {
            Some(url) => {
                let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
                if !scheme_ok || url.len() > MAX_IMAGE_URL_LEN || url.contains(char::is_whitespace)
                {
                    return Err(ValidationError::new(
                        "image_url",
                        format!("must be an http(s) URL of at most {MAX_IMAGE_URL_LEN} characters"),
                    ));
                }
                if self.aspect_ratio.is_some() {
                    return Err(ValidationError::new(
                        "aspect_ratio",
                        "is taken from the image in image to video; leave it out",
                    ));
                }
                (None, Some(url.to_owned()))
            }
            None => {
                let ratio = self
                    .aspect_ratio
                    .as_deref()
                    .unwrap_or("16:9")
                    .trim()
                    .to_owned();
                one_of("aspect_ratio", &ratio, ASPECT_RATIOS)?;
                (Some(ratio), None)
            }
        };
        Ok(NormalizedVideoRequest {
            prompt,
            negative_prompt,
            model,
            mode,
            duration,
            aspect_ratio,
            image_url,
            cfg_scale,
        })
    }
}

impl NormalizedMedia for NormalizedVideoRequest {
    const MEDIA_TYPE: MediaType = MediaType::Video;

    fn content_type(&self) -> &'static str {
        "video/mp4"
    }

    fn model(&self) -> &str {
        &self.model
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(prompt: &str) -> VideoRequest {
        VideoRequest {
            prompt: Some(prompt.into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_fill_in_and_equal_requests_are_equal() {
        let a = req("a  cat\nsurfing").normalize().unwrap();
        let b = VideoRequest {
            model: Some("KLING-V2-5-TURBO".into()),
            mode: Some("STD".into()),
            duration: Some(5),
            aspect_ratio: Some("16:9".into()),
            cfg_scale: Some(0.5),
            ..req(" a cat surfing ")
        }
        .normalize()
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.cache_key(), b.cache_key());
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        let cases = [
            (
                VideoRequest {
                    duration: Some(7),
                    ..req("x")
                },
                "duration",
            ),
            (
                VideoRequest {
                    mode: Some("max".into()),
                    ..req("x")
                },
                "mode",
            ),
            (
                VideoRequest {
                    cfg_scale: Some(1.5),
                    ..req("x")
                },
                "cfg_scale",
            ),
            (
                VideoRequest {
                    aspect_ratio: Some("4:3".into()),
                    ..req("x")
                },
                "aspect_ratio",
            ),
            (
                VideoRequest {
                    image_url: Some("file:///etc/passwd".into()),
                    ..req("x")
                },
                "image_url",
            ),
            (
                VideoRequest {
                    model: Some("sora".into()),
                    ..req("x")
                },
                "model",
            ),
            (req(&"x".repeat(2501)), "prompt"),
            (req("  "), "prompt"),
        ];
        for (r, field) in cases {
            assert_eq!(r.normalize().unwrap_err().field, field);
        }
    }

    #[test]
    fn an_image_makes_it_image_to_video_without_aspect_ratio() {
        let n = VideoRequest {
            image_url: Some("https://example.com/cat.png".into()),
            ..req("x")
        }
        .normalize()
        .unwrap();
        assert_eq!(n.aspect_ratio, None);
        assert_eq!(n.image_url.as_deref(), Some("https://example.com/cat.png"));
    }
}
