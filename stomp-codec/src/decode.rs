//! The streaming decoder.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use nom::bytes::complete::{tag, take_till1};
use nom::combinator::rest;
use nom::sequence::separated_pair;
use nom::{IResult, Parser};

use crate::escape::{unescape_into, Escaping};
use crate::frame::Headers;
use crate::{header, Command, Frame, Version};

/// Size limits, set by the caller and enforced before buffering past them.
///
/// A limit is reported as soon as the buffered bytes prove it passed: a
/// frame once `max_frame_bytes` of it are buffered and its NUL has not come
/// (the NUL counts), a line once its content is longer than the limit (the
/// CR of a CRLF is not content), a body once it is longer than the limit, or
/// at the blank line when `content-length` announces too much. When the
/// input breaks several rules, the one broken first in the byte stream is
/// reported (a tie: line, frame, command; body, frame), so the error does not
/// depend on how the input was split into reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Whole frame: command line, headers, body and NUL.
    pub max_frame_bytes: usize,
    /// Number of header lines.
    pub max_headers: usize,
    /// Length of one header line (or the command line), without its EOL.
    pub max_header_line_bytes: usize,
    /// Body bytes.
    pub max_body_bytes: usize,
}

impl Limits {
    /// Defaults for an authenticated session: 4 MiB frames, 64 headers,
    /// 8 KiB header lines.
    pub const DEFAULT: Limits = Limits {
        max_frame_bytes: 4 * 1024 * 1024,
        max_headers: 64,
        max_header_line_bytes: 8 * 1024,
        max_body_bytes: 4 * 1024 * 1024,
    };

    /// A tighter set for the bytes a client sends before CONNECT is accepted:
    /// 64 KiB frames.
    pub const BEFORE_CONNECT: Limits = Limits {
        max_frame_bytes: 64 * 1024,
        max_headers: 64,
        max_header_line_bytes: 8 * 1024,
        max_body_bytes: 64 * 1024,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// What the decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A complete frame.
    Frame(Frame),
    /// A bare EOL between frames: a heart-beat.
    HeartBeat,
}

/// Why a byte stream is not valid STOMP. Every variant is fatal for the
/// connection: the server answers ERROR and closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame is larger than `max_frame_bytes`.
    #[error("frame larger than {limit} bytes")]
    FrameTooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// The body is larger than `max_body_bytes`.
    #[error("body larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// More than `max_headers` header lines.
    #[error("more than {limit} headers")]
    TooManyHeaders {
        /// The limit in force.
        limit: usize,
    },
    /// A header line longer than `max_header_line_bytes`.
    #[error("header line longer than {limit} bytes")]
    HeaderLineTooLong {
        /// The limit in force.
        limit: usize,
    },
    /// The command line is not a STOMP command.
    #[error("unknown command")]
    UnknownCommand,
    /// A header line without a `:` or with an empty name.
    #[error("malformed header line")]
    MalformedHeader,
    /// An escape sequence the negotiated version does not define.
    #[error("undefined escape sequence in header")]
    InvalidEscape,
    /// A header name or value that is not UTF-8.
    #[error("header is not valid UTF-8")]
    InvalidUtf8,
    /// `content-length` is not a non-negative decimal integer.
    #[error("invalid content-length")]
    InvalidContentLength,
    /// The byte after `content-length` bytes of body is not NUL.
    #[error("frame body not terminated by NUL after content-length bytes")]
    MissingNul,
}

impl DecodeError {
    /// A short stable name for metrics labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::FrameTooLarge { .. } => "frame_too_large",
            DecodeError::BodyTooLarge { .. } => "body_too_large",
            DecodeError::TooManyHeaders { .. } => "too_many_headers",
            DecodeError::HeaderLineTooLong { .. } => "header_line_too_long",
            DecodeError::UnknownCommand => "unknown_command",
            DecodeError::MalformedHeader => "malformed_header",
            DecodeError::InvalidEscape => "invalid_escape",
            DecodeError::InvalidUtf8 => "invalid_utf8",
            DecodeError::InvalidContentLength => "invalid_content_length",
            DecodeError::MissingNul => "missing_nul",
        }
    }
}

/// The longest command line that can be valid: `UNSUBSCRIBE\r`.
const MAX_COMMAND_LINE: usize = 12;

/// A header as located in the frame: ranges into the frame bytes or into the
/// frame's owned side buffer.
type Span = (Range<usize>, bool, Range<usize>, bool);

/// Progress through the current frame. Offsets count from the frame's first
/// byte, which is always the first byte of the caller's buffer.
#[derive(Debug)]
enum State {
    /// Between frames.
    Idle,
    /// Reading the command and header lines; `pos` is where the next line starts.
    Head {
        command: Option<Command>,
        pos: usize,
    },
    /// Headers done; the body starts at `head_len`.
    Body {
        command: Command,
        head_len: usize,
        content_length: Option<usize>,
        /// Body bytes already searched for NUL (no content-length).
        scanned: usize,
    },
    /// A previous call failed; the stream cannot be resynchronised.
    Failed(DecodeError),
}

/// A streaming STOMP decoder.
///
/// Feed it by appending received bytes to a `BytesMut` and calling
/// [`Decoder::decode`] until it returns `Ok(None)`. It keeps its place across
/// calls, so a frame may arrive split at any byte and a chunk may hold many
/// frames; bytes already examined are not scanned again. Bodies are sliced out
/// of the buffer without copying.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    version: Version,
    lenient_missing_nul: bool,
    state: State,
    spans: Vec<Span>,
    owned: String,
    scratch: Vec<u8>,
}

impl Decoder {
    /// A decoder for a fresh connection (version 1.2 until told otherwise;
    /// CONNECT is never escaped, so the version only matters after it).
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            version: Version::V1_2,
            lenient_missing_nul: false,
            state: State::Idle,
            spans: Vec::new(),
            owned: String::new(),
            scratch: Vec::new(),
        }
    }

    /// Changes the limits (e.g. widening them once CONNECT succeeded).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Sets the negotiated version, which selects header escaping.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    /// Accept a frame whose trailing NUL is missing at the end of a transport
    /// message (see [`Decoder::end_of_message`]). Off by default.
    pub fn set_lenient_missing_nul(&mut self, lenient: bool) {
        self.lenient_missing_nul = lenient;
    }

    /// True when the decoder holds part of a frame.
    pub fn is_mid_frame(&self) -> bool {
        matches!(self.state, State::Head { .. } | State::Body { .. })
    }

    /// Decodes the next item from the front of `buf`, removing its bytes.
    /// `Ok(None)`: more bytes are needed. After an error the stream is dead:
    /// every further call returns the same error.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, DecodeError> {
        match self.step(buf) {
            Err(e) => {
                self.state = State::Failed(e.clone());
                Err(e)
            }
            ok => ok,
        }
    }

    /// Called by a message-oriented transport (WebSocket) once every item of
    /// a message has been decoded. With leniency on, a frame whose NUL is
    /// missing at the very end of the message is completed here: a body
    /// without `content-length` ends at the end of the message, one with it
    /// must have exactly that many bytes. With leniency off this does nothing.
    pub fn end_of_message(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, DecodeError> {
        if !self.lenient_missing_nul {
            return Ok(None);
        }
        if let State::Body {
            command,
            head_len,
            content_length,
            ..
        } = self.state
        {
            let body_len = buf.len() - head_len;
            let complete = match content_length {
                None => true,
                Some(n) => n == body_len,
            };
            if complete {
                let frame = self.finish(buf, command, head_len, body_len, head_len + body_len);
                return Ok(Some(Item::Frame(frame)));
            }
        }
        Ok(None)
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, DecodeError> {
        loop {
            match self.state {
                State::Failed(ref e) => return Err(e.clone()),
                State::Idle => {
                    match buf.first() {
                        None => return Ok(None),
                        Some(b'\n') => {
                            let _ = buf.split_to(1);
                            return Ok(Some(Item::HeartBeat));
                        }
                        Some(b'\r') => match buf.get(1) {
                            None => return Ok(None),
                            Some(b'\n') => {
                                let _ = buf.split_to(2);
                                return Ok(Some(Item::HeartBeat));
                            }
                            Some(_) => return Err(DecodeError::UnknownCommand),
                        },
                        Some(_) => {}
                    }
                    self.spans.clear();
                    self.owned.clear();
                    self.state = State::Head {
                        command: None,
                        pos: 0,
                    };
                }
                State::Head { command, pos } => {
                    let nl = memchr::memchr(b'\n', &buf[pos..]).map(|i| pos + i);
                    if let Some(e) = self.head_violation(buf, pos, nl, command.is_none()) {
                        return Err(e);
                    }
                    let Some(nl) = nl else {
                        return Ok(None);
                    };
                    let next = nl + 1;
                    let mut end = nl;
                    if end > pos && buf[end - 1] == b'\r' {
                        end -= 1;
                    }
                    match command {
                        None => {
                            let c = Command::from_bytes(&buf[pos..end])
                                .ok_or(DecodeError::UnknownCommand)?;
                            self.state = State::Head {
                                command: Some(c),
                                pos: next,
                            };
                        }
                        Some(c) if end == pos => {
                            let content_length = self.content_length(buf)?;
                            if let Some(n) = content_length {
                                // Checked: with no body limit, `n` may be near
                                // `usize::MAX`; such a frame is too large for any limit.
                                let total = next.checked_add(n).and_then(|t| t.checked_add(1));
                                if total.is_none_or(|t| t > self.limits.max_frame_bytes) {
                                    return Err(DecodeError::FrameTooLarge {
                                        limit: self.limits.max_frame_bytes,
                                    });
                                }
                            }
                            self.state = State::Body {
                                command: c,
                                head_len: next,
                                content_length,
                                scanned: 0,
                            };
                        }
                        Some(c) => {
                            if self.spans.len() >= self.limits.max_headers {
                                return Err(DecodeError::TooManyHeaders {
                                    limit: self.limits.max_headers,
                                });
                            }
                            let escaping = Escaping::for_frame(c, self.version);
                            self.header_line(buf, pos, end, escaping)?;
                            self.state = State::Head { command, pos: next };
                        }
                    }
                }
                State::Body {
                    command,
                    head_len,
                    content_length: Some(n),
                    ..
                } => {
                    let total = head_len + n + 1;
                    if buf.len() < total {
                        return Ok(None);
                    }
                    if buf[total - 1] != 0 {
                        return Err(DecodeError::MissingNul);
                    }
                    let frame = self.finish(buf, command, head_len, n, total);
                    return Ok(Some(Item::Frame(frame)));
                }
                State::Body {
                    command,
                    head_len,
                    content_length: None,
                    scanned,
                } => {
                    let from = head_len + scanned;
                    let nul = memchr::memchr(0, &buf[from..]).map(|i| from + i);
                    if let Some(e) = self.body_violation(head_len, nul.unwrap_or(buf.len())) {
                        return Err(e);
                    }
                    if let Some(nul) = nul {
                        let body_len = nul - head_len;
                        let frame = self.finish(buf, command, head_len, body_len, nul + 1);
                        return Ok(Some(Item::Frame(frame)));
                    }
                    let scanned = buf.len() - head_len;
                    self.state = State::Body {
                        command,
                        head_len,
                        content_length: None,
                        scanned,
                    };
                    return Ok(None);
                }
            }
        }
    }

    /// The first limit or command-line violation proven by the bytes of the
    /// head line starting at `pos` (`nl`: its LF, if buffered yet).
    ///
    /// Each violation has a *proof offset*: the first byte that makes it
    /// certain, whatever follows. The earliest one is reported (ties in the
    /// order line length, frame size, command), so the error never depends on
    /// how the input was split into reads. The frame's size counts its NUL,
    /// so a frame is too large once `max_frame_bytes` bytes of it are
    /// buffered and it has not ended.
    fn head_violation(
        &self,
        buf: &[u8],
        pos: usize,
        nl: Option<usize>,
        command_line: bool,
    ) -> Option<DecodeError> {
        let line_end = nl.unwrap_or(buf.len());
        // The line's content exceeds the limit once byte `pos + max` is
        // content: any byte but a CR, which may still be the EOL's CR.
        let line = pos
            .checked_add(self.limits.max_header_line_bytes)
            .filter(|&at| at < line_end)
            .and_then(|at| {
                if buf[at] != b'\r' {
                    Some(at)
                } else {
                    Some(at + 1).filter(|&next| next < line_end)
                }
            })
            .map(|at| {
                let e = DecodeError::HeaderLineTooLong {
                    limit: self.limits.max_header_line_bytes,
                };
                (at, e)
            });
        let frame = Some(self.frame_proof_offset())
            .filter(|&at| at < nl.map_or(buf.len(), |n| n + 1))
            .map(|at| {
                let e = DecodeError::FrameTooLarge {
                    limit: self.limits.max_frame_bytes,
                };
                (at, e)
            });
        let command = command_line
            .then(|| {
                if pos + MAX_COMMAND_LINE < line_end {
                    // Longer than any command and its CR.
                    Some(pos + MAX_COMMAND_LINE)
                } else {
                    let nl = nl?;
                    let end = if nl > pos && buf[nl - 1] == b'\r' {
                        nl - 1
                    } else {
                        nl
                    };
                    Command::from_bytes(&buf[pos..end]).is_none().then_some(nl)
                }
            })
            .flatten()
            .map(|at| (at, DecodeError::UnknownCommand));
        earliest([line, frame, command])
    }

    /// The first limit violation proven by the body bytes of a frame without
    /// `content-length`, `end` being its NUL or the end of what is buffered
    /// (same rule as [`Decoder::head_violation`]; ties: body, then frame).
    fn body_violation(&self, head_len: usize, end: usize) -> Option<DecodeError> {
        let body = head_len
            .checked_add(self.limits.max_body_bytes)
            .filter(|&at| at < end)
            .map(|at| {
                let e = DecodeError::BodyTooLarge {
                    limit: self.limits.max_body_bytes,
                };
                (at, e)
            });
        let frame = Some(self.frame_proof_offset())
            .filter(|&at| at < end)
            .map(|at| {
                let e = DecodeError::FrameTooLarge {
                    limit: self.limits.max_frame_bytes,
                };
                (at, e)
            });
        earliest([body, frame])
    }

    /// The frame is too large once its byte at this offset is buffered and
    /// is not its NUL: `max_frame_bytes` bytes with the NUL still to come.
    fn frame_proof_offset(&self) -> usize {
        self.limits.max_frame_bytes.saturating_sub(1)
    }

    /// Records one header line `buf[start..end]` (EOL excluded).
    fn header_line(
        &mut self,
        buf: &[u8],
        start: usize,
        end: usize,
        escaping: Escaping,
    ) -> Result<(), DecodeError> {
        let (name_len, value_len) =
            split_header(&buf[start..end]).ok_or(DecodeError::MalformedHeader)?;
        let name = start..start + name_len;
        let value = end - value_len..end;
        let (name, name_owned) = self.locate(buf, name, escaping)?;
        let (value, value_owned) = self.locate(buf, value, escaping)?;
        self.spans.push((name, name_owned, value, value_owned));
        Ok(())
    }

    /// Validates a raw header token; tokens with escapes are decoded into the
    /// owned side buffer, the rest stay where they are.
    fn locate(
        &mut self,
        buf: &[u8],
        raw: Range<usize>,
        escaping: Escaping,
    ) -> Result<(Range<usize>, bool), DecodeError> {
        let bytes = &buf[raw.clone()];
        if escaping == Escaping::None || memchr::memchr(b'\\', bytes).is_none() {
            std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?;
            return Ok((raw, false));
        }
        self.scratch.clear();
        unescape_into(bytes, escaping, &mut self.scratch)
            .map_err(|_| DecodeError::InvalidEscape)?;
        let s = std::str::from_utf8(&self.scratch).map_err(|_| DecodeError::InvalidUtf8)?;
        let start = self.owned.len();
        self.owned.push_str(s);
        Ok((start..self.owned.len(), true))
    }

    /// The first `content-length` header, checked against the limits before
    /// any body byte is buffered.
    fn content_length(&self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        let Some((_, _, v, owned)) = self.spans.iter().find(|(n, owned, _, _)| {
            let name = if *owned {
                &self.owned.as_bytes()[n.clone()]
            } else {
                &buf[n.clone()]
            };
            name == header::CONTENT_LENGTH.as_bytes()
        }) else {
            return Ok(None);
        };
        let raw = if *owned {
            &self.owned.as_bytes()[v.clone()]
        } else {
            &buf[v.clone()]
        };
        let n = parse_content_length(raw)?;
        if n > self.limits.max_body_bytes {
            return Err(DecodeError::BodyTooLarge {
                limit: self.limits.max_body_bytes,
            });
        }
        Ok(Some(n))
    }

    fn finish(
        &mut self,
        buf: &mut BytesMut,
        command: Command,
        head_len: usize,
        body_len: usize,
        total: usize,
    ) -> Frame {
        let raw: Bytes = buf.split_to(total).freeze();
        let body = raw.slice(head_len..head_len + body_len);
        let text = raw.slice(..head_len);
        let headers = Headers::from_parts(
            text,
            std::mem::take(&mut self.owned),
            std::mem::take(&mut self.spans),
        );
        self.state = State::Idle;
        Frame {
            command,
            headers,
            body,
        }
    }
}

/// The violation with the smallest proof offset; on a tie, the first listed.
fn earliest<const N: usize>(found: [Option<(usize, DecodeError)>; N]) -> Option<DecodeError> {
    found
        .into_iter()
        .flatten()
        .min_by_key(|(at, _)| *at)
        .map(|(_, e)| e)
}

/// `name:value`, split at the first colon (nom). Returns the name's and the
/// value's lengths. Later colons belong to the value, as most brokers accept.
fn split_header(line: &[u8]) -> Option<(usize, usize)> {
    fn parse(input: &[u8]) -> IResult<&[u8], (&[u8], &[u8])> {
        separated_pair(take_till1(|b| b == b':'), tag(&b":"[..]), rest).parse(input)
    }
    parse(line).ok().map(|(_, (n, v))| (n.len(), v.len()))
}

/// Decimal digits only (surrounding blanks tolerated), no overflow.
fn parse_content_length(raw: &[u8]) -> Result<usize, DecodeError> {
    let digits = raw.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(DecodeError::InvalidContentLength);
    }
    digits.iter().try_fold(0usize, |acc, d| {
        acc.checked_mul(10)
            .and_then(|a| a.checked_add(usize::from(d - b'0')))
            .ok_or(DecodeError::InvalidContentLength)
    })
}

/// Decodes every complete item in `input` at once (a convenience for tests
/// and tools): the items, the unconsumed tail, or the first error.
pub fn decode_all(
    input: &[u8],
    limits: Limits,
    version: Version,
) -> Result<(Vec<Item>, BytesMut), DecodeError> {
    let mut dec = Decoder::new(limits);
    dec.set_version(version);
    let mut buf = BytesMut::from(input);
    let mut items = Vec::new();
    while let Some(item) = dec.decode(&mut buf)? {
        items.push(item);
    }
    Ok((items, buf))
}
