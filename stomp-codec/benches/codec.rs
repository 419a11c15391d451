//! Decode and encode throughput, with other STOMP crates and a `memchr` scan
//! measured in the same run on the same bytes.
//!
//! `cargo bench -p stomp-codec --bench codec`
//!
//! Inputs: a small SEND (6 headers, 120-byte body), a 1 KiB MESSAGE, a
//! 64 KiB binary MESSAGE body with NULs (with `content-length`), a 64 KiB
//! text body without `content-length` (its end is found by scanning), and a
//! 1,000-frame server stream (MESSAGE, RECEIPT, ERROR, heart-beats) cut at
//! fixed-seed random points and fed chunk by chunk.
//!
//! Compared: `tokio-stomp-2` (a streaming `tokio_util` codec; its client
//! side decodes server frames and encodes client frames, so it runs where
//! that applies) and `stomp-parser` (parses one whole frame per call, so the
//! stream is handed to it already cut at frame boundaries, which favours it).
//! A single-frame decode gets its input in a fresh buffer made in untimed
//! setup (`iter_batched`); in the stream, appending each read to the buffer
//! (or `to_vec` of each frame for `stomp-parser`) is timed for all. Encoders
//! build their frame from the same parts each iteration (the other crates
//! take owned values).

use std::hint::black_box;
use std::ops::Range;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};
use stomp_codec::{encode_frame, Command, Decoder, Frame, Item, Limits, Version};
use tokio_util::codec::{Decoder as _, Encoder as _};

/// xorshift64*: fixed-seed, dependency-free randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn text(&mut self, n: usize) -> Vec<u8> {
        const WORDS: &[u8] = b"lorem ipsum dolor sit amet consectetur adipiscing elit ";
        (0..n).map(|_| WORDS[self.below(WORDS.len())]).collect()
    }
}

/// A frame as parts, from which every crate builds its own.
#[derive(Clone)]
struct Spec {
    command: Command,
    headers: Vec<(String, String)>,
    body: Bytes,
    /// Whether the wire form carries `content-length`.
    content_length: bool,
}

impl Spec {
    fn new(command: Command, headers: &[(&str, &str)], body: Vec<u8>, cl: bool) -> Spec {
        Spec {
            command,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
            content_length: cl,
        }
    }

    fn header(&self, name: &str) -> String {
        let found = self.headers.iter().find(|(n, _)| n == name);
        found.map(|(_, v)| v.clone()).unwrap_or_default()
    }

    /// The wire bytes (no header here needs escaping).
    fn wire(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.command.as_str().as_bytes());
        out.push(b'\n');
        for (n, v) in &self.headers {
            out.extend_from_slice(format!("{n}:{v}\n").as_bytes());
        }
        if self.content_length {
            out.extend_from_slice(format!("content-length:{}\n", self.body.len()).as_bytes());
        }
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out.push(0);
    }

    fn ours(&self) -> Frame {
        let mut f = Frame::new(self.command).with_body(self.body.clone());
        for (n, v) in &self.headers {
            f.headers.push(n, v);
        }
        f
    }
}

/// An input: its frames, their wire bytes, where each frame lies, and how
/// the wire is cut into reads.
struct Input {
    name: &'static str,
    specs: Vec<Spec>,
    wire: Vec<u8>,
    frames: Vec<Range<usize>>,
    reads: Vec<usize>,
}

impl Input {
    fn new(name: &'static str, specs: Vec<Spec>, heart_beats: bool, rng: &mut Rng) -> Input {
        let mut wire = Vec::new();
        let mut frames = Vec::new();
        for s in &specs {
            if heart_beats && rng.below(10) == 0 {
                wire.push(b'\n');
            }
            let start = wire.len();
            s.wire(&mut wire);
            frames.push(start..wire.len());
        }
        let reads = if specs.len() > 1 {
            let mut reads = Vec::new();
            let mut left = wire.len();
            while left > 0 {
                let n = (1 + rng.below(1500)).min(left);
                reads.push(n);
                left -= n;
            }
            reads
        } else {
            vec![wire.len()]
        };
        Input {
            name,
            specs,
            wire,
            frames,
            reads,
        }
    }

    fn is_server(&self) -> bool {
        self.specs.iter().all(|s| {
            matches!(
                s.command,
                Command::Message | Command::Receipt | Command::Error
            )
        })
    }

    fn is_send(&self) -> bool {
        self.specs.iter().all(|s| s.command == Command::Send)
    }

    /// Bytes of the wire, read by read.
    fn chunks(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut at = 0;
        self.reads.iter().map(move |&n| {
            at += n;
            &self.wire[at - n..at]
        })
    }
}

fn inputs() -> Vec<Input> {
    let mut rng = Rng(0x5707_1e5e_ed00_0001);
    let small_send = Spec::new(
        Command::Send,
        &[
            ("destination", "/topic/chat.room-42"),
            ("content-type", "text/plain;charset=utf-8"),
            ("receipt", "r-1042"),
            ("x-client-msg-id", "7f3c2a9e-41b7-4a55-9d0e-3c1f2b6a8e11"),
            ("priority", "4"),
        ],
        rng.text(120),
        true,
    );
    let message = |rng: &mut Rng, body: Vec<u8>, ct: &str, cl: bool| {
        let id = format!("m-{}", rng.next() % 1_000_000);
        Spec::new(
            Command::Message,
            &[
                ("subscription", "sub-0"),
                ("message-id", &id),
                ("destination", "/topic/chat.room-42"),
                ("content-type", ct),
            ],
            body,
            cl,
        )
    };
    let body_1k = rng.text(1024);
    let message_1k = message(&mut rng, body_1k, "text/plain", true);
    let mut body_64k = rng.bytes(64 * 1024);
    for i in (0..body_64k.len()).step_by(97) {
        body_64k[i] = 0;
    }
    let message_64k = message(&mut rng, body_64k, "application/octet-stream", true);
    let body_text_64k = rng.text(64 * 1024);
    let text_64k = message(&mut rng, body_text_64k, "text/plain", false);
    let mut stream = Vec::new();
    for i in 0..1000 {
        let spec = match rng.below(20) {
            0..=13 => {
                let n = 16 + rng.below(2048);
                if rng.below(2) == 0 {
                    let body = rng.text(n);
                    message(&mut rng, body, "text/plain", false)
                } else {
                    let body = rng.bytes(n);
                    message(&mut rng, body, "application/octet-stream", true)
                }
            }
            14..=18 => Spec::new(
                Command::Receipt,
                &[("receipt-id", &format!("r-{i}"))],
                Vec::new(),
                false,
            ),
            _ => Spec::new(
                Command::Error,
                &[("message", "malformed frame received")],
                rng.text(64),
                true,
            ),
        };
        stream.push(spec);
    }
    vec![
        Input::new("small_send", vec![small_send], false, &mut rng),
        Input::new("message_1k", vec![message_1k], false, &mut rng),
        Input::new("binary_64k", vec![message_64k], false, &mut rng),
        Input::new("text_64k_no_length", vec![text_64k], false, &mut rng),
        Input::new("stream_1000", stream, true, &mut rng),
    ]
}

// ---- decoders

fn decode_ours(input: &Input) -> usize {
    let mut dec = Decoder::new(Limits::DEFAULT);
    let mut buf = BytesMut::new();
    let mut frames = 0;
    for chunk in input.chunks() {
        buf.extend_from_slice(chunk);
        while let Some(item) = dec.decode(&mut buf).expect("valid input") {
            if let Item::Frame(f) = item {
                black_box(f);
                frames += 1;
            }
        }
    }
    frames
}

fn decode_tokio_stomp_2(input: &Input) -> usize {
    let mut codec = tokio_stomp_2::client::ClientCodec;
    let mut buf = BytesMut::new();
    let mut frames = 0;
    for chunk in input.chunks() {
        buf.extend_from_slice(chunk);
        while let Some(m) = codec.decode(&mut buf).expect("valid input") {
            black_box(m);
            frames += 1;
        }
    }
    frames
}

fn decode_stomp_parser(input: &Input) -> usize {
    use stomp_parser::{client::ClientFrame, server::ServerFrame};
    for r in &input.frames {
        let bytes = input.wire[r.clone()].to_vec();
        if input.is_send() {
            black_box(ClientFrame::try_from(bytes).expect("valid input"));
        } else {
            black_box(ServerFrame::try_from(bytes).expect("valid input"));
        }
    }
    input.frames.len()
}

/// One frame already in its buffer (the copy is untimed setup).
fn decode_one_ours(mut buf: BytesMut) -> Frame {
    match Decoder::new(Limits::DEFAULT).decode(&mut buf) {
        Ok(Some(Item::Frame(f))) => f,
        other => panic!("{other:?}"),
    }
}

fn decode_one_tokio_stomp_2(mut buf: BytesMut) -> impl Sized {
    let m = tokio_stomp_2::client::ClientCodec.decode(&mut buf);
    m.expect("valid input").expect("one frame")
}

fn decode_one_stomp_parser(bytes: Vec<u8>, send: bool) -> Result<(), ()> {
    use stomp_parser::{client::ClientFrame, server::ServerFrame};
    if send {
        black_box(ClientFrame::try_from(bytes).map_err(|_| ())?);
    } else {
        black_box(ServerFrame::try_from(bytes).map_err(|_| ())?);
    }
    Ok(())
}

/// `memchr::memchr(0, ..)` over the frame's bytes with its NULs turned into
/// another byte, so it runs the whole length: the speed of looking at every
/// byte once, the floor for finding a NUL-terminated body's end.
fn memchr_scan(haystack: &[u8]) -> Option<usize> {
    memchr::memchr(0, haystack)
}

/// Every NUL of the frame's real bytes found with `memchr` (the binary body
/// has one every ~97 bytes, so this pays a call per NUL).
fn memchr_every_nul(input: &Input) -> usize {
    let mut rest = &input.wire[..];
    let mut nuls = 0;
    while let Some(i) = memchr::memchr(0, rest) {
        nuls += 1;
        rest = &rest[i + 1..];
    }
    nuls
}

// ---- encoders

fn encode_ours(input: &Input, out: &mut BytesMut) {
    out.clear();
    for s in &input.specs {
        encode_frame(&s.ours(), Version::V1_2, out);
    }
    black_box(&out);
}

fn encode_tokio_stomp_2(input: &Input, out: &mut BytesMut) {
    use tokio_stomp_2::{client::ClientCodec, Message, ToServer};
    out.clear();
    for s in &input.specs {
        let mut headers: Vec<_> = s
            .headers
            .iter()
            .filter(|(n, _)| n != "destination")
            .cloned()
            .collect();
        headers.push(("content-length".into(), s.body.len().to_string()));
        let msg = Message {
            content: ToServer::Send {
                destination: s.header("destination"),
                transaction: None,
                headers: Some(headers),
                body: Some(s.body.to_vec()),
            },
            extra_headers: Vec::new(),
        };
        ClientCodec.encode(msg, out).expect("encodes");
    }
    black_box(&out);
}

fn encode_stomp_parser(input: &Input, out: &mut Vec<Vec<u8>>) {
    use stomp_parser::client::SendFrameBuilder;
    use stomp_parser::server::{ErrorFrameBuilder, MessageFrameBuilder, ReceiptFrameBuilder};
    out.clear();
    for s in &input.specs {
        let custom = |skip: &[&str]| {
            let kept = s
                .headers
                .iter()
                .filter(|(n, _)| !skip.contains(&n.as_str()));
            kept.cloned().collect::<Vec<_>>()
        };
        let len = s.body.len() as u32;
        let bytes: Vec<u8> = match s.command {
            Command::Send => {
                let mut b = SendFrameBuilder::new(s.header("destination"))
                    .content_type(s.header("content-type"))
                    .receipt(s.header("receipt"))
                    .content_length(len);
                for (n, v) in custom(&["destination", "content-type", "receipt"]) {
                    b = b.add_custom_header(n, v);
                }
                b.body(s.body.to_vec()).build().into()
            }
            Command::Message => {
                let mut b = MessageFrameBuilder::new(
                    s.header("message-id"),
                    s.header("destination"),
                    s.header("subscription"),
                )
                .content_type(s.header("content-type"))
                .content_length(len);
                let known = ["message-id", "destination", "subscription", "content-type"];
                for (n, v) in custom(&known) {
                    b = b.add_custom_header(n, v);
                }
                b.body(s.body.to_vec()).build().into()
            }
            Command::Receipt => ReceiptFrameBuilder::new(s.header("receipt-id"))
                .build()
                .into(),
            Command::Error => ErrorFrameBuilder::new()
                .message(s.header("message"))
                .body(s.body.to_vec())
                .build()
                .into(),
            other => unreachable!("no {other} in the inputs"),
        };
        out.push(bytes);
    }
    black_box(&out);
}

// ---- groups

fn configure(c: &mut Criterion, name: String) -> BenchmarkGroup<'_, WallTime> {
    let mut g = c.benchmark_group(name);
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    g
}

fn bench(c: &mut Criterion) {
    let inputs = inputs();
    for input in &inputs {
        // Every decoder sees the same frames.
        let n = input.specs.len();
        assert_eq!(decode_ours(input), n, "{}", input.name);
        if input.is_server() {
            assert_eq!(decode_tokio_stomp_2(input), n, "{}", input.name);
        }
        assert_eq!(decode_stomp_parser(input), n, "{}", input.name);
    }
    let frames: fn(&Input) -> Throughput = |i| Throughput::Elements(i.specs.len() as u64);
    let bytes: fn(&Input) -> Throughput = |i| Throughput::Bytes(i.wire.len() as u64);
    for (unit, per) in [("frames", frames), ("bytes", bytes)] {
        for input in &inputs {
            let mut g = configure(c, format!("decode_{unit}/{}", input.name));
            g.throughput(per(input));
            let one = input.specs.len() == 1;
            let buf = || BytesMut::from(&input.wire[..]);
            // A 64 KiB buffer gets its own fresh (cache-hot) copy, as after a
            // socket read; batching many would measure cache misses instead.
            let small = if input.wire.len() > 16 * 1024 {
                BatchSize::PerIteration
            } else {
                BatchSize::SmallInput
            };
            if one {
                g.bench_function("stomp-codec", |b| {
                    b.iter_batched(buf, decode_one_ours, small)
                });
            } else {
                g.bench_function("stomp-codec", |b| b.iter(|| decode_ours(input)));
            }
            if input.is_server() {
                if one {
                    g.bench_function("tokio-stomp-2", |b| {
                        b.iter_batched(buf, decode_one_tokio_stomp_2, small)
                    });
                } else {
                    g.bench_function("tokio-stomp-2", |b| b.iter(|| decode_tokio_stomp_2(input)));
                }
            }
            if one {
                let send = input.is_send();
                g.bench_function("stomp-parser", |b| {
                    b.iter_batched(
                        || input.wire.clone(),
                        |v| decode_one_stomp_parser(v, send),
                        small,
                    )
                });
            } else {
                g.bench_function("stomp-parser", |b| b.iter(|| decode_stomp_parser(input)));
            }
            if input.name.contains("64k") {
                let no_nul: Vec<u8> = input.wire.iter().map(|&b| b.max(1)).collect();
                g.bench_function("memchr-scan", |b| {
                    b.iter(|| memchr_scan(black_box(&no_nul)))
                });
                if input.name == "binary_64k" {
                    g.bench_function("memchr-every-nul", |b| b.iter(|| memchr_every_nul(input)));
                }
            }
            g.finish();

            let mut g = configure(c, format!("encode_{unit}/{}", input.name));
            g.throughput(per(input));
            let mut out = BytesMut::with_capacity(input.wire.len() * 2);
            g.bench_function("stomp-codec", |b| b.iter(|| encode_ours(input, &mut out)));
            if input.is_send() {
                g.bench_function("tokio-stomp-2", |b| {
                    b.iter(|| encode_tokio_stomp_2(input, &mut out))
                });
            }
            let mut vecs = Vec::new();
            g.bench_function("stomp-parser", |b| {
                b.iter(|| encode_stomp_parser(input, &mut vecs))
            });
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
