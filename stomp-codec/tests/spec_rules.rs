//! One test per rule of the STOMP 1.2 frame grammar ("Augmented BNF",
//! "Value Encoding", "Body", "Heart-beating", "Size Limits"), plus the 1.0
//! and 1.1 differences. Test names start with the rule they check.

use bytes::BytesMut;
use stomp_codec::{
    decode_all, encode_frame, encode_message, header, negotiate, Command, DecodeError, Decoder,
    Frame, HeartBeat, Item, Limits, SharedMessage, Version,
};

fn frames(input: &[u8], version: Version) -> Vec<Frame> {
    let (items, rest) = decode_all(input, Limits::default(), version).expect("valid input");
    assert!(rest.is_empty(), "unconsumed: {rest:?}");
    items
        .into_iter()
        .filter_map(|i| match i {
            Item::Frame(f) => Some(f),
            Item::HeartBeat => None,
        })
        .collect()
}

fn one(input: &[u8]) -> Frame {
    let mut f = frames(input, Version::V1_2);
    assert_eq!(f.len(), 1);
    f.remove(0)
}

fn err(input: &[u8], version: Version, limits: Limits) -> DecodeError {
    decode_all(input, limits, version).expect_err("must be rejected")
}

fn err12(input: &[u8]) -> DecodeError {
    err(input, Version::V1_2, Limits::default())
}

fn encode(frame: &Frame, version: Version) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(frame, version, &mut out);
    out.to_vec()
}

// ---- frame = command EOL *(header EOL) EOL *OCTET NULL *(EOL)

#[test]
fn grammar_frame_is_command_headers_blank_line_body_nul() {
    let f = one(b"SEND\ndestination:/queue/a\nreceipt:1\n\nhello\0");
    assert_eq!(f.command, Command::Send);
    assert_eq!(f.header("destination"), Some("/queue/a"));
    assert_eq!(f.header("receipt"), Some("1"));
    assert_eq!(&f.body[..], b"hello");
}

#[test]
fn grammar_every_client_and_server_command_is_recognised() {
    for c in Command::ALL {
        let input = format!("{}\n\n\0", c.as_str());
        assert_eq!(one(input.as_bytes()).command, c);
    }
}

#[test]
fn grammar_unknown_command_is_an_error() {
    assert_eq!(err12(b"PUBLISH\n\n\0"), DecodeError::UnknownCommand);
}

#[test]
fn grammar_commands_are_case_sensitive() {
    assert_eq!(err12(b"send\n\n\0"), DecodeError::UnknownCommand);
}

#[test]
fn grammar_garbage_is_rejected_before_a_line_ends() {
    // No EOL yet, but far longer than any command: fail without buffering more.
    let mut dec = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1 and much more"[..]);
    assert_eq!(dec.decode(&mut buf), Err(DecodeError::UnknownCommand));
}

#[test]
fn grammar_frame_without_headers_or_body() {
    let f = one(b"DISCONNECT\n\n\0");
    assert!(f.headers.is_empty());
    assert!(f.body.is_empty());
}

#[test]
fn grammar_eol_may_be_crlf() {
    let f = one(b"SEND\r\ndestination:/a\r\nx:y\r\n\r\nbody\0");
    assert_eq!(f.header("destination"), Some("/a"));
    assert_eq!(f.header("x"), Some("y"));
    assert_eq!(&f.body[..], b"body");
}

#[test]
fn grammar_eol_lf_and_crlf_may_mix() {
    let f = one(b"SEND\r\ndestination:/a\nx:y\r\n\nbody\0");
    assert_eq!(f.header("x"), Some("y"));
}

#[test]
fn grammar_only_one_cr_is_part_of_the_eol() {
    let f = one(b"SEND\ndestination:/a\nx:y\r\r\n\n\0");
    assert_eq!(f.header("x"), Some("y\r"));
}

#[test]
fn grammar_trailing_eols_after_nul_are_heart_beats() {
    let (items, _) =
        decode_all(b"DISCONNECT\n\n\0\n\r\n", Limits::default(), Version::V1_2).unwrap();
    assert!(matches!(items[0], Item::Frame(_)));
    assert_eq!(&items[1..], &[Item::HeartBeat, Item::HeartBeat]);
}

#[test]
fn grammar_several_frames_in_one_chunk() {
    let f = frames(
        b"SEND\ndestination:/a\n\n1\0SEND\ndestination:/b\n\n2\0\nBEGIN\ntransaction:t\n\n\0",
        Version::V1_2,
    );
    assert_eq!(f.len(), 3);
    assert_eq!(&f[1].body[..], b"2");
    assert_eq!(f[2].command, Command::Begin);
}

#[test]
fn grammar_frame_split_at_every_byte_decodes_the_same() {
    let input: &[u8] =
        b"SEND\r\ndestination:/a\\cb\r\ncontent-length:5\r\n\r\nh\0l\0o\0\nMESSAGE\nsubscription:1\nmessage-id:2\ndestination:/x\n\nok\0";
    let whole = decode_all(input, Limits::default(), Version::V1_2)
        .unwrap()
        .0;
    for split in 0..=input.len() {
        let mut dec = Decoder::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in [&input[..split], &input[split..]] {
            buf.extend_from_slice(chunk);
            while let Some(i) = dec.decode(&mut buf).unwrap() {
                got.push(i);
            }
        }
        assert_eq!(got, whole, "split at {split}");
    }
}

#[test]
fn grammar_byte_by_byte_feeding_keeps_partial_state() {
    let input = b"SUBSCRIBE\nid:0\ndestination:/topic/t\nack:client\n\n\0";
    let mut dec = Decoder::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut got = None;
    for b in input {
        buf.extend_from_slice(&[*b]);
        if let Some(i) = dec.decode(&mut buf).unwrap() {
            got = Some(i);
        }
    }
    let Some(Item::Frame(f)) = got else {
        panic!("no frame")
    };
    assert_eq!(f.header("ack"), Some("client"));
}

// ---- header = header-name ":" header-value

#[test]
fn header_repeated_entries_are_kept_and_the_first_wins() {
    let f = one(b"MESSAGE\nfoo:World\nfoo:Hello\n\n\0");
    assert_eq!(f.header("foo"), Some("World"));
    assert_eq!(
        f.headers.get_all("foo").collect::<Vec<_>>(),
        ["World", "Hello"]
    );
    assert_eq!(f.headers.len(), 2);
}

#[test]
fn header_order_is_preserved() {
    let f = one(b"SEND\nc:3\na:1\nb:2\n\n\0");
    let names: Vec<_> = f.headers.iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["c", "a", "b"]);
}

#[test]
fn header_value_is_split_at_the_first_colon() {
    // Unescaped colons in values are accepted (as common brokers do).
    let f = one(b"SEND\ndestination:/a:b:c\n\n\0");
    assert_eq!(f.header("destination"), Some("/a:b:c"));
}

#[test]
fn header_whitespace_is_not_trimmed() {
    let f = one(b"SEND\nfoo : bar \n\n\0");
    assert_eq!(f.header("foo "), Some(" bar "));
}

#[test]
fn header_empty_value_is_allowed() {
    assert_eq!(one(b"SEND\nfoo:\n\n\0").header("foo"), Some(""));
}

#[test]
fn header_line_without_colon_is_an_error() {
    assert_eq!(
        err12(b"SEND\ndestination\n\n\0"),
        DecodeError::MalformedHeader
    );
}

#[test]
fn header_empty_name_is_an_error() {
    assert_eq!(err12(b"SEND\n:value\n\n\0"), DecodeError::MalformedHeader);
}

#[test]
fn header_must_be_utf8() {
    assert_eq!(err12(b"SEND\nfoo:\xff\xfe\n\n\0"), DecodeError::InvalidUtf8);
}

#[test]
fn header_multibyte_utf8_is_kept() {
    assert_eq!(
        one("SEND\nnom:café 🎉\n\n\0".as_bytes()).header("nom"),
        Some("café 🎉")
    );
}

// ---- Value Encoding

#[test]
fn escaping_1_2_decodes_cr_lf_colon_backslash() {
    let f = one(b"MESSAGE\na\\cb:x\\r\\ny\\\\z\\c\n\n\0");
    assert_eq!(f.header("a:b"), Some("x\r\ny\\z:"));
}

#[test]
fn escaping_1_2_undefined_sequence_is_fatal() {
    assert_eq!(err12(b"SEND\nfoo:a\\tb\n\n\0"), DecodeError::InvalidEscape);
    assert_eq!(err12(b"SEND\nfoo:ab\\\n\n\0"), DecodeError::InvalidEscape);
}

#[test]
fn escaping_1_1_defines_lf_colon_backslash_but_not_cr() {
    let f = frames(b"SEND\nfoo:a\\nb\\cc\\\\d\n\n\0", Version::V1_1).remove(0);
    assert_eq!(f.header("foo"), Some("a\nb:c\\d"));
    assert_eq!(
        err(b"SEND\nfoo:a\\rb\n\n\0", Version::V1_1, Limits::default()),
        DecodeError::InvalidEscape
    );
}

#[test]
fn escaping_1_0_has_none() {
    let f = frames(b"SEND\nfoo:a\\nb\\t\n\n\0", Version::V1_0).remove(0);
    assert_eq!(f.header("foo"), Some("a\\nb\\t"));
}

#[test]
fn escaping_never_applies_to_connect_and_connected() {
    for cmd in ["CONNECT", "STOMP", "CONNECTED"] {
        let input = format!("{cmd}\npasscode:a\\cb\\t\n\n\0");
        let f = frames(input.as_bytes(), Version::V1_2).remove(0);
        assert_eq!(f.header("passcode"), Some("a\\cb\\t"), "{cmd}");
    }
    let connected = Frame::new(Command::Connected).with_header("server", "a:b\\c");
    assert_eq!(
        encode(&connected, Version::V1_2),
        b"CONNECTED\nserver:a:b\\c\n\n\0"
    );
}

#[test]
fn escaping_applies_to_header_names_too() {
    let f = one(b"SEND\nmy\\cname:v\n\n\0");
    assert_eq!(f.header("my:name"), Some("v"));
}

#[test]
fn escaping_encoder_escapes_per_version() {
    let f = Frame::new(Command::Message).with_header("k", "a:b\\c\nd\re");
    assert_eq!(
        encode(&f, Version::V1_2),
        b"MESSAGE\nk:a\\cb\\\\c\\nd\\re\ncontent-length:0\n\n\0"
    );
    assert_eq!(
        encode(&f, Version::V1_1),
        b"MESSAGE\nk:a\\cb\\\\c\\nd e\ncontent-length:0\n\n\0"
    );
    assert_eq!(
        encode(&f, Version::V1_0),
        b"MESSAGE\nk:a:b\\c d e\ncontent-length:0\n\n\0"
    );
}

// ---- Body, content-length

#[test]
fn content_length_reads_exactly_that_many_bytes_including_nuls() {
    let f = one(b"SEND\ndestination:/a\ncontent-length:7\n\n\0a\0b\0c\0\0");
    assert_eq!(&f.body[..], b"\0a\0b\0c\0");
}

#[test]
fn content_length_counts_bytes_not_characters() {
    let body = "héllo 🎉"; // 7 characters, 11 bytes
    let input = format!(
        "SEND\ndestination:/a\ncontent-length:{}\n\n{body}\0",
        body.len()
    );
    assert_eq!(&one(input.as_bytes()).body[..], body.as_bytes());
    let short = format!(
        "SEND\ndestination:/a\ncontent-length:{}\n\n{body}\0",
        body.chars().count()
    );
    assert_eq!(err12(short.as_bytes()), DecodeError::MissingNul);
}

#[test]
fn content_length_requires_a_nul_after_the_body() {
    assert_eq!(
        err12(b"SEND\ncontent-length:2\n\nabc\0"),
        DecodeError::MissingNul
    );
}

#[test]
fn content_length_must_be_a_decimal_integer() {
    for bad in ["-1", "abc", "", "1.5", "0x10", "99999999999999999999999"] {
        let input = format!("SEND\ncontent-length:{bad}\n\n\0");
        assert_eq!(
            err12(input.as_bytes()),
            DecodeError::InvalidContentLength,
            "{bad}"
        );
    }
}

#[test]
fn content_length_first_occurrence_wins() {
    let f = one(b"SEND\ncontent-length:3\ncontent-length:1\n\nabc\0");
    assert_eq!(&f.body[..], b"abc");
}

#[test]
fn content_length_zero_means_empty_body() {
    assert!(one(b"SEND\ncontent-length:0\n\n\0").body.is_empty());
}

#[test]
fn body_without_content_length_ends_at_the_first_nul() {
    let (items, rest) = decode_all(b"SEND\n\nab\0cd", Limits::default(), Version::V1_2).unwrap();
    assert!(matches!(&items[0], Item::Frame(f) if &f.body[..] == b"ab"));
    assert_eq!(&rest[..], b"cd", "the rest waits for more bytes");
}

#[test]
fn body_is_a_slice_of_the_input_buffer_not_a_copy() {
    let mut dec = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(&b"SEND\ncontent-length:4\n\nbody\0"[..]);
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let Some(Item::Frame(f)) = dec.decode(&mut buf).unwrap() else {
        panic!()
    };
    let p = f.body.as_ptr() as usize;
    assert!(p >= start && p + f.body.len() <= end);
}

#[test]
fn encoder_always_writes_content_length_in_bytes() {
    let f = Frame::new(Command::Send)
        .with_header("destination", "/a")
        .with_body("é\0");
    assert_eq!(
        encode(&f, Version::V1_2),
        b"SEND\ndestination:/a\ncontent-length:3\n\n\xc3\xa9\0\0"
    );
}

#[test]
fn encoder_replaces_a_wrong_content_length_header() {
    let f = Frame::new(Command::Send)
        .with_header("content-length", "99")
        .with_body("ab");
    assert_eq!(encode(&f, Version::V1_2), b"SEND\ncontent-length:2\n\nab\0");
}

#[test]
fn encoder_omits_content_length_on_bodiless_commands() {
    let f = Frame::new(Command::Receipt).with_header("receipt-id", "1");
    assert_eq!(encode(&f, Version::V1_2), b"RECEIPT\nreceipt-id:1\n\n\0");
}

// ---- fan-out encoding

#[test]
fn fanout_shared_message_equals_a_plain_encoding() {
    let shared = SharedMessage::new(
        "/topic/a",
        [("content-type", "text/plain"), ("x-custom", "1")],
        "hi".into(),
    );
    for v in Version::ALL {
        let mut a = BytesMut::new();
        encode_message(&mut a, v, &shared, "sub-1", "m-9", Some("a-9"), &[]);
        let plain = Frame::new(Command::Message)
            .with_header("subscription", "sub-1")
            .with_header("message-id", "m-9")
            .with_header("ack", "a-9")
            .with_header("destination", "/topic/a")
            .with_header("content-type", "text/plain")
            .with_header("x-custom", "1")
            .with_body("hi");
        assert_eq!(a.to_vec(), encode(&plain, v), "{v}");
    }
}

#[test]
fn fanout_shared_part_escapes_per_subscriber_version() {
    let shared = SharedMessage::new("/topic/a:b", [], "x".into());
    let f12 = frames(&encode_msg(&shared, Version::V1_2), Version::V1_2).remove(0);
    let f10 = frames(&encode_msg(&shared, Version::V1_0), Version::V1_0).remove(0);
    assert_eq!(f12.header("destination"), Some("/topic/a:b"));
    assert_eq!(f10.header("destination"), Some("/topic/a:b"));
    assert!(encode_msg(&shared, Version::V1_2)
        .windows(2)
        .any(|w| w == b"\\c"));
}

fn encode_msg(shared: &SharedMessage, v: Version) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_message(&mut out, v, shared, "s", "m", None, &[]);
    out.to_vec()
}

#[test]
fn fanout_shared_part_drops_per_subscriber_headers() {
    let shared = SharedMessage::new(
        "/q",
        [
            ("subscription", "evil"),
            ("message-id", "x"),
            ("content-length", "9"),
        ],
        "ab".into(),
    );
    let f = frames(&encode_msg(&shared, Version::V1_2), Version::V1_2).remove(0);
    assert_eq!(f.headers.get_all("subscription").collect::<Vec<_>>(), ["s"]);
    assert_eq!(f.header("content-length"), Some("2"));
}

// ---- Size limits

fn tiny() -> Limits {
    Limits {
        max_frame_bytes: 64,
        max_headers: 2,
        max_header_line_bytes: 24,
        max_body_bytes: 32,
    }
}

#[test]
fn limits_frame_over_max_is_rejected_before_it_is_buffered() {
    // content-length announces more than fits: rejected at the blank line.
    let mut dec = Decoder::new(Limits {
        max_body_bytes: 1000,
        ..tiny()
    });
    let mut buf = BytesMut::from(&b"SEND\ncontent-length:100\n\n"[..]);
    assert_eq!(
        dec.decode(&mut buf),
        Err(DecodeError::FrameTooLarge { limit: 64 })
    );
    // No content-length: rejected as soon as the buffered part passes the limit.
    let mut dec = Decoder::new(Limits {
        max_body_bytes: 1000,
        ..tiny()
    });
    let mut buf = BytesMut::from(&b"SEND\n\n"[..]);
    buf.extend_from_slice(&[b'x'; 70]);
    assert_eq!(
        dec.decode(&mut buf),
        Err(DecodeError::FrameTooLarge { limit: 64 })
    );
}

#[test]
fn limits_body_over_max_is_rejected() {
    let e = err(b"SEND\ncontent-length:33\n\n", Version::V1_2, tiny());
    assert_eq!(e, DecodeError::BodyTooLarge { limit: 32 });
    let mut input = b"SEND\n\n".to_vec();
    input.extend_from_slice(&[b'x'; 33]);
    assert_eq!(
        err(&input, Version::V1_2, tiny()),
        DecodeError::BodyTooLarge { limit: 32 }
    );
}

#[test]
fn limits_header_count_over_max_is_rejected() {
    assert_eq!(
        err(b"SEND\na:1\nb:2\nc:3\n\n\0", Version::V1_2, tiny()),
        DecodeError::TooManyHeaders { limit: 2 }
    );
}

#[test]
fn limits_header_line_over_max_is_rejected_before_its_eol() {
    let e = err(b"SEND\nabcdefgh:ijklmnopqrstuvwxyz", Version::V1_2, tiny());
    assert_eq!(e, DecodeError::HeaderLineTooLong { limit: 24 });
}

#[test]
fn limits_tighter_before_connect_then_widened() {
    let mut dec = Decoder::new(Limits::BEFORE_CONNECT);
    let mut big = b"SEND\n\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 70 * 1024));
    big.push(0);
    let mut buf = BytesMut::from(&big[..]);
    // Both limits are passed; the frame's (64 KiB counting the head) first.
    assert_eq!(
        dec.decode(&mut buf),
        Err(DecodeError::FrameTooLarge { limit: 64 * 1024 })
    );
    let mut dec = Decoder::new(Limits::BEFORE_CONNECT);
    dec.set_limits(Limits::DEFAULT);
    let mut buf = BytesMut::from(&big[..]);
    assert!(matches!(dec.decode(&mut buf), Ok(Some(Item::Frame(_)))));
}

#[test]
fn limits_errors_are_distinct_and_named() {
    let kinds = [
        DecodeError::FrameTooLarge { limit: 1 }.kind(),
        DecodeError::BodyTooLarge { limit: 1 }.kind(),
        DecodeError::TooManyHeaders { limit: 1 }.kind(),
        DecodeError::HeaderLineTooLong { limit: 1 }.kind(),
    ];
    let unique: std::collections::HashSet<_> = kinds.iter().collect();
    assert_eq!(unique.len(), kinds.len());
}

#[test]
fn decoder_stays_failed_after_an_error() {
    let mut dec = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(&b"BOGUS\n\n\0"[..]);
    assert!(dec.decode(&mut buf).is_err());
    let mut buf = BytesMut::from(&b"SEND\n\n\0"[..]);
    assert_eq!(dec.decode(&mut buf), Err(DecodeError::UnknownCommand));
}

// ---- missing NUL leniency (WebSocket)

#[test]
fn lenient_missing_nul_is_off_by_default() {
    let mut dec = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(&b"SEND\ndestination:/a\n\nhello"[..]);
    assert_eq!(dec.decode(&mut buf), Ok(None));
    assert_eq!(dec.end_of_message(&mut buf), Ok(None));
    assert!(dec.is_mid_frame());
}

#[test]
fn lenient_missing_nul_completes_the_frame_at_message_end() {
    let mut dec = Decoder::new(Limits::default());
    dec.set_lenient_missing_nul(true);
    let mut buf = BytesMut::from(&b"SEND\ndestination:/a\n\nhello"[..]);
    assert_eq!(dec.decode(&mut buf), Ok(None));
    let Ok(Some(Item::Frame(f))) = dec.end_of_message(&mut buf) else {
        panic!()
    };
    assert_eq!(&f.body[..], b"hello");
    assert!(buf.is_empty());
    // With content-length the body must be complete.
    let mut buf = BytesMut::from(&b"SEND\ncontent-length:9\n\nhello"[..]);
    assert_eq!(dec.decode(&mut buf), Ok(None));
    assert_eq!(dec.end_of_message(&mut buf), Ok(None));
}

// ---- Heart-beating

#[test]
fn heart_beat_header_parses_two_integers() {
    assert_eq!(HeartBeat::parse("0,0"), Ok(HeartBeat::default()));
    assert_eq!(
        HeartBeat::parse("100,2000"),
        Ok(HeartBeat {
            send_ms: 100,
            recv_ms: 2000
        })
    );
    for bad in ["", "1", "a,b", "1,2,3", "-1,0", "1;2"] {
        assert!(HeartBeat::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn heart_beat_negotiation_takes_the_max_and_zero_disables() {
    let client = HeartBeat {
        send_ms: 4000,
        recv_ms: 10000,
    };
    let server = HeartBeat {
        send_ms: 5000,
        recv_ms: 3000,
    };
    let s = negotiate(server, client);
    assert_eq!(s.send_every, Some(std::time::Duration::from_millis(10000)));
    assert_eq!(s.expect_every, Some(std::time::Duration::from_millis(4000)));
    let c = negotiate(client, server);
    assert_eq!(c.send_every, s.expect_every);
    assert_eq!(c.expect_every, s.send_every);
    let none = negotiate(
        server,
        HeartBeat {
            send_ms: 0,
            recv_ms: 0,
        },
    );
    assert_eq!((none.send_every, none.expect_every), (None, None));
}

#[test]
fn heart_beat_eol_between_frames_is_its_own_item() {
    let (items, _) = decode_all(b"\n\r\n\nSEND\n\n\0", Limits::default(), Version::V1_2).unwrap();
    assert_eq!(
        &items[..3],
        &[Item::HeartBeat, Item::HeartBeat, Item::HeartBeat]
    );
    assert!(matches!(items[3], Item::Frame(_)));
}

#[test]
fn heart_beat_lone_cr_is_not_an_eol() {
    assert_eq!(err12(b"\rX"), DecodeError::UnknownCommand);
}

#[test]
fn constants_name_the_headers() {
    assert_eq!(header::CONTENT_LENGTH, "content-length");
    assert_eq!(Command::Send.required_headers(), &[header::DESTINATION]);
}

#[test]
fn limits_content_length_near_usize_max_is_too_large_not_an_overflow() {
    // With the body and frame limits lifted, the announced size still cannot
    // be added to the head without overflowing: the frame is too large.
    let unlimited = Limits {
        max_frame_bytes: usize::MAX,
        max_headers: usize::MAX,
        max_header_line_bytes: usize::MAX,
        max_body_bytes: usize::MAX,
    };
    let input = format!("SEND\ncontent-length:{}\n\n\0", usize::MAX);
    assert_eq!(
        err(input.as_bytes(), Version::V1_2, unlimited),
        DecodeError::FrameTooLarge { limit: usize::MAX }
    );
    let input = format!("SEND\ncontent-length:{}\n\n\0", usize::MAX - 7);
    assert_eq!(
        err(input.as_bytes(), Version::V1_2, unlimited),
        DecodeError::FrameTooLarge { limit: usize::MAX }
    );
}

/// Decodes `input` whole, then split in two at every point and byte by byte,
/// and asserts every way gives the same items and the same error.
fn assert_split_independent(input: &[u8], limits: Limits) -> Result<Vec<Item>, DecodeError> {
    let whole = decode_all(input, limits, Version::V1_2).map(|(items, _)| items);
    let feed = |chunks: &mut dyn Iterator<Item = &[u8]>| {
        let mut dec = Decoder::new(limits);
        let mut buf = BytesMut::new();
        let mut items = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(i) = dec.decode(&mut buf)? {
                items.push(i);
            }
        }
        Ok(items)
    };
    for split in 0..=input.len() {
        let (a, b) = input.split_at(split);
        assert_eq!(feed(&mut [a, b].into_iter()), whole, "split at {split}");
    }
    assert_eq!(feed(&mut input.chunks(1)), whole, "byte by byte");
    whole
}

#[test]
fn limits_first_violated_limit_is_reported_however_the_input_is_split() {
    let limits = |frame, line, body| Limits {
        max_frame_bytes: frame,
        max_headers: 8,
        max_header_line_bytes: line,
        max_body_bytes: body,
    };
    // A long command line in a 3-byte frame limit: the frame limit is passed
    // at its 3rd byte, long before the line is known not to be a command.
    assert_eq!(
        assert_split_independent(b"GET / HTTP/1.1\r\r\n\r\n", limits(3, 100, 100)),
        Err(DecodeError::FrameTooLarge { limit: 3 })
    );
    // The line limit is passed before the command line is 13 bytes long.
    assert_eq!(
        assert_split_independent(b"GET / HTTP/1.1\n\n", limits(100, 4, 100)),
        Err(DecodeError::HeaderLineTooLong { limit: 4 })
    );
    // Past 12 bytes a line is no command, whatever the limits.
    assert_eq!(
        assert_split_independent(b"GET / HTTP/1.1\n\n", limits(100, 100, 100)),
        Err(DecodeError::UnknownCommand)
    );
    // Body limit passed at body byte 3, frame limit at frame byte 20.
    assert_eq!(
        assert_split_independent(b"SEND\n\n0123456789abcdef\0", limits(20, 100, 2)),
        Err(DecodeError::BodyTooLarge { limit: 2 })
    );
    // Frame limit passed (at byte 10) before the body limit (body byte 12).
    assert_eq!(
        assert_split_independent(b"SEND\n\n0123456789abcdef\0", limits(10, 100, 11)),
        Err(DecodeError::FrameTooLarge { limit: 10 })
    );
}

#[test]
fn limits_header_line_limit_excludes_the_cr_of_the_eol() {
    // A line of exactly the limit followed by CRLF fits, even when the CR
    // arrives on its own; a CR followed by more content does not.
    let limits = Limits {
        max_header_line_bytes: 5,
        ..Limits::default()
    };
    let ok = assert_split_independent(b"SEND\na:bcd\r\n\n\0", limits).unwrap();
    assert!(matches!(&ok[0], Item::Frame(f) if f.header("a") == Some("bcd")));
    assert_eq!(
        assert_split_independent(b"SEND\na:bcd\rx\n\n\0", limits),
        Err(DecodeError::HeaderLineTooLong { limit: 5 })
    );
}

#[test]
fn limits_frame_of_exactly_max_bytes_is_accepted() {
    // 16 bytes including the NUL, with and without content-length.
    let limits = Limits {
        max_frame_bytes: 16,
        ..Limits::default()
    };
    let input = b"SEND\nx:y\n\nabcde\0";
    assert_eq!(input.len(), 16);
    assert!(assert_split_independent(input, limits).is_ok());
    assert!(assert_split_independent(b"SEND\nx:y\n\nabcdef\0", limits).is_err());
    let input = b"SEND\ncontent-length:1\n\na\0";
    let limits = Limits {
        max_frame_bytes: input.len(),
        ..Limits::default()
    };
    assert!(assert_split_independent(input, limits).is_ok());
    assert_eq!(
        assert_split_independent(b"SEND\ncontent-length:2\n\nab\0", limits),
        Err(DecodeError::FrameTooLarge { limit: input.len() })
    );
}
