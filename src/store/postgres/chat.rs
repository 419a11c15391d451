//! [`ChatStore`] on PostgreSQL.
//!
//! Seq assignment is serialised per conversation by the row lock on
//! `conversations`: a batch locks the rows of its conversations (in id order,
//! so concurrent batches cannot deadlock), checks membership and idempotency
//! under those locks, and writes messages, outbox rows, `last_seq` and the
//! senders' read watermarks with one set-based statement each. Membership
//! changes take the same lock, so a member removed before a batch commits
//! cannot have messages persisted after their removal.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use bb8::PooledConnection;
use time::OffsetDateTime;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{GenericClient, IsolationLevel, Row, Transaction};

use super::{map_err, user_from_row, Manager, PostgresStore, USER_COLUMNS};
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

type Params<'a> = [&'a (dyn ToSql + Sync)];

/// Parameters with their types, for statements sent in one round trip
/// (`query_typed`: no separate prepare), used on the persister's path.
type Typed<'a> = [(&'a (dyn ToSql + Sync), Type)];

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    index: usize,
) -> Result<T, StoreError> {
    row.try_get(index).map_err(map_err)
}

/// Like [`map_err`], but a foreign key violation (a user or conversation that
/// does not exist) becomes `NotFound(what)`.
fn map_err_missing(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| {
        if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) {
            StoreError::NotFound(what.into())
        } else {
            map_err(e)
        }
    }
}

fn conversation_from_row(row: &Row) -> Result<Conversation, StoreError> {
    let kind: String = get(row, 1)?;
    Ok(Conversation {
        id: get(row, 0)?,
        kind: ConversationKind::parse(&kind)
            .ok_or_else(|| StoreError::Backend(format!("invalid conversation kind {kind:?}")))?,
        name: get(row, 2)?,
        created_by: get(row, 3)?,
        created_at: get(row, 4)?,
        last_seq: get(row, 5)?,
        last_activity_at: get(row, 6)?,
        members: Vec::new(),
    })
}

/// A member from [`MEMBER_COLUMNS`], with its conversation id.
fn member_from_row(row: &Row) -> Result<(String, Member), StoreError> {
    let role: String = get(row, 2)?;
    Ok((
        get(row, 0)?,
        Member {
            user_id: get(row, 1)?,
            role: parse_role(&role)?,
            joined_at: get(row, 3)?,
            last_read_seq: get(row, 4)?,
            last_delivered_seq: get(row, 5)?,
        },
    ))
}

fn parse_role(role: &str) -> Result<Role, StoreError> {
    Role::parse(role).ok_or_else(|| StoreError::Backend(format!("invalid role {role:?}")))
}

/// A message from [`MESSAGE_COLUMNS`] starting at column `at`.
fn message_at(row: &Row, at: usize) -> Result<Message, StoreError> {
    Ok(Message {
        id: get(row, at)?,
        conversation_id: get(row, at + 1)?,
        seq: get(row, at + 2)?,
        sender_id: get(row, at + 3)?,
        client_msg_id: get(row, at + 4)?,
        body: get(row, at + 5)?,
        created_at: get(row, at + 6)?,
        edited_at: get(row, at + 7)?,
        deleted_at: get(row, at + 8)?,
    })
}

fn message_from_row(row: &Row) -> Result<Message, StoreError> {
    message_at(row, 0)
}

async fn query(
    client: &impl GenericClient,
    sql: &str,
    params: &Params<'_>,
) -> Result<Vec<Row>, StoreError> {
    client.query(sql, params).await.map_err(map_err)
}

async fn query_opt(
    client: &impl GenericClient,
    sql: &str,
    params: &Params<'_>,
) -> Result<Option<Row>, StoreError> {
    client.query_opt(sql, params).await.map_err(map_err)
}

/// Writes `events` to the outbox; ids in input order.
async fn insert_events(
    client: &impl GenericClient,
    events: &[OutboxEvent],
) -> Result<Vec<i64>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let conversations: Vec<Option<&str>> = events
        .iter()
        .map(|e| e.conversation_id.as_deref())
        .collect();
    let messages: Vec<Option<&str>> = events.iter().map(|e| e.message_id.as_deref()).collect();
    let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
    let at = now();
    // Ids come from the sequence in the order of `ord`, so sorted ids match
    // the input order.
    let rows = query(
        client,
        "INSERT INTO outbox (kind, conversation_id, message_id, payload, created_at) \
         SELECT kind, conversation_id, message_id, payload, $5 \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY \
           AS e(kind, conversation_id, message_id, payload, ord) \
         ORDER BY ord RETURNING id",
        &[&kinds, &conversations, &messages, &payloads, &at],
    )
    .await?;
    let mut ids = rows
        .iter()
        .map(|r| get::<i64>(r, 0))
        .collect::<Result<Vec<_>, _>>()?;
    ids.sort_unstable();
    Ok(ids)
}

async fn members_of(
    client: &impl GenericClient,
    conversation_id: &str,
) -> Result<Vec<Member>, StoreError> {
    query(
        client,
        &format!(
            "SELECT {MEMBER_COLUMNS} FROM conversation_members m \
             WHERE m.conversation_id = $1 ORDER BY m.joined_at, m.user_id"
        ),
        &[&conversation_id],
    )
    .await?
    .iter()
    .map(|row| member_from_row(row).map(|(_, m)| m))
    .collect()
}

/// The conversation whose `column` equals `key`, with its members.
async fn load_conversation(
    client: &impl GenericClient,
    column: &str,
    key: &str,
) -> Result<Option<Conversation>, StoreError> {
    let sql = format!("SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.{column} = $1");
    let Some(row) = query_opt(client, &sql, &[&key]).await? else {
        return Ok(None);
    };
    let mut conversation = conversation_from_row(&row)?;
    conversation.members = members_of(client, &conversation.id).await?;
    Ok(Some(conversation))
}

/// Which watermark [`PostgresStore::move_watermark`] moves.
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

/// A read-only snapshot for reads of more than one statement.
async fn snapshot<'c>(
    conn: &'c mut PooledConnection<'_, Manager>,
) -> Result<Transaction<'c>, StoreError> {
    conn.build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(map_err)
}

impl PostgresStore {
    async fn move_watermark(
        &self,
        mark: Mark,
        conversation_id: &str,
        user_id: &str,
        up_to_seq: i64,
    ) -> Result<Option<Watermark>, StoreError> {
        let column = mark.column();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(map_err)?;
        // The member row lock serialises movers of this watermark, so each
        // range is reported once.
        let Some(row) = query_opt(
            &tx,
            &format!(
                "SELECT m.{column}, c.last_seq FROM conversation_members m \
                 JOIN conversations c ON c.id = m.conversation_id \
                 WHERE m.conversation_id = $1 AND m.user_id = $2 FOR UPDATE OF m"
            ),
            &[&conversation_id, &user_id],
        )
        .await?
        else {
            return Ok(None);
        };
        let (old, last_seq): (i64, i64) = (get(&row, 0)?, get(&row, 1)?);
        let new = old.max(up_to_seq.min(last_seq));
        if new == old {
            return Ok(Some(Watermark {
                up_to_seq: old,
                advanced: false,
                senders: Vec::new(),
            }));
        }
        tx.execute(
            &format!(
                "UPDATE conversation_members SET {column} = $3 \
                 WHERE conversation_id = $1 AND user_id = $2"
            ),
            &[&conversation_id, &user_id, &new],
        )
        .await
        .map_err(map_err)?;
        let senders = query(
            &tx,
            "SELECT DISTINCT sender_id FROM messages \
             WHERE conversation_id = $1 AND seq > $2 AND seq <= $3 AND sender_id <> $4 \
             ORDER BY sender_id",
            &[&conversation_id, &old, &new, &user_id],
        )
        .await?
        .iter()
        .map(|r| get(r, 0))
        .collect::<Result<Vec<String>, _>>()?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(Watermark {
            up_to_seq: new,
            advanced: true,
            senders,
        }))
    }
}

/// A conversation of the batch being persisted.
struct Seqs {
    last_seq: i64,
    last_activity_at: OffsetDateTime,
    changed: bool,
}

#[async_trait]
impl ChatStore for PostgresStore {
    async fn create_conversation(
        &self,
        c: NewConversation,
        events: Vec<OutboxEvent>,
    ) -> Result<Conversation, StoreError> {
        let created_at = truncate_to_micros(c.created_at);
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(map_err)?;
        tx.execute(
            "INSERT INTO conversations (id, kind, name, direct_key, created_by, created_at, \
             last_seq, last_activity_at) VALUES ($1, $2, $3, $4, $5, $6, 0, $6)",
            &[
                &c.id,
                &c.kind.as_str(),
                &c.name,
                &c.direct_key,
                &c.created_by,
                &created_at,
            ],
        )
        .await
        .map_err(map_err_missing("user"))?;
        let users: Vec<&str> = c.members.iter().map(|(u, _)| u.as_str()).collect();
        let roles: Vec<&str> = c.members.iter().map(|(_, r)| r.as_str()).collect();
        tx.execute(
            "INSERT INTO conversation_members (conversation_id, user_id, role, joined_at) \
             SELECT $1, user_id, role, $4 \
             FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS u(user_id, role, ord) \
             ORDER BY ord ON CONFLICT DO NOTHING",
            &[&c.id, &users, &roles, &created_at],
        )
        .await
        .map_err(map_err_missing("user"))?;
        insert_events(&tx, &events).await?;
        let conversation = load_conversation(&tx, "id", &c.id)
            .await?
            .ok_or_else(|| StoreError::Backend("created conversation vanished".into()))?;
        tx.commit().await.map_err(map_err)?;
        Ok(conversation)
    }

    async fn conversation(&self, id: &str) -> Result<Option<Conversation>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = snapshot(&mut conn).await?;
        let conversation = load_conversation(&tx, "id", id).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(conversation)
    }

    async fn direct_conversation(
        &self,
        direct_key: &str,
    ) -> Result<Option<Conversation>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = snapshot(&mut conn).await?;
        let conversation = load_conversation(&tx, "direct_key", direct_key).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(conversation)
    }

    async fn conversations_of(
        &self,
        user_id: &str,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = snapshot(&mut conn).await?;
        {
            let rows = query(
                &tx,
                &format!(
                    "SELECT {CONVERSATION_COLUMNS}, me.last_read_seq, {MESSAGE_COLUMNS} \
                     FROM conversation_members me \
                     JOIN conversations c ON c.id = me.conversation_id \
                     LEFT JOIN messages msg ON msg.conversation_id = c.id AND msg.seq = c.last_seq \
                     WHERE me.user_id = $1 \
                     ORDER BY c.last_activity_at DESC, c.id DESC"
                ),
                &[&user_id],
            )
            .await?;
            let mut summaries = Vec::with_capacity(rows.len());
            for row in &rows {
                let conversation = conversation_from_row(row)?;
                let last_read: i64 = get(row, 7)?;
                let message_id: Option<String> = get(row, 8)?;
                let last_message = match message_id {
                    Some(_) => Some(message_at(row, 8)?),
                    None => None,
                };
                summaries.push(ConversationSummary {
                    unread_count: (conversation.last_seq - last_read).max(0),
                    conversation,
                    last_message,
                });
            }
            let rows = query(
                &tx,
                &format!(
                    "SELECT {MEMBER_COLUMNS} FROM conversation_members me \
                     JOIN conversation_members m ON m.conversation_id = me.conversation_id \
                     WHERE me.user_id = $1 ORDER BY m.conversation_id, m.joined_at, m.user_id"
                ),
                &[&user_id],
            )
            .await?;
            let mut members: HashMap<String, Vec<Member>> = HashMap::new();
            for row in &rows {
                let (conversation_id, member) = member_from_row(row)?;
                members.entry(conversation_id).or_default().push(member);
            }
            for s in &mut summaries {
                s.conversation.members = members.remove(&s.conversation.id).unwrap_or_default();
            }
            tx.commit().await.map_err(map_err)?;
            Ok(summaries)
        }
    }

    async fn conversation_ids_of(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.conn().await?;
        query(
            &*conn,
            "SELECT conversation_id FROM conversation_members WHERE user_id = $1 \
             ORDER BY conversation_id",
            &[&user_id],
        )
        .await?
        .iter()
        .map(|r| get(r, 0))
        .collect()
    }

    async fn member(
        &self,
        conversation_id: &str,
        user_id: &str,
    ) -> Result<Option<Member>, StoreError> {
        let conn = self.conn().await?;
        query_opt(
            &*conn,
            &format!(
                "SELECT {MEMBER_COLUMNS} FROM conversation_members m \
                 WHERE m.conversation_id = $1 AND m.user_id = $2"
            ),
            &[&conversation_id, &user_id],
        )
        .await?
        .map(|row| member_from_row(&row).map(|(_, m)| m))
        .transpose()
    }

    async fn add_members(
        &self,
        conversation_id: &str,
        members: Vec<(String, Role)>,
        at: OffsetDateTime,
        events: Vec<OutboxEvent>,
    ) -> Result<Vec<String>, StoreError> {
        let at = truncate_to_micros(at);
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(map_err)?;
        // Locked, so no message slips in between reading last_seq and the
        // new members' watermarks.
        let Some(row) = query_opt(
            &tx,
            "SELECT last_seq FROM conversations WHERE id = $1 FOR UPDATE",
            &[&conversation_id],
        )
        .await?
        else {
            return Err(StoreError::NotFound("conversation".into()));
        };
        let last_seq: i64 = get(&row, 0)?;
        let users: Vec<&str> = members.iter().map(|(u, _)| u.as_str()).collect();
        let roles: Vec<&str> = members.iter().map(|(_, r)| r.as_str()).collect();
        let rows = tx
            .query(
                "INSERT INTO conversation_members (conversation_id, user_id, role, joined_at, \
                 last_read_seq, last_delivered_seq) \
                 SELECT $1, user_id, role, $4, $5, $5 \
                 FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS u(user_id, role, ord) \
                 ORDER BY ord ON CONFLICT DO NOTHING RETURNING user_id",
                &[&conversation_id, &users, &roles, &at, &last_seq],
            )
            .await
            .map_err(map_err_missing("user"))?;
        let inserted: HashSet<String> = rows.iter().map(|r| get(r, 0)).collect::<Result<_, _>>()?;
        // In input order, each once.
        let mut added = Vec::with_capacity(inserted.len());
        for (user_id, _) in members {
            if inserted.contains(&user_id) && !added.contains(&user_id) {
                added.push(user_id);
            }
        }
        insert_events(&tx, &events).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(added)
    }

    async fn remove_member(
        &self,
        conversation_id: &str,
        user_id: &str,
        events: Vec<OutboxEvent>,
    ) -> Result<Option<RemovedMember>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(map_err)?;
        // Serialises membership changes (and message writes) of the
        // conversation, so two owners leaving at once still leave one.
        tx.execute(
            "SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE",
            &[&conversation_id],
        )
        .await
        .map_err(map_err)?;
        let Some(row) = query_opt(
            &tx,
            "DELETE FROM conversation_members WHERE conversation_id = $1 AND user_id = $2 \
             RETURNING role",
            &[&conversation_id, &user_id],
        )
        .await?
        else {
            return Ok(None);
        };
        let role = parse_role(&get::<String>(&row, 0)?)?;
        let mut new_owner = None;
        if role == Role::Owner {
            let owners_left = query_opt(
                &tx,
                "SELECT 1 FROM conversation_members \
                 WHERE conversation_id = $1 AND role = 'owner' LIMIT 1",
                &[&conversation_id],
            )
            .await?
            .is_some();
            if !owners_left {
                new_owner = query_opt(
                    &tx,
                    "UPDATE conversation_members SET role = 'owner' \
                     WHERE conversation_id = $1 AND user_id = ( \
                       SELECT user_id FROM conversation_members WHERE conversation_id = $1 \
                       ORDER BY CASE role WHEN 'admin' THEN 0 ELSE 1 END, joined_at, user_id \
                       LIMIT 1) \
                     RETURNING user_id",
                    &[&conversation_id],
                )
                .await?
                .map(|r| get(&r, 0))
                .transpose()?;
            }
        }
        insert_events(&tx, &events).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(RemovedMember { role, new_owner }))
    }

    async fn set_role(
        &self,
        conversation_id: &str,
        user_id: &str,
        role: Role,
    ) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let n = conn
            .execute(
                "UPDATE conversation_members SET role = $3 \
                 WHERE conversation_id = $1 AND user_id = $2",
                &[&conversation_id, &user_id, &role.as_str()],
            )
            .await
            .map_err(map_err)?;
        Ok(n > 0)
    }

    async fn rename_conversation(
        &self,
        conversation_id: &str,
        name: &str,
        events: Vec<OutboxEvent>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(map_err)?;
        let n = tx
            .execute(
                "UPDATE conversations SET name = $2 WHERE id = $1",
                &[&conversation_id, &name],
            )
            .await
            .map_err(map_err)?;
        if n == 0 {
            return Err(StoreError::NotFound("conversation".into()));
        }
        insert_events(&tx, &events).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn persist_messages(&self, batch: Vec<NewMessage>) -> Result<Vec<Persisted>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(map_err)?;

        // 1. Lock the batch's conversations, in id order.
        let mut conversation_ids: Vec<&str> =
            batch.iter().map(|m| m.conversation_id.as_str()).collect();
        conversation_ids.sort_unstable();
        conversation_ids.dedup();
        let locked = tx
            .query_typed(
                "SELECT id, last_seq, last_activity_at FROM conversations \
                 WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                &[(&conversation_ids, Type::TEXT_ARRAY)],
            )
            .await
            .map_err(map_err)?;
        let mut conversations: HashMap<String, Seqs> = HashMap::with_capacity(locked.len());
        for row in &locked {
            conversations.insert(
                get(row, 0)?,
                Seqs {
                    last_seq: get(row, 1)?,
                    last_activity_at: get(row, 2)?,
                    changed: false,
                },
            );
        }

        // 2. Under the locks: who is a member, and what exists already.
        let senders: Vec<&str> = batch.iter().map(|m| m.sender_id.as_str()).collect();
        let in_conversations: Vec<&str> =
            batch.iter().map(|m| m.conversation_id.as_str()).collect();
        let ids: Vec<&str> = batch.iter().map(|m| m.id.as_str()).collect();
        let keyed: Vec<&NewMessage> = batch.iter().filter(|m| m.client_msg_id.is_some()).collect();
        let key_senders: Vec<&str> = keyed.iter().map(|m| m.sender_id.as_str()).collect();
        let keys: Vec<&str> = keyed
            .iter()
            .filter_map(|m| m.client_msg_id.as_deref())
            .collect();
        let members_sql = "SELECT conversation_id, user_id FROM conversation_members \
             WHERE (conversation_id, user_id) IN ( \
               SELECT * FROM unnest($1::text[], $2::text[]))";
        // Two index lookups (primary key; the (sender, client_msg_id) key)
        // joined by UNION: an OR across the two lets the planner fall back
        // to scanning the whole table on every batch.
        let existing_sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages msg WHERE msg.id = ANY($1) \
             UNION \
             SELECT {MESSAGE_COLUMNS} FROM messages msg \
               JOIN unnest($2::text[], $3::text[]) AS k(sender_id, client_msg_id) \
               ON msg.sender_id = k.sender_id AND msg.client_msg_id = k.client_msg_id"
        );
        let member_params: &Typed<'_> = &[
            (&in_conversations, Type::TEXT_ARRAY),
            (&senders, Type::TEXT_ARRAY),
        ];
        let existing_params: &Typed<'_> = &[
            (&ids, Type::TEXT_ARRAY),
            (&key_senders, Type::TEXT_ARRAY),
            (&keys, Type::TEXT_ARRAY),
        ];
        let (member_rows, existing_rows) = tokio::try_join!(
            tx.query_typed(members_sql, member_params),
            tx.query_typed(&existing_sql, existing_params),
        )
        .map_err(map_err)?;
        let mut membership: HashSet<(String, String)> = HashSet::new();
        for row in &member_rows {
            membership.insert((get(row, 0)?, get(row, 1)?));
        }
        let mut by_id: HashMap<String, Message> = HashMap::new();
        let mut by_key: HashMap<(String, String), Message> = HashMap::new();
        for row in &existing_rows {
            let message = message_from_row(row)?;
            if let Some(key) = &message.client_msg_id {
                by_key.insert((message.sender_id.clone(), key.clone()), message.clone());
            }
            by_id.insert(message.id.clone(), message);
        }

        // 3. Decide each message's fate and seq, in input order.
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut read_up_to: HashMap<(String, String), i64> = HashMap::new();
        for m in batch {
            let original = by_id.get(&m.id).or_else(|| {
                m.client_msg_id
                    .as_ref()
                    .and_then(|key| by_key.get(&(m.sender_id.clone(), key.clone())))
            });
            if let Some(original) = original {
                outcomes.push(Persisted::Duplicate(original.clone()));
                continue;
            }
            let member_key = (m.conversation_id.clone(), m.sender_id.clone());
            let state = match conversations.get_mut(&m.conversation_id) {
                Some(state) if membership.contains(&member_key) => state,
                _ => {
                    outcomes.push(Persisted::NotMember);
                    continue;
                }
            };
            let created_at = truncate_to_micros(m.created_at);
            state.last_seq += 1;
            state.last_activity_at = state.last_activity_at.max(created_at);
            state.changed = true;
            let message = Message {
                id: m.id,
                conversation_id: m.conversation_id,
                seq: state.last_seq,
                sender_id: m.sender_id,
                client_msg_id: m.client_msg_id,
                body: m.body,
                created_at,
                edited_at: None,
                deleted_at: None,
            };
            read_up_to.insert(member_key, message.seq);
            // Later occurrences in this batch are duplicates of this one.
            if let Some(key) = &message.client_msg_id {
                by_key.insert((message.sender_id.clone(), key.clone()), message.clone());
            }
            by_id.insert(message.id.clone(), message.clone());
            outcomes.push(Persisted::Created {
                message,
                outbox_id: 0,
            });
        }

        // 4. Write everything, one statement per table, pipelined.
        let created: Vec<&Message> = outcomes
            .iter()
            .filter_map(|o| match o {
                Persisted::Created { message, .. } => Some(message),
                _ => None,
            })
            .collect();
        if created.is_empty() {
            tx.commit().await.map_err(map_err)?;
            return Ok(outcomes);
        }
        let m_ids: Vec<&str> = created.iter().map(|m| m.id.as_str()).collect();
        let m_conversations: Vec<&str> =
            created.iter().map(|m| m.conversation_id.as_str()).collect();
        let m_seqs: Vec<i64> = created.iter().map(|m| m.seq).collect();
        let m_senders: Vec<&str> = created.iter().map(|m| m.sender_id.as_str()).collect();
        let m_keys: Vec<Option<&str>> =
            created.iter().map(|m| m.client_msg_id.as_deref()).collect();
        let m_bodies: Vec<&str> = created.iter().map(|m| m.body.as_str()).collect();
        let m_times: Vec<OffsetDateTime> = created.iter().map(|m| m.created_at).collect();
        let changed: Vec<(&String, &Seqs)> =
            conversations.iter().filter(|(_, s)| s.changed).collect();
        let c_ids: Vec<&str> = changed.iter().map(|(id, _)| id.as_str()).collect();
        let c_seqs: Vec<i64> = changed.iter().map(|(_, s)| s.last_seq).collect();
        let c_times: Vec<OffsetDateTime> =
            changed.iter().map(|(_, s)| s.last_activity_at).collect();
        let r_conversations: Vec<&str> = read_up_to.keys().map(|(c, _)| c.as_str()).collect();
        let r_users: Vec<&str> = read_up_to.keys().map(|(_, u)| u.as_str()).collect();
        let r_seqs: Vec<i64> = read_up_to.values().copied().collect();
        let outbox_at = now();
        let message_params: &Typed<'_> = &[
            (&m_ids, Type::TEXT_ARRAY),
            (&m_conversations, Type::TEXT_ARRAY),
            (&m_seqs, Type::INT8_ARRAY),
            (&m_senders, Type::TEXT_ARRAY),
            (&m_keys, Type::TEXT_ARRAY),
            (&m_bodies, Type::TEXT_ARRAY),
            (&m_times, Type::TIMESTAMPTZ_ARRAY),
        ];
        let outbox_params: &Typed<'_> = &[
            (&MESSAGE_CREATED, Type::TEXT),
            (&m_conversations, Type::TEXT_ARRAY),
            (&m_ids, Type::TEXT_ARRAY),
            (&outbox_at, Type::TIMESTAMPTZ),
        ];
        let conversation_params: &Typed<'_> = &[
            (&c_ids, Type::TEXT_ARRAY),
            (&c_seqs, Type::INT8_ARRAY),
            (&c_times, Type::TIMESTAMPTZ_ARRAY),
        ];
        let read_params: &Typed<'_> = &[
            (&r_conversations, Type::TEXT_ARRAY),
            (&r_users, Type::TEXT_ARRAY),
            (&r_seqs, Type::INT8_ARRAY),
        ];
        let (_, outbox_rows, _, _) = tokio::try_join!(
            tx.execute_typed(
                "INSERT INTO messages (id, conversation_id, seq, sender_id, client_msg_id, body, \
                 created_at) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], \
                   $5::text[], $6::text[], $7::timestamptz[])",
                message_params,
            ),
            tx.query_typed(
                "INSERT INTO outbox (kind, conversation_id, message_id, payload, created_at) \
                 SELECT $1, conversation_id, message_id, '{}', $4 \
                 FROM unnest($2::text[], $3::text[]) WITH ORDINALITY \
                   AS e(conversation_id, message_id, ord) \
                 ORDER BY ord RETURNING id, message_id",
                outbox_params,
            ),
            tx.execute_typed(
                "UPDATE conversations c SET last_seq = v.last_seq, \
                 last_activity_at = GREATEST(c.last_activity_at, v.at) \
                 FROM unnest($1::text[], $2::int8[], $3::timestamptz[]) AS v(id, last_seq, at) \
                 WHERE c.id = v.id",
                conversation_params,
            ),
            tx.execute_typed(
                "UPDATE conversation_members m \
                 SET last_read_seq = GREATEST(m.last_read_seq, v.seq) \
                 FROM unnest($1::text[], $2::text[], $3::int8[]) \
                   AS v(conversation_id, user_id, seq) \
                 WHERE m.conversation_id = v.conversation_id AND m.user_id = v.user_id",
                read_params,
            ),
        )
        .map_err(map_err)?;
        let mut outbox_ids: HashMap<String, i64> = HashMap::with_capacity(outbox_rows.len());
        for row in &outbox_rows {
            outbox_ids.insert(get(row, 1)?, get(row, 0)?);
        }
        tx.commit().await.map_err(map_err)?;
        for outcome in &mut outcomes {
            if let Persisted::Created { message, outbox_id } = outcome {
                *outbox_id = outbox_ids.get(&message.id).copied().ok_or_else(|| {
                    StoreError::Backend("outbox row of a created message missing".into())
                })?;
            }
        }
        Ok(outcomes)
    }

    async fn message(&self, id: &str) -> Result<Option<Message>, StoreError> {
        let conn = self.conn().await?;
        query_opt(
            &*conn,
            &format!("SELECT {MESSAGE_COLUMNS} FROM messages msg WHERE msg.id = $1"),
            &[&id],
        )
        .await?
        .map(|r| message_from_row(&r))
        .transpose()
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
        let before = before.unwrap_or(i64::MAX);
        let (lower, order) = match after {
            Some(after) => (after, "ASC"),
            None => (i64::MIN, "DESC"),
        };
        let conn = self.conn().await?;
        let mut messages = query(
            &*conn,
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages msg \
                 WHERE msg.conversation_id = $1 AND msg.seq > $2 AND msg.seq < $3 \
                 ORDER BY msg.seq {order} LIMIT $4"
            ),
            &[&conversation_id, &lower, &before, &i64::from(limit)],
        )
        .await?
        .iter()
        .map(message_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        if after.is_none() {
            messages.reverse();
        }
        Ok(messages)
    }

    async fn edit_message(
        &self,
        id: &str,
        body: &str,
        at: OffsetDateTime,
        events: Vec<OutboxEvent>,
    ) -> Result<Option<Message>, StoreError> {
        let at = truncate_to_micros(at);
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(map_err)?;
        let Some(row) = query_opt(
            &tx,
            &format!(
                "UPDATE messages SET body = $2, edited_at = $3 \
                 WHERE id = $1 AND deleted_at IS NULL RETURNING {MESSAGE_RETURNING}"
            ),
            &[&id, &body, &at],
        )
        .await?
        else {
            return Ok(None);
        };
        let message = message_from_row(&row)?;
        insert_events(&tx, &events).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(message))
    }

    async fn delete_message(
        &self,
        id: &str,
        at: OffsetDateTime,
        events: Vec<OutboxEvent>,
    ) -> Result<Option<Message>, StoreError> {
        let at = truncate_to_micros(at);
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(map_err)?;
        let deleted = query_opt(
            &tx,
            &format!(
                "UPDATE messages SET body = '', deleted_at = $2 \
                 WHERE id = $1 AND deleted_at IS NULL RETURNING {MESSAGE_RETURNING}"
            ),
            &[&id, &at],
        )
        .await?;
        let Some(row) = deleted else {
            // Absent, or a tombstone already: nothing changes.
            return query_opt(
                &tx,
                &format!("SELECT {MESSAGE_COLUMNS} FROM messages msg WHERE msg.id = $1"),
                &[&id],
            )
            .await?
            .map(|r| message_from_row(&r))
            .transpose();
        };
        let message = message_from_row(&row)?;
        insert_events(&tx, &events).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(message))
    }

    async fn append_outbox(&self, events: Vec<OutboxEvent>) -> Result<Vec<i64>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let conn = self.conn().await?;
        insert_events(&*conn, &events).await
    }

    async fn outbox_due(
        &self,
        older_than: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = now();
        let lease_end = now + OUTBOX_LEASE;
        let conn = self.conn().await?;
        let rows = query(
            &*conn,
            "WITH due AS ( \
               SELECT id FROM outbox \
               WHERE created_at < $1 AND (claimed_until IS NULL OR claimed_until <= $2) \
               ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             UPDATE outbox o SET claimed_until = $4 FROM due WHERE o.id = due.id \
             RETURNING o.id, o.kind, o.conversation_id, o.message_id, o.payload, o.created_at",
            &[&older_than, &now, &i64::from(limit), &lease_end],
        )
        .await?;
        let mut due = rows
            .iter()
            .map(|row| {
                Ok(OutboxRow {
                    id: get(row, 0)?,
                    event: OutboxEvent {
                        kind: get(row, 1)?,
                        conversation_id: get(row, 2)?,
                        message_id: get(row, 3)?,
                        payload: get(row, 4)?,
                    },
                    created_at: get(row, 5)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        due.sort_unstable_by_key(|r| r.id);
        Ok(due)
    }

    async fn outbox_depth(&self) -> Result<i64, StoreError> {
        let conn = self.conn().await?;
        let row = query_opt(&*conn, "SELECT count(*) FROM outbox", &[]).await?;
        row.map_or(Ok(0), |r| get(&r, 0))
    }

    async fn outbox_delete(&self, ids: Vec<i64>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let conn = self.conn().await?;
        conn.execute_typed(
            "DELETE FROM outbox WHERE id = ANY($1)",
            &[(&ids, Type::INT8_ARRAY)],
        )
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn mark_read(
        &self,
        conversation_id: &str,
        user_id: &str,
        up_to_seq: i64,
    ) -> Result<Option<Watermark>, StoreError> {
        self.move_watermark(Mark::Read, conversation_id, user_id, up_to_seq)
            .await
    }

    async fn mark_delivered(
        &self,
        conversation_id: &str,
        user_id: &str,
        up_to_seq: i64,
    ) -> Result<Option<Watermark>, StoreError> {
        self.move_watermark(Mark::Delivered, conversation_id, user_id, up_to_seq)
            .await
    }

    async fn unread_of_members(
        &self,
        conversation_ids: Vec<String>,
    ) -> Result<Vec<(String, String, i64, i64)>, StoreError> {
        let conn = self.conn().await?;
        query(
            &*conn,
            "SELECT c.id, m.user_id, GREATEST(c.last_seq - m.last_read_seq, 0), c.last_seq \
             FROM conversations c JOIN conversation_members m ON m.conversation_id = c.id \
             WHERE c.id = ANY($1)",
            &[&conversation_ids],
        )
        .await?
        .iter()
        .map(|row| Ok((get(row, 0)?, get(row, 1)?, get(row, 2)?, get(row, 3)?)))
        .collect()
    }

    async fn unread(&self, user_id: &str) -> Result<Vec<Unread>, StoreError> {
        let conn = self.conn().await?;
        query(
            &*conn,
            "SELECT c.id, GREATEST(c.last_seq - m.last_read_seq, 0), c.last_seq \
             FROM conversation_members m JOIN conversations c ON c.id = m.conversation_id \
             WHERE m.user_id = $1 ORDER BY c.last_activity_at DESC, c.id DESC",
            &[&user_id],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(Unread {
                conversation_id: get(row, 0)?,
                unread_count: get(row, 1)?,
                last_seq: get(row, 2)?,
            })
        })
        .collect()
    }

    async fn add_contact(
        &self,
        user_id: &str,
        contact_id: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.add_pair(
            "INSERT INTO contacts (user_id, contact_id, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
            user_id,
            contact_id,
            at,
        )
        .await
    }

    async fn remove_contact(&self, user_id: &str, contact_id: &str) -> Result<bool, StoreError> {
        self.remove_pair(
            "DELETE FROM contacts WHERE user_id = $1 AND contact_id = $2",
            user_id,
            contact_id,
        )
        .await
    }

    async fn contacts(&self, user_id: &str) -> Result<Vec<User>, StoreError> {
        let conn = self.conn().await?;
        query(
            &*conn,
            &format!(
                "SELECT {USER_COLUMNS} FROM users WHERE id <> $1 AND id IN ( \
                   SELECT contact_id FROM contacts WHERE user_id = $1 \
                   UNION \
                   SELECT other.user_id FROM conversation_members me \
                   JOIN conversation_members other ON other.conversation_id = me.conversation_id \
                   WHERE me.user_id = $1) \
                 ORDER BY username_lower COLLATE \"C\", id"
            ),
            &[&user_id],
        )
        .await?
        .iter()
        .map(user_from_row)
        .collect()
    }

    async fn presence_audience(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.conn().await?;
        query(
            &*conn,
            "SELECT id FROM ( \
               SELECT contact_id AS id FROM contacts WHERE user_id = $1 \
               UNION \
               SELECT user_id FROM contacts WHERE contact_id = $1 \
               UNION \
               SELECT other.user_id FROM conversation_members me \
               JOIN conversation_members other ON other.conversation_id = me.conversation_id \
               WHERE me.user_id = $1) audience \
             WHERE id <> $1 ORDER BY id COLLATE \"C\"",
            &[&user_id],
        )
        .await?
        .iter()
        .map(|r| get(r, 0))
        .collect()
    }

    async fn block(
        &self,
        user_id: &str,
        blocked_id: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.add_pair(
            "INSERT INTO blocks (user_id, blocked_id, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
            user_id,
            blocked_id,
            at,
        )
        .await
    }

    async fn unblock(&self, user_id: &str, blocked_id: &str) -> Result<bool, StoreError> {
        self.remove_pair(
            "DELETE FROM blocks WHERE user_id = $1 AND blocked_id = $2",
            user_id,
            blocked_id,
        )
        .await
    }

    async fn is_blocked(&self, user_id: &str, other_id: &str) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        Ok(query_opt(
            &*conn,
            "SELECT 1 FROM blocks WHERE user_id = $1 AND blocked_id = $2",
            &[&user_id, &other_id],
        )
        .await?
        .is_some())
    }

    async fn search_users(&self, query_text: &str, limit: u32) -> Result<Vec<User>, StoreError> {
        let needle = fold(query_text.trim());
        if needle.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let conn = self.conn().await?;
        // strpos, not LIKE: no character of the query is a wildcard.
        query(
            &*conn,
            &format!(
                "SELECT {USER_COLUMNS} FROM users \
                 WHERE strpos(username_lower, $1) > 0 OR strpos(display_name_lower, $1) > 0 \
                 ORDER BY username_lower COLLATE \"C\", id LIMIT $2"
            ),
            &[&needle, &i64::from(limit)],
        )
        .await?
        .iter()
        .map(user_from_row)
        .collect()
    }

    async fn set_last_seen(&self, user_id: &str, at: OffsetDateTime) -> Result<(), StoreError> {
        let at = truncate_to_micros(at);
        let conn = self.conn().await?;
        conn.execute(
            "UPDATE users SET last_seen_at = $2 WHERE id = $1",
            &[&user_id, &at],
        )
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn last_seen(
        &self,
        user_ids: Vec<String>,
    ) -> Result<Vec<(String, Option<OffsetDateTime>)>, StoreError> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let conn = self.conn().await?;
        let rows = query(
            &*conn,
            "SELECT id, last_seen_at FROM users WHERE id = ANY($1)",
            &[&user_ids],
        )
        .await?;
        let mut seen: HashMap<String, Option<OffsetDateTime>> = HashMap::new();
        for row in &rows {
            seen.insert(get(row, 0)?, get(row, 1)?);
        }
        Ok(user_ids
            .into_iter()
            .map(|id| {
                let at = seen.get(&id).copied().flatten();
                (id, at)
            })
            .collect())
    }

    async fn search_messages(
        &self,
        user_id: &str,
        query_text: &str,
        conversation_id: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let words = search_words(query_text);
        if words.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        // plainto_tsquery reads plain text: no operator of the query syntax
        // is honoured, and every word must match.
        let text = words.join(" ");
        let conn = self.conn().await?;
        query(
            &*conn,
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages msg \
                 JOIN conversation_members cm \
                   ON cm.conversation_id = msg.conversation_id AND cm.user_id = $2, \
                 plainto_tsquery('simple', $1) AS q \
                 WHERE msg.search @@ q AND msg.deleted_at IS NULL \
                   AND ($3::text IS NULL OR msg.conversation_id = $3) \
                 ORDER BY ts_rank(msg.search, q) DESC, msg.created_at DESC, msg.id DESC \
                 LIMIT $4 OFFSET $5"
            ),
            &[
                &text,
                &user_id,
                &conversation_id,
                &i64::from(limit),
                &i64::from(offset),
            ],
        )
        .await?
        .iter()
        .map(message_from_row)
        .collect()
    }

    async fn delete_messages_before(
        &self,
        cutoff: OffsetDateTime,
        limit: u32,
    ) -> Result<u64, StoreError> {
        if limit == 0 {
            return Ok(0);
        }
        let conn = self.conn().await?;
        // A bounded batch; rows another transaction holds are left for the
        // next round instead of waited for.
        conn.execute(
            "DELETE FROM messages WHERE id IN ( \
               SELECT id FROM messages WHERE created_at < $1 \
               ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
            &[&cutoff, &i64::from(limit)],
        )
        .await
        .map_err(map_err)
    }
}

impl PostgresStore {
    /// Inserts a (user, other user, time) row (contacts, blocks);
    /// idempotent, `NotFound` when either user does not exist.
    async fn add_pair(
        &self,
        sql: &str,
        a: &str,
        b: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let at = truncate_to_micros(at);
        let conn = self.conn().await?;
        conn.execute(sql, &[&a, &b, &at])
            .await
            .map_err(map_err_missing("user"))?;
        Ok(())
    }

    /// Deletes a (user, other user) row; true when there was one.
    async fn remove_pair(&self, sql: &str, a: &str, b: &str) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let n = conn.execute(sql, &[&a, &b]).await.map_err(map_err)?;
        Ok(n > 0)
    }
}
