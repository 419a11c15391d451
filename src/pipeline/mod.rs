//! The durable half of the message path: the persister and the outbox
//! dispatcher.
//!
//! The **persister** takes sends off the bus in batches and stores each
//! batch in ONE transaction (messages with their seq, outbox rows); only then
//! does it commit the bus position. It then publishes, straight from memory,
//! the `message.created` events, unread counters and the durable
//! acknowledgements the senders' gateways wait for, and deletes the outbox
//! rows it published.
//!
//! The **dispatcher** publishes every other outbox row (edits, deletes,
//! membership changes: written by the change's own transaction) as soon as
//! it is kicked, and sweeps up `message.created` rows that a crash or a
//! failed publish left behind. Publishing is at-least-once; gateways drop
//! duplicates by seq.
//!
//! In a cluster both also feed the domain-events topic (an optional
//! [`EventSink`]): an outbox row is deleted only once its relay publications
//! AND its domain events were accepted, so the events topic is
//! at-least-once too.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus::{BusConsumer, DomainEvent, EventSink, SendCommand};
use crate::chat::events::{self, kind, user_queue, Event};
use crate::metrics::names;
use crate::relay::Relay;
use crate::store::{Message, OutboxRow, Persisted, Store};

/// Most sends stored in one transaction.
pub const MAX_BATCH: usize = 1000;

/// How old a `message.created` outbox row must be before the sweeper
/// assumes its persister did not publish it.
const SWEEP_AFTER: Duration = Duration::from_secs(5);

/// One publication an outbox row stands for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Publication {
    /// Relay channel.
    pub channel: String,
    /// The event.
    pub event: Event,
}

/// Encodes the publications of a non-`message.created` outbox row.
pub fn encode_publications(list: &[Publication]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".to_owned())
}

/// Runs the persister until the bus closes or shutdown.
pub async fn run_persister(
    mut consumer: impl BusConsumer,
    store: Arc<dyn Store>,
    relay: Arc<dyn Relay>,
    events: Option<Arc<dyn EventSink>>,
    shutdown: CancellationToken,
) {
    // Publishing a batch's events and acknowledgements runs beside the loop,
    // in batch order, while the next batch is stored: the store (one writer
    // on SQLite) is the pipeline's narrowest step, so it should not wait for
    // the relay. Unread counters and outbox clean-up follow the publishing.
    let (published_tx, mut published_rx) =
        tokio::sync::mpsc::channel::<(Vec<SendCommand>, Vec<Persisted>)>(PUBLISH_QUEUE);
    let followups = Followups::spawn(store.clone(), relay.clone());
    let publisher = tokio::spawn(async move {
        while let Some((batch, outcomes)) = published_rx.recv().await {
            let started = std::time::Instant::now();
            publish_outcomes(&*relay, events.as_deref(), &followups, &batch, outcomes).await;
            metrics::histogram!(names::PUBLISH_SECONDS).record(started.elapsed().as_secs_f64());
        }
    });
    persist_loop(&mut consumer, &*store, &shutdown, published_tx).await;
    // The loop ended (and dropped its sender): what it stored is published.
    let _ = publisher.await;
}

/// Batches waiting to be published before the persister stops taking more.
const PUBLISH_QUEUE: usize = 4;

async fn persist_loop(
    consumer: &mut impl BusConsumer,
    store: &dyn Store,
    shutdown: &CancellationToken,
    published: tokio::sync::mpsc::Sender<(Vec<SendCommand>, Vec<Persisted>)>,
) {
    let mut read_failures: u32 = 0;
    loop {
        // After shutdown began, what is still on an in-process bus is
        // drained: the sessions are gone, so the queue only shrinks. A
        // shared log is left to the other consumers.
        if shutdown.is_cancelled() && !consumer.drain_on_shutdown() {
            return;
        }
        let batch = if shutdown.is_cancelled() {
            match tokio::time::timeout(Duration::from_millis(200), consumer.next_batch(MAX_BATCH))
                .await
            {
                Ok(b) => b,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                _ = shutdown.cancelled() => continue,
                b = consumer.next_batch(MAX_BATCH) => b,
            }
        };
        let batch = match batch {
            Ok(b) if b.is_empty() => return,
            Ok(b) => {
                read_failures = 0;
                b
            }
            Err(e) => {
                // Backing off while the bus is unreachable: 200 ms doubling
                // to 5 s, and one log line per doubling, not per attempt.
                if read_failures < 5 {
                    tracing::error!(error = %e, "reading the message bus failed");
                }
                let wait = Duration::from_millis(200) * (1 << read_failures.min(5));
                read_failures += 1;
                tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
                continue;
            }
        };
        metrics::histogram!(names::PERSIST_BATCH).record(batch.len() as f64);
        let started = std::time::Instant::now();
        let outcomes = persist_with_retry(store, &batch).await;
        metrics::histogram!(names::PERSIST_SECONDS).record(started.elapsed().as_secs_f64());
        if let Err(e) = consumer.commit().await {
            tracing::warn!(error = %e, "committing the bus position failed");
        }
        if published.send((batch, outcomes)).await.is_err() {
            return;
        }
    }
}

/// Work that follows a batch but need not delay the next one.
struct Followups {
    unread: tokio::sync::mpsc::UnboundedSender<String>,
    published: tokio::sync::mpsc::UnboundedSender<Vec<i64>>,
}

impl Followups {
    fn spawn(store: Arc<dyn Store>, relay: Arc<dyn Relay>) -> Followups {
        let (unread, mut unread_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let (published, mut published_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<i64>>();
        let s = store.clone();
        tokio::spawn(async move {
            // Coalesced: a conversation touched by many batches in a row gets
            // one counter update per round.
            while let Some(first) = unread_rx.recv().await {
                let mut cids = BTreeSet::from([first]);
                while let Ok(c) = unread_rx.try_recv() {
                    cids.insert(c);
                }
                publish_unread_many(&*s, &*relay, cids.into_iter().collect()).await;
            }
        });
        tokio::spawn(async move {
            while let Some(mut ids) = published_rx.recv().await {
                while let Ok(more) = published_rx.try_recv() {
                    ids.extend(more);
                }
                if let Err(e) = store.outbox_delete(ids).await {
                    // The sweeper will publish them again: duplicates, not loss.
                    tracing::warn!(error = %e, "deleting published outbox rows failed");
                }
            }
        });
        Followups { unread, published }
    }
}

/// Stores a batch, retrying with backoff: a batch is never dropped.
async fn persist_with_retry(store: &dyn Store, batch: &[SendCommand]) -> Vec<Persisted> {
    let mut delay = Duration::from_millis(50);
    loop {
        let msgs = batch.iter().map(|c| c.message.clone()).collect();
        match store.persist_messages(msgs).await {
            Ok(o) => return o,
            Err(e) => {
                metrics::counter!(names::PERSIST_FAILURES).increment(1);
                tracing::error!(error = %e, size = batch.len(), "persisting a batch failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn publish(relay: &dyn Relay, channel: &str, ev: &Event) -> bool {
    match relay.publish(channel, ev.to_bytes()).await {
        Ok(()) => true,
        Err(e) => {
            metrics::counter!(names::RELAY_PUBLISH_FAILURES).increment(1);
            tracing::warn!(error = %e, %channel, "relay publish failed");
            false
        }
    }
}

/// The acknowledgement a sender's gateway waits for.
fn durable(
    cmd: &SendCommand,
    message: Option<&Message>,
    duplicate: bool,
    error: Option<&str>,
) -> Event {
    let k = if duplicate {
        kind::DURABLE_DUPLICATE
    } else {
        kind::DURABLE
    };
    let mut ev = match message {
        Some(m) => Event::message(k, m),
        None => Event::new(kind::DURABLE, serde_json::Value::Null),
    };
    ev.request_id = Some(cmd.request_id.clone());
    ev.error = error.map(str::to_owned);
    ev
}

/// Hands domain events to the sink; `true` when there is none or it took
/// them all.
async fn emit(events: Option<&dyn EventSink>, list: Vec<DomainEvent>) -> bool {
    let Some(sink) = events.filter(|_| !list.is_empty()) else {
        return true;
    };
    match sink.emit(list).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "publishing domain events failed; the outbox keeps them");
            false
        }
    }
}

async fn publish_outcomes(
    relay: &dyn Relay,
    events: Option<&dyn EventSink>,
    followups: &Followups,
    batch: &[SendCommand],
    outcomes: Vec<Persisted>,
) {
    let mut published = Vec::new();
    let mut created = Vec::new();
    // Conversations whose unread counters changed.
    let mut touched: BTreeSet<String> = BTreeSet::new();
    for (cmd, outcome) in batch.iter().zip(outcomes) {
        let ack = match &outcome {
            Persisted::Created { message, outbox_id } => {
                metrics::counter!(names::MESSAGES_PERSISTED).increment(1);
                let ev = Event::message(kind::MESSAGE_CREATED, message);
                if publish(
                    relay,
                    &events::conversation_channel(&message.conversation_id),
                    &ev,
                )
                .await
                {
                    published.push(*outbox_id);
                }
                if events.is_some() {
                    created.push(DomainEvent::message_created(*outbox_id, message));
                }
                touched.insert(message.conversation_id.clone());
                durable(cmd, Some(message), false, None)
            }
            Persisted::Duplicate(message) => durable(cmd, Some(message), true, None),
            Persisted::NotMember => durable(cmd, None, false, Some("not_member")),
        };
        publish(relay, &events::instance_channel(&cmd.origin), &ack).await;
    }
    for cid in touched {
        let _ = followups.unread.send(cid);
    }
    if !emit(events, created).await {
        // The sweeper publishes these rows again, events included.
        published.clear();
    }
    if !published.is_empty() {
        let _ = followups.published.send(published);
    }
}

/// Pushes every member's unread counter of each conversation, read in one
/// query.
async fn publish_unread_many(store: &dyn Store, relay: &dyn Relay, cids: Vec<String>) {
    let rows = match store.unread_of_members(cids).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "loading unread counters failed");
            return;
        }
    };
    for (cid, user, unread, last_seq) in rows {
        let payload =
            serde_json::json!({"conversationId": cid, "unreadCount": unread, "lastSeq": last_seq});
        let ev =
            Event::for_user_queue(kind::UNREAD, user_queue::NOTIFICATIONS, Some(&cid), payload);
        publish(relay, &events::user_channel(&user), &ev).await;
    }
}

/// Pushes each member's unread counter for `cid` to their notifications.
pub async fn publish_unread(store: &dyn Store, relay: &dyn Relay, cid: &str) {
    publish_unread_many(store, relay, vec![cid.to_owned()]).await;
}

/// Publishes outbox rows: on a kick (a change just committed) and
/// periodically (rows a crash or a failed publish left behind).
pub struct Dispatcher {
    store: Arc<dyn Store>,
    relay: Arc<dyn Relay>,
    events: Option<Arc<dyn EventSink>>,
    kick: Notify,
}

impl Dispatcher {
    /// A dispatcher over `store` publishing to `relay` and, in a cluster,
    /// to the domain-events sink.
    pub fn new(
        store: Arc<dyn Store>,
        relay: Arc<dyn Relay>,
        events: Option<Arc<dyn EventSink>>,
    ) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            store,
            relay,
            events,
            kick: Notify::new(),
        })
    }

    /// A change with outbox rows committed: publish them now.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Runs until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.kick.notified() => {}
                _ = tick.tick() => {}
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "outbox sweep failed");
            }
            match self.store.outbox_depth().await {
                Ok(n) => metrics::gauge!(names::OUTBOX_DEPTH).set(n as f64),
                Err(e) => tracing::debug!(error = %e, "reading the outbox depth failed"),
            }
        }
    }

    /// Publishes what is due: every row but recent `message.created` ones,
    /// which their persister is publishing.
    ///
    /// Every instance sweeps; the store hands each due row to one sweeper
    /// at a time (a lease taken with `FOR UPDATE SKIP LOCKED` on
    /// PostgreSQL), oldest first, so rows of one conversation go out in
    /// the order they were written (and `message.created` rows in seq
    /// order).
    pub async fn sweep(&self) -> Result<usize, crate::store::StoreError> {
        let now = crate::store::now();
        let rows = self.store.outbox_due(now, 500).await?;
        let mut done = Vec::new();
        let mut unread: HashMap<String, ()> = HashMap::new();
        for row in rows {
            if row.event.kind == kind::MESSAGE_CREATED {
                if now - row.created_at < SWEEP_AFTER {
                    continue;
                }
                if self.republish_created(&row).await? {
                    if let Some(c) = &row.event.conversation_id {
                        unread.insert(c.clone(), ());
                    }
                    done.push(row.id);
                }
                continue;
            }
            let list: Vec<Publication> =
                serde_json::from_str(&row.event.payload).unwrap_or_default();
            let mut ok = true;
            for p in &list {
                ok &= publish(&*self.relay, &p.channel, &p.event).await;
            }
            if ok && self.events.is_some() {
                let evs: Vec<&Event> = list.iter().map(|p| &p.event).collect();
                let domain = DomainEvent::from_outbox(
                    row.id,
                    &row.event.kind,
                    row.event.conversation_id.as_deref(),
                    &evs,
                );
                ok = emit(self.events.as_deref(), domain).await;
            }
            if ok {
                done.push(row.id);
            }
        }
        for cid in unread.keys() {
            publish_unread(&*self.store, &*self.relay, cid).await;
        }
        let n = done.len();
        if n > 0 {
            metrics::counter!(names::OUTBOX_SWEPT).increment(n as u64);
            self.store.outbox_delete(done).await?;
        }
        Ok(n)
    }

    async fn republish_created(&self, row: &OutboxRow) -> Result<bool, crate::store::StoreError> {
        let Some(id) = &row.event.message_id else {
            return Ok(true);
        };
        let Some(m) = self.store.message(id).await? else {
            return Ok(true); // gone (retention): nothing to announce
        };
        let ev = Event::message(kind::MESSAGE_CREATED, &m);
        let relayed = publish(
            &*self.relay,
            &events::conversation_channel(&m.conversation_id),
            &ev,
        )
        .await;
        Ok(relayed
            && emit(
                self.events.as_deref(),
                vec![DomainEvent::message_created(row.id, &m)],
            )
            .await)
    }
}
