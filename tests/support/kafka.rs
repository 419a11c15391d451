#![allow(dead_code)]

//! Kafka for the bus tests: the broker from `STOMPLINE_TEST_KAFKA_BROKERS`
//! (default `127.0.0.1:9092`, tansu in CI), a topic prefix and group id of
//! each test's own, and a private broker process for tests that stop one.
//!
//! When the broker cannot be reached, [`config`] prints a notice and returns
//! `None` (the test passes without running), unless
//! `STOMPLINE_REQUIRE_SERVICES=1`, which makes it fail.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stompline::config::KafkaConfig;

const DEFAULT_BROKERS: &str = "127.0.0.1:9092";

fn required() -> bool {
    std::env::var("STOMPLINE_REQUIRE_SERVICES").as_deref() == Ok("1")
}

/// The brokers the tests use.
pub fn brokers() -> String {
    std::env::var("STOMPLINE_TEST_KAFKA_BROKERS")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| DEFAULT_BROKERS.to_owned())
}

fn reachable(brokers: &str) -> Result<(), String> {
    let first = brokers.split(',').next().unwrap_or_default().trim();
    let addr = std::net::ToSocketAddrs::to_socket_addrs(first)
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| format!("{first} does not resolve"))?;
    TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A Kafka configuration with a fresh topic prefix and group id, or `None`
/// when no broker answers and none is required.
pub fn config(partitions: u32) -> Option<KafkaConfig> {
    let brokers = brokers();
    if let Err(e) = reachable(&brokers) {
        if required() {
            panic!("Kafka at {brokers} is required (STOMPLINE_REQUIRE_SERVICES=1) but unreachable: {e}");
        }
        eprintln!(
            "SKIPPED: Kafka at {brokers} unreachable ({e}); set STOMPLINE_TEST_KAFKA_BROKERS"
        );
        return None;
    }
    Some(with_brokers(&brokers, partitions))
}

/// A configuration for `brokers` with a fresh prefix and group.
pub fn with_brokers(brokers: &str, partitions: u32) -> KafkaConfig {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    KafkaConfig {
        brokers: brokers.to_owned(),
        topic_prefix: format!("test.{unique}."),
        partitions,
        replication_factor: 1,
        group_id: format!("test-{unique}"),
        ..KafkaConfig::default()
    }
}

/// The environment that puts a `stompline` process on `config` with
/// `bus = "kafka"`.
pub fn env(config: &KafkaConfig) -> Vec<(String, String)> {
    vec![
        ("STOMPLINE_BUS".into(), "kafka".into()),
        ("STOMPLINE_KAFKA__BROKERS".into(), config.brokers.clone()),
        (
            "STOMPLINE_KAFKA__TOPIC_PREFIX".into(),
            config.topic_prefix.clone(),
        ),
        (
            "STOMPLINE_KAFKA__PARTITIONS".into(),
            config.partitions.to_string(),
        ),
        ("STOMPLINE_KAFKA__GROUP_ID".into(), config.group_id.clone()),
        (
            "STOMPLINE_KAFKA__SESSION_TIMEOUT_MS".into(),
            config.session_timeout_ms.to_string(),
        ),
    ]
}

/// The end offset (records written so far) of every partition of
/// `config`'s messages topic, in partition order.
pub async fn end_offsets(config: &KafkaConfig) -> Vec<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let topic = stompline::bus::kafka::messages_topic(config);
    let brokers = config.brokers.clone();
    let partitions = i32::try_from(config.partitions).expect("partitions");
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .expect("a Kafka client");
        (0..partitions)
            .map(|p| {
                consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"))
                    .1
            })
            .collect()
    })
    .await
    .expect("watermarks")
}

/// A broker process of the test's own (tansu, in memory) on a free port,
/// for tests that freeze it. Killed on drop.
pub struct PrivateBroker {
    child: Option<Child>,
    pub port: u16,
    pub brokers: String,
}

fn tansu() -> Option<String> {
    let from_env = std::env::var("STOMPLINE_TEST_TANSU").ok();
    let candidates = from_env.into_iter().chain([
        "tansu".to_owned(),
        format!(
            "{}/.cargo/bin/tansu",
            std::env::var("HOME").unwrap_or_default()
        ),
    ]);
    candidates.into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

impl PrivateBroker {
    /// Starts tansu on a free port; `None` (or a panic when services are
    /// required) when the binary is missing.
    pub fn start() -> Option<PrivateBroker> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut b = PrivateBroker {
            child: None,
            port,
            brokers: format!("127.0.0.1:{port}"),
        };
        if !b.restart() {
            if required() {
                panic!("tansu is required (STOMPLINE_REQUIRE_SERVICES=1) but not found; run scripts/services.sh start kafka");
            }
            eprintln!("SKIPPED: tansu not found (scripts/services.sh start kafka installs it)");
            return None;
        }
        Some(b)
    }

    /// Starts the broker again (after [`PrivateBroker::stop`]); waits until
    /// it accepts connections.
    pub fn restart(&mut self) -> bool {
        let Some(bin) = tansu() else {
            return false;
        };
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while reachable(&self.brokers).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not start on {}",
                self.brokers
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Freezes the broker (SIGSTOP): connections stay open and nothing is
    /// answered, as with a broker that hangs or a network partition; its
    /// state is kept.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen broker run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("broker running");
        let status = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig} failed");
    }

    /// Kills the broker.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A server on a scratch PostgreSQL database with `bus = "kafka"`, and two
/// connected users in a direct conversation.
pub struct KafkaChat {
    pub srv: super::TestServer,
    db: super::pg::PgDatabase,
    pub alice: super::Client,
    pub alice_id: String,
    pub bob: super::Client,
    pub bob_id: String,
    pub cid: String,
}

impl KafkaChat {
    /// Starts it, or `None` when PostgreSQL is unavailable and not required.
    pub async fn start(kafka: KafkaConfig) -> Option<KafkaChat> {
        let db = super::pg::PgDatabase::create().await?;
        let url = db.url.clone();
        let srv = super::TestServer::start_with(move |c| {
            c.bus = stompline::config::BusKind::Kafka;
            c.kafka = kafka;
            c.database_url = url;
        })
        .await;
        let (alice, alice_id) = srv.user("alice").await;
        let (bob, bob_id) = srv.user("bobby").await;
        let cid = srv
            .running
            .shared
            .chat
            .create_direct(&alice_id, &bob_id)
            .await
            .expect("direct")
            .0
            .id;
        Some(KafkaChat {
            srv,
            db,
            alice,
            alice_id,
            bob,
            bob_id,
            cid,
        })
    }

    /// Stops the server and drops the database.
    pub async fn finish(self) {
        self.srv.running.shutdown();
        drop(self.srv);
        self.db.drop_database().await;
    }
}
