//! The `stompline` binary's configuration commands, run as a user would.
//! Nothing here starts a server.

use std::path::Path;
use std::process::{Command, Output};

use stompline::config::{Config, Overrides};

/// Runs the binary with a clean environment (no inherited `STOMPLINE_*`)
/// plus `env`, from `dir`.
fn stompline(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stompline"));
    command.args(args).current_dir(dir).env_clear();
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run stompline")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn config_prints_the_effective_configuration_as_toml() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("stompline.toml"),
        "data_dir = \"/srv/chat\"\n[chat]\nretention_days = 30\n",
    )
    .unwrap();
    let output = stompline(
        dir.path(),
        &[
            "config",
            "--config",
            "stompline.toml",
            "--stomp-addr",
            "",
            "--http-addr",
            "127.0.0.1:0",
        ],
        &[
            ("STOMPLINE_STOMP__MAX_HEADERS", "9"),
            ("STOMPLINE_HTTP_ADDR", "127.0.0.1:1"),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let printed: Config = toml::from_str(&text).expect("output is a config in TOML");
    assert_eq!(printed.http_addr, "127.0.0.1:0", "flag beats env");
    assert_eq!(printed.stomp_addr, "");
    assert_eq!(printed.stomp_socket_addr(), None);
    assert_eq!(printed.data_dir, Path::new("/srv/chat"));
    assert_eq!(printed.chat.retention_days, 30);
    assert_eq!(printed.stomp.max_headers, 9);
    printed.validate().unwrap();

    // What `config` prints is itself a complete, loadable config file.
    std::fs::write(dir.path().join("effective.toml"), &text).unwrap();
    let again = stompline(dir.path(), &["config", "--config", "effective.toml"], &[]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(stdout(&again), text);
}

#[test]
fn config_example_is_a_valid_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let output = stompline(dir.path(), &["config", "--example"], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.lines().filter(|l| l.starts_with('#')).count() > 20,
        "commented"
    );
    let parsed: Config = toml::from_str(&text).expect("example parses as a Config");
    assert_eq!(parsed, Config::default());

    let path = dir.path().join("example.toml");
    std::fs::write(&path, &text).unwrap();
    let loaded = Config::load_with_env(
        Some(&path),
        &Overrides::default(),
        Vec::<(String, String)>::new(),
    )
    .unwrap();
    assert_eq!(loaded, Config::default());
}

#[test]
fn bad_flags_env_and_file_fields_are_all_listed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "colour = \"blue\"\n[stomp]\nmax_frame_bytes = \"huge\"\nmax_subscriptions = 0\n",
    )
    .unwrap();
    for command in ["config", "serve", "migrate"] {
        let output = stompline(
            dir.path(),
            &[
                command,
                "--config",
                "bad.toml",
                "--http-addr",
                "nowhere",
                "--log-format",
                "xml",
            ],
            &[("STOMPLINE_CHAT__RATE_BURST", "lots")],
        );
        assert_eq!(
            output.status.code(),
            Some(2),
            "{command}: {}",
            stderr(&output)
        );
        assert!(output.stdout.is_empty(), "{command}: nothing on stdout");
        let text = stderr(&output);
        for key in [
            "colour:",
            "stomp.max_frame_bytes:",
            "stomp.max_subscriptions:",
            "http_addr:",
            "log_format:",
            "chat.rate_burst:",
        ] {
            assert!(
                text.lines().any(|line| line.starts_with(key)),
                "{command}: `{key}` not listed in:\n{text}"
            );
        }
        assert!(text.contains("--http-addr"), "names the flag: {text}");
        assert!(
            text.contains("STOMPLINE_CHAT__RATE_BURST"),
            "names the variable: {text}"
        );
    }
}

#[test]
fn serve_is_the_default_command_and_checks_config_first() {
    let dir = tempfile::tempdir().unwrap();
    let output = stompline(dir.path(), &["--stomp-addr", "bad"], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output)
            .lines()
            .any(|l| l.starts_with("stomp_addr:")),
        "{}",
        stderr(&output)
    );
}

#[test]
fn missing_config_file_and_usage_errors_fail() {
    let dir = tempfile::tempdir().unwrap();
    let output = stompline(dir.path(), &["config", "--config", "absent.toml"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("absent.toml"),
        "{}",
        stderr(&output)
    );

    let output = stompline(
        dir.path(),
        &["config"],
        &[("STOMPLINE_CONFIG", "absent.toml")],
    );
    assert_eq!(
        output.status.code(),
        Some(2),
        "STOMPLINE_CONFIG is honoured"
    );

    let output = stompline(dir.path(), &["frobnicate"], &[]);
    assert_eq!(output.status.code(), Some(2));
    let output = stompline(dir.path(), &["config", "--no-such-flag"], &[]);
    assert_eq!(output.status.code(), Some(2));

    let output = stompline(dir.path(), &["--version"], &[]);
    assert!(output.status.success());
    assert!(stdout(&output).starts_with("stompline "));
}
