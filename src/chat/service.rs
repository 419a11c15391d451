//! Chat operations with their rules, shared by STOMP and REST: membership,
//! validation, rate limits, the send path into the bus, and every change
//! that has to reach other users (written with its outbox rows).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::events::{self, conversation_json, kind, user_queue, Event};
use super::gateway::{Completion, Gateway};
use super::state::ChatState;
use crate::bus::{Bus, SendCommand};
use crate::config::ChatConfig;
use crate::pipeline::{encode_publications, publish_unread, Dispatcher, Publication};
use crate::relay::Relay;
use crate::store::{
    self, Conversation, ConversationKind, ConversationSummary, Message, NewConversation,
    NewMessage, OutboxEvent, Role, Store, StoreError, Unread,
};

/// Why a chat operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// No such conversation or message, or the caller may not see it
    /// (the same answer: no existence leak).
    #[error("{0}")]
    NotFound(&'static str),
    /// The caller may see it but not do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// Bad input.
    #[error("{message}")]
    Invalid {
        /// snake_case code.
        code: &'static str,
        /// Human text.
        message: String,
    },
    /// The body is over the size limit.
    #[error("message body larger than {0} bytes")]
    TooLarge(usize),
    /// The per-user rate was exceeded.
    #[error("too many messages; retry later")]
    RateLimited {
        /// When a message would be accepted again.
        retry_after: Duration,
    },
    /// The pipeline did not answer in time or is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ChatError {
    /// The code clients see (REST `error.code`, STOMP error event `code`).
    pub fn code(&self) -> &'static str {
        match self {
            ChatError::NotFound(_) => "not_found",
            ChatError::Forbidden(_) => "forbidden",
            ChatError::Invalid { code, .. } => code,
            ChatError::TooLarge(_) => "too_large",
            ChatError::RateLimited { .. } => "rate_limited",
            ChatError::Unavailable(_) => "unavailable",
            ChatError::Store(StoreError::Conflict { .. }) => "conflict",
            ChatError::Store(_) => "internal",
        }
    }

    fn invalid(code: &'static str, message: impl Into<String>) -> ChatError {
        ChatError::Invalid {
            code,
            message: message.into(),
        }
    }
}

/// How long a REST send waits for durability.
const DURABLE_WAIT: Duration = Duration::from_secs(15);

/// How long the send path trusts what it cached about a conversation's
/// members and about blocks. Changes made here drop the entry at once; the
/// persister re-checks membership inside its transaction, so a stale entry
/// can only delay a refusal, never store a non-member's message.
const SEND_CACHE_TTL: Duration = Duration::from_secs(2);

/// What a send needs to know about its conversation.
struct SendTarget {
    kind: ConversationKind,
    members: Vec<String>,
    at: Instant,
}

/// Chat, shared by every session and request.
pub struct Chat {
    /// Storage.
    pub store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    relay: Arc<dyn Relay>,
    /// This instance's gateway.
    pub gateway: Arc<Gateway>,
    dispatcher: Arc<Dispatcher>,
    config: ChatConfig,
    /// Typing indicators and the send rate (memory or shared).
    state: ChatState,
    /// Conversation -> kind and members, for the send path.
    targets: Mutex<HashMap<String, Arc<SendTarget>>>,
    /// (blocker, blocked) -> blocked?, for the send path.
    blocks: Mutex<HashMap<(String, String), (bool, Instant)>>,
}

impl Chat {
    /// Chat over the given parts, typing and rate state in `state`.
    pub fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        relay: Arc<dyn Relay>,
        gateway: Arc<Gateway>,
        dispatcher: Arc<Dispatcher>,
        config: ChatConfig,
        state: ChatState,
    ) -> Arc<Chat> {
        Arc::new(Chat {
            store,
            bus,
            relay,
            gateway,
            dispatcher,
            config,
            state,
            targets: Mutex::new(HashMap::new()),
            blocks: Mutex::new(HashMap::new()),
        })
    }

    /// The message bus (for readiness checks).
    pub fn bus(&self) -> &dyn Bus {
        &*self.bus
    }

    /// The caller's membership, or `NotFound` (also for a conversation that
    /// does not exist).
    pub async fn conversation_for(
        &self,
        user_id: &str,
        cid: &str,
    ) -> Result<Conversation, ChatError> {
        match self.store.conversation(cid).await? {
            Some(c) if c.members.iter().any(|m| m.user_id == user_id) => Ok(c),
            _ => Err(ChatError::NotFound("no such conversation")),
        }
    }

    /// Checks membership only.
    pub async fn ensure_member(&self, user_id: &str, cid: &str) -> Result<(), ChatError> {
        match self.store.member(cid, user_id).await? {
            Some(_) => Ok(()),
            None => Err(ChatError::NotFound("no such conversation")),
        }
    }

    /// Kind and members of `cid`, cached briefly: the send path runs for
    /// every message, and loading the conversation each time would put a
    /// store round trip in front of every SEND.
    async fn send_target(&self, cid: &str) -> Result<Arc<SendTarget>, ChatError> {
        if let Some(t) = self.targets.lock().get(cid) {
            if t.at.elapsed() < SEND_CACHE_TTL {
                return Ok(t.clone());
            }
        }
        let conv = self
            .store
            .conversation(cid)
            .await?
            .ok_or(ChatError::NotFound("no such conversation"))?;
        let t = Arc::new(SendTarget {
            kind: conv.kind,
            members: conv.members.into_iter().map(|m| m.user_id).collect(),
            at: Instant::now(),
        });
        let mut targets = self.targets.lock();
        if targets.len() > 100_000 {
            targets.retain(|_, t| t.at.elapsed() < SEND_CACHE_TTL);
        }
        targets.insert(cid.to_owned(), t.clone());
        Ok(t)
    }

    /// Membership of `cid` changed here: forget what the send path knew.
    fn forget_target(&self, cid: &str) {
        self.targets.lock().remove(cid);
    }

    /// Whether `blocker` blocks `blocked`, cached briefly.
    async fn blocked(&self, blocker: &str, blocked: &str) -> Result<bool, ChatError> {
        let key = (blocker.to_owned(), blocked.to_owned());
        if let Some((b, at)) = self.blocks.lock().get(&key) {
            if at.elapsed() < SEND_CACHE_TTL {
                return Ok(*b);
            }
        }
        let b = self.store.is_blocked(blocker, blocked).await?;
        let mut blocks = self.blocks.lock();
        if blocks.len() > 100_000 {
            blocks.retain(|_, (_, at)| at.elapsed() < SEND_CACHE_TTL);
        }
        blocks.insert(key, (b, Instant::now()));
        Ok(b)
    }

    /// Records a block (or lifts it) and makes the send path see it at once.
    pub async fn set_block(
        &self,
        user_id: &str,
        other: &str,
        block: bool,
    ) -> Result<(), ChatError> {
        if block {
            self.store.block(user_id, other, store::now()).await?;
        } else {
            self.store.unblock(user_id, other).await?;
        }
        self.blocks
            .lock()
            .remove(&(user_id.to_owned(), other.to_owned()));
        Ok(())
    }

    fn check_body(&self, body: &str) -> Result<(), ChatError> {
        if body.trim().is_empty() {
            return Err(ChatError::invalid("empty_message", "message body is empty"));
        }
        if body.len() > self.config.message_max_bytes {
            return Err(ChatError::TooLarge(self.config.message_max_bytes));
        }
        Ok(())
    }

    async fn take_rate(&self, user_id: &str) -> Result<(), ChatError> {
        if self.config.rate_per_sec == 0 {
            return Ok(());
        }
        match self.state.send_rate.take(user_id).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(retry_after)) => {
                metrics::counter!(crate::metrics::names::LIMITS_HIT, crate::metrics::labels::KIND => "chat_rate").increment(1);
                Err(ChatError::RateLimited { retry_after })
            }
            // A limit is a protection, not part of a message's correctness:
            // while its shared counter is unreachable, sends go through.
            Err(e) => {
                tracing::warn!(error = %e, "send rate check failed; allowing the send");
                Ok(())
            }
        }
    }

    /// Validates a send and appends it to the bus; `completion` hears the
    /// outcome once the persister has it.
    pub async fn submit(
        &self,
        user_id: &str,
        cid: &str,
        body: String,
        client_msg_id: Option<String>,
        completion: Completion,
    ) -> Result<(), ChatError> {
        self.check_body(&body)?;
        if client_msg_id
            .as_ref()
            .is_some_and(|c| c.is_empty() || c.len() > 128)
        {
            return Err(ChatError::invalid(
                "invalid_client_msg_id",
                "clientMsgId must be 1 to 128 characters",
            ));
        }
        let conv = self.send_target(cid).await?;
        if !conv.members.iter().any(|m| m == user_id) {
            return Err(ChatError::NotFound("no such conversation"));
        }
        if conv.kind == ConversationKind::Direct {
            for m in conv.members.iter().filter(|m| *m != user_id) {
                if self.blocked(m, user_id).await? {
                    return Err(ChatError::Forbidden(
                        "this user does not accept your messages",
                    ));
                }
            }
        }
        self.take_rate(user_id).await?;
        let request_id = store::new_id();
        self.gateway.expect_durable(request_id.clone(), completion);
        let cmd = SendCommand {
            request_id: request_id.clone(),
            origin: self.gateway.instance_id.clone(),
            message: NewMessage {
                id: store::new_id(),
                conversation_id: cid.to_owned(),
                sender_id: user_id.to_owned(),
                client_msg_id,
                body,
                created_at: store::now(),
            },
        };
        if let Err(e) = self.bus.append(cmd).await {
            self.gateway.forget_send(&request_id);
            return Err(ChatError::Unavailable(e.to_string()));
        }
        Ok(())
    }

    /// Sends and waits until the message is durable. Returns the message
    /// and whether it is new (false: an idempotent replay).
    pub async fn send_and_wait(
        &self,
        user_id: &str,
        cid: &str,
        body: String,
        client_msg_id: Option<String>,
    ) -> Result<(Message, bool), ChatError> {
        let (tx, rx) = oneshot::channel();
        self.submit(user_id, cid, body, client_msg_id, Completion::Waiter(tx))
            .await?;
        match tokio::time::timeout(DURABLE_WAIT, rx).await {
            Ok(Ok(Ok(outcome))) => Ok(outcome),
            Ok(Ok(Err(code))) if code == "not_member" => {
                Err(ChatError::NotFound("no such conversation"))
            }
            Ok(Ok(Err(code))) => Err(ChatError::Unavailable(format!(
                "the message was not stored ({code})"
            ))),
            _ => Err(ChatError::Unavailable(
                "the message was not confirmed in time".into(),
            )),
        }
    }

    /// Message history, ascending seq.
    pub async fn history(
        &self,
        user_id: &str,
        cid: &str,
        before: Option<i64>,
        after: Option<i64>,
        limit: Option<u32>,
    ) -> Result<Vec<Message>, ChatError> {
        self.ensure_member(user_id, cid).await?;
        let limit = limit.unwrap_or(50).clamp(1, 100);
        Ok(self.store.messages(cid, before, after, limit).await?)
    }

    /// Publications that tell every member (and `extra` users) about a change.
    fn to_members(conv: &Conversation, extra: &[&str], ev: &Event) -> Vec<Publication> {
        let mut users: Vec<&str> = conv.members.iter().map(|m| m.user_id.as_str()).collect();
        users.extend_from_slice(extra);
        users.sort_unstable();
        users.dedup();
        users
            .into_iter()
            .map(|u| Publication {
                channel: events::user_channel(u),
                event: ev.clone(),
            })
            .collect()
    }

    fn outbox(
        kind: &str,
        cid: Option<&str>,
        message_id: Option<&str>,
        pubs: &[Publication],
    ) -> OutboxEvent {
        OutboxEvent {
            kind: kind.to_owned(),
            conversation_id: cid.map(str::to_owned),
            message_id: message_id.map(str::to_owned),
            payload: encode_publications(pubs),
        }
    }

    /// Edits a message (sender only).
    pub async fn edit(
        &self,
        user_id: &str,
        message_id: &str,
        body: String,
    ) -> Result<Message, ChatError> {
        self.check_body(&body)?;
        let m = self.visible_message(user_id, message_id).await?;
        if m.sender_id != user_id {
            return Err(ChatError::Forbidden("only the sender may edit a message"));
        }
        if m.deleted_at.is_some() {
            return Err(ChatError::NotFound("no such message"));
        }
        let at = store::now();
        let edited = Message {
            body: body.clone(),
            edited_at: Some(at),
            ..m.clone()
        };
        let ev = Event::message(kind::MESSAGE_EDITED, &edited);
        let pubs = [Publication {
            channel: events::conversation_channel(&m.conversation_id),
            event: ev,
        }];
        let out = Self::outbox(
            kind::MESSAGE_EDITED,
            Some(&m.conversation_id),
            Some(&m.id),
            &pubs,
        );
        let result = self
            .store
            .edit_message(message_id, &body, at, vec![out])
            .await?
            .ok_or(ChatError::NotFound("no such message"))?;
        self.dispatcher.kick();
        Ok(result)
    }

    /// Deletes a message (sender, or an admin/owner of the conversation),
    /// leaving a tombstone.
    pub async fn delete(&self, user_id: &str, message_id: &str) -> Result<Message, ChatError> {
        let m = self.visible_message(user_id, message_id).await?;
        if m.sender_id != user_id {
            // Admins moderate groups; in a direct conversation only the
            // sender deletes.
            let conv = self.store.conversation(&m.conversation_id).await?;
            let me = conv
                .as_ref()
                .and_then(|c| c.members.iter().find(|x| x.user_id == user_id));
            let is_group = conv
                .as_ref()
                .is_some_and(|c| c.kind == ConversationKind::Group);
            if !is_group || me.is_none_or(|me| me.role < Role::Admin) {
                return Err(ChatError::Forbidden(
                    "only the sender or an admin may delete a message",
                ));
            }
        }
        if m.deleted_at.is_some() {
            return Ok(m);
        }
        let at = store::now();
        let tomb = Message {
            body: String::new(),
            deleted_at: Some(at),
            ..m.clone()
        };
        let ev = Event::message(kind::MESSAGE_DELETED, &tomb);
        let pubs = [Publication {
            channel: events::conversation_channel(&m.conversation_id),
            event: ev,
        }];
        let out = Self::outbox(
            kind::MESSAGE_DELETED,
            Some(&m.conversation_id),
            Some(&m.id),
            &pubs,
        );
        let result = self
            .store
            .delete_message(message_id, at, vec![out])
            .await?
            .ok_or(ChatError::NotFound("no such message"))?;
        self.dispatcher.kick();
        Ok(result)
    }

    async fn visible_message(&self, user_id: &str, message_id: &str) -> Result<Message, ChatError> {
        let m = self
            .store
            .message(message_id)
            .await?
            .ok_or(ChatError::NotFound("no such message"))?;
        if self
            .store
            .member(&m.conversation_id, user_id)
            .await?
            .is_none()
        {
            return Err(ChatError::NotFound("no such message"));
        }
        Ok(m)
    }

    /// Marks everything up to `up_to_seq` read; tells the senders
    /// (`/user/queue/receipts`), the members (`/topic/chat/{cid}/read`) and
    /// the reader's other sessions (unread counter).
    pub async fn mark_read(
        &self,
        user_id: &str,
        cid: &str,
        up_to_seq: i64,
    ) -> Result<(), ChatError> {
        if up_to_seq < 0 {
            return Err(ChatError::invalid(
                "invalid_seq",
                "upToSeq must not be negative",
            ));
        }
        let w = self
            .store
            .mark_read(cid, user_id, up_to_seq)
            .await?
            .ok_or(ChatError::NotFound("no such conversation"))?;
        if !w.advanced {
            return Ok(());
        }
        let payload =
            serde_json::json!({"conversationId": cid, "userId": user_id, "upToSeq": w.up_to_seq});
        let mut read = Event::new(kind::READ, payload.clone());
        read.conversation_id = Some(cid.to_owned());
        let _ = self
            .relay
            .publish(&events::conversation_channel(cid), read.to_bytes())
            .await;
        for sender in &w.senders {
            let ev = Event::for_user_queue(
                kind::MESSAGE_READ,
                user_queue::RECEIPTS,
                Some(cid),
                payload.clone(),
            );
            let _ = self
                .relay
                .publish(&events::user_channel(sender), ev.to_bytes())
                .await;
        }
        let unread = self.store.unread(user_id).await?;
        if let Some(u) = unread.into_iter().find(|u| u.conversation_id == cid) {
            let payload = serde_json::json!({"conversationId": cid, "unreadCount": u.unread_count, "lastSeq": u.last_seq});
            let ev =
                Event::for_user_queue(kind::UNREAD, user_queue::NOTIFICATIONS, Some(cid), payload);
            let _ = self
                .relay
                .publish(&events::user_channel(user_id), ev.to_bytes())
                .await;
        }
        Ok(())
    }

    /// Marks the given messages read (their highest seq).
    pub async fn mark_read_ids(
        &self,
        user_id: &str,
        cid: &str,
        ids: &[String],
    ) -> Result<(), ChatError> {
        let mut max = None;
        for id in ids {
            if let Some(m) = self.store.message(id).await? {
                if m.conversation_id == cid {
                    max = max.max(Some(m.seq));
                }
            }
        }
        match max {
            Some(seq) => self.mark_read(user_id, cid, seq).await,
            None => {
                self.ensure_member(user_id, cid).await?;
                Ok(())
            }
        }
    }

    /// Unread counters.
    pub async fn unread(&self, user_id: &str) -> Result<Vec<Unread>, ChatError> {
        Ok(self.store.unread(user_id).await?)
    }

    /// Starts or stops the user's typing indicator; a started one ends by
    /// itself after the typing expiry unless renewed.
    pub async fn typing(&self, user_id: &str, cid: &str, typing: bool) -> Result<(), ChatError> {
        self.ensure_member(user_id, cid).await?;
        let changed = match self.state.typing.set(cid, user_id, typing).await {
            Ok(changed) => changed,
            Err(e) => {
                tracing::warn!(error = %e, "recording typing failed");
                true
            }
        };
        // Renewals are forwarded too, so late subscribers learn the state.
        if changed || typing {
            self.publish_typing(cid, user_id, typing).await;
        }
        Ok(())
    }

    async fn publish_typing(&self, cid: &str, user_id: &str, typing: bool) {
        let mut ev = Event::new(
            kind::TYPING,
            serde_json::json!({"conversationId": cid, "userId": user_id, "typing": typing}),
        );
        ev.conversation_id = Some(cid.to_owned());
        let _ = self
            .relay
            .publish(&events::conversation_channel(cid), ev.to_bytes())
            .await;
    }

    /// Ends typing states not renewed within the expiry (run periodically).
    pub async fn expire_typing(&self) {
        let expired = match self.state.typing.expire().await {
            Ok(expired) => expired,
            Err(e) => {
                tracing::warn!(error = %e, "expiring typing indicators failed");
                return;
            }
        };
        for (cid, uid) in expired {
            self.publish_typing(&cid, &uid, false).await;
        }
    }

    /// Creates (or returns) the direct conversation with `other`.
    /// `true` when it was created now.
    pub async fn create_direct(
        &self,
        user_id: &str,
        other: &str,
    ) -> Result<(Conversation, bool), ChatError> {
        if other == user_id {
            return Err(ChatError::invalid(
                "invalid_members",
                "a direct conversation needs another user",
            ));
        }
        if self.store.user_by_id(other).await?.is_none() {
            return Err(ChatError::invalid("unknown_user", "no such user"));
        }
        let mut pair = [user_id, other];
        pair.sort_unstable();
        let key = pair.join(":");
        if let Some(c) = self.store.direct_conversation(&key).await? {
            return Ok((c, false));
        }
        if self.store.is_blocked(other, user_id).await? {
            return Err(ChatError::Forbidden(
                "this user does not accept conversations with you",
            ));
        }
        let new = NewConversation {
            id: store::new_id(),
            kind: ConversationKind::Direct,
            name: None,
            created_by: user_id.to_owned(),
            created_at: store::now(),
            direct_key: Some(key.clone()),
            members: vec![
                (user_id.to_owned(), Role::Owner),
                (other.to_owned(), Role::Member),
            ],
        };
        match self.create(new).await {
            Ok(c) => Ok((c, true)),
            Err(ChatError::Store(StoreError::Conflict { .. })) => {
                // Created concurrently by the other side.
                let c = self
                    .store
                    .direct_conversation(&key)
                    .await?
                    .ok_or(ChatError::Unavailable("conversation vanished".into()))?;
                Ok((c, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Creates a group owned by the caller.
    pub async fn create_group(
        &self,
        user_id: &str,
        name: &str,
        member_ids: &[String],
    ) -> Result<Conversation, ChatError> {
        let name = check_name(name)?;
        let mut members = vec![(user_id.to_owned(), Role::Owner)];
        let mut seen: HashSet<&str> = HashSet::from([user_id]);
        for id in member_ids {
            if !seen.insert(id) {
                continue;
            }
            if self.store.user_by_id(id).await?.is_none() {
                return Err(ChatError::invalid(
                    "unknown_user",
                    format!("no such user: {id}"),
                ));
            }
            members.push((id.clone(), Role::Member));
        }
        let new = NewConversation {
            id: store::new_id(),
            kind: ConversationKind::Group,
            name: Some(name),
            created_by: user_id.to_owned(),
            created_at: store::now(),
            direct_key: None,
            members,
        };
        self.create(new).await
    }

    async fn create(&self, new: NewConversation) -> Result<Conversation, ChatError> {
        // The row's publications are built from what will exist.
        let preview = Conversation {
            id: new.id.clone(),
            kind: new.kind,
            name: new.name.clone(),
            created_by: new.created_by.clone(),
            created_at: new.created_at,
            last_seq: 0,
            last_activity_at: new.created_at,
            members: new
                .members
                .iter()
                .map(|(u, r)| store::Member {
                    user_id: u.clone(),
                    role: *r,
                    joined_at: new.created_at,
                    last_read_seq: 0,
                    last_delivered_seq: 0,
                })
                .collect(),
        };
        let mut pubs = Vec::new();
        for m in &preview.members {
            let mut ev = Event::for_user_queue(
                kind::MEMBER_ADDED,
                user_queue::NOTIFICATIONS,
                Some(&preview.id),
                serde_json::json!({"conversationId": preview.id, "userId": m.user_id, "lastSeq": 0, "conversation": conversation_json(&preview)}),
            );
            ev.user_id = Some(m.user_id.clone());
            pubs.push(Publication {
                channel: events::user_channel(&m.user_id),
                event: ev,
            });
        }
        let out = Self::outbox(kind::CONVERSATION_CREATED, Some(&preview.id), None, &pubs);
        let c = self.store.create_conversation(new, vec![out]).await?;
        self.dispatcher.kick();
        Ok(c)
    }

    /// The caller's conversations.
    pub async fn list(&self, user_id: &str) -> Result<Vec<ConversationSummary>, ChatError> {
        Ok(self.store.conversations_of(user_id).await?)
    }

    /// One conversation with the caller's unread count and last message.
    pub async fn get(&self, user_id: &str, cid: &str) -> Result<ConversationSummary, ChatError> {
        let conv = self.conversation_for(user_id, cid).await?;
        let me = conv
            .members
            .iter()
            .find(|m| m.user_id == user_id)
            .map_or(0, |m| m.last_read_seq);
        let last = self.store.messages(cid, None, None, 1).await?.pop();
        Ok(ConversationSummary {
            unread_count: (conv.last_seq - me).max(0),
            last_message: last,
            conversation: conv,
        })
    }

    async fn require_admin(&self, user_id: &str, cid: &str) -> Result<Conversation, ChatError> {
        let conv = self.conversation_for(user_id, cid).await?;
        if conv.kind == ConversationKind::Direct {
            return Err(ChatError::Forbidden(
                "direct conversations cannot be changed",
            ));
        }
        let role = conv
            .members
            .iter()
            .find(|m| m.user_id == user_id)
            .map(|m| m.role);
        if role.is_none_or(|r| r < Role::Admin) {
            return Err(ChatError::Forbidden("only an owner or admin may do this"));
        }
        Ok(conv)
    }

    /// Renames a group (owner/admin).
    pub async fn rename(
        &self,
        user_id: &str,
        cid: &str,
        name: &str,
    ) -> Result<Conversation, ChatError> {
        let name = check_name(name)?;
        let mut conv = self.require_admin(user_id, cid).await?;
        conv.name = Some(name.clone());
        let ev = Event::for_user_queue(
            kind::CONVERSATION_UPDATED,
            user_queue::NOTIFICATIONS,
            Some(cid),
            serde_json::json!({"conversation": conversation_json(&conv)}),
        );
        let out = Self::outbox(
            kind::CONVERSATION_UPDATED,
            Some(cid),
            None,
            &Self::to_members(&conv, &[], &ev),
        );
        self.store
            .rename_conversation(cid, &name, vec![out])
            .await?;
        self.dispatcher.kick();
        self.conversation_for(user_id, cid).await
    }

    /// Adds members to a group (owner/admin).
    pub async fn add_members(
        &self,
        user_id: &str,
        cid: &str,
        user_ids: &[String],
    ) -> Result<Conversation, ChatError> {
        let conv = self.require_admin(user_id, cid).await?;
        let mut fresh = Vec::new();
        for id in user_ids {
            if conv.members.iter().any(|m| &m.user_id == id) || fresh.iter().any(|(f, _)| f == id) {
                continue;
            }
            if self.store.user_by_id(id).await?.is_none() {
                return Err(ChatError::invalid(
                    "unknown_user",
                    format!("no such user: {id}"),
                ));
            }
            fresh.push((id.clone(), Role::Member));
        }
        if fresh.is_empty() {
            return Ok(conv);
        }
        let mut events_out = Vec::new();
        let mut after = conv.clone();
        for (id, role) in &fresh {
            after.members.push(store::Member {
                user_id: id.clone(),
                role: *role,
                joined_at: store::now(),
                last_read_seq: conv.last_seq,
                last_delivered_seq: conv.last_seq,
            });
        }
        for (id, _) in &fresh {
            let mut ev = Event::for_user_queue(
                kind::MEMBER_ADDED,
                user_queue::NOTIFICATIONS,
                Some(cid),
                serde_json::json!({"conversationId": cid, "userId": id, "lastSeq": conv.last_seq, "conversation": conversation_json(&after)}),
            );
            ev.user_id = Some(id.clone());
            events_out.extend(Self::to_members(&after, &[], &ev));
        }
        let out = Self::outbox(kind::MEMBER_ADDED, Some(cid), None, &events_out);
        self.store
            .add_members(cid, fresh, store::now(), vec![out])
            .await?;
        self.forget_target(cid);
        self.dispatcher.kick();
        self.conversation_for(user_id, cid).await
    }

    /// Removes `target` (owner/admin), or leaves (`target == user_id`).
    pub async fn remove_member(
        &self,
        user_id: &str,
        cid: &str,
        target: &str,
    ) -> Result<(), ChatError> {
        let conv = if target == user_id {
            self.conversation_for(user_id, cid).await?
        } else {
            let conv = self.require_admin(user_id, cid).await?;
            let target_role = conv
                .members
                .iter()
                .find(|m| m.user_id == target)
                .map(|m| m.role);
            let my_role = conv
                .members
                .iter()
                .find(|m| m.user_id == user_id)
                .map(|m| m.role);
            match target_role {
                None => return Err(ChatError::NotFound("no such member")),
                Some(Role::Owner) if my_role != Some(Role::Owner) => {
                    return Err(ChatError::Forbidden("only an owner may remove an owner"))
                }
                _ => {}
            }
            conv
        };
        if conv.kind == ConversationKind::Direct {
            return Err(ChatError::Forbidden("direct conversations cannot be left"));
        }
        let mut ev = Event::for_user_queue(
            kind::MEMBER_REMOVED,
            user_queue::NOTIFICATIONS,
            Some(cid),
            serde_json::json!({"conversationId": cid, "userId": target}),
        );
        ev.user_id = Some(target.to_owned());
        let out = Self::outbox(
            kind::MEMBER_REMOVED,
            Some(cid),
            None,
            &Self::to_members(&conv, &[target], &ev),
        );
        self.store
            .remove_member(cid, target, vec![out])
            .await?
            .ok_or(ChatError::NotFound("no such member"))?;
        self.forget_target(cid);
        self.dispatcher.kick();
        Ok(())
    }

    /// Pushes the current unread counters of a conversation (used after
    /// membership changes and by tests).
    pub async fn push_unread(&self, cid: &str) {
        publish_unread(&*self.store, &*self.relay, cid).await;
    }
}

fn check_name(name: &str) -> Result<String, ChatError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ChatError::invalid(
            "invalid_name",
            "a group name is 1 to 100 characters",
        ));
    }
    Ok(name.to_owned())
}

impl Chat {
    /// Deletes messages older than the retention age in small batches (so
    /// no transaction holds the table for long). Returns how many went.
    pub async fn apply_retention(&self, max_age: Duration) -> Result<u64, ChatError> {
        const BATCH: u32 = 500;
        let age = time::Duration::try_from(max_age).unwrap_or(time::Duration::MAX);
        let cutoff = store::now() - age;
        let mut total = 0;
        loop {
            let n = self.store.delete_messages_before(cutoff, BATCH).await?;
            total += n;
            if n < u64::from(BATCH) {
                break;
            }
            // Let other writers in between batches.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if total > 0 {
            tracing::info!(deleted = total, "retention removed old messages");
        }
        Ok(total)
    }
}
