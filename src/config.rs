//! Server configuration: one typed [`Config`], loaded from an embedded default,
//! an optional TOML file, `STOMPLINE_*` environment variables and command-line
//! flags (in rising precedence), then validated up front so that every bad
//! field is reported before anything starts.
//!
//! `docs/CONFIG.md` documents every key; `docs/config.example.toml` is the
//! commented example printed by `stompline config --example`.

mod acl;
mod load;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use acl::{Acl, AclOp, AclPolicy, AclRule};
pub use load::{ignored_env_vars, Overrides, ENV_PREFIX};

/// The commented example configuration, every key at its default value.
pub const EXAMPLE_TOML: &str = include_str!("../docs/config.example.toml");

/// File name of the SQLite database inside `data_dir`.
pub const SQLITE_FILE_NAME: &str = "stompline.db";

/// File name of the generated JWT signing secret inside `data_dir`.
pub const JWT_SECRET_FILE_NAME: &str = "jwt.key";

/// The whole server configuration.
///
/// Every field has a default (see [`Config::default`]); unknown keys are
/// rejected. Build one with [`Config::load`]; a hand-built value should be
/// checked with [`Config::validate`] before use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP + WebSocket listen address (`ip:port`; port 0 = ephemeral).
    pub http_addr: String,
    /// STOMP-over-TCP listen address; empty disables the TCP listener.
    pub stomp_addr: String,
    /// Directory for the SQLite database, the generated JWT secret and the
    /// development mailbox.
    pub data_dir: PathBuf,
    /// Empty = SQLite at `<data_dir>/stompline.db`; `postgres://…` (or
    /// `postgresql://…`) selects PostgreSQL; `sqlite://PATH` (or
    /// `sqlite:PATH`) names another SQLite file.
    pub database_url: String,
    /// Log output format.
    pub log_format: LogFormat,
    /// How long a graceful shutdown may take before the process exits anyway.
    pub drain_timeout_ms: u64,
    /// Database pool settings.
    pub database: DatabaseConfig,
    /// Passwords and tokens.
    pub auth: AuthConfig,
    /// STOMP session limits and timers.
    pub stomp: StompConfig,
    /// Who may SUBSCRIBE and SEND to generic destinations.
    pub acl: Acl,
    /// Chat messages.
    pub chat: ChatConfig,
    /// Presence and typing indicators.
    pub presence: PresenceConfig,
    /// Outgoing mail (one-time codes).
    pub mail: MailConfig,
    /// Brute-force and abuse limits on logins, registrations and codes.
    pub rate_limit: RateLimitConfig,
    /// Directory of the built web app, served at `/` (relative paths are
    /// relative to the working directory).
    pub web_dir: PathBuf,
    /// Event log between gateways and the persister: `local` (in-process)
    /// or `kafka` (needs PostgreSQL).
    pub bus: BusKind,
    /// Fan-out between instances: `local` (in-process), `redis` or `amqp`.
    pub relay: RelayKind,
    /// Where presence, typing, revocations and rate-limit counters live:
    /// `memory` (this process) or `redis` (shared by every instance).
    pub shared_state: SharedStateKind,
    /// Redis (`relay = "redis"`, `shared_state = "redis"`).
    pub redis: RedisConfig,
    /// Kafka (`bus = "kafka"`).
    pub kafka: KafkaConfig,
    /// RabbitMQ (`relay = "amqp"`).
    pub amqp: AmqpConfig,
}

/// `bus`: the event log between gateways and the persister.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// An in-process bounded queue; the persister runs in this process.
    #[default]
    Local,
    /// A Kafka topic keyed by conversation; the persister is a consumer group.
    Kafka,
}

/// `relay`: fan-out of chat and topic events between instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayKind {
    /// In-process: a single node.
    #[default]
    Local,
    /// Redis pub/sub.
    Redis,
    /// A RabbitMQ topic exchange.
    Amqp,
}

/// `shared_state`: presence, typing, revocations, rate-limit counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SharedStateKind {
    /// In this process's memory: a single node.
    #[default]
    Memory,
    /// Redis keys shared by every instance.
    Redis,
}

/// `[redis]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prefix of every key and channel name, so several deployments can
    /// share one Redis.
    pub key_prefix: String,
    /// Largest pool of Redis connections (pub/sub uses its own).
    pub pool_size: u32,
}

/// `[kafka]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Prefix of the topic names (`<prefix>messages`, `<prefix>events`).
    pub topic_prefix: String,
    /// Partitions of the topics created at start.
    pub partitions: u32,
    /// Replication factor of the topics created at start.
    pub replication_factor: u32,
    /// Consumer group of the persisters.
    pub group_id: String,
    /// How long the group waits for a silent member (a crashed instance)
    /// before its partitions move to the others, in milliseconds.
    pub session_timeout_ms: u32,
}

/// `[amqp]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:port/vhost` (`%2f` is the default vhost).
    pub url: String,
    /// Name of the topic exchange the instances share.
    pub exchange: String,
}

/// Log output format (`log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event; coloured when stderr is a terminal.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// `[database]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Maximum number of pooled PostgreSQL connections.
    pub pool_size: u32,
}

/// `[auth]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HMAC secret for access tokens (at least 32 bytes); empty = generated
    /// once into `<data_dir>/jwt.key`. Every instance of a cluster must
    /// share the same secret.
    pub jwt_secret: String,
    /// Lifetime of an access token, seconds.
    pub access_token_ttl_secs: u64,
    /// Lifetime of a refresh token, seconds.
    pub refresh_token_ttl_secs: u64,
    /// argon2id memory cost, KiB.
    pub argon2_memory_kib: u32,
    /// argon2id time cost (passes).
    pub argon2_iterations: u32,
    /// argon2id lanes.
    pub argon2_parallelism: u32,
    /// Lifetime of a one-time code, seconds.
    pub otp_ttl_secs: u64,
    /// Wrong guesses allowed per code; the next attempt fails even with the
    /// right code.
    pub otp_max_attempts: u32,
    /// A new code for the same email or phone is sent at most this often,
    /// seconds; requests in between answer 202 and send nothing.
    pub otp_resend_secs: u64,
    /// Codes sent per email or phone per hour; 0 = no cap.
    pub otp_per_hour: u32,
    /// Code requests per client IP per hour; beyond it 429. 0 = no cap.
    pub otp_per_hour_per_ip: u32,
    /// Mark the browser session cookies `Secure` even when the request did
    /// not arrive over TLS (`X-Forwarded-Proto: https` sets it anyway).
    pub cookie_secure: bool,
    /// Origins (`https://chat.example.org`) allowed to use the session
    /// cookie on the WebSocket upgrade and to call the API cross-origin
    /// (CORS). The server's own origin is always allowed.
    pub allowed_origins: Vec<String>,
}

/// `[stomp]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StompConfig {
    /// Smallest interval at which the server can send heart-beats (the first
    /// number of CONNECTED's `heart-beat`); 0 = the server sends none.
    pub heartbeat_send_ms: u64,
    /// Interval at which the server wants to receive heart-beats (the second
    /// number of CONNECTED's `heart-beat`); 0 = the server wants none.
    pub heartbeat_recv_ms: u64,
    /// Tolerance added to the negotiated read interval before a silent
    /// connection is closed; 0 = automatic, `max(interval / 2, 1000 ms)`.
    pub heartbeat_grace_ms: u64,
    /// Time a new connection has to complete CONNECT.
    pub login_timeout_ms: u64,
    /// Largest frame accepted before CONNECT succeeded.
    pub max_frame_bytes_before_connect: usize,
    /// Largest frame accepted once connected.
    pub max_frame_bytes: usize,
    /// Most headers in one frame.
    pub max_headers: usize,
    /// Longest header line (name, colon and value).
    pub max_header_line_bytes: usize,
    /// Most subscriptions on one connection.
    pub max_subscriptions: usize,
    /// Most concurrent STOMP connections on this instance (both transports).
    pub max_connections: usize,
    /// Most concurrent STOMP connections of one user on this instance.
    pub max_connections_per_user: usize,
    /// Sustained inbound frames per second per connection; 0 = unlimited.
    pub inbound_frames_per_sec: u32,
    /// Inbound frames a connection may send in a burst above the rate.
    pub inbound_burst: u32,
    /// Bytes queued for one connection before it counts as a slow consumer
    /// and is disconnected.
    pub outbound_queue_bytes: usize,
    /// Messages held per `/queue/…` destination while nobody subscribes;
    /// 0 = hold none (drop).
    pub queue_hold_max: usize,
    /// Accept WebSocket messages whose frame lacks the trailing NUL.
    pub ws_lenient_missing_nul: bool,
    /// Initial read buffer per connection (idle connections cost about this).
    pub read_buffer_bytes: usize,
}

/// `[chat]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// Largest chat message body, bytes.
    pub message_max_bytes: usize,
    /// Sustained chat messages per second per user; 0 = unlimited.
    pub rate_per_sec: u32,
    /// Chat messages a user may send in a burst above the rate.
    pub rate_burst: u32,
    /// Messages older than this many days are deleted; 0 = keep forever.
    pub retention_days: u32,
    /// How often the retention sweep runs, seconds (the seed's policy:
    /// weekly). It also runs once shortly after start.
    pub retention_interval_secs: u64,
}

/// `[presence]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// How long a user stays `online` after their last connection closed.
    pub offline_grace_ms: u64,
    /// How long a typing indicator lasts without a refresh.
    pub typing_expiry_ms: u64,
    /// With `shared_state = "redis"`: how often each instance refreshes its
    /// users' presence keys (one batch per interval). The keys live three
    /// intervals, so a crashed instance's users go offline after at most
    /// three intervals plus the offline grace.
    pub refresh_ms: u64,
}

/// `[mail]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailConfig {
    /// `smtp://host:port` (plain), `smtp://host:587?tls=required` (STARTTLS)
    /// or `smtps://host:465`; empty = development mailbox in
    /// `<data_dir>/mailbox/` plus a log line.
    pub smtp_url: String,
    /// Sender address of outgoing mail.
    pub from: String,
    /// Phone codes by email-to-SMS gateway: an address template in which
    /// `{phone}` becomes the number's digits (`{phone}@sms.example.net`).
    pub sms_gateway: String,
    /// Phone codes by HTTP webhook: JSON `{"to","text"}` is POSTed here.
    /// Takes precedence over `sms_gateway`.
    pub sms_webhook_url: String,
    /// Delivery attempts per message before it is given up.
    pub retry_attempts: u32,
    /// Delay before the first retry, milliseconds; doubles per attempt.
    pub retry_backoff_ms: u64,
}

/// `[rate_limit]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Whether the limits below apply at all.
    pub enabled: bool,
    /// Length of the sliding window, seconds.
    pub window_secs: u64,
    /// Requests per client IP per window, counted per action (register,
    /// login, request-otp, verify-otp, STOMP CONNECT with a password).
    pub per_ip: u32,
    /// Failed attempts per account (login name, email or phone) per window
    /// before further attempts answer 429 until the window moves on.
    pub per_account: u32,
    /// Failed logins of one account within the window answered without
    /// delay; after that each answer waits longer.
    pub failure_delay_after: u32,
    /// First delay after `failure_delay_after` failures, milliseconds;
    /// doubles per further failure.
    pub failure_delay_ms: u64,
    /// Longest delay, milliseconds.
    pub failure_delay_max_ms: u64,
}

/// Which storage backend `database_url` selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// Embedded SQLite at this path.
    Sqlite(PathBuf),
    /// PostgreSQL at this connection URL.
    Postgres(String),
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http_addr: "127.0.0.1:8080".into(),
            stomp_addr: "127.0.0.1:61613".into(),
            data_dir: PathBuf::from("./data"),
            database_url: String::new(),
            log_format: LogFormat::Human,
            drain_timeout_ms: 10_000,
            database: DatabaseConfig::default(),
            auth: AuthConfig::default(),
            stomp: StompConfig::default(),
            acl: Acl::default(),
            chat: ChatConfig::default(),
            presence: PresenceConfig::default(),
            mail: MailConfig::default(),
            rate_limit: RateLimitConfig::default(),
            web_dir: PathBuf::from("client-js/web/dist"),
            bus: BusKind::Local,
            relay: RelayKind::Local,
            shared_state: SharedStateKind::Memory,
            redis: RedisConfig::default(),
            kafka: KafkaConfig::default(),
            amqp: AmqpConfig::default(),
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "stompline:".into(),
            pool_size: 16,
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: "stompline.".into(),
            partitions: 12,
            replication_factor: 1,
            group_id: "stompline-persister".into(),
            session_timeout_ms: 45_000,
        }
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            exchange: "stompline".into(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig { pool_size: 16 }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: String::new(),
            access_token_ttl_secs: 900,
            refresh_token_ttl_secs: 2_592_000,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            otp_ttl_secs: 300,
            otp_max_attempts: 5,
            otp_resend_secs: 60,
            otp_per_hour: 5,
            otp_per_hour_per_ip: 20,
            cookie_secure: false,
            allowed_origins: Vec::new(),
        }
    }
}

impl Default for StompConfig {
    fn default() -> Self {
        StompConfig {
            heartbeat_send_ms: 10_000,
            heartbeat_recv_ms: 10_000,
            heartbeat_grace_ms: 0,
            login_timeout_ms: 10_000,
            max_frame_bytes_before_connect: 64 * 1024,
            max_frame_bytes: 4 * 1024 * 1024,
            max_headers: 64,
            max_header_line_bytes: 8192,
            max_subscriptions: 256,
            max_connections: 100_000,
            max_connections_per_user: 64,
            inbound_frames_per_sec: 1000,
            inbound_burst: 2000,
            outbound_queue_bytes: 8 * 1024 * 1024,
            queue_hold_max: 10_000,
            ws_lenient_missing_nul: false,
            read_buffer_bytes: 4096,
        }
    }
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            message_max_bytes: 16 * 1024,
            rate_per_sec: 100,
            rate_burst: 1000,
            retention_days: 7,
            retention_interval_secs: 7 * 86_400,
        }
    }
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            offline_grace_ms: 20_000,
            typing_expiry_ms: 5000,
            refresh_ms: 5000,
        }
    }
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            smtp_url: String::new(),
            from: "stompline@localhost".into(),
            sms_gateway: String::new(),
            sms_webhook_url: String::new(),
            retry_attempts: 5,
            retry_backoff_ms: 1000,
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            window_secs: 60,
            per_ip: 30,
            per_account: 10,
            failure_delay_after: 3,
            failure_delay_ms: 250,
            failure_delay_max_ms: 4000,
        }
    }
}

impl Config {
    /// Loads the configuration: embedded defaults, then `file` (when given; it
    /// must exist), then `STOMPLINE_*` environment variables, then `overrides`
    /// (command-line flags), and validates the result.
    ///
    /// # Errors
    ///
    /// Every problem found — unreadable file, TOML syntax, unknown key, wrong
    /// type, invalid value — each with its key path.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigErrors> {
        load::load(file, overrides, std::env::vars_os())
    }

    /// Like [`Config::load`], but reads environment variables from `env`
    /// instead of the process environment (for tests and embedding).
    ///
    /// # Errors
    ///
    /// As [`Config::load`].
    pub fn load_with_env<I, K, V>(
        file: Option<&Path>,
        overrides: &Overrides,
        env: I,
    ) -> Result<Config, ConfigErrors>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<std::ffi::OsString>,
        V: Into<std::ffi::OsString>,
    {
        load::load(
            file,
            overrides,
            env.into_iter().map(|(k, v)| (k.into(), v.into())),
        )
    }

    /// Checks every value and reports all problems at once.
    ///
    /// # Errors
    ///
    /// One [`ConfigError`] per bad key.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let errors = validate::validate(self);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The effective configuration as TOML (what `stompline config` prints).
    ///
    /// # Errors
    ///
    /// Only if a value cannot be represented in TOML (an integer above
    /// `i64::MAX`).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// The HTTP + WebSocket listen address.
    ///
    /// # Panics
    ///
    /// If `http_addr` does not parse; [`Config::load`] and
    /// [`Config::validate`] rule that out.
    pub fn http_socket_addr(&self) -> SocketAddr {
        self.http_addr.trim().parse().unwrap_or_else(|_| {
            panic!(
                "http_addr {:?} is not ip:port; validate the config first",
                self.http_addr
            )
        })
    }

    /// The STOMP-over-TCP listen address, or `None` when the TCP listener is
    /// disabled (`stomp_addr = ""`).
    ///
    /// # Panics
    ///
    /// If `stomp_addr` is neither empty nor parses; [`Config::load`] and
    /// [`Config::validate`] rule that out.
    pub fn stomp_socket_addr(&self) -> Option<SocketAddr> {
        let addr = self.stomp_addr.trim();
        if addr.is_empty() {
            return None;
        }
        Some(addr.parse().unwrap_or_else(|_| {
            panic!(
                "stomp_addr {:?} is not ip:port; validate the config first",
                self.stomp_addr
            )
        }))
    }

    /// The storage backend `database_url` selects.
    pub fn database(&self) -> Database {
        let url = self.database_url.trim();
        if url.is_empty() {
            Database::Sqlite(self.data_dir.join(SQLITE_FILE_NAME))
        } else if let Some(path) = sqlite_path(url) {
            Database::Sqlite(PathBuf::from(path))
        } else {
            Database::Postgres(url.to_string())
        }
    }

    /// The SQLite database file, or `None` when PostgreSQL is configured.
    pub fn database_path(&self) -> Option<PathBuf> {
        match self.database() {
            Database::Sqlite(path) => Some(path),
            Database::Postgres(_) => None,
        }
    }

    /// Where the generated JWT secret lives when `auth.jwt_secret` is empty.
    pub fn jwt_secret_path(&self) -> PathBuf {
        self.data_dir.join(JWT_SECRET_FILE_NAME)
    }

    /// The development mailbox used when `mail.smtp_url` is empty.
    pub fn mailbox_dir(&self) -> PathBuf {
        self.data_dir.join("mailbox")
    }

    /// `drain_timeout_ms` as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
}

impl AuthConfig {
    /// `access_token_ttl_secs` as a duration.
    pub fn access_token_ttl(&self) -> Duration {
        Duration::from_secs(self.access_token_ttl_secs)
    }

    /// `refresh_token_ttl_secs` as a duration.
    pub fn refresh_token_ttl(&self) -> Duration {
        Duration::from_secs(self.refresh_token_ttl_secs)
    }
}

impl StompConfig {
    /// `login_timeout_ms` as a duration.
    pub fn login_timeout(&self) -> Duration {
        Duration::from_millis(self.login_timeout_ms)
    }

    /// `heartbeat_send_ms` as a duration (zero = never sends).
    pub fn heartbeat_send(&self) -> Duration {
        Duration::from_millis(self.heartbeat_send_ms)
    }

    /// `heartbeat_recv_ms` as a duration (zero = wants none).
    pub fn heartbeat_recv(&self) -> Duration {
        Duration::from_millis(self.heartbeat_recv_ms)
    }

    /// The tolerance on top of a negotiated read interval: the configured
    /// `heartbeat_grace_ms`, or when that is 0, `max(interval / 2, 1 s)`.
    /// A connection silent for `read_interval + grace` is closed.
    pub fn heartbeat_grace(&self, read_interval: Duration) -> Duration {
        if self.heartbeat_grace_ms > 0 {
            Duration::from_millis(self.heartbeat_grace_ms)
        } else {
            (read_interval / 2).max(Duration::from_secs(1))
        }
    }

    /// Whether inbound frames are rate limited at all.
    pub fn inbound_rate_limited(&self) -> bool {
        self.inbound_frames_per_sec > 0
    }
}

impl ChatConfig {
    /// How long messages are kept, or `None` to keep them forever.
    pub fn retention(&self) -> Option<Duration> {
        (self.retention_days > 0)
            .then(|| Duration::from_secs(u64::from(self.retention_days) * 86_400))
    }

    /// Whether chat sends are rate limited at all.
    pub fn rate_limited(&self) -> bool {
        self.rate_per_sec > 0
    }
}

impl PresenceConfig {
    /// `offline_grace_ms` as a duration.
    pub fn offline_grace(&self) -> Duration {
        Duration::from_millis(self.offline_grace_ms)
    }

    /// `typing_expiry_ms` as a duration.
    pub fn typing_expiry(&self) -> Duration {
        Duration::from_millis(self.typing_expiry_ms)
    }
}

/// The path of a `sqlite://PATH` (or `sqlite:PATH`) database URL.
fn sqlite_path(url: &str) -> Option<&str> {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
}

/// One configuration problem: the key path it concerns and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path (`stomp.max_frame_bytes`), or the config file's path
    /// for problems with the file as a whole.
    pub key: String,
    /// What is wrong, including where the value came from when known.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found while loading or validating a configuration.
/// Displays one problem per line, each starting with its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The individual problems.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    /// Whether some problem concerns `key`.
    pub fn has_key(&self, key: &str) -> bool {
        self.0.iter().any(|e| e.key == key)
    }
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests;
