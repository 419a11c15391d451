//! STOMP over WebSocket: subprotocol negotiation, the upgrade's
//! `access_token`, frames split across and coalesced into WebSocket
//! messages, text and binary messages, leniency, and close codes.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use stomp_codec::Command;
use support::{Closed, TestServer, Transport};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn subprotocol_negotiation_picks_the_highest_offered() {
    let srv = TestServer::start().await;
    let (_, chosen) = srv
        .try_ws("v10.stomp, v11.stomp, v12.stomp", "")
        .await
        .unwrap();
    assert_eq!(chosen.as_deref(), Some("v12.stomp"));
    let (_, chosen) = srv.try_ws("v10.stomp", "").await.unwrap();
    assert_eq!(chosen.as_deref(), Some("v10.stomp"));
}

#[tokio::test]
async fn subprotocol_sets_the_version_when_connect_has_no_accept_version() {
    let srv = TestServer::start().await;
    srv.register("wsv").await;
    let mut c = srv.ws("v11.stomp", "").await;
    c.send(b"CONNECT\nlogin:wsv\npasscode:password-wsv\n\n\0")
        .await;
    assert_eq!(
        c.expect(Command::Connected).await.header("version"),
        Some("1.1")
    );
}

#[tokio::test]
async fn no_subprotocol_still_works() {
    let srv = TestServer::start().await;
    srv.register("plain").await;
    let (mut c, chosen) = srv.try_ws("", "").await.unwrap();
    assert_eq!(chosen, None);
    assert_eq!(
        c.connect_password("plain").await.header("version"),
        Some("1.2")
    );
}

#[tokio::test]
async fn access_token_on_the_upgrade_url_authenticates() {
    let srv = TestServer::start().await;
    let (id, token, _) = srv.register("qtok").await;
    let mut c = srv.ws("v12.stomp", &format!("?access_token={token}")).await;
    c.send(b"CONNECT\naccept-version:1.2\nhost:h\n\n\0").await;
    assert_eq!(
        c.expect(Command::Connected).await.header("user-id"),
        Some(id.as_str())
    );
    let mut bad = srv.ws("v12.stomp", "?access_token=garbage").await;
    bad.send(b"CONNECT\naccept-version:1.2\nhost:h\n\n\0").await;
    bad.expect_error("authentication failed").await;
}

#[tokio::test]
async fn one_frame_across_several_messages_and_several_frames_in_one() {
    let srv = TestServer::start().await;
    srv.register("split").await;
    let mut c = srv.ws("v12.stomp", "").await;
    c.connect_password("split").await;
    c.send(b"SUBSCRIBE\nid:1\ndestination:/topic/ws\n\n\0SEND\ndestination:/topic/ws\n\none\0SEND\ndestination:/topic/ws\n\ntwo\0")
        .await;
    assert_eq!(c.expect(Command::Message).await.body, "one");
    assert_eq!(c.expect(Command::Message).await.body, "two");
    for part in [
        &b"SEND\ndesti"[..],
        b"nation:/topic/ws\ncontent-le",
        b"ngth:5\n\nthr",
        b"ee\0",
    ] {
        c.send(part).await;
    }
    assert_eq!(c.expect(Command::Message).await.body, "three");
}

#[tokio::test]
async fn binary_messages_carry_nul_bodies_and_non_utf8_goes_out_binary() {
    let srv = TestServer::start().await;
    srv.register("binws").await;
    let mut c = srv.ws("v12.stomp", "").await;
    c.connect_password("binws").await;
    c.subscribe("1", "/topic/bin", "auto").await;
    let body: &[u8] = &[0, 159, 146, 150, 0, 255];
    let mut f = format!(
        "SEND\ndestination:/topic/bin\ncontent-length:{}\n\n",
        body.len()
    )
    .into_bytes();
    f.extend_from_slice(body);
    f.push(0);
    c.send_binary(&f).await;
    // Read the raw WebSocket message to check its type.
    let Transport::Ws(ws) = &mut c.transport else {
        unreachable!()
    };
    let msg = tokio::time::timeout(support::WAIT, async {
        loop {
            match ws.next().await.expect("open").expect("ok") {
                m @ (Message::Binary(_) | Message::Text(_)) => return m,
                _ => continue,
            }
        }
    })
    .await
    .unwrap();
    let Message::Binary(bytes) = msg else {
        panic!("a non-UTF-8 frame must be a binary message, got {msg:?}")
    };
    assert!(bytes.ends_with(&[0, 159, 146, 150, 0, 255, 0]));
}

#[tokio::test]
async fn utf8_frames_go_out_as_text_messages() {
    let srv = TestServer::start().await;
    srv.register("textws").await;
    let mut c = srv.ws("v12.stomp", "").await;
    c.send(b"CONNECT\naccept-version:1.2\nhost:h\nlogin:textws\npasscode:password-textws\n\n\0")
        .await;
    let Transport::Ws(ws) = &mut c.transport else {
        unreachable!()
    };
    let msg = ws.next().await.unwrap().unwrap();
    assert!(
        matches!(msg, Message::Text(ref t) if t.starts_with("CONNECTED\n")),
        "{msg:?}"
    );
}

#[tokio::test]
async fn missing_nul_is_an_incomplete_frame_by_default() {
    let srv = TestServer::start().await;
    srv.register("strict").await;
    let mut c = srv.ws("v12.stomp", "").await;
    c.connect_password("strict").await;
    c.send(b"SEND\ndestination:/topic/x\nreceipt:r\n\nno nul")
        .await;
    assert!(c.quiet_for(Duration::from_millis(150)).await);
}

#[tokio::test]
async fn missing_nul_at_message_end_is_accepted_when_lenient() {
    let srv = TestServer::start_with(|c| c.stomp.ws_lenient_missing_nul = true).await;
    srv.register("lenient").await;
    let mut c = srv.ws("v12.stomp", "").await;
    c.send(b"CONNECT\naccept-version:1.2\nhost:h\nlogin:lenient\npasscode:password-lenient\n\n")
        .await;
    c.expect(Command::Connected).await;
    c.send(b"SUBSCRIBE\nid:1\ndestination:/topic/l\nreceipt:s\n\n")
        .await;
    c.expect(Command::Receipt).await;
    c.send(b"SEND\ndestination:/topic/l\n\nno nul").await;
    assert_eq!(c.expect(Command::Message).await.body, "no nul");
}

#[tokio::test]
async fn protocol_error_sends_error_then_closes_the_websocket() {
    let srv = TestServer::start().await;
    srv.register("wserr").await;
    let mut c = srv.ws("v12.stomp", "").await;
    c.connect_password("wserr").await;
    c.send(b"NOPE\n\n\0").await;
    c.expect_error("malformed frame").await;
    assert_eq!(c.closed, Some(Closed::WsClose(1000)));
}

#[tokio::test]
async fn shutdown_sends_error_and_close_1001() {
    let srv = TestServer::start().await;
    srv.register("wsbye").await;
    let mut c = srv.ws("v12.stomp", "").await;
    c.connect_password("wsbye").await;
    srv.running.shutdown();
    c.expect_error("server shutting down").await;
    assert_eq!(c.closed, Some(Closed::WsClose(1001)));
}

#[tokio::test]
async fn websocket_and_tcp_clients_share_destinations() {
    let srv = TestServer::start().await;
    srv.register("mixws").await;
    let mut w = srv.ws("v12.stomp", "").await;
    w.connect_password("mixws").await;
    w.subscribe("1", "/topic/mixed", "auto").await;
    let (mut t, _) = srv.user("mixtcp").await;
    t.send_to("/topic/mixed", "from tcp").await;
    assert_eq!(w.expect(Command::Message).await.body, "from tcp");
}
