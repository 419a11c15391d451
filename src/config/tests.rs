use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

type Env = Vec<(&'static str, &'static str)>;

fn load(file: Option<&Path>, overrides: &Overrides, env: Env) -> Result<Config, ConfigErrors> {
    Config::load_with_env(file, overrides, env)
}

fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    file
}

#[test]
fn defaults_are_valid() {
    Config::default().validate().unwrap();
    let loaded = load(None, &Overrides::default(), vec![]).unwrap();
    assert_eq!(loaded, Config::default());
    assert_eq!(loaded.http_socket_addr(), "127.0.0.1:8080".parse().unwrap());
    assert_eq!(
        loaded.stomp_socket_addr(),
        Some("127.0.0.1:61613".parse().unwrap())
    );
    assert_eq!(
        loaded.database_path(),
        Some(PathBuf::from("./data/stompline.db"))
    );
}

#[test]
fn env_overrides_a_root_key_and_a_section_key() {
    let config = load(
        None,
        &Overrides::default(),
        vec![
            ("STOMPLINE_HTTP_ADDR", "0.0.0.0:9000"),
            ("STOMPLINE_STOMP__MAX_FRAME_BYTES", "1024"),
            ("STOMPLINE_STOMP__MAX_FRAME_BYTES_BEFORE_CONNECT", "512"),
            ("STOMPLINE_STOMP__OUTBOUND_QUEUE_BYTES", "1024"),
            ("STOMPLINE_STOMP__MAX_HEADER_LINE_BYTES", "1024"),
            ("STOMPLINE_CHAT__MESSAGE_MAX_BYTES", "1000"),
            ("STOMPLINE_STOMP__WS_LENIENT_MISSING_NUL", "true"),
            ("STOMPLINE_LOG_FORMAT", "json"),
        ],
    )
    .unwrap();
    assert_eq!(config.http_addr, "0.0.0.0:9000");
    assert_eq!(config.stomp.max_frame_bytes, 1024);
    assert_eq!(config.stomp.max_frame_bytes_before_connect, 512);
    assert!(config.stomp.ws_lenient_missing_nul);
    assert_eq!(config.log_format, LogFormat::Json);
}

#[test]
fn empty_stomp_addr_from_env_disables_tcp() {
    let config = load(
        None,
        &Overrides::default(),
        vec![("STOMPLINE_STOMP_ADDR", "")],
    )
    .unwrap();
    assert_eq!(config.stomp_addr, "");
    assert_eq!(config.stomp_socket_addr(), None);
}

#[test]
fn string_keys_keep_numeric_looking_env_values_as_text() {
    let config = load(
        None,
        &Overrides::default(),
        vec![
            (
                "STOMPLINE_AUTH__JWT_SECRET",
                "12345678901234567890123456789012",
            ),
            ("STOMPLINE_DATA_DIR", "0"),
            ("STOMPLINE_MAIL__FROM", "1@2"),
        ],
    )
    .unwrap();
    assert_eq!(config.auth.jwt_secret, "12345678901234567890123456789012");
    assert_eq!(config.data_dir, PathBuf::from("0"));
    assert_eq!(config.mail.from, "1@2");
}

#[test]
fn flag_beats_env_beats_file() {
    let file = toml_file(
        "http_addr = \"127.0.0.1:1001\"\n\
         stomp_addr = \"127.0.0.1:2001\"\n\
         data_dir = \"/from/file\"\n",
    );
    let env = vec![
        ("STOMPLINE_HTTP_ADDR", "127.0.0.1:1002"),
        ("STOMPLINE_STOMP_ADDR", "127.0.0.1:2002"),
    ];
    let flags = Overrides {
        http_addr: Some("127.0.0.1:1003".into()),
        ..Overrides::default()
    };
    let config = load(Some(file.path()), &flags, env).unwrap();
    assert_eq!(
        config.http_addr, "127.0.0.1:1003",
        "flag wins over env and file"
    );
    assert_eq!(config.stomp_addr, "127.0.0.1:2002", "env wins over file");
    assert_eq!(
        config.data_dir,
        PathBuf::from("/from/file"),
        "file wins over default"
    );
    assert_eq!(
        config.drain_timeout_ms, 10_000,
        "default when nobody sets it"
    );
}

#[test]
fn flag_can_disable_tcp() {
    let flags = Overrides {
        stomp_addr: Some(String::new()),
        ..Overrides::default()
    };
    let config = load(None, &flags, vec![("STOMPLINE_STOMP_ADDR", "127.0.0.1:1")]).unwrap();
    assert_eq!(config.stomp_socket_addr(), None);
}

#[test]
fn every_bad_field_of_a_file_is_reported() {
    let file = toml_file(
        "http_addr = \"not-an-address\"\n\
         [stomp]\n\
         max_frame_bytes = \"huge\"\n\
         max_subscriptions = 0\n",
    );
    let errors = load(Some(file.path()), &Overrides::default(), vec![]).unwrap_err();
    assert!(errors.has_key("http_addr"), "{errors}");
    assert!(errors.has_key("stomp.max_frame_bytes"), "{errors}");
    assert!(errors.has_key("stomp.max_subscriptions"), "{errors}");
    assert_eq!(errors.errors().len(), 3, "{errors}");
    let text = errors.to_string();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().all(|line| !line.starts_with(' ')), "{text}");
    let file_name = file
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(text.contains(&file_name), "origin is named: {text}");
}

#[test]
fn errors_from_every_layer_are_reported_together() {
    let file = toml_file("[stomp]\nmax_headers = 0\n");
    let flags = Overrides {
        log_format: Some("xml".into()),
        ..Overrides::default()
    };
    let env = vec![("STOMPLINE_DATABASE__POOL_SIZE", "many")];
    let errors = load(Some(file.path()), &flags, env).unwrap_err();
    assert!(errors.has_key("stomp.max_headers"), "{errors}");
    assert!(errors.has_key("log_format"), "{errors}");
    assert!(errors.has_key("database.pool_size"), "{errors}");
    let text = errors.to_string();
    assert!(text.contains("--log-format"), "{text}");
    assert!(text.contains("STOMPLINE_DATABASE__POOL_SIZE"), "{text}");
}

#[test]
fn unknown_keys_are_rejected() {
    let file = toml_file("colour = \"blue\"\n[stomp]\nmax_frames = 3\n[nope]\nx = 1\n");
    let errors = load(Some(file.path()), &Overrides::default(), vec![]).unwrap_err();
    assert!(errors.has_key("colour"), "{errors}");
    assert!(errors.has_key("stomp.max_frames"), "{errors}");
    assert!(errors.has_key("nope"), "{errors}");

    let errors = load(
        None,
        &Overrides::default(),
        vec![("STOMPLINE_STOMP__MAX_FRAME", "1")],
    )
    .unwrap_err();
    assert!(errors.has_key("stomp.max_frame"), "{errors}");

    let file = toml_file(
        "[[acl.rules]]\npattern = \"/topic/**\"\nsubscribe = \"deny\"\nsend = \"deny\"\nwho = 1\n",
    );
    let errors = load(Some(file.path()), &Overrides::default(), vec![]).unwrap_err();
    assert!(errors.has_key("acl.rules[0].who"), "{errors}");
}

#[test]
fn unrelated_prefixed_env_vars_are_ignored_and_named() {
    let env = vec![
        ("STOMPLINE_TEST_POSTGRES_URL", "postgres://x"),
        ("STOMPLINE_REQUIRE_SERVICES", "1"),
        ("STOMPLINE_CONFIG", "/etc/stompline.toml"),
        ("STOMPLINE_HTTP_ADRESS", "typo"),
        ("PATH", "/bin"),
    ];
    assert_eq!(
        load(None, &Overrides::default(), env.clone()).unwrap(),
        Config::default()
    );
    assert_eq!(
        ignored_env_vars(env),
        vec!["STOMPLINE_HTTP_ADRESS".to_string()]
    );
}

#[test]
fn file_problems_are_reported() {
    let errors = load(
        Some(Path::new("/nonexistent/stompline.toml")),
        &Overrides::default(),
        vec![],
    )
    .unwrap_err();
    assert!(errors.has_key("/nonexistent/stompline.toml"), "{errors}");

    let file = toml_file("http_addr = \"127.0.0.1:1\"\n[stomp\n");
    let errors = load(Some(file.path()), &Overrides::default(), vec![]).unwrap_err();
    assert!(errors.to_string().contains("line 2"), "{errors}");
}

#[test]
fn semantic_rules() {
    let mut config = Config::default();
    config.stomp.max_frame_bytes_before_connect = config.stomp.max_frame_bytes + 1;
    config.auth.refresh_token_ttl_secs = 10;
    config.auth.jwt_secret = "short".into();
    config.database_url = "mysql://x".into();
    config.mail.smtp_url = "http://x".into();
    config.http_addr = "127.0.0.1:7000".into();
    config.stomp_addr = "127.0.0.1:7000".into();
    config.acl.rules[0].pattern = "/topic/**/x".into();
    let errors = config.validate().unwrap_err();
    for key in [
        "stomp.max_frame_bytes_before_connect",
        "auth.refresh_token_ttl_secs",
        "auth.jwt_secret",
        "database_url",
        "mail.smtp_url",
        "stomp_addr",
        "acl.rules[0].pattern",
    ] {
        assert!(errors.has_key(key), "{key} missing from {errors}");
    }
}

#[test]
fn database_selection() {
    let mut config = Config {
        data_dir: "/var/lib/stompline".into(),
        ..Config::default()
    };
    assert_eq!(
        config.database(),
        Database::Sqlite("/var/lib/stompline/stompline.db".into())
    );
    config.database_url = "postgres://postgres@127.0.0.1/db".into();
    assert_eq!(
        config.database(),
        Database::Postgres("postgres://postgres@127.0.0.1/db".into())
    );
    assert_eq!(config.database_path(), None);
    config.database_url = "sqlite:///tmp/x.db".into();
    assert_eq!(config.database_path(), Some(PathBuf::from("/tmp/x.db")));
    config.database_url = "sqlite:rel/x.db".into();
    assert_eq!(config.database_path(), Some(PathBuf::from("rel/x.db")));
    config.validate().unwrap();
}

#[test]
fn heartbeat_grace_defaults_to_half_the_interval_with_a_floor() {
    let mut stomp = StompConfig::default();
    assert_eq!(
        stomp.heartbeat_grace(Duration::from_secs(10)),
        Duration::from_secs(5)
    );
    assert_eq!(
        stomp.heartbeat_grace(Duration::from_millis(500)),
        Duration::from_secs(1)
    );
    stomp.heartbeat_grace_ms = 250;
    assert_eq!(
        stomp.heartbeat_grace(Duration::from_secs(10)),
        Duration::from_millis(250)
    );
}

#[test]
fn effective_toml_parses_back() {
    let mut config = Config {
        stomp_addr: String::new(),
        ..Config::default()
    };
    config.stomp.max_headers = 7;
    let text = config.to_toml().unwrap();
    let file = toml_file(&text);
    assert_eq!(
        load(Some(file.path()), &Overrides::default(), vec![]).unwrap(),
        config
    );
}

/// Collects every leaf key path of a TOML table.
fn leaf_keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => leaf_keys(inner, &path, out),
            _ => out.push(path),
        }
    }
}

#[test]
fn example_file_sets_every_key_to_its_default() {
    let example = toml_file(EXAMPLE_TOML);
    assert_eq!(
        load(Some(example.path()), &Overrides::default(), vec![]).unwrap(),
        Config::default()
    );

    let mut expected = Vec::new();
    leaf_keys(
        &toml::from_str(&Config::default().to_toml().unwrap()).unwrap(),
        "",
        &mut expected,
    );
    let mut documented = Vec::new();
    leaf_keys(&toml::from_str(EXAMPLE_TOML).unwrap(), "", &mut documented);
    expected.sort();
    documented.sort();
    assert_eq!(documented, expected);
}

#[test]
fn config_md_names_every_key_and_env_var() {
    let doc = include_str!("../../docs/CONFIG.md");
    let mut keys = Vec::new();
    leaf_keys(
        &toml::from_str(&Config::default().to_toml().unwrap()).unwrap(),
        "",
        &mut keys,
    );
    for key in keys {
        let (section, name) = key
            .split_once('.')
            .map_or(("", key.as_str()), |(s, n)| (s, n));
        assert!(
            doc.contains(&format!("`{name}`")),
            "docs/CONFIG.md lacks `{name}`"
        );
        let env = if section.is_empty() {
            format!("STOMPLINE_{}", name.to_uppercase())
        } else {
            format!(
                "STOMPLINE_{}__{}",
                section.to_uppercase(),
                name.to_uppercase()
            )
        };
        assert!(doc.contains(&env), "docs/CONFIG.md lacks {env}");
    }
}

#[test]
fn cluster_backends_need_postgres_and_valid_urls() {
    let config = Config {
        bus: BusKind::Kafka,
        relay: RelayKind::Redis,
        ..Config::default()
    };
    let errors = config.validate().unwrap_err();
    assert!(errors.has_key("bus"), "{errors}");
    assert!(errors.has_key("relay"), "{errors}");

    let mut config = Config {
        database_url: "postgres://postgres@127.0.0.1/x".into(),
        bus: BusKind::Kafka,
        relay: RelayKind::Amqp,
        shared_state: SharedStateKind::Redis,
        ..Config::default()
    };
    config.validate().unwrap();
    config.redis.url = "http://x".into();
    config.amqp.url = "redis://x".into();
    config.kafka.partitions = 0;
    let errors = config.validate().unwrap_err();
    for key in ["redis.url", "amqp.url", "kafka.partitions"] {
        assert!(errors.has_key(key), "{key} missing from {errors}");
    }
}

#[test]
fn cluster_backends_from_env() {
    let config = load(
        None,
        &Overrides::default(),
        vec![
            ("STOMPLINE_DATABASE_URL", "postgres://postgres@127.0.0.1/x"),
            ("STOMPLINE_BUS", "kafka"),
            ("STOMPLINE_RELAY", "amqp"),
            ("STOMPLINE_SHARED_STATE", "redis"),
            ("STOMPLINE_KAFKA__PARTITIONS", "3"),
            ("STOMPLINE_REDIS__KEY_PREFIX", "t1:"),
        ],
    )
    .unwrap();
    assert_eq!(config.bus, BusKind::Kafka);
    assert_eq!(config.relay, RelayKind::Amqp);
    assert_eq!(config.shared_state, SharedStateKind::Redis);
    assert_eq!(config.kafka.partitions, 3);
    assert_eq!(config.redis.key_prefix, "t1:");
}
