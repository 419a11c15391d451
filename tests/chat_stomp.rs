//! Chat over STOMP, end to end against a real server: sends through the
//! pipeline with durable RECEIPTs, delivery on `/topic/chat/{cid}` and
//! `/user/queue/messages`, `since-seq` replay, gap filling, membership,
//! edits and deletes, receipts and unread counters, typing and presence.

mod support;

use std::time::Duration;

use stomp_codec::{Command, Frame};
use support::{Client, TestServer};

/// Registers users and opens TCP sessions for them; returns (client, id).
async fn users(srv: &TestServer, names: &[&str]) -> Vec<(Client, String)> {
    let mut out = Vec::new();
    for n in names {
        out.push(srv.user(n).await);
    }
    out
}

async fn direct(srv: &TestServer, a: &str, b: &str) -> String {
    let chat = &srv.running.shared.chat;
    chat.create_direct(a, b)
        .await
        .expect("direct conversation")
        .0
        .id
}

async fn group(srv: &TestServer, owner: &str, name: &str, members: &[&str]) -> String {
    let ids: Vec<String> = members.iter().map(|m| m.to_string()).collect();
    srv.running
        .shared
        .chat
        .create_group(owner, name, &ids)
        .await
        .expect("group")
        .id
}

fn json(f: &Frame) -> serde_json::Value {
    serde_json::from_slice(&f.body).expect("json body")
}

async fn chat_send(c: &mut Client, cid: &str, body: &str, receipt: &str) -> Frame {
    let payload = serde_json::json!({"conversationId": cid, "body": body}).to_string();
    c.send(format!("SEND\ndestination:/app/chat.send\ncontent-type:application/json\nreceipt:{receipt}\n\n{payload}\0").as_bytes())
        .await;
    c.await_receipt(receipt).await
}

/// Reads until a frame matches, keeping nothing else.
async fn next_where(c: &mut Client, pred: impl Fn(&Frame) -> bool) -> Frame {
    loop {
        let f = c.frame().await;
        if pred(&f) {
            return f;
        }
    }
}

async fn next_event(c: &mut Client, event: &str) -> Frame {
    next_where(c, |f| {
        f.command == Command::Message && f.header("event") == Some(event)
    })
    .await
}

#[tokio::test]
async fn messages_flow_both_ways_with_durable_receipts() {
    let srv = TestServer::start().await;
    let mut u = users(&srv, &["alice", "bobby"]).await;
    let (bob_id, alice_id) = (u[1].1.clone(), u[0].1.clone());
    let cid = direct(&srv, &alice_id, &bob_id).await;
    let (alice, bob) = {
        let (a, b) = u.split_at_mut(1);
        (&mut a[0].0, &mut b[0].0)
    };
    alice
        .subscribe("t", &format!("/topic/chat/{cid}"), "auto")
        .await;
    bob.subscribe("q", "/user/queue/messages", "auto").await;

    let r = chat_send(alice, &cid, "hello bob", "r1").await;
    assert_eq!(r.header("seq"), Some("1"));
    let mid = r
        .header("chat-message-id")
        .expect("chat-message-id")
        .to_owned();

    for (c, dest) in [
        (&mut *alice, format!("/topic/chat/{cid}")),
        (&mut *bob, "/user/queue/messages".to_owned()),
    ] {
        let m = next_event(c, "message.created").await;
        assert_eq!(m.header("destination"), Some(dest.as_str()));
        assert_eq!(m.header("conversation-id"), Some(cid.as_str()));
        assert_eq!(m.header("seq"), Some("1"));
        assert_eq!(m.header("chat-message-id"), Some(mid.as_str()));
        assert_eq!(m.header("content-type"), Some("application/json"));
        let body = json(&m);
        assert_eq!(body["id"], mid.as_str());
        assert_eq!(body["body"], "hello bob");
        assert_eq!(body["senderId"], alice_id.as_str());
        assert_eq!(body["seq"], 1);
        assert!(body["createdAt"].as_str().is_some_and(|t| t.ends_with('Z')));
    }

    // Bob answers with a plain SEND to the topic.
    bob.send(format!("SEND\ndestination:/topic/chat/{cid}\nreceipt:b1\n\nhi alice\0").as_bytes())
        .await;
    let r = next_where(bob, |f| f.command == Command::Receipt).await;
    assert_eq!(r.header("seq"), Some("2"));
    let m = next_event(alice, "message.created").await;
    assert_eq!(json(&m)["body"], "hi alice");
    assert_eq!(json(&m)["senderId"], bob_id.as_str());

    // History matches what was delivered.
    let history = srv
        .running
        .shared
        .chat
        .history(&alice_id, &cid, None, None, None)
        .await
        .unwrap();
    let bodies: Vec<_> = history.iter().map(|m| (m.seq, m.body.as_str())).collect();
    assert_eq!(bodies, [(1, "hello bob"), (2, "hi alice")]);
}

#[tokio::test]
async fn client_msg_id_makes_sends_idempotent() {
    let srv = TestServer::start().await;
    let mut u = users(&srv, &["idem1", "idem2"]).await;
    let cid = direct(&srv, &u[0].1, &u[1].1).await;
    let c = &mut u[0].0;
    let payload = serde_json::json!({"conversationId": cid, "body": "once", "clientMsgId": "c-1"})
        .to_string();
    let mut ids = Vec::new();
    for r in ["x1", "x2"] {
        c.send(format!("SEND\ndestination:/app/chat.send\nreceipt:{r}\n\n{payload}\0").as_bytes())
            .await;
        let f = next_where(c, |f| f.command == Command::Receipt).await;
        ids.push((
            f.header("chat-message-id").unwrap().to_owned(),
            f.header("seq").unwrap().to_owned(),
        ));
    }
    assert_eq!(ids[0], ids[1]);
    let history = srv
        .running
        .shared
        .chat
        .history(&u[0].1, &cid, None, None, None)
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
}

#[tokio::test]
async fn since_seq_replays_then_continues_live_without_gaps_or_duplicates() {
    let srv = TestServer::start().await;
    let mut u = users(&srv, &["replay1", "replay2"]).await;
    let cid = direct(&srv, &u[0].1, &u[1].1).await;
    for i in 1..=5 {
        chat_send(&mut u[0].0, &cid, &format!("m{i}"), &format!("r{i}")).await;
    }
    let reader = &mut u[1].0;
    reader
        .send(
            format!(
                "SUBSCRIBE\nid:s\ndestination:/topic/chat/{cid}\nsince-seq:2\nreceipt:sub\n\n\0"
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(
        reader.expect(Command::Receipt).await.header("receipt-id"),
        Some("sub")
    );
    let mut seen = Vec::new();
    for _ in 0..3 {
        let m = next_event(reader, "message.created").await;
        seen.push(m.header("seq").unwrap().parse::<i64>().unwrap());
    }
    assert_eq!(seen, [3, 4, 5]);
    chat_send(&mut u[0].0, &cid, "m6", "r6").await;
    let m = next_event(&mut u[1].0, "message.created").await;
    assert_eq!(m.header("seq"), Some("6"));
    assert!(
        u[1].0.quiet_for(Duration::from_millis(150)).await,
        "no duplicates"
    );
}

#[tokio::test]
async fn a_client_killed_mid_stream_resumes_with_every_message_once_in_order() {
    let srv = TestServer::start().await;
    let (mut sender, a) = srv.user("stream1").await;
    let (b, _, _) = srv.register("stream2").await;
    let cid = direct(&srv, &a, &b).await;
    let mut reader = srv.tcp().await;
    reader.connect_password("stream2").await;
    reader
        .subscribe("s", &format!("/topic/chat/{cid}"), "auto")
        .await;
    let total = 60;
    let send_all = async {
        for i in 1..=total {
            let payload =
                serde_json::json!({"conversationId": cid, "body": format!("n{i}")}).to_string();
            sender
                .send(format!("SEND\ndestination:/app/chat.send\n\n{payload}\0").as_bytes())
                .await;
        }
    };
    // Read some, then drop the connection mid-stream.
    let mut last = 0;
    let read_some = async {
        while last < 20 {
            let m = next_event(&mut reader, "message.created").await;
            let seq: i64 = m.header("seq").unwrap().parse().unwrap();
            assert_eq!(seq, last + 1);
            last = seq;
        }
    };
    tokio::join!(send_all, read_some);
    drop(reader);
    let mut again = srv.tcp().await;
    again.connect_password("stream2").await;
    again
        .send(
            format!("SUBSCRIBE\nid:s\ndestination:/topic/chat/{cid}\nsince-seq:{last}\n\n\0")
                .as_bytes(),
        )
        .await;
    while last < total {
        let m = next_event(&mut again, "message.created").await;
        let seq: i64 = m.header("seq").unwrap().parse().unwrap();
        assert_eq!(seq, last + 1, "in order, no gap, no duplicate");
        last = seq;
    }
    assert!(again.quiet_for(Duration::from_millis(150)).await);
}

#[tokio::test]
async fn a_seq_gap_is_filled_from_the_store() {
    let srv = TestServer::start().await;
    let mut u = users(&srv, &["gap1", "gap2"]).await;
    let cid = direct(&srv, &u[0].1, &u[1].1).await;
    u[1].0
        .subscribe("s", &format!("/topic/chat/{cid}"), "auto")
        .await;
    // Three messages stored without being published (as if the relay lost
    // them), then one sent normally.
    let store = &srv.running.shared.chat.store;
    let batch = (1..=3)
        .map(|i| stompline::store::NewMessage {
            id: stompline::store::new_id(),
            conversation_id: cid.clone(),
            sender_id: u[0].1.clone(),
            client_msg_id: None,
            body: format!("lost{i}"),
            created_at: stompline::store::now(),
        })
        .collect();
    let out = store.persist_messages(batch).await.unwrap();
    let ids: Vec<i64> = out
        .iter()
        .filter_map(|p| match p {
            stompline::store::Persisted::Created { outbox_id, .. } => Some(*outbox_id),
            _ => None,
        })
        .collect();
    store.outbox_delete(ids).await.unwrap();
    chat_send(&mut u[0].0, &cid, "found", "r").await;
    let mut bodies = Vec::new();
    for _ in 0..4 {
        bodies.push(
            json(&next_event(&mut u[1].0, "message.created").await)["body"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(bodies, ["lost1", "lost2", "lost3", "found"]);
}

#[tokio::test]
async fn non_members_are_refused_on_user_queue_errors_and_stay_connected() {
    let srv = TestServer::start().await;
    let mut u = users(&srv, &["member1", "member2", "outsider"]).await;
    let cid = direct(&srv, &u[0].1, &u[1].1).await;
    let c = &mut u[2].0;
    c.subscribe("e", "/user/queue/errors", "auto").await;
    c.send(format!("SUBSCRIBE\nid:x\ndestination:/topic/chat/{cid}\nreceipt:s1\n\n\0").as_bytes())
        .await;
    let e = next_event(c, "error").await;
    assert_eq!(e.header("receipt-id"), Some("s1"));
    assert_eq!(e.header("code"), Some("not_found"));
    let payload = serde_json::json!({"conversationId": cid, "body": "intrude"}).to_string();
    c.send(format!("SEND\ndestination:/app/chat.send\nreceipt:s2\n\n{payload}\0").as_bytes())
        .await;
    let e = next_event(c, "error").await;
    assert_eq!(e.header("receipt-id"), Some("s2"));
    // Still connected and usable.
    c.send_to("/topic/elsewhere", "fine").await;
}

#[tokio::test]
async fn invalid_sends_are_application_errors() {
    let srv = TestServer::start_with(|c| c.chat.message_max_bytes = 64).await;
    let mut u = users(&srv, &["valid1", "valid2"]).await;
    let cid = direct(&srv, &u[0].1, &u[1].1).await;
    let c = &mut u[0].0;
    c.subscribe("e", "/user/queue/errors", "auto").await;
    for (body, code) in [("   ", "empty_message"), (&"x".repeat(65)[..], "too_large")] {
        let payload = serde_json::json!({"conversationId": cid, "body": body}).to_string();
        c.send(format!("SEND\ndestination:/app/chat.send\nreceipt:v\n\n{payload}\0").as_bytes())
            .await;
        assert_eq!(next_event(c, "error").await.header("code"), Some(code));
    }
    c.send(b"SEND\ndestination:/app/chat.send\nreceipt:v\n\nnot json\0")
        .await;
    assert_eq!(
        next_event(c, "error").await.header("code"),
        Some("invalid_json")
    );
}

#[tokio::test]
async fn a_removed_member_stops_receiving_at_once() {
    let srv = TestServer::start().await;
    let mut u = users(&srv, &["owner1", "stays1", "leaves1"]).await;
    let (owner, stays, leaves) = (u[0].1.clone(), u[1].1.clone(), u[2].1.clone());
    let cid = group(&srv, &owner, "team", &[&stays, &leaves]).await;
    for (c, _) in u.iter_mut() {
        c.subscribe("t", &format!("/topic/chat/{cid}"), "auto")
            .await;
        c.subscribe("n", "/user/queue/notifications", "auto").await;
    }
    chat_send(&mut u[0].0, &cid, "before", "r1").await;
    for (c, _) in u.iter_mut() {
        next_event(c, "message.created").await;
    }
    srv.running
        .shared
        .chat
        .remove_member(&owner, &cid, &leaves)
        .await
        .unwrap();
    let n = next_event(&mut u[2].0, "member.removed").await;
    assert_eq!(json(&n)["userId"], leaves.as_str());
    chat_send(&mut u[0].0, &cid, "after", "r2").await;
    assert_eq!(
        json(&next_event(&mut u[1].0, "message.created").await)["body"],
        "after"
    );
    assert!(
        u[2].0.quiet_for(Duration::from_millis(200)).await,
        "removed member got a message"
    );
}

#[tokio::test]
async fn edits_and_deletes_are_events() {
    let srv = TestServer::start().await;
    let mut u = users(&srv, &["editor1", "viewer1"]).await;
    let cid = direct(&srv, &u[0].1, &u[1].1).await;
    u[1].0
        .subscribe("t", &format!("/topic/chat/{cid}"), "auto")
        .await;
    let r = chat_send(&mut u[0].0, &cid, "draft", "r").await;
    let mid = r.header("chat-message-id").unwrap().to_owned();
    next_event(&mut u[1].0, "message.created").await;
    let chat = &srv.running.shared.chat;
    chat.edit(&u[0].1, &mid, "final".into()).await.unwrap();
    let e = next_event(&mut u[1].0, "message.edited").await;
    assert_eq!(e.header("seq"), Some("1"));
    assert_eq!(json(&e)["body"], "final");
    assert!(json(&e)["editedAt"].is_string());
    assert!(chat.edit(&u[1].1, &mid, "hijack".into()).await.is_err());
    chat.delete(&u[0].1, &mid).await.unwrap();
    let d = next_event(&mut u[1].0, "message.deleted").await;
    assert_eq!(json(&d)["body"], "");
    assert!(json(&d)["deletedAt"].is_string());
}

#[tokio::test]
async fn delivered_and_read_receipts_reach_the_sender_and_unread_counts_move() {
    let srv = TestServer::start().await;
    let mut u = users(&srv, &["sender1", "reader1"]).await;
    let (sender_id, reader_id) = (u[0].1.clone(), u[1].1.clone());
    let cid = direct(&srv, &sender_id, &reader_id).await;
    u[0].0.subscribe("r", "/user/queue/receipts", "auto").await;
    u[1].0
        .subscribe("n", "/user/queue/notifications", "auto")
        .await;
    u[1].0
        .subscribe("read", &format!("/topic/chat/{cid}/read"), "auto")
        .await;
    u[1].0.subscribe("q", "/user/queue/messages", "auto").await;
    chat_send(&mut u[0].0, &cid, "one", "r1").await;
    chat_send(&mut u[0].0, &cid, "two", "r2").await;
    // The reader's unread counter reaches 2.
    loop {
        let n = next_event(&mut u[1].0, "unread").await;
        if json(&n)["unreadCount"] == 2 {
            break;
        }
    }
    // Delivered: the reader's session received both.
    loop {
        let d = next_event(&mut u[0].0, "message.delivered").await;
        let body = json(&d);
        assert_eq!(body["userId"], reader_id.as_str());
        if body["upToSeq"] == 2 {
            break;
        }
    }
    // Read.
    let payload = serde_json::json!({"conversationId": cid, "upToSeq": 2}).to_string();
    u[1].0
        .send(format!("SEND\ndestination:/app/chat.read\nreceipt:rd\n\n{payload}\0").as_bytes())
        .await;
    let r = next_event(&mut u[0].0, "message.read").await;
    assert_eq!(
        json(&r),
        serde_json::json!({"conversationId": cid, "userId": reader_id, "upToSeq": 2})
    );
    let t = next_event(&mut u[1].0, "read").await;
    assert_eq!(json(&t)["upToSeq"], 2);
    let n = next_event(&mut u[1].0, "unread").await;
    assert_eq!(json(&n)["unreadCount"], 0);
    let unread = srv.running.shared.chat.unread(&reader_id).await.unwrap();
    assert_eq!(unread[0].unread_count, 0);
    let unread = srv.running.shared.chat.unread(&sender_id).await.unwrap();
    assert_eq!(
        unread[0].unread_count, 0,
        "sending marks your own messages read"
    );
}

#[tokio::test]
async fn unread_counts_are_exact_after_a_burst_from_several_senders() {
    let srv = TestServer::start_with(|c| c.chat.rate_per_sec = 0).await;
    let mut u = users(&srv, &["burst1", "burst2", "burst3"]).await;
    let ids: Vec<String> = u.iter().map(|(_, id)| id.clone()).collect();
    let cid = group(&srv, &ids[0], "burst", &[&ids[1], &ids[2]]).await;
    let per_sender = 500;
    let mut tasks = Vec::new();
    for (mut c, _) in u.drain(..2) {
        let cid = cid.clone();
        tasks.push(tokio::spawn(async move {
            let mut burst = Vec::new();
            for i in 0..per_sender {
                let payload =
                    serde_json::json!({"conversationId": cid, "body": format!("b{i}")}).to_string();
                burst.extend_from_slice(
                    format!("SEND\ndestination:/app/chat.send\n\n{payload}\0").as_bytes(),
                );
            }
            burst.extend_from_slice(b"SEND\ndestination:/topic/none\nreceipt:end\n\n\0");
            c.send(&burst).await;
            next_where(&mut c, |f| f.command == Command::Receipt).await;
            c
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let chat = &srv.running.shared.chat;
    let total = 2 * per_sender as i64;
    tokio::time::timeout(support::WAIT, async {
        loop {
            let u3 = chat.unread(&ids[2]).await.unwrap();
            if u3.first().is_some_and(|u| u.last_seq == total) {
                assert_eq!(u3[0].unread_count, total);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("all persisted");
    let history = chat
        .history(&ids[2], &cid, None, Some(0), Some(100))
        .await
        .unwrap();
    assert_eq!(history.first().map(|m| m.seq), Some(1));
    for (sender, n) in [(&ids[0], 0), (&ids[1], 0)] {
        let u = chat.unread(sender).await.unwrap();
        assert!(u[0].unread_count <= total - n);
    }
}

#[tokio::test]
async fn typing_starts_and_stops_by_itself() {
    let srv = TestServer::start_with(|c| c.presence.typing_expiry_ms = 200).await;
    let mut u = users(&srv, &["typist1", "watcher1"]).await;
    let cid = direct(&srv, &u[0].1, &u[1].1).await;
    u[1].0
        .subscribe("ty", &format!("/topic/chat/{cid}/typing"), "auto")
        .await;
    let payload = serde_json::json!({"conversationId": cid, "typing": true}).to_string();
    u[0].0
        .send(format!("SEND\ndestination:/app/chat.typing\nreceipt:t\n\n{payload}\0").as_bytes())
        .await;
    let t = next_event(&mut u[1].0, "typing").await;
    assert_eq!(
        json(&t),
        serde_json::json!({"conversationId": cid, "userId": u[0].1, "typing": true})
    );
    let t = next_event(&mut u[1].0, "typing").await;
    assert_eq!(json(&t)["typing"], false, "ends by itself");
}

#[tokio::test]
async fn presence_online_away_offline_reach_a_contact_once_each() {
    let srv = TestServer::start_with(|c| c.presence.offline_grace_ms = 300).await;
    let (mut watcher, watcher_id) = srv.user("watcher2").await;
    let (flaky_id, _, _) = srv.register("flaky2").await;
    direct(&srv, &watcher_id, &flaky_id).await;
    watcher.subscribe("p", "/user/queue/presence", "auto").await;
    // Two tabs and a reconnect within the grace: one online event.
    let mut tab1 = srv.tcp().await;
    tab1.connect_password("flaky2").await;
    let mut tab2 = srv.tcp().await;
    tab2.connect_password("flaky2").await;
    drop(tab2);
    let mut tab3 = srv.tcp().await;
    tab3.connect_password("flaky2").await;
    let p = next_event(&mut watcher, "presence").await;
    assert_eq!(json(&p)["status"], "online");
    tab1.send(b"SEND\ndestination:/app/presence.set\nreceipt:a\n\n{\"status\":\"away\"}\0")
        .await;
    let p = next_event(&mut watcher, "presence").await;
    assert_eq!(json(&p)["status"], "away");
    drop(tab1);
    drop(tab3);
    let p = next_event(&mut watcher, "presence").await;
    assert_eq!(json(&p)["status"], "offline");
    assert_eq!(json(&p)["userId"], flaky_id.as_str());
    assert!(
        watcher.quiet_for(Duration::from_millis(400)).await,
        "no further presence events"
    );
    let got = srv
        .running
        .shared
        .presence
        .get(std::slice::from_ref(&flaky_id))
        .await
        .unwrap();
    assert_eq!(got[0].1.as_str(), "offline");
    assert!(got[0].2.is_some(), "lastSeenAt recorded");
}

#[tokio::test]
async fn client_individual_chat_subscription_counts_delivery_on_ack() {
    let srv = TestServer::start().await;
    let mut u = users(&srv, &["acker1", "acker2"]).await;
    let cid = direct(&srv, &u[0].1, &u[1].1).await;
    u[0].0.subscribe("r", "/user/queue/receipts", "auto").await;
    u[1].0
        .subscribe("t", &format!("/topic/chat/{cid}"), "client-individual")
        .await;
    chat_send(&mut u[0].0, &cid, "ack me", "r").await;
    let m = next_event(&mut u[1].0, "message.created").await;
    assert!(
        u[0].0.quiet_for(Duration::from_millis(200)).await,
        "not delivered before ACK"
    );
    let ack = m.header("ack").unwrap().to_owned();
    u[1].0.send(format!("ACK\nid:{ack}\n\n\0").as_bytes()).await;
    let d = next_event(&mut u[0].0, "message.delivered").await;
    assert_eq!(json(&d)["upToSeq"], 1);
}

#[tokio::test]
async fn retention_deletes_only_what_is_old_enough() {
    let srv = TestServer::start().await;
    let u = users(&srv, &["keeper1", "keeper2"]).await;
    let cid = direct(&srv, &u[0].1, &u[1].1).await;
    let store = &srv.running.shared.chat.store;
    let now = stompline::store::now();
    let batch = [
        (now - time::Duration::days(9), "ancient"),
        (now - time::Duration::days(6), "recent"),
        (now, "fresh"),
    ]
    .into_iter()
    .map(|(at, body)| stompline::store::NewMessage {
        id: stompline::store::new_id(),
        conversation_id: cid.clone(),
        sender_id: u[0].1.clone(),
        client_msg_id: None,
        body: body.into(),
        created_at: at,
    })
    .collect();
    store.persist_messages(batch).await.unwrap();
    let chat = &srv.running.shared.chat;
    let deleted = chat
        .apply_retention(Duration::from_secs(7 * 86_400))
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let left: Vec<_> = chat
        .history(&u[0].1, &cid, None, None, None)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(left, ["recent", "fresh"]);
}
