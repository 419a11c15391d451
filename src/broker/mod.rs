//! Subscriptions and local delivery.
//!
//! Destinations are keyed strings; the broker does not parse them. Two
//! delivery kinds exist:
//! - [`Kind::Fanout`] (`/topic/**`, `/user/queue/**`): every subscriber gets
//!   a copy.
//! - [`Kind::Queue`] (`/queue/**`): each message goes to one subscriber,
//!   round-robin; messages are held (bounded) while nobody subscribes and
//!   unacknowledged ones come back (`redelivered:true`) on NACK or when their
//!   subscriber leaves.
//!
//! A message is encoded once ([`SharedMessage`]); each delivery only builds
//! the subscriber's small head. State is sharded by destination so unrelated
//! destinations never contend on one lock.

mod registry;

pub use registry::{Registry, TooManyConnections};

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::BytesMut;
use parking_lot::Mutex;
use stomp_codec::{encode_message_head, header, SharedMessage};

use crate::stomp::connection::{next_message_id, AckMode, Connection, Out, Pending, PushError};

const SHARDS: usize = 16;

/// The broker key of a user destination (`/user/queue/…` of one user).
pub fn user_key(user_id: &str, dest: &str) -> String {
    format!("user:{user_id}:{dest}")
}

/// How a destination delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Every subscriber gets a copy.
    Fanout,
    /// One subscriber per message, round-robin, held while none.
    Queue,
}

/// One subscription as the broker sees it.
#[derive(Clone)]
pub struct Subscriber {
    /// The subscribing connection.
    pub conn: Arc<Connection>,
    /// The client's subscription id.
    pub id: Arc<str>,
    /// Its ack mode.
    pub ack: AckMode,
}

impl Subscriber {
    fn is(&self, conn_id: &str, sub_id: &str) -> bool {
        &*self.conn.id == conn_id && &*self.id == sub_id
    }
}

/// The queue is holding as many messages as it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("queue is full")]
pub struct QueueFull;

struct Held {
    msg: Arc<SharedMessage>,
    redelivered: bool,
}

#[derive(Default)]
struct QueueState {
    subs: Vec<Subscriber>,
    next: usize,
    held: VecDeque<Held>,
}

#[derive(Default)]
struct Shard {
    fanout: HashMap<Box<str>, Vec<Subscriber>>,
    queues: HashMap<Box<str>, QueueState>,
}

/// The local broker.
pub struct Broker {
    shards: Box<[Mutex<Shard>]>,
    queue_hold_max: usize,
}

impl Broker {
    /// A broker holding at most `queue_hold_max` undelivered messages per
    /// queue destination.
    pub fn new(queue_hold_max: usize) -> Broker {
        Broker {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            queue_hold_max,
        }
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// Adds a subscription. For a queue, held messages are dispatched now.
    pub fn subscribe(&self, key: &str, kind: Kind, sub: Subscriber) {
        let mut shard = self.shard(key).lock();
        match kind {
            Kind::Fanout => shard.fanout.entry(key.into()).or_default().push(sub),
            Kind::Queue => {
                let q = shard.queues.entry(key.into()).or_default();
                q.subs.push(sub);
                while let Some(h) = q.held.pop_front() {
                    if let Err(h) = dispatch(q, h) {
                        q.held.push_front(h);
                        break;
                    }
                }
            }
        }
    }

    /// Removes a subscription. Its unacknowledged queue messages are the
    /// caller's to hand back with [`Broker::requeue`].
    pub fn unsubscribe(&self, key: &str, kind: Kind, conn_id: &str, sub_id: &str) {
        let mut shard = self.shard(key).lock();
        match kind {
            Kind::Fanout => {
                if let Some(subs) = shard.fanout.get_mut(key) {
                    subs.retain(|s| !s.is(conn_id, sub_id));
                    if subs.is_empty() {
                        shard.fanout.remove(key);
                    }
                }
            }
            Kind::Queue => {
                if let Some(q) = shard.queues.get_mut(key) {
                    q.subs.retain(|s| !s.is(conn_id, sub_id));
                    if q.subs.is_empty() && q.held.is_empty() {
                        shard.queues.remove(key);
                    }
                }
            }
        }
    }

    /// Delivers a copy to every subscriber of a fan-out destination. Returns
    /// how many deliveries were queued.
    pub fn publish(&self, key: &str, msg: &Arc<SharedMessage>) -> usize {
        let shard = self.shard(key).lock();
        let Some(subs) = shard.fanout.get(key) else {
            return 0;
        };
        let delivered = subs
            .iter()
            .filter(|s| deliver(s, msg, false, false).is_ok())
            .count();
        drop(shard);
        metrics::counter!(crate::metrics::names::DELIVERIES).increment(delivered as u64);
        delivered
    }

    /// Sends a queue message to the next subscriber, or holds it.
    pub fn enqueue(&self, key: &str, msg: Arc<SharedMessage>) -> Result<(), QueueFull> {
        let mut shard = self.shard(key).lock();
        let q = shard.queues.entry(key.into()).or_default();
        if let Err(h) = dispatch(
            q,
            Held {
                msg,
                redelivered: false,
            },
        ) {
            if q.held.len() >= self.queue_hold_max {
                if q.subs.is_empty() && q.held.is_empty() {
                    shard.queues.remove(key);
                }
                return Err(QueueFull);
            }
            q.held.push_back(h);
        }
        Ok(())
    }

    /// Hands unacknowledged queue messages back (NACK, or their subscriber
    /// left): redelivered with `redelivered:true` before newer messages. The
    /// hold bound does not apply: these were already accepted.
    /// `avoid` (connection id, subscription id) names a subscriber that
    /// rejected them: it gets them again only when it is the only one.
    pub fn requeue(&self, key: &str, msgs: Vec<Arc<SharedMessage>>, avoid: Option<(&str, &str)>) {
        if msgs.is_empty() {
            return;
        }
        let mut shard = self.shard(key).lock();
        let q = shard.queues.entry(key.into()).or_default();
        for msg in msgs {
            let h = Held {
                msg,
                redelivered: true,
            };
            if let Err(h) = dispatch_avoiding(q, h, avoid) {
                q.held.push_back(h);
            }
        }
    }

    /// Number of messages held for `key` (for tests and metrics).
    pub fn held(&self, key: &str) -> usize {
        self.shard(key)
            .lock()
            .queues
            .get(key)
            .map_or(0, |q| q.held.len())
    }
}

/// Tries the queue's subscribers round-robin; gives the message back when
/// none can take it.
fn dispatch(q: &mut QueueState, h: Held) -> Result<(), Held> {
    dispatch_avoiding(q, h, None)
}

fn dispatch_avoiding(q: &mut QueueState, h: Held, avoid: Option<(&str, &str)>) -> Result<(), Held> {
    let n = q.subs.len();
    let skip = |s: &Subscriber| n > 1 && avoid.is_some_and(|(c, id)| s.is(c, id));
    for i in 0..n {
        let idx = (q.next + i) % n;
        if skip(&q.subs[idx]) {
            continue;
        }
        if deliver(&q.subs[idx], &h.msg, true, h.redelivered).is_ok() {
            q.next = (idx + 1) % n;
            metrics::counter!(crate::metrics::names::DELIVERIES).increment(1);
            return Ok(());
        }
    }
    Err(h)
}

/// Queues one MESSAGE for one subscriber.
fn deliver(
    sub: &Subscriber,
    msg: &Arc<SharedMessage>,
    queued: bool,
    redelivered: bool,
) -> Result<(), PushError> {
    deliver_with(sub, msg, queued, redelivered, None)
}

/// Queues one chat MESSAGE for one subscriber; `chat` (conversation, seq)
/// is remembered with the pending acknowledgement.
pub fn deliver_chat(
    sub: &Subscriber,
    msg: &Arc<SharedMessage>,
    chat: Option<(Arc<str>, i64)>,
) -> Result<(), PushError> {
    deliver_with(sub, msg, false, false, chat)
}

fn deliver_with(
    sub: &Subscriber,
    msg: &Arc<SharedMessage>,
    queued: bool,
    redelivered: bool,
    chat: Option<(Arc<str>, i64)>,
) -> Result<(), PushError> {
    let conn = &sub.conn;
    let version = conn.version();
    let id = next_message_id();
    let id_str = id.to_string();
    let ack = (sub.ack != AckMode::Auto).then_some(id_str.as_str());
    let extra: &[(&str, &str)] = if redelivered {
        &[(header::REDELIVERED, "true")]
    } else {
        &[]
    };
    let mut head = BytesMut::with_capacity(64 + sub.id.len());
    encode_message_head(&mut head, version, &sub.id, &id_str, ack, extra);
    if sub.ack != AckMode::Auto {
        // Recorded before the push: the peer may ACK before we return.
        conn.add_pending(
            id,
            Pending {
                subscription: sub.id.clone(),
                queued: queued.then(|| msg.clone()),
                chat,
            },
        );
    }
    let res = conn.push(Out::Message {
        head: head.freeze(),
        shared: msg.encoded(version).clone(),
    });
    if res.is_err() && sub.ack != AckMode::Auto {
        let _ = conn.take_acked(id, |_| AckMode::ClientIndividual);
    }
    res
}
