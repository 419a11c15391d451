//! The part of a connection that other tasks touch: its bounded outbound
//! queue, its pending acknowledgements and the signal that closes it.
//!
//! The session task owns everything else. The broker only ever pushes into
//! [`Connection::push`]; it never waits on a slow peer and never grows memory
//! past the configured bound: a consumer that falls behind is cut off with
//! `ERROR message:slow consumer`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use stomp_codec::{SharedMessage, Version};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One unit of outbound data, already encoded.
#[derive(Debug, Clone)]
pub enum Out {
    /// A complete STOMP frame.
    Frame(Bytes),
    /// A MESSAGE: the subscriber's head plus the shared, encoded-once part.
    Message {
        /// `MESSAGE` line and per-subscriber headers.
        head: Bytes,
        /// Shared headers, blank line, body and NUL.
        shared: Bytes,
    },
    /// A WebSocket control frame the reader owes the peer (pong, close echo).
    Control {
        /// WebSocket opcode.
        opcode: u8,
        /// Control payload (at most 125 bytes).
        payload: Bytes,
    },
    /// Write everything before this, then close the transport. For
    /// WebSocket, `close_code` is sent in a close frame.
    Close {
        /// WebSocket close code (1000 normal, 1001 going away).
        close_code: u16,
    },
}

impl Out {
    fn len(&self) -> usize {
        match self {
            Out::Frame(b) => b.len(),
            Out::Message { head, shared } => head.len() + shared.len(),
            Out::Control { payload, .. } => payload.len(),
            Out::Close { .. } => 0,
        }
    }
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The connection is closing; the item was dropped.
    Closed,
    /// The queue passed its byte bound; the connection is now being closed.
    SlowConsumer,
}

/// How a subscription acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// Delivered = acknowledged.
    Auto,
    /// ACK acknowledges this message and every earlier one of the subscription.
    Client,
    /// ACK acknowledges exactly one message.
    ClientIndividual,
}

impl AckMode {
    /// Parses the SUBSCRIBE `ack` header (absent = auto).
    pub fn parse(s: Option<&str>) -> Option<AckMode> {
        match s {
            None | Some("auto") => Some(AckMode::Auto),
            Some("client") => Some(AckMode::Client),
            Some("client-individual") => Some(AckMode::ClientIndividual),
            _ => None,
        }
    }

    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Auto => "auto",
            AckMode::Client => "client",
            AckMode::ClientIndividual => "client-individual",
        }
    }
}

/// A delivered message awaiting ACK/NACK.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Subscription id it was delivered on.
    pub subscription: Arc<str>,
    /// For `/queue/**` deliveries: the message, to redeliver on NACK or when
    /// the subscriber goes away. Topic deliveries are not redelivered.
    pub queued: Option<Arc<SharedMessage>>,
    /// For chat message deliveries: (conversation id, seq), so an ACK can
    /// move the recipient's delivered watermark.
    pub chat: Option<(Arc<str>, i64)>,
}

struct Queue {
    items: VecDeque<Out>,
    bytes: usize,
    closed: bool,
}

/// Shared per-connection state.
pub struct Connection {
    /// Server-unique id, also the CONNECTED `session` header.
    pub id: Arc<str>,
    queue: Mutex<Queue>,
    notify: Notify,
    limit: usize,
    version: AtomicU8,
    /// Negotiated server→client heart-beat interval in ms (0 = none).
    heartbeat_send_ms: AtomicU64,
    pending: Mutex<BTreeMap<u64, Pending>>,
    kicked: CancellationToken,
    kick_reason: Mutex<Option<&'static str>>,
}

static NEXT_MESSAGE_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh server-wide message id (used for `message-id` and `ack`).
pub fn next_message_id() -> u64 {
    NEXT_MESSAGE_ID.fetch_add(1, Ordering::Relaxed)
}

impl Connection {
    /// A connection whose outbound queue holds at most `limit` bytes.
    pub fn new(id: Arc<str>, limit: usize) -> Arc<Connection> {
        Arc::new(Connection {
            id,
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                bytes: 0,
                closed: false,
            }),
            notify: Notify::new(),
            limit,
            version: AtomicU8::new(Version::V1_2 as u8),
            heartbeat_send_ms: AtomicU64::new(0),
            pending: Mutex::new(BTreeMap::new()),
            kicked: CancellationToken::new(),
            kick_reason: Mutex::new(None),
        })
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> Version {
        match self.version.load(Ordering::Relaxed) {
            0 => Version::V1_0,
            1 => Version::V1_1,
            _ => Version::V1_2,
        }
    }

    /// Records the negotiated version.
    pub fn set_version(&self, v: Version) {
        self.version.store(v as u8, Ordering::Relaxed);
    }

    /// Server→client heart-beat interval (ms), 0 for none.
    pub fn heartbeat_send_ms(&self) -> u64 {
        self.heartbeat_send_ms.load(Ordering::Relaxed)
    }

    /// Sets the server→client heart-beat interval.
    pub fn set_heartbeat_send_ms(&self, ms: u64) {
        self.heartbeat_send_ms.store(ms, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Queues `item`. Past the byte bound the queue is dropped, an ERROR
    /// `slow consumer` is queued in its place and the connection is kicked.
    pub fn push(&self, item: Out) -> Result<(), PushError> {
        let mut q = self.queue.lock();
        if q.closed {
            return Err(PushError::Closed);
        }
        let len = item.len();
        if q.bytes + len > self.limit {
            q.items.clear();
            q.bytes = 0;
            drop(q);
            self.kick_with_error("slow consumer", "the outbound queue passed its bound");
            metrics::counter!(crate::metrics::names::SLOW_CONSUMER_DISCONNECTS).increment(1);
            return Err(PushError::SlowConsumer);
        }
        let was_empty = q.items.is_empty();
        q.bytes += len;
        q.items.push_back(item);
        drop(q);
        if was_empty {
            self.notify.notify_one();
        }
        Ok(())
    }

    /// Queues a final item and refuses everything after it. Used for the
    /// last ERROR/RECEIPT plus the close marker; ignores the byte bound.
    pub fn push_final(&self, items: impl IntoIterator<Item = Out>, close_code: u16) {
        let mut q = self.queue.lock();
        if q.closed {
            return;
        }
        for item in items {
            q.bytes += item.len();
            q.items.push_back(item);
        }
        q.items.push_back(Out::Close { close_code });
        q.closed = true;
        drop(q);
        self.notify.notify_one();
    }

    /// Closes the connection from outside its session task: queues ERROR with
    /// `message` then close, and wakes the session so it stops reading.
    pub fn kick_with_error(&self, message: &'static str, detail: &str) {
        let frame = crate::stomp::frames::error(self.version(), message, None, detail);
        self.push_final([Out::Frame(frame)], 1000);
        *self.kick_reason.lock() = Some(message);
        self.kicked.cancel();
    }

    /// Resolves once the connection was kicked.
    pub async fn kicked(&self) {
        self.kicked.cancelled().await
    }

    /// Why the connection was kicked, if it was.
    pub fn kick_reason(&self) -> Option<&'static str> {
        *self.kick_reason.lock()
    }

    /// True once nothing more may be queued.
    pub fn is_closed(&self) -> bool {
        self.queue.lock().closed
    }

    /// Moves every queued item into `into`. Waits for at least one, for at
    /// most `idle` (then returns `false`: time for a heart-beat). Returns
    /// `true` when items were taken.
    pub async fn take_batch(&self, into: &mut Vec<Out>, idle: Option<std::time::Duration>) -> bool {
        loop {
            {
                let mut q = self.queue.lock();
                if !q.items.is_empty() {
                    into.extend(q.items.drain(..));
                    q.bytes = 0;
                    return true;
                }
            }
            let notified = self.notify.notified();
            match idle {
                Some(d) => {
                    if tokio::time::timeout(d, notified).await.is_err() {
                        return false;
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Records a delivery awaiting acknowledgement.
    pub fn add_pending(&self, message_id: u64, pending: Pending) {
        self.pending.lock().insert(message_id, pending);
    }

    /// Removes the deliveries an ACK/NACK of `message_id` covers: for a
    /// `client` subscription every pending one of that subscription up to it,
    /// else just it. `None` when the id is not pending (a protocol error).
    pub fn take_acked(
        &self,
        message_id: u64,
        mode_of: impl Fn(&str) -> AckMode,
    ) -> Option<Vec<(u64, Pending)>> {
        let mut pending = self.pending.lock();
        let target = pending.get(&message_id)?.subscription.clone();
        if mode_of(&target) == AckMode::Client {
            let ids: Vec<u64> = pending
                .range(..=message_id)
                .filter(|(_, p)| p.subscription == target)
                .map(|(id, _)| *id)
                .collect();
            Some(
                ids.into_iter()
                    .filter_map(|id| pending.remove(&id).map(|p| (id, p)))
                    .collect(),
            )
        } else {
            pending.remove(&message_id).map(|p| vec![(message_id, p)])
        }
    }

    /// Removes and returns every pending delivery of `subscription` (or of
    /// all subscriptions), oldest first.
    pub fn drain_pending(&self, subscription: Option<&str>) -> Vec<Pending> {
        let mut pending = self.pending.lock();
        let ids: Vec<u64> = pending
            .iter()
            .filter(|(_, p)| subscription.is_none_or(|s| &*p.subscription == s))
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| pending.remove(&id))
            .collect()
    }
}
