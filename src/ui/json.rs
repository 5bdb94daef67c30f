//! JSON lines as `--json` prints them. serde_json escapes only what JSON
//! requires (quotes, backslashes, C0 controls); DEL, the C1 controls and the
//! bidirectional controls would reach a terminal or a log viewer raw, where
//! they can recolour it or make a name read as another. They are escaped as
//! `\uXXXX` too, so a parser reads back exactly the strings that were meant.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::Formatter;

use crate::escape::is_unprintable;

/// `value` as one JSON line, every unprintable character escaped.
pub fn line(value: &impl Serialize) -> String {
    let mut line = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut line, Escaping);
    value
        .serialize(&mut serializer)
        .expect("events have string keys only");
    String::from_utf8(line).expect("serde_json writes UTF-8")
}

/// serde_json's compact output, with [`is_unprintable`] characters escaped.
struct Escaping;

impl Formatter for Escaping {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut rest = fragment;
        while let Some((at, c)) = rest.char_indices().find(|&(_, c)| is_unprintable(c)) {
            writer.write_all(&rest.as_bytes()[..at])?;
            // Every such character is in the Basic Multilingual Plane: one
            // `\uXXXX` holds it.
            write!(writer, "\\u{:04x}", u32::from(c))?;
            rest = &rest[at + c.len_utf8()..];
        }
        writer.write_all(rest.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::events::{Event, ReceiveFailed};

    #[test]
    fn unprintable_characters_are_escaped_and_read_back_as_they_were() {
        let error = "w\u{7f}\u{9b}31m\u{202e}vnp.\u{2066}x\u{200f}\u{61c}\u{1b}[0m.npy: \"ü\" 層";
        let event = Event::from(ReceiveFailed {
            peer: "3f9a2c81d0".into(),
            error: error.into(),
        });
        let printed = line(&event);
        assert!(
            !printed.chars().any(is_unprintable),
            "a raw control character in {printed:?}"
        );
        for escaped in [
            r"\u007f", r"\u009b", r"\u202e", r"\u2066", r"\u200f", r"\u061c", r"\u001b",
        ] {
            assert!(printed.contains(escaped), "{escaped} is not in {printed}");
        }
        assert!(printed.contains("ü") && printed.contains("層"), "{printed}");
        let read: serde_json::Value = serde_json::from_str(&printed).unwrap();
        assert_eq!(read["error"], error);
        assert_eq!(read["event"], "receive_failed");
        assert_eq!(printed.lines().count(), 1);
    }
}
