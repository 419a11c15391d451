//! The `heart-beat` header and the spec's negotiation rule.

use std::time::Duration;

/// One side's `heart-beat` header: `send` = the smallest interval (ms) at
/// which it can send heart-beats (0: cannot), `recv` = the interval it would
/// like to receive them at (0: does not want any).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeartBeat {
    /// `cx` / `sx`: can send every N ms.
    pub send_ms: u32,
    /// `cy` / `sy`: wants to receive every N ms.
    pub recv_ms: u32,
}

/// A `heart-beat` value that is not two comma-separated integers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid heart-beat header: expected two comma-separated integers")]
pub struct InvalidHeartBeat;

impl HeartBeat {
    /// Parses `"cx,cy"`. A missing header means `0,0`.
    pub fn parse(value: &str) -> Result<HeartBeat, InvalidHeartBeat> {
        let (a, b) = value.split_once(',').ok_or(InvalidHeartBeat)?;
        let num = |s: &str| {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(InvalidHeartBeat);
            }
            s.parse::<u32>().map_err(|_| InvalidHeartBeat)
        };
        Ok(HeartBeat {
            send_ms: num(a)?,
            recv_ms: num(b)?,
        })
    }

    /// The header value, `"send,recv"`.
    pub fn to_header(self) -> String {
        format!("{},{}", self.send_ms, self.recv_ms)
    }
}

/// The intervals agreed between two peers, seen from the local side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Send a heart-beat (or any frame) at least this often.
    pub send_every: Option<Duration>,
    /// Expect something from the peer at least this often.
    pub expect_every: Option<Duration>,
}

/// The spec's rule, applied from the local side: local sends every
/// `max(local.send, remote.recv)` unless either is 0; it expects the remote
/// every `max(remote.send, local.recv)` unless either is 0.
pub fn negotiate(local: HeartBeat, remote: HeartBeat) -> Negotiated {
    let pick =
        |a: u32, b: u32| (a != 0 && b != 0).then(|| Duration::from_millis(u64::from(a.max(b))));
    Negotiated {
        send_every: pick(local.send_ms, remote.recv_ms),
        expect_every: pick(remote.send_ms, local.recv_ms),
    }
}
