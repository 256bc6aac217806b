//! Property tests of normalisation and cache keys.

use media_cache::domain::{CacheKey, ImageRequest, MediaType, NormalizedMedia, TtsRequest};
use proptest::prelude::*;

const VOICES: &[&str] = &["alloy", "echo", "nova", "shimmer", "onyx"];
const FORMATS: &[&str] = &["mp3", "wav", "flac", "opus"];

/// Random upper/lower casing and surrounding spaces.
fn respell(token: &str, mask: u64, pad: usize) -> String {
    let cased: String = token
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    format!("{}{cased}{}", " ".repeat(pad), " ".repeat(pad % 2))
}

/// Same words, other whitespace between and around them.
fn rewhitespace(words: &[String], seps: &[usize]) -> String {
    let spaces = ["  ", "\n", "\t", " \u{3000}", " "];
    let mut out = String::from(spaces[seps[0] % spaces.len()]);
    for (i, w) in words.iter().enumerate() {
        out.push_str(w);
        out.push_str(spaces[seps[(i + 1) % seps.len()] % spaces.len()]);
    }
    out
}

fn words() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("[a-zA-Z0-9éü,.!?']{1,8}", 1..12)
}

proptest! {
    #[test]
    fn equivalent_tts_requests_share_one_key(
        words in words(),
        seps in prop::collection::vec(0usize..5, 1..6),
        voice in prop::sample::select(VOICES),
        format in prop::sample::select(FORMATS),
        mask in any::<u64>(),
        pad in 0usize..3,
        spell_defaults in any::<bool>(),
    ) {
        let canonical = TtsRequest {
            text: Some(words.join(" ")),
            voice: Some(voice.into()),
            format: Some(format.into()),
            ..Default::default()
        };
        let variant = TtsRequest {
            text: Some(rewhitespace(&words, &seps)),
            voice: Some(respell(voice, mask, pad)),
            format: Some(respell(format, mask.rotate_left(7), pad)),
            model: spell_defaults.then(|| respell("tts-1", mask, pad)),
            speed: spell_defaults.then_some(1.0),
            instructions: None,
        };
        let a = canonical.normalize().unwrap().cache_key();
        let b = variant.normalize().unwrap().cache_key();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn changing_an_output_field_changes_the_tts_key(
        words in words(),
        field in 0usize..5,
        speed in 0.25f64..4.0,
    ) {
        let base = TtsRequest { text: Some(words.join(" ")), ..Default::default() };
        let changed = match field {
            0 => TtsRequest { text: Some(format!("{} more", words.join(" "))), ..base.clone() },
            1 => TtsRequest { voice: Some("echo".into()), ..base.clone() },
            2 => TtsRequest { model: Some("tts-1-hd".into()), ..base.clone() },
            3 => TtsRequest { format: Some("wav".into()), ..base.clone() },
            _ => TtsRequest { speed: Some(if speed == 1.0 { 1.5 } else { speed }), ..base.clone() },
        };
        prop_assert_ne!(
            base.normalize().unwrap().cache_key(),
            changed.normalize().unwrap().cache_key()
        );
    }

    #[test]
    fn equivalent_image_requests_share_one_key(
        words in words(),
        seps in prop::collection::vec(0usize..5, 1..6),
        mask in any::<u64>(),
        pad in 0usize..3,
        spell_defaults in any::<bool>(),
    ) {
        let canonical = ImageRequest { prompt: Some(words.join(" ")), ..Default::default() };
        let variant = ImageRequest {
            prompt: Some(rewhitespace(&words, &seps)),
            model: spell_defaults.then(|| respell("dall-e-3", mask, pad)),
            size: spell_defaults.then(|| respell("1024x1024", mask, pad)),
            quality: spell_defaults.then(|| respell("standard", mask, pad)),
            style: spell_defaults.then(|| respell("vivid", mask, pad)),
            n: spell_defaults.then_some(1),
            ..Default::default()
        };
        prop_assert_eq!(
            canonical.normalize().unwrap().cache_key(),
            variant.normalize().unwrap().cache_key()
        );
    }

    #[test]
    fn changing_an_output_field_changes_the_image_key(words in words(), field in 0usize..5) {
        let base = ImageRequest { prompt: Some(words.join(" ")), ..Default::default() };
        let changed = match field {
            0 => ImageRequest { prompt: Some(format!("{}!", words.join(" "))), ..base.clone() },
            1 => ImageRequest { size: Some("1792x1024".into()), ..base.clone() },
            2 => ImageRequest { quality: Some("hd".into()), ..base.clone() },
            3 => ImageRequest { style: Some("natural".into()), ..base.clone() },
            _ => ImageRequest { model: Some("dall-e-2".into()), style: None, ..base.clone() },
        };
        prop_assert_ne!(
            base.normalize().unwrap().cache_key(),
            changed.normalize().unwrap().cache_key()
        );
    }

    #[test]
    fn tts_and_image_keys_never_collide(words in words()) {
        // Whole keys always differ by their `CACHE#{type}#` prefix: only the hashes can collide.
        let text = words.join(" ");
        let tts = TtsRequest { text: Some(text.clone()), ..Default::default() }.normalize().unwrap();
        let image = ImageRequest { prompt: Some(text), ..Default::default() }.normalize().unwrap();
        let (tts_key, image_key) = (tts.cache_key(), image.cache_key());
        prop_assert_ne!(tts_key.hash(), image_key.hash());
        // Nor do the same parameters under the other type: the type is hashed too.
        let (tts_as_image, image_as_tts) =
            (CacheKey::of(MediaType::Image, &tts), CacheKey::of(MediaType::Tts, &image));
        prop_assert_ne!(tts_key.hash(), tts_as_image.hash());
        prop_assert_ne!(image_key.hash(), image_as_tts.hash());
    }
}

#[test]
fn the_same_parameters_under_two_types_hash_differently() {
    // Identical canonical JSON, different type: the type is part of the hash input.
    let params = serde_json::json!({"text": "x"});
    assert_ne!(
        CacheKey::of(MediaType::Tts, &params).hash(),
        CacheKey::of(MediaType::Image, &params).hash()
    );
}
