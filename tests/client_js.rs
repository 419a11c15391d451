//! The TypeScript SDK's suite (Vitest, against real `stompline` processes it
//! starts from this build's binary) and the web app's browser suite
//! (playwright-core driving Chromium against a server that serves the built
//! app), both in `client-js/`.
//!
//! `npm ci` runs first when `client-js/node_modules` is missing. Without
//! node/npm (or, for the browser suite, Chromium) the tests print a notice
//! and skip, unless `STOMPLINE_REQUIRE_CLIENTS=1`: then they fail.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// How long one npm script may run.
const TIMEOUT: Duration = Duration::from_secs(900);

/// The suites start servers and browsers of their own; one at a time is
/// plenty on a small machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn client_js() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("client-js")
}

fn required() -> bool {
    std::env::var("STOMPLINE_REQUIRE_CLIENTS").is_ok_and(|v| v == "1")
}

/// Skips with a notice, or fails when the clients are required.
fn skip(what: &str) {
    if required() {
        panic!("STOMPLINE_REQUIRE_CLIENTS=1 but {what}");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED client-js suite: {what} (set STOMPLINE_REQUIRE_CLIENTS=1 to fail instead)"
    );
}

/// Whether `program` is an executable file in a `PATH` directory.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("CHROMIUM_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    path.is_file().then_some(path)
}

/// Runs `npm <args>` in `client-js/` with its output in a file; returns
/// whether it succeeded and what it printed.
fn npm(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let log_dir = tempfile::tempdir().expect("temp dir");
    let log_path = log_dir.path().join("npm.log");
    let log = File::create(&log_path).expect("log file");
    let mut cmd = Command::new("npm");
    cmd.args(args)
        .current_dir(client_js())
        .env("NO_COLOR", "1")
        .env("CI", "true")
        .env("STOMPLINE_BIN", env!("CARGO_BIN_EXE_stompline"))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().expect("log handle")))
        .stderr(Stdio::from(log));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start npm {args:?}: {e}"));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for npm") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("npm {args:?} still running after {TIMEOUT:?}, killed\n{out}");
        }
        thread::sleep(Duration::from_millis(200));
    };
    let out = std::fs::read_to_string(&log_path).unwrap_or_default();
    println!("===== npm {} ({status}) =====\n{out}", args.join(" "));
    (status.success(), out)
}

/// node and npm present and `client-js/node_modules` installed (running
/// `npm ci` when it is not); false after printing why not.
fn ready() -> bool {
    if !on_path("node") || !on_path("npm") {
        skip("node/npm are not on PATH (the suites need Node.js 20 and npm)");
        return false;
    }
    let modules = client_js().join("node_modules");
    if !modules.join("vitest").is_dir() || !modules.join("@stomp/stompjs").is_dir() {
        let (ok, _) = npm(&["ci", "--no-audit", "--no-fund"], &[]);
        if !ok {
            skip("`npm ci` in client-js failed");
            return false;
        }
    }
    true
}

/// Vitest's summary line `Tests  N passed (N)`: asserts that tests ran and none failed.
fn assert_vitest_passed(out: &str, what: &str) {
    let line = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("Tests "))
        .unwrap_or_else(|| panic!("{what}: no Vitest summary in the output above"));
    assert!(
        line.contains(" passed") && !line.contains("failed"),
        "{what}: {line}"
    );
}

#[test]
fn sdk_against_a_real_server() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !ready() {
        return;
    }
    let (ok, _) = npm(&["run", "typecheck", "--silent"], &[]);
    assert!(ok, "the TypeScript type check failed; output above");
    let (ok, out) = npm(&["test", "--silent"], &[]);
    assert!(ok, "the SDK suite failed; output above");
    assert_vitest_passed(&out, "SDK suite");
}

#[test]
fn web_app_in_a_real_browser() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(chromium) = chromium() else {
        return skip("Chromium is not installed (apt-get install chromium)");
    };
    if !ready() {
        return;
    }
    let (ok, _) = npm(&["run", "build", "--silent"], &[]);
    assert!(ok, "building the web app failed; output above");
    let chromium = chromium.to_string_lossy().into_owned();
    let (ok, out) = npm(
        &["run", "test:e2e", "--silent"],
        &[("CHROMIUM_PATH", chromium.as_str())],
    );
    assert!(ok, "the browser suite failed; output above");
    assert_vitest_passed(&out, "browser suite");
}
