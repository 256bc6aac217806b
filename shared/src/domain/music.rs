//! Music requests (Suno): the client's body, its validation against Suno's limits, and the
//! normalised form that is hashed and sent to the provider.

use super::cache_key::{MediaType, NormalizedMedia};
use super::error::{ValidationError, at_most_chars, one_of};
use super::text::{normalize_lines, normalize_text, normalize_token};
use serde::{Deserialize, Serialize};

/// The Suno models, in the spelling the API takes.
pub const MUSIC_MODELS: &[&str] = &["V4", "V4_5", "V4_5PLUS", "V5"];
/// Longest prompt outside custom mode.
pub const MAX_SIMPLE_PROMPT_CHARS: usize = 500;
/// Longest title in custom mode.
pub const MAX_TITLE_CHARS: usize = 80;

/// The body of `POST /api/v1/media/music` as the client sent it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MusicRequest {
    /// A description (simple mode) or the lyrics (custom mode); required unless instrumental
    /// with a style.
    pub prompt: Option<String>,
    /// Musical style; giving it (or a title) selects Suno's custom mode.
    pub style: Option<String>,
    /// Song title (custom mode; defaults to "Untitled").
    pub title: Option<String>,
    /// No vocals, default false.
    pub instrumental: Option<bool>,
    /// Model, default "V4_5".
    pub model: Option<String>,
}

/// A validated music request with every default filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NormalizedMusicRequest {
    /// Suno's `customMode`: style and title given by the client.
    pub custom_mode: bool,
    /// Normalised prompt: a description folded to one line (simple mode), or the lyrics with
    /// their line breaks and stanza breaks kept, each line folded (custom mode); empty for an
    /// instrumental in custom mode without lyrics. This text is both hashed and sent to Suno.
    pub prompt: String,
    /// Normalised style (custom mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub style: Option<String>,
    /// Normalised title (custom mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// No vocals.
    pub instrumental: bool,
    /// Canonical model name.
    pub model: String,
}

fn non_empty(value: Option<&str>) -> Option<String> {
    value.map(normalize_text).filter(|s| !s.is_empty())
}

impl MusicRequest {
    /// Validates the request and fills in defaults.
    pub fn normalize(&self) -> Result<NormalizedMusicRequest, ValidationError> {
        let model = normalize_token(self.model.as_deref().unwrap_or("V4_5"))
            .to_uppercase()
            .replace(['.', '-'], "_");
        let model = match model.as_str() {
            "V4_5_PLUS" => "V4_5PLUS".to_owned(),
            _ => model,
        };
        one_of("model", &model, MUSIC_MODELS)?;
        let instrumental = self.instrumental.unwrap_or(false);
        let style = non_empty(self.style.as_deref());
        let title = non_empty(self.title.as_deref());
        let custom_mode = style.is_some() || title.is_some();
        // Lyrics are sung line by line: their layout changes the song, so it is kept (and
        // hashed); a description is folded.
        let normalize: fn(&str) -> String = if custom_mode {
            normalize_lines
        } else {
            normalize_text
        };
        let prompt = self
            .prompt
            .as_deref()
            .map(normalize)
            .filter(|p| !p.is_empty());
        if !custom_mode {
            let prompt = prompt.ok_or_else(|| {
                ValidationError::new(
                    "prompt",
                    "is required (or give a style for an instrumental in custom mode)",
                )
            })?;
            at_most_chars("prompt", &prompt, MAX_SIMPLE_PROMPT_CHARS)?;
            return Ok(NormalizedMusicRequest {
                custom_mode,
                prompt,
                style: None,
                title: None,
                instrumental,
                model,
            });
        }
        let v4 = model == "V4";
        let style = style.ok_or_else(|| {
            ValidationError::new("style", "is required when a title is given (custom mode)")
        })?;
        at_most_chars("style", &style, if v4 { 200 } else { 1000 })?;
        let title = title.unwrap_or_else(|| "Untitled".to_owned());
        at_most_chars("title", &title, MAX_TITLE_CHARS)?;
        let prompt = match prompt {
            Some(p) => p,
            None if instrumental => String::new(),
            None => {
                return Err(ValidationError::new(
                    "prompt",
                    "is required (the lyrics) unless instrumental is true",
                ));
            }
        };
        at_most_chars("prompt", &prompt, if v4 { 3000 } else { 5000 })?;
        Ok(NormalizedMusicRequest {
            custom_mode,
            prompt,
            style: Some(style),
            title: Some(title),
            instrumental,
            model,
        })
    }
}

impl NormalizedMedia for NormalizedMusicRequest {
    const MEDIA_TYPE: MediaType = MediaType::Music;

    fn content_type(&self) -> &'static str {
        "audio/mpeg"
    }

    fn model(&self) -> &str {
        &self.model
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(prompt: Option<&str>, style: Option<&str>, instrumental: bool) -> MusicRequest {
        MusicRequest {
            prompt: prompt.map(Into::into),
            style: style.map(Into::into),
            instrumental: Some(instrumental),
            ..Default::default()
        }
    }

    #[test]
    fn simple_mode_needs_a_short_prompt() {
        let n = req(Some("  a calm  piano piece "), None, false)
            .normalize()
            .unwrap();
        assert_eq!(n.prompt, "a calm piano piece");
        assert!(!n.custom_mode);
        assert_eq!(n.model, "V4_5");
        let e = req(None, None, true).normalize().unwrap_err();
        assert_eq!(e.field, "prompt");
        let e = req(Some(&"x".repeat(501)), None, false)
            .normalize()
            .unwrap_err();
        assert_eq!(e.field, "prompt");
    }

    #[test]
    fn custom_mode_takes_style_and_title_and_lyrics_unless_instrumental() {
        let n = req(None, Some("Lo-fi"), true).normalize().unwrap();
        assert!(n.custom_mode);
        assert_eq!(n.title.as_deref(), Some("Untitled"));
        assert_eq!(
            req(None, Some("Lo-fi"), false)
                .normalize()
                .unwrap_err()
                .field,
            "prompt"
        );
        let titled_only = MusicRequest {
            prompt: Some("la la".into()),
            title: Some("Song".into()),
            ..Default::default()
        };
        assert_eq!(titled_only.normalize().unwrap_err().field, "style");
        let v4 = MusicRequest {
            model: Some("v4".into()),
            ..req(Some(&"x".repeat(3001)), Some("pop"), false)
        };
        assert_eq!(v4.normalize().unwrap_err().field, "prompt");
    }

    fn lyrics(prompt: &str) -> MusicRequest {
        req(Some(prompt), Some("synthwave"), false)
    }

    #[test]
    fn lyrics_keep_their_line_breaks_and_one_blank_line_between_stanzas() {
        let n = lyrics("\r\n  Neon  lights,\r\n   city  nights \r\n\r\n\r\n\tChorus  here\r\n\r\n")
            .normalize()
            .unwrap();
        assert!(n.custom_mode);
        assert_eq!(n.prompt, "Neon lights,\ncity nights\n\nChorus here");
    }

    #[test]
    fn two_layouts_of_the_same_lyrics_share_one_key() {
        let unix = lyrics("Neon lights,\ncity nights\n\nChorus here");
        let windows =
            lyrics("\r\n Neon   lights, \r\n\tcity nights\r\n\r\n\r\n  Chorus\u{a0} here \r\n");
        let old_mac = lyrics("Neon lights,\rcity  nights\r\rChorus here\r");
        let key = unix.normalize().unwrap().cache_key();
        assert_eq!(windows.normalize().unwrap().cache_key(), key);
        assert_eq!(old_mac.normalize().unwrap().cache_key(), key);
    }

    #[test]
    fn lyrics_with_another_line_structure_get_another_key() {
        let keys: Vec<_> = [
            "Neon lights, city nights",
            "Neon lights,\ncity nights",
            "Neon lights,\n\ncity nights",
            "Neon\nlights, city nights",
        ]
        .iter()
        .map(|p| lyrics(p).normalize().unwrap().cache_key())
        .collect();
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn descriptions_styles_and_titles_are_folded_to_one_line() {
        let simple = req(Some(" a calm\r\n\r\npiano  piece\n"), None, false)
            .normalize()
            .unwrap();
        assert_eq!(simple.prompt, "a calm piano piece");
        let custom = MusicRequest {
            title: Some(" Night\n Drive ".into()),
            ..req(Some("la\nla"), Some("lo-fi\r\n  hip hop"), false)
        }
        .normalize()
        .unwrap();
        assert_eq!(custom.style.as_deref(), Some("lo-fi hip hop"));
        assert_eq!(custom.title.as_deref(), Some("Night Drive"));
        assert_eq!(custom.prompt, "la\nla");
    }

    #[test]
    fn model_aliases_resolve() {
        for alias in ["v4.5", "V4_5", "v4-5"] {
            let r = MusicRequest {
                model: Some(alias.into()),
                ..req(Some("x"), None, false)
            };
            assert_eq!(r.normalize().unwrap().model, "V4_5");
        }
        let bad = MusicRequest {
            model: Some("V9".into()),
            ..req(Some("x"), None, false)
        };
        assert_eq!(bad.normalize().unwrap_err().field, "model");
    }
}
