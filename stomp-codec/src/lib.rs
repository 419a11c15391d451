//! A streaming, zero-copy STOMP 1.0–1.2 frame codec.
//!
//! Bytes in, frames out, and back: no I/O, no runtime, no server knowledge.
//!
//! ```
//! use bytes::BytesMut;
//! use stomp_codec::{encode_frame, header, Command, Decoder, Frame, Item, Limits, Version};
//!
//! let mut dec = Decoder::new(Limits::default());
//! let mut buf = BytesMut::from(&b"SEND\ndestination:/queue/a\n\nhi\0\n"[..]);
//! let Some(Item::Frame(f)) = dec.decode(&mut buf).unwrap() else { panic!() };
//! assert_eq!(f.command, Command::Send);
//! assert_eq!(f.header(header::DESTINATION), Some("/queue/a"));
//! assert_eq!(&f.body[..], b"hi");
//! assert_eq!(dec.decode(&mut buf).unwrap(), Some(Item::HeartBeat));
//!
//! let mut out = BytesMut::new();
//! encode_frame(&Frame::new(Command::Receipt).with_header(header::RECEIPT_ID, "7"), Version::V1_2, &mut out);
//! assert_eq!(&out[..], b"RECEIPT\nreceipt-id:7\n\n\0");
//! ```

mod command;
mod decode;
mod encode;
pub mod escape;
mod frame;
pub mod header;
mod heartbeat;
mod version;

pub use command::Command;
pub use decode::{decode_all, DecodeError, Decoder, Item, Limits};
pub use encode::{encode_frame, encode_message, encode_message_head, SharedMessage, HEARTBEAT};
pub use frame::{Frame, Headers};
pub use heartbeat::{negotiate, HeartBeat, InvalidHeartBeat, Negotiated};
pub use version::{negotiate_version, Version};
