//! Header escaping (STOMP 1.1 and 1.2, "Value Encoding").

use crate::{Command, Version};

/// Which escape set applies to a frame's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escaping {
    /// STOMP 1.0, and CONNECT/CONNECTED in every version: bytes are literal.
    None,
    /// STOMP 1.1: `\n`, `\c`, `\\`.
    V1_1,
    /// STOMP 1.2: `\r`, `\n`, `\c`, `\\`.
    V1_2,
}

impl Escaping {
    /// The escaping that applies to `command` in `version`.
    pub fn for_frame(command: Command, version: Version) -> Escaping {
        if command.is_handshake() {
            return Escaping::None;
        }
        match version {
            Version::V1_0 => Escaping::None,
            Version::V1_1 => Escaping::V1_1,
            Version::V1_2 => Escaping::V1_2,
        }
    }
}

/// An escape sequence the version does not define (the spec: "Undefined escape
/// sequences such as `\t` MUST be treated as a fatal protocol error").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UndefinedEscape;

/// Decodes escapes in `raw` into `out`. Returns `UndefinedEscape` for an
/// unknown sequence or a trailing lone backslash.
pub fn unescape_into(
    raw: &[u8],
    escaping: Escaping,
    out: &mut Vec<u8>,
) -> Result<(), UndefinedEscape> {
    if escaping == Escaping::None {
        out.extend_from_slice(raw);
        return Ok(());
    }
    let mut rest = raw;
    while let Some(i) = memchr::memchr(b'\\', rest) {
        out.extend_from_slice(&rest[..i]);
        let decoded = match rest.get(i + 1) {
            Some(b'n') => b'\n',
            Some(b'c') => b':',
            Some(b'\\') => b'\\',
            Some(b'r') if escaping == Escaping::V1_2 => b'\r',
            _ => return Err(UndefinedEscape),
        };
        out.push(decoded);
        rest = &rest[i + 2..];
    }
    out.extend_from_slice(rest);
    Ok(())
}

/// True when `s` contains a byte that this escaping must encode.
pub fn needs_escape(s: &str, escaping: Escaping) -> bool {
    match escaping {
        Escaping::None => s.bytes().any(|b| b == b'\n' || b == b'\r'),
        _ => s.bytes().any(|b| matches!(b, b'\n' | b'\r' | b':' | b'\\')),
    }
}

/// Appends `s` to `out` with this escaping applied. Where a version cannot
/// express a byte (a line break in 1.0 or in CONNECTED; a carriage return in
/// 1.1), it is written as a space so the frame stays well formed.
pub fn escape_into(s: &str, escaping: Escaping, out: &mut impl Extend<u8>) {
    let bytes = s.as_bytes();
    if !needs_escape(s, escaping) {
        out.extend(bytes.iter().copied());
        return;
    }
    for &b in bytes {
        match (escaping, b) {
            (Escaping::None, b'\n' | b'\r') => out.extend([b' ']),
            (Escaping::None, _) => out.extend([b]),
            (_, b'\n') => out.extend(*b"\\n"),
            (_, b':') => out.extend(*b"\\c"),
            (_, b'\\') => out.extend(*b"\\\\"),
            (Escaping::V1_2, b'\r') => out.extend(*b"\\r"),
            (_, b'\r') => out.extend([b' ']),
            (_, _) => out.extend([b]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unescape(raw: &[u8], e: Escaping) -> Result<Vec<u8>, UndefinedEscape> {
        let mut out = Vec::new();
        unescape_into(raw, e, &mut out).map(|_| out)
    }

    fn escape(s: &str, e: Escaping) -> String {
        let mut out = Vec::new();
        escape_into(s, e, &mut out);
        String::from_utf8(out).expect("escaping keeps UTF-8")
    }

    #[test]
    fn value_encoding_1_2_decodes_all_four_escapes() {
        assert_eq!(
            unescape(br"a\r\n\c\\b", Escaping::V1_2).unwrap(),
            b"a\r\n:\\b"
        );
    }

    #[test]
    fn value_encoding_1_1_has_no_carriage_return_escape() {
        assert_eq!(unescape(br"a\rb", Escaping::V1_1), Err(UndefinedEscape));
        assert_eq!(unescape(br"a\n\c\\b", Escaping::V1_1).unwrap(), b"a\n:\\b");
    }

    #[test]
    fn value_encoding_undefined_escape_is_fatal() {
        assert_eq!(unescape(br"\t", Escaping::V1_2), Err(UndefinedEscape));
        assert_eq!(
            unescape(br"trailing\", Escaping::V1_2),
            Err(UndefinedEscape)
        );
    }

    #[test]
    fn value_encoding_1_0_is_literal() {
        assert_eq!(unescape(br"a\tb\c", Escaping::None).unwrap(), br"a\tb\c");
    }

    #[test]
    fn escaping_round_trips() {
        for e in [Escaping::V1_1, Escaping::V1_2] {
            let s = "x:y\\z\nw";
            assert_eq!(unescape(escape(s, e).as_bytes(), e).unwrap(), s.as_bytes());
        }
        assert_eq!(escape("a\r", Escaping::V1_2), "a\\r");
        assert_eq!(escape("a\r", Escaping::V1_1), "a ");
        assert_eq!(escape("a:b\nc", Escaping::None), "a:b c");
    }
}
