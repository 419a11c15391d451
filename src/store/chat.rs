//! Storage for chat: conversations, members, messages with per-conversation
//! sequence numbers, the outbox, read/delivered watermarks, contacts, blocks,
//! search and retention.
//!
//! Every mutating call that has consequences for other users takes the
//! outbox events to write in the same transaction, so an event is published
//! if and only if its change committed (see `pipeline/`).

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{StoreError, User};

/// Direct (one per pair of users) or group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConversationKind {
    /// Two users; at most one per pair.
    Direct,
    /// Named, any number of members, with roles.
    Group,
}

impl ConversationKind {
    /// `direct` or `group`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationKind::Direct => "direct",
            ConversationKind::Group => "group",
        }
    }

    /// Parses `direct` / `group`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "direct" => Some(ConversationKind::Direct),
            "group" => Some(ConversationKind::Group),
            _ => None,
        }
    }
}

/// A member's role in a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Ordinary member.
    Member,
    /// May rename, add and remove members, delete others' messages.
    Admin,
    /// Creator (or successor); everything an admin may do.
    Owner,
}

impl Role {
    /// `owner`, `admin` or `member`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    /// Parses `owner` / `admin` / `member`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

/// A member of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The user.
    pub user_id: String,
    /// Their role.
    pub role: Role,
    /// When they joined.
    pub joined_at: OffsetDateTime,
    /// Highest seq they have read (unread = conversation.last_seq - this).
    pub last_read_seq: i64,
    /// Highest seq one of their sessions received.
    pub last_delivered_seq: i64,
}

/// A conversation with its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Id (UUIDv7 text).
    pub id: String,
    /// Direct or group.
    pub kind: ConversationKind,
    /// Group name; `None` for direct conversations.
    pub name: Option<String>,
    /// Creator.
    pub created_by: String,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Seq of the newest message; 0 when empty.
    pub last_seq: i64,
    /// Time of the newest message, else of creation (ordering of lists).
    pub last_activity_at: OffsetDateTime,
    /// Members, ordered by join time then user id.
    pub members: Vec<Member>,
}

/// What [`ChatStore::create_conversation`] needs.
#[derive(Debug, Clone)]
pub struct NewConversation {
    /// Id to assign.
    pub id: String,
    /// Direct or group.
    pub kind: ConversationKind,
    /// Group name.
    pub name: Option<String>,
    /// Creator (also in `members`, as owner).
    pub created_by: String,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// For direct conversations: the two user ids sorted and joined with
    /// `:`; unique, so a second create of the same pair conflicts
    /// (`StoreError::Conflict { field: "direct_key" }`).
    pub direct_key: Option<String>,
    /// Members with their roles (creator included).
    pub members: Vec<(String, Role)>,
}

/// A chat message. Deleted messages are tombstones: `deleted_at` set, body
/// empty, seq kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Id (UUIDv7 text).
    pub id: String,
    /// Conversation.
    pub conversation_id: String,
    /// Per-conversation sequence number: 1, 2, 3… without gaps.
    pub seq: i64,
    /// Author.
    pub sender_id: String,
    /// The sender's idempotency key, if given.
    pub client_msg_id: Option<String>,
    /// Text.
    pub body: String,
    /// When it was persisted.
    pub created_at: OffsetDateTime,
    /// Last edit.
    pub edited_at: Option<OffsetDateTime>,
    /// Deletion (tombstone).
    pub deleted_at: Option<OffsetDateTime>,
}

/// A message to persist (seq is assigned by the store).
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Id to assign if it is new.
    pub id: String,
    /// Conversation.
    pub conversation_id: String,
    /// Author.
    pub sender_id: String,
    /// Idempotency key: `(sender_id, client_msg_id)` is unique.
    pub client_msg_id: Option<String>,
    /// Text.
    pub body: String,
    /// Time of persisting.
    pub created_at: OffsetDateTime,
}

/// What became of one [`NewMessage`] of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persisted {
    /// Inserted with the next seq; a `message.created` outbox row was written.
    Created {
        /// The stored message.
        message: Message,
        /// Its outbox row.
        outbox_id: i64,
    },
    /// `(sender, client_msg_id)` existed, or a message with the same id (a
    /// retried batch): the original, nothing written.
    Duplicate(Message),
    /// The sender is no longer a member (or the conversation is gone).
    NotMember,
}

/// An event to write to the outbox with a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Event type, e.g. `message.edited`, `member.added`.
    pub kind: String,
    /// Conversation it concerns, if any.
    pub conversation_id: Option<String>,
    /// Message it concerns, if any.
    pub message_id: Option<String>,
    /// JSON payload (complete for every kind but `message.created`, whose
    /// payload the dispatcher builds from the message).
    pub payload: String,
}

/// A row of the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Monotonic id (commit order within one writer).
    pub id: i64,
    /// The event.
    pub event: OutboxEvent,
    /// When it was written.
    pub created_at: OffsetDateTime,
}

/// One line of `GET /api/conversations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    /// The conversation with members.
    pub conversation: Conversation,
    /// `last_seq - the caller's last_read_seq`, never negative.
    pub unread_count: i64,
    /// Newest message (a tombstone if it was deleted), if any.
    pub last_message: Option<Message>,
}

/// Unread state of one conversation for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unread {
    /// Conversation.
    pub conversation_id: String,
    /// Unread messages.
    pub unread_count: i64,
    /// Newest seq.
    pub last_seq: i64,
}

/// A watermark that moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    /// The new value (monotonic: never lower than before, never above
    /// the conversation's last seq).
    pub up_to_seq: i64,
    /// True when it actually advanced.
    pub advanced: bool,
    /// Distinct senders (other than the member) of messages in the range
    /// that just became read/delivered: who gets the receipt.
    pub senders: Vec<String>,
}

/// Chat storage. Implemented by both backends; every method is atomic.
#[async_trait]
pub trait ChatStore: Send + Sync {
    /// Creates a conversation with its members, and writes `events`.
    /// A direct conversation whose `direct_key` exists → `Conflict`; a user
    /// that does not exist → `NotFound`. Nothing is written on error.
    async fn create_conversation(
        &self,
        c: NewConversation,
        events: Vec<OutboxEvent>,
    ) -> Result<Conversation, StoreError>;
    /// A conversation with its members.
    async fn conversation(&self, id: &str) -> Result<Option<Conversation>, StoreError>;
    /// The direct conversation of a pair, by its `direct_key`.
    async fn direct_conversation(
        &self,
        direct_key: &str,
    ) -> Result<Option<Conversation>, StoreError>;
    /// The user's conversations, most recent activity first.
    async fn conversations_of(&self, user_id: &str)
        -> Result<Vec<ConversationSummary>, StoreError>;
    /// Ids of the user's conversations.
    async fn conversation_ids_of(&self, user_id: &str) -> Result<Vec<String>, StoreError>;
    /// One membership, if it exists.
    async fn member(
        &self,
        conversation_id: &str,
        user_id: &str,
    ) -> Result<Option<Member>, StoreError>;
    /// Adds members (existing ones are left as they are) with
    /// `last_read_seq = last_delivered_seq = the conversation's last_seq`, and
    /// writes `events`. Returns the ids actually added, in input order.
    /// An unknown conversation or user → `NotFound`, and nothing is written.
    async fn add_members(
        &self,
        conversation_id: &str,
        members: Vec<(String, Role)>,
        at: OffsetDateTime,
        events: Vec<OutboxEvent>,
    ) -> Result<Vec<String>, StoreError>;
    /// Removes a member and writes `events`; when the last owner leaves,
    /// the longest-standing admin, else member, becomes owner (returned).
    /// `Ok(None)` when they were not a member (nothing is written).
    async fn remove_member(
        &self,
        conversation_id: &str,
        user_id: &str,
        events: Vec<OutboxEvent>,
    ) -> Result<Option<RemovedMember>, StoreError>;
    /// Changes a member's role; false when not a member.
    async fn set_role(
        &self,
        conversation_id: &str,
        user_id: &str,
        role: Role,
    ) -> Result<bool, StoreError>;
    /// Renames a group and writes `events`; an unknown conversation →
    /// `NotFound`, nothing written.
    async fn rename_conversation(
        &self,
        conversation_id: &str,
        name: &str,
        events: Vec<OutboxEvent>,
    ) -> Result<(), StoreError>;

    /// Persists a batch in ONE transaction: idempotent on
    /// `(sender_id, client_msg_id)`, membership re-checked, gapless seq per
    /// conversation, the sender's `last_read_seq` moved to the new seq, the
    /// conversation's `last_seq`/`last_activity_at` updated, and one
    /// `message.created` outbox row per created message ([`MESSAGE_CREATED`],
    /// payload `{}`). Outcomes are in input order. A message whose id exists
    /// already is a [`Persisted::Duplicate`] as well, so a retried batch
    /// writes nothing twice.
    async fn persist_messages(&self, batch: Vec<NewMessage>) -> Result<Vec<Persisted>, StoreError>;
    /// One message.
    async fn message(&self, id: &str) -> Result<Option<Message>, StoreError>;
    /// Messages with `after < seq < before` (either bound optional),
    /// ascending; with no `after` the newest `limit` of that range.
    async fn messages(
        &self,
        conversation_id: &str,
        before: Option<i64>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError>;
    /// Replaces the body, sets `edited_at`, writes `events`. `None` when the
    /// message does not exist or is deleted (nothing is written).
    async fn edit_message(
        &self,
        id: &str,
        body: &str,
        at: OffsetDateTime,
        events: Vec<OutboxEvent>,
    ) -> Result<Option<Message>, StoreError>;
    /// Tombstones the message (body emptied, `deleted_at` set), writes
    /// `events`. `None` when it does not exist; deleting twice is a no-op
    /// returning the tombstone (no events written).
    async fn delete_message(
        &self,
        id: &str,
        at: OffsetDateTime,
        events: Vec<OutboxEvent>,
    ) -> Result<Option<Message>, StoreError>;

    /// Appends events on their own.
    async fn append_outbox(&self, events: Vec<OutboxEvent>) -> Result<Vec<i64>, StoreError>;
    /// Rows created before `older_than`, oldest first, at most `limit`. The
    /// rows returned are claimed for [`OUTBOX_LEASE`] (`claimed_until`), on
    /// both backends: until it runs out no call returns them again, so
    /// concurrent sweepers do not take the same rows (PostgreSQL picks them
    /// with `FOR UPDATE SKIP LOCKED`). A row not deleted by then is due again.
    async fn outbox_due(
        &self,
        older_than: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError>;
    /// Deletes published rows.
    async fn outbox_delete(&self, ids: Vec<i64>) -> Result<(), StoreError>;
    /// Rows waiting to be published (a metric).
    async fn outbox_depth(&self) -> Result<i64, StoreError>;

    /// Moves the read watermark up to `up_to_seq` (clamped to the
    /// conversation's last seq; never backwards). `None` when not a member.
    async fn mark_read(
        &self,
        conversation_id: &str,
        user_id: &str,
        up_to_seq: i64,
    ) -> Result<Option<Watermark>, StoreError>;
    /// Same for the delivered watermark.
    async fn mark_delivered(
        &self,
        conversation_id: &str,
        user_id: &str,
        up_to_seq: i64,
    ) -> Result<Option<Watermark>, StoreError>;
    /// Unread counters of every member of each conversation, in one go:
    /// `(conversation id, member id, unread count, last seq)`. What the
    /// persister pushes after a batch; unknown ids are skipped.
    async fn unread_of_members(
        &self,
        conversation_ids: Vec<String>,
    ) -> Result<Vec<(String, String, i64, i64)>, StoreError>;
    /// Unread counts of all the user's conversations.
    async fn unread(&self, user_id: &str) -> Result<Vec<Unread>, StoreError>;

    /// Adds an explicit contact (idempotent); an unknown user → `NotFound`.
    async fn add_contact(
        &self,
        user_id: &str,
        contact_id: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Removes an explicit contact; false when there was none.
    async fn remove_contact(&self, user_id: &str, contact_id: &str) -> Result<bool, StoreError>;
    /// Explicit contacts plus everyone sharing a conversation, without the
    /// user, ordered by username.
    async fn contacts(&self, user_id: &str) -> Result<Vec<User>, StoreError>;
    /// Ids of explicit contacts plus co-members, and of users who have the
    /// user as an explicit contact: who sees the user's presence.
    async fn presence_audience(&self, user_id: &str) -> Result<Vec<String>, StoreError>;
    /// `user_id` blocks `blocked_id` (idempotent); an unknown user →
    /// `NotFound`.
    async fn block(
        &self,
        user_id: &str,
        blocked_id: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Lifts a block; false when there was none.
    async fn unblock(&self, user_id: &str, blocked_id: &str) -> Result<bool, StoreError>;
    /// True when `user_id` has blocked `other_id`.
    async fn is_blocked(&self, user_id: &str, other_id: &str) -> Result<bool, StoreError>;
    /// Users whose username or display name contains `query`
    /// (case-insensitive), username order, at most `limit`. The query is
    /// trimmed and taken literally (no wildcards); an empty one finds nobody.
    async fn search_users(&self, query: &str, limit: u32) -> Result<Vec<User>, StoreError>;
    /// Records when the user was last seen online.
    async fn set_last_seen(&self, user_id: &str, at: OffsetDateTime) -> Result<(), StoreError>;
    /// When the users were last seen online: one entry per id, in input
    /// order; `None` for users never seen (or unknown).
    async fn last_seen(
        &self,
        user_ids: Vec<String>,
    ) -> Result<Vec<(String, Option<OffsetDateTime>)>, StoreError>;

    /// Full-text search over non-deleted messages of conversations the user
    /// belongs to (optionally one), best match first (SQLite FTS5 bm25,
    /// PostgreSQL `ts_rank` over a GIN-indexed tsvector), kept in step with
    /// edits and deletes. The query is plain words, all of which must match
    /// (no search syntax); a query without letters or digits finds nothing.
    async fn search_messages(
        &self,
        user_id: &str,
        query: &str,
        conversation_id: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<Message>, StoreError>;

    /// Deletes at most `limit` messages created before `cutoff` (and their
    /// search entries); returns how many. Called repeatedly in small batches.
    async fn delete_messages_before(
        &self,
        cutoff: OffsetDateTime,
        limit: u32,
    ) -> Result<u64, StoreError>;
}

/// Result of [`ChatStore::remove_member`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedMember {
    /// The removed member's role.
    pub role: Role,
    /// Who became owner because the last owner left, if anyone.
    pub new_owner: Option<String>,
}

/// Outbox kind of the row [`ChatStore::persist_messages`] writes for each
/// created message.
pub const MESSAGE_CREATED: &str = "message.created";

/// How long rows returned by [`ChatStore::outbox_due`] stay claimed: another
/// sweeper does not see them again before this has passed.
pub const OUTBOX_LEASE: time::Duration = time::Duration::seconds(30);

/// The words of a message search query: whitespace-separated chunks that
/// contain at least one letter or digit. User input is plain words, never
/// search syntax; no words means no results.
pub(super) fn search_words(query: &str) -> Vec<&str> {
    query
        .split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .collect()
}
