//! The chat pipeline of stompline: durable sends with RECEIPTs through
//! `SEND /app/chat.send`, delivered as `message.created` events on
//! `/topic/chat/{cid}` or `/user/queue/messages`.
//!
//! Set-up goes through REST: `--users` users are registered and
//! `--conversations` conversations created among them. `--senders`
//! connections (round-robin over the users) then send to the conversations
//! their user belongs to, round-robin, either as fast as an in-flight window
//! of unanswered RECEIPTs allows (`--window`) or at a fixed total rate
//! (`--rate`). Subscriber connections, separate from the senders, observe
//! every conversation once (`--deliver topic`) or every member's copy
//! (`--deliver user`) and check the server's per-conversation `seq`: each
//! of `1..=last` exactly once, in order.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::json;
use stomp_codec::{header, Command, Frame};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::conn::{connect, Batch, Conn, Credentials, Reader, Target};
use crate::http::{parse_base, post_json};
use crate::report::{note_error, Deliveries, Latency, Report};
use crate::run::Credit;
use crate::track::{body, histogram, now_ns, Seen, Window, MIN_BODY};
use crate::usage::CpuSample;
use crate::Settings;

/// What conversations look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Groups of `--group-size` members (with one conversation: every user).
    Group,
    /// Direct conversations, one per pair of users.
    Direct,
}

/// Where deliveries are observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Deliver {
    /// `/topic/chat/{cid}`: one subscription per conversation, held by one
    /// of its members on a connection apart from the senders.
    Topic,
    /// `/user/queue/messages`: one connection per user, receiving every
    /// message of every conversation the user belongs to.
    User,
}

/// `chat` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatArgs {
    /// The server's REST base, `http://IP:PORT`, for registering users and
    /// creating conversations.
    #[arg(long)]
    pub http: String,
    /// Users registered for the run (registration is argon2-hashed: keep it small).
    #[arg(long, default_value_t = 20)]
    pub users: usize,
    /// Password of every registered user.
    #[arg(long, default_value = "bench-password-1")]
    pub password: String,
    /// Sending connections, assigned to the users round-robin.
    #[arg(long, default_value_t = 20)]
    pub senders: usize,
    /// Conversations.
    #[arg(long, default_value_t = 1)]
    pub conversations: usize,
    /// Conversation kind.
    #[arg(long, value_enum, default_value_t = Kind::Group)]
    pub kind: Kind,
    /// Members per group when there is more than one conversation.
    #[arg(long, default_value_t = 3)]
    pub group_size: usize,
    /// Max-rate mode: SENDs per sender whose RECEIPT has not arrived yet.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Fixed total rate in messages/s over all senders instead of max rate
    /// (0 = max rate with `--window`).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Where deliveries are observed.
    #[arg(long, value_enum, default_value_t = Deliver::Topic)]
    pub deliver: Deliver,
    /// Chat message text size in bytes (at least 43).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds sent before measuring starts.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds to wait for the last RECEIPTs and deliveries after sending stops.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Further instances of a cluster, as STOMP URLs (comma-separated):
    /// connection i goes to instance i mod N, `--url` being instance 0, so
    /// senders and the subscribers of their conversations mostly sit on
    /// different instances. Setup still goes to `--http`.
    #[arg(long, value_delimiter = ',')]
    pub also_url: Vec<String>,
}

/// A registered user.
struct User {
    name: String,
    id: String,
    token: String,
}

/// A conversation: its id and member user indexes.
struct Conversation {
    id: Arc<str>,
    members: Vec<usize>,
}

/// What every sender and subscriber shares.
struct Shared {
    window: Arc<Window>,
    /// Highest `seq` seen in a RECEIPT, per conversation index.
    last_seq: Vec<AtomicU64>,
    /// Conversation id -> index.
    index: HashMap<Arc<str>, usize>,
}

/// Registers `n` users, a few at a time.
async fn register(base: std::net::SocketAddr, a: &ChatArgs) -> Result<Vec<User>> {
    let gate = Arc::new(Semaphore::new(4));
    let mut tasks = Vec::new();
    for i in 0..a.users {
        let gate = gate.clone();
        let name = format!("c{}u{i}", crate::run_id());
        let password = a.password.clone();
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire_owned().await?;
            let v = post_json(
                base,
                "/api/auth/register",
                None,
                &json!({"username": name, "password": password}),
            )
            .await?;
            let id = v["user"]["id"].as_str().context("user.id")?.to_owned();
            let token = v["accessToken"].as_str().context("accessToken")?.to_owned();
            anyhow::Ok(User { name, id, token })
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

/// Member sets of the conversations to create.
fn plan_conversations(a: &ChatArgs) -> Result<Vec<Vec<usize>>> {
    let u = a.users;
    if a.conversations == 1 && a.kind == Kind::Group {
        return Ok(vec![(0..u).collect()]);
    }
    match a.kind {
        Kind::Group => {
            let g = a.group_size.clamp(2, u);
            Ok((0..a.conversations)
                .map(|k| (0..g).map(|j| (k + j) % u).collect())
                .collect())
        }
        Kind::Direct => {
            // Pairs by distance, so that every user has about as many.
            let mut seen = HashSet::new();
            let mut out = Vec::new();
            'outer: for d in 1..=u / 2 {
                for i in 0..u {
                    let (x, y) = (i, (i + d) % u);
                    if seen.insert((x.min(y), x.max(y))) {
                        out.push(vec![x, y]);
                        if out.len() == a.conversations {
                            break 'outer;
                        }
                    }
                }
            }
            if out.len() < a.conversations {
                bail!("{} users make only {} direct conversations", u, out.len());
            }
            Ok(out)
        }
    }
}

async fn create_conversations(
    base: std::net::SocketAddr,
    a: &ChatArgs,
    users: &Arc<Vec<User>>,
) -> Result<Vec<Conversation>> {
    let plans = plan_conversations(a)?;
    let gate = Arc::new(Semaphore::new(16));
    let mut tasks = Vec::new();
    for (k, members) in plans.into_iter().enumerate() {
        let gate = gate.clone();
        let users = users.clone();
        let kind = a.kind;
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire_owned().await?;
            let creator = &users[members[0]];
            let others: Vec<&str> = members[1..].iter().map(|&m| users[m].id.as_str()).collect();
            let body = match kind {
                Kind::Direct => json!({"type": "direct", "memberIds": others}),
                Kind::Group => {
                    json!({"type": "group", "name": format!("bench {k}"), "memberIds": others})
                }
            };
            let v = post_json(base, "/api/conversations", Some(&creator.token), &body).await?;
            let id: Arc<str> = v["id"].as_str().context("conversation id")?.into();
            anyhow::Ok(Conversation { id, members })
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

/// Opens connection `i` as `user`, on instance `i mod N` of `targets`
/// (empty: the endpoint's own target).
async fn open(s: &Settings, targets: &[Target], user: &User, i: usize) -> Result<Conn> {
    let creds = Credentials {
        login: user.name.clone(),
        passcode: user.token.clone(),
        host: s.endpoint.creds.host.clone(),
        heartbeat_ms: 0,
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        connect(
            targets
                .get(i % targets.len().max(1))
                .unwrap_or(&s.endpoint.target),
            &creds,
            s.endpoint.source(i),
        ),
    )
    .await
    .context("CONNECT timed out")?
}

async fn subscribe(conn: &mut Conn, id: &str, dest: &str) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(30), conn.subscribe(id, dest))
        .await
        .with_context(|| format!("no RECEIPT for SUBSCRIBE {dest}"))?
}

// --- subscribers -----------------------------------------------------------

/// The part of a `message.created` body the checks need.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Created<'a> {
    #[serde(borrow)]
    conversation_id: std::borrow::Cow<'a, str>,
    seq: u64,
    #[serde(borrow)]
    body: std::borrow::Cow<'a, str>,
}

/// One subscriber connection's view of the run.
struct SubTracker {
    latency: Histogram<u64>,
    measured: u64,
    received: u64,
    unique: u64,
    duplicates: u64,
    reordered: u64,
    foreign: u64,
    error: Option<String>,
    /// Per observed conversation index: which seqs arrived.
    convs: HashMap<usize, Seen>,
}

impl SubTracker {
    fn record(&mut self, shared: &Shared, f: &Frame, now: u64) -> bool {
        self.received += 1;
        let Ok(c) = serde_json::from_slice::<Created>(&f.body) else {
            self.foreign += 1;
            return false;
        };
        let Some(&k) = shared.index.get(c.conversation_id.as_ref()) else {
            self.foreign += 1;
            return false;
        };
        let seen = self.convs.entry(k).or_default();
        if !seen.insert(c.seq) {
            self.duplicates += 1;
            return false;
        }
        self.unique += 1;
        match seen.highest {
            Some(h) if c.seq < h => self.reordered += 1,
            _ => seen.highest = Some(c.seq),
        }
        if let Some((_, _, sent)) = crate::track::parse(c.body.as_bytes()) {
            if shared.window.contains(sent) {
                self.measured += 1;
                self.latency
                    .saturating_record((now.saturating_sub(sent) / 1_000).max(1));
            }
        }
        true
    }
}

struct ChatSubscriber {
    progress: Arc<AtomicU64>,
    /// Conversation indexes this connection should see.
    observes: Vec<usize>,
    task: JoinHandle<SubTracker>,
}

fn spawn_subscriber(
    mut conn: Conn,
    observes: Vec<usize>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> ChatSubscriber {
    let progress = Arc::new(AtomicU64::new(0));
    let p = progress.clone();
    let task = tokio::spawn(async move {
        let mut t = SubTracker {
            latency: histogram(),
            measured: 0,
            received: 0,
            unique: 0,
            duplicates: 0,
            reordered: 0,
            foreign: 0,
            error: None,
            convs: HashMap::new(),
        };
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                frame = conn.reader.next_frame() => match frame {
                    Ok(Some(f)) if f.command == Command::Message => {
                        if f.header("event") == Some("message.created")
                            && t.record(&shared, &f, now_ns())
                        {
                            p.fetch_add(1, Ordering::Release);
                        }
                    }
                    Ok(Some(f)) if f.command == Command::Error => {
                        t.error = Some(format!(
                            "ERROR: {}",
                            f.header(header::MESSAGE).unwrap_or_default()
                        ));
                        break;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        t.error = Some("closed by server".into());
                        break;
                    }
                    Err(e) => {
                        t.error = Some(format!("{e:#}"));
                        break;
                    }
                }
            }
        }
        drop(conn);
        t
    });
    ChatSubscriber {
        progress,
        observes,
        task,
    }
}

// --- senders ---------------------------------------------------------------

/// What one sender's connection saw come back.
#[derive(Default)]
struct ReceiptStats {
    latency: Option<Histogram<u64>>,
    measured: u64,
    receipts: u64,
    app_errors: u64,
    errors: Vec<String>,
}

/// Reads a sender's connection: RECEIPTs (`receipt-id` = `conv:send-ns`)
/// and application errors on `/user/queue/errors`.
fn spawn_receipt_reader(
    mut reader: Reader,
    credit: Arc<Credit>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<ReceiptStats> {
    tokio::spawn(async move {
        let mut st = ReceiptStats {
            latency: Some(histogram()),
            ..Default::default()
        };
        let h = st.latency.as_mut().expect("set above");
        loop {
            let frame = tokio::select! {
                biased;
                _ = stop.changed() => break,
                f = reader.next_frame() => f,
            };
            match frame {
                Ok(Some(f)) => match f.command {
                    Command::Receipt => {
                        let now = now_ns();
                        let rid = f.header(header::RECEIPT_ID).unwrap_or_default();
                        let Some((k, sent)) = rid.split_once(':').and_then(|(k, t)| {
                            Some((k.parse::<usize>().ok()?, t.parse::<u64>().ok()?))
                        }) else {
                            continue;
                        };
                        st.receipts += 1;
                        if let (Some(seq), Some(slot)) = (
                            f.header("seq").and_then(|s| s.parse::<u64>().ok()),
                            shared.last_seq.get(k),
                        ) {
                            slot.fetch_max(seq, Ordering::AcqRel);
                        }
                        if shared.window.contains(sent) {
                            st.measured += 1;
                            h.saturating_record((now.saturating_sub(sent) / 1_000).max(1));
                        }
                        credit.complete_one();
                    }
                    Command::Message => {
                        // `/user/queue/errors`: the SEND failed; it is done.
                        st.app_errors += 1;
                        let code = f.header("code").unwrap_or_default().to_owned();
                        note_error(&mut st.errors, &format!("application error {code}"));
                        if f.header(header::RECEIPT_ID).is_some() {
                            credit.complete_one();
                        }
                    }
                    Command::Error => {
                        note_error(
                            &mut st.errors,
                            &format!("ERROR: {}", f.header(header::MESSAGE).unwrap_or_default()),
                        );
                        break;
                    }
                    _ => {}
                },
                Ok(None) => {
                    note_error(&mut st.errors, "sender closed by server");
                    break;
                }
                Err(e) => {
                    note_error(&mut st.errors, &format!("{e:#}"));
                    break;
                }
            }
        }
        st
    })
}

struct SenderPlan {
    id: u32,
    /// (conversation index, id) this sender writes to, round-robin.
    convs: Vec<(usize, Arc<str>)>,
    size: usize,
    window: usize,
    /// Messages/s for this sender (fixed-rate mode).
    rate: Option<f64>,
    start: Instant,
    until: Instant,
    drain: Duration,
}

#[derive(Default)]
struct SenderResult {
    sent: u64,
    stalled: bool,
    max_lag: Duration,
    stats: ReceiptStats,
}

fn chat_send(plan: &SenderPlan, n: u64, batch: &mut Batch, stamp: u64) {
    let (k, cid) = &plan.convs[(n % plan.convs.len() as u64) as usize];
    let text = body(plan.id, n, stamp, plan.size);
    let text = std::str::from_utf8(&text).expect("ASCII body");
    let payload = format!(
        r#"{{"conversationId":"{cid}","body":"{text}","clientMsgId":"{}-{n}"}}"#,
        plan.id
    );
    let frame = Frame::new(Command::Send)
        .with_header(header::DESTINATION, "/app/chat.send")
        .with_header(header::CONTENT_TYPE, "application/json")
        .with_header(header::RECEIPT, &format!("{k}:{stamp}"))
        .with_body(bytes::Bytes::from(payload));
    batch.push(&frame);
}

async fn run_sender(conn: Conn, plan: SenderPlan, shared: Arc<Shared>) -> Result<SenderResult> {
    let Conn { mut writer, reader } = conn;
    let credit = Credit::new(1);
    let (stop_tx, stop_rx) = watch::channel(false);
    let reader_task = spawn_receipt_reader(reader, credit.clone(), shared, stop_rx);
    let mut out = SenderResult::default();
    let mut batch = Batch::default();
    let mut write_error = None;
    tokio::time::sleep_until(plan.start.into()).await;
    match plan.rate {
        None => {
            while Instant::now() < plan.until {
                let done = credit.completed();
                let in_flight = out.sent.saturating_sub(done) as usize;
                if in_flight >= plan.window {
                    let wait =
                        tokio::time::timeout(Duration::from_secs(5), credit.notify.notified())
                            .await;
                    if wait.is_err() && credit.completed() == done {
                        out.stalled = true;
                        break;
                    }
                    continue;
                }
                let stamp = now_ns();
                for _ in in_flight..plan.window {
                    chat_send(&plan, out.sent, &mut batch, stamp);
                    out.sent += 1;
                }
                if let Err(e) = writer.send(&mut batch).await {
                    write_error = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        Some(rate) => {
            let period = Duration::from_secs_f64(1.0 / rate);
            loop {
                let now = Instant::now();
                if now >= plan.until {
                    break;
                }
                let due = (now.duration_since(plan.start).as_secs_f64() * rate) as u64 + 1;
                if out.sent < due {
                    let scheduled = plan.start + period.mul_f64(out.sent as f64);
                    out.max_lag = out.max_lag.max(now.saturating_duration_since(scheduled));
                    let stamp = now_ns();
                    while out.sent < due {
                        chat_send(&plan, out.sent, &mut batch, stamp);
                        out.sent += 1;
                    }
                    if let Err(e) = writer.send(&mut batch).await {
                        write_error = Some(format!("{e:#}"));
                        break;
                    }
                }
                let next = plan.start + period.mul_f64(out.sent as f64);
                tokio::time::sleep_until(next.into()).await;
            }
        }
    }
    // Wait for the outstanding RECEIPTs.
    let deadline = Instant::now() + plan.drain;
    while credit.completed() < out.sent && Instant::now() < deadline && !reader_task.is_finished() {
        let _ = tokio::time::timeout(Duration::from_millis(50), credit.notify.notified()).await;
    }
    let _ = stop_tx.send(true);
    out.stats = reader_task.await.unwrap_or_default();
    if let Some(e) = write_error {
        note_error(&mut out.stats.errors, &e);
    }
    drop(writer);
    Ok(out)
}

// --- the run ---------------------------------------------------------------

/// Runs the scenario.
pub async fn run(s: &Settings, a: &ChatArgs) -> Result<Report> {
    if a.size < MIN_BODY {
        bail!("--size must be at least {MIN_BODY}");
    }
    if a.users < 2 || a.senders == 0 || a.conversations == 0 {
        bail!("need at least 2 users, 1 sender and 1 conversation");
    }
    if a.rate <= 0.0 && (a.window == 0 || a.window > crate::run::MAX_WINDOW) {
        bail!("--window must be 1..={}", crate::run::MAX_WINDOW);
    }
    let base = parse_base(&a.http)?;
    let mut targets = Vec::new();
    if !a.also_url.is_empty() {
        targets.push(s.endpoint.target.clone());
        for u in &a.also_url {
            targets.push(Target::parse(u).with_context(|| format!("--also-url {u}"))?);
        }
    }
    let targets = Arc::new(targets);
    let setup_started = Instant::now();
    let users = Arc::new(register(base, a).await.context("registering users")?);
    let registered_s = setup_started.elapsed().as_secs_f64();
    let convs = create_conversations(base, a, &users)
        .await
        .context("creating conversations")?;
    let setup_s = setup_started.elapsed().as_secs_f64();
    eprintln!(
        "chat: {} users registered in {registered_s:.1} s, {} conversations created in {:.1} s",
        users.len(),
        convs.len(),
        setup_s - registered_s
    );

    let window = Window::new();
    let shared = Arc::new(Shared {
        window: window.clone(),
        last_seq: (0..convs.len()).map(|_| AtomicU64::new(0)).collect(),
        index: convs
            .iter()
            .enumerate()
            .map(|(k, c)| (c.id.clone(), k))
            .collect(),
    });

    // Who observes what: (user, destinations, conversation indexes).
    let mut observers: Vec<(usize, Vec<String>, Vec<usize>)> = Vec::new();
    match a.deliver {
        Deliver::Topic => {
            // Conversation k is watched by its last member; at most 200
            // subscriptions per connection (the server allows 256).
            let mut by_user: Vec<Vec<usize>> = vec![Vec::new(); users.len()];
            for (k, c) in convs.iter().enumerate() {
                by_user[*c.members.last().expect("members")].push(k);
            }
            for (u, ks) in by_user.into_iter().enumerate() {
                for chunk in ks.chunks(200) {
                    let dests = chunk
                        .iter()
                        .map(|&k| format!("/topic/chat/{}", convs[k].id))
                        .collect();
                    observers.push((u, dests, chunk.to_vec()));
                }
            }
        }
        Deliver::User => {
            for u in 0..users.len() {
                let ks: Vec<usize> = convs
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.members.contains(&u))
                    .map(|(k, _)| k)
                    .collect();
                if !ks.is_empty() {
                    observers.push((u, vec!["/user/queue/messages".into()], ks));
                }
            }
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(s.parallel.max(1)));
    let mut sub_tasks = Vec::new();
    for (i, (u, dests, _)) in observers.iter().enumerate() {
        let gate = gate.clone();
        let users = users.clone();
        let (u, dests) = (*u, dests.clone());
        let targets = targets.clone();
        let s_ep = s.endpoint.clone();
        let settings = Settings {
            endpoint: s_ep,
            server_pid: None,
            label: String::new(),
            parallel: 1,
        };
        sub_tasks.push(tokio::spawn(async move {
            let _p = gate.acquire_owned().await?;
            let mut c = open(&settings, &targets, &users[u], i).await?;
            for (j, d) in dests.iter().enumerate() {
                subscribe(&mut c, &format!("s{j}"), d).await?;
            }
            anyhow::Ok(c)
        }));
    }
    let mut subscribers = Vec::new();
    for (t, (_, _, ks)) in sub_tasks.into_iter().zip(observers) {
        let c = t.await?.context("subscriber")?;
        subscribers.push(spawn_subscriber(c, ks, shared.clone(), stop_rx.clone()));
    }

    // Senders: connection i is user i % users and writes to that user's
    // conversations.
    let mut member_of: Vec<Vec<(usize, Arc<str>)>> = vec![Vec::new(); users.len()];
    for (k, c) in convs.iter().enumerate() {
        for &m in &c.members {
            member_of[m].push((k, c.id.clone()));
        }
    }
    let offset = subscribers.len();
    let mut send_conns = Vec::new();
    for i in 0..a.senders {
        let gate = gate.clone();
        let users = users.clone();
        let targets = targets.clone();
        let settings = Settings {
            endpoint: s.endpoint.clone(),
            server_pid: None,
            label: String::new(),
            parallel: 1,
        };
        send_conns.push(tokio::spawn(async move {
            let _p = gate.acquire_owned().await?;
            let mut c = open(&settings, &targets, &users[i % users.len()], offset + i).await?;
            subscribe(&mut c, "errors", "/user/queue/errors").await?;
            anyhow::Ok(c)
        }));
    }
    let mut conns = Vec::new();
    for t in send_conns {
        conns.push(t.await?.context("sender")?);
    }

    let warmup = Duration::from_secs_f64(a.warmup);
    let measured = Duration::from_secs_f64(a.duration);
    let drain = Duration::from_secs_f64(a.drain);
    let lead = Duration::from_millis(200);
    let start = Instant::now() + lead;
    let until = start + warmup + measured;
    let t0 = now_ns() + lead.as_nanos() as u64;
    window.set(
        t0 + warmup.as_nanos() as u64,
        t0 + (warmup + measured).as_nanos() as u64,
    );
    let per_sender = (a.rate > 0.0).then(|| a.rate / a.senders as f64);
    let mut tasks = Vec::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let u = i % users.len();
        let mut mine = member_of[u].clone();
        // Senders of one user start at different conversations.
        if !mine.is_empty() {
            let r = (i / users.len()) % mine.len();
            mine.rotate_left(r);
        }
        if mine.is_empty() {
            continue;
        }
        let phase = per_sender
            .map(|r| Duration::from_secs_f64(i as f64 / a.senders as f64 / r))
            .unwrap_or_default();
        let plan = SenderPlan {
            id: i as u32,
            convs: mine,
            size: a.size,
            window: a.window,
            rate: per_sender,
            start: start + phase,
            until,
            drain,
        };
        tasks.push(tokio::spawn(run_sender(conn, plan, shared.clone())));
    }
    tokio::time::sleep_until((start + warmup).into()).await;
    let cpu0 = CpuSample::take(s.server_pid);
    tokio::time::sleep_until(until.into()).await;
    let cpu1 = CpuSample::take(s.server_pid);

    let mut sent = 0u64;
    let mut receipts = 0u64;
    let mut receipts_measured = 0u64;
    let mut app_errors = 0u64;
    let mut stalled = false;
    let mut max_lag = Duration::ZERO;
    let mut errors = Vec::new();
    let mut receipt_hist = histogram();
    for t in tasks {
        let r = t.await??;
        sent += r.sent;
        receipts += r.stats.receipts;
        receipts_measured += r.stats.measured;
        app_errors += r.stats.app_errors;
        stalled |= r.stalled;
        max_lag = max_lag.max(r.max_lag);
        if let Some(h) = &r.stats.latency {
            receipt_hist.add(h).expect("same histogram bounds");
        }
        for e in &r.stats.errors {
            note_error(&mut errors, e);
        }
    }

    // Every RECEIPT is in; now the subscribers get what is left of the drain.
    let last: Vec<u64> = shared
        .last_seq
        .iter()
        .map(|s| s.load(Ordering::Acquire))
        .collect();
    let expected: Vec<u64> = subscribers
        .iter()
        .map(|s| s.observes.iter().map(|&k| last[k]).sum())
        .collect();
    let deadline = Instant::now() + drain;
    while Instant::now() < deadline
        && subscribers
            .iter()
            .zip(&expected)
            .any(|(s, &e)| s.progress.load(Ordering::Acquire) < e)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    let mut deliveries = Deliveries {
        sent,
        ..Default::default()
    };
    let mut hist = histogram();
    for (sub, &e) in subscribers.into_iter().zip(&expected) {
        let observes = sub.observes.clone();
        let t = sub
            .task
            .await
            .unwrap_or_else(|_| panic!("subscriber task panicked"));
        hist.add(&t.latency).expect("same histogram bounds");
        deliveries.expected += e;
        deliveries.received += t.received;
        deliveries.measured += t.measured;
        deliveries.duplicates += t.duplicates;
        deliveries.reordered += t.reordered;
        deliveries.foreign += t.foreign;
        for k in observes {
            let got = t.convs.get(&k).map_or(0, |s| s.count_in(1, last[k]));
            deliveries.lost += last[k] - got;
        }
        if let Some(err) = &t.error {
            deliveries.failed_subscribers += 1;
            note_error(&mut deliveries.errors, err);
        }
    }
    for e in errors {
        note_error(&mut deliveries.errors, &format!("sender: {e}"));
    }
    let secs = measured.as_secs_f64();
    let durable_per_s = receipts_measured as f64 / secs;
    let mode = if a.rate > 0.0 { "rate" } else { "max" };
    Ok(Report {
        scenario: "chat".into(),
        label: s.label.clone(),
        target: s.endpoint.target.url.clone(),
        params: json!({
            "mode": mode, "rate": (a.rate > 0.0).then_some(a.rate), "window": a.window,
            "users": a.users, "senders": a.senders, "conversations": a.conversations,
            "kind": a.kind, "group_size": a.group_size, "deliver": a.deliver,
            "size": a.size, "duration_s": a.duration, "warmup_s": a.warmup,
        }),
        measured_s: secs,
        deliveries_per_s: Some(deliveries.measured as f64 / secs),
        published_per_s: Some(sent as f64 / (warmup + measured).as_secs_f64()),
        latency_ms: Latency::of(&hist),
        deliveries: Some(deliveries),
        max_send_lag_ms: (a.rate > 0.0).then_some(max_lag.as_secs_f64() * 1000.0),
        stalled,
        cpu: cpu0.until(&cpu1),
        extra: json!({
            "durable_per_s": durable_per_s,
            "receipt_latency_ms": Latency::of(&receipt_hist),
            "sent": sent,
            "receipts": receipts,
            "unanswered": sent.saturating_sub(receipts + app_errors),
            "app_errors": app_errors,
            "messages_stored": last.iter().sum::<u64>(),
            "setup_s": setup_s,
        }),
    })
}
