//! Text from a peer — file and tensor names, refusal reasons, error texts —
//! made safe to print. Raw, such text could retitle or recolour the terminal
//! (escape sequences), forge a line of a log (line breaks), or make a name read
//! as another (bidirectional controls reorder what follows them).

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as it is: C0 and C1 controls and DEL
/// (escape sequences, bells, line breaks, tabs), and the Unicode bidirectional
/// controls.
pub fn is_unprintable(c: char) -> bool {
    c.is_control() || is_bidi_control(c)
}

/// The bidirectional embeddings, overrides and isolates, and the marks
/// (left-to-right, right-to-left, Arabic letter).
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// `text` with every [`is_unprintable`] character escaped as Rust writes it
/// (`\n`, `\t`, `\u{1b}`, `\u{202e}`) and the rest as it is. Escaping twice
/// changes nothing more: a backslash is left alone.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unprintable) {
        return text.into();
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_unprintable(c) {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    escaped.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_controls_are_escaped_and_the_rest_kept() {
        assert_eq!(
            printable("\u{1b}]0;pwned\u{7}\u{1b}[31mx.safetensors"),
            r"\u{1b}]0;pwned\u{7}\u{1b}[31mx.safetensors"
        );
        assert_eq!(printable("a\nb\rc\td\u{7f}e"), r"a\nb\rc\td\u{7f}e");
        assert_eq!(printable("\u{9b}31m"), r"\u{9b}31m");
        assert_eq!(
            printable("model\u{202e}vnp.safetensors"),
            r"model\u{202e}vnp.safetensors"
        );
        for bidi in [
            '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}',
            '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
        ] {
            assert!(is_unprintable(bidi), "{:?}", bidi.escape_unicode());
        }
        for c in (0..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            assert!(is_unprintable(c), "{:?}", c.escape_unicode());
        }
        let plain = "層.0/weight-ü.safetensors \\n";
        assert!(matches!(printable(plain), Cow::Borrowed(text) if text == plain));
        let once = printable("x\u{1b}y").into_owned();
        assert_eq!(printable(&once), once);
    }
}
