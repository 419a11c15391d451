//! Server frames the session sends, encoded for the peer's version.

use bytes::{Bytes, BytesMut};
use stomp_codec::{encode_frame, header, Command, Frame, Version};

/// `server` header value.
pub const SERVER: &str = concat!("stompline/", env!("CARGO_PKG_VERSION"));

/// Encodes any frame.
pub fn encode(frame: &Frame, version: Version) -> Bytes {
    let mut buf = BytesMut::with_capacity(64 + frame.body.len());
    encode_frame(frame, version, &mut buf);
    buf.freeze()
}

/// ERROR with `message`, `receipt-id` when the failed frame asked for a
/// receipt, and a plain-text body with details.
pub fn error(version: Version, message: &str, receipt: Option<&str>, detail: &str) -> Bytes {
    let mut f = Frame::new(Command::Error).with_header(header::MESSAGE, message);
    if let Some(r) = receipt {
        f.headers.push(header::RECEIPT_ID, r);
    }
    f.headers.push(header::CONTENT_TYPE, "text/plain");
    encode(&f.with_body(detail.to_owned()), version)
}

/// RECEIPT for `receipt_id`.
pub fn receipt(version: Version, receipt_id: &str) -> Bytes {
    encode(
        &Frame::new(Command::Receipt).with_header(header::RECEIPT_ID, receipt_id),
        version,
    )
}
