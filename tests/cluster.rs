//! Three `stompline` processes sharing one fresh PostgreSQL database and a
//! cluster relay: Redis pub/sub (`redis_…` tests) or a RabbitMQ topic
//! exchange (`amqp_…` tests), each test with a key prefix / exchange of its
//! own. The Redis clusters also keep shared state in Redis (presence answers
//! the same on every instance). Every check runs on two buses: the default
//! local one (each instance persists its own sends; the store keeps `seq`
//! gapless because it assigns it inside the transaction) and Kafka
//! (`kafka_…` tests: the three instances' persisters are one consumer group,
//! so a send is often stored by another instance than the one that took it).
//!
//! Services come from `STOMPLINE_TEST_POSTGRES_URL`,
//! `STOMPLINE_TEST_REDIS_URL`, `STOMPLINE_TEST_AMQP_URL` and
//! `STOMPLINE_TEST_KAFKA_BROKERS`; an unreachable
//! one skips the test, or fails it under `STOMPLINE_REQUIRE_SERVICES=1`.

mod support;

use std::future::Future;

use serde_json::{json, Value};
use stomp_codec::{Command, Frame};
use support::pg::PgDatabase;
use support::process::ServerProcess;
use support::services;
use support::Client;

/// Which relay the instances share.
#[derive(Clone, Copy)]
enum RelayKind {
    Redis,
    Amqp,
}

/// Which event log carries sends to the persisters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bus {
    /// Each instance persists its own sends (one PostgreSQL database).
    Local,
    /// A Kafka topic keyed by conversation, one consumer group.
    Kafka,
}

/// One instance's addresses.
struct Node {
    http: String,
    stomp: String,
}

struct Cluster {
    nodes: Vec<Node>,
    processes: Vec<ServerProcess>,
    /// Admin connection and each instance's ACL user (Redis relay only).
    redis: Option<redis::aio::MultiplexedConnection>,
    /// Each instance's Redis ACL user and password.
    redis_users: Vec<(String, String)>,
    /// The exchange (RabbitMQ relay only).
    exchange: Option<String>,
    http: reqwest::Client,
    bus: Bus,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Starts three instances, or `None` when a service is unusable (and not
    /// required).
    async fn start(kind: RelayKind, bus: Bus, db: &PgDatabase) -> Option<Cluster> {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let mut env: Vec<(String, String)> = vec![
            ("STOMPLINE_DATABASE_URL".into(), db.url.clone()),
            // Every instance must accept every other's tokens.
            (
                "STOMPLINE_AUTH__JWT_SECRET".into(),
                format!("cluster-test-secret-{unique}"),
            ),
            ("STOMPLINE_PRESENCE__OFFLINE_GRACE_MS".into(), "300".into()),
        ];
        if bus == Bus::Kafka {
            // The persister is one consumer group over the three instances.
            env.extend(support::kafka::env(&support::kafka::config(6)?));
        }
        let mut redis = None;
        let mut exchange = None;
        match kind {
            RelayKind::Redis => {
                redis = Some(services::redis_admin().await?);
                env.push(("STOMPLINE_RELAY".into(), "redis".into()));
                // Presence, typing, revocations and rate limits shared too.
                env.push(("STOMPLINE_SHARED_STATE".into(), "redis".into()));
                env.push((
                    "STOMPLINE_REDIS__KEY_PREFIX".into(),
                    format!("clustertest:{unique}:"),
                ));
            }
            RelayKind::Amqp => {
                if !services::amqp_usable().await {
                    return None;
                }
                env.push(("STOMPLINE_RELAY".into(), "amqp".into()));
                env.push(("STOMPLINE_AMQP__URL".into(), services::amqp_url()));
                exchange = Some(format!("clustertest.{unique}"));
                env.push((
                    "STOMPLINE_AMQP__EXCHANGE".into(),
                    format!("clustertest.{unique}"),
                ));
            }
        }
        let mut dirs = Vec::new();
        let mut processes = Vec::new();
        let mut redis_users = Vec::new();
        for i in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().to_path_buf();
            let mut env = env.clone();
            if let Some(admin) = redis.as_mut() {
                // An ACL user per instance, so a test can kill exactly one
                // instance's Redis connections.
                let user = format!("clustertest_{unique}_{i}");
                let password = uuid::Uuid::new_v4().simple().to_string();
                let url = services::redis_url_as(admin, &user, &password).await;
                env.push(("STOMPLINE_REDIS__URL".into(), url));
                redis_users.push((user, password));
            }
            let p = support::process::spawn(path, env).await;
            dirs.push(dir);
            processes.push(p);
        }
        let nodes = processes
            .iter()
            .map(|p| Node {
                http: p.http.clone(),
                stomp: p.stomp.clone(),
            })
            .collect();
        Some(Cluster {
            nodes,
            processes,
            redis,
            redis_users,
            exchange,
            http: reqwest::Client::new(),
            bus,
            _dirs: dirs,
        })
    }

    /// Registers `name` through instance `node`; returns (id, token).
    async fn register(&self, node: usize, name: &str) -> (String, String) {
        let v = self
            .call(
                node,
                reqwest::Method::POST,
                "/api/auth/register",
                None,
                Some(json!({"username": name, "password": format!("password-{name}")})),
                201,
            )
            .await;
        (
            v["user"]["id"].as_str().expect("user id").to_owned(),
            v["accessToken"].as_str().expect("token").to_owned(),
        )
    }

    async fn call(
        &self,
        node: usize,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        status: u16,
    ) -> Value {
        let url = format!("http://{}{path}", self.nodes[node].http);
        let mut req = self.http.request(method, url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("http request");
        let got = res.status().as_u16();
        let text = res.text().await.expect("http body");
        assert_eq!(got, status, "{path}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// The direct conversation of the token's user and `other`, created on
    /// instance `node`.
    async fn direct(&self, node: usize, token: &str, other: &str) -> String {
        self.conversation(node, token, json!({"type": "direct", "memberIds": [other]}))
            .await
    }

    async fn conversation(&self, node: usize, token: &str, body: Value) -> String {
        let v = self
            .call(
                node,
                reqwest::Method::POST,
                "/api/conversations",
                Some(token),
                Some(body),
                201,
            )
            .await;
        v["id"].as_str().expect("conversation id").to_owned()
    }

    /// A STOMP session on instance `node`.
    async fn client(&self, node: usize, token: &str) -> Client {
        let mut c = Client::tcp(&self.nodes[node].stomp).await;
        c.connect_token(token).await;
        c
    }

    /// Kills instance `node`'s Redis connections (pool and pub/sub).
    async fn kill_redis_connections(&self, node: usize) {
        let mut admin = self.redis.clone().expect("a Redis cluster");
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("USER")
            .arg(&self.redis_users[node].0)
            .query_async(&mut admin)
            .await
            .expect("CLIENT KILL USER");
        assert!(killed > 0, "instance {node} had no Redis connection");
    }

    /// Takes instance `node`'s Redis login away (closing its connections),
    /// or gives it back.
    async fn redis_login(&self, node: usize, allowed: bool) {
        let mut admin = self.redis.clone().expect("a Redis cluster");
        let (user, password) = &self.redis_users[node];
        if allowed {
            services::redis_url_as(&mut admin, user, password).await;
        } else {
            services::redis_drop_user(&mut admin, user).await;
        }
    }

    /// Polls instance `node`'s `/readyz` until it answers `status`; returns
    /// the body.
    async fn readyz_becomes(&self, node: usize, status: u16) -> Value {
        let url = format!("http://{}/readyz", self.nodes[node].http);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let res = self.http.get(&url).send().await.expect("readyz request");
            let got = res.status().as_u16();
            let body: Value = res.json().await.expect("readyz json");
            if got == status {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "readyz stayed {got}: {body}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Instance `node`'s `/metrics` text.
    async fn metrics(&self, node: usize) -> String {
        let url = format!("http://{}/metrics", self.nodes[node].http);
        let res = self.http.get(url).send().await.expect("metrics request");
        res.text().await.expect("metrics body")
    }

    /// Every instance's log, for a failure report.
    fn logs(&self) -> String {
        self.processes
            .iter()
            .enumerate()
            .map(|(i, p)| format!("--- instance {i} ---\n{}", p.log()))
            .collect()
    }
}

/// A user with a session on one instance.
struct User {
    id: String,
    token: String,
    client: Client,
}

async fn user(cluster: &Cluster, node: usize, name: &str) -> User {
    let name = format!("{name}{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (id, token) = cluster.register(node, &name).await;
    let client = cluster.client(node, &token).await;
    User { id, token, client }
}

fn json_body(f: &Frame) -> Value {
    serde_json::from_slice(&f.body).expect("json body")
}

/// SENDs a chat message and returns its RECEIPT (sent once durable).
async fn chat_send(c: &mut Client, cid: &str, body: &str, receipt: &str) -> Frame {
    let payload = json!({"conversationId": cid, "body": body}).to_string();
    c.send(
        format!("SEND\ndestination:/app/chat.send\ncontent-type:application/json\nreceipt:{receipt}\n\n{payload}\0")
            .as_bytes(),
    )
    .await;
    c.await_receipt(receipt).await
}

/// The next MESSAGE of subscription `sub`; other frames are skipped.
async fn next_on(c: &mut Client, sub: &str) -> Frame {
    loop {
        let f = c.frame().await;
        if f.command == Command::Message && f.header("subscription") == Some(sub) {
            return f;
        }
    }
}

/// The next MESSAGE of `sub` carrying `event`.
async fn next_event(c: &mut Client, sub: &str, event: &str) -> Frame {
    loop {
        let f = next_on(c, sub).await;
        if f.header("event") == Some(event) {
            return f;
        }
    }
}

fn seq(f: &Frame) -> i64 {
    f.header("seq")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no seq in {f:?}"))
}

/// Runs `check` on a fresh cluster, dropping the database afterwards and
/// printing the instances' logs when it fails.
async fn run<F, Fut>(kind: RelayKind, check: F)
where
    F: FnOnce(std::sync::Arc<Cluster>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    run_on(kind, Bus::Local, check).await;
}

async fn run_on<F, Fut>(kind: RelayKind, bus: Bus, check: F)
where
    F: FnOnce(std::sync::Arc<Cluster>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let Some(cluster) = Cluster::start(kind, bus, &db).await else {
        db.drop_database().await;
        return;
    };
    let cluster = std::sync::Arc::new(cluster);
    let outcome = tokio::spawn(check(cluster.clone())).await;
    if outcome.is_err() {
        eprintln!("{}", cluster.logs());
    }
    if let Some(mut admin) = cluster.redis.clone() {
        for (u, _) in &cluster.redis_users {
            services::redis_drop_user(&mut admin, u).await;
        }
    }
    let exchange = cluster.exchange.clone();
    drop(cluster);
    if let Some(e) = exchange {
        services::amqp_delete_exchange(&e).await;
    }
    db.drop_database().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Users on different instances converse in a direct and a group
/// conversation: every member gets every message in seq order on
/// `/topic/chat/{cid}` and `/user/queue/messages`, and history holds each
/// once.
async fn users_on_different_instances_converse(cluster: std::sync::Arc<Cluster>) {
    for node in 0..3 {
        let ready = cluster
            .call(node, reqwest::Method::GET, "/readyz", None, None, 200)
            .await;
        assert_eq!(ready["checks"]["relay"], "ok", "{ready}");
        if cluster.bus == Bus::Kafka {
            assert_eq!(ready["checks"]["kafka"], "ok", "{ready}");
        }
        assert_eq!(ready["checks"]["database"], "ok", "{ready}");
    }
    let mut alice = user(&cluster, 0, "alice").await;
    let mut bob = user(&cluster, 1, "bob").await;
    let mut carol = user(&cluster, 2, "carol").await;

    let direct = cluster.direct(0, &alice.token, &bob.id).await;
    alice
        .client
        .subscribe("q", "/user/queue/messages", "auto")
        .await;
    bob.client
        .subscribe("d", &format!("/topic/chat/{direct}"), "auto")
        .await;

    let r = chat_send(&mut alice.client, &direct, "hi bob", "r1").await;
    assert_eq!(r.header("seq"), Some("1"));
    let m = next_on(&mut bob.client, "d").await;
    assert_eq!(
        (seq(&m), json_body(&m)["body"].as_str()),
        (1, Some("hi bob"))
    );
    // Alice's own message also reaches her user queue.
    assert_eq!(seq(&next_on(&mut alice.client, "q").await), 1);

    chat_send(&mut bob.client, &direct, "hi alice", "r2").await;
    let m = next_on(&mut alice.client, "q").await;
    assert_eq!(m.header("conversation-id"), Some(direct.as_str()));
    assert_eq!(
        (seq(&m), json_body(&m)["body"].as_str()),
        (2, Some("hi alice"))
    );
    assert_eq!(seq(&next_on(&mut bob.client, "d").await), 2);

    let group = cluster
        .conversation(
            2,
            &carol.token,
            json!({"type": "group", "name": "trio", "memberIds": [alice.id, bob.id]}),
        )
        .await;
    let topic = format!("/topic/chat/{group}");
    for u in [&mut alice, &mut bob, &mut carol] {
        u.client.subscribe("g", &topic, "auto").await;
    }
    let mut sent = Vec::new();
    for (i, u) in [&mut alice, &mut bob, &mut carol].into_iter().enumerate() {
        let body = format!("group message {i}");
        let r = chat_send(&mut u.client, &group, &body, &format!("g{i}")).await;
        sent.push((seq(&r), body));
    }
    sent.sort();
    assert_eq!(
        sent.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let want: Vec<i64> = sent.iter().map(|(s, _)| *s).collect();
    for u in [&mut bob, &mut carol] {
        for (s, body) in &sent {
            let m = next_on(&mut u.client, "g").await;
            assert_eq!(seq(&m), *s, "out of order");
            assert_eq!(json_body(&m)["body"].as_str(), Some(body.as_str()));
        }
    }
    // Alice gets them on the topic and, as she joined while subscribed to
    // it, on her user queue too.
    let (mut on_topic, mut on_queue) = (Vec::new(), Vec::new());
    while on_topic.len() < 3 || on_queue.len() < 3 {
        let m = alice.client.frame().await;
        if m.command != Command::Message || m.header("conversation-id") != Some(group.as_str()) {
            continue;
        }
        match m.header("subscription") {
            Some("g") => on_topic.push(seq(&m)),
            Some("q") => on_queue.push(seq(&m)),
            _ => {}
        }
    }
    assert_eq!((on_topic, on_queue), (want.clone(), want));

    let history = cluster
        .call(
            1,
            reqwest::Method::GET,
            &format!("/api/conversations/{group}/messages"),
            Some(&bob.token),
            None,
            200,
        )
        .await;
    let stored: Vec<(i64, String)> = history["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| {
            (
                m["seq"].as_i64().expect("seq"),
                m["body"].as_str().expect("body").to_owned(),
            )
        })
        .collect();
    assert_eq!(stored, sent);
}

/// A member removed through one instance stops receiving on another.
async fn a_removed_member_stops_receiving_on_another_instance(cluster: std::sync::Arc<Cluster>) {
    let mut owner = user(&cluster, 0, "owner").await;
    let mut leaver = user(&cluster, 1, "leaver").await;
    let mut stayer = user(&cluster, 2, "stayer").await;
    let group = cluster
        .conversation(
            0,
            &owner.token,
            json!({"type": "group", "name": "team", "memberIds": [leaver.id, stayer.id]}),
        )
        .await;
    let direct = cluster.direct(0, &owner.token, &leaver.id).await;
    let topic = format!("/topic/chat/{group}");
    leaver.client.subscribe("g", &topic, "auto").await;
    leaver
        .client
        .subscribe("q", "/user/queue/messages", "auto")
        .await;
    leaver
        .client
        .subscribe("n", "/user/queue/notifications", "auto")
        .await;
    stayer.client.subscribe("g", &topic, "auto").await;

    chat_send(&mut owner.client, &group, "before", "r1").await;
    assert_eq!(
        json_body(&next_on(&mut leaver.client, "g").await)["body"],
        "before"
    );
    assert_eq!(
        json_body(&next_on(&mut stayer.client, "g").await)["body"],
        "before"
    );

    cluster
        .call(
            0,
            reqwest::Method::DELETE,
            &format!("/api/conversations/{group}/members/{}", leaver.id),
            Some(&owner.token),
            None,
            204,
        )
        .await;
    let n = next_event(&mut leaver.client, "n", "member.removed").await;
    assert_eq!(json_body(&n)["userId"], leaver.id.as_str());

    chat_send(&mut owner.client, &group, "after", "r2").await;
    assert_eq!(
        json_body(&next_on(&mut stayer.client, "g").await)["body"],
        "after"
    );
    // Published after "after" by the same sender: when it arrives, "after"
    // would have arrived first had it been delivered.
    chat_send(&mut owner.client, &direct, "marker", "r3").await;
    loop {
        let f = leaver.client.frame().await;
        if f.command != Command::Message {
            continue;
        }
        let cid = f.header("conversation-id");
        if f.header("event") == Some("message.created") && cid == Some(direct.as_str()) {
            break;
        }
        assert!(
            !(f.header("event") == Some("message.created") && cid == Some(group.as_str())),
            "removed member received {f:?}"
        );
    }
}

/// A client that read part of a conversation on one instance resumes on
/// another with `since-seq`: the rest arrives in order, once, then live.
async fn since_seq_resumes_on_another_instance(cluster: std::sync::Arc<Cluster>) {
    let reader = user(&cluster, 0, "reader").await;
    let mut writer = user(&cluster, 1, "writer").await;
    let cid = cluster.direct(1, &writer.token, &reader.id).await;
    let topic = format!("/topic/chat/{cid}");
    let mut first = reader.client;
    first.subscribe("c", &topic, "auto").await;
    for i in 1..=3 {
        chat_send(&mut writer.client, &cid, &format!("m{i}"), &format!("a{i}")).await;
    }
    for i in 1..=3 {
        assert_eq!(seq(&next_on(&mut first, "c").await), i);
    }
    drop(first);
    for i in 4..=5 {
        chat_send(&mut writer.client, &cid, &format!("m{i}"), &format!("a{i}")).await;
    }
    let mut again = cluster.client(2, &reader.token).await;
    again
        .send(
            format!("SUBSCRIBE\nid:c\ndestination:{topic}\nsince-seq:3\nreceipt:s\n\n\0")
                .as_bytes(),
        )
        .await;
    again.await_receipt("s").await;
    chat_send(&mut writer.client, &cid, "m6", "a6").await;
    for i in 4..=6 {
        let m = next_on(&mut again, "c").await;
        assert_eq!(seq(&m), i);
        assert_eq!(json_body(&m)["body"], format!("m{i}"));
    }
    // Nothing more (no duplicate): the next message is the next seq.
    chat_send(&mut writer.client, &cid, "m7", "a7").await;
    assert_eq!(seq(&next_on(&mut again, "c").await), 7);
}

/// A generic `/topic/…` SEND on one instance reaches subscribers on every
/// instance, headers and body intact; an unsubscribed instance stops
/// getting it.
async fn generic_topics_cross_instances(cluster: std::sync::Arc<Cluster>) {
    let mut a = user(&cluster, 0, "tapa").await;
    let mut b = user(&cluster, 1, "tapb").await;
    let mut c = user(&cluster, 2, "tapc").await;
    let topic = format!("/topic/prices.eu.{}", uuid::Uuid::new_v4().simple());
    let other = format!("{topic}.other");
    for u in [&mut a, &mut b, &mut c] {
        u.client.subscribe("t", &topic, "auto").await;
    }
    c.client.subscribe("o", &other, "auto").await;

    b.client
        .send(format!("SEND\ndestination:{topic}\nx-price:42\nreceipt:s1\n\nfirst\0").as_bytes())
        .await;
    b.client.await_receipt("s1").await;
    for u in [&mut a, &mut b, &mut c] {
        let m = next_on(&mut u.client, "t").await;
        assert_eq!(&m.body[..], b"first");
        assert_eq!(m.header("x-price"), Some("42"));
        assert_eq!(m.header("destination"), Some(topic.as_str()));
    }

    c.client.send(b"UNSUBSCRIBE\nid:t\nreceipt:u\n\n\0").await;
    c.client.await_receipt("u").await;
    b.client.send_to(&topic, "second").await;
    b.client.send_to(&other, "marker").await;
    assert_eq!(&next_on(&mut a.client, "t").await.body[..], b"second");
    // c's next MESSAGE is the marker: "second" did not reach it.
    let m = c.client.frame().await;
    assert_eq!(m.header("subscription"), Some("o"), "got {m:?}");
    assert_eq!(&m.body[..], b"marker");
}

/// Presence changes of a user on one instance reach a contact on another.
async fn presence_crosses_instances(cluster: std::sync::Arc<Cluster>) {
    let (alice_id, alice_token) = cluster.register(0, "pres_alice").await;
    let mut bob = user(&cluster, 1, "pres_bob").await;
    cluster.direct(1, &bob.token, &alice_id).await;
    bob.client
        .subscribe("p", "/user/queue/presence", "auto")
        .await;
    let alice = cluster.client(0, &alice_token).await;
    let p = next_event(&mut bob.client, "p", "presence").await;
    assert_eq!(json_body(&p)["userId"], alice_id.as_str());
    assert_eq!(json_body(&p)["status"], "online");
    if cluster.redis.is_some() {
        // With shared state, every instance answers the same.
        for node in [1, 2] {
            let v = cluster
                .call(
                    node,
                    reqwest::Method::GET,
                    &format!("/api/presence?userIds={alice_id}"),
                    Some(&bob.token),
                    None,
                    200,
                )
                .await;
            assert_eq!(v["items"][0]["status"], "online", "{v}");
        }
    }
    drop(alice);
    let p = next_event(&mut bob.client, "p", "presence").await;
    assert_eq!(json_body(&p)["userId"], alice_id.as_str());
    assert_eq!(json_body(&p)["status"], "offline");
}

/// An instance whose Redis connections are killed while messages are sent
/// reconnects, subscribes again and reads what pub/sub lost meanwhile from
/// PostgreSQL: its subscriber gets every message once, in order.
async fn a_lost_relay_connection_is_filled_from_the_store(cluster: std::sync::Arc<Cluster>) {
    let mut reader = user(&cluster, 1, "resync_reader").await;
    let mut writer = user(&cluster, 0, "resync_writer").await;
    let cid = cluster.direct(0, &writer.token, &reader.id).await;
    reader
        .client
        .subscribe("c", &format!("/topic/chat/{cid}"), "auto")
        .await;
    chat_send(&mut writer.client, &cid, "m1", "r1").await;
    assert_eq!(seq(&next_on(&mut reader.client, "c").await), 1);

    cluster.kill_redis_connections(1).await;
    // Published while instance 1 has no subscription: only the store has
    // them for it.
    for i in 2..=6 {
        chat_send(&mut writer.client, &cid, &format!("m{i}"), &format!("r{i}")).await;
    }
    for i in 2..=6 {
        let m = next_on(&mut reader.client, "c").await;
        assert_eq!(
            (seq(&m), json_body(&m)["body"].clone()),
            (i, json!(format!("m{i}")))
        );
    }
    chat_send(&mut writer.client, &cid, "m7", "r7").await;
    assert_eq!(seq(&next_on(&mut reader.client, "c").await), 7);

    let text = cluster.metrics(1).await;
    assert!(
        text.contains("stompline_relay_reconnects_total{backend=\"redis\"}"),
        "{text}"
    );
    assert!(text.contains("stompline_relay_resyncs_total"), "{text}");
}

/// While an instance cannot reach Redis, its `/readyz` answers 503 naming
/// the relay (the others stay ready); once Redis lets it back in, it
/// reconnects by itself, is ready again and delivers again.
async fn readyz_follows_the_relay_connection(cluster: std::sync::Arc<Cluster>) {
    let mut reader = user(&cluster, 1, "ready_reader").await;
    let mut writer = user(&cluster, 0, "ready_writer").await;
    let cid = cluster.direct(0, &writer.token, &reader.id).await;
    reader
        .client
        .subscribe("c", &format!("/topic/chat/{cid}"), "auto")
        .await;

    cluster.redis_login(1, false).await;
    let body = cluster.readyz_becomes(1, 503).await;
    assert_eq!(body["checks"]["database"], "ok", "{body}");
    assert!(
        body["checks"]["relay"].as_str().is_some_and(|r| r != "ok"),
        "{body}"
    );
    assert_eq!(
        cluster.readyz_becomes(0, 200).await["checks"]["relay"],
        "ok"
    );
    chat_send(&mut writer.client, &cid, "while away", "r1").await;

    cluster.redis_login(1, true).await;
    let body = cluster.readyz_becomes(1, 200).await;
    assert_eq!(body["checks"]["relay"], "ok", "{body}");
    let m = next_on(&mut reader.client, "c").await;
    assert_eq!(
        (seq(&m), json_body(&m)["body"].clone()),
        (1, json!("while away"))
    );
    chat_send(&mut writer.client, &cid, "back", "r2").await;
    assert_eq!(seq(&next_on(&mut reader.client, "c").await), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_readyz_follows_the_relay_connection() {
    run(RelayKind::Redis, readyz_follows_the_relay_connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_lost_relay_connection_is_filled_from_the_store() {
    run(
        RelayKind::Redis,
        a_lost_relay_connection_is_filled_from_the_store,
    )
    .await;
}

macro_rules! on_both_relays {
    ($($check:ident => $redis:ident, $amqp:ident, $redis_kafka:ident, $amqp_kafka:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $redis() {
            run(RelayKind::Redis, $check).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $amqp() {
            run(RelayKind::Amqp, $check).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $redis_kafka() {
            run_on(RelayKind::Redis, Bus::Kafka, $check).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $amqp_kafka() {
            run_on(RelayKind::Amqp, Bus::Kafka, $check).await;
        }
    )*};
}

on_both_relays! {
    users_on_different_instances_converse => redis_users_on_different_instances_converse, amqp_users_on_different_instances_converse, kafka_redis_users_on_different_instances_converse, kafka_amqp_users_on_different_instances_converse;
    a_removed_member_stops_receiving_on_another_instance => redis_a_removed_member_stops_receiving_on_another_instance, amqp_a_removed_member_stops_receiving_on_another_instance, kafka_redis_a_removed_member_stops_receiving_on_another_instance, kafka_amqp_a_removed_member_stops_receiving_on_another_instance;
    since_seq_resumes_on_another_instance => redis_since_seq_resumes_on_another_instance, amqp_since_seq_resumes_on_another_instance, kafka_redis_since_seq_resumes_on_another_instance, kafka_amqp_since_seq_resumes_on_another_instance;
    generic_topics_cross_instances => redis_generic_topics_cross_instances, amqp_generic_topics_cross_instances, kafka_redis_generic_topics_cross_instances, kafka_amqp_generic_topics_cross_instances;
    presence_crosses_instances => redis_presence_crosses_instances, amqp_presence_crosses_instances, kafka_redis_presence_crosses_instances, kafka_amqp_presence_crosses_instances;
}
