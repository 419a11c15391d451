//! [`ChatStore`] on SQLite.
//!
//! Writes go through the single writer connection in `IMMEDIATE`
//! transactions, so they are serialised: seq assignment needs no further
//! locking. Reads that take more than one statement run in a read
//! transaction, which in WAL mode is one consistent snapshot.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};
use time::OffsetDateTime;

use super::{from_micros, opt_from_micros, to_micros, user_from_row, SqliteStore, USER_COLUMNS};
use crate::store::chat::search_words;
use crate::store::{
    fold, now, truncate_to_micros, ChatStore, Conversation, ConversationKind, ConversationSummary,
    Member, Message, NewConversation, NewMessage, OutboxEvent, OutboxRow, Persisted, RemovedMember,
    Role, StoreError, Unread, User, Watermark, MESSAGE_CREATED, OUTBOX_LEASE,
};

const CONVERSATION_COLUMNS: &str =
    "c.id, c.kind, c.name, c.created_by, c.created_at, c.last_seq, c.last_activity_at";
const MEMBER_COLUMNS: &str =
    "m.conversation_id, m.user_id, m.role, m.joined_at, m.last_read_seq, m.last_delivered_seq";
const MESSAGE_COLUMNS: &str = "msg.id, msg.conversation_id, msg.seq, msg.sender_id, \
     msg.client_msg_id, msg.body, msg.created_at, msg.edited_at, msg.deleted_at";
/// `MESSAGE_COLUMNS` without the table alias, for `RETURNING`.
const MESSAGE_RETURNING: &str =
    "id, conversation_id, seq, sender_id, client_msg_id, body, created_at, edited_at, deleted_at";

fn invalid(index: usize, what: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        index,
        rusqlite::types::Type::Text,
        format!("invalid {what} {value:?}").into(),
    )
}

fn conversation_from_row(row: &Row<'_>) -> rusqlite::Result<Conversation> {
    let kind: String = row.get(1)?;
    Ok(Conversation {
        id: row.get(0)?,
        kind: ConversationKind::parse(&kind).ok_or_else(|| invalid(1, "kind", &kind))?,
        name: row.get(2)?,
        created_by: row.get(3)?,
        created_at: from_micros(row.get(4)?)?,
        last_seq: row.get(5)?,
        last_activity_at: from_micros(row.get(6)?)?,
        members: Vec::new(),
    })
}

/// A member from [`MEMBER_COLUMNS`], with its conversation id.
fn member_from_row(row: &Row<'_>) -> rusqlite::Result<(String, Member)> {
    let role: String = row.get(2)?;
    Ok((
        row.get(0)?,
        Member {
            user_id: row.get(1)?,
            role: Role::parse(&role).ok_or_else(|| invalid(2, "role", &role))?,
            joined_at: from_micros(row.get(3)?)?,
            last_read_seq: row.get(4)?,
            last_delivered_seq: row.get(5)?,
        },
    ))
}

/// A message from [`MESSAGE_COLUMNS`] starting at column `at`.
fn message_at(row: &Row<'_>, at: usize) -> rusqlite::Result<Message> {
    Ok(Message {
        id: row.get(at)?,
        conversation_id: row.get(at + 1)?,
        seq: row.get(at + 2)?,
        sender_id: row.get(at + 3)?,
        client_msg_id: row.get(at + 4)?,
        body: row.get(at + 5)?,
        created_at: from_micros(row.get(at + 6)?)?,
        edited_at: opt_from_micros(row.get(at + 7)?)?,
        deleted_at: opt_from_micros(row.get(at + 8)?)?,
    })
}

fn message_from_row(row: &Row<'_>) -> rusqlite::Result<Message> {
    message_at(row, 0)
}

fn is_foreign_key_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(code, _)
        if code.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY)
}

/// Turns a foreign key violation (a user or conversation that does not
/// exist) into `NotFound`; other errors stay database errors.
fn or_not_found<T>(
    result: rusqlite::Result<T>,
    what: &str,
) -> rusqlite::Result<Result<T, StoreError>> {
    match result {
        Ok(v) => Ok(Ok(v)),
        Err(e) if is_foreign_key_violation(&e) => Ok(Err(StoreError::NotFound(what.into()))),
        Err(e) => Err(e),
    }
}

fn begin(conn: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
}

fn insert_events(conn: &Connection, events: &[OutboxEvent]) -> rusqlite::Result<Vec<i64>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let at = to_micros(now());
    let mut stmt = conn.prepare_cached(
        "INSERT INTO outbox (kind, conversation_id, message_id, payload, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    events
        .iter()
        .map(|e| {
            stmt.execute(params![
                e.kind,
                e.conversation_id,
                e.message_id,
                e.payload,
                at
            ])?;
            Ok(conn.last_insert_rowid())
        })
        .collect()
}

fn members_of(conn: &Connection, conversation_id: &str) -> rusqlite::Result<Vec<Member>> {
    conn.prepare_cached(&format!(
        "SELECT {MEMBER_COLUMNS} FROM conversation_members m \
         WHERE m.conversation_id = ?1 ORDER BY m.joined_at, m.user_id"
    ))?
    .query_map([conversation_id], |row| {
        member_from_row(row).map(|(_, m)| m)
    })?
    .collect()
}

/// The conversation whose `column` equals `key`, with its members.
fn load_conversation(
    conn: &Connection,
    column: &str,
    key: &str,
) -> rusqlite::Result<Option<Conversation>> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.{column} = ?1"
        ))?
        .query_row([key], conversation_from_row)
        .optional()?;
    let Some(mut conversation) = found else {
        return Ok(None);
    };
    conversation.members = members_of(conn, &conversation.id)?;
    Ok(Some(conversation))
}

fn message_by_id(conn: &Connection, id: &str) -> rusqlite::Result<Option<Message>> {
    conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages msg WHERE msg.id = ?1"
    ))?
    .query_row([id], message_from_row)
    .optional()
}

/// Which watermark [`move_watermark`] moves.
#[derive(Clone, Copy)]
enum Mark {
    Read,
    Delivered,
}

impl Mark {
    fn column(self) -> &'static str {
        match self {
            Mark::Read => "last_read_seq",
            Mark::Delivered => "last_delivered_seq",
        }
    }
}

fn move_watermark(
    conn: &mut Connection,
    mark: Mark,
    conversation_id: &str,
    user_id: &str,
    up_to_seq: i64,
) -> rusqlite::Result<Option<Watermark>> {
    let column = mark.column();
    let tx = begin(conn)?;
    let current: Option<(i64, i64)> = tx
        .prepare_cached(&format!(
            "SELECT m.{column}, c.last_seq FROM conversation_members m \
             JOIN conversations c ON c.id = m.conversation_id \
             WHERE m.conversation_id = ?1 AND m.user_id = ?2"
        ))?
        .query_row([conversation_id, user_id], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    let Some((old, last_seq)) = current else {
        return Ok(None);
    };
    let new = old.max(up_to_seq.min(last_seq));
    if new == old {
        return Ok(Some(Watermark {
            up_to_seq: old,
            advanced: false,
            senders: Vec::new(),
        }));
    }
    tx.prepare_cached(&format!(
        "UPDATE conversation_members SET {column} = ?3 \
         WHERE conversation_id = ?1 AND user_id = ?2"
    ))?
    .execute(params![conversation_id, user_id, new])?;
    let senders = tx
        .prepare_cached(
            "SELECT DISTINCT sender_id FROM messages \
             WHERE conversation_id = ?1 AND seq > ?2 AND seq <= ?3 AND sender_id <> ?4 \
             ORDER BY sender_id",
        )?
        .query_map(params![conversation_id, old, new, user_id], |row| {
            row.get(0)
        })?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    tx.commit()?;
    Ok(Some(Watermark {
        up_to_seq: new,
        advanced: true,
        senders,
    }))
}

/// The `MATCH` expression for plain-word user input: every word becomes a
/// quoted phrase (so no character of it is FTS5 syntax), all must match.
fn fts_query(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A conversation of the batch being persisted.
struct Seqs {
    last_seq: i64,
    last_activity_at: i64,
    changed: bool,
}

fn persist_batch(
    conn: &mut Connection,
    batch: Vec<NewMessage>,
) -> rusqlite::Result<Vec<Persisted>> {
    let tx = begin(conn)?;
    let outbox_at = to_micros(now());
    let mut conversations: HashMap<String, Seqs> = HashMap::new();
    let mut membership: HashMap<(String, String), bool> = HashMap::new();
    // Highest created seq per (conversation, sender): the sender has read it.
    let mut read_up_to: HashMap<(String, String), i64> = HashMap::new();
    let mut outcomes = Vec::with_capacity(batch.len());
    {
        let mut by_id = tx.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages msg WHERE msg.id = ?1"
        ))?;
        let mut by_key = tx.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages msg \
             WHERE msg.sender_id = ?1 AND msg.client_msg_id = ?2"
        ))?;
        let mut is_member = tx.prepare_cached(
            "SELECT 1 FROM conversation_members WHERE conversation_id = ?1 AND user_id = ?2",
        )?;
        let mut seqs = tx
            .prepare_cached("SELECT last_seq, last_activity_at FROM conversations WHERE id = ?1")?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO messages (id, conversation_id, seq, sender_id, client_msg_id, body, \
             created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
        )?;
        let mut outbox = tx.prepare_cached(
            "INSERT INTO outbox (kind, conversation_id, message_id, payload, created_at) \
             VALUES (?1, ?2, ?3, '{}', ?4)",
        )?;
        for m in batch {
            let member_key = (m.conversation_id.clone(), m.sender_id.clone());
            let member = match membership.entry(member_key.clone()) {
                Entry::Occupied(e) => *e.get(),
                Entry::Vacant(e) => {
                    *e.insert(is_member.exists([&m.conversation_id, &m.sender_id])?)
                }
            };
            let state = if member {
                match conversations.entry(m.conversation_id.clone()) {
                    Entry::Occupied(e) => Some(e.into_mut()),
                    Entry::Vacant(e) => {
                        let (last_seq, last_activity_at) = seqs
                            .query_row([&m.conversation_id], |row| {
                                Ok((row.get(0)?, row.get(1)?))
                            })?;
                        Some(e.insert(Seqs {
                            last_seq,
                            last_activity_at,
                            changed: false,
                        }))
                    }
                }
            } else {
                None
            };
            let created_at = truncate_to_micros(m.created_at);
            let micros = to_micros(created_at);
            // Insert first: a new message (nearly all of them) costs no
            // lookup. Nothing inserted means the id (a retried batch) or the
            // sender's key (a resent message, also one earlier in this
            // batch) exists: the original answers.
            let inserted = match &state {
                Some(state) => {
                    insert.execute(params![
                        m.id,
                        m.conversation_id,
                        state.last_seq + 1,
                        m.sender_id,
                        m.client_msg_id,
                        m.body,
                        micros
                    ])? == 1
                }
                None => false,
            };
            let state = match state {
                Some(state) if inserted => state,
                _ => {
                    let mut existing = by_id.query_row([&m.id], message_from_row).optional()?;
                    if existing.is_none() {
                        if let Some(key) = &m.client_msg_id {
                            existing = by_key
                                .query_row([&m.sender_id, key], message_from_row)
                                .optional()?;
                        }
                    }
                    outcomes.push(match existing {
                        Some(original) => Persisted::Duplicate(original),
                        None if !member => Persisted::NotMember,
                        // Only the (conversation, seq) key is left: seqs
                        // are assigned here alone, so the store is not in
                        // the state this writer believes.
                        None => {
                            return Err(rusqlite::Error::SqliteFailure(
                                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
                                Some(format!(
                                    "seq {} of conversation {} is taken",
                                    conversations
                                        .get(&m.conversation_id)
                                        .map_or(0, |s| s.last_seq + 1),
                                    m.conversation_id
                                )),
                            ))
                        }
                    });
                    continue;
                }
            };
            state.last_seq += 1;
            state.last_activity_at = state.last_activity_at.max(micros);
            state.changed = true;
            let seq = state.last_seq;
            outbox.execute(params![MESSAGE_CREATED, m.conversation_id, m.id, outbox_at])?;
            let outbox_id = tx.last_insert_rowid();
            read_up_to.insert(member_key, seq);
            outcomes.push(Persisted::Created {
                message: Message {
                    id: m.id,
                    conversation_id: m.conversation_id,
                    seq,
                    sender_id: m.sender_id,
                    client_msg_id: m.client_msg_id,
                    body: m.body,
                    created_at,
                    edited_at: None,
                    deleted_at: None,
                },
                outbox_id,
            });
        }
        let mut update = tx.prepare_cached(
            "UPDATE conversations SET last_seq = ?2, last_activity_at = ?3 WHERE id = ?1",
        )?;
        for (id, state) in conversations.iter().filter(|(_, s)| s.changed) {
            update.execute(params![id, state.last_seq, state.last_activity_at])?;
        }
        let mut read = tx.prepare_cached(
            "UPDATE conversation_members SET last_read_seq = max(last_read_seq, ?3) \
             WHERE conversation_id = ?1 AND user_id = ?2",
        )?;
        for ((conversation_id, user_id), seq) in &read_up_to {
            read.execute(params![conversation_id, user_id, seq])?;
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

#[async_trait]
impl ChatStore for SqliteStore {
    async fn create_conversation(
        &self,
        c: NewConversation,
        events: Vec<OutboxEvent>,
    ) -> Result<Conversation, StoreError> {
        self.write(move |conn| {
            let tx = begin(conn)?;
            let created_at = to_micros(c.created_at);
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO conversations (id, kind, name, direct_key, created_by, \
                     created_at, last_seq, last_activity_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?6)",
                )?
                .execute(params![
                    c.id,
                    c.kind.as_str(),
                    c.name,
                    c.direct_key,
                    c.created_by,
                    created_at
                ]);
            if let Err(e) = or_not_found(inserted, "user")? {
                return Ok(Err(e));
            }
            {
                let mut add = tx.prepare_cached(
                    "INSERT INTO conversation_members (conversation_id, user_id, role, joined_at) \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                )?;
                for (user_id, role) in &c.members {
                    let added = add.execute(params![c.id, user_id, role.as_str(), created_at]);
                    if let Err(e) = or_not_found(added, "user")? {
                        return Ok(Err(e));
                    }
                }
            }
            insert_events(&tx, &events)?;
            let conversation =
                load_conversation(&tx, "id", &c.id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
            tx.commit()?;
            Ok(Ok(conversation))
        })
        .await?
    }

    async fn conversation(&self, id: &str) -> Result<Option<Conversation>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| {
            let tx = conn.transaction()?;
            load_conversation(&tx, "id", &id)
        })
        .await
    }

    async fn direct_conversation(
        &self,
        direct_key: &str,
    ) -> Result<Option<Conversation>, StoreError> {
        let key = direct_key.to_string();
        self.read(move |conn| {
            let tx = conn.transaction()?;
            load_conversation(&tx, "direct_key", &key)
        })
        .await
    }

    async fn conversations_of(
        &self,
        user_id: &str,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        let user_id = user_id.to_string();
        self.read(move |conn| {
            let tx = conn.transaction()?;
            let mut summaries = tx
                .prepare_cached(&format!(
                    "SELECT {CONVERSATION_COLUMNS}, me.last_read_seq, {MESSAGE_COLUMNS} \
                     FROM conversation_members me \
                     JOIN conversations c ON c.id = me.conversation_id \
                     LEFT JOIN messages msg ON msg.conversation_id = c.id AND msg.seq = c.last_seq \
                     WHERE me.user_id = ?1 \
                     ORDER BY c.last_activity_at DESC, c.id DESC"
                ))?
                .query_map([&user_id], |row| {
                    let conversation = conversation_from_row(row)?;
                    let last_read: i64 = row.get(7)?;
                    let message_id: Option<String> = row.get(8)?;
                    let last_message = if message_id.is_some() {
                        Some(message_at(row, 8)?)
                    } else {
                        None
                    };
                    Ok(ConversationSummary {
                        unread_count: (conversation.last_seq - last_read).max(0),
                        conversation,
                        last_message,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut members: HashMap<String, Vec<Member>> = HashMap::new();
            let rows = tx
                .prepare_cached(&format!(
                    "SELECT {MEMBER_COLUMNS} FROM conversation_members me \
                     JOIN conversation_members m ON m.conversation_id = me.conversation_id \
                     WHERE me.user_id = ?1 ORDER BY m.conversation_id, m.joined_at, m.user_id"
                ))?
                .query_map([&user_id], member_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for (conversation_id, member) in rows {
                members.entry(conversation_id).or_default().push(member);
            }
            for s in &mut summaries {
                s.conversation.members = members.remove(&s.conversation.id).unwrap_or_default();
            }
            Ok(summaries)
        })
        .await
    }

    async fn conversation_ids_of(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let user_id = user_id.to_string();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT conversation_id FROM conversation_members WHERE user_id = ?1 \
                 ORDER BY conversation_id",
            )?
            .query_map([user_id], |row| row.get(0))?
            .collect()
        })
        .await
    }

    async fn member(
        &self,
        conversation_id: &str,
        user_id: &str,
    ) -> Result<Option<Member>, StoreError> {
        let (conversation_id, user_id) = (conversation_id.to_string(), user_id.to_string());
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {MEMBER_COLUMNS} FROM conversation_members m \
                 WHERE m.conversation_id = ?1 AND m.user_id = ?2"
            ))?
            .query_row([conversation_id, user_id], |row| {
                member_from_row(row).map(|(_, m)| m)
            })
            .optional()
        })
        .await
    }

    async fn add_members(
        &self,
        conversation_id: &str,
        members: Vec<(String, Role)>,
        at: OffsetDateTime,
        events: Vec<OutboxEvent>,
    ) -> Result<Vec<String>, StoreError> {
        let conversation_id = conversation_id.to_string();
        self.write(move |conn| {
            let tx = begin(conn)?;
            let last_seq: Option<i64> = tx
                .prepare_cached("SELECT last_seq FROM conversations WHERE id = ?1")?
                .query_row([&conversation_id], |row| row.get(0))
                .optional()?;
            let Some(last_seq) = last_seq else {
                return Ok(Err(StoreError::NotFound("conversation".into())));
            };
            let mut added = Vec::new();
            {
                let mut add = tx.prepare_cached(
                    "INSERT INTO conversation_members (conversation_id, user_id, role, joined_at, \
                     last_read_seq, last_delivered_seq) VALUES (?1, ?2, ?3, ?4, ?5, ?5) \
                     ON CONFLICT DO NOTHING",
                )?;
                for (user_id, role) in members {
                    let n = add.execute(params![
                        conversation_id,
                        user_id,
                        role.as_str(),
                        to_micros(at),
                        last_seq
                    ]);
                    match or_not_found(n, "user")? {
                        Ok(1) => added.push(user_id),
                        Ok(_) => {}
                        Err(e) => return Ok(Err(e)),
                    }
                }
            }
            insert_events(&tx, &events)?;
            tx.commit()?;
            Ok(Ok(added))
        })
        .await?
    }

    async fn remove_member(
        &self,
        conversation_id: &str,
        user_id: &str,
        events: Vec<OutboxEvent>,
    ) -> Result<Option<RemovedMember>, StoreError> {
        let (conversation_id, user_id) = (conversation_id.to_string(), user_id.to_string());
        self.write(move |conn| {
            let tx = begin(conn)?;
            let role: Option<String> = tx
                .prepare_cached(
                    "DELETE FROM conversation_members WHERE conversation_id = ?1 AND user_id = ?2 \
                     RETURNING role",
                )?
                .query_row([&conversation_id, &user_id], |row| row.get(0))
                .optional()?;
            let Some(role) = role else {
                return Ok(None);
            };
            let role = Role::parse(&role).ok_or_else(|| invalid(0, "role", &role))?;
            let mut new_owner = None;
            if role == Role::Owner {
                let owners_left = tx
                    .prepare_cached(
                        "SELECT 1 FROM conversation_members \
                         WHERE conversation_id = ?1 AND role = 'owner'",
                    )?
                    .exists([&conversation_id])?;
                if !owners_left {
                    new_owner = tx
                        .prepare_cached(
                            "UPDATE conversation_members SET role = 'owner' \
                             WHERE conversation_id = ?1 AND user_id = ( \
                               SELECT user_id FROM conversation_members WHERE conversation_id = ?1 \
                               ORDER BY CASE role WHEN 'admin' THEN 0 ELSE 1 END, \
                                 joined_at, user_id \
                               LIMIT 1) \
                             RETURNING user_id",
                        )?
                        .query_row([&conversation_id], |row| row.get(0))
                        .optional()?;
                }
            }
            insert_events(&tx, &events)?;
            tx.commit()?;
            Ok(Some(RemovedMember { role, new_owner }))
        })
        .await
    }

    async fn set_role(
        &self,
        conversation_id: &str,
        user_id: &str,
        role: Role,
    ) -> Result<bool, StoreError> {
        let (conversation_id, user_id) = (conversation_id.to_string(), user_id.to_string());
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE conversation_members SET role = ?3 \
                 WHERE conversation_id = ?1 AND user_id = ?2",
            )?
            .execute(params![conversation_id, user_id, role.as_str()])
            .map(|n| n > 0)
        })
        .await
    }

    async fn rename_conversation(
        &self,
        conversation_id: &str,
        name: &str,
        events: Vec<OutboxEvent>,
    ) -> Result<(), StoreError> {
        let (conversation_id, name) = (conversation_id.to_string(), name.to_string());
        self.write(move |conn| {
            let tx = begin(conn)?;
            let n = tx
                .prepare_cached("UPDATE conversations SET name = ?2 WHERE id = ?1")?
                .execute([&conversation_id, &name])?;
            if n == 0 {
                return Ok(Err(StoreError::NotFound("conversation".into())));
            }
            insert_events(&tx, &events)?;
            tx.commit()?;
            Ok(Ok(()))
        })
        .await?
    }

    async fn persist_messages(&self, batch: Vec<NewMessage>) -> Result<Vec<Persisted>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let outcomes = self.write(move |conn| persist_batch(conn, batch)).await?;
        self.search_index.queued(&self.writer);
        Ok(outcomes)
    }

    async fn message(&self, id: &str) -> Result<Option<Message>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| message_by_id(conn, &id)).await
    }

    async fn messages(
        &self,
        conversation_id: &str,
        before: Option<i64>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let conversation_id = conversation_id.to_string();
        let before = before.unwrap_or(i64::MAX);
        self.read(move |conn| {
            let (lower, order) = match after {
                Some(after) => (after, "ASC"),
                None => (i64::MIN, "DESC"),
            };
            let mut messages = conn
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages msg \
                     WHERE msg.conversation_id = ?1 AND msg.seq > ?2 AND msg.seq < ?3 \
                     ORDER BY msg.seq {order} LIMIT ?4"
                ))?
                .query_map(
                    params![conversation_id, lower, before, i64::from(limit)],
                    message_from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            if after.is_none() {
                messages.reverse();
            }
            Ok(messages)
        })
        .await
    }

    async fn edit_message(
        &self,
        id: &str,
        body: &str,
        at: OffsetDateTime,
        events: Vec<OutboxEvent>,
    ) -> Result<Option<Message>, StoreError> {
        let (id, body) = (id.to_string(), body.to_string());
        let at = to_micros(at);
        self.write(move |conn| {
            let tx = begin(conn)?;
            let edited = tx
                .prepare_cached(&format!(
                    "UPDATE messages SET body = ?2, edited_at = ?3 \
                     WHERE id = ?1 AND deleted_at IS NULL RETURNING {MESSAGE_RETURNING}"
                ))?
                .query_row(params![id, body, at], message_from_row)
                .optional()?;
            if edited.is_some() {
                insert_events(&tx, &events)?;
                tx.commit()?;
            }
            Ok(edited)
        })
        .await
    }

    async fn delete_message(
        &self,
        id: &str,
        at: OffsetDateTime,
        events: Vec<OutboxEvent>,
    ) -> Result<Option<Message>, StoreError> {
        let id = id.to_string();
        let at = to_micros(at);
        self.write(move |conn| {
            let tx = begin(conn)?;
            let deleted = tx
                .prepare_cached(&format!(
                    "UPDATE messages SET body = '', deleted_at = ?2 \
                     WHERE id = ?1 AND deleted_at IS NULL RETURNING {MESSAGE_RETURNING}"
                ))?
                .query_row(params![id, at], message_from_row)
                .optional()?;
            if deleted.is_none() {
                // Absent, or a tombstone already: nothing changes.
                return message_by_id(&tx, &id);
            }
            insert_events(&tx, &events)?;
            tx.commit()?;
            Ok(deleted)
        })
        .await
    }

    async fn append_outbox(&self, events: Vec<OutboxEvent>) -> Result<Vec<i64>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.write(move |conn| {
            let tx = begin(conn)?;
            let ids = insert_events(&tx, &events)?;
            tx.commit()?;
            Ok(ids)
        })
        .await
    }

    async fn outbox_due(
        &self,
        older_than: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let older_than = to_micros(older_than);
        let now = now();
        let (now_micros, lease_end) = (to_micros(now), to_micros(now + OUTBOX_LEASE));
        self.write(move |conn| {
            let tx = begin(conn)?;
            let rows = tx
                .prepare_cached(
                    "SELECT id, kind, conversation_id, message_id, payload, created_at FROM outbox \
                     WHERE created_at < ?1 AND (claimed_until IS NULL OR claimed_until <= ?2) \
                     ORDER BY id LIMIT ?3",
                )?
                .query_map(params![older_than, now_micros, i64::from(limit)], |row| {
                    Ok(OutboxRow {
                        id: row.get(0)?,
                        event: OutboxEvent {
                            kind: row.get(1)?,
                            conversation_id: row.get(2)?,
                            message_id: row.get(3)?,
                            payload: row.get(4)?,
                        },
                        created_at: from_micros(row.get(5)?)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            {
                let mut claim =
                    tx.prepare_cached("UPDATE outbox SET claimed_until = ?2 WHERE id = ?1")?;
                for row in &rows {
                    claim.execute(params![row.id, lease_end])?;
                }
            }
            tx.commit()?;
            Ok(rows)
        })
        .await
    }

    async fn outbox_depth(&self) -> Result<i64, StoreError> {
        self.read(|conn| conn.query_row("SELECT count(*) FROM outbox", [], |row| row.get(0)))
            .await
    }

    async fn outbox_delete(&self, ids: Vec<i64>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.write(move |conn| {
            let tx = begin(conn)?;
            {
                let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
                for id in ids {
                    delete.execute([id])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn mark_read(
        &self,
        conversation_id: &str,
        user_id: &str,
        up_to_seq: i64,
    ) -> Result<Option<Watermark>, StoreError> {
        let (conversation_id, user_id) = (conversation_id.to_string(), user_id.to_string());
        self.write(move |conn| {
            move_watermark(conn, Mark::Read, &conversation_id, &user_id, up_to_seq)
        })
        .await
    }

    async fn mark_delivered(
        &self,
        conversation_id: &str,
        user_id: &str,
        up_to_seq: i64,
    ) -> Result<Option<Watermark>, StoreError> {
        let (conversation_id, user_id) = (conversation_id.to_string(), user_id.to_string());
        self.write(move |conn| {
            move_watermark(conn, Mark::Delivered, &conversation_id, &user_id, up_to_seq)
        })
        .await
    }

    async fn unread_of_members(
        &self,
        conversation_ids: Vec<String>,
    ) -> Result<Vec<(String, String, i64, i64)>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT c.id, m.user_id, max(c.last_seq - m.last_read_seq, 0), c.last_seq \
                 FROM conversations c JOIN conversation_members m ON m.conversation_id = c.id \
                 WHERE c.id = ?1",
            )?;
            let mut out = Vec::new();
            for id in &conversation_ids {
                let rows = stmt.query_map([id], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })?;
                for r in rows {
                    out.push(r?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn unread(&self, user_id: &str) -> Result<Vec<Unread>, StoreError> {
        let user_id = user_id.to_string();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT c.id, max(c.last_seq - m.last_read_seq, 0), c.last_seq \
                 FROM conversation_members m JOIN conversations c ON c.id = m.conversation_id \
                 WHERE m.user_id = ?1 ORDER BY c.last_activity_at DESC, c.id DESC",
            )?
            .query_map([user_id], |row| {
                Ok(Unread {
                    conversation_id: row.get(0)?,
                    unread_count: row.get(1)?,
                    last_seq: row.get(2)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn add_contact(
        &self,
        user_id: &str,
        contact_id: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.add_pair(
            "INSERT INTO contacts (user_id, contact_id, created_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT DO NOTHING",
            user_id,
            contact_id,
            at,
        )
        .await
    }

    async fn remove_contact(&self, user_id: &str, contact_id: &str) -> Result<bool, StoreError> {
        self.remove_pair(
            "DELETE FROM contacts WHERE user_id = ?1 AND contact_id = ?2",
            user_id,
            contact_id,
        )
        .await
    }

    async fn contacts(&self, user_id: &str) -> Result<Vec<User>, StoreError> {
        let user_id = user_id.to_string();
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users WHERE id <> ?1 AND id IN ( \
                   SELECT contact_id FROM contacts WHERE user_id = ?1 \
                   UNION \
                   SELECT other.user_id FROM conversation_members me \
                   JOIN conversation_members other ON other.conversation_id = me.conversation_id \
                   WHERE me.user_id = ?1) \
                 ORDER BY username_lower, id"
            ))?
            .query_map([user_id], user_from_row)?
            .collect()
        })
        .await
    }

    async fn presence_audience(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let user_id = user_id.to_string();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id FROM ( \
                   SELECT contact_id AS id FROM contacts WHERE user_id = ?1 \
                   UNION \
                   SELECT user_id FROM contacts WHERE contact_id = ?1 \
                   UNION \
                   SELECT other.user_id FROM conversation_members me \
                   JOIN conversation_members other ON other.conversation_id = me.conversation_id \
                   WHERE me.user_id = ?1) \
                 WHERE id <> ?1 ORDER BY id",
            )?
            .query_map([user_id], |row| row.get(0))?
            .collect()
        })
        .await
    }

    async fn block(
        &self,
        user_id: &str,
        blocked_id: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.add_pair(
            "INSERT INTO blocks (user_id, blocked_id, created_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT DO NOTHING",
            user_id,
            blocked_id,
            at,
        )
        .await
    }

    async fn unblock(&self, user_id: &str, blocked_id: &str) -> Result<bool, StoreError> {
        self.remove_pair(
            "DELETE FROM blocks WHERE user_id = ?1 AND blocked_id = ?2",
            user_id,
            blocked_id,
        )
        .await
    }

    async fn is_blocked(&self, user_id: &str, other_id: &str) -> Result<bool, StoreError> {
        let (user_id, other_id) = (user_id.to_string(), other_id.to_string());
        self.read(move |conn| {
            conn.prepare_cached("SELECT 1 FROM blocks WHERE user_id = ?1 AND blocked_id = ?2")?
                .exists([user_id, other_id])
        })
        .await
    }

    async fn search_users(&self, query: &str, limit: u32) -> Result<Vec<User>, StoreError> {
        let needle = fold(query.trim());
        if needle.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        self.read(move |conn| {
            // instr, not LIKE: no character of the query is a wildcard.
            conn.prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users \
                 WHERE instr(username_lower, ?1) > 0 OR instr(display_name_lower, ?1) > 0 \
                 ORDER BY username_lower, id LIMIT ?2"
            ))?
            .query_map(params![needle, i64::from(limit)], user_from_row)?
            .collect()
        })
        .await
    }

    async fn set_last_seen(&self, user_id: &str, at: OffsetDateTime) -> Result<(), StoreError> {
        let user_id = user_id.to_string();
        self.write(move |conn| {
            conn.prepare_cached("UPDATE users SET last_seen_at = ?2 WHERE id = ?1")?
                .execute(params![user_id, to_micros(at)])
                .map(|_| ())
        })
        .await
    }

    async fn last_seen(
        &self,
        user_ids: Vec<String>,
    ) -> Result<Vec<(String, Option<OffsetDateTime>)>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached("SELECT last_seen_at FROM users WHERE id = ?1")?;
            user_ids
                .into_iter()
                .map(|id| {
                    let seen: Option<Option<i64>> =
                        stmt.query_row([&id], |row| row.get(0)).optional()?;
                    Ok((id, opt_from_micros(seen.flatten())?))
                })
                .collect()
        })
        .await
    }

    async fn search_messages(
        &self,
        user_id: &str,
        query: &str,
        conversation_id: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let words = search_words(query);
        if words.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let fts = fts_query(&words);
        // Every committed message is searchable: index what is queued.
        self.search_index.catch_up(&self.writer).await?;
        let user_id = user_id.to_string();
        let conversation_id = conversation_id.map(str::to_string);
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages_fts \
                 JOIN messages msg ON msg.n = messages_fts.rowid \
                 JOIN conversation_members cm \
                   ON cm.conversation_id = msg.conversation_id AND cm.user_id = ?2 \
                 WHERE messages_fts MATCH ?1 AND msg.deleted_at IS NULL \
                   AND (?3 IS NULL OR msg.conversation_id = ?3) \
                 ORDER BY bm25(messages_fts), msg.n DESC LIMIT ?4 OFFSET ?5"
            ))?
            .query_map(
                params![
                    fts,
                    user_id,
                    conversation_id,
                    i64::from(limit),
                    i64::from(offset)
                ],
                message_from_row,
            )?
            .collect()
        })
        .await
    }

    async fn delete_messages_before(
        &self,
        cutoff: OffsetDateTime,
        limit: u32,
    ) -> Result<u64, StoreError> {
        if limit == 0 {
            return Ok(0);
        }
        let cutoff = to_micros(cutoff);
        self.write(move |conn| {
            conn.prepare_cached(
                "DELETE FROM messages WHERE n IN ( \
                   SELECT n FROM messages WHERE created_at < ?1 ORDER BY created_at LIMIT ?2)",
            )?
            .execute(params![cutoff, i64::from(limit)])
            .map(|n| n as u64)
        })
        .await
    }
}

impl SqliteStore {
    /// Inserts a (user, other user, time) row (contacts, blocks);
    /// idempotent, `NotFound` when either user does not exist.
    async fn add_pair(
        &self,
        sql: &'static str,
        a: &str,
        b: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let (a, b) = (a.to_string(), b.to_string());
        self.write(move |conn| {
            let n = conn
                .prepare_cached(sql)?
                .execute(params![a, b, to_micros(at)]);
            Ok(or_not_found(n, "user")?.map(|_| ()))
        })
        .await?
    }

    /// Deletes a (user, other user) row; true when there was one.
    async fn remove_pair(&self, sql: &'static str, a: &str, b: &str) -> Result<bool, StoreError> {
        let (a, b) = (a.to_string(), b.to_string());
        self.write(move |conn| conn.prepare_cached(sql)?.execute([a, b]).map(|n| n > 0))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_phrases() {
        assert_eq!(
            fts_query(&search_words("hello world")),
            "\"hello\" \"world\""
        );
        assert_eq!(
            fts_query(&search_words("a\"b OR NEAR(x) *")),
            "\"a\"\"b\" \"OR\" \"NEAR(x)\""
        );
        assert!(search_words("  ... -- \" * ").is_empty());
        assert!(search_words("").is_empty());
    }
}
