//! Crash safety: the server is SIGKILLed while a client streams chat
//! messages with receipts; after a restart on the same data directory,
//! every message that got a RECEIPT is in the history exactly once, with the
//! seq its RECEIPT named, in order and without gaps.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use stomp_codec::Command;
use support::process::{history, register, ServerProcess};
use support::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_receipted_message_survives_a_sigkill_exactly_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("STOMPLINE_CHAT__RATE_PER_SEC", "0")];
    let mut server = ServerProcess::start(dir.path(), &env);
    let (_, alice_token) = register(&server.http, "crash-alice").await;
    let (bob_id, _) = register(&server.http, "crash-bob").await;
    let res = reqwest::Client::new()
        .post(format!("http://{}/api/conversations", server.http))
        .bearer_auth(&alice_token)
        .json(&serde_json::json!({"type": "direct", "memberIds": [bob_id]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let cid = res.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut c = Client::tcp(&server.stomp).await;
    c.connect_token(&alice_token).await;
    // Stream sends in windows of 20; kill the server once 150 receipts are in.
    let mut receipts: HashMap<String, (String, i64)> = HashMap::new();
    let mut sent = 0;
    'stream: loop {
        let mut burst = Vec::new();
        for _ in 0..20 {
            sent += 1;
            let payload =
                serde_json::json!({"conversationId": cid, "body": format!("m{sent}")}).to_string();
            burst.extend_from_slice(
                format!("SEND\ndestination:/app/chat.send\nreceipt:r{sent}\n\n{payload}\0")
                    .as_bytes(),
            );
        }
        if c.try_send(&burst).await.is_err() {
            break;
        }
        if receipts.len() >= 150 {
            server.kill();
        }
        // Read what has arrived, without waiting for all of it.
        loop {
            match tokio::time::timeout(
                Duration::from_millis(if receipts.len() >= 150 { 500 } else { 5 }),
                c.item(),
            )
            .await
            {
                Ok(Some(stomp_codec::Item::Frame(f))) if f.command == Command::Receipt => {
                    let body = f.header("receipt-id").unwrap().to_owned();
                    let id = f
                        .header("chat-message-id")
                        .expect("chat-message-id")
                        .to_owned();
                    let seq = f.header("seq").expect("seq").parse().unwrap();
                    receipts.insert(body, (id, seq));
                }
                Ok(Some(_)) => {}
                Ok(None) => break 'stream, // the server is gone
                Err(_) => break,
            }
        }
        assert!(sent < 20_000, "the server was never killed");
    }
    assert!(
        receipts.len() >= 150,
        "only {} receipts before the kill",
        receipts.len()
    );

    // Restart on the same data.
    let server = ServerProcess::start(dir.path(), &env);
    let items = history(&server.http, &alice_token, &cid).await;
    let by_id: HashMap<&str, (i64, &str)> = items
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap(),
                (m["seq"].as_i64().unwrap(), m["body"].as_str().unwrap()),
            )
        })
        .collect();
    assert_eq!(by_id.len(), items.len(), "a message id appears twice");
    let seqs: Vec<i64> = items.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "history is ordered and gapless");
    for (receipt, (id, seq)) in &receipts {
        let (stored_seq, body) = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("receipted {receipt} ({id}) lost"));
        assert_eq!(stored_seq, seq, "{receipt}");
        assert_eq!(*body, format!("m{}", &receipt[1..]), "{receipt}");
    }
    // Bodies are in the order they were sent.
    let order: Vec<i64> = items
        .iter()
        .map(|m| m["body"].as_str().unwrap()[1..].parse().unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "sent order kept");
}
