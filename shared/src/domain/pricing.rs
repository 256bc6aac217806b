//! Prices in credits. Pricing is data: the defaults live in `pricing.toml` and a file of the same
//! shape replaces them.

use super::image::{IMAGE_MODELS, NormalizedImageRequest, model_qualities};
use super::music::{MUSIC_MODELS, NormalizedMusicRequest};
use super::tts::{NormalizedTtsRequest, TTS_MODELS};
use super::video::{NormalizedVideoRequest, VIDEO_MODES};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The default price list, compiled in.
pub const DEFAULT_PRICING_TOML: &str = include_str!("../../pricing.toml");

/// A price list that failed to load or misses a price.
#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    /// The file is not valid TOML of the expected shape.
    #[error("pricing file is malformed: {0}")]
    Malformed(String),
    /// A model/quality combination the API accepts has no price.
    #[error("pricing has no price for {0}")]
    Missing(String),
}

/// The credit price list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    /// Price of a cache hit.
    pub hit: u64,
    /// Speech prices.
    pub tts: TtsPricing,
    /// Image prices by model.
    pub image: BTreeMap<String, ImageModelPricing>,
    /// Music prices.
    pub music: MusicPricing,
    /// Video prices by mode, then duration in seconds.
    pub video: BTreeMap<String, BTreeMap<String, u64>>,
}

/// Music prices.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MusicPricing {
    /// Credits of one Suno task (it makes two songs), by model.
    pub per_task: BTreeMap<String, u64>,
}

/// Speech prices.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtsPricing {
    /// Smallest charge.
    pub minimum: u64,
    /// Credits per 1000 characters, by model.
    pub per_1k_chars: BTreeMap<String, u64>,
}

/// Image prices of one model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageModelPricing {
    /// Base price of one image by quality.
    pub quality: BTreeMap<String, u64>,
    /// Size surcharge in percent of the base price (100 when absent).
    #[serde(default)]
    pub size_percent: BTreeMap<String, u64>,
}

impl Default for PriceTable {
    fn default() -> Self {
        // The compiled-in defaults are checked by a unit test.
        Self::from_toml(DEFAULT_PRICING_TOML).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl PriceTable {
    /// Parses and checks a price list: every model and quality the API accepts must have a price.
    pub fn from_toml(text: &str) -> Result<Self, PricingError> {
        let table: PriceTable =
            toml::from_str(text).map_err(|e| PricingError::Malformed(e.to_string()))?;
        for model in TTS_MODELS {
            if !table.tts.per_1k_chars.contains_key(*model) {
                return Err(PricingError::Missing(format!("tts model {model}")));
            }
        }
        for model in IMAGE_MODELS {
            let Some(prices) = table.image.get(*model) else {
                return Err(PricingError::Missing(format!("image model {model}")));
            };
            for quality in model_qualities(model) {
                if !prices.quality.contains_key(*quality) {
                    return Err(PricingError::Missing(format!(
                        "image model {model} quality {quality}"
                    )));
                }
            }
        }
        for model in MUSIC_MODELS {
            if !table.music.per_task.contains_key(*model) {
                return Err(PricingError::Missing(format!("music model {model}")));
            }
        }
        for mode in VIDEO_MODES {
            for duration in ["5", "10"] {
                if table
                    .video
                    .get(*mode)
                    .and_then(|d| d.get(duration))
                    .is_none()
                {
                    return Err(PricingError::Missing(format!(
                        "video mode {mode} duration {duration}"
                    )));
                }
            }
        }
        Ok(table)
    }

    /// The full (miss) price of a music request (one Suno task).
    pub fn music(&self, req: &NormalizedMusicRequest) -> Option<u64> {
        self.music.per_task.get(&req.model).copied()
    }

    /// The full (miss) price of a video request.
    pub fn video(&self, req: &NormalizedVideoRequest) -> Option<u64> {
        self.video
            .get(&req.mode)?
            .get(&req.duration.to_string())
            .copied()
    }

    /// The full (miss) price of a speech request.
    pub fn tts(&self, req: &NormalizedTtsRequest) -> u64 {
        let rate = self.tts.per_1k_chars.get(&req.model).copied().unwrap_or(0);
        let chars = req.text.chars().count() as u64;
        (chars * rate).div_ceil(1000).max(self.tts.minimum)
    }

    /// The full (miss) price of an image request; None only for a model or quality the API rejects.
    pub fn image(&self, req: &NormalizedImageRequest) -> Option<u64> {
        let model = self.image.get(&req.model)?;
        let base = *model.quality.get(&req.quality)?;
        let percent = model.size_percent.get(&req.size).copied().unwrap_or(100);
        Some((base * percent).div_ceil(100) * u64::from(req.n))
    }

    /// The price of a hit on a result whose miss price is `miss_price`.
    pub fn hit(&self, miss_price: u64) -> u64 {
        self.hit.min(miss_price)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ImageRequest, TtsRequest};

    #[test]
    fn defaults_load_and_match_the_design() {
        let p = PriceTable::default();
        let img = |model: &str, quality: &str, n: u32| {
            let r = ImageRequest {
                prompt: Some("x".into()),
                model: Some(model.into()),
                quality: Some(quality.into()),
                n: Some(i64::from(n)),
                ..Default::default()
            };
            p.image(&r.normalize().unwrap()).unwrap()
        };
        assert_eq!(img("dall-e-3", "standard", 1), 10);
        assert_eq!(img("dall-e-3", "hd", 1), 20);
        assert_eq!(img("gpt-image-1", "low", 1), 5);
        assert_eq!(img("gpt-image-1", "medium", 2), 30);
        assert_eq!(img("gpt-image-1", "high", 1), 50);
        let tts = |text: &str| {
            let r = TtsRequest {
                text: Some(text.into()),
                ..Default::default()
            };
            p.tts(&r.normalize().unwrap())
        };
        assert_eq!(tts("hi"), 2, "minimum applies");
        assert_eq!(tts(&"a".repeat(4096)), 17);
        assert_eq!(p.hit(10), 1);
        let video = |mode: &str, duration: u32| {
            let r = crate::domain::VideoRequest {
                prompt: Some("x".into()),
                mode: Some(mode.into()),
                duration: Some(i64::from(duration)),
                ..Default::default()
            };
            p.video(&r.normalize().unwrap()).unwrap()
        };
        assert_eq!(
            [
                video("std", 5),
                video("std", 10),
                video("pro", 5),
                video("pro", 10)
            ],
            [50, 100, 150, 300]
        );
        let music = crate::domain::MusicRequest {
            prompt: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(p.music(&music.normalize().unwrap()), Some(20));
        assert_eq!(p.hit(0), 0, "a hit never costs more than the miss");
    }

    #[test]
    fn a_file_missing_a_model_is_rejected() {
        let text = DEFAULT_PRICING_TOML.replace("\"tts-1-hd\" = 8, ", "");
        assert!(matches!(
            PriceTable::from_toml(&text),
            Err(PricingError::Missing(_))
        ));
        assert!(matches!(
            PriceTable::from_toml("hit = "),
            Err(PricingError::Malformed(_))
        ));
    }
}
