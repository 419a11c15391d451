//! The encoder, including the shared-part MESSAGE encoding used for fan-out.

use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};

use crate::escape::{needs_escape, Escaping};
use crate::{header, Command, Frame, Version};

/// A heart-beat: one EOL.
pub const HEARTBEAT: &[u8] = b"\n";

/// Writes `frame` to `dst` for a peer speaking `version`. Headers are escaped
/// as the version requires (never on CONNECT/CONNECTED). A `content-length`
/// header is always written for a non-empty body and for SEND, MESSAGE and
/// ERROR; one present in `frame.headers` is replaced by the real length.
pub fn encode_frame(frame: &Frame, version: Version, dst: &mut BytesMut) {
    let escaping = Escaping::for_frame(frame.command, version);
    // Command, headers, content-length (at most 36 bytes), blank line,
    // body, NUL; escapes may still grow it.
    dst.reserve(
        frame.command.as_str().len() + frame.headers.wire_len_hint() + 40 + frame.body.len(),
    );
    dst.put_slice(frame.command.as_str().as_bytes());
    dst.put_u8(b'\n');
    for (name, value) in frame.headers.iter() {
        if name == header::CONTENT_LENGTH {
            continue;
        }
        put_header(dst, name, value, escaping);
    }
    if !frame.body.is_empty() || frame.command.allows_body() {
        put_content_length(dst, frame.body.len());
    }
    dst.put_u8(b'\n');
    dst.put_slice(&frame.body);
    dst.put_u8(0);
}

fn put_header(dst: &mut BytesMut, name: &str, value: &str, escaping: Escaping) {
    put_escaped(dst, name, escaping);
    dst.put_u8(b':');
    put_escaped(dst, value, escaping);
    dst.put_u8(b'\n');
}

/// `s` with `escaping` applied, as [`crate::escape::escape_into`] does, but
/// copying the runs between bytes that need escaping as whole slices.
fn put_escaped(dst: &mut BytesMut, s: &str, escaping: Escaping) {
    let mut rest = s.as_bytes();
    // Most headers need no escaping: a check without early exit, which the
    // compiler vectorises, then one copy.
    if !rest
        .iter()
        .fold(false, |any, &b| any | is_special(b, escaping))
    {
        dst.put_slice(rest);
        return;
    }
    while let Some(i) = rest.iter().position(|&b| is_special(b, escaping)) {
        dst.put_slice(&rest[..i]);
        dst.put_slice(escape_byte(rest[i], escaping));
        rest = &rest[i + 1..];
    }
    dst.put_slice(rest);
}

/// True for the bytes `escaping` rewrites.
fn is_special(b: u8, escaping: Escaping) -> bool {
    match escaping {
        Escaping::None => b == b'\n' || b == b'\r',
        Escaping::V1_1 | Escaping::V1_2 => matches!(b, b'\n' | b'\r' | b':' | b'\\'),
    }
}

/// What a byte for which [`is_special`] holds is written as.
fn escape_byte(b: u8, escaping: Escaping) -> &'static [u8] {
    match (escaping, b) {
        (Escaping::None, _) => b" ",
        (_, b'\n') => b"\\n",
        (_, b':') => b"\\c",
        (_, b'\\') => b"\\\\",
        (Escaping::V1_2, _) => b"\\r",
        // A CR in 1.1, which has no escape for it.
        (Escaping::V1_1, _) => b" ",
    }
}

/// Bytes the headers take unescaped, to reserve once.
fn headers_len<'a>(headers: impl Iterator<Item = (&'a str, &'a str)>) -> usize {
    headers.map(|(n, v)| n.len() + v.len() + 2).sum()
}

fn put_content_length(dst: &mut BytesMut, len: usize) {
    dst.put_slice(b"content-length:");
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    dst.put_slice(&digits[i..]);
    dst.put_u8(b'\n');
}

/// The part of a MESSAGE that is the same for every subscriber: destination,
/// content-type, user headers, content-length, the blank line, the body and
/// the NUL. Encoded once per escape set and shared (`Bytes` clones are
/// reference counts), then joined with each subscriber's
/// [`MessageHead`] when written.
#[derive(Debug)]
pub struct SharedMessage {
    headers: Vec<(String, String)>,
    body: Bytes,
    /// True when some header needs escaping, so versions differ.
    version_sensitive: bool,
    encoded: [OnceLock<Bytes>; 3],
}

impl SharedMessage {
    /// `headers` must not hold the per-subscriber headers (`subscription`,
    /// `message-id`, `ack`) nor `content-length`; they are skipped if present.
    pub fn new<'a>(
        destination: &str,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        body: Bytes,
    ) -> Self {
        let mut all = vec![(header::DESTINATION.to_owned(), destination.to_owned())];
        for (n, v) in headers {
            if matches!(
                n,
                header::SUBSCRIPTION
                    | header::MESSAGE_ID
                    | header::ACK
                    | header::CONTENT_LENGTH
                    | header::DESTINATION
            ) {
                continue;
            }
            all.push((n.to_owned(), v.to_owned()));
        }
        let version_sensitive = all
            .iter()
            .any(|(n, v)| needs_escape(n, Escaping::V1_2) || needs_escape(v, Escaping::V1_2));
        SharedMessage {
            headers: all,
            body,
            version_sensitive,
            encoded: Default::default(),
        }
    }

    /// The destination.
    pub fn destination(&self) -> &str {
        &self.headers[0].1
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The shared headers (destination first).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The encoded shared part for a subscriber speaking `version`. Computed
    /// once per distinct escape set; most messages need no escaping and share
    /// one encoding across all versions.
    pub fn encoded(&self, version: Version) -> &Bytes {
        let slot = if self.version_sensitive {
            version as usize
        } else {
            2
        };
        self.encoded[slot].get_or_init(|| {
            let escaping = Escaping::for_frame(Command::Message, version);
            let headers = self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
            let mut dst = BytesMut::with_capacity(headers_len(headers) + 40 + self.body.len());
            for (n, v) in &self.headers {
                put_header(&mut dst, n, v, escaping);
            }
            put_content_length(&mut dst, self.body.len());
            dst.put_u8(b'\n');
            dst.put_slice(&self.body);
            dst.put_u8(0);
            dst.freeze()
        })
    }
}

/// The per-subscriber start of a MESSAGE frame: the command line plus
/// `subscription`, `message-id`, optional `ack` and any extra headers
/// (e.g. `redelivered`). Small; built per delivery.
pub fn encode_message_head(
    dst: &mut BytesMut,
    version: Version,
    subscription: &str,
    message_id: &str,
    ack: Option<&str>,
    extra: &[(&str, &str)],
) {
    let escaping = Escaping::for_frame(Command::Message, version);
    dst.reserve(64 + subscription.len() + message_id.len());
    dst.put_slice(b"MESSAGE\n");
    put_header(dst, header::SUBSCRIPTION, subscription, escaping);
    put_header(dst, header::MESSAGE_ID, message_id, escaping);
    if let Some(ack) = ack {
        put_header(dst, header::ACK, ack, escaping);
    }
    for (n, v) in extra {
        put_header(dst, n, v, escaping);
    }
}

/// Writes a complete MESSAGE: the subscriber's head then the shared part.
pub fn encode_message(
    dst: &mut BytesMut,
    version: Version,
    shared: &SharedMessage,
    subscription: &str,
    message_id: &str,
    ack: Option<&str>,
    extra: &[(&str, &str)],
) {
    encode_message_head(dst, version, subscription, message_id, ack, extra);
    dst.put_slice(shared.encoded(version));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::escape::escape_into;

    #[test]
    fn slice_escaping_matches_the_reference_escaper() {
        let samples = [
            "",
            "plain",
            ":",
            "a:b\\c\nd\re",
            "\r\n\\::\\\\",
            "caf\u{e9} \u{1f389}:x",
            "trailing\\",
        ];
        for escaping in [Escaping::None, Escaping::V1_1, Escaping::V1_2] {
            for s in samples {
                let mut expected = Vec::new();
                escape_into(s, escaping, &mut expected);
                let mut got = BytesMut::new();
                put_escaped(&mut got, s, escaping);
                assert_eq!(&got[..], &expected[..], "{s:?} {escaping:?}");
            }
        }
    }
}
