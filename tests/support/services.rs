#![allow(dead_code)]

//! Addresses of the Redis and RabbitMQ the cluster suites use, and the
//! STOMPLINE_REQUIRE_SERVICES rule: an unreachable service skips the test
//! (with a notice), or fails it when `STOMPLINE_REQUIRE_SERVICES=1`.

use std::time::Duration;

/// `STOMPLINE_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    env_or("STOMPLINE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
}

/// `STOMPLINE_TEST_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`.
pub fn amqp_url() -> String {
    env_or(
        "STOMPLINE_TEST_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    )
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Whether unreachable services fail tests.
pub fn required() -> bool {
    std::env::var("STOMPLINE_REQUIRE_SERVICES").as_deref() == Ok("1")
}

/// Reports an unusable service: panics when services are required,
/// otherwise prints the skip notice.
pub fn unusable(what: &str, why: impl std::fmt::Display) {
    assert!(
        !required(),
        "{what} is required (STOMPLINE_REQUIRE_SERVICES=1) but unusable: {why}"
    );
    eprintln!("SKIPPED: {what} unusable ({why})");
}

/// An admin connection to the test Redis, or `None` (see [`unusable`]).
pub async fn redis_admin() -> Option<redis::aio::MultiplexedConnection> {
    let url = redis_url();
    let client = match redis::Client::open(url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            unusable("Redis", e);
            return None;
        }
    };
    let connect = client.get_multiplexed_async_connection();
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            unusable("Redis", e);
            None
        }
        Err(_) => {
            unusable("Redis", "connect timed out");
            None
        }
    }
}

/// True when RabbitMQ accepts a relay connection (else see [`unusable`]).
pub async fn amqp_usable() -> bool {
    let config = stompline::config::AmqpConfig {
        url: amqp_url(),
        exchange: format!("probe.{}", uuid::Uuid::new_v4().simple()),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let outcome = stompline::relay::amqp::AmqpRelay::connect(&config, stop.clone()).await;
    stop.cancel();
    match outcome {
        Ok(_) => {
            amqp_delete_exchange(&config.exchange).await;
            true
        }
        Err(e) => {
            unusable("RabbitMQ", e);
            false
        }
    }
}

/// Creates (or re-enables) Redis ACL user `user` with `password` (all keys,
/// channels and commands) and returns the test Redis URL logging in as it,
/// so that `CLIENT KILL USER` can end exactly that user's connections.
pub async fn redis_url_as(
    admin: &mut redis::aio::MultiplexedConnection,
    user: &str,
    password: &str,
) -> String {
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(user)
        .arg("on")
        .arg(format!(">{password}"))
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async::<()>(admin)
        .await
        .expect("ACL SETUSER");
    let url = redis_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    format!("redis://{user}:{password}@{rest}")
}

/// Removes an ACL user made by [`redis_url_as`] (closing its connections).
pub async fn redis_drop_user(admin: &mut redis::aio::MultiplexedConnection, user: &str) {
    let _ = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(user)
        .query_async::<i64>(admin)
        .await;
}

/// Deletes a test's exchange from the test RabbitMQ (best effort).
pub async fn amqp_delete_exchange(exchange: &str) {
    let props = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio::current());
    let Ok(conn) = lapin::Connection::connect(&amqp_url(), props).await else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        let _ = ch
            .exchange_delete(exchange, lapin::options::ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done").await;
}

/// A free loopback TCP port (bound once, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Waits until `ready` holds, polling; panics after `within`.
fn wait_for(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} not ready within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A service a fault test stops and starts again.
pub trait Restartable {
    /// Stops it abruptly (every connection drops).
    fn stop(&mut self);
    /// Starts it again on the same port.
    fn restart(&mut self);
}

/// A Redis server of the test's own (`redis-server` on a free loopback
/// port, no persistence), so that a test can kill and restart it without
/// disturbing anyone else. Killed on drop.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// Starts `redis-server` (from `STOMPLINE_TEST_REDIS_SERVER`, default
    /// `redis-server` on PATH), or `None` when it cannot run (see
    /// [`unusable`]).
    pub fn start() -> Option<PrivateRedis> {
        let mut redis = PrivateRedis {
            port: free_port(),
            child: None,
        };
        if let Err(e) = redis.spawn() {
            unusable("redis-server", e);
            return None;
        }
        Some(redis)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = env_or("STOMPLINE_TEST_REDIS_SERVER", "redis-server");
        let child = std::process::Command::new(bin)
            .args(["--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        self.child = Some(child);
        let port = self.port;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !redis_pings(port) {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("redis-server exited: {status}"));
                }
            }
            if std::time::Instant::now() > deadline {
                return Err("redis-server did not answer PING within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Restartable for PrivateRedis {
    /// SIGKILL: every connection drops, every key is gone.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty).
    fn restart(&mut self) {
        self.stop();
        self.spawn().expect("redis-server restarts");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn redis_pings(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}

/// A PostgreSQL server of the test's own: Debian's binaries
/// (`/usr/lib/postgresql/<version>/bin`, or `STOMPLINE_TEST_PG_BIN`), a
/// cluster in a temporary directory with trust authentication, listening on
/// a free loopback port, run as the `postgres` OS user when the test runs
/// as root (PostgreSQL refuses root). Stopped (immediate mode) on drop.
pub struct PrivatePostgres {
    pub port: u16,
    bin: std::path::PathBuf,
    dir: Option<tempfile::TempDir>,
    as_postgres: bool,
    running: bool,
}

impl PrivatePostgres {
    /// Creates and starts the cluster, or `None` when PostgreSQL's binaries
    /// are missing or fail (see [`unusable`]).
    pub fn start() -> Option<PrivatePostgres> {
        match Self::create() {
            Ok(pg) => Some(pg),
            Err(e) => {
                unusable("PostgreSQL server binaries", e);
                None
            }
        }
    }

    fn create() -> Result<PrivatePostgres, String> {
        let bin = postgres_bin_dir().ok_or("no /usr/lib/postgresql/*/bin/initdb")?;
        let as_postgres = running_as_root();
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        if as_postgres {
            run(std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path()))?;
        }
        let mut pg = PrivatePostgres {
            port: free_port(),
            bin,
            dir: Some(dir),
            as_postgres,
            running: false,
        };
        let data = pg.data();
        let mut initdb = pg.command("initdb");
        initdb.arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(&mut initdb)?;
        pg.pg_ctl_start()?;
        Ok(pg)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn root(&self) -> &std::path::Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .expect("cluster directory")
    }

    fn data(&self) -> std::path::PathBuf {
        self.root().join("data")
    }

    fn command(&self, program: &str) -> std::process::Command {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            std::process::Command::new(path)
        };
        cmd.stdin(std::process::Stdio::null());
        cmd
    }

    fn pg_ctl_start(&mut self) -> Result<(), String> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=on",
            self.port,
            self.root().display()
        );
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.root().join("server.log"))
            .args(["-o", &options, "-w", "-t", "60", "start"]);
        run(&mut cmd)?;
        self.running = true;
        let port = self.port;
        wait_for("PostgreSQL", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Ok(())
    }

    /// The server's log so far (for failure reports).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root().join("server.log")).unwrap_or_default()
    }
}

impl Restartable for PrivatePostgres {
    /// Stops the server in immediate mode (like a crash: no checkpoint,
    /// every connection cut; recovery runs at the next start).
    fn stop(&mut self) {
        if !self.running {
            return;
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"]);
        if let Err(e) = run(&mut cmd) {
            eprintln!("note: pg_ctl stop: {e}");
        }
        self.running = false;
    }

    /// Stops and starts it again on the same port and data.
    fn restart(&mut self) {
        self.stop();
        self.pg_ctl_start().expect("PostgreSQL restarts");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn postgres_bin_dir() -> Option<std::path::PathBuf> {
    if let Ok(dir) = std::env::var("STOMPLINE_TEST_PG_BIN") {
        return Some(dir.into());
    }
    let mut versions: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn run(cmd: &mut std::process::Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
