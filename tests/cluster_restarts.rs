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
//! The SIGKILL test uses the shared PostgreSQL and Redis
//! (`STOMPLINE_TEST_POSTGRES_URL`, `STOMPLINE_TEST_REDIS_URL`, a key prefix
//! of its own). The restart tests start a private `redis-server` or
//! PostgreSQL cluster on a free loopback port (see `support/services.rs`),
//! so restarting it disturbs no one else. A missing service or binary skips
//! a test, or fails it under `STOMPLINE_REQUIRE_SERVICES=1`.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use stomp_codec::{Command, Frame, Item};
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

/// Three instances sharing `db_url` and `redis_url`.
struct Cluster {
    processes: Mutex<Vec<ServerProcess>>,
    stomp: Vec<String>,
    http: Vec<String>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    async fn start(db_url: &str, redis_url: &str) -> Cluster {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let env: Vec<(String, String)> = vec![
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
        let mut dirs = Vec::new();
        let mut processes = Vec::new();
        for _ in 0..INSTANCES {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().to_path_buf();
            let p = support::process::spawn(path, env.clone()).await;
            dirs.push(dir);
            processes.push(p);
        }
        Cluster {
            stomp: processes.iter().map(|p| p.stomp.clone()).collect(),
            http: processes.iter().map(|p| p.http.clone()).collect(),
            processes: Mutex::new(processes),
            _dirs: dirs,
        }
    }

    /// SIGKILLs instance `node`.
    fn kill(&self, node: usize) {
        self.processes.lock().expect("processes")[node].kill();
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
    stomp: Vec<String>,
    cid: String,
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
            let node = (self.home + attempt) % self.stomp.len();
            attempt += 1;
            if let Some(c) = self.try_connect(node).await {
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

    async fn try_connect(&mut self, node: usize) -> Option<Client> {
        let mut c = Client::try_tcp(&self.stomp[node]).await?;
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

/// The senders' tasks and the handles to steer them.
struct Load {
    progress: Vec<Arc<Progress>>,
    receipted: Arc<Mutex<Vec<Receipted>>>,
    stop: watch::Sender<bool>,
    target: watch::Sender<Option<Arc<BTreeMap<i64, String>>>>,
    tasks: Vec<tokio::task::JoinHandle<Sender>>,
    /// (http address of instance 0, a member's token, conversation id).
    reader: (String, String, String),
}

impl Load {
    /// Registers the users (spread over the instances), makes one group
    /// conversation of them all, connects every sender and starts sending.
    async fn start(cluster: &Cluster) -> Load {
        let mut users = Vec::new();
        for i in 0..INSTANCES * SENDERS_PER_INSTANCE {
            let home = i % INSTANCES;
            let name = format!("f{i}_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
            let (id, token) = register(&cluster.http[home], &name).await;
            users.push((id, token, home));
        }
        let res = reqwest::Client::new()
            .post(format!("http://{}/api/conversations", cluster.http[0]))
            .bearer_auth(&users[0].1)
            .json(&json!({
                "type": "group",
                "name": "faults",
                "memberIds": users[1..].iter().map(|u| u.0.clone()).collect::<Vec<_>>(),
            }))
            .send()
            .await
            .expect("create conversation");
        assert_eq!(res.status(), 201);
        let cid = res.json::<serde_json::Value>().await.expect("json")["id"]
            .as_str()
            .expect("conversation id")
            .to_owned();

        let (stop, _) = watch::channel(false);
        let (target, _) = watch::channel::<Option<Arc<BTreeMap<i64, String>>>>(None);
        let receipted = Arc::new(Mutex::new(Vec::new()));
        let mut senders = Vec::new();
        for (idx, (_, token, home)) in users.iter().enumerate() {
            let mut s = Sender {
                idx,
                token: token.clone(),
                home: *home,
                stomp: cluster.stomp.clone(),
                cid: cid.clone(),
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
                s.catch_up(&goal).await;
                s
            }));
        }
        Load {
            progress,
            receipted,
            stop,
            target,
            tasks,
            reader: (cluster.http[0].clone(), users[0].1.clone(), cid),
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
        let (http, token, cid) = &self.reader;
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
        for (idx, n, id, seq) in &receipted {
            let (stored_seq, body) = by_id
                .get(id.as_str())
                .unwrap_or_else(|| panic!("receipted message {idx}-{n} ({id}) lost"));
            assert_eq!(stored_seq, seq, "seq of {idx}-{n}");
            assert_eq!(*body, format!("{idx}-{n}"));
            target.insert(*seq, id.clone());
        }
        assert_eq!(target.len(), receipted.len(), "two RECEIPTs with one seq");

        // Every subscriber gets every receipted message.
        let _ = self.target.send(Some(Arc::new(target.clone())));
        let mut senders = Vec::new();
        for t in self.tasks {
            senders.push(t.await.expect("sender task"));
        }
        for s in &senders {
            for (seq, id) in &target {
                assert_eq!(
                    s.received.get(seq),
                    Some(id),
                    "sender {} at seq {seq}",
                    s.idx
                );
            }
        }
        let unreceipted: HashSet<i64> = seqs
            .iter()
            .copied()
            .filter(|s| !target.contains_key(s))
            .collect();
        eprintln!(
            "{} receipted, {} more stored without a RECEIPT; per sender: connections {:?}, duplicates {:?}, refused {:?}",
            receipted.len(),
            unreceipted.len(),
            senders.iter().map(|s| s.connections).collect::<Vec<_>>(),
            senders.iter().map(|s| s.duplicates).collect::<Vec<_>>(),
            senders.iter().map(|s| s.errors.len()).collect::<Vec<_>>(),
        );
        (senders, unreceipted.len())
    }
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

/// Runs `scenario` on a fresh cluster, printing the instances' logs when it
/// fails; then drops `db` (the shared PostgreSQL's scratch database), if any.
async fn with_cluster<F, Fut>(db: Option<PgDatabase>, db_url: &str, redis_url: &str, scenario: F)
where
    F: FnOnce(Arc<Cluster>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let cluster = Arc::new(Cluster::start(db_url, redis_url).await);
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
    with_cluster(Some(db), &url, &redis_url, |cluster| {
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
        with_cluster(None, &url, &services::redis_url(), |cluster| {
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
