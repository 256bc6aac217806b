//! Text normalisation shared by every media type: equal meaning, equal bytes.

use unicode_normalization::UnicodeNormalization;

/// Unicode NFC, surrounding whitespace trimmed and every run of whitespace folded to one space.
pub fn normalize_text(input: &str) -> String {
    let nfc: String = input.nfc().collect();
    nfc.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A lower-cased, trimmed enum-like value (`voice`, `format`, `quality`...).
pub fn normalize_token(input: &str) -> String {
    input.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_whitespace_and_composes_unicode() {
        assert_eq!(normalize_text("  hello \n\t world  "), "hello world");
        // "e" + combining acute accent composes to the single code point U+00E9.
        assert_eq!(normalize_text("cafe\u{301}"), "caf\u{e9}");
    }

    #[test]
    fn tokens_are_lowercased_and_trimmed() {
        assert_eq!(normalize_token(" NoVa "), "nova");
    }
}
