//! Message bodies that carry their own identity and send time, and the
//! per-subscriber accounting built from them: a latency histogram plus loss,
//! duplicate and reorder counts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process's benchmark epoch. Publishers and
/// subscribers run in one process, so one monotonic clock serves both ends.
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Fixed-width prefix: `PPPPPPPP:SSSSSSSSSSSS:TTTTTTTTTTTTTTTTTTTT:`
/// (publisher, sequence, send time in ns), then `x` padding up to the body size.
const PREFIX_LEN: usize = 8 + 1 + 12 + 1 + 20 + 1;

/// The smallest body that can hold the prefix.
pub const MIN_BODY: usize = PREFIX_LEN;

/// Writes a body of `size` bytes (at least [`MIN_BODY`]).
pub fn body(publisher: u32, seq: u64, sent_ns: u64, size: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(size.max(PREFIX_LEN));
    buf.put_slice(format!("{publisher:08}:{seq:012}:{sent_ns:020}:").as_bytes());
    buf.resize(size.max(PREFIX_LEN), b'x');
    buf.freeze()
}

/// `(publisher, seq, sent_ns)` from a body, `None` when it is not ours.
pub fn parse(body: &[u8]) -> Option<(u32, u64, u64)> {
    if body.len() < PREFIX_LEN || body[8] != b':' || body[21] != b':' || body[42] != b':' {
        return None;
    }
    let num = |b: &[u8]| -> Option<u64> {
        b.iter().try_fold(0u64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0'))
        })
    };
    Some((
        u32::try_from(num(&body[..8])?).ok()?,
        num(&body[9..21])?,
        num(&body[22..42])?,
    ))
}

/// A latency histogram in microseconds, 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// The send-time window whose messages count for latency and throughput,
/// set by the controller once publishing starts (empty until then).
pub struct Window {
    from_ns: AtomicU64,
    to_ns: AtomicU64,
}

impl Window {
    /// An empty window.
    pub fn new() -> Arc<Window> {
        Arc::new(Window {
            from_ns: AtomicU64::new(u64::MAX),
            to_ns: AtomicU64::new(u64::MAX),
        })
    }

    /// Messages sent in `[from_ns, to_ns)` are measured.
    pub fn set(&self, from_ns: u64, to_ns: u64) {
        self.to_ns.store(to_ns, Ordering::Relaxed);
        self.from_ns.store(from_ns, Ordering::Relaxed);
    }

    /// True when a message sent at `ns` is measured.
    pub fn contains(&self, ns: u64) -> bool {
        ns >= self.from_ns.load(Ordering::Relaxed) && ns < self.to_ns.load(Ordering::Relaxed)
    }
}

/// Which sequence numbers of one publisher (or conversation) a subscriber
/// has seen.
#[derive(Default)]
pub struct Seen {
    bits: Vec<u64>,
    /// The highest sequence seen so far.
    pub highest: Option<u64>,
}

impl Seen {
    /// How many distinct sequences in `from..=to` were seen.
    pub fn count_in(&self, from: u64, to: u64) -> u64 {
        (from..=to)
            .filter(|&s| {
                let (word, bit) = ((s / 64) as usize, s % 64);
                self.bits.get(word).is_some_and(|w| w & (1 << bit) != 0)
            })
            .count() as u64
    }

    /// Marks `seq`; false when it was already seen.
    pub fn insert(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let fresh = self.bits[word] & (1 << bit) == 0;
        self.bits[word] |= 1 << bit;
        fresh
    }
}

/// One subscriber's view of a run.
pub struct Tracker {
    /// Latency of deliveries whose send time is inside the measured window.
    pub latency: Histogram<u64>,
    /// Deliveries of messages sent inside the measured window.
    pub measured: u64,
    /// Every MESSAGE received.
    pub received: u64,
    /// Distinct `(publisher, seq)` received.
    pub unique: u64,
    /// A `(publisher, seq)` received again.
    pub duplicates: u64,
    /// A message arriving after a later one of the same publisher.
    pub reordered: u64,
    /// Bodies that do not carry our prefix.
    pub foreign: u64,
    /// Why the connection ended early (ERROR frame or close), if it did.
    pub error: Option<String>,
    seen: HashMap<u32, Seen>,
    window: Arc<Window>,
}

impl Tracker {
    /// Latency is recorded for messages sent inside `window`.
    pub fn new(window: Arc<Window>) -> Self {
        Tracker {
            latency: histogram(),
            measured: 0,
            received: 0,
            unique: 0,
            duplicates: 0,
            reordered: 0,
            foreign: 0,
            error: None,
            seen: HashMap::new(),
            window,
        }
    }

    /// Accounts one delivery received at `now`. Returns the publisher id and
    /// sequence when the delivery was new (not a duplicate).
    pub fn record(&mut self, body: &[u8], now: u64) -> Option<(u32, u64)> {
        self.received += 1;
        let Some((publisher, seq, sent)) = parse(body) else {
            self.foreign += 1;
            return None;
        };
        let seen = self.seen.entry(publisher).or_default();
        if !seen.insert(seq) {
            self.duplicates += 1;
            return None;
        }
        self.unique += 1;
        match seen.highest {
            Some(h) if seq < h => self.reordered += 1,
            _ => seen.highest = Some(seq),
        }
        if self.window.contains(sent) {
            self.measured += 1;
            let us = (now.saturating_sub(sent) / 1_000).max(1);
            self.latency.saturating_record(us);
        }
        Some((publisher, seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_round_trip() {
        let b = body(7, 123_456, 987_654_321, 100);
        assert_eq!(b.len(), 100);
        assert_eq!(parse(&b), Some((7, 123_456, 987_654_321)));
        assert_eq!(parse(b"hello"), None);
    }

    #[test]
    fn accounting() {
        let window = Window::new();
        window.set(0, u64::MAX);
        let mut t = Tracker::new(window);
        for seq in [0, 1, 3, 2, 3] {
            t.record(&body(1, seq, 10, 60), 2_010);
        }
        assert_eq!(
            (t.received, t.unique, t.duplicates, t.reordered),
            (5, 4, 1, 1)
        );
        assert_eq!(t.latency.len(), 4);
        assert_eq!(t.latency.max(), 2);
    }
}
