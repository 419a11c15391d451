//! Semantic checks on a well-typed [`Config`]: every rule that a type alone
//! cannot express. All problems are collected, never just the first.

use std::net::SocketAddr;

use super::acl::pattern_problem;
use super::{sqlite_path, BusKind, Config, ConfigError, Database, RelayKind, SharedStateKind};

/// Shortest accepted explicit JWT secret: HS256 wants at least as many
/// secret bytes as the hash has.
const MIN_JWT_SECRET_BYTES: usize = 32;

/// argon2 needs at least 8 KiB of memory per lane.
const ARGON2_MIN_KIB_PER_LANE: u32 = 8;

struct Checker(Vec<ConfigError>);

impl Checker {
    fn check(&mut self, ok: bool, key: &str, message: impl Into<String>) {
        if !ok {
            self.0.push(ConfigError::new(key, message));
        }
    }

    fn positive(&mut self, value: u64, key: &str) {
        self.check(value > 0, key, "must be greater than 0");
    }
}

fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    value.trim().parse::<SocketAddr>().map_err(|_| {
        format!("{value:?} is not an ip:port socket address (e.g. 127.0.0.1:8080 or [::]:8080)")
    })
}

/// `http(s)://host[:port]`, nothing after (a trailing `/` is tolerated).
fn is_origin(origin: &str) -> bool {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    rest.map(|r| r.trim_end_matches('/'))
        .is_some_and(|r| !r.is_empty() && !r.contains(['/', '?', '#', ' ']))
}

pub(super) fn validate(config: &Config) -> Vec<ConfigError> {
    let mut c = Checker(Vec::new());

    // Listeners.
    let http = parse_addr(&config.http_addr);
    if let Err(message) = &http {
        c.check(false, "http_addr", message.clone());
    }
    let stomp = if config.stomp_addr.trim().is_empty() {
        None
    } else {
        match parse_addr(&config.stomp_addr) {
            Ok(addr) => Some(addr),
            Err(message) => {
                c.check(
                    false,
                    "stomp_addr",
                    format!("{message}, or \"\" to disable"),
                );
                None
            }
        }
    };
    if let (Ok(http), Some(stomp)) = (http, stomp) {
        c.check(
            http.port() == 0 || http != stomp,
            "stomp_addr",
            format!("same address as http_addr ({http})"),
        );
    }

    // Storage.
    c.check(
        !config.data_dir.as_os_str().is_empty(),
        "data_dir",
        "must not be empty",
    );
    let url = config.database_url.trim();
    let known_scheme = url.is_empty()
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://")
        || sqlite_path(url).is_some_and(|path| !path.is_empty());
    c.check(
        known_scheme,
        "database_url",
        "must be empty (SQLite in data_dir), postgres://…, postgresql://… or sqlite://PATH",
    );
    c.positive(config.drain_timeout_ms, "drain_timeout_ms");
    c.positive(config.database.pool_size.into(), "database.pool_size");

    // Auth.
    let auth = &config.auth;
    c.check(
        auth.jwt_secret.is_empty() || auth.jwt_secret.len() >= MIN_JWT_SECRET_BYTES,
        "auth.jwt_secret",
        format!("must be empty (generated) or at least {MIN_JWT_SECRET_BYTES} bytes"),
    );
    c.positive(auth.access_token_ttl_secs, "auth.access_token_ttl_secs");
    c.positive(auth.refresh_token_ttl_secs, "auth.refresh_token_ttl_secs");
    c.check(
        auth.refresh_token_ttl_secs >= auth.access_token_ttl_secs,
        "auth.refresh_token_ttl_secs",
        format!(
            "must be at least auth.access_token_ttl_secs ({})",
            auth.access_token_ttl_secs
        ),
    );
    c.positive(auth.argon2_iterations.into(), "auth.argon2_iterations");
    c.check(
        (1..=255).contains(&auth.argon2_parallelism),
        "auth.argon2_parallelism",
        "must be between 1 and 255",
    );
    c.check(
        auth.argon2_memory_kib >= ARGON2_MIN_KIB_PER_LANE * auth.argon2_parallelism.max(1),
        "auth.argon2_memory_kib",
        format!("must be at least {ARGON2_MIN_KIB_PER_LANE} × auth.argon2_parallelism"),
    );

    // STOMP.
    let s = &config.stomp;
    c.positive(s.login_timeout_ms, "stomp.login_timeout_ms");
    c.positive(s.max_frame_bytes as u64, "stomp.max_frame_bytes");
    c.positive(
        s.max_frame_bytes_before_connect as u64,
        "stomp.max_frame_bytes_before_connect",
    );
    c.check(
        s.max_frame_bytes_before_connect <= s.max_frame_bytes,
        "stomp.max_frame_bytes_before_connect",
        format!(
            "must not exceed stomp.max_frame_bytes ({})",
            s.max_frame_bytes
        ),
    );
    c.positive(s.max_headers as u64, "stomp.max_headers");
    c.positive(
        s.max_header_line_bytes as u64,
        "stomp.max_header_line_bytes",
    );
    c.check(
        s.max_header_line_bytes <= s.max_frame_bytes,
        "stomp.max_header_line_bytes",
        format!(
            "must not exceed stomp.max_frame_bytes ({})",
            s.max_frame_bytes
        ),
    );
    c.positive(s.max_subscriptions as u64, "stomp.max_subscriptions");
    c.positive(s.max_connections as u64, "stomp.max_connections");
    c.positive(
        s.max_connections_per_user as u64,
        "stomp.max_connections_per_user",
    );
    c.check(
        s.inbound_frames_per_sec == 0 || s.inbound_burst > 0,
        "stomp.inbound_burst",
        "must be greater than 0 while stomp.inbound_frames_per_sec is set",
    );
    c.check(
        s.outbound_queue_bytes >= s.max_frame_bytes,
        "stomp.outbound_queue_bytes",
        format!(
            "must be at least stomp.max_frame_bytes ({}), or a single large MESSAGE would disconnect its subscriber",
            s.max_frame_bytes
        ),
    );
    c.positive(s.read_buffer_bytes as u64, "stomp.read_buffer_bytes");

    // ACL.
    for (i, rule) in config.acl.rules.iter().enumerate() {
        if let Some(problem) = pattern_problem(&rule.pattern) {
            c.check(
                false,
                &format!("acl.rules[{i}].pattern"),
                format!("{:?} {problem}", rule.pattern),
            );
        }
    }

    // Chat.
    let chat = &config.chat;
    c.positive(chat.message_max_bytes as u64, "chat.message_max_bytes");
    c.positive(chat.retention_interval_secs, "chat.retention_interval_secs");
    c.check(
        chat.message_max_bytes <= s.max_frame_bytes,
        "chat.message_max_bytes",
        format!(
            "must not exceed stomp.max_frame_bytes ({})",
            s.max_frame_bytes
        ),
    );
    c.check(
        chat.rate_per_sec == 0 || chat.rate_burst > 0,
        "chat.rate_burst",
        "must be greater than 0 while chat.rate_per_sec is set",
    );

    // Presence.
    c.positive(
        config.presence.typing_expiry_ms,
        "presence.typing_expiry_ms",
    );
    c.positive(config.presence.refresh_ms, "presence.refresh_ms");

    // Auth: one-time codes and browser origins.
    c.positive(auth.otp_ttl_secs, "auth.otp_ttl_secs");
    c.positive(auth.otp_max_attempts.into(), "auth.otp_max_attempts");
    for (i, origin) in auth.allowed_origins.iter().enumerate() {
        c.check(
            is_origin(origin),
            &format!("auth.allowed_origins[{i}]"),
            format!("{origin:?} is not an origin like https://chat.example.org"),
        );
    }

    // Rate limits.
    let rl = &config.rate_limit;
    c.positive(rl.window_secs, "rate_limit.window_secs");
    c.check(
        rl.failure_delay_max_ms >= rl.failure_delay_ms,
        "rate_limit.failure_delay_max_ms",
        "must be at least rate_limit.failure_delay_ms",
    );

    // Mail.
    let smtp = config.mail.smtp_url.trim();
    c.check(
        smtp.is_empty() || smtp.starts_with("smtp://") || smtp.starts_with("smtps://"),
        "mail.smtp_url",
        "must be empty (development mailbox), smtp://… or smtps://…",
    );
    let from = config.mail.from.trim();
    c.check(
        from.contains('@') && !from.starts_with('@') && !from.ends_with('@'),
        "mail.from",
        "must be an e-mail address",
    );
    let gateway = config.mail.sms_gateway.trim();
    c.check(
        gateway.is_empty() || (gateway.contains("{phone}") && gateway.contains('@')),
        "mail.sms_gateway",
        "must be empty or an address template containing {phone}, e.g. {phone}@sms.example.net",
    );
    let webhook = config.mail.sms_webhook_url.trim();
    c.check(
        webhook.is_empty() || webhook.starts_with("http://") || webhook.starts_with("https://"),
        "mail.sms_webhook_url",
        "must be empty, http://… or https://…",
    );
    c.positive(config.mail.retry_attempts.into(), "mail.retry_attempts");

    // Cluster backends.
    if config.bus == BusKind::Kafka {
        c.check(
            matches!(config.database(), Database::Postgres(_)),
            "bus",
            "\"kafka\" needs PostgreSQL (database_url = \"postgres://…\"): every instance's persister writes the same database",
        );
        c.check(
            !config.kafka.brokers.trim().is_empty(),
            "kafka.brokers",
            "must name at least one host:port",
        );
        c.positive(u64::from(config.kafka.partitions), "kafka.partitions");
        c.positive(
            u64::from(config.kafka.replication_factor),
            "kafka.replication_factor",
        );
        c.check(
            !config.kafka.group_id.trim().is_empty(),
            "kafka.group_id",
            "must not be empty",
        );
        c.check(
            (3_000..=300_000).contains(&config.kafka.session_timeout_ms),
            "kafka.session_timeout_ms",
            "must be between 3000 and 300000",
        );
    }
    if config.relay != RelayKind::Local && matches!(config.database(), Database::Sqlite(_)) {
        c.check(
            false,
            "relay",
            "a cluster relay needs a shared database: set database_url = \"postgres://…\"",
        );
    }
    if config.relay == RelayKind::Redis || config.shared_state == SharedStateKind::Redis {
        let url = config.redis.url.trim();
        c.check(
            url.starts_with("redis://"),
            "redis.url",
            "must be redis://… (TLS to Redis is not built in: use a local TLS tunnel)",
        );
        c.positive(u64::from(config.redis.pool_size), "redis.pool_size");
    }
    if config.relay == RelayKind::Amqp {
        let url = config.amqp.url.trim();
        c.check(
            url.starts_with("amqp://"),
            "amqp.url",
            "must be amqp://… (TLS to RabbitMQ is not built in: use a local TLS tunnel)",
        );
        c.check(
            !config.amqp.exchange.trim().is_empty(),
            "amqp.exchange",
            "must not be empty",
        );
    }

    c.0
}
