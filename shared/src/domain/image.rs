//! Image requests: the client's body, validation against OpenAI's per-model limits, and the
//! normalised form that is hashed and sent to the provider.

use super::cache_key::{MediaType, NormalizedMedia};
use super::error::{ValidationError, one_of};
use super::text::{normalize_text, normalize_token};
use serde::{Deserialize, Serialize};

/// The image models.
pub const IMAGE_MODELS: &[&str] = &["dall-e-2", "dall-e-3", "gpt-image-1"];

/// What one image model accepts.
struct ModelLimits {
    max_prompt_chars: usize,
    max_n: u8,
    sizes: &'static [&'static str],
    qualities: &'static [&'static str],
    default_quality: &'static str,
}

fn limits(model: &str) -> ModelLimits {
    match model {
        "dall-e-2" => ModelLimits {
            max_prompt_chars: 1000,
            max_n: 10,
            sizes: &["256x256", "512x512", "1024x1024"],
            qualities: &["standard"],
            default_quality: "standard",
        },
        "dall-e-3" => ModelLimits {
            max_prompt_chars: 4000,
            max_n: 1,
            sizes: &["1024x1024", "1792x1024", "1024x1792"],
            qualities: &["standard", "hd"],
            default_quality: "standard",
        },
        _ => ModelLimits {
            max_prompt_chars: 32000,
            max_n: 10,
            sizes: &["1024x1024", "1536x1024", "1024x1536", "auto"],
            qualities: &["low", "medium", "high", "auto"],
            default_quality: "auto",
        },
    }
}

/// The qualities `model` accepts (empty for an unknown model).
pub fn model_qualities(model: &str) -> &'static [&'static str] {
    if IMAGE_MODELS.contains(&model) {
        limits(model).qualities
    } else {
        &[]
    }
}

/// The body of `POST /api/v1/media/image` as the client sent it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRequest {
    /// What to draw (required).
    pub prompt: Option<String>,
    /// Model, default "dall-e-3".
    pub model: Option<String>,
    /// Size, default "1024x1024".
    pub size: Option<String>,
    /// Quality, default depends on the model.
    pub quality: Option<String>,
    /// Style (dall-e-3 only), default "vivid".
    pub style: Option<String>,
    /// Number of images, default 1.
    #[serde(default, deserialize_with = "crate::domain::error::whole_number")]
    pub n: Option<i64>,
    /// Background (gpt-image-1 only), default "auto".
    pub background: Option<String>,
    /// Output format (gpt-image-1 only), default "png".
    pub output_format: Option<String>,
}

/// A validated image request with every default filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormalizedImageRequest {
    /// Normalised prompt.
    pub prompt: String,
    /// Model name.
    pub model: String,
    /// Size `WxH` or `auto`.
    pub size: String,
    /// Quality.
    pub quality: String,
    /// Style, dall-e-3 only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub style: Option<String>,
    /// Number of images.
    pub n: u8,
    /// Background, gpt-image-1 only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub background: Option<String>,
    /// Output format, gpt-image-1 only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_format: Option<String>,
}

impl ImageRequest {
    /// Validates the request against the model's limits and fills in defaults.
    pub fn normalize(&self) -> Result<NormalizedImageRequest, ValidationError> {
        let model = normalize_token(self.model.as_deref().unwrap_or("dall-e-3"));
        one_of("model", &model, IMAGE_MODELS)?;
        let limits = limits(&model);

        let prompt = normalize_text(self.prompt.as_deref().unwrap_or_default());
        if prompt.is_empty() {
            return Err(ValidationError::new(
                "prompt",
                "is required and must not be empty",
            ));
        }
        let chars = prompt.chars().count();
        if chars > limits.max_prompt_chars {
            return Err(ValidationError::new(
                "prompt",
                format!(
                    "must be at most {} characters for {model} (got {chars})",
                    limits.max_prompt_chars
                ),
            ));
        }

        let size = normalize_token(self.size.as_deref().unwrap_or("1024x1024"));
        one_of("size", &size, limits.sizes)?;

        let quality = normalize_token(self.quality.as_deref().unwrap_or(limits.default_quality));
        one_of("quality", &quality, limits.qualities)?;

        let n = self.n.unwrap_or(1);
        if n < 1 || n > i64::from(limits.max_n) {
            return Err(ValidationError::new(
                "n",
                format!(
                    "must be between 1 and {} for {model} (got {n})",
                    limits.max_n
                ),
            ));
        }

        let style = only_for(&model, "dall-e-3", "style", self.style.as_deref(), "vivid")?;
        if let Some(style) = &style {
            one_of("style", style, &["vivid", "natural"])?;
        }
        let background = only_for(
            &model,
            "gpt-image-1",
            "background",
            self.background.as_deref(),
            "auto",
        )?;
        if let Some(background) = &background {
            one_of("background", background, &["transparent", "opaque", "auto"])?;
        }
        let output_format = only_for(
            &model,
            "gpt-image-1",
            "output_format",
            self.output_format.as_deref(),
            "png",
        )?;
        if let Some(format) = &output_format {
            one_of("output_format", format, &["png", "jpeg", "webp"])?;
        }

        Ok(NormalizedImageRequest {
            prompt,
            model,
            size,
            quality,
            style,
            n: n as u8,
            background,
            output_format,
        })
    }
}

/// A field only `owner` takes: defaulted for it, rejected for every other model.
fn only_for(
    model: &str,
    owner: &str,
    field: &'static str,
    value: Option<&str>,
    default: &str,
) -> Result<Option<String>, ValidationError> {
    match (model == owner, value) {
        (true, v) => Ok(Some(normalize_token(v.unwrap_or(default)))),
        (false, None) => Ok(None),
        (false, Some(_)) => Err(ValidationError::new(
            field,
            format!("is only supported by {owner} (model is {model})"),
        )),
    }
}

impl NormalizedMedia for NormalizedImageRequest {
    const MEDIA_TYPE: MediaType = MediaType::Image;

    /// The MIME type of the images this request produces.
    fn content_type(&self) -> &'static str {
        match self.output_format.as_deref() {
            Some("jpeg") => "image/jpeg",
            Some("webp") => "image/webp",
            _ => "image/png",
        }
    }

    fn model(&self) -> &str {
        &self.model
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(prompt: &str) -> ImageRequest {
        ImageRequest {
            prompt: Some(prompt.into()),
            ..Default::default()
        }
    }

    #[test]
    fn model_defaults_are_filled() {
        let d3 = req("a cat").normalize().unwrap();
        assert_eq!(d3.model, "dall-e-3");
        assert_eq!(d3.quality, "standard");
        assert_eq!(d3.style.as_deref(), Some("vivid"));
        assert_eq!(d3.background, None);
        let gi = ImageRequest {
            model: Some("GPT-Image-1".into()),
            ..req("a cat")
        }
        .normalize()
        .unwrap();
        assert_eq!(gi.quality, "auto");
        assert_eq!(gi.output_format.as_deref(), Some("png"));
        assert_eq!(gi.style, None);
    }

    #[test]
    fn dall_e_3_takes_one_image_only() {
        let err = ImageRequest {
            n: Some(2),
            ..req("a cat")
        }
        .normalize()
        .unwrap_err();
        assert_eq!(err.field, "n");
        assert!(err.message.contains("dall-e-3"));
        let ok = ImageRequest {
            n: Some(2),
            model: Some("dall-e-2".into()),
            size: Some("512X512".into()),
            ..req("a cat")
        };
        assert_eq!(ok.normalize().unwrap().n, 2);
    }

    #[test]
    fn a_count_out_of_any_range_is_a_parameter_error_and_a_fraction_a_type_error() {
        for (json, got) in [
            (r#"{"prompt":"x","n":-1}"#, "-1"),
            (r#"{"prompt":"x","n":0}"#, "0"),
            (
                r#"{"prompt":"x","n":18446744073709551615}"#,
                "9223372036854775807",
            ),
            (r#"{"prompt":"x","n":1e30}"#, "9223372036854775807"),
            (r#"{"prompt":"x","n":-1e30}"#, "-9223372036854775808"),
        ] {
            let parsed: ImageRequest = serde_json::from_str(json).unwrap();
            let err = parsed.normalize().unwrap_err();
            assert_eq!(err.field, "n", "{json}");
            assert!(err.message.contains(&format!("(got {got})")), "{err}");
        }
        let null: ImageRequest = serde_json::from_str(r#"{"prompt":"x","n":null}"#).unwrap();
        assert_eq!(null.normalize().unwrap().n, 1);
        for json in [
            r#"{"prompt":"x","n":2.5}"#,
            r#"{"prompt":"x","n":1.0}"#,
            r#"{"prompt":"x","n":"1"}"#,
        ] {
            assert!(
                serde_json::from_str::<ImageRequest>(json).is_err(),
                "{json}"
            );
        }
    }

    #[test]
    fn model_specific_fields_are_rejected_elsewhere() {
        let err = ImageRequest {
            style: Some("natural".into()),
            model: Some("dall-e-2".into()),
            ..req("x")
        }
        .normalize()
        .unwrap_err();
        assert_eq!(err.field, "style");
        let err = ImageRequest {
            size: Some("1536x1024".into()),
            ..req("x")
        }
        .normalize()
        .unwrap_err();
        assert_eq!(err.field, "size");
        let err = ImageRequest {
            prompt: Some("x".repeat(4001)),
            ..req("x")
        }
        .normalize()
        .unwrap_err();
        assert_eq!(err.field, "prompt");
    }
}
