//! Text normalisation shared by every media type: equal meaning, equal bytes.

use unicode_normalization::UnicodeNormalization;

/// Unicode NFC, surrounding whitespace trimmed and every run of whitespace folded to one space.
pub fn normalize_text(input: &str) -> String {
    let nfc: String = input.nfc().collect();
    nfc.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Text whose line breaks mean something (song lyrics): Unicode NFC, `\r\n` and `\r` turned into
/// `\n`, each line trimmed with its runs of whitespace folded to one space, leading and trailing
/// blank lines dropped and every run of blank lines kept as one (a stanza break). Only CR and LF
/// break lines; other whitespace (tabs, U+2028...) folds like a space. Text of one line comes
/// out exactly as [`normalize_text`] gives it.
pub fn normalize_lines(input: &str) -> String {
    let nfc: String = input.nfc().collect();
    let unified = nfc.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = String::with_capacity(unified.len());
    let mut stanza_break = false;
    for line in unified.split('\n') {
        let folded = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if folded.is_empty() {
            // A blank line counts only between two lines of text.
            stanza_break = !out.is_empty();
            continue;
        }
        if !out.is_empty() {
            out.push_str(if stanza_break { "\n\n" } else { "\n" });
        }
        stanza_break = false;
        out.push_str(&folded);
    }
    out
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
    fn lines_are_kept_and_each_is_trimmed_and_folded() {
        assert_eq!(
            normalize_lines(
                "\r\n\n  Verse  one,\t here \r\nline\u{3000}two\r\r\n\n\nChorus\rcafe\u{301}\n \n"
            ),
            "Verse one, here\nline two\n\nChorus\ncaf\u{e9}"
        );
        assert_eq!(normalize_lines(" \r\n\t\n "), "");
    }

    #[test]
    fn text_of_one_line_normalises_as_it_always_did() {
        for text in ["  hello \t world  ", "cafe\u{301}", "a\u{2028}b", "", "x"] {
            assert_eq!(normalize_lines(text), normalize_text(text), "{text:?}");
        }
    }

    #[test]
    fn tokens_are_lowercased_and_trimmed() {
        assert_eq!(normalize_token(" NoVa "), "nova");
    }
}
