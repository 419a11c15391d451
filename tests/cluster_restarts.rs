//! Faults under load: three `stompline` processes (Redis relay, shared
//! state in Redis, one PostgreSQL database) carry a steady stream of chat
//! messages in one group conversation while an instance is SIGKILLed, Redis
//! is restarted, or PostgreSQL is restarted. Every sender waits for each
//! SEND's RECEIPT (or an `unavailable` error, or gives up on its connection)
//! before the next one; a sender whose connection is lost connects again,
//! to its own instance or, when that is gone, to the next, and resumes its
//! subscription with `since-seq`.
//!
//! Each test ends with the same check: every message that received a
//! RECEIPT is in the history exactly once, with the seq its RECEIPT named,
//! the history is gapless and in each sender's order, and every subscriber
//! got every receipted message (after dropping duplicates by id).
//!
//! With `bus = "kafka"`, whole instances join and leave the persisters'
//! consumer group during load (a rebalance each time): new instances are
//! started, and original ones are stopped by SIGTERM and by SIGKILL. There
//! the load is one conversation per partition of the messages topic, so
//! every member of the group has work, and the test checks from the
//! instances' metrics that the partitions really moved.
//!
//! The SIGKILL and rebalance tests use the shared PostgreSQL and Redis
//! (`STOMPLINE_TEST_POSTGRES_URL`, `STOMPLINE_TEST_REDIS_URL`, a key prefix
//! of their own); the rebalance test also the shared Kafka
//! (`STOMPLINE_TEST_KAFKA_BROKERS`, a topic prefix and consumer group of its
//! own). The restart tests start a private `redis-server` or PostgreSQL
//! cluster on a free loopback port (see `support/services.rs`), so
//! restarting it disturbs no one else. A missing service or binary skips a
//! test, or fails it under `STOMPLINE_REQUIRE_SERVICES=1`.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use stomp_codec::{Command, Frame, Item};
use stompline::config::KafkaConfig;
use support::pg::PgDatabase;
use support::process::{register, ServerProcess};
use support::services::{self, PrivatePostgres, PrivateRedis, Restartable};
use support::Client;
use tokio::sync::watch;

const INSTANCES: usize = 3;
const SENDERS_PER_INSTANCE: usize = 2;
/// RECEIPTs every sender collects before the first fault, and again after
/// each recovery.
const ROUND: usize = 25;
/// How many times the restart tests stop and start their service.
const RESTARTS: usize = 2;
/// Longer than the server's 30 s `unavailable` deadline for a SEND.
const RECEIPT_WAIT: Duration = Duration::from_secs(40);
/// Generous bound for progress after a fault, and for catching up at the end.
const PROGRESS_WAIT: Duration = Duration::from_secs(180);
/// Partitions of the messages topic in the rebalance test: more than the
/// instances ever running at once, so every member of the group gets some.
const PARTITIONS: u32 = 6;
/// Longest a SIGTERMed instance may take to drain and exit.
const EXIT_WAIT: Duration = Duration::from_secs(60);
/// Chat messages an instance's persister stored (duplicates not counted).
const PERSISTED: &str = "stompline_messages_persisted_total";
/// Times an instance rejoined the group for partitions nobody consumed.
const STALL_REJOINS: &str = "stompline_kafka_stall_rejoins_total";
/// Partition assignments an instance's consumer received.
const ASSIGNED: &str = "stompline_kafka_rebalances_total{kind=\"assign\"}";

/// Instances sharing `db_url` and `redis_url`: three at first, more when
/// [`Cluster::add`] starts them. A stopped instance keeps its index.
struct Cluster {
    env: Vec<(String, String)>,
    processes: Mutex<Vec<ServerProcess>>,
    /// STOMP addresses by instance, shared with the senders.
    stomp: Arc<Mutex<Vec<String>>>,
    http: Mutex<Vec<String>>,
    dirs: Mutex<Vec<tempfile::TempDir>>,
}

impl Cluster {
    /// Starts [`INSTANCES`] instances with `extra` in their environment.
    async fn start(db_url: &str, redis_url: &str, extra: Vec<(String, String)>) -> Cluster {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let mut env: Vec<(String, String)> = vec![
            ("STOMPLINE_DATABASE_URL".into(), db_url.into()),
            (
                "STOMPLINE_AUTH__JWT_SECRET".into(),
                format!("faults-secret-{unique}"),
            ),
            ("STOMPLINE_RELAY".into(), "redis".into()),
            ("STOMPLINE_SHARED_STATE".into(), "redis".into()),
            ("STOMPLINE_REDIS__URL".into(), redis_url.into()),
            (
                "STOMPLINE_REDIS__KEY_PREFIX".into(),
                format!("faults:{unique}:"),
            ),
            ("STOMPLINE_CHAT__RATE_PER_SEC".into(), "0".into()),
            ("STOMPLINE_PRESENCE__OFFLINE_GRACE_MS".into(), "300".into()),
        ];
        env.extend(extra);
        let cluster = Cluster {
            env,
            processes: Mutex::default(),
            stomp: Arc::default(),
            http: Mutex::default(),
            dirs: Mutex::default(),
        };
        for _ in 0..INSTANCES {
            cluster.add().await;
        }
        cluster
    }

    /// Starts one more instance; returns its index.
    async fn add(&self) -> usize {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = support::process::spawn(dir.path().to_path_buf(), self.env.clone()).await;
        self.stomp.lock().expect("addresses").push(p.stomp.clone());
        self.http.lock().expect("addresses").push(p.http.clone());
        self.dirs.lock().expect("dirs").push(dir);
        let mut processes = self.processes.lock().expect("processes");
        processes.push(p);
        processes.len() - 1
    }

    /// Instance `node`'s HTTP address.
    fn http(&self, node: usize) -> String {
        self.http.lock().expect("addresses")[node].clone()
    }

    /// SIGKILLs instance `node`.
    fn kill(&self, node: usize) {
        self.processes.lock().expect("processes")[node].kill();
    }

    /// SIGTERMs instance `node` and waits until it has drained and exited
    /// with success.
    async fn terminate(&self, node: usize) {
        self.processes.lock().expect("processes")[node].terminate();
        let deadline = Instant::now() + EXIT_WAIT;
        loop {
            if let Some(status) = self.processes.lock().expect("processes")[node].exited() {
                assert!(status.success(), "instance {node} exited with {status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "instance {node} still running {EXIT_WAIT:?} after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `series` (a metric's name and labels as `/metrics` renders them) on
    /// each instance of `nodes` now; 0 where never recorded.
    async fn read(&self, nodes: &[usize], series: &'static str) -> Reading {
        let mut values = Vec::new();
        for node in nodes {
            let text = reqwest::get(format!("http://{}/metrics", self.http(*node)))
                .await
                .expect("metrics request")
                .text()
                .await
                .expect("metrics body");
            values.push(
                text.lines()
                    .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
                    .unwrap_or(0.0),
            );
        }
        Reading {
            nodes: nodes.to_vec(),
            series,
            values,
        }
    }

    /// Waits (at most [`PROGRESS_WAIT`]) until the metric of `before` has
    /// grown on every one of its instances, or on any one.
    async fn grown(&self, before: &Reading, on: On, what: &str) {
        let deadline = Instant::now() + PROGRESS_WAIT;
        loop {
            let now = self.read(&before.nodes, before.series).await;
            let mut grew = now.values.iter().zip(&before.values).map(|(n, b)| n > b);
            let done = match on {
                On::Every => grew.all(|g| g),
                On::Any => grew.any(|g| g),
            };
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {} on instances {:?} went from {:?} to {:?}",
                before.series,
                before.nodes,
                before.values,
                now.values
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        self.processes
            .lock()
            .map(|ps| {
                ps.iter()
                    .enumerate()
                    .map(|(i, p)| format!("--- instance {i} ---\n{}", p.log()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A metric's values on some instances ([`Cluster::read`]).
struct Reading {
    nodes: Vec<usize>,
    series: &'static str,
    values: Vec<f64>,
}

/// Where [`Cluster::grown`] waits for a metric to grow.
enum On {
    Every,
    Any,
}

/// What a sender has done so far, readable while it runs.
#[derive(Default)]
struct Progress {
    attempts: AtomicUsize,
    receipts: AtomicUsize,
    sending_done: AtomicBool,
}

/// A receipted SEND: (sender, counter, message id, seq).
type Receipted = (usize, u64, String, i64);

enum Read {
    Frame(Frame),
    Closed,
    Timeout,
}

/// The next frame within `wait` (heart-beats skipped).
async fn read(c: &mut Client, wait: Duration) -> Read {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, c.item()).await {
            Err(_) => return Read::Timeout,
            Ok(None) => return Read::Closed,
            Ok(Some(Item::HeartBeat)) => {}
            Ok(Some(Item::Frame(f))) => return Read::Frame(f),
        }
    }
}

/// One user sending into the conversation and subscribed to it.
struct Sender {
    idx: usize,
    token: String,
    home: usize,
    stomp: Arc<Mutex<Vec<String>>>,
    /// The conversation, and its index in [`Load::conversations`].
    cid: String,
    conv: usize,
    conn: Option<Client>,
    /// seq → message id, as received on the chat subscription.
    received: BTreeMap<i64, String>,
    duplicates: usize,
    /// Every seq up to this one has been received.
    contiguous: i64,
    connections: usize,
    errors: Vec<String>,
    progress: Arc<Progress>,
    receipted: Arc<Mutex<Vec<Receipted>>>,
}

impl Sender {
    fn handle(&mut self, f: &Frame) {
        if f.command != Command::Message
            || f.header("subscription") != Some("c")
            || f.header("event") != Some("message.created")
        {
            return;
        }
        let seq: i64 = f
            .header("seq")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no seq in {f:?}"));
        let id = f
            .header("chat-message-id")
            .unwrap_or_else(|| panic!("no chat-message-id in {f:?}"))
            .to_owned();
        match self.received.get(&seq) {
            Some(known) => {
                assert_eq!(known, &id, "two messages with seq {seq}");
                self.duplicates += 1;
            }
            None => {
                self.received.insert(seq, id);
            }
        }
        while self.received.contains_key(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
    }

    /// Connects to its own instance or, failing that, the next ones in
    /// turn, and subscribes (resuming after the last contiguous seq).
    async fn connect(&mut self) {
        let deadline = Instant::now() + PROGRESS_WAIT;
        let mut attempt = 0;
        loop {
            let addr = {
                let addrs = self.stomp.lock().expect("addresses");
                addrs[(self.home + attempt) % addrs.len()].clone()
            };
            attempt += 1;
            if let Some(c) = self.try_connect(&addr).await {
                self.conn = Some(c);
                self.connections += 1;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sender {} could not connect to any instance within {PROGRESS_WAIT:?}",
                self.idx
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn try_connect(&mut self, addr: &str) -> Option<Client> {
        let mut c = Client::try_tcp(addr).await?;
        let connect = format!(
            "CONNECT\naccept-version:1.2\nhost:localhost\nAuthorization:Bearer {}\n\n\0",
            self.token
        );
        c.try_send(connect.as_bytes()).await.ok()?;
        match read(&mut c, Duration::from_secs(15)).await {
            Read::Frame(f) if f.command == Command::Connected => {}
            _ => return None,
        }
        let since = if self.contiguous > 0 {
            format!("since-seq:{}\n", self.contiguous)
        } else {
            String::new()
        };
        let subscribe = format!(
            "SUBSCRIBE\nid:e\ndestination:/user/queue/errors\n\n\0\
             SUBSCRIBE\nid:c\ndestination:/topic/chat/{}\n{since}receipt:sub\n\n\0",
            self.cid
        );
        c.try_send(subscribe.as_bytes()).await.ok()?;
        loop {
            match read(&mut c, Duration::from_secs(15)).await {
                Read::Frame(f)
                    if f.command == Command::Receipt && f.header("receipt-id") == Some("sub") =>
                {
                    return Some(c)
                }
                Read::Frame(f) if f.command == Command::Error => return None,
                Read::Frame(f) if f.header("subscription") == Some("e") => return None,
                Read::Frame(f) => self.handle(&f),
                Read::Closed | Read::Timeout => return None,
            }
        }
    }

    /// SENDs message `n` and waits for its RECEIPT, an application error,
    /// or the end of the connection.
    async fn send_one(&mut self, n: u64) {
        if self.conn.is_none() {
            self.connect().await;
        }
        let Some(mut c) = self.conn.take() else {
            return;
        };
        self.progress.attempts.fetch_add(1, Ordering::SeqCst);
        let payload = json!({
            "conversationId": self.cid,
            "body": format!("{}-{n}", self.idx),
            "clientMsgId": uuid::Uuid::new_v4().to_string(),
        })
        .to_string();
        let receipt = format!("m{n}");
        let frame = format!(
            "SEND\ndestination:/app/chat.send\ncontent-type:application/json\nreceipt:{receipt}\n\n{payload}\0"
        );
        if c.try_send(frame.as_bytes()).await.is_err() {
            return;
        }
        let deadline = Instant::now() + RECEIPT_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match read(&mut c, left).await {
                Read::Frame(f)
                    if f.command == Command::Receipt
                        && f.header("receipt-id") == Some(receipt.as_str()) =>
                {
                    let id = f.header("chat-message-id").expect("chat-message-id");
                    let seq = f
                        .header("seq")
                        .and_then(|s| s.parse().ok())
                        .expect("seq on a chat RECEIPT");
                    self.receipted.lock().expect("receipts").push((
                        self.idx,
                        n,
                        id.to_owned(),
                        seq,
                    ));
                    self.progress.receipts.fetch_add(1, Ordering::SeqCst);
                    self.conn = Some(c);
                    return;
                }
                Read::Frame(f)
                    if f.command == Command::Message && f.header("subscription") == Some("e") =>
                {
                    // Refused (e.g. `unavailable`): no RECEIPT will come.
                    self.errors
                        .push(String::from_utf8_lossy(&f.body).into_owned());
                    self.conn = Some(c);
                    return;
                }
                Read::Frame(f) if f.command == Command::Error => {
                    self.errors.push(format!("ERROR {:?}", f.header("message")));
                    return;
                }
                Read::Frame(f) => self.handle(&f),
                Read::Closed | Read::Timeout => return,
            }
        }
    }

    /// Reads (reconnecting when needed) until every seq in `target` has
    /// arrived.
    async fn catch_up(&mut self, target: &BTreeMap<i64, String>) {
        let deadline = Instant::now() + PROGRESS_WAIT;
        loop {
            let missing = target
                .keys()
                .filter(|s| !self.received.contains_key(s))
                .count();
            if missing == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sender {} still misses {missing} receipted messages (has up to seq {} contiguously)",
                self.idx,
                self.contiguous
            );
            if self.conn.is_none() {
                self.connect().await;
            }
            let Some(mut c) = self.conn.take() else {
                continue;
            };
            match read(&mut c, Duration::from_secs(1)).await {
                Read::Frame(f) => {
                    self.handle(&f);
                    self.conn = Some(c);
                }
                Read::Timeout => self.conn = Some(c),
                Read::Closed => {}
            }
        }
    }
}

/// A user of the load: (user id, access token, home instance).
type User = (String, String, usize);

/// What each conversation's members must end up with (seq → message id),
/// by conversation.
type Targets = Arc<Vec<BTreeMap<i64, String>>>;

/// The senders' tasks and the handles to steer them.
struct Load {
    progress: Vec<Arc<Progress>>,
    receipted: Arc<Mutex<Vec<Receipted>>>,
    stop: watch::Sender<bool>,
    target: watch::Sender<Option<Targets>>,
    tasks: Vec<tokio::task::JoinHandle<Sender>>,
    /// HTTP address of instance 0 (which every scenario keeps running).
    http: String,
    /// Each conversation's id and a member's token.
    conversations: Vec<(String, String)>,
    /// The conversation of each sender.
    conv_of: Vec<usize>,
}

impl Load {
    /// Registers the users (spread over the instances), makes one group
    /// conversation of them all, connects every sender and starts sending.
    async fn start(cluster: &Cluster) -> Load {
        let users = users(cluster, INSTANCES * SENDERS_PER_INSTANCE).await;
        let cid = group(cluster, &users[0], &users[1..]).await;
        let everyone = (0..users.len()).collect();
        Load::run(cluster, users, vec![(cid, everyone)]).await
    }

    /// Like [`Load::start`], but with one conversation per partition of a
    /// messages topic of `partitions` (so every partition carries load),
    /// each of two senders on different instances.
    async fn start_on_every_partition(cluster: &Cluster, partitions: u32) -> Load {
        let users = users(cluster, 2 * partitions as usize).await;
        let mut taken = vec![false; partitions as usize];
        let mut conversations = Vec::new();
        for first in (0..users.len()).step_by(2) {
            // Conversations are made until one lands on a partition that
            // has none yet.
            loop {
                let cid = group(cluster, &users[first], &users[first + 1..first + 2]).await;
                let p = partition_of(&cid, partitions) as usize;
                if !taken[p] {
                    taken[p] = true;
                    conversations.push((cid, vec![first, first + 1]));
                    break;
                }
            }
        }
        Load::run(cluster, users, conversations).await
    }

    /// Connects every sender to its conversation (`conversations`: id and
    /// members, as indexes into `users`) and starts sending.
    async fn run(
        cluster: &Cluster,
        users: Vec<User>,
        conversations: Vec<(String, Vec<usize>)>,
    ) -> Load {
        let mut conv_of = vec![0; users.len()];
        for (c, (_, members)) in conversations.iter().enumerate() {
            for m in members {
                conv_of[*m] = c;
            }
        }
        let (stop, _) = watch::channel(false);
        let (target, _) = watch::channel::<Option<Targets>>(None);
        let receipted = Arc::new(Mutex::new(Vec::new()));
        let mut senders = Vec::new();
        for (idx, (_, token, home)) in users.iter().enumerate() {
            let conv = conv_of[idx];
            let mut s = Sender {
                idx,
                token: token.clone(),
                home: *home,
                stomp: cluster.stomp.clone(),
                cid: conversations[conv].0.clone(),
                conv,
                conn: None,
                received: BTreeMap::new(),
                duplicates: 0,
                contiguous: 0,
                connections: 0,
                errors: Vec::new(),
                progress: Arc::default(),
                receipted: receipted.clone(),
            };
            // Everyone is subscribed before the first SEND.
            s.connect().await;
            senders.push(s);
        }
        let mut progress = Vec::new();
        let mut tasks = Vec::new();
        for mut s in senders {
            progress.push(s.progress.clone());
            let stop = stop.subscribe();
            let mut target = target.subscribe();
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while !*stop.borrow() {
                    n += 1;
                    s.send_one(n).await;
                }
                s.progress.sending_done.store(true, Ordering::SeqCst);
                let goal = loop {
                    if let Some(t) = target.borrow_and_update().clone() {
                        break t;
                    }
                    target.changed().await.expect("target sender alive");
                };
                s.catch_up(&goal[s.conv]).await;
                s
            }));
        }
        Load {
            progress,
            receipted,
            stop,
            target,
            tasks,
            http: cluster.http(0),
            conversations: conversations
                .into_iter()
                .map(|(cid, members)| (cid, users[members[0]].1.clone()))
                .collect(),
            conv_of,
        }
    }

    fn counts(&self, f: impl Fn(&Progress) -> usize) -> Vec<usize> {
        self.progress.iter().map(|p| f(p)).collect()
    }

    /// Waits until every sender has `more` RECEIPTs beyond now.
    async fn receipts(&self, more: usize) {
        let base = self.counts(|p| p.receipts.load(Ordering::SeqCst));
        let deadline = Instant::now() + PROGRESS_WAIT;
        loop {
            let now = self.counts(|p| p.receipts.load(Ordering::SeqCst));
            if now.iter().zip(&base).all(|(n, b)| *n >= b + more) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no progress: receipts {now:?}, from {base:?}, wanted {more} more each"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (at most `within`) until every sender has started a new SEND,
    /// so that each has one in flight during a fault.
    async fn new_attempts(&self, within: Duration) {
        let base = self.counts(|p| p.attempts.load(Ordering::SeqCst));
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let now = self.counts(|p| p.attempts.load(Ordering::SeqCst));
            if now.iter().zip(&base).all(|(n, b)| n > b) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops sending and checks the outcome (see the module comment);
    /// returns the senders and how many stored messages got no RECEIPT.
    async fn finish(self) -> (Vec<Sender>, usize) {
        let _ = self.stop.send(true);
        let deadline = Instant::now() + PROGRESS_WAIT;
        while !self
            .progress
            .iter()
            .all(|p| p.sending_done.load(Ordering::SeqCst))
        {
            assert!(Instant::now() < deadline, "senders did not stop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let receipted = self.receipted.lock().expect("receipts").clone();
        let mut targets = Vec::new();
        let mut unreceipted = 0;
        for (c, (cid, token)) in self.conversations.iter().enumerate() {
            let mine: Vec<&Receipted> = receipted
                .iter()
                .filter(|r| self.conv_of[r.0] == c)
                .collect();
            let (target, more) = check_history(&self.http, token, cid, &mine).await;
            targets.push(target);
            unreceipted += more;
        }

        // Every subscriber gets every receipted message.
        let _ = self.target.send(Some(Arc::new(targets.clone())));
        let mut senders = Vec::new();
        for t in self.tasks {
            senders.push(t.await.expect("sender task"));
        }
        for s in &senders {
            for (seq, id) in &targets[s.conv] {
                assert_eq!(
                    s.received.get(seq),
                    Some(id),
                    "sender {} at seq {seq}",
                    s.idx
                );
            }
        }
        eprintln!(
            "{} receipted in {} conversations, {unreceipted} more stored without a RECEIPT; per sender: connections {:?}, duplicates {:?}, refused {:?}",
            receipted.len(),
            self.conversations.len(),
            senders.iter().map(|s| s.connections).collect::<Vec<_>>(),
            senders.iter().map(|s| s.duplicates).collect::<Vec<_>>(),
            senders.iter().map(|s| s.errors.len()).collect::<Vec<_>>(),
        );
        (senders, unreceipted)
    }
}

/// Checks conversation `cid`'s history against its `receipted` messages
/// (see the module comment); returns what its members must have received
/// (seq → id) and how many stored messages got no RECEIPT.
async fn check_history(
    http: &str,
    token: &str,
    cid: &str,
    receipted: &[&Receipted],
) -> (BTreeMap<i64, String>, usize) {
    let history = history(http, token, cid).await;

    // The history: gapless, each id once.
    let seqs: Vec<i64> = history.iter().map(|m| m.1).collect();
    let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "history is gapless and ordered");
    let by_id: HashMap<&str, (i64, &str)> = history
        .iter()
        .map(|(id, seq, body)| (id.as_str(), (*seq, body.as_str())))
        .collect();
    assert_eq!(by_id.len(), history.len(), "a message id appears twice");
    // Each sender's messages are in the order it sent them.
    let mut last: HashMap<&str, u64> = HashMap::new();
    for (_, seq, body) in &history {
        let (who, n) = body.split_once('-').expect("sender-counter body");
        let n: u64 = n.parse().expect("counter");
        if let Some(prev) = last.insert(who, n) {
            assert!(
                prev < n,
                "sender {who}: message {n} at seq {seq} after {prev}"
            );
        }
    }
    // Every receipted message is there once, with the seq its RECEIPT named.
    let mut target = BTreeMap::new();
    for (idx, n, id, seq) in receipted {
        let (stored_seq, body) = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("receipted message {idx}-{n} ({id}) lost"));
        assert_eq!(stored_seq, seq, "seq of {idx}-{n}");
        assert_eq!(*body, format!("{idx}-{n}"));
        target.insert(*seq, id.clone());
    }
    assert_eq!(target.len(), receipted.len(), "two RECEIPTs with one seq");
    let unreceipted: HashSet<i64> = seqs
        .iter()
        .copied()
        .filter(|s| !target.contains_key(s))
        .collect();
    (target, unreceipted.len())
}

/// Registers `n` users, spread over the first [`INSTANCES`] instances.
async fn users(cluster: &Cluster, n: usize) -> Vec<User> {
    let mut users = Vec::new();
    for i in 0..n {
        let home = i % INSTANCES;
        let name = format!("f{i}_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let (id, token) = register(&cluster.http(home), &name).await;
        users.push((id, token, home));
    }
    users
}

/// A group conversation of `creator` and `others`; its id.
async fn group(cluster: &Cluster, creator: &User, others: &[User]) -> String {
    let res = reqwest::Client::new()
        .post(format!("http://{}/api/conversations", cluster.http(0)))
        .bearer_auth(&creator.1)
        .json(&json!({
            "type": "group",
            "name": "faults",
            "memberIds": others.iter().map(|u| u.0.clone()).collect::<Vec<_>>(),
        }))
        .send()
        .await
        .expect("create conversation");
    assert_eq!(res.status(), 201);
    res.json::<serde_json::Value>().await.expect("json")["id"]
        .as_str()
        .expect("conversation id")
        .to_owned()
}

/// The partition of the messages topic a send to conversation `cid` goes
/// to: the producer's default partitioner (librdkafka's
/// `consistent_random`) takes the CRC-32 of the key, the conversation id.
/// The rebalance test checks the outcome against the topic's offsets.
fn partition_of(cid: &str, partitions: u32) -> u32 {
    let mut crc = !0u32;
    for b in cid.bytes() {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc % partitions
}

/// The whole history of `cid`: (id, seq, body) in seq order.
async fn history(http: &str, token: &str, cid: &str) -> Vec<(String, i64, String)> {
    support::process::history(http, token, cid)
        .await
        .iter()
        .map(|m| {
            (
                m["id"].as_str().expect("id").to_owned(),
                m["seq"].as_i64().expect("seq"),
                m["body"].as_str().expect("body").to_owned(),
            )
        })
        .collect()
}

/// Runs `scenario` on a fresh cluster (`env`: more of the instances'
/// environment), printing the instances' logs when it fails; then drops
/// `db` (the shared PostgreSQL's scratch database), if any.
async fn with_cluster<F, Fut>(
    db: Option<PgDatabase>,
    db_url: &str,
    redis_url: &str,
    env: Vec<(String, String)>,
    scenario: F,
) where
    F: FnOnce(Arc<Cluster>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let cluster = Arc::new(Cluster::start(db_url, redis_url, env).await);
    let outcome = tokio::spawn(scenario(cluster.clone())).await;
    if outcome.is_err() {
        eprintln!("{}", cluster.logs());
    }
    drop(cluster);
    if let Some(db) = db {
        db.drop_database().await;
    }
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Stops `service` and starts it again, [`RESTARTS`] times, during load.
/// With `receipts_without_it`, the outage must not cost a single RECEIPT:
/// every stored message got one and no SEND was refused.
async fn restarts_during_load<S: Restartable + Send + 'static>(
    cluster: Arc<Cluster>,
    service: Arc<Mutex<S>>,
    receipts_without_it: bool,
) {
    let load = Load::start(&cluster).await;
    load.receipts(ROUND).await;
    for _ in 0..RESTARTS {
        let s = service.clone();
        tokio::task::spawn_blocking(move || s.lock().expect("service").stop())
            .await
            .expect("stop the service");
        // Every sender has a SEND in flight while it is down.
        load.new_attempts(Duration::from_secs(10)).await;
        let s = service.clone();
        tokio::task::spawn_blocking(move || s.lock().expect("service").restart())
            .await
            .expect("restart the service");
        load.receipts(ROUND).await;
    }
    let (senders, unreceipted) = load.finish().await;
    if receipts_without_it {
        assert_eq!(unreceipted, 0, "stored messages without a RECEIPT");
        for s in &senders {
            assert!(s.errors.is_empty(), "sender {}: {:?}", s.idx, s.errors);
        }
    }
}

/// Twice during load a new instance starts: it joins the persisters'
/// consumer group, which rebalances, and takes over partitions. Then an
/// original instance leaves, the first time by SIGKILL, the second by
/// SIGTERM; its clients connect to another instance and resume with
/// `since-seq`, and its partitions move to the others.
///
/// The consumers use the eager rebalance protocol: on every change of
/// membership each member has its partitions revoked and assigned anew,
/// which its `assign` counter shows. A member that leaves (SIGTERM) says
/// so, and the group rebalances at once. A member that died (SIGKILL) is
/// dropped by the coordinator once its session timed out, and then every
/// member should rejoin; tansu (0.6) tells only the member whose heartbeat
/// noticed, so the others keep their old partitions and the dead member's
/// would stay without an owner until the next change of membership. The
/// survivors' stall watch sees those partitions make no progress while
/// their own do, and rejoins: after the SIGKILL every conversation must
/// make progress again before the next instance joins.
async fn rebalances_during_load(cluster: Arc<Cluster>, kafka: KafkaConfig) {
    let started = Instant::now();
    let load = Load::start_on_every_partition(&cluster, kafka.partitions).await;
    load.receipts(ROUND).await;
    let ends = support::kafka::end_offsets(&kafka).await;
    assert!(
        ends.iter().all(|e| *e > 0),
        "a partition carries no load: end offsets {ends:?}"
    );
    let mut live: Vec<usize> = (0..INSTANCES).collect();
    // The group has formed: every instance stores its share.
    let persisted = cluster.read(&live, PERSISTED).await;
    cluster
        .grown(&persisted, On::Every, "an instance has no partition")
        .await;
    for (victim, kill) in [(2, true), (1, false)] {
        let assigned = cluster.read(&live, ASSIGNED).await;
        let joined = cluster.add().await;
        let persisted = cluster.read(&[joined], PERSISTED).await;
        // Every member is assigned partitions anew, the newcomer some, and
        // as every partition carries load, it stores messages.
        cluster
            .grown(&assigned, On::Every, "no rebalance on a join")
            .await;
        cluster
            .grown(&persisted, On::Every, "the newcomer has no partition")
            .await;
        live.push(joined);
        // Every partition has an owner: every conversation makes progress.
        // The instance about to leave still has partitions of its own.
        let persisted = cluster.read(&[victim], PERSISTED).await;
        load.receipts(ROUND).await;
        cluster
            .grown(
                &persisted,
                On::Every,
                "the leaving instance has no partition",
            )
            .await;
        eprintln!("{:?}: instance {joined} joined", started.elapsed());

        live.retain(|n| *n != victim);
        let assigned = cluster.read(&live, ASSIGNED).await;
        load.new_attempts(Duration::from_secs(10)).await;
        if kill {
            cluster.kill(victim);
            cluster
                .grown(&assigned, On::Any, "the killed instance stays in the group")
                .await;
        } else {
            cluster.terminate(victim).await;
            cluster
                .grown(&assigned, On::Every, "no rebalance on a leave")
                .await;
        }
        // Its partitions moved: every conversation makes progress again.
        load.receipts(ROUND).await;
        let rejoins = cluster.read(&live, STALL_REJOINS).await;
        eprintln!("stall rejoins on {:?}: {:?}", rejoins.nodes, rejoins.values);
        eprintln!(
            "{:?}: instance {victim} left ({})",
            started.elapsed(),
            if kill { "SIGKILL" } else { "SIGTERM" }
        );
    }
    let (senders, _) = load.finish().await;
    for s in senders.iter().filter(|s| s.home != 0) {
        assert!(s.connections >= 2, "sender {} never moved", s.idx);
    }
    eprintln!("{:?}: checked", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_joining_and_leaving_the_kafka_group_during_load_lose_no_receipted_message() {
    let Some(mut kafka) = support::kafka::config(PARTITIONS) else {
        return;
    };
    // The SIGKILLed member's partitions move once its session timed out.
    kafka.session_timeout_ms = 10_000;
    if services::redis_admin().await.is_none() {
        return;
    }
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let url = db.url.clone();
    let env = support::kafka::env(&kafka);
    with_cluster(Some(db), &url, &services::redis_url(), env, |cluster| {
        rebalances_during_load(cluster, kafka)
    })
    .await;
}

/// An instance is SIGKILLed during steady load; its clients connect to the
/// other instances and resume with `since-seq`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_during_load_loses_no_receipted_message() {
    if services::redis_admin().await.is_none() {
        return;
    }
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let url = db.url.clone();
    with_cluster(
        Some(db),
        &url,
        &services::redis_url(),
        Vec::new(),
        |cluster| async move {
            let load = Load::start(&cluster).await;
            load.receipts(ROUND).await;
            cluster.kill(2);
            load.receipts(ROUND).await;
            let (senders, _) = load.finish().await;
            for s in senders.iter().filter(|s| s.home == 2) {
                assert!(s.connections >= 2, "sender {} never moved", s.idx);
            }
        },
    )
    .await;
}

/// Redis (relay and shared state) is killed and started again, twice,
/// during load. A RECEIPT needs only PostgreSQL (the persister hands it to
/// its own instance without the relay), so none is held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_during_load_loses_no_receipted_message() {
    let Some(redis) = tokio::task::spawn_blocking(PrivateRedis::start)
        .await
        .expect("start redis")
    else {
        return;
    };
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let (url, redis_url) = (db.url.clone(), redis.url());
    let redis = Arc::new(Mutex::new(redis));
    with_cluster(Some(db), &url, &redis_url, Vec::new(), |cluster| {
        restarts_during_load(cluster, redis, true)
    })
    .await;
}

/// PostgreSQL is stopped (immediate mode, like a crash) and started again,
/// twice, during load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_during_load_loses_no_receipted_message() {
    if services::redis_admin().await.is_none() {
        return;
    }
    let Some(pg) = tokio::task::spawn_blocking(PrivatePostgres::start)
        .await
        .expect("start postgres")
    else {
        return;
    };
    let url = pg.url();
    let pg = Arc::new(Mutex::new(pg));
    let scenario_pg = pg.clone();
    let outcome = tokio::spawn(async move {
        with_cluster(None, &url, &services::redis_url(), Vec::new(), |cluster| {
            restarts_during_load(cluster, scenario_pg, false)
        })
        .await
    })
    .await;
    if let Err(e) = outcome {
        if let Ok(pg) = pg.lock() {
            eprintln!("--- postgres ---\n{}", pg.log());
        }
        std::panic::resume_unwind(e.into_panic());
    }
}
