//! The `stompline` binary as a child process, for tests that need a real
//! process: real clients, SIGKILL and restart.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long the server may take to log its addresses.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

/// The server process; killed on drop.
pub struct ServerProcess {
    child: Child,
    /// HTTP address (`ip:port`).
    pub http: String,
    /// STOMP TCP address.
    pub stomp: String,
    log: Arc<Mutex<String>>,
}

impl ServerProcess {
    /// Starts the binary on ephemeral ports with `data_dir` (which may hold
    /// an earlier run's data) and extra environment, and waits for its
    /// `listening` line.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> ServerProcess {
        // `STOMPLINE_TEST_SERVER_BIN` names another build of the binary
        // (e.g. when several checkouts share one target directory, whose
        // `debug/stompline` is whichever was linked last).
        let bin = std::env::var_os("STOMPLINE_TEST_SERVER_BIN")
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_stompline").into());
        let mut cmd = Command::new(bin);
        cmd.args([
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--stomp-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        // Settings from the caller's environment must not leak in.
        .env_remove("STOMPLINE_DATABASE_URL")
        .env_remove("STOMPLINE_CONFIG")
        .env("RUST_LOG", "info")
        .env("STOMPLINE_LOG_FORMAT", "human")
        .env("NO_COLOR", "1")
        // Cheaper password hashing keeps registration quick; production
        // parameters are covered by tests/api_accounts.rs.
        .env("STOMPLINE_AUTH__ARGON2_MEMORY_KIB", "1024")
        .env("STOMPLINE_AUTH__ARGON2_ITERATIONS", "1")
        // The client suites register and log in many users from one
        // address; the limits have their own tests.
        .env("STOMPLINE_RATE_LIMIT__ENABLED", "false")
        // 1 s heart-beats both ways, so the clients' heart-beat tests see
        // several beats and a silent client would be dropped in ~2 s.
        .env("STOMPLINE_STOMP__HEARTBEAT_SEND_MS", "1000")
        .env("STOMPLINE_STOMP__HEARTBEAT_RECV_MS", "1000");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stompline");

        // Drain stderr for the whole run (a full pipe would stall the
        // server), keeping it for the report and passing lines on until the
        // addresses are found.
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let stderr = child.stderr.take().expect("stderr piped");
        let sink = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
                drop(log);
                let _ = tx.send(line);
            }
        });

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut server = ServerProcess {
            child,
            http: String::new(),
            stomp: String::new(),
            log,
        };
        loop {
            match rx.recv_timeout(POLL) {
                Ok(line) => {
                    if let Some((http, stomp)) = parse_listening(&line) {
                        server.http = http;
                        server.stomp = stomp;
                        return server;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = server.child.wait().ok();
                    panic!(
                        "stompline exited ({status:?}) before listening:\n{}",
                        server.log()
                    );
                }
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "stompline exited ({status}) before listening:\n{}",
                    server.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "stompline did not log its addresses within {STARTUP_TIMEOUT:?}:\n{}",
                server.log()
            );
        }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL: no shutdown, no flush, nothing.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: the server's graceful shutdown begins; [`Self::exited`]
    /// tells when it is over.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// The exit status, once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// [`ServerProcess::start`] from a blocking thread, for async tests.
pub async fn spawn(data_dir: std::path::PathBuf, env: Vec<(String, String)>) -> ServerProcess {
    tokio::task::spawn_blocking(move || {
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        ServerProcess::start(&data_dir, &pairs)
    })
    .await
    .expect("instance starts")
}

/// The whole history of conversation `cid` (`GET …/messages`, page by
/// page), oldest first.
pub async fn history(http: &str, token: &str, cid: &str) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let v = get_json(
            &format!("http://{http}/api/conversations/{cid}/messages?after={after}&limit=100"),
            token,
        )
        .await;
        let items = v["items"].as_array().expect("history items").clone();
        let n = items.len();
        if let Some(last) = items.last() {
            after = last["seq"].as_i64().expect("seq");
        }
        all.extend(items);
        if n < 100 {
            return all;
        }
    }
}

/// Registers `name` (password `password-<name>`) on the server at `http`;
/// returns the user id and access token.
pub async fn register(http: &str, name: &str) -> (String, String) {
    let res = reqwest::Client::new()
        .post(format!("http://{http}/api/auth/register"))
        .json(&serde_json::json!({"username": name, "password": format!("password-{name}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let v: serde_json::Value = res.json().await.unwrap();
    (
        v["user"]["id"].as_str().unwrap().to_owned(),
        v["accessToken"].as_str().unwrap().to_owned(),
    )
}

/// `GET url` with a bearer token, answered with JSON.
pub async fn get_json(url: &str, token: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `(http, stomp)` from a line like `... listening http=127.0.0.1:1 stomp=127.0.0.1:2`.
pub fn parse_listening(line: &str) -> Option<(String, String)> {
    let line = strip_ansi(line);
    if !line.contains("listening") {
        return None;
    }
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(|v| v.trim_matches(|c| c == '"' || c == ',').to_owned())
    };
    Some((field("http=")?, field("stomp=")?))
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn parses_the_listening_line() {
    let human = "2026-01-01T00:00:00Z  INFO stompline::server: listening http=127.0.0.1:39631 stomp=127.0.0.1:45613";
    assert_eq!(
        parse_listening(human),
        Some(("127.0.0.1:39631".into(), "127.0.0.1:45613".into()))
    );
    let colored = "\u{1b}[32m INFO\u{1b}[0m \u{1b}[2mstompline::server\u{1b}[0m\u{1b}[2m:\u{1b}[0m listening http=127.0.0.1:1 stomp=[::1]:2";
    assert_eq!(
        parse_listening(colored),
        Some(("127.0.0.1:1".into(), "[::1]:2".into()))
    );
    assert_eq!(parse_listening("INFO starting http=1 stomp=2"), None);
}
