//! Property tests: encode→decode round-trips any frame, and a byte stream
//! split at arbitrary points decodes to the same items as the whole stream.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use stomp_codec::{
    decode_all, encode_frame, header, Command, Decoder, Frame, Item, Limits, Version,
};

fn version() -> impl Strategy<Value = Version> {
    prop::sample::select(Version::ALL.to_vec())
}

fn command() -> impl Strategy<Value = Command> {
    prop::sample::select(Command::ALL.to_vec())
}

/// Header text a given version can carry exactly. 1.2 can carry anything;
/// 1.1 has no `\r` escape; 1.0 and CONNECT/CONNECTED escape nothing, so no
/// line breaks and no colon in names.
fn text(
    allow_breaks: bool,
    allow_colon: bool,
    allow_cr: bool,
    min: usize,
) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), min..12).prop_map(move |chars| {
        chars
            .into_iter()
            .filter(|c| (allow_breaks || (*c != '\n' && *c != '\r')) && (allow_cr || *c != '\r'))
            .filter(|c| allow_colon || *c != ':')
            .collect::<String>()
    })
}

fn frame_for(version: Version) -> impl Strategy<Value = Frame> {
    command().prop_flat_map(move |cmd| {
        let escaped = !cmd.is_handshake() && version != Version::V1_0;
        let cr = escaped && version == Version::V1_2;
        let name = text(escaped, escaped, cr, 1).prop_filter("non-empty name", |n| !n.is_empty());
        let value = text(escaped, true, cr, 0);
        let headers = prop::collection::vec((name, value), 0..8);
        let body = prop::collection::vec(any::<u8>(), 0..300);
        (headers, body).prop_map(move |(headers, body)| {
            let mut f = Frame::new(cmd);
            for (n, v) in &headers {
                if n != header::CONTENT_LENGTH {
                    f.headers.push(n, v);
                }
            }
            f.with_body(Bytes::from(body))
        })
    })
}

fn without_content_length(mut f: Frame) -> Frame {
    f.headers.remove(header::CONTENT_LENGTH);
    f
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn encode_then_decode_round_trips((v, frame) in version().prop_flat_map(|v| (Just(v), frame_for(v)))) {
        let mut buf = BytesMut::new();
        encode_frame(&frame, v, &mut buf);
        let (items, rest) = decode_all(&buf, Limits::default(), v).expect("our own encoding decodes");
        prop_assert!(rest.is_empty());
        prop_assert_eq!(items.len(), 1);
        let Item::Frame(decoded) = items.into_iter().next().unwrap() else { panic!("not a frame") };
        prop_assert_eq!(without_content_length(decoded), frame);
    }

    #[test]
    fn split_stream_decodes_like_the_whole(
        v in version(),
        frames in prop::collection::vec(frame_for(Version::V1_2).prop_map(Some).boxed().prop_union(Just(None).boxed()), 1..12),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        // A stream of frames and heart-beats, encoded for version `v` (frames
        // generated for 1.2 are re-validated through the encoder for `v`).
        let mut stream = BytesMut::new();
        for f in &frames {
            match f {
                Some(f) => encode_frame(f, v, &mut stream),
                None => stream.extend_from_slice(b"\n"),
            }
        }
        let whole = decode_all(&stream, Limits::default(), v);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.sort_unstable();
        let mut dec = Decoder::new(Limits::default());
        dec.set_version(v);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut failed = None;
        let mut prev = 0;
        for p in points.into_iter().chain(std::iter::once(stream.len())) {
            buf.extend_from_slice(&stream[prev..p]);
            prev = p;
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(i)) => got.push(i),
                    Ok(None) => break,
                    Err(e) => { failed = Some(e); break; }
                }
            }
            if failed.is_some() { break; }
        }
        match whole {
            Ok((items, rest)) => {
                prop_assert!(failed.is_none());
                prop_assert_eq!(got, items);
                prop_assert_eq!(buf, rest);
            }
            Err(e) => prop_assert_eq!(failed, Some(e)),
        }
    }
}
