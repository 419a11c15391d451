//! Fuzz target `decode`: streaming decoding against whole-buffer decoding,
//! encode/decode round trips, and the limits.
//!
//! Input layout (10 configuration bytes, then the STOMP bytes):
//!
//! | byte | meaning |
//! | ---- | ------- |
//! | 0    | bits 0-1: version (`% 3`: 1.0, 1.1, 1.2); bit 2: lenient missing NUL |
//! | 1-4  | `max_frame_bytes`, `max_headers`, `max_header_line_bytes`, `max_body_bytes`, each an index into [`LIMITS`] |
//! | 5-7  | transport read sizes, used in turn: `n + 1` bytes, 255 = the rest of the message |
//! | 8-9  | message sizes, used in turn (`end_of_message` after each); byte 8 = 0: one message |
//!
//! Checks, beyond "no panic":
//! - (a) split decoding yields exactly the items, then the same error or the
//!   same unconsumed bytes, as decoding whole: `decode_all` when strict; when
//!   lenient (where message boundaries matter) each message fed in one piece;
//! - (b) every decoded frame, encoded again for the same version and decoded,
//!   equals itself minus `content-length`, except for the bytes the encoder
//!   documents it cannot express in that escaping (see [`expected_after_encoding`]);
//! - (c) no item breaks the limits in force.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stomp_codec::escape::Escaping;
use stomp_codec::{
    decode_all, encode_frame, header, DecodeError, Decoder, Frame, Item, Limits, Version,
};

/// Limit values to choose from: tiny ones that every input trips over, the
/// boundary of the longest command line (12), realistic ones, and no limit.
const LIMITS: [usize; 16] = [
    0,
    1,
    2,
    3,
    4,
    6,
    8,
    12,
    13,
    16,
    24,
    32,
    64,
    256,
    4096,
    usize::MAX,
];

/// Limits for decoding our own re-encoding, which may add a header and
/// escapes: wide enough for anything a fuzz input can hold.
const ROOMY: Limits = Limits {
    max_frame_bytes: 1 << 30,
    max_headers: 1 << 30,
    max_header_line_bytes: 1 << 30,
    max_body_bytes: 1 << 30,
};

struct Config<'a> {
    limits: Limits,
    version: Version,
    lenient: bool,
    reads: [usize; 3],
    messages: Option<[usize; 2]>,
    data: &'a [u8],
}

fn config(input: &[u8]) -> Option<Config<'_>> {
    let (head, data) = input.split_at_checked(10)?;
    let limit = |b: u8| LIMITS[usize::from(b) % LIMITS.len()];
    let read = |b: u8| {
        if b == u8::MAX {
            usize::MAX
        } else {
            usize::from(b) + 1
        }
    };
    Some(Config {
        version: Version::ALL[usize::from(head[0] & 3) % 3],
        lenient: head[0] & 4 != 0,
        limits: Limits {
            max_frame_bytes: limit(head[1]),
            max_headers: limit(head[2]),
            max_header_line_bytes: limit(head[3]),
            max_body_bytes: limit(head[4]),
        },
        reads: [read(head[5]), read(head[6]), read(head[7])],
        messages: (head[8] != 0).then(|| [usize::from(head[8]), usize::from(head[9])]),
        data,
    })
}

/// `data` cut into pieces whose sizes are taken from `sizes` in turn.
fn pieces<'a>(data: &'a [u8], sizes: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = data;
    let mut i = 0;
    let mut first = true;
    std::iter::from_fn(move || {
        // An empty input is still one (empty) piece.
        if rest.is_empty() && !std::mem::take(&mut first) {
            return None;
        }
        first = false;
        let n = sizes[i % sizes.len()].min(rest.len());
        i += 1;
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        Some(piece)
    })
}

/// What a run produced: the items, then either the bytes left over or the
/// error that ended it.
#[derive(Debug, PartialEq)]
struct Outcome {
    items: Vec<Item>,
    end: Result<BytesMut, DecodeError>,
}

/// Feeds `data` message by message, each message read by read, draining the
/// decoder after every read and calling `end_of_message` after every message.
fn run(cfg: &Config<'_>, messages: &[usize], reads: &[usize]) -> Outcome {
    let mut dec = Decoder::new(cfg.limits);
    dec.set_version(cfg.version);
    dec.set_lenient_missing_nul(cfg.lenient);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for message in pieces(cfg.data, messages) {
        for read in pieces(message, reads) {
            buf.extend_from_slice(read);
            loop {
                let before = buf.len();
                match dec.decode(&mut buf) {
                    Ok(Some(item)) => {
                        check_limits(&item, before - buf.len(), false, cfg.limits);
                        items.push(item);
                    }
                    Ok(None) => break,
                    Err(e) => return failed(&mut dec, &mut buf, items, e),
                }
            }
        }
        let before = buf.len();
        match dec.end_of_message(&mut buf) {
            Ok(Some(item)) => {
                assert!(cfg.lenient, "end_of_message produced an item while strict");
                assert!(buf.is_empty(), "a completed message left bytes behind");
                check_limits(&item, before - buf.len(), true, cfg.limits);
                items.push(item);
            }
            Ok(None) => assert_eq!(buf.len(), before, "end_of_message consumed bytes"),
            Err(e) => {
                assert!(cfg.lenient, "end_of_message failed while strict");
                return failed(&mut dec, &mut buf, items, e);
            }
        }
    }
    Outcome {
        items,
        end: Ok(buf),
    }
}

/// Errors are final: the decoder keeps returning the same one.
fn failed(dec: &mut Decoder, buf: &mut BytesMut, items: Vec<Item>, e: DecodeError) -> Outcome {
    assert_eq!(dec.decode(buf), Err(e.clone()), "error is not sticky");
    Outcome { items, end: Err(e) }
}

/// (c): `consumed` is the number of input bytes the item took.
fn check_limits(item: &Item, consumed: usize, nul_missing: bool, limits: Limits) {
    let Item::Frame(f) = item else {
        assert!(
            consumed == 1 || consumed == 2,
            "heart-beat of {consumed} bytes"
        );
        return;
    };
    // The frame's size counts its NUL, even one the leniency supplied.
    let size = consumed + usize::from(nul_missing);
    assert!(size <= limits.max_frame_bytes, "frame of {size} bytes");
    assert!(f.body.len() <= limits.max_body_bytes, "body too large");
    assert!(f.headers.len() <= limits.max_headers, "too many headers");
    for (n, v) in f.headers.iter() {
        // Unescaping only shortens, so this is a lower bound of the line.
        let line = n.len() + 1 + v.len();
        assert!(
            line <= limits.max_header_line_bytes,
            "header line of {line}"
        );
    }
}

/// What a frame becomes after `encode_frame` then decoding, minus
/// `content-length` (which the encoder rewrites). The encoder writes a byte
/// the escaping cannot express as a space: CR and LF with no escaping (1.0,
/// and CONNECT/STOMP/CONNECTED), CR in 1.1. Everything else is kept exactly.
fn expected_after_encoding(f: &Frame, version: Version) -> Frame {
    let escaping = Escaping::for_frame(f.command, version);
    let fix = |s: &str| match escaping {
        Escaping::None => s.replace(['\r', '\n'], " "),
        Escaping::V1_1 => s.replace('\r', " "),
        Escaping::V1_2 => s.to_owned(),
    };
    let mut e = Frame::new(f.command).with_body(f.body.clone());
    for (n, v) in f.headers.iter() {
        if n != header::CONTENT_LENGTH {
            e.headers.push(&fix(n), &fix(v));
        }
    }
    e
}

/// (b).
fn check_round_trip(f: &Frame, version: Version) {
    let mut wire = BytesMut::new();
    encode_frame(f, version, &mut wire);
    let (items, rest) = decode_all(&wire, ROOMY, version)
        .unwrap_or_else(|e| panic!("re-encoding of {f:?} does not decode: {e}: {wire:?}"));
    assert!(rest.is_empty(), "re-encoding left {rest:?}");
    let [Item::Frame(again)] = &items[..] else {
        panic!("re-encoding decoded as {items:?}");
    };
    let mut again = again.clone();
    again.headers.remove(header::CONTENT_LENGTH);
    assert_eq!(again, expected_after_encoding(f, version), "wire: {wire:?}");
}

fuzz_target!(|input: &[u8]| {
    let Some(cfg) = config(input) else { return };
    let messages: &[usize] = match &cfg.messages {
        Some(m) => m,
        None => &[usize::MAX],
    };
    let split = run(&cfg, messages, &cfg.reads);

    // (a)
    let whole = if cfg.lenient {
        run(&cfg, messages, &[usize::MAX])
    } else {
        let reference = run(&cfg, &[usize::MAX], &[usize::MAX]);
        match decode_all(cfg.data, cfg.limits, cfg.version) {
            Ok((items, rest)) => {
                assert_eq!(reference.items, items);
                assert_eq!(reference.end, Ok(rest));
            }
            Err(e) => assert_eq!(reference.end, Err(e)),
        }
        reference
    };
    assert_eq!(split, whole, "split decoding differs from whole decoding");

    // (b)
    for item in &split.items {
        if let Item::Frame(f) = item {
            check_round_trip(f, cfg.version);
        }
    }
});
