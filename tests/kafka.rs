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
