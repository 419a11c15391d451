//! The moving parts every scenario shares: connecting many sessions,
//! subscriber tasks, the two kinds of publisher, and draining at the end.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use stomp_codec::{header, Command};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::conn::{connect, send_frame, Batch, Conn, Credentials, Reader, Target};
use crate::track::{body, now_ns, Tracker, Window};

/// What every scenario needs to reach the server.
#[derive(Clone)]
pub struct Endpoint {
    /// Where.
    pub target: Target,
    /// Who.
    pub creds: Credentials,
    /// Source addresses used round-robin (empty: let the kernel choose).
    pub sources: Vec<IpAddr>,
}

impl Endpoint {
    /// The source address for the `i`-th connection.
    pub fn source(&self, i: usize) -> Option<IpAddr> {
        (!self.sources.is_empty()).then(|| self.sources[i % self.sources.len()])
    }

    /// Connects session `i`.
    pub async fn connect(&self, i: usize) -> Result<Conn> {
        connect(&self.target, &self.creds, self.source(i)).await
    }
}

/// Longest a session may take from TCP connect to its setup being done.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects `n` sessions, at most `parallel` handshakes at a time, and runs
/// `setup` on each (e.g. SUBSCRIBE). Results keep the input order.
pub async fn connect_many<F, Fut, T>(
    endpoint: &Endpoint,
    n: usize,
    parallel: usize,
    setup: F,
) -> Vec<Result<T>>
where
    F: Fn(usize, Conn) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<T>> + Send,
    T: Send + 'static,
{
    let gate = Arc::new(Semaphore::new(parallel.max(1)));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let gate = gate.clone();
        let endpoint = endpoint.clone();
        let setup = setup.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let handshake = async {
                let conn = endpoint.connect(i).await?;
                setup(i, conn).await
            };
            // A server that stops accepting (e.g. RabbitMQ's file-descriptor
            // alarm) must fail the session, not hang the run.
            tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
                .await
                .map_err(|_| anyhow::anyhow!("no CONNECTED/RECEIPT within {HANDSHAKE_TIMEOUT:?}"))?
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.map_err(anyhow::Error::from).and_then(|r| r));
    }
    out
}

/// How a max-rate publisher decides a message is no longer in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CreditMode {
    /// When every subscriber has received it (tracked inside the load
    /// generator): the window bounds the slowest subscriber's backlog.
    All,
    /// When the server's RECEIPT for the SEND arrives.
    Receipt,
    /// When the publisher's own subscription to the destination receives it.
    Echo,
}

/// Messages no longer in flight, and a wake-up for the publisher waiting on them.
pub struct Credit {
    completed: AtomicU64,
    /// Woken when a message completes.
    pub notify: Notify,
    /// `All` mode: per-sequence delivery counts in a ring, and how many
    /// subscribers make a message complete.
    ring: Vec<AtomicU32>,
    subscribers: u32,
}

/// Larger than any window, so a ring slot is reused only after its message completed.
const RING: usize = 4096;

/// The largest window the `All` mode supports.
pub const MAX_WINDOW: usize = RING / 2;

impl Credit {
    /// Credit for one publisher whose messages `subscribers` sessions receive.
    pub fn new(subscribers: u32) -> Arc<Credit> {
        Arc::new(Credit {
            completed: AtomicU64::new(0),
            notify: Notify::new(),
            ring: (0..RING).map(|_| AtomicU32::new(0)).collect(),
            subscribers,
        })
    }

    /// One message is done (receipt or echo).
    pub fn complete_one(&self) {
        self.completed.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_one();
    }

    /// A subscriber received `seq` for the first time (`All` mode).
    pub fn delivered(&self, seq: u64) {
        let slot = &self.ring[(seq % RING as u64) as usize];
        if slot.fetch_add(1, Ordering::AcqRel) + 1 == self.subscribers {
            slot.store(0, Ordering::Release);
            self.complete_one();
        }
    }

    /// Messages no longer in flight so far.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Acquire)
    }
}

/// A running subscriber: its unique-delivery count (for draining) and its task.
pub struct Subscriber {
    /// Distinct messages received so far.
    pub progress: Arc<AtomicU64>,
    task: JoinHandle<Tracker>,
}

/// Starts the receive loop of a subscribed session. `credit`, when given,
/// is told about every new delivery (fan-out `All` mode).
pub fn spawn_subscriber(
    mut conn: Conn,
    window: Arc<Window>,
    credit: Option<Arc<Credit>>,
    mut stop: watch::Receiver<bool>,
) -> Subscriber {
    let progress = Arc::new(AtomicU64::new(0));
    let p = progress.clone();
    let task = tokio::spawn(async move {
        let mut tracker = Tracker::new(window);
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                frame = conn.reader.next_frame() => match frame {
                    Ok(Some(f)) if f.command == Command::Message => {
                        if let Some((_, seq)) = tracker.record(&f.body, now_ns()) {
                            p.fetch_add(1, Ordering::Release);
                            if let Some(c) = &credit {
                                c.delivered(seq);
                            }
                        }
                    }
                    Ok(Some(f)) if f.command == Command::Error => {
                        tracker.error = Some(format!(
                            "ERROR: {}",
                            f.header(header::MESSAGE).unwrap_or_default()
                        ));
                        break;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        tracker.error = Some("closed by server".into());
                        break;
                    }
                    Err(e) => {
                        tracker.error = Some(format!("{e:#}"));
                        break;
                    }
                }
            }
        }
        drop(conn);
        tracker
    });
    Subscriber { progress, task }
}

impl Subscriber {
    /// Waits for the task (after the stop signal) and returns its tracker.
    pub async fn finish(self) -> Tracker {
        self.task
            .await
            .unwrap_or_else(|_| panic!("subscriber task panicked"))
    }
}

/// What a publisher did.
#[derive(Debug, Default, Clone)]
pub struct Published {
    /// Messages sent.
    pub sent: u64,
    /// Largest delay of a send behind its schedule (fixed rate only).
    pub max_lag: Duration,
    /// The window never reopened within the stall timeout.
    pub stalled: bool,
    /// Why the publisher stopped early, if it did.
    pub error: Option<String>,
}

/// Reads the publisher's own connection: counts RECEIPTs or echoed messages
/// into `credit` and remembers an ERROR.
fn spawn_publisher_reader(
    mut reader: Reader,
    credit: Option<Arc<Credit>>,
    mode: CreditMode,
) -> JoinHandle<Option<String>> {
    tokio::spawn(async move {
        loop {
            match reader.next_frame().await {
                Ok(Some(f)) => match f.command {
                    Command::Receipt if mode == CreditMode::Receipt => {
                        if let Some(c) = &credit {
                            c.complete_one();
                        }
                    }
                    Command::Message if mode == CreditMode::Echo => {
                        if let Some(c) = &credit {
                            c.complete_one();
                        }
                    }
                    Command::Error => {
                        return Some(format!(
                            "ERROR: {}",
                            f.header(header::MESSAGE).unwrap_or_default()
                        ))
                    }
                    _ => {}
                },
                Ok(None) => return None,
                Err(e) => return Some(format!("{e:#}")),
            }
        }
    })
}

/// Parameters of a max-rate publisher.
pub struct WindowedPublish {
    /// Publisher id written into bodies.
    pub id: u32,
    /// Destination.
    pub destination: String,
    /// Body size in bytes.
    pub size: usize,
    /// Most messages in flight.
    pub window: usize,
    /// When a message stops being in flight.
    pub mode: CreditMode,
    /// Stop sending at this instant.
    pub until: Instant,
    /// Give up when the window stays shut this long.
    pub stall_timeout: Duration,
}

/// Sends as fast as the window allows until `p.until`.
pub async fn publish_windowed(
    conn: Conn,
    p: WindowedPublish,
    credit: Arc<Credit>,
) -> Result<Published> {
    let Conn { mut writer, reader } = conn;
    let reader_task = spawn_publisher_reader(reader, Some(credit.clone()), p.mode);
    let mut out = Published::default();
    let mut batch = Batch::default();
    let mut receipt = String::new();
    while Instant::now() < p.until {
        let done = credit.completed();
        let in_flight = out.sent.saturating_sub(done) as usize;
        if in_flight >= p.window {
            let wait = tokio::time::timeout(p.stall_timeout, credit.notify.notified()).await;
            if wait.is_err() && credit.completed() == done {
                out.stalled = true;
                break;
            }
            continue;
        }
        for _ in in_flight..p.window {
            let r = if p.mode == CreditMode::Receipt {
                receipt.clear();
                receipt.push_str(&out.sent.to_string());
                Some(receipt.as_str())
            } else {
                None
            };
            let b = body(p.id, out.sent, now_ns(), p.size);
            batch.push(&send_frame(&p.destination, b, r));
            out.sent += 1;
        }
        if let Err(e) = writer.send(&mut batch).await {
            out.error = Some(format!("{e:#}"));
            break;
        }
    }
    if reader_task.is_finished() {
        out.error = out.error.or(reader_task.await.ok().flatten());
    } else {
        reader_task.abort();
    }
    drop(writer);
    Ok(out)
}

/// Parameters of a fixed-rate publisher.
pub struct RatedPublish {
    /// Publisher id written into bodies.
    pub id: u32,
    /// Destination.
    pub destination: String,
    /// Body size in bytes.
    pub size: usize,
    /// Messages per second.
    pub rate: f64,
    /// Time of the first send (staggered per publisher).
    pub start: Instant,
    /// Stop sending at this instant.
    pub until: Instant,
}

/// Sends at `p.rate` on a fixed schedule. Messages that fell behind schedule
/// are sent at once (in one write), stamped with the real send time; the
/// largest lag behind the schedule is reported so a client that cannot keep
/// up is visible.
pub async fn publish_rated(conn: Conn, p: RatedPublish, sent: Arc<AtomicU64>) -> Result<Published> {
    if p.rate <= 0.0 {
        bail!("rate must be positive");
    }
    let Conn { mut writer, reader } = conn;
    let reader_task = spawn_publisher_reader(reader, None, CreditMode::All);
    let period = Duration::from_secs_f64(1.0 / p.rate);
    let mut out = Published::default();
    let mut batch = Batch::default();
    tokio::time::sleep_until(p.start.into()).await;
    loop {
        let now = Instant::now();
        if now >= p.until {
            break;
        }
        let due = (now.duration_since(p.start).as_secs_f64() * p.rate) as u64 + 1;
        if out.sent < due {
            let scheduled = p.start + period.mul_f64(out.sent as f64);
            out.max_lag = out.max_lag.max(now.saturating_duration_since(scheduled));
            let stamp = now_ns();
            while out.sent < due {
                batch.push(&send_frame(
                    &p.destination,
                    body(p.id, out.sent, stamp, p.size),
                    None,
                ));
                out.sent += 1;
            }
            if let Err(e) = writer.send(&mut batch).await {
                out.error = Some(format!("{e:#}"));
                break;
            }
            sent.store(out.sent, Ordering::Release);
        }
        let next = p.start + period.mul_f64(out.sent as f64);
        tokio::time::sleep_until(next.into()).await;
    }
    if reader_task.is_finished() {
        out.error = out.error.or(reader_task.await.ok().flatten());
    } else {
        reader_task.abort();
    }
    drop(writer);
    Ok(out)
}

/// Waits until every subscriber has `expected(i)` distinct messages or
/// `timeout` passes, then stops them all and returns their trackers.
pub async fn drain(
    subscribers: Vec<Subscriber>,
    expected: impl Fn(usize) -> u64,
    stop: watch::Sender<bool>,
    timeout: Duration,
) -> Vec<Tracker> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let behind = subscribers
            .iter()
            .enumerate()
            .any(|(i, s)| s.progress.load(Ordering::Acquire) < expected(i));
        if !behind {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    let mut out = Vec::with_capacity(subscribers.len());
    for s in subscribers {
        out.push(s.finish().await);
    }
    out
}
