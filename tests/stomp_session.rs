//! STOMP sessions over raw TCP bytes: negotiation, authentication,
//! escaping, bodies, ack modes, transactions, receipts, heart-beats, limits
//! and shutdown, against a real server on ephemeral ports.

mod support;

use std::time::Duration;

use stomp_codec::{Command, Version};
use support::{TestServer, WAIT};

// ---- CONNECT

#[tokio::test]
async fn connect_negotiates_the_highest_common_version() {
    let srv = TestServer::start().await;
    srv.register("vera").await;
    for (accept, want) in [("1.0,1.1,1.2", "1.2"), ("1.0,1.1", "1.1"), ("1.0", "1.0")] {
        let mut c = srv.tcp().await;
        c.send(format!("CONNECT\naccept-version:{accept}\nhost:h\nlogin:vera\npasscode:password-vera\n\n\0").as_bytes())
            .await;
        let f = c.expect(Command::Connected).await;
        assert_eq!(f.header("version"), Some(want));
        assert_eq!(
            f.header("server"),
            Some(concat!("stompline/", env!("CARGO_PKG_VERSION")))
        );
        assert!(f.header("session").is_some_and(|s| !s.is_empty()));
        assert!(f.header("user-id").is_some());
        assert!(f.header("heart-beat").is_some());
    }
    // No accept-version: a 1.0 client.
    let mut c = srv.tcp().await;
    c.send(b"CONNECT\nlogin:vera\npasscode:password-vera\n\n\0")
        .await;
    assert_eq!(
        c.expect(Command::Connected).await.header("version"),
        Some("1.0")
    );
}

#[tokio::test]
async fn connect_without_a_common_version_gets_error_with_versions() {
    let srv = TestServer::start().await;
    srv.register("nora").await;
    let mut c = srv.tcp().await;
    c.send(b"CONNECT\naccept-version:2.0,3.0\nhost:h\nlogin:nora\npasscode:password-nora\n\n\0")
        .await;
    let f = c.expect_error("unsupported protocol version").await;
    assert_eq!(f.header("version"), Some("1.0,1.1,1.2"));
}

#[tokio::test]
async fn stomp_command_connects_like_connect() {
    let srv = TestServer::start().await;
    srv.register("sam").await;
    let mut c = srv.tcp().await;
    c.send(b"STOMP\naccept-version:1.2\nhost:h\nlogin:sam\npasscode:password-sam\n\n\0")
        .await;
    c.expect(Command::Connected).await;
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_answered_the_same() {
    let srv = TestServer::start().await;
    srv.register("wendy").await;
    let mut answers = Vec::new();
    for (login, pass) in [("wendy", "nope-nope"), ("nobody-here", "nope-nope")] {
        let mut c = srv.tcp().await;
        c.send(
            format!("CONNECT\naccept-version:1.2\nhost:h\nlogin:{login}\npasscode:{pass}\n\n\0")
                .as_bytes(),
        )
        .await;
        answers.push(c.expect_error("authentication failed").await);
    }
    assert_eq!(answers[0], answers[1]);
}

#[tokio::test]
async fn connect_accepts_token_as_passcode_and_as_bearer_header() {
    let srv = TestServer::start().await;
    let (id, token, _) = srv.register("tina").await;
    let mut c = srv.tcp().await;
    c.send(
        format!("CONNECT\naccept-version:1.2\nhost:h\nlogin:anything\npasscode:{token}\n\n\0")
            .as_bytes(),
    )
    .await;
    assert_eq!(
        c.expect(Command::Connected).await.header("user-id"),
        Some(id.as_str())
    );
    let mut c = srv.tcp().await;
    assert_eq!(
        c.connect_token(&token).await.header("user-id"),
        Some(id.as_str())
    );
    let mut c = srv.tcp().await;
    c.send(b"CONNECT\naccept-version:1.2\nhost:h\nAuthorization:Bearer not.a.token\n\n\0")
        .await;
    c.expect_error("authentication failed").await;
}

#[tokio::test]
async fn connect_without_credentials_is_refused() {
    let srv = TestServer::start().await;
    let mut c = srv.tcp().await;
    c.send(b"CONNECT\naccept-version:1.2\nhost:h\n\n\0").await;
    c.expect_error("authentication failed").await;
}

#[tokio::test]
async fn frames_before_connect_are_a_protocol_error() {
    let srv = TestServer::start().await;
    let mut c = srv.tcp().await;
    c.send(b"SEND\ndestination:/topic/a\nreceipt:77\n\nx\0")
        .await;
    let f = c.expect_error("expected CONNECT").await;
    assert_eq!(f.header("receipt-id"), Some("77"));
}

#[tokio::test]
async fn expired_token_closes_the_connection() {
    let srv = TestServer::start_with(|c| c.auth.access_token_ttl_secs = 1).await;
    let (_, token, _) = srv.register("eve").await;
    let mut c = srv.tcp().await;
    c.connect_token(&token).await;
    c.expect_error("token expired").await;
}

#[tokio::test]
async fn logout_closes_the_sessions_connections() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("lou").await;
    let mut c = srv.tcp().await;
    c.connect_token(&token).await;
    let res = reqwest::Client::new()
        .post(format!("http://{}/api/auth/logout", srv.http))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    c.expect_error("session revoked").await;
}

// ---- frames through the server

#[tokio::test]
async fn escaped_headers_round_trip_through_the_server() {
    let srv = TestServer::start().await;
    let (mut sub, _) = srv.user("esc1").await;
    let (mut pubr, _) = srv.user("esc2").await;
    sub.subscribe("1", "/topic/esc", "auto").await;
    pubr.send(b"SEND\ndestination:/topic/esc\nweird\\cname:a\\nb\\\\c\\rd\nreceipt:s\n\n\0")
        .await;
    pubr.expect(Command::Receipt).await;
    let m = sub.expect(Command::Message).await;
    assert_eq!(m.header("weird:name"), Some("a\nb\\c\rd"));
}

#[tokio::test]
async fn a_1_0_subscriber_gets_unescaped_headers() {
    let srv = TestServer::start().await;
    srv.register("old").await;
    let mut sub = srv.tcp().await;
    sub.send(b"CONNECT\naccept-version:1.0\nlogin:old\npasscode:password-old\n\n\0")
        .await;
    sub.expect(Command::Connected).await;
    sub.set_version(Version::V1_0);
    sub.send(b"SUBSCRIBE\ndestination:/topic/v10\nreceipt:r\n\n\0")
        .await;
    sub.expect(Command::Receipt).await;
    let (mut pubr, _) = srv.user("new").await;
    pubr.send(b"SEND\ndestination:/topic/v10\nk:a\\cb\nreceipt:s\n\n\0")
        .await;
    pubr.expect(Command::Receipt).await;
    let m = sub.expect(Command::Message).await;
    assert_eq!(m.header("k"), Some("a:b"));
    // 1.0 has no `id` on SUBSCRIBE: the destination stands in.
    assert_eq!(m.header("subscription"), Some("/topic/v10"));
}

#[tokio::test]
async fn content_length_bodies_with_nuls_and_multibyte_utf8() {
    let srv = TestServer::start().await;
    let (mut sub, _) = srv.user("bin1").await;
    let (mut pubr, _) = srv.user("bin2").await;
    sub.subscribe("1", "/topic/bin", "auto").await;
    let body: &[u8] = b"\0\x01\xff emoji \xf0\x9f\x98\x80 \0end";
    let mut f = format!(
        "SEND\ndestination:/topic/bin\ncontent-type:application/octet-stream\ncontent-length:{}\n\n",
        body.len()
    )
    .into_bytes();
    f.extend_from_slice(body);
    f.push(0);
    pubr.send(&f).await;
    let m = sub.expect(Command::Message).await;
    assert_eq!(&m.body[..], body);
    assert_eq!(
        m.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(m.header("content-type"), Some("application/octet-stream"));
    assert_eq!(m.header("destination"), Some("/topic/bin"));
    assert!(m.header("message-id").is_some());
}

#[tokio::test]
async fn many_frames_in_one_write_and_one_frame_over_many_writes() {
    let srv = TestServer::start().await;
    let (mut c, _) = srv.user("chunky").await;
    c.send(b"SUBSCRIBE\nid:1\ndestination:/topic/c\n\n\0SEND\ndestination:/topic/c\n\none\0SEND\ndestination:/topic/c\n\ntwo\0")
        .await;
    assert_eq!(&c.expect(Command::Message).await.body[..], b"one");
    assert_eq!(&c.expect(Command::Message).await.body[..], b"two");
    let frame = b"SEND\ndestination:/topic/c\ncontent-length:5\n\nthree\0";
    for byte in frame {
        c.send(&[*byte]).await;
    }
    assert_eq!(&c.expect(Command::Message).await.body[..], b"three");
}

#[tokio::test]
async fn topics_copy_to_every_subscriber_and_pass_user_headers() {
    let srv = TestServer::start().await;
    let (mut a, _) = srv.user("topic-a").await;
    let (mut b, _) = srv.user("topic-b").await;
    a.subscribe("x", "/topic/news", "auto").await;
    b.subscribe("y", "/topic/news", "auto").await;
    a.send(b"SEND\ndestination:/topic/news\nx-trace:42\ncontent-type:text/plain\n\nhello\0")
        .await;
    for (c, sub) in [(&mut a, "x"), (&mut b, "y")] {
        let m = c.expect(Command::Message).await;
        assert_eq!(m.header("subscription"), Some(sub));
        assert_eq!(m.header("x-trace"), Some("42"));
        assert_eq!(m.header("content-type"), Some("text/plain"));
        assert_eq!(
            m.header("ack"),
            None,
            "auto subscriptions carry no ack header"
        );
        assert_eq!(&m.body[..], b"hello");
    }
}

#[tokio::test]
async fn receipts_for_every_frame_that_asks() {
    let srv = TestServer::start().await;
    let (mut c, _) = srv.user("rita").await;
    c.send(
        b"SUBSCRIBE\nid:1\ndestination:/queue/r\nack:client\nreceipt:a\n\n\0BEGIN\ntransaction:t\nreceipt:b\n\n\0\
ABORT\ntransaction:t\nreceipt:c\n\n\0UNSUBSCRIBE\nid:1\nreceipt:d\n\n\0DISCONNECT\nreceipt:e\n\n\0",
    )
    .await;
    for id in ["a", "b", "c", "d", "e"] {
        assert_eq!(
            c.expect(Command::Receipt).await.header("receipt-id"),
            Some(id)
        );
    }
    c.expect_closed().await;
}

// ---- ack modes

#[tokio::test]
async fn queue_delivers_round_robin_and_holds_while_nobody_listens() {
    let srv = TestServer::start().await;
    let (mut p, _) = srv.user("queue-p").await;
    for i in 0..3 {
        p.send_to("/queue/work", &format!("early-{i}")).await;
    }
    let (mut a, _) = srv.user("queue-a").await;
    a.subscribe("1", "/queue/work", "auto").await;
    for i in 0..3 {
        assert_eq!(a.expect(Command::Message).await.body, format!("early-{i}"));
    }
    let (mut b, _) = srv.user("queue-b").await;
    b.subscribe("1", "/queue/work", "auto").await;
    for i in 0..4 {
        p.send_to("/queue/work", &format!("m{i}")).await;
    }
    let got_a: Vec<_> = [
        a.expect(Command::Message).await,
        a.expect(Command::Message).await,
    ]
    .into_iter()
    .map(|m| m.body)
    .collect();
    let got_b: Vec<_> = [
        b.expect(Command::Message).await,
        b.expect(Command::Message).await,
    ]
    .into_iter()
    .map(|m| m.body)
    .collect();
    let mut all: Vec<_> = got_a.iter().chain(&got_b).cloned().collect();
    all.sort();
    assert_eq!(all, ["m0", "m1", "m2", "m3"]);
    assert!(a.quiet_for(Duration::from_millis(100)).await);
}

#[tokio::test]
async fn client_individual_nack_redelivers_to_another_subscriber() {
    let srv = TestServer::start().await;
    let (mut a, _) = srv.user("nack-a").await;
    let (mut b, _) = srv.user("nack-b").await;
    a.subscribe("s", "/queue/jobs", "client-individual").await;
    a.send_to("/queue/jobs", "job").await;
    let m = a.expect(Command::Message).await;
    let ack = m.header("ack").expect("ack header").to_owned();
    b.subscribe("s", "/queue/jobs", "client-individual").await;
    a.send(format!("NACK\nid:{ack}\nreceipt:n\n\n\0").as_bytes())
        .await;
    a.expect(Command::Receipt).await;
    let m = b.expect(Command::Message).await;
    assert_eq!(m.body, "job");
    assert_eq!(m.header("redelivered"), Some("true"));
    let ack = m.header("ack").unwrap().to_owned();
    b.send(format!("ACK\nid:{ack}\nreceipt:k\n\n\0").as_bytes())
        .await;
    b.expect(Command::Receipt).await;
    assert!(a.quiet_for(Duration::from_millis(100)).await);
}

#[tokio::test]
async fn unacked_messages_return_when_their_subscriber_disconnects() {
    let srv = TestServer::start().await;
    let (mut a, _) = srv.user("disc-a").await;
    a.subscribe("s", "/queue/hand", "client").await;
    a.send_to("/queue/hand", "one").await;
    a.send_to("/queue/hand", "two").await;
    a.expect(Command::Message).await;
    a.expect(Command::Message).await;
    a.send(b"DISCONNECT\nreceipt:bye\n\n\0").await;
    a.expect(Command::Receipt).await;
    let (mut b, _) = srv.user("disc-b").await;
    b.subscribe("s", "/queue/hand", "auto").await;
    for want in ["one", "two"] {
        let m = b.expect(Command::Message).await;
        assert_eq!(m.body, want);
        assert_eq!(m.header("redelivered"), Some("true"));
    }
}

#[tokio::test]
async fn client_ack_is_cumulative() {
    let srv = TestServer::start().await;
    let (mut a, _) = srv.user("cum").await;
    a.subscribe("s", "/queue/cum", "client").await;
    for i in 0..3 {
        a.send_to("/queue/cum", &format!("{i}")).await;
    }
    let mut acks = Vec::new();
    for _ in 0..3 {
        acks.push(
            a.expect(Command::Message)
                .await
                .header("ack")
                .unwrap()
                .to_owned(),
        );
    }
    // ACK of the last one covers all three: the first is no longer pending.
    a.send(format!("ACK\nid:{}\nreceipt:k\n\n\0", acks[2]).as_bytes())
        .await;
    a.expect(Command::Receipt).await;
    a.send(format!("ACK\nid:{}\nreceipt:again\n\n\0", acks[0]).as_bytes())
        .await;
    let f = a.expect_error("unknown ack id").await;
    assert_eq!(f.header("receipt-id"), Some("again"));
}

#[tokio::test]
async fn topic_client_ack_mode_carries_ack_header_and_ack_works() {
    let srv = TestServer::start().await;
    let (mut a, _) = srv.user("tack").await;
    a.subscribe("s", "/topic/tack", "client").await;
    a.send(b"SEND\ndestination:/topic/tack\n\nx\0").await;
    let m = a.expect(Command::Message).await;
    let ack = m.header("ack").unwrap().to_owned();
    a.send(format!("ACK\nid:{ack}\nreceipt:k\n\n\0").as_bytes())
        .await;
    a.expect(Command::Receipt).await;
}

// ---- transactions

#[tokio::test]
async fn transaction_commit_delivers_and_abort_discards() {
    let srv = TestServer::start().await;
    let (mut c, _) = srv.user("txer").await;
    c.subscribe("1", "/topic/tx", "auto").await;
    c.send(b"BEGIN\ntransaction:t1\n\n\0SEND\ndestination:/topic/tx\ntransaction:t1\nreceipt:s1\n\nin-tx\0").await;
    c.expect(Command::Receipt).await;
    assert!(
        c.quiet_for(Duration::from_millis(100)).await,
        "nothing before COMMIT"
    );
    c.send(b"COMMIT\ntransaction:t1\n\n\0").await;
    assert_eq!(c.expect(Command::Message).await.body, "in-tx");
    c.send(b"BEGIN\ntransaction:t2\n\n\0SEND\ndestination:/topic/tx\ntransaction:t2\n\ndropped\0ABORT\ntransaction:t2\nreceipt:ab\n\n\0")
        .await;
    c.expect(Command::Receipt).await;
    assert!(c.quiet_for(Duration::from_millis(100)).await);
}

#[tokio::test]
async fn transactional_ack_applies_at_commit() {
    let srv = TestServer::start().await;
    let (mut a, _) = srv.user("txa").await;
    let (mut b, _) = srv.user("txb").await;
    a.subscribe("s", "/queue/txq", "client-individual").await;
    a.send_to("/queue/txq", "m").await;
    let ack = a
        .expect(Command::Message)
        .await
        .header("ack")
        .unwrap()
        .to_owned();
    a.send(format!("BEGIN\ntransaction:t\n\n\0NACK\nid:{ack}\ntransaction:t\n\n\0").as_bytes())
        .await;
    b.subscribe("s", "/queue/txq", "auto").await;
    assert!(
        b.quiet_for(Duration::from_millis(100)).await,
        "NACK waits for COMMIT"
    );
    a.send(b"COMMIT\ntransaction:t\n\n\0").await;
    assert_eq!(
        b.expect(Command::Message).await.header("redelivered"),
        Some("true")
    );
}

#[tokio::test]
async fn transaction_errors_close_the_connection() {
    let srv = TestServer::start().await;
    let (mut c, _) = srv.user("txe").await;
    c.send(b"COMMIT\ntransaction:nope\nreceipt:z\n\n\0").await;
    assert_eq!(
        c.expect_error("unknown transaction")
            .await
            .header("receipt-id"),
        Some("z")
    );
    let (mut c, _) = srv.user("txe2").await;
    c.send(b"SEND\ndestination:/topic/a\ntransaction:nope\n\nx\0")
        .await;
    c.expect_error("unknown transaction").await;
}

#[tokio::test]
async fn disconnect_aborts_open_transactions() {
    let srv = TestServer::start().await;
    let (mut watcher, _) = srv.user("txw").await;
    watcher.subscribe("1", "/topic/txd", "auto").await;
    let (mut c, _) = srv.user("txd").await;
    c.send(b"BEGIN\ntransaction:t\n\n\0SEND\ndestination:/topic/txd\ntransaction:t\n\nlost\0DISCONNECT\nreceipt:r\n\n\0")
        .await;
    c.expect(Command::Receipt).await;
    assert!(watcher.quiet_for(Duration::from_millis(150)).await);
}

// ---- protocol violations and application errors

#[tokio::test]
async fn protocol_violations_get_error_with_receipt_id_then_close() {
    let srv = TestServer::start().await;
    let cases: [(&[u8], &str); 5] = [
        (b"BOGUS\nreceipt:1\n\n\0", "malformed frame"),
        (b"SEND\nbad\\tescape:x\n\n\0", "malformed frame"),
        (b"ACK\nid:999999\nreceipt:9\n\n\0", "unknown ack id"),
        (
            b"SUBSCRIBE\ndestination:/topic/a\nreceipt:9\n\n\0",
            "missing header",
        ),
        (
            b"SUBSCRIBE\nid:1\ndestination:/topic/a\nack:sometimes\nreceipt:9\n\n\0",
            "invalid ack mode",
        ),
    ];
    for (i, (bytes, message)) in cases.into_iter().enumerate() {
        let (mut c, _) = srv.user(&format!("viol{i}")).await;
        c.send(bytes).await;
        let f = c.expect_error(message).await;
        if message != "malformed frame" {
            assert_eq!(f.header("receipt-id"), Some("9"), "{message}");
        }
    }
}

#[tokio::test]
async fn duplicate_subscription_id_is_a_protocol_error() {
    let srv = TestServer::start().await;
    let (mut c, _) = srv.user("dup").await;
    c.subscribe("1", "/topic/a", "auto").await;
    c.send(b"SUBSCRIBE\nid:1\ndestination:/topic/b\n\n\0").await;
    c.expect_error("duplicate subscription id").await;
}

#[tokio::test]
async fn forbidden_destinations_are_application_errors_on_user_queue_errors() {
    use stompline::config::{AclPolicy, AclRule};
    let srv = TestServer::start_with(|c| {
        c.acl.rules.insert(
            0,
            AclRule::new("/topic/secret/**", AclPolicy::Deny, AclPolicy::Deny),
        )
    })
    .await;
    let (mut c, _) = srv.user("acl").await;
    c.subscribe("e", "/user/queue/errors", "auto").await;
    c.send(b"SUBSCRIBE\nid:2\ndestination:/topic/secret/plans\nreceipt:r1\n\n\0")
        .await;
    let m = c.expect(Command::Message).await;
    assert_eq!(m.header("event"), Some("error"));
    assert_eq!(m.header("code"), Some("forbidden"));
    assert_eq!(m.header("receipt-id"), Some("r1"));
    let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
    assert_eq!(body["code"], "forbidden");
    // A conversation the user is not in looks like one that does not exist.
    c.send(b"SUBSCRIBE\nid:3\ndestination:/topic/chat/123\nreceipt:r0\n\n\0")
        .await;
    let m = c.expect(Command::Message).await;
    assert_eq!(m.header("code"), Some("not_found"));
    assert_eq!(m.header("receipt-id"), Some("r0"));
    c.send(b"SEND\ndestination:/nowhere\nreceipt:r2\n\nx\0")
        .await;
    let m = c.expect(Command::Message).await;
    assert_eq!(m.header("receipt-id"), Some("r2"));
    // The connection is still usable.
    c.send_to("/topic/fine", "ok").await;
}

#[tokio::test]
async fn user_queues_reach_every_session_of_the_user_and_only_them() {
    let srv = TestServer::start().await;
    srv.register("multi").await;
    let mut one = srv.tcp().await;
    one.connect_password("multi").await;
    let mut two = srv.tcp().await;
    two.connect_password("multi").await;
    let (mut other, _) = srv.user("other").await;
    for c in [&mut one, &mut two, &mut other] {
        c.subscribe("e", "/user/queue/errors", "auto").await;
    }
    one.send(b"SEND\ndestination:/nowhere\n\nx\0").await;
    one.expect(Command::Message).await;
    two.expect(Command::Message).await;
    assert!(other.quiet_for(Duration::from_millis(100)).await);
}

// ---- heart-beats

#[tokio::test]
async fn heart_beats_are_sent_at_the_negotiated_interval() {
    let srv = TestServer::start_with(|c| c.stomp.heartbeat_send_ms = 50).await;
    srv.register("beats").await;
    let mut c = srv.tcp().await;
    c.send(b"CONNECT\naccept-version:1.2\nhost:h\nlogin:beats\npasscode:password-beats\nheart-beat:0,50\n\n\0")
        .await;
    let f = c.expect(Command::Connected).await;
    assert_eq!(f.header("heart-beat"), Some("50,10000"));
    tokio::time::timeout(WAIT, async {
        while c.heartbeats < 3 {
            assert!(c.quiet_for(Duration::from_millis(500)).await);
        }
    })
    .await
    .expect("heart-beats arrive");
}

#[tokio::test]
async fn a_silent_client_is_closed_after_its_heart_beat_interval() {
    let srv = TestServer::start_with(|c| {
        c.stomp.heartbeat_recv_ms = 100;
        c.stomp.heartbeat_grace_ms = 100;
    })
    .await;
    srv.register("mute").await;
    let mut c = srv.tcp().await;
    c.send(b"CONNECT\naccept-version:1.2\nhost:h\nlogin:mute\npasscode:password-mute\nheart-beat:100,0\n\n\0")
        .await;
    c.expect(Command::Connected).await;
    c.expect_error("heart-beat timeout").await;
}

#[tokio::test]
async fn a_client_sending_heart_beats_stays_connected() {
    let srv = TestServer::start_with(|c| {
        c.stomp.heartbeat_recv_ms = 100;
        c.stomp.heartbeat_grace_ms = 100;
    })
    .await;
    srv.register("alive").await;
    let mut c = srv.tcp().await;
    c.send(b"CONNECT\naccept-version:1.2\nhost:h\nlogin:alive\npasscode:password-alive\nheart-beat:100,0\n\n\0")
        .await;
    c.expect(Command::Connected).await;
    for _ in 0..6 {
        c.send(b"\n").await;
        assert!(c.quiet_for(Duration::from_millis(80)).await);
    }
    c.send_to("/topic/still-here", "yes").await;
}

#[tokio::test]
async fn login_timeout_closes_a_connection_that_never_connects() {
    let srv = TestServer::start_with(|c| c.stomp.login_timeout_ms = 100).await;
    let mut c = srv.tcp().await;
    c.expect_error("login timeout").await;
}

// ---- limits

#[tokio::test]
async fn frame_limit_before_connect_is_tighter() {
    let srv = TestServer::start_with(|c| c.stomp.max_frame_bytes_before_connect = 1024).await;
    let mut c = srv.tcp().await;
    let mut f = b"CONNECT\naccept-version:1.2\nhost:h\n\n".to_vec();
    f.extend(std::iter::repeat_n(b'x', 2048));
    c.send(&f).await;
    c.expect_error("frame too large").await;
}

#[tokio::test]
async fn frame_limit_after_connect() {
    let srv = TestServer::start_with(|c| c.stomp.max_frame_bytes = 4096).await;
    let (mut c, _) = srv.user("big").await;
    let body = "x".repeat(5000);
    c.send(
        format!(
            "SEND\ndestination:/topic/a\ncontent-length:{}\n\n{body}\0",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    c.expect_error("frame too large").await;
}

#[tokio::test]
async fn header_count_and_length_limits() {
    let srv = TestServer::start_with(|c| {
        c.stomp.max_headers = 4;
        c.stomp.max_header_line_bytes = 128;
    })
    .await;
    let (mut c, _) = srv.user("hdr").await;
    c.send(b"SEND\ndestination:/topic/a\na:1\nb:2\nc:3\nd:4\n\n\0")
        .await;
    c.expect_error("too many headers").await;
    let mut c = srv.tcp().await;
    c.connect_password("hdr").await;
    c.send(format!("SEND\ndestination:/topic/a\nlong:{}\n\n\0", "v".repeat(200)).as_bytes())
        .await;
    c.expect_error("header too long").await;
}

#[tokio::test]
async fn subscription_limit() {
    let srv = TestServer::start_with(|c| c.stomp.max_subscriptions = 2).await;
    let (mut c, _) = srv.user("subs").await;
    c.subscribe("1", "/topic/a", "auto").await;
    c.subscribe("2", "/topic/b", "auto").await;
    c.send(b"SUBSCRIBE\nid:3\ndestination:/topic/c\n\n\0").await;
    c.expect_error("too many subscriptions").await;
}

#[tokio::test]
async fn connections_per_user_limit() {
    let srv = TestServer::start_with(|c| c.stomp.max_connections_per_user = 2).await;
    let (mut a, _) = srv.user("conns").await;
    let mut b = srv.tcp().await;
    b.connect_password("conns").await;
    let mut c = srv.tcp().await;
    c.send(b"CONNECT\naccept-version:1.2\nhost:h\nlogin:conns\npasscode:password-conns\n\n\0")
        .await;
    c.expect_error("too many connections").await;
    // Closing one frees a slot.
    a.send(b"DISCONNECT\nreceipt:r\n\n\0").await;
    a.expect(Command::Receipt).await;
    a.expect_closed().await;
    let mut d = srv.tcp().await;
    tokio::time::timeout(WAIT, async {
        loop {
            d.send(
                b"CONNECT\naccept-version:1.2\nhost:h\nlogin:conns\npasscode:password-conns\n\n\0",
            )
            .await;
            if d.frame().await.command == Command::Connected {
                break;
            }
            d = srv.tcp().await;
        }
    })
    .await
    .expect("slot freed");
}

#[tokio::test]
async fn server_connection_limit() {
    let srv = TestServer::start_with(|c| c.stomp.max_connections = 1).await;
    let _first = srv.tcp().await;
    // The first connection's permit is taken once it is accepted; poll until
    // the second is refused.
    tokio::time::timeout(WAIT, async {
        loop {
            let mut c = srv.tcp().await;
            if let Some(f) = c.try_frame().await {
                assert_eq!(f.header("message"), Some("too many connections"));
                break;
            }
        }
    })
    .await
    .expect("refused");
}

#[tokio::test]
async fn inbound_rate_slows_reading_and_drops_nothing() {
    let srv = TestServer::start_with(|c| {
        c.stomp.inbound_frames_per_sec = 200;
        c.stomp.inbound_burst = 10;
    })
    .await;
    let (mut c, _) = srv.user("rate").await;
    c.subscribe("1", "/topic/rate", "auto").await;
    let mut burst = Vec::new();
    for i in 0..60 {
        burst.extend_from_slice(format!("SEND\ndestination:/topic/rate\n\n{i}\0").as_bytes());
    }
    c.send(&burst).await;
    for i in 0..60 {
        assert_eq!(c.expect(Command::Message).await.body, i.to_string());
    }
}

#[tokio::test]
async fn slow_consumer_is_disconnected_while_a_fast_one_keeps_receiving() {
    let srv = TestServer::start_with(|c| c.stomp.outbound_queue_bytes = 64 * 1024).await;
    let (mut slow, _) = srv.user("slow").await;
    let (mut fast, _) = srv.user("fast").await;
    let (mut publisher, _) = srv.user("pub").await;
    slow.subscribe("1", "/topic/firehose", "auto").await;
    fast.subscribe("1", "/topic/firehose", "auto").await;
    // `slow` stops reading; `fast` reads each batch before the next is sent.
    // Far more is published than the kernel's socket buffers can absorb, so
    // the slow consumer's queue must pass its 64 KiB bound.
    let body = "p".repeat(8 * 1024);
    let (batches, per_batch) = (500, 4);
    for b in 0..batches {
        let mut burst = Vec::new();
        for i in 0..per_batch {
            burst.extend_from_slice(
                format!(
                    "SEND\ndestination:/topic/firehose\nn:{}\n\n{body}\0",
                    b * per_batch + i
                )
                .as_bytes(),
            );
        }
        publisher.send(&burst).await;
        for i in 0..per_batch {
            let m = fast.expect(Command::Message).await;
            assert_eq!(
                m.header("n"),
                Some((b * per_batch + i).to_string().as_str())
            );
        }
    }
    // The slow consumer's stream ends with ERROR slow consumer.
    let mut last = None;
    while let Some(f) = slow.try_frame().await {
        last = Some(f);
    }
    let last = last.expect("some frames");
    assert_eq!(last.command, Command::Error);
    assert_eq!(last.header("message"), Some("slow consumer"));
}

// ---- shutdown

#[tokio::test]
async fn shutdown_tells_tcp_clients_and_finishes() {
    let mut srv = TestServer::start().await;
    let (mut c, _) = srv.user("bye").await;
    srv.running.shutdown();
    c.expect_error("server shutting down").await;
    tokio::time::timeout(WAIT, srv.running.wait())
        .await
        .expect("drained in time");
}
