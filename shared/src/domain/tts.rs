//! Text-to-speech requests: the client's body, its validation against OpenAI's limits, and the
//! normalised form that is hashed and sent to the provider.

use super::cache_key::{MediaType, NormalizedMedia};
use super::error::{ValidationError, one_of};
use super::text::{normalize_text, normalize_token};
use serde::{Deserialize, Serialize};

/// Longest input OpenAI speech accepts, in characters.
pub const MAX_TTS_CHARS: usize = 4096;
/// Longest `instructions` OpenAI speech accepts, in characters.
pub const MAX_INSTRUCTIONS_CHARS: usize = 4096;
/// The voices OpenAI speech offers.
pub const VOICES: &[&str] = &[
    "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
    "marin", "cedar",
];
/// The speech models.
pub const TTS_MODELS: &[&str] = &["tts-1", "tts-1-hd", "gpt-4o-mini-tts"];
/// The audio formats.
pub const AUDIO_FORMATS: &[&str] = &["mp3", "opus", "aac", "flac", "wav", "pcm"];

/// The body of `POST /api/v1/media/tts` as the client sent it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TtsRequest {
    /// The text to speak (required).
    pub text: Option<String>,
    /// Voice, default "nova".
    pub voice: Option<String>,
    /// Model, default "tts-1".
    pub model: Option<String>,
    /// Audio format, default "mp3".
    pub format: Option<String>,
    /// Speed 0.25..=4.0, default 1.0.
    pub speed: Option<f64>,
    /// Voice instructions, gpt-4o-mini-tts only.
    pub instructions: Option<String>,
}

/// A validated speech request with every default filled in; equal requests are equal values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormalizedTtsRequest {
    /// Normalised text.
    pub text: String,
    /// Lower-case voice.
    pub voice: String,
    /// Canonical model name (aliases resolved).
    pub model: String,
    /// Lower-case audio format.
    pub format: String,
    /// Speed factor.
    pub speed: f64,
    /// Normalised instructions, present only when non-empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
}

impl TtsRequest {
    /// Validates the request and fills in defaults.
    pub fn normalize(&self) -> Result<NormalizedTtsRequest, ValidationError> {
        let text = normalize_text(self.text.as_deref().unwrap_or_default());
        if text.is_empty() {
            return Err(ValidationError::new(
                "text",
                "is required and must not be empty",
            ));
        }
        let chars = text.chars().count();
        if chars > MAX_TTS_CHARS {
            return Err(ValidationError::new(
                "text",
                format!("must be at most {MAX_TTS_CHARS} characters (got {chars})"),
            ));
        }

        let voice = normalize_token(self.voice.as_deref().unwrap_or("nova"));
        one_of("voice", &voice, VOICES)?;

        let model = resolve_tts_model(&normalize_token(self.model.as_deref().unwrap_or("tts-1")));
        one_of("model", &model, TTS_MODELS)?;

        let format = normalize_token(self.format.as_deref().unwrap_or("mp3"));
        one_of("format", &format, AUDIO_FORMATS)?;

        let speed = self.speed.unwrap_or(1.0);
        if !(0.25..=4.0).contains(&speed) {
            return Err(ValidationError::new(
                "speed",
                format!("must be between 0.25 and 4.0 (got {speed})"),
            ));
        }

        let instructions = self
            .instructions
            .as_deref()
            .map(normalize_text)
            .filter(|s| !s.is_empty());
        if let Some(instructions) = &instructions {
            if model != "gpt-4o-mini-tts" {
                return Err(ValidationError::new(
                    "instructions",
                    format!("is only supported by gpt-4o-mini-tts (model is {model})"),
                ));
            }
            let n = instructions.chars().count();
            if n > MAX_INSTRUCTIONS_CHARS {
                return Err(ValidationError::new(
                    "instructions",
                    format!("must be at most {MAX_INSTRUCTIONS_CHARS} characters (got {n})"),
                ));
            }
        }

        Ok(NormalizedTtsRequest {
            text,
            voice,
            model,
            format,
            speed,
            instructions,
        })
    }
}

impl NormalizedMedia for NormalizedTtsRequest {
    const MEDIA_TYPE: MediaType = MediaType::Tts;

    /// The MIME type of the audio this request produces.
    fn content_type(&self) -> &'static str {
        match self.format.as_str() {
            "opus" => "audio/ogg",
            "aac" => "audio/aac",
            "flac" => "audio/flac",
            "wav" => "audio/wav",
            "pcm" => "audio/pcm",
            _ => "audio/mpeg",
        }
    }

    fn model(&self) -> &str {
        &self.model
    }
}

/// Dated snapshots that produce the same output as their base model.
fn resolve_tts_model(model: &str) -> String {
    match model {
        "tts-1-1106" => "tts-1".into(),
        "tts-1-hd-1106" => "tts-1-hd".into(),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> TtsRequest {
        TtsRequest {
            text: Some(text.into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_filled() {
        let n = req(" Hello  world ").normalize().unwrap();
        assert_eq!(n.text, "Hello world");
        assert_eq!((n.voice.as_str(), n.model.as_str()), ("nova", "tts-1"));
        assert_eq!((n.format.as_str(), n.speed), ("mp3", 1.0));
    }

    #[test]
    fn spelled_out_defaults_and_case_give_the_same_key() {
        let a = req("hi").normalize().unwrap();
        let b = TtsRequest {
            text: Some("  hi ".into()),
            voice: Some("NOVA".into()),
            model: Some("tts-1-1106".into()),
            format: Some("MP3".into()),
            speed: Some(1.0),
            instructions: Some("  ".into()),
        }
        .normalize()
        .unwrap();
        assert_eq!(a.cache_key(), b.cache_key());
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        let too_long = req(&"a".repeat(MAX_TTS_CHARS + 1)).normalize().unwrap_err();
        assert_eq!(too_long.field, "text");
        assert!(too_long.message.contains("4096"));
        assert!(req(&"a".repeat(MAX_TTS_CHARS)).normalize().is_ok());
        assert_eq!(req("   ").normalize().unwrap_err().field, "text");
        let fast = TtsRequest {
            speed: Some(5.0),
            ..req("x")
        };
        assert_eq!(fast.normalize().unwrap_err().field, "speed");
        let voice = TtsRequest {
            voice: Some("robot".into()),
            ..req("x")
        };
        let err = voice.normalize().unwrap_err();
        assert_eq!(err.field, "voice");
        assert!(err.message.contains("robot"));
        let instr = TtsRequest {
            instructions: Some("calm".into()),
            ..req("x")
        };
        assert_eq!(instr.normalize().unwrap_err().field, "instructions");
        let instr_ok = TtsRequest {
            instructions: Some("calm".into()),
            model: Some("gpt-4o-mini-tts".into()),
            ..req("x")
        };
        assert!(instr_ok.normalize().is_ok());
    }
}
