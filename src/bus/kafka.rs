//! The bus on Kafka (`bus = "kafka"`).
//!
//! - Sends go to `<prefix>messages`, keyed by conversation id, from an
//!   idempotent producer with `acks=all`: [`KafkaBus::append`] returns only
//!   once the broker acknowledged the record, or fails after
//!   [`DELIVERY_TIMEOUT`]. It never reports success for a record the broker
//!   did not take.
//! - Every instance's persister is a member of the consumer group
//!   `kafka.group_id`. [`KafkaConsumer`] hands out batches and commits their
//!   offsets only in [`BusConsumer::commit`], which the persister calls after
//!   its database commit. A rebalance therefore never commits anything not
//!   stored; the new owner of a partition may read a batch again, which the
//!   store's idempotent insert (by message id and `(sender, clientMsgId)`)
//!   makes invisible.
//! - Domain events go to `<prefix>events` ([`KafkaEvents`]).
//!
//! Topics are created at start with the configured partitions and
//! replication factor when missing ([`ensure_topics`]).
//!
//! A broker that lost its state (a restarted in-memory broker, a cluster
//! rebuilt from scratch) leaves clients that cannot recover by themselves:
//! the topics are gone and the idempotent producer's id is unknown or
//! taken. When sends keep failing, or the consumer keeps failing for
//! [`CONSUMER_REBUILD_AFTER`], the topics are ensured again and the client
//! is replaced (the producer at most once per [`REBUILD_EVERY`]). A
//! consumer that lost every broker connection is dropped at once and
//! replaced when the broker answers: librdkafka 2.12.1 was seen to crash
//! when an old consumer met a recreated topic. A consumer that holds no
//! partition assignment for long while the broker answers is replaced too
//! (`KafkaConsumer::check_assignment`), and so is one whose group leaves a
//! partition without progress for long while its own partitions progress
//! ([`super::stall`], watched by [`watch_stalls`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::events::{DomainEvent, EventSink};
use super::stall::{Reading, StallWatch};
use super::{Bus, BusConsumer, BusError, SendCommand};
use crate::config::KafkaConfig;
use crate::metrics::names;

/// Longest an append waits for the broker's acknowledgement (including
/// time in the producer's queue while the broker is unreachable). A chat
/// SEND whose append fails is answered with an error, never a RECEIPT.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a metadata or admin request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Least time between two replacements of a client.
const REBUILD_EVERY: Duration = Duration::from_secs(5);

/// How long the consumer may fail without a record before it is replaced.
pub const CONSUMER_REBUILD_AFTER: Duration = Duration::from_secs(10);

/// How often a consumer waiting for a record checks that it holds an
/// assignment.
const ASSIGNMENT_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Longest the check that the broker answers waits.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a member may hold no assignment, with the broker answering,
/// before it is replaced: a rebalance normally completes within the
/// session timeout (by then the members that stopped answering are
/// evicted).
fn unassigned_limit(config: &KafkaConfig) -> Duration {
    Duration::from_millis(u64::from(config.session_timeout_ms)) + CONSUMER_REBUILD_AFTER
}

/// How often every partition's committed offset and end are read to find
/// partitions nobody consumes.
const STALL_CHECK_EVERY: Duration = Duration::from_secs(5);

/// How often librdkafka reports statistics (consumer lag).
const STATS_INTERVAL_MS: &str = "5000";

/// Name of the messages topic.
pub fn messages_topic(config: &KafkaConfig) -> String {
    format!("{}messages", config.topic_prefix)
}

/// Name of the domain-events topic.
pub fn events_topic(config: &KafkaConfig) -> String {
    format!("{}events", config.topic_prefix)
}

fn backend(e: impl std::fmt::Display) -> BusError {
    BusError::Backend(e.to_string())
}

fn base_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("client.id", "stompline")
        // Quiet about a broker that went away: the operations that need it
        // report the failure themselves.
        .set("log.connection.close", "false");
    c
}

/// Creates the messages and events topics when they do not exist.
pub async fn ensure_topics(config: &KafkaConfig) -> Result<(), BusError> {
    let admin: AdminClient<DefaultClientContext> = base_config(config)
        .create()
        .map_err(|e| backend(format!("creating the Kafka admin client: {e}")))?;
    let names = [messages_topic(config), events_topic(config)];
    let partitions = i32::try_from(config.partitions).unwrap_or(i32::MAX);
    let replication = i32::try_from(config.replication_factor).unwrap_or(i32::MAX);
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(replication)))
        .collect();
    let opts = AdminOptions::new().request_timeout(Some(Timeout::After(REQUEST_TIMEOUT)));
    let results = tokio::time::timeout(
        REQUEST_TIMEOUT + Duration::from_secs(2),
        admin.create_topics(&topics, &opts),
    )
    .await
    .map_err(|_| {
        backend(format!(
            "Kafka at {} did not answer within {}s",
            config.brokers,
            REQUEST_TIMEOUT.as_secs()
        ))
    })?
    .map_err(|e| backend(format!("creating topics on {}: {e}", config.brokers)))?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, partitions, "created Kafka topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(backend(format!("creating topic {name}: {code}")));
            }
        }
    }
    Ok(())
}

fn producer(config: &KafkaConfig) -> Result<FutureProducer, BusError> {
    base_config(config)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            DELIVERY_TIMEOUT.as_millis().to_string(),
        )
        // A short linger lets concurrent sends share a produce request.
        .set("linger.ms", "2")
        .create()
        .map_err(|e| backend(format!("creating the Kafka producer: {e}")))
}

/// The producer shared by the messages and events topics, replaced when it
/// can no longer deliver.
pub struct Producing {
    config: KafkaConfig,
    producer: parking_lot::RwLock<FutureProducer>,
    last_rebuild: tokio::sync::Mutex<Option<std::time::Instant>>,
}

impl Producing {
    /// A producer for `config` (connects lazily).
    pub fn new(config: &KafkaConfig) -> Result<Arc<Producing>, BusError> {
        Ok(Arc::new(Producing {
            config: config.clone(),
            producer: parking_lot::RwLock::new(producer(config)?),
            last_rebuild: tokio::sync::Mutex::new(None),
        }))
    }

    fn current(&self) -> FutureProducer {
        self.producer.read().clone()
    }

    /// Sends one record and waits for the broker's acknowledgement.
    async fn send(
        self: &Arc<Self>,
        topic: &str,
        key: &str,
        payload: &[u8],
    ) -> Result<(), BusError> {
        let producer = self.current();
        let record = FutureRecord::to(topic).key(key).payload(payload);
        // The queue timeout bounds the wait for room in a full producer
        // queue; `message.timeout.ms` bounds the wait for the broker.
        match producer.send(record, DELIVERY_TIMEOUT).await {
            Ok(_) => Ok(()),
            Err((e, _)) => {
                metrics::counter!(names::KAFKA_PRODUCE_FAILURES).increment(1);
                let message = format!("Kafka did not take the record: {e}");
                // In the background: the sender hears of the failure now.
                tokio::spawn(self.clone().recover(producer, e));
                Err(backend(message))
            }
        }
    }

    /// After a failed send: replaces the producer when it cannot recover
    /// by itself and the broker answers again.
    async fn recover(self: Arc<Self>, failed: FutureProducer, e: KafkaError) {
        let stuck = failed.client().fatal_error().is_some()
            || matches!(
                e.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::MessageTimedOut
                        | RDKafkaErrorCode::ProducerFenced
                        | RDKafkaErrorCode::UnknownTopicOrPartition
                        | RDKafkaErrorCode::UnknownProducerId
                        | RDKafkaErrorCode::OutOfOrderSequenceNumber
                        | RDKafkaErrorCode::InvalidProducerEpoch
                        | RDKafkaErrorCode::Fatal
                )
            );
        if !stuck {
            return;
        }
        // One recovery at a time; sends failing meanwhile leave it to it.
        let Ok(mut last) = self.last_rebuild.try_lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < REBUILD_EVERY) {
            return;
        }
        *last = Some(std::time::Instant::now());
        // Still down: the current producer reconnects by itself.
        if ensure_topics(&self.config).await.is_err() {
            return;
        }
        match producer(&self.config) {
            Ok(fresh) => {
                *self.producer.write() = fresh;
                metrics::counter!(names::KAFKA_CLIENT_REBUILDS, "client" => "producer")
                    .increment(1);
                tracing::warn!(error = %e, "replaced the Kafka producer");
            }
            Err(e) => tracing::warn!(error = %e, "replacing the Kafka producer failed"),
        }
    }
}

/// The producing side: `<prefix>messages`, keyed by conversation.
pub struct KafkaBus {
    producing: Arc<Producing>,
    topic: String,
}

impl KafkaBus {
    /// A producer for `config` (connects lazily).
    pub fn new(config: &KafkaConfig) -> Result<KafkaBus, BusError> {
        Ok(KafkaBus {
            producing: Producing::new(config)?,
            topic: messages_topic(config),
        })
    }

    /// The producer, shared with [`KafkaEvents`].
    pub fn producing(&self) -> Arc<Producing> {
        self.producing.clone()
    }
}

#[async_trait]
impl Bus for KafkaBus {
    async fn append(&self, cmd: SendCommand) -> Result<(), BusError> {
        self.producing
            .send(&self.topic, &cmd.message.conversation_id, &cmd.encode())
            .await
    }

    async fn ready(&self) -> Option<Result<(), BusError>> {
        let producer = self.producing.current();
        let topic = self.topic.clone();
        let probe = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Timeout::After(Duration::from_secs(2)))
                .map_err(backend)
                .and_then(|m| {
                    let t = m
                        .topics()
                        .first()
                        .ok_or_else(|| backend("no topic metadata"))?;
                    match t.error() {
                        None => Ok(()),
                        Some(e) => Err(backend(format!("topic {topic}: {e:?}"))),
                    }
                })
        });
        Some(probe.await.unwrap_or_else(|e| Err(backend(e))))
    }
}

/// The domain-events topic.
pub struct KafkaEvents {
    producing: Arc<Producing>,
    topic: String,
}

impl KafkaEvents {
    /// Events on `<prefix>events` through the shared producer.
    pub fn new(config: &KafkaConfig, producing: Arc<Producing>) -> KafkaEvents {
        KafkaEvents {
            producing,
            topic: events_topic(config),
        }
    }
}

#[async_trait]
impl EventSink for KafkaEvents {
    async fn emit(&self, events: Vec<DomainEvent>) -> Result<(), BusError> {
        let payloads: Vec<(String, Vec<u8>)> = events
            .iter()
            .map(|e| (e.key().to_owned(), e.to_json()))
            .collect();
        // All enqueued at once (the producer keeps per-partition order),
        // then every acknowledgement awaited.
        let sends = payloads
            .iter()
            .map(|(key, payload)| self.producing.send(&self.topic, key, payload));
        futures_util::future::join_all(sends)
            .await
            .into_iter()
            .collect()
    }
}

/// Consumer callbacks: rebalance notices and lag statistics.
pub struct GroupContext {
    /// Set when partitions were revoked: the batch being gathered ends.
    revoked: AtomicBool,
    /// Whether the member holds an assignment from the group (possibly of
    /// no partition): set when one is handed out, cleared when it is
    /// revoked or lost, until the next rebalance completes.
    assigned: AtomicBool,
    /// Which member of this instance it is ([`Membership::current`]).
    id: u64,
    membership: Arc<Membership>,
}

/// What this instance's current member of the group holds, shared with
/// the stall watch ([`watch_stalls`]).
#[derive(Default)]
struct Membership {
    /// The id of the current member: callbacks of a replaced one, still
    /// closing, change nothing.
    current: AtomicU64,
    /// Partitions of the messages topic assigned to the current member.
    owned: parking_lot::Mutex<BTreeSet<i32>>,
    /// Set by the stall watch: the member should be replaced.
    rejoin: AtomicBool,
}

impl GroupContext {
    fn own(&self, partitions: Option<&TopicPartitionList>) {
        if self.membership.current.load(Ordering::SeqCst) != self.id {
            return;
        }
        let mut owned = self.membership.owned.lock();
        owned.clear();
        if let Some(tpl) = partitions {
            owned.extend(tpl.elements().iter().map(|e| e.partition()));
        }
    }
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        let mut total = 0;
        for topic in statistics.topics.values() {
            for (partition, p) in &topic.partitions {
                // Partition -1 is librdkafka's internal one.
                if *partition < 0 {
                    continue;
                }
                // A lag of -1 is "unknown": not assigned to this instance
                // (any more), or nothing fetched yet. It counts as none
                // here, so the gauges summed over instances stay right.
                let lag = p.consumer_lag.max(0);
                total += lag;
                metrics::gauge!(names::KAFKA_CONSUMER_LAG, "partition" => partition.to_string())
                    .set(lag as f64);
            }
        }
        metrics::gauge!(names::KAFKA_CONSUMER_LAG_TOTAL).set(total as f64);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                // Nothing is committed here: offsets are committed only by
                // the persister after its database commit, so what this
                // instance had not stored is read again by the next owner.
                self.revoked.store(true, Ordering::SeqCst);
                self.assigned.store(false, Ordering::SeqCst);
                self.own(None);
                metrics::counter!(names::KAFKA_REBALANCES, "kind" => "revoke").increment(1);
                tracing::info!(partitions = tpl.count(), "Kafka partitions revoked");
            }
            Rebalance::Assign(tpl) => {
                self.assigned.store(true, Ordering::SeqCst);
                self.own(Some(tpl));
                metrics::counter!(names::KAFKA_REBALANCES, "kind" => "assign").increment(1);
                tracing::info!(partitions = tpl.count(), "Kafka partitions assigned");
            }
            Rebalance::Error(e) => {
                self.assigned.store(false, Ordering::SeqCst);
                self.own(None);
                tracing::warn!(error = %e, "Kafka rebalance failed");
            }
        }
    }
}

/// A member of the persisters' group, subscribed to the messages topic; it
/// becomes `membership`'s current member.
fn group_member(
    config: &KafkaConfig,
    membership: &Arc<Membership>,
) -> Result<StreamConsumer<GroupContext>, BusError> {
    let id = membership.current.fetch_add(1, Ordering::SeqCst) + 1;
    membership.owned.lock().clear();
    let ctx = GroupContext {
        revoked: AtomicBool::new(false),
        assigned: AtomicBool::new(false),
        id,
        membership: membership.clone(),
    };
    let consumer: StreamConsumer<GroupContext> = base_config(config)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // A fetch returns after at most this long even when no new record
        // has arrived. The default (500 ms) is a floor on SEND→RECEIPT
        // latency with brokers that answer a fetch only at its deadline
        // (tansu does), and an idle persister's few empty fetches a second
        // cost little.
        .set("fetch.wait.max.ms", "10")
        // A crashed instance's partitions wait this long for a new owner;
        // heart-beats go three times as often, as the protocol expects.
        .set("session.timeout.ms", config.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (config.session_timeout_ms / 3).to_string(),
        )
        .set("statistics.interval.ms", STATS_INTERVAL_MS)
        .create_with_context(ctx)
        .map_err(|e| backend(format!("creating the Kafka consumer: {e}")))?;
    let topic = messages_topic(config);
    consumer
        .subscribe(&[&topic])
        .map_err(|e| backend(format!("subscribing to {topic}: {e}")))?;
    Ok(consumer)
}

/// Whether the broker answers a metadata request for `topic` within
/// [`PROBE_TIMEOUT`], asked through `consumer` (dropped off the runtime's
/// threads).
async fn answers(consumer: Arc<StreamConsumer<GroupContext>>, topic: String) -> bool {
    tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(Some(&topic), Timeout::After(PROBE_TIMEOUT))
            .is_ok()
    })
    .await
    .unwrap_or(false)
}

/// A client of the group that does not join it: it reads the group's
/// committed offsets and the partitions' ends for the stall watch.
fn observer(config: &KafkaConfig) -> Result<BaseConsumer, BusError> {
    base_config(config)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| backend(format!("creating the Kafka group observer: {e}")))
}

/// Every partition of `topic`: the group's committed offset (the start
/// when it has none) and the end.
fn read_partitions(client: &BaseConsumer, topic: &str) -> Result<Vec<Reading>, KafkaError> {
    let metadata = client.fetch_metadata(Some(topic), Timeout::After(REQUEST_TIMEOUT))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = client.committed_offsets(tpl, Timeout::After(REQUEST_TIMEOUT))?;
    let mut readings = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let (start, end) =
            client.fetch_watermarks(topic, partition, Timeout::After(REQUEST_TIMEOUT))?;
        let committed = match committed
            .find_partition(topic, partition)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(o)) => o.max(start),
            _ => start,
        };
        readings.push(Reading {
            partition,
            committed,
            end,
        });
    }
    Ok(readings)
}

/// Every [`STALL_CHECK_EVERY`], reads every partition of the messages
/// topic and asks the member to rejoin the group when [`StallWatch`] finds
/// partitions nobody consumes (see [`super::stall`]).
async fn watch_stalls(config: KafkaConfig, membership: Arc<Membership>) {
    let client = match observer(&config) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::warn!(error = %e, "no Kafka stall watch");
            return;
        }
    };
    let topic = messages_topic(&config);
    let mut watch = StallWatch::new(unassigned_limit(&config));
    let mut tick = tokio::time::interval(STALL_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (c, t) = (client.clone(), topic.clone());
        let readings = tokio::task::spawn_blocking(move || read_partitions(&c, &t)).await;
        let Ok(Ok(readings)) = readings else {
            // Counted again from the next answer: a broker that was away
            // leaves the group time to settle first.
            watch.forget();
            continue;
        };
        let owned = membership.owned.lock().clone();
        let stalled = watch.observe(std::time::Instant::now(), &readings, &owned);
        if !stalled.is_empty() {
            tracing::warn!(
                ?stalled,
                ?owned,
                "Kafka partitions without progress and without an owner here; rejoining the group"
            );
            metrics::counter!(names::KAFKA_STALL_REJOINS).increment(1);
            membership.rejoin.store(true, Ordering::SeqCst);
        }
    }
}

/// Drops a replaced member off the runtime's threads: closing it waits for
/// the broker (leaving the group) when it holds the last reference.
fn retire(old: Arc<StreamConsumer<GroupContext>>) {
    tokio::task::spawn_blocking(move || drop(old));
}

/// The consuming side: this instance's member of the persisters' group.
pub struct KafkaConsumer {
    /// `None` after every broker connection was lost, until the broker
    /// answers again: a client that saw its broker go away entirely is not
    /// kept, since one that lost its state recreates the topics.
    consumer: Option<Arc<StreamConsumer<GroupContext>>>,
    config: KafkaConfig,
    /// Since when every receive failed (reset by a record).
    failing_since: Option<std::time::Instant>,
    /// Since when the member has held no assignment (reset by one, and by
    /// replacing the member).
    unassigned_since: Option<std::time::Instant>,
    /// Since when the broker has answered every check made while the
    /// member held no assignment.
    answering_since: Option<std::time::Instant>,
    topic: String,
    /// Next offset to commit per partition, for what was handed out since
    /// the last commit.
    pending: BTreeMap<i32, i64>,
    membership: Arc<Membership>,
    /// The stall watch, stopped with the consumer.
    watch: tokio::task::AbortHandle,
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

impl KafkaConsumer {
    /// Joins the group `config.group_id` and subscribes to the messages
    /// topic.
    /// Must be called on the runtime: it starts the stall watch.
    pub fn new(config: &KafkaConfig) -> Result<KafkaConsumer, BusError> {
        let membership = Arc::new(Membership::default());
        let consumer = Arc::new(group_member(config, &membership)?);
        let watch = tokio::spawn(watch_stalls(config.clone(), membership.clone()));
        Ok(KafkaConsumer {
            consumer: Some(consumer),
            config: config.clone(),
            failing_since: None,
            unassigned_since: None,
            answering_since: None,
            topic: messages_topic(config),
            pending: BTreeMap::new(),
            membership,
            watch: watch.abort_handle(),
        })
    }

    /// After a failed receive: replaces the consumer once it failed for
    /// [`CONSUMER_REBUILD_AFTER`] and the broker answers again. What was
    /// handed out and not committed is read again (duplicates the store
    /// drops).
    async fn recover(&mut self, e: &KafkaError) {
        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            if let Some(old) = self.consumer.take() {
                retire(old);
            }
        }
        let since = *self
            .failing_since
            .get_or_insert_with(std::time::Instant::now);
        if self.consumer.is_some() && since.elapsed() < CONSUMER_REBUILD_AFTER {
            return;
        }
        self.rejoin().await;
    }

    /// Replaces a member that has held no assignment for
    /// [`unassigned_limit`] while the broker answered all that time
    /// (checked every [`ASSIGNMENT_CHECK_EVERY`] while no record arrives).
    ///
    /// A member normally gets one within a rebalance, and librdkafka
    /// rejoins by itself after every group error, but a coordinator can
    /// keep refusing a member: tansu 0.6, after a pause longer than the
    /// session timeout, can keep naming as the group's leader a member it
    /// already evicted, so every member that joins waits as a follower for
    /// a leader that never comes (see docs/CONFIG.md). A second member
    /// joining while the first one waits makes tansu reread the group and
    /// elect a leader. Waiting for the broker to have answered that long
    /// also lets the members it invented from join requests sent while it
    /// was paused expire first: the first assignment then leaves them out
    /// (partitions of an expired member stay without an owner on tansu
    /// until the membership changes again).
    async fn check_assignment(&mut self) {
        let Some(consumer) = self.consumer.clone() else {
            return;
        };
        if consumer.context().assigned.load(Ordering::SeqCst) {
            self.unassigned_since = None;
            self.answering_since = None;
            return;
        }
        let now = std::time::Instant::now();
        let unassigned = *self.unassigned_since.get_or_insert(now);
        if !answers(consumer, self.topic.clone()).await {
            self.answering_since = None;
            return;
        }
        let answering = *self.answering_since.get_or_insert(now);
        let limit = unassigned_limit(&self.config);
        if unassigned.elapsed() < limit || answering.elapsed() < limit {
            return;
        }
        tracing::warn!(
            unassigned_s = unassigned.elapsed().as_secs(),
            "the Kafka consumer has held no partition assignment; replacing it"
        );
        // Should this attempt fail, or the new member get nothing either,
        // the next one waits as long again.
        self.unassigned_since = Some(now);
        self.answering_since = None;
        self.rejoin().await;
    }

    /// A fresh member of the group, once the broker answers and the topics
    /// exist.
    async fn rejoin(&mut self) {
        if ensure_topics(&self.config).await.is_err() {
            return;
        }
        match group_member(&self.config, &self.membership) {
            Ok(fresh) => {
                if let Some(old) = self.consumer.replace(Arc::new(fresh)) {
                    retire(old);
                }
                self.pending.clear();
                // Whatever asked for it, the stall watch's request is met.
                self.membership.rejoin.store(false, Ordering::SeqCst);
                self.failing_since = None;
                self.unassigned_since = None;
                self.answering_since = None;
                metrics::counter!(names::KAFKA_CLIENT_REBUILDS, "client" => "consumer")
                    .increment(1);
                tracing::warn!("replaced the Kafka consumer");
            }
            Err(e) => tracing::warn!(error = %e, "replacing the Kafka consumer failed"),
        }
    }

    /// Records one consumed message; returns its command unless it is not
    /// one this build reads (then it is skipped, its offset still
    /// committed: a record nobody can read must not stop the partition).
    fn take(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) -> Option<SendCommand> {
        self.pending.insert(m.partition(), m.offset() + 1);
        match SendCommand::decode(m.payload().unwrap_or_default()) {
            Ok(c) => Some(c),
            Err(e) => {
                metrics::counter!(names::KAFKA_MALFORMED).increment(1);
                tracing::error!(partition = m.partition(), offset = m.offset(), error = %e, "skipping a bus record");
                None
            }
        }
    }
}

#[async_trait]
impl BusConsumer for KafkaConsumer {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<SendCommand>, BusError> {
        let max = max.max(1);
        let mut batch = Vec::new();
        if self.consumer.is_none() || self.membership.rejoin.swap(false, Ordering::SeqCst) {
            self.rejoin().await;
        }
        if let Some(consumer) = &self.consumer {
            consumer.context().revoked.store(false, Ordering::SeqCst);
        }
        // Wait for the first record (checking meanwhile that the member
        // holds an assignment), then take what is already there.
        let consumer = loop {
            let Some(consumer) = self.consumer.clone() else {
                return Err(backend("waiting for the Kafka brokers to answer"));
            };
            let mut failed = None;
            match tokio::time::timeout(ASSIGNMENT_CHECK_EVERY, consumer.recv()).await {
                Ok(Ok(m)) => {
                    self.failing_since = None;
                    batch.extend(self.take(&m));
                }
                Ok(Err(e)) => failed = Some(e),
                Err(_) => {}
            }
            if !batch.is_empty() {
                break consumer;
            }
            // Not held across a replacement: the last reference to a
            // replaced member is dropped off the runtime.
            drop(consumer);
            if let Some(e) = failed {
                self.recover(&e).await;
                return Err(backend(e));
            }
            if self.membership.rejoin.swap(false, Ordering::SeqCst) {
                self.rejoin().await;
                continue;
            }
            self.check_assignment().await;
        };
        while batch.len() < max && !consumer.context().revoked.load(Ordering::SeqCst) {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => batch.extend(self.take(&m)),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consumer error");
                    break;
                }
                None => break,
            }
        }
        Ok(batch)
    }

    async fn commit(&mut self) -> Result<(), BusError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in std::mem::take(&mut self.pending) {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(o))
                .map_err(backend)?;
        }
        let Some(consumer) = self.consumer.clone() else {
            // The member that read them is gone: they are read again.
            return Ok(());
        };
        // A failure (e.g. the partition moved to another instance meanwhile)
        // leaves those records to be read again: duplicates the store drops,
        // never loss.
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(backend)?
            .map_err(|e| backend(format!("committing Kafka offsets: {e}")))
    }

    fn drain_on_shutdown(&self) -> bool {
        // The group's other members take over this instance's partitions.
        false
    }
}
