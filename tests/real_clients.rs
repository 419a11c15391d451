//! stompline driven by real STOMP clients: `@stomp/stompjs` over WebSocket
//! (tests/clients/js) and `stomp.py` over TCP (tests/clients/python).
//!
//! Each test starts the built `stompline` binary on ephemeral ports with a
//! temporary data directory, reads the bound addresses from its `listening`
//! log line, and runs one client suite against it with `STOMPLINE_HTTP` and
//! `STOMPLINE_STOMP` set. The suites' dependencies are installed outside
//! cargo (see tests/clients/README.md); when they are missing the test prints
//! a notice and skips, unless `STOMPLINE_REQUIRE_CLIENTS=1`, then it fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long the server may take to log its addresses.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one client suite may run.
const SUITE_TIMEOUT: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(50);

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn clients_required() -> bool {
    std::env::var("STOMPLINE_REQUIRE_CLIENTS").is_ok_and(|v| v == "1")
}

/// Skips (with a notice that bypasses output capture) or, when the clients
/// are required, fails.
fn missing(what: &str) {
    let how = "install with: (cd tests/clients/js && npm ci); \
               python3 -m venv tests/clients/python/.venv && \
               tests/clients/python/.venv/bin/pip install -r tests/clients/python/requirements.txt";
    if clients_required() {
        panic!("STOMPLINE_REQUIRE_CLIENTS=1 but {what}; {how}");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED real-client suite: {what} ({how}; set STOMPLINE_REQUIRE_CLIENTS=1 to fail instead)"
    );
}

/// The server process; killed (and its data directory removed) on drop.
struct Server {
    child: Child,
    http: String,
    stomp: String,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("temp data dir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_stompline"))
            .args([
                "serve",
                "--http-addr",
                "127.0.0.1:0",
                "--stomp-addr",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(dir.path())
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
            // 1 s heart-beats both ways, so the clients' heart-beat tests see
            // several beats and a silent client would be dropped in ~2 s.
            .env("STOMPLINE_STOMP__HEARTBEAT_SEND_MS", "1000")
            .env("STOMPLINE_STOMP__HEARTBEAT_RECV_MS", "1000")
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
        let mut server = Server {
            child,
            http: String::new(),
            stomp: String::new(),
            log,
            _dir: dir,
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

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(http, stomp)` from a line like `... listening http=127.0.0.1:1 stomp=127.0.0.1:2`.
fn parse_listening(line: &str) -> Option<(String, String)> {
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

/// Runs `cmd` to completion (killing it after [`SUITE_TIMEOUT`]) and returns
/// its status and combined output.
fn run_suite(name: &str, mut cmd: Command, server: &Server) -> (ExitStatus, String) {
    cmd.env("STOMPLINE_HTTP", &server.http)
        .env("STOMPLINE_STOMP", &server.stomp)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: cannot start {cmd:?}: {e}"));
    let output = Arc::new(Mutex::new(Vec::<u8>::new()));
    let readers: Vec<_> = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|mut pipe| {
        let output = Arc::clone(&output);
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                output.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    })
    .collect();

    let deadline = Instant::now() + SUITE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for suite") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
            panic!(
                "{name}: still running after {SUITE_TIMEOUT:?}, killed\n{out}\n--- server log ---\n{}",
                server.log()
            );
        }
        thread::sleep(POLL);
    };
    for r in readers {
        let _ = r.join();
    }
    let out = String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
    println!("===== {name} ({status}) =====\n{out}");
    (status, out)
}

fn assert_suite_passed(name: &str, status: ExitStatus, out: &str, server: &Server) {
    assert!(
        status.success(),
        "{name} failed ({status}); its output is above\n--- server log ---\n{}",
        server.log()
    );
    assert!(!out.trim().is_empty(), "{name} printed nothing");
}

fn on_path(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn stompjs_over_websocket() {
    let dir = clients_dir().join("js");
    if !dir.join("node_modules/@stomp/stompjs").is_dir() || !dir.join("node_modules/ws").is_dir() {
        return missing("tests/clients/js/node_modules is not installed");
    }
    if !on_path("npm") || !on_path("node") {
        return missing("node/npm are not on PATH");
    }
    let server = Server::start();
    let mut cmd = Command::new("npm");
    cmd.args(["test", "--silent"]).current_dir(&dir);
    let (status, out) = run_suite("stompjs (npm test)", cmd, &server);
    assert_suite_passed("stompjs (npm test)", status, &out, &server);
    assert!(
        out.contains("# fail 0"),
        "node's test runner reported failures"
    );
}

#[test]
fn stomp_py_over_tcp() {
    let dir = clients_dir().join("python");
    let pytest = dir.join(".venv/bin/pytest");
    if !pytest.is_file() {
        return missing("the venv tests/clients/python/.venv with pytest is not installed");
    }
    let server = Server::start();
    let mut cmd = Command::new(&pytest);
    cmd.args(["-v", "--color=no"]).current_dir(&dir);
    let (status, out) = run_suite("stomp.py (pytest)", cmd, &server);
    assert_suite_passed("stomp.py (pytest)", status, &out, &server);
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
