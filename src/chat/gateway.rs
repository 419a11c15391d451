//! The gateway: this instance's end of the relay.
//!
//! It subscribes the relay channels its local sessions need, turns chat
//! events into MESSAGE frames for local subscriptions, and keeps every
//! message subscription in per-conversation `seq` order: a duplicate is
//! dropped, a jump is filled from the store before anything later is
//! delivered, and a `since-seq` subscription replays from the store before
//! it goes live. It also completes sends once the persister reports them
//! durable (RECEIPT for STOMP, a waiter for REST), and batches delivered
//! watermarks.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use stomp_codec::{header, Frame, SharedMessage};
use tokio::sync::{mpsc, oneshot};

use super::events::{self, kind, user_queue, Event};
use crate::broker::{deliver_chat, user_key, Broker, Subscriber};
use crate::relay::{Delivery, Relay, RESYNC};
use crate::stomp::connection::{AckMode, Connection, Out};
use crate::stomp::frames;
use crate::store::{Message, Store};

/// What a chat subscription receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatDest {
    /// `/topic/chat/{cid}`: message events of one conversation.
    Messages(String),
    /// `/topic/chat/{cid}/typing`.
    Typing(String),
    /// `/topic/chat/{cid}/read`.
    Read(String),
    /// `/user/queue/messages`: message events of all the user's
    /// conversations.
    UserMessages,
}

impl ChatDest {
    /// Parses a chat destination.
    pub fn parse(dest: &str) -> Option<ChatDest> {
        if dest == user_queue::MESSAGES {
            return Some(ChatDest::UserMessages);
        }
        let rest = dest.strip_prefix("/topic/chat/")?;
        let (cid, tail) = rest.split_once('/').unwrap_or((rest, ""));
        if cid.is_empty() {
            return None;
        }
        match tail {
            "" => Some(ChatDest::Messages(cid.to_owned())),
            "typing" => Some(ChatDest::Typing(cid.to_owned())),
            "read" => Some(ChatDest::Read(cid.to_owned())),
            _ => None,
        }
    }

    /// The conversation, unless this is the user queue.
    pub fn conversation(&self) -> Option<&str> {
        match self {
            ChatDest::Messages(c) | ChatDest::Typing(c) | ChatDest::Read(c) => Some(c),
            ChatDest::UserMessages => None,
        }
    }

    /// The STOMP destination.
    pub fn destination(&self) -> String {
        match self {
            ChatDest::Messages(c) => format!("/topic/chat/{c}"),
            ChatDest::Typing(c) => format!("/topic/chat/{c}/typing"),
            ChatDest::Read(c) => format!("/topic/chat/{c}/read"),
            ChatDest::UserMessages => user_queue::MESSAGES.to_owned(),
        }
    }

    fn accepts(&self, kind: &str) -> bool {
        match self {
            ChatDest::Messages(_) | ChatDest::UserMessages => kind.starts_with("message."),
            ChatDest::Typing(_) => kind == kind::TYPING,
            ChatDest::Read(_) => kind == kind::READ,
        }
    }
}

/// An event with its encodings, shared by every local subscriber.
struct Prepared {
    event: Event,
    /// One encoding per destination string.
    encoded: Mutex<Vec<(String, Arc<SharedMessage>)>>,
}

impl Prepared {
    fn new(event: Event) -> Arc<Prepared> {
        Arc::new(Prepared {
            event,
            encoded: Mutex::new(Vec::new()),
        })
    }

    fn shared_for(&self, destination: &str) -> Arc<SharedMessage> {
        let mut cache = self.encoded.lock();
        if let Some((_, m)) = cache.iter().find(|(d, _)| d == destination) {
            return m.clone();
        }
        let m = Arc::new(encode_event(&self.event, destination));
        cache.push((destination.to_owned(), m.clone()));
        m
    }
}

/// The MESSAGE headers and body of a chat event (PROTOCOL.md).
pub fn encode_event(ev: &Event, destination: &str) -> SharedMessage {
    let seq = ev.seq.map(|s| s.to_string());
    let mut headers: Vec<(&str, &str)> = vec![
        (header::CONTENT_TYPE, "application/json"),
        ("event", &ev.kind),
    ];
    if let Some(c) = &ev.conversation_id {
        headers.push(("conversation-id", c));
    }
    if let Some(s) = &seq {
        headers.push(("seq", s));
    }
    if let Some(m) = &ev.message_id {
        headers.push(("chat-message-id", m));
    }
    let body = serde_json::to_vec(&ev.payload).unwrap_or_default();
    SharedMessage::new(destination, headers, Bytes::from(body))
}

struct SubState {
    /// Last delivered seq per conversation.
    cursors: HashMap<String, i64>,
    /// True while someone (the relay loop or a fill task) is delivering.
    busy: bool,
    /// Events waiting their turn.
    inbox: VecDeque<Arc<Prepared>>,
    closed: bool,
}

/// One chat subscription of a local session.
pub struct ChatSub {
    sub: Subscriber,
    user_id: Arc<str>,
    dest: ChatDest,
    destination: String,
    state: Mutex<SubState>,
}

impl ChatSub {
    fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        st.inbox.clear();
    }
}

/// A prepared chat subscription: registered and buffering, not yet
/// delivering.
pub struct Activation {
    chat: Arc<ChatSub>,
    replay: Option<(String, i64)>,
}

/// A send waiting for the persister's answer.
pub enum Completion {
    /// STOMP: answer with RECEIPT (if asked) or an application error.
    Stomp {
        /// The sending connection.
        conn: Arc<Connection>,
        /// The sender.
        user_id: Arc<str>,
        /// The SEND's `receipt` header.
        receipt: Option<String>,
    },
    /// REST: the handler awaits the outcome.
    Waiter(oneshot::Sender<Result<(Message, bool), String>>),
}

struct PendingSend {
    completion: Completion,
    since: Instant,
}

#[derive(Default)]
struct Subs {
    /// By conversation: topic subscriptions and the user-queue
    /// subscriptions of its local members.
    by_conv: HashMap<String, Vec<Arc<ChatSub>>>,
    /// By (connection id, subscription id).
    by_id: HashMap<(Arc<str>, Arc<str>), Arc<ChatSub>>,
    /// `/user/queue/messages` subscriptions by user.
    user_messages: HashMap<Arc<str>, Vec<Arc<ChatSub>>>,
}

/// Relay interest changes, applied in order by one task.
enum Interest {
    Add(String, oneshot::Sender<()>),
    Remove(String),
}

/// This instance's chat delivery.
pub struct Gateway {
    /// This instance's id (its relay channel is `instance:<id>`).
    pub instance_id: String,
    store: Arc<dyn Store>,
    relay: Arc<dyn Relay>,
    broker: Arc<Broker>,
    subs: Mutex<Subs>,
    sends: Mutex<HashMap<String, PendingSend>>,
    interest: mpsc::UnboundedSender<Interest>,
    delivered: mpsc::UnboundedSender<(Arc<str>, Arc<str>, i64)>,
    me: OnceLock<std::sync::Weak<Gateway>>,
}

/// A gateway ready to run: call [`GatewayTasks::spawn`].
pub struct GatewayTasks {
    gateway: Arc<Gateway>,
    interest: mpsc::UnboundedReceiver<Interest>,
    delivered: mpsc::UnboundedReceiver<(Arc<str>, Arc<str>, i64)>,
}

impl Gateway {
    /// A gateway for this instance, with the tasks that drive it.
    pub fn build(
        instance_id: String,
        store: Arc<dyn Store>,
        relay: Arc<dyn Relay>,
        broker: Arc<Broker>,
    ) -> GatewayTasks {
        let (itx, irx) = mpsc::unbounded_channel();
        let (dtx, drx) = mpsc::unbounded_channel();
        let gateway = Arc::new(Gateway {
            instance_id,
            store,
            relay,
            broker,
            subs: Mutex::new(Subs::default()),
            sends: Mutex::new(HashMap::new()),
            interest: itx,
            delivered: dtx,
            me: OnceLock::new(),
        });
        let _ = gateway.me.set(Arc::downgrade(&gateway));
        GatewayTasks {
            gateway,
            interest: irx,
            delivered: drx,
        }
    }

    /// The relay this gateway subscribes through.
    pub fn relay(&self) -> &Arc<dyn Relay> {
        &self.relay
    }

    fn arc(&self) -> Option<Arc<Gateway>> {
        self.me.get().and_then(std::sync::Weak::upgrade)
    }

    /// Starts receiving `channel` (reference counted); resolves once the
    /// relay subscription is in place.
    pub async fn watch(&self, channel: String) {
        let (tx, rx) = oneshot::channel();
        if self.interest.send(Interest::Add(channel, tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Stops receiving `channel` (reference counted).
    pub fn unwatch(&self, channel: String) {
        let _ = self.interest.send(Interest::Remove(channel));
    }

    /// A user's connection opened: their user channel is needed.
    pub async fn user_connected(&self, user_id: &str) {
        self.watch(events::user_channel(user_id)).await;
    }

    /// A user's connection closed.
    pub fn user_disconnected(&self, user_id: &str) {
        self.unwatch(events::user_channel(user_id));
    }

    /// Registers a pending send; the persister's answer completes it.
    pub fn expect_durable(&self, request_id: String, completion: Completion) {
        self.sends.lock().insert(
            request_id,
            PendingSend {
                completion,
                since: Instant::now(),
            },
        );
    }

    /// Forgets a pending send (its append failed).
    pub fn forget_send(&self, request_id: &str) -> Option<Completion> {
        self.sends.lock().remove(request_id).map(|p| p.completion)
    }

    /// Adds a chat subscription, buffering (not yet delivering) what
    /// arrives. The caller has checked membership. `since_seq`: replay
    /// message events after it from the store first; `None`: start after the
    /// conversation's current last seq. Call [`Gateway::activate`] next
    /// (after the SUBSCRIBE's RECEIPT, so it precedes every MESSAGE while no
    /// event committed in between is missed).
    pub async fn subscribe(
        &self,
        sub: Subscriber,
        user_id: Arc<str>,
        dest: ChatDest,
        since_seq: Option<i64>,
    ) -> Result<Activation, crate::store::StoreError> {
        let destination = dest.destination();
        let chat = Arc::new(ChatSub {
            sub,
            user_id: user_id.clone(),
            dest: dest.clone(),
            destination,
            state: Mutex::new(SubState {
                cursors: HashMap::new(),
                busy: true,
                inbox: VecDeque::new(),
                closed: false,
            }),
        });
        // Register first (events are buffered while busy), then read where
        // the conversation stands: nothing committed after that read can be
        // missed.
        let convs: Vec<(String, i64)> = match &dest {
            ChatDest::UserMessages => {
                // Register under every conversation before reading where
                // each stands, so nothing committed after the read is missed.
                self.register(&chat, &[]);
                let ids = self.store.conversation_ids_of(&user_id).await?;
                self.register(&chat, &ids);
                for c in &ids {
                    self.watch(events::conversation_channel(c)).await;
                }
                let list = self.store.conversations_of(&user_id).await?;
                let mut convs = Vec::with_capacity(list.len());
                for s in list {
                    let c = s.conversation;
                    if !ids.contains(&c.id) {
                        // Joined in between: follow it too.
                        self.register(&chat, std::slice::from_ref(&c.id));
                        self.watch(events::conversation_channel(&c.id)).await;
                    }
                    convs.push((c.id, c.last_seq));
                }
                convs
            }
            other => {
                let cid = other.conversation().unwrap_or_default().to_owned();
                self.register(&chat, std::slice::from_ref(&cid));
                self.watch(events::conversation_channel(&cid)).await;
                let last = match (&dest, since_seq) {
                    (ChatDest::Messages(_), Some(n)) => n.max(0),
                    _ => self
                        .store
                        .conversation(&cid)
                        .await?
                        .map_or(0, |c| c.last_seq),
                };
                vec![(cid, last)]
            }
        };
        let replay = match (&dest, since_seq) {
            (ChatDest::Messages(cid), Some(n)) => Some((cid.clone(), n.max(0))),
            _ => None,
        };
        {
            let mut st = chat.state.lock();
            for (c, last) in convs {
                st.cursors.insert(c, last);
            }
        }
        Ok(Activation { chat, replay })
    }

    /// Starts delivering to a subscription prepared by [`Gateway::subscribe`]:
    /// the replay from the store when asked, then whatever was buffered.
    pub fn activate(&self, activation: Activation) {
        let Activation { chat, replay } = activation;
        let Some(gw) = self.arc() else {
            return;
        };
        match replay {
            Some((cid, after)) => {
                tokio::spawn(async move { gw.fill(chat, cid, after, None).await });
            }
            None => gw.pump(&chat),
        }
    }

    fn register(&self, chat: &Arc<ChatSub>, convs: &[String]) {
        let mut subs = self.subs.lock();
        let key = (chat.sub.conn.id.clone(), chat.sub.id.clone());
        if subs.by_id.insert(key, chat.clone()).is_none() && chat.dest == ChatDest::UserMessages {
            subs.user_messages
                .entry(chat.user_id.clone())
                .or_default()
                .push(chat.clone());
        }
        for c in convs {
            let list = subs.by_conv.entry(c.clone()).or_default();
            if !list.iter().any(|s| Arc::ptr_eq(s, chat)) {
                list.push(chat.clone());
            }
        }
    }

    /// Removes a chat subscription (UNSUBSCRIBE or disconnect).
    pub fn unsubscribe(&self, conn_id: &Arc<str>, sub_id: &Arc<str>) {
        let removed = {
            let mut subs = self.subs.lock();
            let Some(chat) = subs.by_id.remove(&(conn_id.clone(), sub_id.clone())) else {
                return;
            };
            let mut convs = Vec::new();
            subs.by_conv.retain(|cid, list| {
                let before = list.len();
                list.retain(|s| !Arc::ptr_eq(s, &chat));
                if list.len() != before {
                    convs.push(cid.clone());
                }
                !list.is_empty()
            });
            if let Some(list) = subs.user_messages.get_mut(&chat.user_id) {
                list.retain(|s| !Arc::ptr_eq(s, &chat));
                if list.is_empty() {
                    subs.user_messages.remove(&chat.user_id);
                }
            }
            chat.close();
            convs
        };
        for cid in removed {
            self.unwatch(events::conversation_channel(&cid));
        }
    }

    /// The user left `cid`: their subscriptions stop receiving it at once.
    fn member_removed(&self, user_id: &str, cid: &str) {
        let mut dropped = Vec::new();
        let mut unwatch = 0;
        {
            let mut subs = self.subs.lock();
            if let Some(list) = subs.by_conv.get_mut(cid) {
                list.retain(|s| {
                    if &*s.user_id != user_id {
                        return true;
                    }
                    unwatch += 1;
                    if s.dest != ChatDest::UserMessages {
                        dropped.push(s.clone());
                    }
                    false
                });
                if list.is_empty() {
                    subs.by_conv.remove(cid);
                }
            }
            for s in &dropped {
                subs.by_id
                    .remove(&(s.sub.conn.id.clone(), s.sub.id.clone()));
                s.close();
            }
        }
        for s in subs_cursor_drop(&self.subs, user_id) {
            s.state.lock().cursors.remove(cid);
        }
        for _ in 0..unwatch {
            self.unwatch(events::conversation_channel(cid));
        }
    }

    /// The user joined `cid`: their `/user/queue/messages` subscriptions
    /// start receiving it after `last_seq`.
    async fn member_added(&self, user_id: &str, cid: &str, last_seq: i64) {
        let subs: Vec<Arc<ChatSub>> = self
            .subs
            .lock()
            .user_messages
            .get(user_id)
            .cloned()
            .unwrap_or_default();
        for s in subs {
            let fresh = s
                .state
                .lock()
                .cursors
                .insert(cid.to_owned(), last_seq)
                .is_none();
            if fresh {
                self.register(&s, &[cid.to_owned()]);
                self.watch(events::conversation_channel(cid)).await;
            }
        }
    }

    /// Handles one publication from the relay.
    pub async fn handle(&self, d: Delivery) {
        if d.channel == RESYNC {
            self.resync().await;
            return;
        }
        if let Some(dest) = d.channel.strip_prefix("topic:") {
            self.topic_event(dest, &d.payload);
            return;
        }
        let Some(ev) = Event::from_bytes(&d.payload) else {
            tracing::warn!(channel = %d.channel, "undecodable relay event");
            return;
        };
        if d.channel.starts_with("instance:") {
            self.complete(ev);
        } else if let Some(cid) = d.channel.strip_prefix("conv:") {
            self.conversation_event(cid, ev);
        } else if let Some(uid) = d.channel.strip_prefix("user:") {
            self.user_event(uid, ev).await;
        }
    }

    fn conversation_event(&self, cid: &str, ev: Event) {
        let targets: Vec<Arc<ChatSub>> = self
            .subs
            .lock()
            .by_conv
            .get(cid)
            .map(|l| {
                l.iter()
                    .filter(|s| s.dest.accepts(&ev.kind))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if targets.is_empty() {
            return;
        }
        let prepared = Prepared::new(ev);
        for t in targets {
            self.offer(&t, prepared.clone());
        }
    }

    async fn user_event(&self, uid: &str, ev: Event) {
        if let (Some(cid), Some(who)) = (&ev.conversation_id, &ev.user_id) {
            if who == uid {
                match ev.kind.as_str() {
                    kind::MEMBER_REMOVED => self.member_removed(uid, cid),
                    kind::MEMBER_ADDED => {
                        let last = ev
                            .payload
                            .get("lastSeq")
                            .and_then(serde_json::Value::as_i64)
                            .unwrap_or(0);
                        self.member_added(uid, cid, last).await;
                    }
                    _ => {}
                }
            }
        }
        let Some(queue) = &ev.queue else {
            return;
        };
        let msg = Arc::new(encode_event(&ev, queue));
        self.broker.publish(&user_key(uid, queue), &msg);
    }

    fn complete(&self, ev: Event) {
        let Some(rid) = &ev.request_id else {
            return;
        };
        let Some(pending) = self.sends.lock().remove(rid) else {
            return;
        };
        let fresh = ev.kind != kind::DURABLE_DUPLICATE;
        let outcome = match &ev.error {
            Some(code) => Err(code.clone()),
            None => message_from_json(&ev.payload)
                .map(|m| (m, fresh))
                .ok_or_else(|| "internal".to_owned()),
        };
        match pending.completion {
            Completion::Waiter(tx) => {
                let _ = tx.send(outcome);
            }
            Completion::Stomp {
                conn,
                user_id,
                receipt,
            } => match outcome {
                Ok((m, _)) => {
                    if let Some(r) = receipt {
                        let f = Frame::new(stomp_codec::Command::Receipt)
                            .with_header(header::RECEIPT_ID, &r)
                            .with_header("chat-message-id", &m.id)
                            .with_header("seq", &m.seq.to_string());
                        let _ = conn.push(Out::Frame(frames::encode(&f, conn.version())));
                    }
                }
                Err(code) => {
                    let message = match code.as_str() {
                        "not_member" => "not a member of this conversation",
                        _ => "the message could not be stored",
                    };
                    self.app_error(&user_id, &code, message, receipt.as_deref());
                }
            },
        }
    }

    /// Publishes an application error to the user's local
    /// `/user/queue/errors` subscriptions.
    pub fn app_error(&self, user_id: &str, code: &str, message: &str, receipt: Option<&str>) {
        let body = serde_json::json!({ "code": code, "message": message }).to_string();
        let mut headers: Vec<(&str, &str)> = vec![
            (header::CONTENT_TYPE, "application/json"),
            ("event", "error"),
            ("code", code),
            (header::MESSAGE, message),
        ];
        if let Some(r) = receipt {
            headers.push((header::RECEIPT_ID, r));
        }
        let dest = user_queue::ERRORS;
        let msg = Arc::new(SharedMessage::new(dest, headers, Bytes::from(body)));
        self.broker.publish(&user_key(user_id, dest), &msg);
    }

    fn offer(&self, chat: &Arc<ChatSub>, ev: Arc<Prepared>) {
        {
            let mut st = chat.state.lock();
            if st.closed {
                return;
            }
            st.inbox.push_back(ev);
            if st.busy {
                return;
            }
            st.busy = true;
        }
        self.pump(chat);
    }

    /// Delivers queued events in order until the inbox is empty or a gap
    /// needs the store (then a fill task takes over).
    fn pump(&self, chat: &Arc<ChatSub>) {
        loop {
            let mut st = chat.state.lock();
            if st.closed {
                st.busy = false;
                return;
            }
            let Some(ev) = st.inbox.pop_front() else {
                st.busy = false;
                return;
            };
            let e = &ev.event;
            if e.kind == kind::MESSAGE_CREATED {
                let (Some(cid), Some(seq)) = (e.conversation_id.clone(), e.seq) else {
                    continue;
                };
                let Some(&last) = st.cursors.get(&cid) else {
                    continue; // not (or no longer) following this conversation
                };
                if seq <= last {
                    continue; // duplicate
                }
                if seq > last + 1 {
                    st.inbox.push_front(ev);
                    drop(st);
                    if let Some(gw) = self.arc() {
                        let chat = chat.clone();
                        tokio::spawn(async move { gw.fill(chat, cid, last, Some(seq)).await });
                    }
                    return;
                }
                st.cursors.insert(cid.clone(), seq);
                drop(st);
                self.deliver(chat, &ev, Some((cid.as_str().into(), seq)));
            } else {
                drop(st);
                self.deliver(chat, &ev, None);
            }
        }
    }

    /// Delivers stored messages after `after` (up to `before`, exclusive, or
    /// to the end), then resumes the inbox.
    async fn fill(
        self: Arc<Self>,
        chat: Arc<ChatSub>,
        cid: String,
        after: i64,
        before: Option<i64>,
    ) {
        const PAGE: u32 = 100;
        let mut cursor = after;
        let mut failures = 0;
        metrics::counter!(crate::metrics::names::GAP_FILLS).increment(1);
        loop {
            if chat.state.lock().closed {
                return;
            }
            let page = match self.store.messages(&cid, before, Some(cursor), PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, conversation = %cid, "gap fill failed");
                    if failures >= 5 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100 * failures)).await;
                    continue;
                }
            };
            let n = page.len();
            for m in page {
                {
                    let mut st = chat.state.lock();
                    let last = st.cursors.get(&cid).copied().unwrap_or(cursor);
                    if m.seq <= last {
                        continue;
                    }
                    st.cursors.insert(cid.clone(), m.seq);
                }
                cursor = m.seq;
                let ev = Prepared::new(Event::message(kind::MESSAGE_CREATED, &m));
                self.deliver(&chat, &ev, Some((cid.as_str().into(), m.seq)));
            }
            if n < PAGE as usize {
                break;
            }
        }
        if let Some(b) = before {
            // Whatever the store did not have (a failure, or retention) is
            // skipped rather than blocking the subscription forever.
            let mut st = chat.state.lock();
            let last = st.cursors.get(&cid).copied().unwrap_or(cursor);
            if last < b - 1 {
                st.cursors.insert(cid.clone(), b - 1);
            }
        }
        self.pump(&chat);
    }

    fn deliver(&self, chat: &Arc<ChatSub>, ev: &Arc<Prepared>, seq: Option<(Arc<str>, i64)>) {
        let msg = ev.shared_for(&chat.destination);
        let pending = if chat.sub.ack == AckMode::Auto {
            None
        } else {
            seq.clone()
        };
        if deliver_chat(&chat.sub, &msg, pending).is_err() {
            return;
        }
        metrics::counter!(crate::metrics::names::DELIVERIES).increment(1);
        if chat.sub.ack == AckMode::Auto {
            if let Some((cid, s)) = seq {
                let sender = ev
                    .event
                    .payload
                    .get("senderId")
                    .and_then(serde_json::Value::as_str);
                if sender != Some(&*chat.user_id) {
                    self.delivered(chat.user_id.clone(), cid, s);
                }
            }
        }
    }

    /// A recipient received (or ACKed) a message: batched into the
    /// delivered watermark.
    pub fn delivered(&self, user_id: Arc<str>, cid: Arc<str>, seq: i64) {
        let _ = self.delivered.send((user_id, cid, seq));
    }
}

/// A generic `/topic/…` message on its way between instances.
#[derive(serde::Serialize, serde::Deserialize)]
struct TopicPublication {
    /// The publishing instance (which delivered to its own subscribers).
    origin: String,
    /// The message's headers, destination excluded.
    headers: Vec<(String, String)>,
    /// The body, base64.
    body: String,
}

/// Messages read per store query when resyncing.
const RESYNC_PAGE: u32 = 100;

impl Gateway {
    /// A local client sent to a generic `/topic/…` destination (and this
    /// instance's subscribers have it): subscribers on other instances get
    /// it through the relay.
    pub async fn publish_topic(&self, msg: &SharedMessage) {
        if !self.relay.spans_instances() {
            return;
        }
        use base64::Engine as _;
        let p = TopicPublication {
            origin: self.instance_id.clone(),
            headers: msg
                .headers()
                .skip(1)
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect(),
            body: base64::engine::general_purpose::STANDARD.encode(msg.body()),
        };
        let payload = serde_json::to_vec(&p).unwrap_or_default();
        let channel = events::topic_channel(msg.destination());
        if let Err(e) = self.relay.publish(&channel, payload.into()).await {
            metrics::counter!(crate::metrics::names::RELAY_PUBLISH_FAILURES).increment(1);
            tracing::warn!(error = %e, %channel, "relay publish failed");
        }
    }

    /// A local subscription to generic topic `destination` began: other
    /// instances' publications to it are needed (reference counted).
    pub async fn watch_topic(&self, destination: &str) {
        if self.relay.spans_instances() {
            self.watch(events::topic_channel(destination)).await;
        }
    }

    /// A local subscription to generic topic `destination` ended.
    pub fn unwatch_topic(&self, destination: &str) {
        if self.relay.spans_instances() {
            self.unwatch(events::topic_channel(destination));
        }
    }

    fn topic_event(&self, destination: &str, payload: &[u8]) {
        use base64::Engine as _;
        let Ok(p) = serde_json::from_slice::<TopicPublication>(payload) else {
            tracing::warn!(%destination, "undecodable topic publication");
            return;
        };
        if p.origin == self.instance_id {
            return; // its local subscribers got it when it was sent
        }
        let Ok(body) = base64::engine::general_purpose::STANDARD.decode(&p.body) else {
            tracing::warn!(%destination, "undecodable topic publication body");
            return;
        };
        let headers = p.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        let msg = Arc::new(SharedMessage::new(destination, headers, Bytes::from(body)));
        self.broker.publish(destination, &msg);
    }

    /// The relay came back after a lost connection: whatever was published
    /// meanwhile is gone from pub/sub, so every message subscription is fed
    /// what the store holds after its last delivered seq. The usual ordering
    /// applies (duplicates dropped, gaps filled), so live events that
    /// arrived since the reconnect mix in safely.
    async fn resync(&self) {
        let Some(gw) = self.arc() else {
            return;
        };
        // One read per conversation, from the lowest cursor among its
        // subscriptions.
        let mut wanted: HashMap<String, i64> = HashMap::new();
        for s in self.subs.lock().by_id.values() {
            if !s.dest.accepts(kind::MESSAGE_CREATED) {
                continue;
            }
            for (cid, &cursor) in &s.state.lock().cursors {
                let e = wanted.entry(cid.clone()).or_insert(cursor);
                *e = (*e).min(cursor);
            }
        }
        if wanted.is_empty() {
            return;
        }
        tracing::info!(
            conversations = wanted.len(),
            "relay resync: reading missed messages from the store"
        );
        tokio::spawn(async move {
            for (cid, after) in wanted {
                metrics::counter!(crate::metrics::names::RELAY_RESYNCS).increment(1);
                let mut cursor = after;
                loop {
                    let page = match gw
                        .store
                        .messages(&cid, None, Some(cursor), RESYNC_PAGE)
                        .await
                    {
                        Ok(p) => p,
                        Err(e) => {
                            // The next live event's gap fill recovers it.
                            tracing::warn!(error = %e, conversation = %cid, "relay resync read failed");
                            break;
                        }
                    };
                    let n = page.len();
                    metrics::counter!(crate::metrics::names::RELAY_RESYNC_MESSAGES)
                        .increment(n as u64);
                    for m in page {
                        cursor = cursor.max(m.seq);
                        gw.conversation_event(&cid, Event::message(kind::MESSAGE_CREATED, &m));
                    }
                    if n < RESYNC_PAGE as usize {
                        break;
                    }
                }
            }
        });
    }
}

fn subs_cursor_drop(subs: &Mutex<Subs>, user_id: &str) -> Vec<Arc<ChatSub>> {
    subs.lock()
        .user_messages
        .get(user_id)
        .cloned()
        .unwrap_or_default()
}

/// Rebuilds a [`Message`] from its JSON (durable acknowledgements).
pub fn message_from_json(v: &serde_json::Value) -> Option<Message> {
    use time::format_description::well_known::Rfc3339;
    let ts = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_str)
            .and_then(|s| time::OffsetDateTime::parse(s, &Rfc3339).ok())
    };
    Some(Message {
        id: v.get("id")?.as_str()?.to_owned(),
        conversation_id: v.get("conversationId")?.as_str()?.to_owned(),
        seq: v.get("seq")?.as_i64()?,
        sender_id: v.get("senderId")?.as_str()?.to_owned(),
        client_msg_id: v
            .get("clientMsgId")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned),
        body: v.get("body")?.as_str()?.to_owned(),
        created_at: ts("createdAt")?,
        edited_at: ts("editedAt"),
        deleted_at: ts("deletedAt"),
    })
}

impl GatewayTasks {
    /// The gateway.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Starts the gateway's tasks: the relay inbox loop, relay interest,
    /// the delivered-watermark batcher and the stale-send sweeper.
    pub fn spawn(
        self,
        mut inbox: mpsc::UnboundedReceiver<Delivery>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let GatewayTasks {
            gateway,
            mut interest,
            delivered,
        } = self;
        let gw = gateway.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    d = inbox.recv() => match d {
                        Some(d) => gw.handle(d).await,
                        None => break,
                    }
                }
            }
        });
        let relay = gateway.relay.clone();
        tokio::spawn(async move {
            let mut counts: HashMap<String, usize> = HashMap::new();
            while let Some(i) = interest.recv().await {
                match i {
                    Interest::Add(ch, done) => {
                        let n = counts.entry(ch.clone()).or_default();
                        *n += 1;
                        if *n == 1 {
                            if let Err(e) = relay.subscribe(&ch).await {
                                tracing::warn!(error = %e, channel = %ch, "relay subscribe failed");
                            }
                        }
                        let _ = done.send(());
                    }
                    Interest::Remove(ch) => {
                        if let Some(n) = counts.get_mut(&ch) {
                            *n -= 1;
                            if *n == 0 {
                                counts.remove(&ch);
                                if let Err(e) = relay.unsubscribe(&ch).await {
                                    tracing::warn!(error = %e, channel = %ch, "relay unsubscribe failed");
                                }
                            }
                        }
                    }
                }
            }
        });
        tokio::spawn(delivered_batcher(
            gateway.clone(),
            delivered,
            shutdown.clone(),
        ));
        let gw = gateway;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => gw.expire_sends(Duration::from_secs(30)),
                }
            }
        });
    }
}

impl Gateway {
    /// Sends that never heard back (the bus or persister failed) are
    /// answered with an error instead of waiting forever.
    fn expire_sends(&self, older_than: Duration) {
        let stale: Vec<PendingSend> = {
            let mut sends = self.sends.lock();
            let ids: Vec<String> = sends
                .iter()
                .filter(|(_, p)| p.since.elapsed() > older_than)
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter().filter_map(|id| sends.remove(&id)).collect()
        };
        for p in stale {
            match p.completion {
                Completion::Waiter(tx) => {
                    let _ = tx.send(Err("timeout".to_owned()));
                }
                Completion::Stomp {
                    user_id, receipt, ..
                } => {
                    self.app_error(
                        &user_id,
                        "unavailable",
                        "the message was not confirmed in time",
                        receipt.as_deref(),
                    );
                }
            }
        }
    }
}

/// Moves delivered watermarks in batches and tells senders.
async fn delivered_batcher(
    gw: Arc<Gateway>,
    mut rx: mpsc::UnboundedReceiver<(Arc<str>, Arc<str>, i64)>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            x = rx.recv() => match x { Some(x) => x, None => return },
        };
        let mut marks: HashMap<(Arc<str>, Arc<str>), i64> = HashMap::new();
        marks.insert((first.0, first.1), first.2);
        // Collect what arrives within a short window into one round.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
        while let Ok(Some((u, c, s))) = tokio::time::timeout_at(deadline, rx.recv()).await {
            let e = marks.entry((u, c)).or_insert(s);
            *e = (*e).max(s);
        }
        for ((user, cid), seq) in marks {
            match gw.store.mark_delivered(&cid, &user, seq).await {
                Ok(Some(w)) if w.advanced => {
                    let payload = serde_json::json!({"conversationId": &*cid, "userId": &*user, "upToSeq": w.up_to_seq});
                    for sender in w.senders {
                        let ev = Event::for_user_queue(
                            kind::MESSAGE_DELIVERED,
                            user_queue::RECEIPTS,
                            Some(&cid),
                            payload.clone(),
                        );
                        let _ = gw
                            .relay
                            .publish(&events::user_channel(&sender), ev.to_bytes())
                            .await;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "recording delivery failed"),
            }
        }
    }
}
