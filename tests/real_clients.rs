//! stompline driven by real STOMP clients: `@stomp/stompjs` over WebSocket
//! (tests/clients/js) and `stomp.py` over TCP (tests/clients/python).
//!
//! Each test starts the built `stompline` binary on ephemeral ports with a
//! temporary data directory, reads the bound addresses from its `listening`
//! log line, and runs one client suite against it with `STOMPLINE_HTTP` and
//! `STOMPLINE_STOMP` set. The suites' dependencies are installed outside
//! cargo (see tests/clients/README.md); when they are missing the test prints
//! a notice and skips, unless `STOMPLINE_REQUIRE_CLIENTS=1`, then it fails.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod support;
use support::process::ServerProcess as Server;

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
    let data = tempfile::tempdir().expect("temp data dir");
    // A 1 s presence grace, so the chat suite sees `offline` quickly.
    let server = Server::start(
        data.path(),
        &[("STOMPLINE_PRESENCE__OFFLINE_GRACE_MS", "1000")],
    );
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
    let data = tempfile::tempdir().expect("temp data dir");
    let server = Server::start(data.path(), &[]);
    let mut cmd = Command::new(&pytest);
    cmd.args(["-v", "--color=no"]).current_dir(&dir);
    let (status, out) = run_suite("stomp.py (pytest)", cmd, &server);
    assert_suite_passed("stomp.py (pytest)", status, &out, &server);
}
