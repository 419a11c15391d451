//! The Kafka bus against a real broker (tansu in CI): round trip, offsets
//! committed only by `commit()`, per-key order, the persister as a consumer
//! group across a rebalance, and a server on PostgreSQL with `bus = "kafka"`.
//!
//! Broker: `STOMPLINE_TEST_KAFKA_BROKERS` (default `127.0.0.1:9092`). Each
//! test uses topics and a group of its own.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use stompline::bus::kafka::{ensure_topics, KafkaBus, KafkaConsumer};
use stompline::bus::{Bus, BusConsumer, SendCommand};
use stompline::config::KafkaConfig;
use stompline::store::{self, NewMessage};

/// Generous: joining a group can take several seconds.
const FIRST_POLL: Duration = Duration::from_secs(60);

fn command(cid: &str, sender: &str, body: &str) -> SendCommand {
    SendCommand {
        request_id: store::new_id(),
        origin: "test".into(),
        message: NewMessage {
            id: store::new_id(),
            conversation_id: cid.to_owned(),
            sender_id: sender.to_owned(),
            client_msg_id: None,
            body: body.to_owned(),
            created_at: store::now(),
        },
    }
}

async fn setup(partitions: u32) -> Option<(KafkaConfig, KafkaBus)> {
    let config = support::kafka::config(partitions)?;
    ensure_topics(&config).await.expect("topics created");
    let bus = KafkaBus::new(&config).expect("producer");
    Some((config, bus))
}

/// Reads until `n` commands arrived (without committing).
async fn read(consumer: &mut KafkaConsumer, n: usize) -> Vec<SendCommand> {
    let mut got = Vec::new();
    while got.len() < n {
        let batch = tokio::time::timeout(FIRST_POLL, consumer.next_batch(100))
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} commands arrived", got.len()))
            .expect("next_batch");
        got.extend(batch);
    }
    got
}

fn bodies(cmds: &[SendCommand]) -> Vec<String> {
    cmds.iter().map(|c| c.message.body.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_make_the_round_trip() {
    let Some((config, bus)) = setup(3).await else {
        return;
    };
    let sent: Vec<SendCommand> = (0..20)
        .map(|i| command(&format!("c{}", i % 4), "u1", &format!("m{i}")))
        .collect();
    for c in &sent {
        bus.append(c.clone()).await.expect("append");
    }
    let mut consumer = KafkaConsumer::new(&config).expect("consumer");
    let got = read(&mut consumer, sent.len()).await;
    consumer.commit().await.expect("commit");
    let by_id: HashMap<&str, &SendCommand> =
        got.iter().map(|c| (c.message.id.as_str(), c)).collect();
    assert_eq!(by_id.len(), sent.len(), "no duplicates");
    for c in &sent {
        let g = by_id
            .get(c.message.id.as_str())
            .expect("every command arrives");
        assert_eq!(g.request_id, c.request_id);
        assert_eq!(g.message.body, c.message.body);
        assert_eq!(g.message.conversation_id, c.message.conversation_id);
        assert_eq!(g.message.created_at, c.message.created_at);
    }
    assert_eq!(bus.ready().await.map(|r| r.is_ok()), Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_move_only_on_commit() {
    let Some((config, bus)) = setup(2).await else {
        return;
    };
    let first: Vec<SendCommand> = (0..5)
        .map(|i| command("c1", "u1", &format!("a{i}")))
        .collect();
    for c in &first {
        bus.append(c.clone()).await.expect("append");
    }
    // A persister that read the batch but never committed (it crashed
    // before its database commit) ...
    {
        let mut crashed = KafkaConsumer::new(&config).expect("consumer");
        assert_eq!(bodies(&read(&mut crashed, 5).await), bodies(&first));
    }
    // ... leaves it to the next member of the group.
    let mut second = KafkaConsumer::new(&config).expect("consumer");
    assert_eq!(bodies(&read(&mut second, 5).await), bodies(&first));
    second.commit().await.expect("commit");
    drop(second);
    // After a commit, the next member starts behind it.
    let later = command("c1", "u1", "after");
    bus.append(later.clone()).await.expect("append");
    let mut third = KafkaConsumer::new(&config).expect("consumer");
    assert_eq!(bodies(&read(&mut third, 1).await), vec!["after".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_conversation_keeps_its_order() {
    let Some((config, bus)) = setup(4).await else {
        return;
    };
    let bus = Arc::new(bus);
    // Three conversations appended concurrently, each in its own order.
    let mut tasks = Vec::new();
    for conv in 0..3 {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..60 {
                bus.append(command(&format!("conv{conv}"), "u", &i.to_string()))
                    .await
                    .expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("appender");
    }
    let mut consumer = KafkaConsumer::new(&config).expect("consumer");
    let got = read(&mut consumer, 180).await;
    let mut per_conv: HashMap<String, Vec<u32>> = HashMap::new();
    for c in &got {
        per_conv
            .entry(c.message.conversation_id.clone())
            .or_default()
            .push(c.message.body.parse().expect("number"));
    }
    for conv in 0..3 {
        let seen = &per_conv[&format!("conv{conv}")];
        assert_eq!(*seen, (0..60).collect::<Vec<u32>>(), "conv{conv} in order");
    }
    let ids: HashSet<&str> = got.iter().map(|c| c.message.id.as_str()).collect();
    assert_eq!(ids.len(), 180);
}

/// A migrated PostgreSQL store on a scratch database (dropped by the
/// caller), or `None` when PostgreSQL is not available and not required.
async fn scratch_store() -> Option<(support::pg::PgDatabase, Arc<dyn store::Store>)> {
    let db = support::pg::PgDatabase::create().await?;
    let dir = std::env::temp_dir();
    let s = store::open(&db.url, &dir, 8).await.expect("open postgres");
    s.migrate().await.expect("migrate");
    Some((db, s))
}

async fn group_in(s: &dyn store::Store, members: &[String]) -> String {
    let mut list = vec![(members[0].clone(), store::Role::Owner)];
    list.extend(
        members[1..]
            .iter()
            .map(|m| (m.clone(), store::Role::Member)),
    );
    s.create_conversation(
        store::NewConversation {
            id: store::new_id(),
            kind: store::ConversationKind::Group,
            name: Some("load".into()),
            created_by: members[0].clone(),
            created_at: store::now(),
            direct_key: None,
            members: list,
        },
        vec![],
    )
    .await
    .expect("group")
    .id
}

/// A consumer that counts what it handed out, to see which member of the
/// group did the work.
struct Counted {
    inner: KafkaConsumer,
    seen: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl BusConsumer for Counted {
    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Vec<SendCommand>, stompline::bus::BusError> {
        let b = self.inner.next_batch(max).await?;
        self.seen
            .fetch_add(b.len(), std::sync::atomic::Ordering::SeqCst);
        Ok(b)
    }

    async fn commit(&mut self) -> Result<(), stompline::bus::BusError> {
        self.inner.commit().await
    }
}

/// One persister of the group: its own consumer, the shared store.
fn persister(
    config: &KafkaConfig,
    s: &Arc<dyn store::Store>,
) -> (
    tokio::task::JoinHandle<()>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let consumer = Counted {
        inner: KafkaConsumer::new(config).expect("consumer"),
        seen: seen.clone(),
    };
    let (relay, _inbox) = stompline::relay::LocalRelay::new();
    let token = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(stompline::pipeline::run_persister(
        consumer,
        s.clone(),
        relay,
        None,
        token,
    ));
    (task, seen)
}

fn count(c: &std::sync::atomic::AtomicUsize) -> usize {
    c.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_under_load_loses_nothing_and_duplicates_nothing() {
    let Some((config, bus)) = setup(6).await else {
        return;
    };
    let Some((db, s)) = scratch_store().await else {
        return;
    };
    let mut users = Vec::new();
    for i in 0..2 {
        let u = s
            .create_user(store::NewUser {
                id: store::new_id(),
                username: format!("load{i}"),
                display_name: format!("load {i}"),
                email: None,
                phone: None,
                password_hash: None,
                created_at: store::now(),
            })
            .await
            .expect("user");
        users.push(u.id);
    }
    let mut convs = Vec::new();
    for _ in 0..6 {
        convs.push(group_in(&*s, &users).await);
    }
    let mut sent: HashMap<String, Vec<String>> = HashMap::new();
    let mut n = 0usize;
    let mut append = |n: &mut usize| {
        let cid = convs[*n % convs.len()].clone();
        let body = n.to_string();
        let mut cmd = command(&cid, &users[*n % 2], &body);
        cmd.message.client_msg_id = Some(format!("k{n}"));
        sent.entry(cid).or_default().push(body);
        *n += 1;
        cmd
    };
    // Phase 1: one instance does the work.
    let (first, first_seen) = persister(&config, &s);
    let deadline = tokio::time::Instant::now() + FIRST_POLL;
    while n < 100 || count(&first_seen) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first persister never read"
        );
        bus.append(append(&mut n)).await.expect("append");
    }
    // Phase 2: a second instance joins while sends flow, until the
    // rebalance gave it partitions.
    let (second, second_seen) = persister(&config, &s);
    let deadline = tokio::time::Instant::now() + FIRST_POLL;
    while count(&second_seen) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second persister never got partitions"
        );
        bus.append(append(&mut n)).await.expect("append");
    }
    // Phase 3: the first dies mid-work; whatever it read but had not
    // committed is read again by the second.
    let phase3 = n + 200;
    while n < phase3 {
        if n == phase3 - 150 {
            first.abort();
        }
        bus.append(append(&mut n)).await.expect("append");
    }
    let total = n;
    let _ = first.await;
    // Every send is stored exactly once, in the order it was appended.
    let deadline = tokio::time::Instant::now() + FIRST_POLL;
    loop {
        let mut stored = 0;
        for cid in &convs {
            stored += s
                .conversation(cid)
                .await
                .expect("conv")
                .map_or(0, |c| c.last_seq);
        }
        if stored as usize >= total {
            assert_eq!(stored as usize, total, "no duplicates");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {stored} of {total} stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for cid in &convs {
        let history = s.messages(cid, None, Some(0), 1000).await.expect("history");
        let seqs: Vec<i64> = history.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=history.len() as i64).collect::<Vec<_>>());
        let bodies_in_seq: Vec<String> = history.into_iter().map(|m| m.body).collect();
        assert_eq!(bodies_in_seq, sent[cid], "conversation {cid} in send order");
    }
    second.abort();
    db.drop_database().await;
}

/// Reads the domain-events topic from the start until `done` says enough.
async fn domain_events(
    config: &KafkaConfig,
    mut done: impl FnMut(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message as _;
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", format!("{}-reader", config.group_id))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("events consumer");
    let topic = stompline::bus::kafka::events_topic(config);
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut seen = Vec::new();
    while !done(&seen) {
        let m = tokio::time::timeout(FIRST_POLL, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("domain events missing; got {seen:#?}"))
            .expect("recv");
        let v: serde_json::Value =
            serde_json::from_slice(m.payload().unwrap_or_default()).expect("event json");
        assert_eq!(
            m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            v["conversationId"]
                .as_str()
                .or(v["userId"].as_str())
                .map(str::to_owned),
            "keyed by conversation, else user: {v}"
        );
        seen.push(v);
    }
    seen
}

async fn chat_send(
    c: &mut support::Client,
    cid: &str,
    body: &str,
    key: &str,
) -> stomp_codec::Frame {
    let payload =
        serde_json::json!({"conversationId": cid, "body": body, "clientMsgId": key}).to_string();
    c.send(
        format!("SEND\ndestination:/app/chat.send\ncontent-type:application/json\nreceipt:{key}\n\n{payload}\0")
            .as_bytes(),
    )
    .await;
    c.await_receipt(key).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_on_kafka_receipts_with_seq_and_stores_each_send_once() {
    let Some(k) = support::kafka::config(3) else {
        return;
    };
    let Some(mut t) = support::kafka::KafkaChat::start(k.clone()).await else {
        return;
    };
    let (cid, alice_id, bob_id) = (t.cid.clone(), t.alice_id.clone(), t.bob_id.clone());
    let chat = t.srv.running.shared.chat.clone();
    t.bob
        .subscribe("s", &format!("/topic/chat/{cid}"), "auto")
        .await;

    let mut ids = Vec::new();
    for i in 1..=10 {
        let r = chat_send(&mut t.alice, &cid, &format!("hello {i}"), &format!("k{i}")).await;
        assert_eq!(r.header("seq"), Some(i.to_string().as_str()), "{r:?}");
        ids.push(r.header("chat-message-id").expect("message id").to_owned());
    }
    // A retry of a send already stored answers with the original.
    let again = chat_send(&mut t.alice, &cid, "hello 3", "k3").await;
    assert_eq!(again.header("seq"), Some("3"));
    assert_eq!(again.header("chat-message-id"), Some(ids[2].as_str()));

    let mut delivered = Vec::new();
    while delivered.len() < 10 {
        let m = t.bob.frame().await;
        if m.command == stomp_codec::Command::Message {
            delivered.push(
                m.header("seq")
                    .expect("seq")
                    .parse::<i64>()
                    .expect("number"),
            );
        }
    }
    assert_eq!(delivered, (1..=10).collect::<Vec<_>>());
    let history = chat
        .history(&alice_id, &cid, None, None, Some(100))
        .await
        .expect("history");
    let stored: Vec<(i64, &str)> = history.iter().map(|m| (m.seq, m.body.as_str())).collect();
    let want: Vec<(i64, String)> = (1..=10).map(|i| (i, format!("hello {i}"))).collect();
    assert_eq!(
        stored,
        want.iter()
            .map(|(s, b)| (*s, b.as_str()))
            .collect::<Vec<_>>()
    );

    let ready: serde_json::Value = reqwest::get(format!("http://{}/readyz", t.srv.http))
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["checks"]["kafka"], "ok", "{ready}");

    // The outbox fed the domain-events topic.
    chat.mark_read(&bob_id, &cid, 10).await.expect("read");
    let edited = chat
        .edit(&alice_id, &ids[0], "hello again".into())
        .await
        .expect("edit");
    chat.delete(&alice_id, &ids[1]).await.expect("delete");
    let (carol_id, _, _) = t.srv.register("carol").await;
    let gid = chat
        .create_group(&alice_id, "trio", std::slice::from_ref(&bob_id))
        .await
        .expect("group")
        .id;
    chat.add_members(&alice_id, &gid, std::slice::from_ref(&carol_id))
        .await
        .expect("add");
    chat.remove_member(&alice_id, &gid, &bob_id)
        .await
        .expect("remove");
    let away = r#"{"status":"away"}"#;
    t.bob
        .send(format!("SEND\ndestination:/app/presence.set\ncontent-type:application/json\nreceipt:p\n\n{away}\0").as_bytes())
        .await;
    t.bob.await_receipt("p").await;
    let wanted = [
        "presence.changed",
        "conversation.created",
        "message.read",
        "message.edited",
        "message.deleted",
        "member.added",
        "member.removed",
        "user.registered",
    ];
    // Events of different keys may arrive in any order: wait for the
    // specific ones checked below.
    let events = domain_events(&k, |seen| {
        let created = seen
            .iter()
            .filter(|e| e["type"] == "message.created")
            .count();
        let has =
            |t: &str, field: &str, v: &str| seen.iter().any(|e| e["type"] == t && e[field] == v);
        created >= 10
            && wanted.iter().all(|t| seen.iter().any(|e| e["type"] == *t))
            && seen.iter().any(|e| {
                e["type"] == "user.registered" && e["data"]["user"]["id"] == carol_id.as_str()
            })
            && seen.iter().any(|e| {
                e["type"] == "presence.changed"
                    && e["userId"] == bob_id.as_str()
                    && e["data"]["status"] == "away"
            })
            && has("member.added", "userId", &carol_id)
            && has("conversation.created", "conversationId", &cid)
            && has("member.removed", "userId", &bob_id)
    })
    .await;
    let created: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "message.created")
        .map(|e| e["data"]["message"]["id"].as_str().expect("id"))
        .collect();
    let unique: HashSet<&str> = created.iter().copied().collect();
    assert_eq!(
        unique,
        ids.iter().map(String::as_str).collect::<HashSet<_>>()
    );
    let conv = events
        .iter()
        .find(|e| e["type"] == "conversation.created" && e["conversationId"] == cid.as_str())
        .expect("conversation.created");
    assert_eq!(conv["data"]["conversation"]["id"], cid.as_str());
    let of = |t: &'static str| events.iter().filter(move |e| e["type"] == t);
    let edit = of("message.edited").next().expect("edited");
    assert_eq!(edit["data"]["message"]["body"], "hello again");
    assert_eq!(
        edit["data"]["message"]["editedAt"].is_string(),
        edited.edited_at.is_some()
    );
    assert!(of("member.added")
        .any(|e| e["userId"] == carol_id.as_str() && e["conversationId"] == gid.as_str()));
    assert!(of("member.removed").any(|e| e["userId"] == bob_id.as_str()));
    assert!(of("user.registered").any(|e| e["data"]["user"]["id"] == carol_id.as_str()));
    assert!(of("presence.changed")
        .any(|e| e["userId"] == bob_id.as_str() && e["data"]["status"] == "away"));
    let read = of("message.read").next().expect("read");
    assert_eq!(read["data"]["upToSeq"], 10);
    let ids_of_events: HashSet<&str> = events
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids_of_events.len(), events.len(), "event ids are unique");
    assert_eq!(
        conv["data"]["conversation"]["members"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_brokers_do_not_answer_refuses_to_start_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = support::test_config(dir.path());
    config.bus = stompline::config::BusKind::Kafka;
    // Nothing listens on port 1.
    config.kafka = support::kafka::with_brokers("127.0.0.1:1", 1);
    let err = match stompline::server::start(config).await {
        Ok(_) => panic!("started without Kafka"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("message bus"), "{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
}
