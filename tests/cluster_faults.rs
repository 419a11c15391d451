//! Faults under load, against real services: a server on PostgreSQL with
//! `bus = "kafka"` whose broker (a private tansu) stops answering while a
//! client sends.
//!
//! Each test ends with the same check: every message that received a
//! RECEIPT is in history exactly once, in order, and every subscribed
//! recipient got it (after dedupe by id).

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use stomp_codec::{Command, Frame};
use stompline::config::KafkaConfig;
use support::kafka::PrivateBroker;
use support::Client;

/// Longer than the bus's delivery timeout, so a send made while the
/// broker is frozen hears its outcome within it.
const OUTCOME_WAIT: Duration = Duration::from_secs(30);

/// How long a client retries one message before the test gives up.
const RETRY_FOR: Duration = Duration::from_secs(120);

/// What became of one SEND.
#[derive(Debug)]
enum Outcome {
    /// RECEIPT: (message id, seq).
    Receipt(String, i64),
    /// An application error on `/user/queue/errors` naming the receipt.
    Error(String),
    /// Neither within [`OUTCOME_WAIT`]: the send was lost before it was
    /// stored (a broker that lost its log); the client retries.
    Silent,
}

/// SENDs one chat message with a receipt and waits for its outcome;
/// everything else that arrives meanwhile is ignored (the sender's own
/// deliveries are not checked here).
async fn send(c: &mut Client, cid: &str, body: &str, key: &str, receipt: &str) -> Outcome {
    let payload =
        serde_json::json!({"conversationId": cid, "body": body, "clientMsgId": key}).to_string();
    c.send(
        format!("SEND\ndestination:/app/chat.send\ncontent-type:application/json\nreceipt:{receipt}\n\n{payload}\0")
            .as_bytes(),
    )
    .await;
    let deadline = tokio::time::Instant::now() + OUTCOME_WAIT;
    loop {
        let Ok(f) = tokio::time::timeout_at(deadline, next(c)).await else {
            return Outcome::Silent;
        };
        match f.command {
            Command::Receipt if f.header("receipt-id") == Some(receipt) => {
                let id = f.header("chat-message-id").expect("message id").to_owned();
                let seq = f.header("seq").expect("seq").parse().expect("seq number");
                return Outcome::Receipt(id, seq);
            }
            Command::Message
                if f.header("destination") == Some("/user/queue/errors")
                    && f.header("receipt-id") == Some(receipt) =>
            {
                return Outcome::Error(String::from_utf8_lossy(&f.body).into_owned());
            }
            Command::Error => panic!("the server ended the session: {f:?}"),
            _ => {}
        }
    }
}

async fn next(c: &mut Client) -> Frame {
    loop {
        match c.item().await {
            Some(stomp_codec::Item::Frame(f)) => return f,
            Some(stomp_codec::Item::HeartBeat) => {}
            None => panic!("the server closed the connection"),
        }
    }
}

/// What the sending client knows, for the final check.
#[derive(Default)]
struct Ledger {
    /// key -> (message id, seq) once a RECEIPT came.
    receipted: HashMap<String, (String, i64)>,
    /// Keys whose first attempt was answered by a RECEIPT, in send order.
    first_try: Vec<String>,
    errors: usize,
    attempts: usize,
}

impl Ledger {
    /// One attempt at message `i`; true when it was receipted.
    async fn attempt(&mut self, c: &mut Client, cid: &str, i: usize, first: bool) -> bool {
        let key = format!("k{i}");
        self.attempts += 1;
        let receipt = format!("r{}", self.attempts);
        match send(c, cid, &format!("m{i}"), &key, &receipt).await {
            Outcome::Receipt(id, seq) => {
                if let Some((was, _)) = self.receipted.insert(key.clone(), (id.clone(), seq)) {
                    assert_eq!(was, id, "a retry of {key} answers with the original");
                }
                if first {
                    self.first_try.push(key);
                }
                true
            }
            Outcome::Error(body) => {
                let e: serde_json::Value = serde_json::from_str(&body).expect("error json");
                assert!(e["code"].is_string(), "{e}");
                self.errors += 1;
                false
            }
            Outcome::Silent => false,
        }
    }

    /// Sends message `i`, retrying with the same clientMsgId until it is
    /// receipted (the broker may or may not have taken a failed try).
    async fn until_stored(&mut self, c: &mut Client, cid: &str, i: usize, first: bool) {
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        let mut first = first;
        while !self.attempt(c, cid, i, first).await {
            first = false;
            assert!(tokio::time::Instant::now() < deadline, "k{i} never stored");
        }
    }
}

/// Partitions of the test's messages topic.
const PARTITIONS: u32 = 3;

/// A server on `kafka` with the sender listening for errors and the
/// recipient subscribed, after 20 sends stored while the broker answers.
async fn steady(kafka: KafkaConfig) -> Option<(support::kafka::KafkaChat, String, Ledger)> {
    let mut t = support::kafka::KafkaChat::start(kafka).await?;
    let cid = t.cid.clone();
    t.alice
        .subscribe("errors", "/user/queue/errors", "auto")
        .await;
    t.bob
        .subscribe("s", &format!("/topic/chat/{cid}"), "auto")
        .await;
    let mut ledger = Ledger::default();
    for i in 0..20 {
        assert!(
            ledger.attempt(&mut t.alice, &cid, i, true).await,
            "broker up: k{i} stored"
        );
    }
    Some((t, cid, ledger))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_kafka_broker_delays_or_fails_sends_and_loses_no_receipted_message() {
    let Some(broker) = PrivateBroker::start() else {
        return;
    };
    let mut kafka = support::kafka::with_brokers(&broker.brokers, PARTITIONS);
    // Shorter than the freeze: the coordinator evicts the persister's
    // member meanwhile, and the group has to be formed anew.
    kafka.session_timeout_ms = 10_000;
    let Some((mut t, cid, mut ledger)) = steady(kafka.clone()).await else {
        return;
    };
    // The broker stops answering: sends wait, then fail; none gets a
    // RECEIPT while nothing can be stored.
    broker.freeze();
    for i in 20..23 {
        assert!(
            !ledger.attempt(&mut t.alice, &cid, i, true).await,
            "a send while the broker is frozen must not be receipted"
        );
    }
    broker.thaw();
    // The client retries what failed, then sends on.
    for i in 20..40 {
        ledger.until_stored(&mut t.alice, &cid, i, i >= 23).await;
    }
    assert!(ledger.errors >= 3, "the frozen broker failed sends");
    assert_eq!(ledger.receipted.len(), 40);

    check(&mut t, &ledger).await;
    every_partition_consumed(&mut t, &kafka).await;
    t.finish().await;
}

/// Sends to new conversations until each partition of the messages topic
/// has carried one; every send must be stored (the persister owns every
/// partition again, not only the one of the conversation checked so far).
async fn every_partition_consumed(t: &mut support::kafka::KafkaChat, kafka: &KafkaConfig) {
    let chat = t.srv.running.shared.chat.clone();
    let mut before = support::kafka::end_offsets(kafka).await;
    let mut carried = HashSet::new();
    for n in 0.. {
        if carried.len() == before.len() {
            return;
        }
        assert!(n < 40, "no send went to partitions other than {carried:?}");
        let group = chat
            .create_group(&t.alice_id, &format!("p{n}"), &[])
            .await
            .expect("group")
            .id;
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let receipt = format!("p{n}-{attempt}");
            match send(&mut t.alice, &group, "hello", &format!("p{n}"), &receipt).await {
                Outcome::Receipt(..) => break,
                outcome => assert!(
                    tokio::time::Instant::now() < deadline,
                    "a send to group {n} was never stored: {outcome:?}"
                ),
            }
        }
        let after = support::kafka::end_offsets(kafka).await;
        carried.extend((0..after.len()).filter(|p| after[*p] > before[*p]));
        before = after;
    }
}

/// Every message that received a RECEIPT is in history exactly once, in
/// order, and every subscribed recipient got it (after dedupe by id).
async fn check(t: &mut support::kafka::KafkaChat, ledger: &Ledger) {
    let chat = t.srv.running.shared.chat.clone();
    let (cid, alice_id) = (t.cid.clone(), t.alice_id.clone());
    // Every receipted message is in history exactly once, with the seq of
    // its RECEIPT, and history has no gap.
    let history = chat
        .history(&alice_id, &cid, None, None, Some(100))
        .await
        .expect("history");
    let seqs: Vec<i64> = history.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=history.len() as i64).collect::<Vec<_>>());
    let by_key: HashMap<&str, (&str, i64)> = history
        .iter()
        .map(|m| {
            (
                m.client_msg_id.as_deref().expect("clientMsgId"),
                (m.id.as_str(), m.seq),
            )
        })
        .collect();
    assert_eq!(by_key.len(), history.len(), "each clientMsgId once");
    for (key, (id, seq)) in &ledger.receipted {
        assert_eq!(
            by_key.get(key.as_str()),
            Some(&(id.as_str(), *seq)),
            "{key}"
        );
    }
    // In order: what was receipted on the first try has seqs in send order.
    let first_seqs: Vec<i64> = ledger
        .first_try
        .iter()
        .map(|k| ledger.receipted[k].1)
        .collect();
    let mut sorted = first_seqs.clone();
    sorted.sort_unstable();
    assert_eq!(first_seqs, sorted, "first-try sends stored in send order");

    // The subscribed recipient got every receipted message, in seq order.
    let want: HashSet<&str> = ledger
        .receipted
        .values()
        .map(|(id, _)| id.as_str())
        .collect();
    let mut got: HashSet<String> = HashSet::new();
    let mut last = 0;
    let deadline = tokio::time::Instant::now() + OUTCOME_WAIT;
    while !want.iter().all(|id| got.contains(*id)) {
        let f = tokio::time::timeout_at(deadline, next(&mut t.bob))
            .await
            .unwrap_or_else(|_| panic!("bob got {} of {} messages", got.len(), want.len()));
        if f.command != Command::Message {
            continue;
        }
        let id = f.header("chat-message-id").expect("message id").to_owned();
        if got.insert(id) {
            let seq: i64 = f.header("seq").expect("seq").parse().expect("seq");
            assert!(seq > last, "delivered in seq order: {seq} after {last}");
            last = seq;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kafka_broker_killed_and_restarted_empty_loses_no_receipted_message() {
    let Some(mut broker) = PrivateBroker::start() else {
        return;
    };
    let kafka = support::kafka::with_brokers(&broker.brokers, PARTITIONS);
    let Some((mut t, cid, mut ledger)) = steady(kafka).await else {
        return;
    };
    // The broker dies and comes back empty (in memory: topics, log and
    // group offsets gone). Sends meanwhile fail or go unanswered; the
    // clients retry until the bus has recovered.
    broker.stop();
    assert!(
        !ledger.attempt(&mut t.alice, &cid, 20, true).await,
        "no RECEIPT while down"
    );
    assert!(broker.restart(), "tansu restarts");
    for i in 20..40 {
        ledger.until_stored(&mut t.alice, &cid, i, i > 20).await;
    }
    assert_eq!(ledger.receipted.len(), 40);
    check(&mut t, &ledger).await;
    t.finish().await;
}
