//! The chat storage suite ([`ChatStore`]), run against SQLite (a temporary
//! file) and PostgreSQL (a fresh database per test).
//!
//! PostgreSQL comes from `STOMPLINE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); when it cannot be reached
//! the `pg_*` tests print a notice and pass, unless
//! `STOMPLINE_REQUIRE_SERVICES=1`, which makes them fail. Select them with
//! `cargo test --test chat_store pg_`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use stompline::store::{
    self, Conversation, ConversationKind, Message, NewConversation, NewMessage, NewUser,
    OutboxEvent, Persisted, RemovedMember, Role, Store, StoreError, User, Watermark,
    MESSAGE_CREATED,
};
use time::{Duration, OffsetDateTime};

#[path = "support/backends.rs"]
mod backends;
#[path = "support/pg.rs"]
mod pg;

// ---------------------------------------------------------------------------
// Harness

on_both_backends! {
    conversations_round_trip => sqlite_conversations_round_trip, pg_conversations_round_trip;
    direct_conversations_are_unique_per_pair => sqlite_direct_unique, pg_direct_unique;
    conversation_list_orders_by_activity => sqlite_conversation_list, pg_conversation_list;
    persisting_assigns_gapless_seqs => sqlite_persist_seqs, pg_persist_seqs;
    persisting_is_idempotent => sqlite_persist_idempotent, pg_persist_idempotent;
    persisting_refuses_non_members => sqlite_persist_non_members, pg_persist_non_members;
    concurrent_persisting_is_gapless => sqlite_concurrent_persist, pg_concurrent_persist;
    unread_counts_are_exact => sqlite_unread_exact, pg_unread_exact;
    history_cursors => sqlite_history_cursors, pg_history_cursors;
    edits_and_tombstones => sqlite_edits_and_tombstones, pg_edits_and_tombstones;
    watermarks_are_monotonic_and_clamped => sqlite_watermarks, pg_watermarks;
    concurrent_marks_report_each_range_once => sqlite_concurrent_marks, pg_concurrent_marks;
    concurrent_marks_tile_the_watermark => sqlite_concurrent_marks_tile, pg_concurrent_marks_tile;
    adding_members => sqlite_adding_members, pg_adding_members;
    removing_members_hands_ownership_on => sqlite_removing_members, pg_removing_members;
    roles_and_renames => sqlite_roles_and_renames, pg_roles_and_renames;
    outbox_rows_follow_their_change => sqlite_outbox_atomic, pg_outbox_atomic;
    outbox_due_claims_and_delete => sqlite_outbox_due, pg_outbox_due;
    concurrent_sweepers_take_disjoint_rows => sqlite_outbox_sweepers, pg_outbox_sweepers;
    search_is_scoped_ranked_and_in_step => sqlite_search_messages, pg_search_messages;
    search_input_is_plain_words => sqlite_search_plain_words, pg_search_plain_words;
    search_sees_changes_made_before_indexing => sqlite_search_before_indexing, pg_search_before_indexing;
    user_search_ignores_case => sqlite_search_users, pg_search_users;
    contacts_blocks_and_presence_audience => sqlite_contacts, pg_contacts;
    last_seen_round_trip => sqlite_last_seen, pg_last_seen;
    retention_deletes_in_bounded_batches => sqlite_retention, pg_retention;
}

// ---------------------------------------------------------------------------
// Fixtures

async fn user(store: &dyn Store, username: &str, display_name: &str) -> User {
    store
        .create_user(NewUser {
            id: store::new_id(),
            username: username.to_string(),
            display_name: display_name.to_string(),
            email: None,
            phone: None,
            password_hash: None,
            created_at: store::now(),
        })
        .await
        .expect("create user")
}

async fn users(store: &dyn Store, names: &[&str]) -> Vec<User> {
    let mut out = Vec::new();
    for name in names {
        out.push(user(store, name, &format!("{name} display")).await);
    }
    out
}

fn event(kind: &str, conversation_id: &str) -> OutboxEvent {
    OutboxEvent {
        kind: kind.to_string(),
        conversation_id: Some(conversation_id.to_string()),
        message_id: None,
        payload: format!(r#"{{"kind":"{kind}"}}"#),
    }
}

fn group_of(name: &str, owner: &User, others: &[&User], at: OffsetDateTime) -> NewConversation {
    let mut members = vec![(owner.id.clone(), Role::Owner)];
    members.extend(others.iter().map(|u| (u.id.clone(), Role::Member)));
    NewConversation {
        id: store::new_id(),
        kind: ConversationKind::Group,
        name: Some(name.to_string()),
        created_by: owner.id.clone(),
        created_at: at,
        direct_key: None,
        members,
    }
}

fn direct_key(a: &User, b: &User) -> String {
    let mut ids = [a.id.as_str(), b.id.as_str()];
    ids.sort_unstable();
    ids.join(":")
}

fn direct_of(a: &User, b: &User) -> NewConversation {
    NewConversation {
        id: store::new_id(),
        kind: ConversationKind::Direct,
        name: None,
        created_by: a.id.clone(),
        created_at: store::now(),
        direct_key: Some(direct_key(a, b)),
        members: vec![(a.id.clone(), Role::Owner), (b.id.clone(), Role::Member)],
    }
}

async fn group(store: &dyn Store, owner: &User, others: &[&User]) -> Conversation {
    store
        .create_conversation(group_of("group", owner, others, store::now()), vec![])
        .await
        .expect("create group")
}

fn msg(conversation: &Conversation, sender: &User, body: &str) -> NewMessage {
    NewMessage {
        id: store::new_id(),
        conversation_id: conversation.id.clone(),
        sender_id: sender.id.clone(),
        client_msg_id: None,
        body: body.to_string(),
        created_at: store::now(),
    }
}

fn keyed(conversation: &Conversation, sender: &User, body: &str, key: &str) -> NewMessage {
    NewMessage {
        client_msg_id: Some(key.to_string()),
        ..msg(conversation, sender, body)
    }
}

fn created(outcome: &Persisted) -> &Message {
    match outcome {
        Persisted::Created { message, .. } => message,
        other => panic!("expected Created, got {other:?}"),
    }
}

/// Persists one message and returns it.
async fn send(
    store: &dyn Store,
    conversation: &Conversation,
    sender: &User,
    body: &str,
) -> Message {
    let outcomes = store
        .persist_messages(vec![msg(conversation, sender, body)])
        .await
        .expect("persist");
    created(&outcomes[0]).clone()
}

/// Kinds of the outbox rows not taken yet, oldest first; takes them (rows
/// handed out stay claimed for a while).
async fn take_outbox(store: &dyn Store) -> Vec<String> {
    let rows = store
        .outbox_due(store::now() + Duration::hours(1), 1000)
        .await
        .expect("outbox_due");
    rows.into_iter().map(|r| r.event.kind).collect()
}

fn seqs(messages: &[Message]) -> Vec<i64> {
    messages.iter().map(|m| m.seq).collect()
}

fn bodies(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.body.as_str()).collect()
}

async fn unread_of(store: &dyn Store, user: &User, conversation: &Conversation) -> i64 {
    store
        .unread(&user.id)
        .await
        .expect("unread")
        .into_iter()
        .find(|u| u.conversation_id == conversation.id)
        .expect("conversation in unread list")
        .unread_count
}

// ---------------------------------------------------------------------------
// Conversations

async fn conversations_round_trip(store: Arc<dyn Store>) {
    let u = users(&*store, &["ann", "bob", "cat"]).await;
    let at = store::now();
    let new = group_of("Friends", &u[0], &[&u[2], &u[1]], at);
    let conversation = store
        .create_conversation(new.clone(), vec![event("conversation.created", &new.id)])
        .await
        .expect("create");
    assert_eq!(conversation.id, new.id);
    assert_eq!(conversation.kind, ConversationKind::Group);
    assert_eq!(conversation.name.as_deref(), Some("Friends"));
    assert_eq!(conversation.created_by, u[0].id);
    assert_eq!(conversation.created_at, at);
    assert_eq!(conversation.last_activity_at, at);
    assert_eq!(conversation.last_seq, 0);
    // Same join time: ordered by user id.
    let mut expected: Vec<_> = vec![&u[0], &u[1], &u[2]];
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    let member_ids: Vec<_> = conversation.members.iter().map(|m| &m.user_id).collect();
    assert_eq!(
        member_ids,
        expected.iter().map(|u| &u.id).collect::<Vec<_>>()
    );
    let owner = conversation
        .members
        .iter()
        .find(|m| m.user_id == u[0].id)
        .unwrap();
    assert_eq!(owner.role, Role::Owner);
    assert_eq!((owner.last_read_seq, owner.last_delivered_seq), (0, 0));
    assert_eq!(owner.joined_at, at);

    assert_eq!(
        store.conversation(&new.id).await.unwrap(),
        Some(conversation.clone())
    );
    assert_eq!(store.conversation("nope").await.unwrap(), None);
    assert_eq!(
        store
            .member(&new.id, &u[1].id)
            .await
            .unwrap()
            .map(|m| m.role),
        Some(Role::Member)
    );
    assert_eq!(store.member(&new.id, "nobody").await.unwrap(), None);
    assert_eq!(
        store.conversation_ids_of(&u[2].id).await.unwrap(),
        vec![new.id.clone()]
    );
    assert_eq!(take_outbox(&*store).await, vec!["conversation.created"]);

    // A creator or member that does not exist.
    let ghost = User {
        id: "ghost".into(),
        ..u[0].clone()
    };
    let result = store
        .create_conversation(group_of("x", &ghost, &[], at), vec![])
        .await;
    assert!(matches!(result, Err(StoreError::NotFound(_))), "{result:?}");
    let result = store
        .create_conversation(group_of("x", &u[0], &[&ghost], at), vec![])
        .await;
    assert!(matches!(result, Err(StoreError::NotFound(_))), "{result:?}");
    assert_eq!(store.conversation_ids_of(&u[0].id).await.unwrap().len(), 1);
}

async fn direct_conversations_are_unique_per_pair(store: Arc<dyn Store>) {
    let u = users(&*store, &["ann", "bob"]).await;
    let first = store
        .create_conversation(direct_of(&u[0], &u[1]), vec![])
        .await
        .expect("create direct");
    assert_eq!(first.kind, ConversationKind::Direct);
    assert_eq!(first.name, None);
    let again = store
        .create_conversation(
            direct_of(&u[1], &u[0]),
            vec![event("conversation.created", "x")],
        )
        .await;
    match again {
        Err(StoreError::Conflict { field }) => assert_eq!(field, "direct_key"),
        other => panic!("expected a direct_key conflict, got {other:?}"),
    }
    assert_eq!(
        store
            .direct_conversation(&direct_key(&u[0], &u[1]))
            .await
            .unwrap(),
        Some(first)
    );
    assert_eq!(store.direct_conversation("a:b").await.unwrap(), None);
    // The refused create wrote no event.
    assert!(take_outbox(&*store).await.is_empty());
}

async fn conversation_list_orders_by_activity(store: Arc<dyn Store>) {
    let u = users(&*store, &["ann", "bob"]).await;
    let t0 = store::now() - Duration::minutes(10);
    let older = store
        .create_conversation(group_of("older", &u[0], &[&u[1]], t0), vec![])
        .await
        .unwrap();
    let newer = store
        .create_conversation(
            group_of("newer", &u[0], &[&u[1]], t0 + Duration::minutes(1)),
            vec![],
        )
        .await
        .unwrap();
    let list = store.conversations_of(&u[1].id).await.unwrap();
    let names: Vec<_> = list
        .iter()
        .map(|s| s.conversation.name.as_deref().unwrap())
        .collect();
    assert_eq!(names, ["newer", "older"]);
    assert!(list
        .iter()
        .all(|s| s.unread_count == 0 && s.last_message.is_none()));
    assert_eq!(
        list[0].conversation,
        store.conversation(&newer.id).await.unwrap().unwrap()
    );

    // A message moves the older one to the top, with unread and last message.
    send(&*store, &older, &u[0], "one").await;
    let last = send(&*store, &older, &u[0], "two").await;
    let list = store.conversations_of(&u[1].id).await.unwrap();
    assert_eq!(list[0].conversation.id, older.id);
    assert_eq!(list[0].conversation.last_seq, 2);
    assert_eq!(list[0].conversation.last_activity_at, last.created_at);
    assert_eq!(list[0].unread_count, 2);
    assert_eq!(list[0].last_message.as_ref(), Some(&last));
    assert_eq!(list[0].conversation.members.len(), 2);
    assert_eq!(list[1].conversation.id, newer.id);
    // The sender has read their own messages.
    let mine = store.conversations_of(&u[0].id).await.unwrap();
    assert_eq!(mine[0].unread_count, 0);

    // A deleted newest message is still the last message, as a tombstone.
    store
        .delete_message(&last.id, store::now(), vec![])
        .await
        .unwrap();
    let list = store.conversations_of(&u[1].id).await.unwrap();
    let tombstone = list[0].last_message.as_ref().unwrap();
    assert_eq!(tombstone.id, last.id);
    assert!(tombstone.deleted_at.is_some() && tombstone.body.is_empty());

    assert!(store.conversations_of("nobody").await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------
// Persisting

async fn persisting_assigns_gapless_seqs(store: Arc<dyn Store>) {
    let u = users(&*store, &["ann", "bob"]).await;
    let a = group(&*store, &u[0], &[&u[1]]).await;
    let b = group(&*store, &u[1], &[&u[0]]).await;
    let batch = vec![
        msg(&a, &u[0], "a1"),
        msg(&b, &u[1], "b1"),
        msg(&a, &u[1], "a2"),
        msg(&a, &u[0], "a3"),
    ];
    let input = batch.clone();
    let outcomes = store.persist_messages(batch).await.expect("persist");
    assert_eq!(outcomes.len(), 4);
    let got: Vec<_> = outcomes.iter().map(created).collect();
    assert_eq!(
        got.iter()
            .map(|m| (m.conversation_id.clone(), m.seq))
            .collect::<Vec<_>>(),
        vec![
            (a.id.clone(), 1),
            (b.id.clone(), 1),
            (a.id.clone(), 2),
            (a.id.clone(), 3)
        ]
    );
    for (m, new) in got.iter().zip(&input) {
        assert_eq!(m.id, new.id);
        assert_eq!(m.body, new.body);
        assert_eq!(m.sender_id, new.sender_id);
        assert_eq!(m.created_at, new.created_at);
        assert_eq!((m.edited_at, m.deleted_at), (None, None));
        // What was returned is what is stored.
        assert_eq!(store.message(&m.id).await.unwrap().as_ref(), Some(*m));
    }

    // One message.created row per message, distinct and increasing.
    let outbox_ids: Vec<i64> = outcomes
        .iter()
        .map(|o| match o {
            Persisted::Created { outbox_id, .. } => *outbox_id,
            _ => unreachable!(),
        })
        .collect();
    assert!(outbox_ids.windows(2).all(|w| w[0] < w[1]), "{outbox_ids:?}");
    let rows = store
        .outbox_due(store::now() + Duration::hours(1), 100)
        .await
        .unwrap();
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), outbox_ids);
    for (row, m) in rows.iter().zip(&got) {
        assert_eq!(row.event.kind, MESSAGE_CREATED);
        assert_eq!(
            row.event.conversation_id.as_deref(),
            Some(m.conversation_id.as_str())
        );
        assert_eq!(row.event.message_id.as_deref(), Some(m.id.as_str()));
    }

    let a_now = store.conversation(&a.id).await.unwrap().unwrap();
    assert_eq!(a_now.last_seq, 3);
    // Sender watermarks: ann read a3 (her newest), bob read a2.
    let member = |c: &Conversation, u: &User| {
        c.members
            .iter()
            .find(|m| m.user_id == u.id)
            .unwrap()
            .clone()
    };
    assert_eq!(member(&a_now, &u[0]).last_read_seq, 3);
    assert_eq!(member(&a_now, &u[1]).last_read_seq, 2);
    assert_eq!(unread_of(&*store, &u[0], &a).await, 0);
    assert_eq!(unread_of(&*store, &u[1], &a).await, 1);
    assert_eq!(unread_of(&*store, &u[0], &b).await, 1);

    // The next batch continues where the last stopped.
    let m = send(&*store, &a, &u[1], "a4").await;
    assert_eq!(m.seq, 4);
    assert!(store.persist_messages(vec![]).await.unwrap().is_empty());
}

async fn persisting_is_idempotent(store: Arc<dyn Store>) {
    let u = users(&*store, &["ann", "bob"]).await;
    let c = group(&*store, &u[0], &[&u[1]]).await;
    let first = store
        .persist_messages(vec![keyed(&c, &u[0], "hello", "k1")])
        .await
        .unwrap();
    let original = created(&first[0]).clone();

    // A retry with a new id and the same key returns the original.
    let retry = store
        .persist_messages(vec![keyed(&c, &u[0], "hello again", "k1")])
        .await
        .unwrap();
    assert_eq!(retry, vec![Persisted::Duplicate(original.clone())]);

    // Within one batch: the second occurrence is a duplicate of the first.
    let outcomes = store
        .persist_messages(vec![
            keyed(&c, &u[0], "x", "k2"),
            keyed(&c, &u[0], "x twice", "k2"),
            keyed(&c, &u[1], "same key, other sender", "k2"),
            keyed(&c, &u[0], "old key", "k1"),
        ])
        .await
        .unwrap();
    let x = created(&outcomes[0]).clone();
    assert_eq!(x.seq, 2);
    assert_eq!(outcomes[1], Persisted::Duplicate(x.clone()));
    assert_eq!(created(&outcomes[2]).seq, 3);
    assert_eq!(outcomes[3], Persisted::Duplicate(original.clone()));

    // A batch retried with the same message ids (no keys) writes nothing.
    let plain = msg(&c, &u[1], "plain");
    let once = store.persist_messages(vec![plain.clone()]).await.unwrap();
    let twice = store.persist_messages(vec![plain]).await.unwrap();
    assert_eq!(twice, vec![Persisted::Duplicate(created(&once[0]).clone())]);

    let history = store.messages(&c.id, None, None, 100).await.unwrap();
    assert_eq!(seqs(&history), [1, 2, 3, 4]);
    assert_eq!(
        store.conversation(&c.id).await.unwrap().unwrap().last_seq,
        4
    );
    // One outbox row per created message, none for duplicates.
    assert_eq!(take_outbox(&*store).await.len(), 4);
}

async fn persisting_refuses_non_members(store: Arc<dyn Store>) {
    let u = users(&*store, &["ann", "bob", "eve"]).await;
    let c = group(&*store, &u[0], &[&u[1]]).await;
    let mut ghost_conversation = c.clone();
    ghost_conversation.id = "no-such-conversation".into();
    let outcomes = store
        .persist_messages(vec![
            msg(&c, &u[2], "intruder"),
            msg(&c, &u[0], "fine"),
            msg(&ghost_conversation, &u[0], "nowhere"),
            keyed(&c, &u[2], "intruder again", "e1"),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes[0], Persisted::NotMember);
    assert_eq!(created(&outcomes[1]).seq, 1);
    assert_eq!(outcomes[2], Persisted::NotMember);
    assert_eq!(outcomes[3], Persisted::NotMember);

    // After leaving, a member's messages are refused.
    store.remove_member(&c.id, &u[1].id, vec![]).await.unwrap();
    let outcomes = store
        .persist_messages(vec![msg(&c, &u[1], "gone")])
        .await
        .unwrap();
    assert_eq!(outcomes, vec![Persisted::NotMember]);
    assert_eq!(
        store.conversation(&c.id).await.unwrap().unwrap().last_seq,
        1
    );
    assert_eq!(take_outbox(&*store).await, vec![MESSAGE_CREATED]);
}

async fn concurrent_persisting_is_gapless(store: Arc<dyn Store>) {
    const TASKS: usize = 8;
    const BATCHES: usize = 15;
    const PER_BATCH: usize = 4;
    let u = users(&*store, &["ann", "bob", "cat", "dan"]).await;
    let busy = group(&*store, &u[0], &[&u[1], &u[2], &u[3]]).await;
    let quiet = group(&*store, &u[3], &[&u[0], &u[1], &u[2]]).await;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        let (busy, quiet) = (busy.clone(), quiet.clone());
        let sender = u[t % u.len()].clone();
        tasks.push(tokio::spawn(async move {
            for b in 0..BATCHES {
                // Batches touch both conversations in varying order.
                let batch: Vec<_> = (0..PER_BATCH)
                    .map(|i| {
                        let c = if (t + b + i) % 3 == 0 { &quiet } else { &busy };
                        keyed(c, &sender, &format!("{t}/{b}/{i}"), &format!("{t}-{b}-{i}"))
                    })
                    .collect();
                for outcome in store.persist_messages(batch).await.expect("persist") {
                    created(&outcome);
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let mut total = 0;
    for c in [&busy, &quiet] {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = store.messages(&c.id, None, Some(after), 100).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.seq;
            all.extend(page);
        }
        let n = all.len() as i64;
        assert_eq!(
            seqs(&all),
            (1..=n).collect::<Vec<_>>(),
            "gapless in {}",
            c.id
        );
        assert_eq!(
            store.conversation(&c.id).await.unwrap().unwrap().last_seq,
            n
        );
        let distinct: HashSet<_> = all.iter().map(|m| m.body.clone()).collect();
        assert_eq!(distinct.len(), all.len());
        // Every member's unread is exactly the messages after their newest.
        for member in &u {
            let newest_own = all
                .iter()
                .filter(|m| m.sender_id == member.id)
                .map(|m| m.seq)
                .max()
                .unwrap_or(0);
            assert_eq!(unread_of(&*store, member, c).await, n - newest_own);
        }
        total += all.len();
    }
    assert_eq!(total, TASKS * BATCHES * PER_BATCH);
}

async fn unread_counts_are_exact(store: Arc<dyn Store>) {
    let u = users(&*store, &["ann", "bob", "cat"]).await;
    let c = group(&*store, &u[0], &[&u[1], &u[2]]).await;
    let other = group(&*store, &u[1], &[&u[2]]).await;
    for i in 0..5 {
        send(&*store, &c, &u[0], &format!("ann {i}")).await;
    }
    for i in 0..3 {
        send(&*store, &c, &u[1], &format!("bob {i}")).await;
    }
    send(&*store, &other, &u[1], "elsewhere").await;
    // ann: bob's 3 after her last; bob: none; cat: all 8.
    assert_eq!(unread_of(&*store, &u[0], &c).await, 3);
    assert_eq!(unread_of(&*store, &u[1], &c).await, 0);
    assert_eq!(unread_of(&*store, &u[2], &c).await, 8);
    let cat = store.unread(&u[2].id).await.unwrap();
    assert_eq!(cat.len(), 2);
    let in_c = cat.iter().find(|x| x.conversation_id == c.id).unwrap();
    assert_eq!((in_c.unread_count, in_c.last_seq), (8, 8));
    store.mark_read(&c.id, &u[2].id, 6).await.unwrap();
    assert_eq!(unread_of(&*store, &u[2], &c).await, 2);
    // Sending marks everything up to the new message read.
    send(&*store, &c, &u[2], "cat").await;
    assert_eq!(unread_of(&*store, &u[2], &c).await, 0);
    assert_eq!(unread_of(&*store, &u[0], &c).await, 4);
    assert!(store.unread("nobody").await.unwrap().is_empty());
    // Every member's counter of several conversations in one call.
    let mut all = store
        .unread_of_members(vec![c.id.clone(), other.id.clone(), "missing".into()])
        .await
        .unwrap();
    all.sort();
    let mut want = vec![
        (c.id.clone(), u[0].id.clone(), 4, 9),
        (c.id.clone(), u[1].id.clone(), 1, 9),
        (c.id.clone(), u[2].id.clone(), 0, 9),
        (other.id.clone(), u[1].id.clone(), 0, 1),
        (other.id.clone(), u[2].id.clone(), 1, 1),
    ];
    want.sort();
    assert_eq!(all, want);
}

// ---------------------------------------------------------------------------
// History, edits, deletes

async fn history_cursors(store: Arc<dyn Store>) {
    let u = users(&*store, &["ann", "bob"]).await;
    let c = group(&*store, &u[0], &[&u[1]]).await;
    let batch: Vec<_> = (1..=10)
        .map(|i| msg(&c, &u[i % 2], &format!("m{i}")))
        .collect();
    store.persist_messages(batch).await.unwrap();
    let deleted = store.messages(&c.id, Some(5), Some(3), 10).await.unwrap();
    store
        .delete_message(&deleted[0].id, store::now(), vec![])
        .await
        .unwrap();

    let page = |before, after, limit| {
        let store = store.clone();
        let id = c.id.clone();
        async move { seqs(&store.messages(&id, before, after, limit).await.unwrap()) }
    };
    // Latest `limit`, ascending.
    assert_eq!(page(None, None, 3).await, [8, 9, 10]);
    assert_eq!(page(None, None, 100).await, (1..=10).collect::<Vec<_>>());
    // Open ranges.
    assert_eq!(page(Some(5), None, 2).await, [3, 4]);
    assert_eq!(page(Some(5), None, 100).await, [1, 2, 3, 4]);
    assert_eq!(page(None, Some(5), 2).await, [6, 7]);
    assert_eq!(page(None, Some(8), 100).await, [9, 10]);
    assert_eq!(page(Some(7), Some(2), 100).await, [3, 4, 5, 6]);
    assert_eq!(page(Some(7), Some(2), 2).await, [3, 4]);
    assert!(page(Some(1), None, 10).await.is_empty());
    assert!(page(None, Some(10), 10).await.is_empty());
    assert!(page(None, None, 0).await.is_empty());
    // Tombstones are part of history.
    let history = store.messages(&c.id, Some(5), Some(3), 10).await.unwrap();
    assert_eq!(history.len(), 1);
    assert!(history[0].deleted_at.is_some());
    assert_eq!(history[0].body, "");
    assert!(store
        .messages("nope", None, None, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn edits_and_tombstones(store: Arc<dyn Store>) {
    let u = users(&*store, &["ann", "bob"]).await;
    let c = group(&*store, &u[0], &[&u[1]]).await;
    let m = send(&*store, &c, &u[0], "first draft").await;
    assert_eq!(take_outbox(&*store).await, [MESSAGE_CREATED]);

    let at = store::now();
    let edited = store
        .edit_message(
            &m.id,
            "final text",
            at,
            vec![event("message.edited", &c.id)],
        )
        .await
        .unwrap()
        .expect("edited");
    assert_eq!(edited.body, "final text");
    assert_eq!(edited.edited_at, Some(at));
    assert_eq!((edited.seq, edited.created_at), (m.seq, m.created_at));
    assert_eq!(store.message(&m.id).await.unwrap(), Some(edited.clone()));

    let at2 = store::now();
    let tombstone = store
        .delete_message(&m.id, at2, vec![event("message.deleted", &c.id)])
        .await
        .unwrap()
        .expect("deleted");
    assert_eq!(tombstone.body, "");
    assert_eq!(tombstone.deleted_at, Some(at2));
    assert_eq!(tombstone.seq, m.seq);
    assert_eq!(tombstone.edited_at, Some(at));
    assert_eq!(store.message(&m.id).await.unwrap(), Some(tombstone.clone()));

    // Deleting again is a no-op returning the tombstone; editing it is refused.
    let again = store
        .delete_message(&m.id, store::now(), vec![event("message.deleted", &c.id)])
        .await
        .unwrap();
    assert_eq!(again, Some(tombstone.clone()));
    let refused = store
        .edit_message(
            &m.id,
            "zombie",
            store::now(),
            vec![event("message.edited", &c.id)],
        )
        .await
        .unwrap();
    assert_eq!(refused, None);
    assert_eq!(store.message(&m.id).await.unwrap(), Some(tombstone));

    // Unknown messages.
    assert_eq!(
        store
            .edit_message("nope", "x", store::now(), vec![])
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .delete_message("nope", store::now(), vec![])
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.message("nope").await.unwrap(), None);

    // Exactly one event per real change.
    assert_eq!(
        take_outbox(&*store).await,
        ["message.edited", "message.deleted"]
    );
}

// ---------------------------------------------------------------------------
// Watermarks

async fn watermarks_are_monotonic_and_clamped(store: Arc<dyn Store>) {
    let u = users(&*store, &["ann", "bob", "cat"]).await;
    let c = group(&*store, &u[0], &[&u[1], &u[2]]).await;
    // seq 1 ann, 2 bob, 3 ann, 4 bob, 5 bob
    for (i, s) in [0, 1, 0, 1, 1].into_iter().enumerate() {
        send(&*store, &c, &u[s], &format!("m{}", i + 1)).await;
    }
    let mut ann_bob = vec![u[0].id.clone(), u[1].id.clone()];
    ann_bob.sort();

    // cat reads up to 3: senders ann and bob, not herself.
    let w = store.mark_read(&c.id, &u[2].id, 3).await.unwrap().unwrap();
    assert_eq!((w.up_to_seq, w.advanced), (3, true));
    assert_eq!(w.senders, ann_bob);
    // Backwards and equal: no movement.
    let w = store.mark_read(&c.id, &u[2].id, 2).await.unwrap().unwrap();
    assert_eq!((w.up_to_seq, w.advanced), (3, false));
    assert!(w.senders.is_empty());
    let w = store.mark_read(&c.id, &u[2].id, 3).await.unwrap().unwrap();
    assert!(!w.advanced);
    // Beyond the last seq: clamped to 5. Range (3, 5] = bob's 4 and 5.
    let w = store
        .mark_read(&c.id, &u[2].id, 1_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((w.up_to_seq, w.advanced), (5, true));
    assert_eq!(w.senders, vec![u[1].id.clone()]);
    assert_eq!(
        store
            .member(&c.id, &u[2].id)
            .await
            .unwrap()
            .unwrap()
            .last_read_seq,
        5
    );
    assert_eq!(unread_of(&*store, &u[2], &c).await, 0);

    // Delivered is a watermark of its own.
    let m = store.member(&c.id, &u[2].id).await.unwrap().unwrap();
    assert_eq!(m.last_delivered_seq, 0);
    let w = store
        .mark_delivered(&c.id, &u[2].id, 4)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((w.up_to_seq, w.advanced), (4, true));
    assert_eq!(w.senders, ann_bob);
    let w = store
        .mark_delivered(&c.id, &u[2].id, -3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((w.up_to_seq, w.advanced), (4, false));
    let m = store.member(&c.id, &u[2].id).await.unwrap().unwrap();
    assert_eq!((m.last_read_seq, m.last_delivered_seq), (5, 4));

    // ann has read up to her own 3; (3, 5] holds bob's two.
    let w = store.mark_read(&c.id, &u[0].id, 5).await.unwrap().unwrap();
    assert_eq!((w.up_to_seq, w.advanced), (5, true));
    assert_eq!(w.senders, vec![u[1].id.clone()]);

    // A range of only one's own messages: advanced, nobody to tell.
    let w = store
        .mark_delivered(&c.id, &u[2].id, 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w.senders, vec![u[1].id.clone()]);
    send(&*store, &c, &u[2], "m6").await;
    let w = store
        .mark_delivered(&c.id, &u[2].id, 6)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((w.up_to_seq, w.advanced), (6, true));
    assert!(w.senders.is_empty());

    // Not a member.
    assert_eq!(store.mark_read(&c.id, "nobody", 1).await.unwrap(), None);
    assert_eq!(
        store.mark_delivered("nope", &u[0].id, 1).await.unwrap(),
        None
    );
}

async fn concurrent_marks_report_each_range_once(store: Arc<dyn Store>) {
    let u = users(&*store, &["ann", "bob"]).await;
    let c = group(&*store, &u[0], &[&u[1]]).await;
    let batch: Vec<_> = (0..40).map(|i| msg(&c, &u[0], &format!("m{i}"))).collect();
    store.persist_messages(batch).await.unwrap();
    let mut tasks = Vec::new();
    for i in 1..=40 {
        let (store, c, bob) = (store.clone(), c.id.clone(), u[1].id.clone());
        tasks.push(tokio::spawn(async move {
            store.mark_read(&c, &bob, i).await.unwrap().unwrap()
        }));
    }
    let mut last_values = Vec::new();
    for task in tasks {
        let w = task.await.unwrap();
        if w.advanced {
            assert_eq!(w.senders, vec![u[0].id.clone()]);
            last_values.push(w.up_to_seq);
        }
    }
    assert!(last_values.contains(&40));
    let distinct: HashSet<_> = last_values.iter().collect();
    assert_eq!(
        distinct.len(),
        last_values.len(),
        "each value reported once"
    );
    assert_eq!(
        store
            .member(&c.id, &u[1].id)
            .await
            .unwrap()
            .unwrap()
            .last_read_seq,
        40
    );
}

/// Concurrent read and delivered marks of one member, with up-to values out
/// of order and messages arriving meanwhile: for each watermark, the marks
/// that advanced report contiguous, disjoint ranges that together cover
/// exactly (0, final], each with the senders of its own messages.
async fn concurrent_marks_tile_the_watermark(store: Arc<dyn Store>) {
    const SENDERS: usize = 40;
    const FIRST: usize = 16;
    let names: Vec<String> = (0..=SENDERS).map(|i| format!("u{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let u = users(&*store, &names).await;
    let (senders, reader) = (&u[..SENDERS], u[SENDERS].clone());
    let others: Vec<&User> = u[1..].iter().collect();
    let c = group(&*store, &u[0], &others).await;
    // Seq k is sent by senders[k - 1] alone: a range's senders name its seqs.
    let seq_of: HashMap<String, i64> = (1..)
        .zip(senders)
        .map(|(seq, s)| (s.id.clone(), seq))
        .collect();
    let first: Vec<_> = senders[..FIRST].iter().map(|s| msg(&c, s, "m")).collect();
    store.persist_messages(first).await.unwrap();

    let later: Vec<_> = senders[FIRST..].iter().map(|s| msg(&c, s, "m")).collect();
    let persister = {
        let store = store.clone();
        tokio::spawn(async move {
            for chunk in later.chunks(3) {
                store.persist_messages(chunk.to_vec()).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let mut tasks = Vec::new();
    for i in 0..120_i64 {
        let up_to = (i * 7) % (SENDERS as i64 + 4) - 1;
        let (store, c, reader) = (store.clone(), c.id.clone(), reader.id.clone());
        tasks.push(tokio::spawn(async move {
            let read = i % 2 == 0;
            let w = if read {
                store.mark_read(&c, &reader, up_to).await
            } else {
                store.mark_delivered(&c, &reader, up_to).await
            };
            (read, w.unwrap().unwrap())
        }));
    }
    persister.await.unwrap();
    let mut reports = Vec::new();
    for task in tasks {
        reports.push(task.await.unwrap());
    }
    // Whatever is left, up to the last message.
    let last = store.mark_read(&c.id, &reader.id, i64::MAX).await.unwrap();
    reports.push((true, last.unwrap()));
    let last = store
        .mark_delivered(&c.id, &reader.id, i64::MAX)
        .await
        .unwrap();
    reports.push((false, last.unwrap()));

    for read in [true, false] {
        let mut ranges = Vec::new();
        for (_, w) in reports.iter().filter(|(r, w)| *r == read && w.advanced) {
            let mut sorted = w.senders.clone();
            sorted.sort();
            assert_eq!(w.senders, sorted, "senders in order");
            let mut seqs: Vec<i64> = w.senders.iter().map(|s| seq_of[s]).collect();
            seqs.sort_unstable();
            let from = w.up_to_seq - seqs.len() as i64;
            assert_eq!(
                seqs,
                (from + 1..=w.up_to_seq).collect::<Vec<_>>(),
                "a report's senders are those of the seqs just below its new value"
            );
            ranges.push((from, w.up_to_seq));
        }
        ranges.sort_unstable();
        let mut covered = 0;
        for (from, to) in &ranges {
            assert_eq!(*from, covered, "ranges disjoint and gapless: {ranges:?}");
            covered = *to;
        }
        assert_eq!(covered, SENDERS as i64, "{ranges:?}");
    }
    let m = store.member(&c.id, &reader.id).await.unwrap().unwrap();
    assert_eq!(
        (m.last_read_seq, m.last_delivered_seq),
        (SENDERS as i64, SENDERS as i64)
    );
}

/// One member's row, seen through the store and through connections of
/// its own beside it.
struct MemberRow {
    store: Arc<dyn Store>,
    conversation_id: String,
    user_id: String,
    /// Writes the row in transactions of its own.
    writer: tokio_postgres::Client,
    /// Watches for waiting backends.
    watcher: tokio_postgres::Client,
}

impl MemberRow {
    fn filter(&self) -> String {
        format!(
            "WHERE conversation_id = '{}' AND user_id = '{}'",
            self.conversation_id, self.user_id
        )
    }

    /// The row's version (`xmin`): changes with every write of the row.
    async fn version(&self) -> String {
        let sql = format!(
            "SELECT xmin::text FROM conversation_members {}",
            self.filter()
        );
        self.writer.query_one(&sql, &[]).await.expect("xmin").get(0)
    }

    async fn mark(&self, read: bool, up_to: i64) -> Option<Watermark> {
        let (c, u) = (&self.conversation_id, &self.user_id);
        let w = if read {
            self.store.mark_read(c, u, up_to).await
        } else {
            self.store.mark_delivered(c, u, up_to).await
        };
        w.expect("mark")
    }

    /// Marks while `change` (a statement to which the row's filter is
    /// appended) holds the row in an open transaction, committed once the
    /// mark waits for the row.
    async fn mark_behind(&self, change: &str, read: bool, up_to: i64) -> Option<Watermark> {
        let sql = format!("BEGIN; {change} {}", self.filter());
        self.writer.batch_execute(&sql).await.expect("writer");
        let waiting = async {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let n: i64 = self
                    .watcher
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE datname = current_database() AND wait_event_type = 'Lock'",
                        &[],
                    )
                    .await
                    .expect("pg_stat_activity")
                    .get(0);
                if n > 0 {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the mark never waited for the row"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            self.writer.batch_execute("COMMIT").await.expect("commit");
        };
        let (w, ()) = tokio::join!(self.mark(read, up_to), waiting);
        w
    }
}

/// A watermark that does not move is not written (no new row version), and
/// one that waited behind a concurrent writer compares against the value
/// that writer committed, not the one its statement first saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_watermark_moves_write_only_what_moves() {
    backends::on_postgres_with_url(|store, url| async move {
        let connect = || async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(conn);
            client
        };
        let u = users(&*store, &["s1", "s2", "s3", "s4", "s5", "s6", "s7", "rex"]).await;
        let senders = &u[..7];
        let others: Vec<&User> = u[1..].iter().collect();
        let c = group(&*store, &u[0], &others).await;
        // Seq k is sent by senders[k - 1].
        let batch: Vec<_> = senders.iter().map(|s| msg(&c, s, "m")).collect();
        store.persist_messages(batch).await.unwrap();
        let ids = |range: std::ops::Range<usize>| -> Vec<String> {
            let mut ids: Vec<String> = senders[range].iter().map(|s| s.id.clone()).collect();
            ids.sort();
            ids
        };
        let rex = MemberRow {
            store: store.clone(),
            conversation_id: c.id.clone(),
            user_id: u[7].id.clone(),
            writer: connect().await,
            watcher: connect().await,
        };

        let w = rex.mark(true, 3).await.unwrap();
        assert_eq!((w.up_to_seq, w.advanced, w.senders), (3, true, ids(0..3)));
        let version = rex.version().await;
        for (read, up_to) in [(true, 3), (true, 2), (true, -1), (false, 0), (false, -5)] {
            let w = rex.mark(read, up_to).await.unwrap();
            assert!(!w.advanced && w.senders.is_empty(), "{w:?}");
            assert_eq!(w.up_to_seq, if read { 3 } else { 0 });
            assert_eq!(
                rex.version().await,
                version,
                "a mark that moved nothing wrote the row"
            );
        }

        // Seen at 3, moved to 5 meanwhile: 4 is behind, nothing to write.
        let moved = "UPDATE conversation_members SET last_read_seq = 5";
        let w = rex.mark_behind(moved, true, 4).await.unwrap();
        assert_eq!((w.up_to_seq, w.advanced), (5, false));
        assert!(w.senders.is_empty());
        let version = rex.version().await;
        assert_eq!(rex.mark(true, 5).await.unwrap().up_to_seq, 5);
        assert_eq!(rex.version().await, version);

        // Seen at 5, moved to 6 meanwhile: the range is (6, 7], not (5, 7].
        let moved = "UPDATE conversation_members SET last_read_seq = 6";
        let w = rex.mark_behind(moved, true, 7).await.unwrap();
        assert_eq!((w.up_to_seq, w.advanced, w.senders), (7, true, ids(6..7)));
        let m = store.member(&c.id, &rex.user_id).await.unwrap().unwrap();
        assert_eq!((m.last_read_seq, m.last_delivered_seq), (7, 0));

        // Removed meanwhile: not a member.
        let removed = "DELETE FROM conversation_members";
        assert_eq!(rex.mark_behind(removed, false, 7).await, None);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Membership

async fn adding_members(store: Arc<dyn Store>) {
    let u = users(&*store, &["ann", "bob", "cat", "dan"]).await;
    let c = group(&*store, &u[0], &[&u[1]]).await;
    send(&*store, &c, &u[0], "before cat").await;
    send(&*store, &c, &u[1], "before cat too").await;
    store.mark_read(&c.id, &u[1].id, 1).await.unwrap();

    let at = store::now();
    let added = store
        .add_members(
            &c.id,
            vec![
                (u[2].id.clone(), Role::Admin),
                (u[1].id.clone(), Role::Admin),
                (u[3].id.clone(), Role::Member),
                (u[3].id.clone(), Role::Admin),
            ],
            at,
            vec![event("member.added", &c.id)],
        )
        .await
        .unwrap();
    assert_eq!(added, vec![u[2].id.clone(), u[3].id.clone()]);
    let cat = store.member(&c.id, &u[2].id).await.unwrap().unwrap();
    assert_eq!(cat.role, Role::Admin);
    assert_eq!(cat.joined_at, at);
    assert_eq!((cat.last_read_seq, cat.last_delivered_seq), (2, 2));
    assert_eq!(unread_of(&*store, &u[2], &c).await, 0);
    let dan = store.member(&c.id, &u[3].id).await.unwrap().unwrap();
    assert_eq!(dan.role, Role::Member);
    // An existing member is left as they were.
    let bob = store.member(&c.id, &u[1].id).await.unwrap().unwrap();
    assert_eq!((bob.role, bob.last_read_seq), (Role::Member, 2));
    let conversation = store.conversation(&c.id).await.unwrap().unwrap();
    assert_eq!(conversation.members.len(), 4);
    // Later joiners come last.
    assert_eq!(
        conversation.members[0].user_id,
        u[0].id.clone().min(u[1].id.clone())
    );
    send(&*store, &c, &u[0], "after").await;
    assert_eq!(unread_of(&*store, &u[2], &c).await, 1);
    assert_eq!(
        take_outbox(&*store)
            .await
            .iter()
            .filter(|k| *k == "member.added")
            .count(),
        1
    );

    // Unknown user or conversation: an error, nothing written.
    let result = store
        .add_members(
            &c.id,
            vec![("ghost".into(), Role::Member)],
            at,
            vec![event("member.added", &c.id)],
        )
        .await;
    assert!(matches!(result, Err(StoreError::NotFound(_))), "{result:?}");
    let result = store
        .add_members(
            "nope",
            vec![(u[2].id.clone(), Role::Member)],
            at,
            vec![event("member.added", "nope")],
        )
        .await;
    assert!(matches!(result, Err(StoreError::NotFound(_))), "{result:?}");
    assert!(take_outbox(&*store).await.is_empty());
}

async fn removing_members_hands_ownership_on(store: Arc<dyn Store>) {
    let u = users(&*store, &["ann", "bob", "cat", "dan"]).await;
    let t0 = store::now() - Duration::minutes(5);
    let c = store
        .create_conversation(group_of("g", &u[0], &[&u[1]], t0), vec![])
        .await
        .unwrap();
    store
        .add_members(
            &c.id,
            vec![(u[2].id.clone(), Role::Admin)],
            t0 + Duration::minutes(1),
            vec![],
        )
        .await
        .unwrap();
    store
        .add_members(
            &c.id,
            vec![(u[3].id.clone(), Role::Admin)],
            t0 + Duration::minutes(2),
            vec![],
        )
        .await
        .unwrap();

    // A member leaving changes no ownership.
    let removed = store
        .remove_member(&c.id, &u[1].id, vec![event("member.removed", &c.id)])
        .await
        .unwrap();
    assert_eq!(
        removed,
        Some(RemovedMember {
            role: Role::Member,
            new_owner: None
        })
    );
    // The owner leaving: the longest-standing admin (cat) takes over.
    let removed = store.remove_member(&c.id, &u[0].id, vec![]).await.unwrap();
    assert_eq!(
        removed,
        Some(RemovedMember {
            role: Role::Owner,
            new_owner: Some(u[2].id.clone())
        })
    );
    assert_eq!(
        store.member(&c.id, &u[2].id).await.unwrap().unwrap().role,
        Role::Owner
    );
    assert_eq!(
        store.member(&c.id, &u[3].id).await.unwrap().unwrap().role,
        Role::Admin
    );

    // Not a member: None, and no event.
    assert_eq!(
        store
            .remove_member(&c.id, &u[0].id, vec![event("member.removed", &c.id)])
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        take_outbox(&*store)
            .await
            .iter()
            .filter(|k| *k == "member.removed")
            .count(),
        1
    );

    // With another owner present, nobody is promoted.
    store.set_role(&c.id, &u[3].id, Role::Owner).await.unwrap();
    let removed = store.remove_member(&c.id, &u[2].id, vec![]).await.unwrap();
    assert_eq!(
        removed,
        Some(RemovedMember {
            role: Role::Owner,
            new_owner: None
        })
    );

    // Without admins the longest-standing member takes over.
    let d = store
        .create_conversation(group_of("d", &u[0], &[&u[1]], t0), vec![])
        .await
        .unwrap();
    store
        .add_members(
            &d.id,
            vec![(u[2].id.clone(), Role::Member)],
            t0 + Duration::minutes(1),
            vec![],
        )
        .await
        .unwrap();
    let removed = store.remove_member(&d.id, &u[0].id, vec![]).await.unwrap();
    assert_eq!(removed.unwrap().new_owner, Some(u[1].id.clone()));
    // The last one leaving leaves nobody to promote.
    store.remove_member(&d.id, &u[2].id, vec![]).await.unwrap();
    let removed = store.remove_member(&d.id, &u[1].id, vec![]).await.unwrap();
    assert_eq!(
        removed,
        Some(RemovedMember {
            role: Role::Owner,
            new_owner: None
        })
    );
    assert!(store
        .conversation(&d.id)
        .await
        .unwrap()
        .unwrap()
        .members
        .is_empty());
}

async fn roles_and_renames(store: Arc<dyn Store>) {
    let u = users(&*store, &["ann", "bob"]).await;
    let c = group(&*store, &u[0], &[&u[1]]).await;
    assert!(store.set_role(&c.id, &u[1].id, Role::Admin).await.unwrap());
    assert_eq!(
        store.member(&c.id, &u[1].id).await.unwrap().unwrap().role,
        Role::Admin
    );
    assert!(!store.set_role(&c.id, "nobody", Role::Admin).await.unwrap());

    store
        .rename_conversation(&c.id, "Renamed", vec![event("conversation.renamed", &c.id)])
        .await
        .unwrap();
    assert_eq!(
        store
            .conversation(&c.id)
            .await
            .unwrap()
            .unwrap()
            .name
            .as_deref(),
        Some("Renamed")
    );
    let result = store
        .rename_conversation("nope", "x", vec![event("conversation.renamed", "nope")])
        .await;
    assert!(matches!(result, Err(StoreError::NotFound(_))), "{result:?}");
    assert_eq!(take_outbox(&*store).await, vec!["conversation.renamed"]);
}

// ---------------------------------------------------------------------------
// Outbox

async fn outbox_rows_follow_their_change(store: Arc<dyn Store>) {
    let u = users(&*store, &["ann", "bob"]).await;
    let direct = store
        .create_conversation(
            direct_of(&u[0], &u[1]),
            vec![event("conversation.created", "d")],
        )
        .await
        .unwrap();
    // Failing changes write no events.
    let _ = store
        .create_conversation(
            direct_of(&u[1], &u[0]),
            vec![event("conversation.created", "d2")],
        )
        .await
        .unwrap_err();
    let _ = store
        .add_members(
            &direct.id,
            vec![("ghost".into(), Role::Member)],
            store::now(),
            vec![event("member.added", "d")],
        )
        .await
        .unwrap_err();
    assert_eq!(take_outbox(&*store).await, vec!["conversation.created"]);

    // Events with every field, in order.
    let events = vec![
        OutboxEvent {
            kind: "presence.changed".into(),
            conversation_id: None,
            message_id: None,
            payload: r#"{"status":"online"}"#.into(),
        },
        OutboxEvent {
            kind: "message.read".into(),
            conversation_id: Some(direct.id.clone()),
            message_id: Some("m1".into()),
            payload: "{}".into(),
        },
    ];
    let ids = store.append_outbox(events.clone()).await.unwrap();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1]);
    let rows = store
        .outbox_due(store::now() + Duration::hours(1), 10)
        .await
        .unwrap();
    let tail: Vec<_> = rows.iter().filter(|r| ids.contains(&r.id)).collect();
    assert_eq!(
        tail.iter().map(|r| r.event.clone()).collect::<Vec<_>>(),
        events
    );
    assert!(store.append_outbox(vec![]).await.unwrap().is_empty());
}

async fn outbox_due_claims_and_delete(store: Arc<dyn Store>) {
    let e = |kind: &str| OutboxEvent {
        kind: kind.into(),
        conversation_id: None,
        message_id: None,
        payload: "{}".into(),
    };
    let before = store::now();
    let ids = store
        .append_outbox(vec![e("a"), e("b"), e("c")])
        .await
        .unwrap();
    // Nothing is due before it was written.
    let none = store
        .outbox_due(before - Duration::seconds(1), 10)
        .await
        .unwrap();
    assert!(none.is_empty());

    let later = store::now() + Duration::seconds(1);
    let first = store.outbox_due(later, 2).await.unwrap();
    assert_eq!(first.iter().map(|r| r.id).collect::<Vec<_>>(), ids[..2]);
    assert!(first.iter().all(|r| r.created_at >= before));
    // Claimed rows are not handed out again while the lease runs.
    let second = store.outbox_due(later, 10).await.unwrap();
    assert_eq!(second.iter().map(|r| r.id).collect::<Vec<_>>(), ids[2..]);
    assert!(store.outbox_due(later, 10).await.unwrap().is_empty());

    assert_eq!(store.outbox_depth().await.unwrap(), 3);
    store.outbox_delete(vec![ids[0], ids[2]]).await.unwrap();
    assert_eq!(store.outbox_depth().await.unwrap(), 1);
    store.outbox_delete(vec![]).await.unwrap();
    store.outbox_delete(vec![ids[0]]).await.unwrap();
    assert!(store.outbox_due(later, 10).await.unwrap().is_empty());
    assert!(store.outbox_due(later, 0).await.unwrap().is_empty());
}

async fn concurrent_sweepers_take_disjoint_rows(store: Arc<dyn Store>) {
    let events: Vec<_> = (0..200)
        .map(|i| OutboxEvent {
            kind: format!("k{i}"),
            conversation_id: None,
            message_id: None,
            payload: "{}".into(),
        })
        .collect();
    let ids = store.append_outbox(events).await.unwrap();
    let later = store::now() + Duration::seconds(1);
    let mut sweepers = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        sweepers.push(tokio::spawn(async move {
            let mut taken = Vec::new();
            loop {
                let rows = store.outbox_due(later, 7).await.unwrap();
                if rows.is_empty() {
                    break taken;
                }
                taken.extend(rows.iter().map(|r| r.id));
            }
        }));
    }
    let mut all = Vec::new();
    for s in sweepers {
        all.extend(s.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, ids, "every row taken exactly once");
}

// ---------------------------------------------------------------------------
// Search

async fn search_is_scoped_ranked_and_in_step(store: Arc<dyn Store>) {
    let u = users(&*store, &["ann", "bob", "eve"]).await;
    let ours = group(&*store, &u[0], &[&u[1]]).await;
    let also_ours = group(&*store, &u[1], &[&u[0]]).await;
    let theirs = group(&*store, &u[2], &[&u[1]]).await;
    let once = send(&*store, &ours, &u[1], "an apple and a pear").await;
    let thrice = send(&*store, &ours, &u[0], "Apple apple APPLE").await;
    let elsewhere = send(&*store, &also_ours, &u[1], "apple pie").await;
    send(&*store, &theirs, &u[2], "apple secret").await;

    let search = |user: &User, q: &str, c: Option<String>, limit, offset| {
        let (store, user, q) = (store.clone(), user.id.clone(), q.to_string());
        async move {
            store
                .search_messages(&user, &q, c.as_deref(), limit, offset)
                .await
                .unwrap()
        }
    };
    // Only ann's conversations; best match (three hits) first.
    let hits = search(&u[0], "apple", None, 10, 0).await;
    assert_eq!(hits.len(), 3, "{hits:?}");
    assert_eq!(hits[0], thrice);
    let ids: HashSet<_> = hits.iter().map(|m| m.id.clone()).collect();
    assert_eq!(
        ids,
        HashSet::from([once.id.clone(), thrice.id.clone(), elsewhere.id.clone()])
    );
    // Case-insensitive; all words must match.
    assert_eq!(
        search(&u[0], "PEAR Apple", None, 10, 0).await,
        vec![once.clone()]
    );
    assert!(search(&u[0], "apple banana", None, 10, 0).await.is_empty());
    // One conversation.
    let hits = search(&u[0], "apple", Some(also_ours.id.clone()), 10, 0).await;
    assert_eq!(hits, vec![elsewhere.clone()]);
    assert!(search(&u[0], "apple", Some(theirs.id.clone()), 10, 0)
        .await
        .is_empty());
    // Pages.
    let page1 = search(&u[0], "apple", None, 2, 0).await;
    let page2 = search(&u[0], "apple", None, 2, 2).await;
    assert_eq!((page1.len(), page2.len()), (2, 1));
    assert!(!page1.contains(&page2[0]));
    assert!(search(&u[0], "apple", None, 0, 0).await.is_empty());
    // bob sees his three conversations' apples.
    assert_eq!(search(&u[1], "apple", None, 10, 0).await.len(), 4);

    // Edits replace the indexed words.
    store
        .edit_message(&once.id, "a cherry now", store::now(), vec![])
        .await
        .unwrap();
    assert!(search(&u[0], "pear", None, 10, 0).await.is_empty());
    let hits = search(&u[0], "cherry", None, 10, 0).await;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].body, "a cherry now");
    // Deleted messages are not found.
    store
        .delete_message(&thrice.id, store::now(), vec![])
        .await
        .unwrap();
    let hits = search(&u[0], "apple", None, 10, 0).await;
    assert_eq!(hits, vec![elsewhere]);
    // Leaving a conversation leaves its messages out.
    store
        .remove_member(&also_ours.id, &u[0].id, vec![])
        .await
        .unwrap();
    assert!(search(&u[0], "apple", None, 10, 0).await.is_empty());
}

/// Edits, tombstones and retention that reach a message before any search
/// (on SQLite: before the message left the indexing queue), and batches
/// larger than one indexing transaction.
async fn search_sees_changes_made_before_indexing(store: Arc<dyn Store>) {
    let u = users(&*store, &["ann", "bob"]).await;
    let c = group(&*store, &u[0], &[&u[1]]).await;
    let old = store::now() - Duration::days(8);
    let ancient = NewMessage {
        created_at: old,
        ..msg(&c, &u[0], "walnut ancient")
    };
    store.persist_messages(vec![ancient]).await.unwrap();
    let edited = send(&*store, &c, &u[0], "walnut original").await;
    let gone = send(&*store, &c, &u[1], "walnut tombstone").await;
    let kept = send(&*store, &c, &u[1], "walnut kept").await;
    store
        .edit_message(&edited.id, "walnut rewritten", store::now(), vec![])
        .await
        .unwrap();
    store
        .delete_message(&gone.id, store::now(), vec![])
        .await
        .unwrap();
    let cutoff = store::now() - Duration::days(7);
    assert_eq!(store.delete_messages_before(cutoff, 10).await.unwrap(), 1);

    let search = |q: &'static str| {
        let store = store.clone();
        let user = u[1].id.clone();
        async move {
            let mut bodies: Vec<String> = store
                .search_messages(&user, q, None, 100, 0)
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.body)
                .collect();
            bodies.sort();
            bodies
        }
    };
    assert_eq!(search("walnut").await, ["walnut kept", "walnut rewritten"]);
    assert!(search("original").await.is_empty());
    assert!(search("tombstone").await.is_empty());
    assert!(search("ancient").await.is_empty());

    // Once indexed, the same changes still keep the index in step.
    store
        .edit_message(&kept.id, "walnut changed again", store::now(), vec![])
        .await
        .unwrap();
    store
        .delete_message(&edited.id, store::now(), vec![])
        .await
        .unwrap();
    assert_eq!(search("walnut").await, ["walnut changed again"]);
    assert!(search("kept").await.is_empty());

    // More rows than one indexing transaction takes, searchable at once.
    let many: Vec<_> = (0..2500)
        .map(|i| msg(&c, &u[0], &format!("bulk token{i}")))
        .collect();
    store.persist_messages(many).await.unwrap();
    for q in ["token0", "token999", "token1000", "token2499"] {
        assert_eq!(search(q).await.len(), 1, "{q}");
    }
    assert_eq!(
        store
            .search_messages(&u[1].id, "bulk", None, 3000, 0)
            .await
            .unwrap()
            .len(),
        2500
    );
}

async fn search_input_is_plain_words(store: Arc<dyn Store>) {
    let u = users(&*store, &["ann", "bob"]).await;
    let c = group(&*store, &u[0], &[&u[1]]).await;
    let m = send(
        &*store,
        &c,
        &u[0],
        "don't panic: NEAR the towel OR the *star*",
    )
    .await;
    send(&*store, &c, &u[0], "ünïcödé wörds ß").await;
    for q in [
        "",
        "   ",
        "...",
        "\"",
        "*",
        "-",
        "()",
        "\"\"",
        "'",
        "NOT",
        "AND OR",
        "a:b",
        "^x",
        "\u{301}",
        "NEAR(",
        "col:",
        "{x}",
        "\\",
        "%",
        "_",
        "&|!",
        "<->",
        "'a' & 'b'",
    ] {
        let result = store.search_messages(&u[0].id, q, None, 10, 0).await;
        assert!(result.is_ok(), "query {q:?}: {result:?}");
    }
    let find = |q: &'static str| {
        let (store, user) = (store.clone(), u[0].id.clone());
        async move { store.search_messages(&user, q, None, 10, 0).await.unwrap() }
    };
    assert!(find("").await.is_empty());
    assert!(find(" ... ").await.is_empty());
    assert_eq!(find("towel").await, vec![m.clone()]);
    assert_eq!(find("NEAR").await, vec![m.clone()]);
    assert_eq!(find("OR towel").await, vec![m.clone()]);
    assert_eq!(find("star*").await, vec![m.clone()]);
    assert_eq!(find("\"towel\"").await, vec![m.clone()]);
    assert_eq!(find("panic:").await, vec![m.clone()]);
    assert_eq!(find("NOT towel").await, Vec::<Message>::new());
    assert_eq!(find("wörds").await.len(), 1);
    assert_eq!(find("ÜNÏCÖDÉ").await.len(), 1);
}

async fn user_search_ignores_case(store: Arc<dyn Store>) {
    let alice = user(&*store, "Alice", "Alice Liddell").await;
    let bob = user(&*store, "bob_99", "Robert Ärger").await;
    let carol = user(&*store, "carol", "Carol 100%").await;
    let search = |q: &'static str, limit| {
        let store = store.clone();
        async move {
            store
                .search_users(q, limit)
                .await
                .unwrap()
                .into_iter()
                .map(|u| u.username)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(search("ali", 10).await, ["Alice"]);
    assert_eq!(search("LIDDELL", 10).await, ["Alice"]);
    assert_eq!(search("ärg", 10).await, ["bob_99"]);
    assert_eq!(search("ÄRGER", 10).await, ["bob_99"]);
    // Username order; limit.
    assert_eq!(search("o", 10).await, ["bob_99", "carol"]);
    assert_eq!(search("l", 10).await, ["Alice", "carol"]);
    assert_eq!(search("l", 1).await, ["Alice"]);
    // No wildcards.
    assert_eq!(search("_", 10).await, ["bob_99"]);
    assert_eq!(search("%", 10).await, ["carol"]);
    assert!(search("", 10).await.is_empty());
    assert!(search("zzz", 10).await.is_empty());
    let full = store.search_users("alice", 10).await.unwrap();
    assert_eq!(full, vec![alice]);
    let _ = (bob, carol);
}

// ---------------------------------------------------------------------------
// Contacts, blocks, presence

async fn contacts_blocks_and_presence_audience(store: Arc<dyn Store>) {
    let u = users(&*store, &["ann", "bob", "cat", "dan", "eve"]).await;
    let (ann, bob, cat, dan, eve) = (&u[0], &u[1], &u[2], &u[3], &u[4]);
    // ann shares a group with bob; has dan as an explicit contact; eve has
    // ann as hers.
    group(&*store, ann, &[bob]).await;
    let at = store::now();
    store.add_contact(&ann.id, &dan.id, at).await.unwrap();
    store.add_contact(&ann.id, &dan.id, at).await.unwrap();
    store.add_contact(&ann.id, &bob.id, at).await.unwrap();
    store.add_contact(&eve.id, &ann.id, at).await.unwrap();

    let names = |list: Vec<User>| list.into_iter().map(|u| u.username).collect::<Vec<_>>();
    assert_eq!(
        names(store.contacts(&ann.id).await.unwrap()),
        ["bob", "dan"]
    );
    assert_eq!(names(store.contacts(&bob.id).await.unwrap()), ["ann"]);
    assert_eq!(names(store.contacts(&eve.id).await.unwrap()), ["ann"]);
    assert!(store.contacts(&cat.id).await.unwrap().is_empty());

    let mut audience = vec![bob.id.clone(), dan.id.clone(), eve.id.clone()];
    audience.sort();
    assert_eq!(store.presence_audience(&ann.id).await.unwrap(), audience);
    assert_eq!(
        store.presence_audience(&dan.id).await.unwrap(),
        vec![ann.id.clone()]
    );
    assert!(store.presence_audience(&cat.id).await.unwrap().is_empty());

    assert!(store.remove_contact(&ann.id, &dan.id).await.unwrap());
    assert!(!store.remove_contact(&ann.id, &dan.id).await.unwrap());
    assert_eq!(names(store.contacts(&ann.id).await.unwrap()), ["bob"]);
    let result = store.add_contact(&ann.id, "ghost", at).await;
    assert!(matches!(result, Err(StoreError::NotFound(_))), "{result:?}");

    assert!(!store.is_blocked(&ann.id, &cat.id).await.unwrap());
    store.block(&ann.id, &cat.id, at).await.unwrap();
    store.block(&ann.id, &cat.id, at).await.unwrap();
    assert!(store.is_blocked(&ann.id, &cat.id).await.unwrap());
    assert!(!store.is_blocked(&cat.id, &ann.id).await.unwrap());
    assert!(store.unblock(&ann.id, &cat.id).await.unwrap());
    assert!(!store.unblock(&ann.id, &cat.id).await.unwrap());
    assert!(!store.is_blocked(&ann.id, &cat.id).await.unwrap());
    let result = store.block(&ann.id, "ghost", at).await;
    assert!(matches!(result, Err(StoreError::NotFound(_))), "{result:?}");
}

async fn last_seen_round_trip(store: Arc<dyn Store>) {
    let u = users(&*store, &["ann", "bob"]).await;
    let at = store::now() - Duration::minutes(3);
    store.set_last_seen(&u[0].id, at).await.unwrap();
    let seen = store
        .last_seen(vec![u[1].id.clone(), u[0].id.clone(), "ghost".into()])
        .await
        .unwrap();
    assert_eq!(
        seen,
        vec![
            (u[1].id.clone(), None),
            (u[0].id.clone(), Some(at)),
            ("ghost".into(), None)
        ]
    );
    let later = store::now();
    store.set_last_seen(&u[0].id, later).await.unwrap();
    assert_eq!(
        store.last_seen(vec![u[0].id.clone()]).await.unwrap(),
        vec![(u[0].id.clone(), Some(later))]
    );
    assert!(store.last_seen(vec![]).await.unwrap().is_empty());
    // Accounts still read back as before.
    assert_eq!(
        store.user_by_id(&u[0].id).await.unwrap(),
        Some(u[0].clone())
    );
}

// ---------------------------------------------------------------------------
// Retention

async fn retention_deletes_in_bounded_batches(store: Arc<dyn Store>) {
    let u = users(&*store, &["ann", "bob"]).await;
    let c = group(&*store, &u[0], &[&u[1]]).await;
    let old = store::now() - Duration::days(8);
    let batch: Vec<_> = (0..25)
        .map(|i| NewMessage {
            created_at: old + Duration::seconds(i),
            ..msg(&c, &u[0], &format!("ancient word{i}"))
        })
        .collect();
    store.persist_messages(batch).await.unwrap();
    let fresh = send(&*store, &c, &u[0], "ancient but fresh").await;
    let cutoff = store::now() - Duration::days(7);

    let mut rounds = Vec::new();
    loop {
        let n = store.delete_messages_before(cutoff, 10).await.unwrap();
        if n == 0 {
            break;
        }
        rounds.push(n);
    }
    assert_eq!(rounds, [10, 10, 5]);
    let left = store.messages(&c.id, None, None, 100).await.unwrap();
    assert_eq!(left, vec![fresh.clone()]);
    assert_eq!(bodies(&left), ["ancient but fresh"]);
    // Search entries went with them.
    let hits = store
        .search_messages(&u[1].id, "ancient", None, 100, 0)
        .await
        .unwrap();
    assert_eq!(hits, vec![fresh]);
    // Seq keeps counting; the conversation and watermarks stay.
    let c_now = store.conversation(&c.id).await.unwrap().unwrap();
    assert_eq!(c_now.last_seq, 26);
    assert_eq!(send(&*store, &c, &u[1], "next").await.seq, 27);
    assert_eq!(store.delete_messages_before(cutoff, 0).await.unwrap(), 0);
}

/// SQLite indexes messages for search after their transaction (a queue and a
/// background pass). With sends, edits, tombstones, retention and searches
/// all running at once, the index must end equal to the messages table:
/// FTS5's own integrity check compares the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_search_index_matches_messages_after_concurrent_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store::open("", dir.path(), 4).await.expect("open sqlite");
    store.migrate().await.expect("migrate sqlite");
    let u = users(&*store, &["ann", "bob"]).await;
    let c = group(&*store, &u[0], &[&u[1]]).await;
    let old = store::now() - Duration::days(8);

    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..3 {
        let (store, c, u) = (store.clone(), c.clone(), u.clone());
        tasks.spawn(async move {
            for round in 0..40 {
                let batch: Vec<_> = (0..30)
                    .map(|i| NewMessage {
                        // Some rows are old enough for retention.
                        created_at: if i % 7 == 0 { old } else { store::now() },
                        ..msg(
                            &c,
                            &u[worker % 2],
                            &format!("w{worker} r{round} item{i} plum"),
                        )
                    })
                    .collect();
                let made = store.persist_messages(batch).await.unwrap();
                let made: Vec<Message> = made.iter().map(|p| created(p).clone()).collect();
                // Changes right away (rows likely still queued) …
                store
                    .edit_message(&made[1].id, "edited at once fig", store::now(), vec![])
                    .await
                    .unwrap();
                store
                    .delete_message(&made[2].id, store::now(), vec![])
                    .await
                    .unwrap();
                if round % 5 == 0 {
                    store
                        .search_messages(&u[0].id, "plum", None, 5, 0)
                        .await
                        .unwrap();
                }
                if round % 4 == 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
                }
                // … and later (rows likely indexed).
                store
                    .edit_message(&made[3].id, "edited later fig", store::now(), vec![])
                    .await
                    .unwrap();
                store
                    .delete_message(&made[4].id, store::now(), vec![])
                    .await
                    .unwrap();
                store
                    .delete_messages_before(store::now() - Duration::days(7), 5)
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("worker");
    }
    // A search indexes whatever is still queued.
    let figs = store
        .search_messages(&u[0].id, "fig", None, 1000, 0)
        .await
        .unwrap();
    assert_eq!(figs.len(), 3 * 40 * 2);

    let conn = rusqlite::Connection::open(dir.path().join("stompline.db")).expect("open");
    conn.execute(
        "INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)",
        [],
    )
    .expect("the full-text index matches the messages table");
    let queued: i64 = conn
        .query_row("SELECT count(*) FROM messages_fts_queue", [], |r| r.get(0))
        .unwrap();
    assert_eq!(queued, 0);
}

/// SQLite copies committed WAL frames into the database file from a
/// checkpointer of its own, not only inside a commit that crosses the
/// automatic-checkpoint threshold (thousands of pages, not reached here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_is_checkpointed_in_the_background() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store::open("", dir.path(), 4).await.expect("open sqlite");
    store.migrate().await.expect("migrate sqlite");
    let u = users(&*store, &["ann", "bob"]).await;
    let c = group(&*store, &u[0], &[&u[1]]).await;
    let db = dir.path().join("stompline.db");
    // Settle what setup wrote, then measure the file.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let before = std::fs::metadata(&db).expect("db file").len();
    let batch: Vec<_> = (0..2000)
        .map(|i| msg(&c, &u[0], &format!("{i} {}", "x".repeat(400))))
        .collect();
    store.persist_messages(batch).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = std::fs::metadata(&db).expect("db file").len();
        if now > before + 500_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the database file stayed at {now} bytes (from {before}): nothing checkpointed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// PostgreSQL merges the full-text index's pending list from a task of its
/// own, so that no persister transaction is the one that crosses
/// `gin_pending_list_limit` and merges megabytes inside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_search_pending_list_is_merged_in_the_background() {
    backends::on_postgres_with_url(|store, url| async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
            .await
            .expect("pgstattuple (PostgreSQL's contrib modules)");
        let pending = || async {
            client
                .query_one(
                    "SELECT pending_pages::bigint FROM pgstatginindex('messages_search_idx')",
                    &[],
                )
                .await
                .expect("pgstatginindex")
                .get::<_, i64>(0)
        };
        let u = users(&*store, &["ann", "bob"]).await;
        let c = group(&*store, &u[0], &[&u[1]]).await;
        // Stop here while the list still has pages: merging is what is
        // being looked for, so it must have had something to merge.
        let mut seen_pending = false;
        for round in 0..20 {
            let batch: Vec<_> = (0..500)
                .map(|i| msg(&c, &u[0], &format!("word{round}x{i} other{i} common text")))
                .collect();
            store.persist_messages(batch).await.expect("persist");
            if pending().await > 0 {
                seen_pending = true;
                break;
            }
        }
        assert!(
            seen_pending,
            "sends never left anything in the pending list"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let pages = pending().await;
            if pages == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{pages} pages still pending: nothing merges the list in the background"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // Merged entries are found as before.
        let found = store
            .search_messages(&u[1].id, "word0x7", None, 10, 0)
            .await
            .expect("search");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].body, "word0x7 other7 common text");
    })
    .await;
}
