//! The per-connection STOMP state machine.
//!
//! A transport reads bytes, hands them to [`Session::on_bytes`] and stops
//! when told [`Flow::Close`]. Everything the session sends goes through the
//! connection's bounded outbound queue, drained by the transport's writer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use stomp_codec::{
    header, negotiate, negotiate_version, Command, DecodeError, Decoder, Frame, HeartBeat, Item,
    Limits, SharedMessage, Version,
};

use super::connection::{AckMode, Connection, Out};
use super::frames;
use super::Shared;
use crate::auth::Principal;
use crate::broker::{user_key, Kind, Subscriber};
use crate::chat::{ChatDest, ChatError, Completion};
use crate::config::AclOp;
use crate::metrics::{labels, names};

/// The transport a session runs on (for metrics and version defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportKind {
    /// STOMP over a TCP socket.
    Tcp,
    /// STOMP over WebSocket.
    WebSocket {
        /// Version named by the negotiated subprotocol, if any.
        subprotocol: Option<Version>,
        /// `?access_token=` from the upgrade request.
        access_token: Option<String>,
        /// The browser session cookie of the upgrade request, present only
        /// when its `Origin` is allowed.
        session_cookie: Option<String>,
    },
}

impl TransportKind {
    /// Label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::WebSocket { .. } => "ws",
        }
    }
}

/// Whether the transport should keep reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Continue,
    /// The session queued its last frame; stop reading.
    Close,
}

struct Subscription {
    destination: String,
    key: String,
    /// `None`: a chat subscription, delivered by the gateway.
    kind: Option<Kind>,
    ack: AckMode,
}

struct Authenticated {
    user_id: Arc<str>,
}

/// A protocol violation: ERROR then close.
struct Violation {
    message: &'static str,
    detail: String,
}

fn violation(message: &'static str, detail: impl Into<String>) -> Violation {
    Violation {
        message,
        detail: detail.into(),
    }
}

/// An application error: reported on `/user/queue/errors`, connection kept.
struct AppError {
    code: &'static str,
    message: String,
}

enum Outcome {
    /// Done; send the RECEIPT if one was asked for.
    Done,
    /// Done, and the RECEIPT (if any) was already queued.
    Answered,
    /// Refused as an application error (no RECEIPT).
    Refused(AppError),
    /// DISCONNECT: already answered, stop.
    Disconnected,
}

/// One STOMP session.
pub struct Session {
    shared: Arc<Shared>,
    conn: Arc<Connection>,
    transport: TransportKind,
    decoder: Decoder,
    auth: Option<Authenticated>,
    subs: HashMap<String, Subscription>,
    transactions: HashMap<String, Vec<Frame>>,
    /// Read deadline: login timeout before CONNECT, heart-beat after.
    expect_every: Option<Duration>,
    grace: Duration,
    deadline: Option<Instant>,
    token_deadline: Option<Instant>,
    /// Inbound frame budget (token bucket); negative = throttle.
    tokens: f64,
    refilled: Instant,
    /// The peer's address, for rate limits on password logins.
    peer: Option<std::net::IpAddr>,
}

impl Session {
    /// A session for a freshly accepted connection.
    pub fn new(shared: Arc<Shared>, conn: Arc<Connection>, transport: TransportKind) -> Session {
        let cfg = &shared.config.stomp;
        let mut decoder = Decoder::new(Limits {
            max_frame_bytes: cfg.max_frame_bytes_before_connect,
            max_headers: cfg.max_headers,
            max_header_line_bytes: cfg.max_header_line_bytes,
            max_body_bytes: cfg.max_frame_bytes_before_connect,
        });
        decoder.set_lenient_missing_nul(
            cfg.ws_lenient_missing_nul && matches!(transport, TransportKind::WebSocket { .. }),
        );
        let now = Instant::now();
        let deadline = Some(now + Duration::from_millis(cfg.login_timeout_ms));
        let tokens = f64::from(cfg.inbound_burst.max(1));
        Session {
            shared,
            conn,
            transport,
            decoder,
            auth: None,
            subs: HashMap::new(),
            transactions: HashMap::new(),
            expect_every: None,
            grace: Duration::ZERO,
            deadline,
            token_deadline: None,
            tokens,
            refilled: now,
            peer: None,
        }
    }

    /// Records the peer's address (rate limits on password logins count
    /// per IP).
    pub fn set_peer(&mut self, ip: std::net::IpAddr) {
        self.peer = Some(ip);
    }

    /// True once CONNECT succeeded.
    pub fn is_connected(&self) -> bool {
        self.auth.is_some()
    }

    /// The connection's shared half.
    pub fn connection(&self) -> &Arc<Connection> {
        &self.conn
    }

    /// When the peer must have sent something by (login timeout or
    /// heart-beat), if ever.
    pub fn read_deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// When the access token used at CONNECT expires.
    pub fn token_deadline(&self) -> Option<Instant> {
        self.token_deadline
    }

    /// Feeds received bytes (a TCP read or a WebSocket frame payload).
    /// `end_of_message`: a WebSocket message ended here.
    pub async fn on_bytes(&mut self, buf: &mut BytesMut, end_of_message: bool) -> Flow {
        if let Some(every) = self.expect_every {
            self.deadline = Some(Instant::now() + every + self.grace);
        }
        loop {
            let item = match self.decoder.decode(buf) {
                Ok(Some(item)) => item,
                Ok(None) if end_of_message => match self.decoder.end_of_message(buf) {
                    Ok(Some(item)) => item,
                    Ok(None) => return Flow::Continue,
                    Err(e) => return self.decode_failed(e),
                },
                Ok(None) => return Flow::Continue,
                Err(e) => return self.decode_failed(e),
            };
            let Item::Frame(frame) = item else {
                continue; // heart-beat: the deadline was already pushed back
            };
            self.spend_token();
            if self.handle(frame).await == Flow::Close {
                return Flow::Close;
            }
        }
    }

    /// How long to pause reading to respect the inbound rate, if at all.
    pub fn throttle(&mut self) -> Option<Duration> {
        let rate = self.shared.config.stomp.inbound_frames_per_sec;
        if rate == 0 || self.tokens >= 0.0 {
            return None;
        }
        Some(Duration::from_secs_f64(-self.tokens / f64::from(rate)))
    }

    fn spend_token(&mut self) {
        let cfg = &self.shared.config.stomp;
        if cfg.inbound_frames_per_sec == 0 {
            return;
        }
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        let burst = f64::from(cfg.inbound_burst.max(1));
        self.tokens =
            (self.tokens + elapsed * f64::from(cfg.inbound_frames_per_sec)).min(burst) - 1.0;
        if self.tokens < 0.0 {
            metrics::counter!(names::LIMITS_HIT, labels::KIND => "inbound_rate").increment(1);
        }
    }

    /// The peer went silent past its heart-beat (or login) deadline.
    pub fn deadline_passed(&mut self) {
        if self.auth.is_some() {
            metrics::counter!(names::HEARTBEAT_TIMEOUTS).increment(1);
            self.close_with_error(
                "heart-beat timeout",
                None,
                "no data received within the negotiated heart-beat interval",
            );
        } else {
            metrics::counter!(names::LIMITS_HIT, labels::KIND => "login_timeout").increment(1);
            self.close_with_error("login timeout", None, "CONNECT was not completed in time");
        }
    }

    /// The access token used at CONNECT expired.
    pub fn token_expired(&mut self) {
        self.close_with_error(
            "token expired",
            None,
            "the access token expired; reconnect with a fresh one",
        );
    }

    /// The server is shutting down.
    pub fn server_shutdown(&mut self) {
        let frame = frames::error(
            self.conn.version(),
            "server shutting down",
            None,
            "the server is restarting",
        );
        self.conn.push_final([Out::Frame(frame)], 1001);
    }

    /// Queues ERROR `message` and the close marker.
    fn close_with_error(&mut self, message: &str, receipt: Option<&str>, detail: &str) {
        let frame = frames::error(self.conn.version(), message, receipt, detail);
        self.conn.push_final([Out::Frame(frame)], 1000);
    }

    fn decode_failed(&mut self, e: DecodeError) -> Flow {
        metrics::counter!(names::PROTOCOL_ERRORS, labels::KIND => e.kind()).increment(1);
        let message = match e {
            DecodeError::FrameTooLarge { .. } | DecodeError::BodyTooLarge { .. } => {
                "frame too large"
            }
            DecodeError::TooManyHeaders { .. } => "too many headers",
            DecodeError::HeaderLineTooLong { .. } => "header too long",
            _ => "malformed frame",
        };
        self.close_with_error(message, None, &e.to_string());
        Flow::Close
    }

    fn fail(&mut self, v: Violation, receipt: Option<&str>) -> Flow {
        metrics::counter!(names::PROTOCOL_ERRORS, labels::KIND => v.message).increment(1);
        self.close_with_error(v.message, receipt, &v.detail);
        Flow::Close
    }

    /// Handles one complete frame.
    async fn handle(&mut self, frame: Frame) -> Flow {
        metrics::counter!(names::FRAMES_IN, labels::COMMAND => frame.command.as_str()).increment(1);
        let receipt = frame.header(header::RECEIPT).map(str::to_owned);
        let result = if self.auth.is_none() {
            match frame.command {
                Command::Connect | Command::Stomp => {
                    self.on_connect(&frame).await.map(|()| Outcome::Done)
                }
                _ => Err(violation(
                    "expected CONNECT",
                    format!("{} before CONNECT", frame.command),
                )),
            }
        } else {
            self.on_frame(frame).await
        };
        match result {
            Ok(Outcome::Done) => {
                if let Some(r) = receipt {
                    self.push(frames::receipt(self.conn.version(), &r));
                }
                Flow::Continue
            }
            Ok(Outcome::Answered) => Flow::Continue,
            Ok(Outcome::Refused(e)) => {
                self.app_error(e, receipt.as_deref());
                Flow::Continue
            }
            Ok(Outcome::Disconnected) => Flow::Close,
            Err(v) => self.fail(v, receipt.as_deref()),
        }
    }

    fn push(&self, frame: Bytes) {
        // A refused push means the connection is already closing.
        let _ = self.conn.push(Out::Frame(frame));
    }

    async fn on_connect(&mut self, frame: &Frame) -> Result<(), Violation> {
        let cfg = self.shared.config.clone();
        let accept = frame.header(header::ACCEPT_VERSION);
        let ws_version = match &self.transport {
            TransportKind::WebSocket { subprotocol, .. } => *subprotocol,
            TransportKind::Tcp => None,
        };
        let version = match (accept, ws_version) {
            (None, Some(v)) => Some(v),
            (a, _) => negotiate_version(a, &Version::ALL),
        };
        let Some(version) = version else {
            let mut f = Frame::new(Command::Error)
                .with_header(header::VERSION, "1.0,1.1,1.2")
                .with_header(header::MESSAGE, "unsupported protocol version")
                .with_header(header::CONTENT_TYPE, "text/plain");
            if let Some(r) = frame.header(header::RECEIPT) {
                f.headers.push(header::RECEIPT_ID, r);
            }
            let f = f.with_body("supported versions: 1.0, 1.1, 1.2");
            self.conn
                .push_final([Out::Frame(frames::encode(&f, Version::V1_2))], 1000);
            // Reported as a violation so the transport stops; the ERROR is queued.
            return Err(violation("unsupported protocol version", String::new()));
        };
        self.conn.set_version(version);
        self.decoder.set_version(version);

        let client_hb = match frame.header(header::HEART_BEAT) {
            None => HeartBeat::default(),
            Some(v) => {
                HeartBeat::parse(v).map_err(|e| violation("invalid heart-beat", e.to_string()))?
            }
        };

        let principal = match self.authenticate(frame).await {
            Ok(p) => p,
            Err("rate_limited") => {
                return Err(violation(
                    "too many attempts",
                    "too many login attempts; wait and retry",
                ));
            }
            Err(reason) => {
                metrics::counter!(names::AUTH_FAILURES, labels::REASON => reason).increment(1);
                return Err(violation(
                    "authentication failed",
                    "bad credentials or token",
                ));
            }
        };
        let user_id: Arc<str> = principal.user_id.as_str().into();
        let auth_session: Option<Arc<str>> = principal.session_id.as_deref().map(Into::into);
        if self
            .shared
            .registry
            .register(
                &user_id,
                auth_session,
                &self.conn,
                cfg.stomp.max_connections_per_user,
            )
            .is_err()
        {
            metrics::counter!(names::LIMITS_HIT, labels::KIND => "connections_per_user")
                .increment(1);
            return Err(violation(
                "too many connections",
                "this user has too many open connections",
            ));
        }

        self.decoder.set_limits(Limits {
            max_frame_bytes: cfg.stomp.max_frame_bytes,
            max_headers: cfg.stomp.max_headers,
            max_header_line_bytes: cfg.stomp.max_header_line_bytes,
            max_body_bytes: cfg.stomp.max_frame_bytes,
        });

        let server_hb = HeartBeat {
            send_ms: u32::try_from(cfg.stomp.heartbeat_send_ms).unwrap_or(u32::MAX),
            recv_ms: u32::try_from(cfg.stomp.heartbeat_recv_ms).unwrap_or(u32::MAX),
        };
        let agreed = negotiate(server_hb, client_hb);
        self.expect_every = agreed.expect_every;
        self.grace = match cfg.stomp.heartbeat_grace_ms {
            0 => agreed
                .expect_every
                .map_or(Duration::ZERO, |e| (e / 2).max(Duration::from_secs(1))),
            ms => Duration::from_millis(ms),
        };
        self.deadline = self.expect_every.map(|e| Instant::now() + e + self.grace);
        self.token_deadline = principal.expires_at.map(|at| {
            let left = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            Instant::now() + left
        });

        // CONNECTED advertises what the server does: send at the agreed
        // interval (or not at all) and expect at its configured one.
        let connected = Frame::new(Command::Connected)
            .with_header(header::VERSION, version.as_str())
            .with_header(header::HEART_BEAT, &server_hb.to_header())
            .with_header(header::SESSION, &self.conn.id)
            .with_header(header::SERVER, frames::SERVER)
            .with_header(header::USER_ID, &principal.user_id);
        self.push(frames::encode(&connected, version));
        self.conn
            .set_heartbeat_send_ms(agreed.send_every.map_or(0, |d| d.as_millis() as u64));
        tracing::debug!(session = %self.conn.id, user = %principal.username, %version, "connected");
        self.shared.chat.gateway.user_connected(&user_id).await;
        self.shared.presence.connected(&user_id).await;
        self.auth = Some(Authenticated { user_id });
        Ok(())
    }

    /// Tries, in order: `Authorization: Bearer`, `passcode` as an access
    /// token, `login`/`passcode` as username and password, then the
    /// WebSocket upgrade's `access_token`. Returns a metrics reason on failure.
    async fn authenticate(&self, frame: &Frame) -> Result<Principal, &'static str> {
        let auth = &self.shared.auth;
        let bearer = frame
            .header(header::AUTHORIZATION)
            .or_else(|| frame.header("authorization"))
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        if let Some(token) = bearer {
            return auth
                .verify_access_token(token.trim())
                .map_err(|e| e.reason());
        }
        let passcode = frame.header(header::PASSCODE);
        if let Some(p) = passcode.filter(|p| looks_like_jwt(p)) {
            if let Ok(principal) = auth.verify_access_token(p) {
                return Ok(principal);
            }
        }
        if let (Some(login), Some(p)) = (frame.header(header::LOGIN), passcode) {
            if !login.is_empty() {
                return auth
                    .authenticate_password_from(
                        crate::auth::Action::StompConnect,
                        self.peer,
                        login,
                        p,
                    )
                    .await
                    .map_err(|e| e.reason());
            }
        }
        if let TransportKind::WebSocket {
            access_token: Some(t),
            ..
        } = &self.transport
        {
            return auth.verify_access_token(t).map_err(|e| e.reason());
        }
        if let TransportKind::WebSocket {
            session_cookie: Some(c),
            ..
        } = &self.transport
        {
            return auth.verify_session_cookie(c).await.map_err(|e| e.reason());
        }
        if let Some(p) = passcode.filter(|p| looks_like_jwt(p)) {
            return auth.verify_access_token(p).map_err(|e| e.reason());
        }
        Err("missing_credentials")
    }

    fn user_id(&self) -> Arc<str> {
        self.auth
            .as_ref()
            .map(|a| a.user_id.clone())
            .unwrap_or_else(|| "".into())
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<Outcome, Violation> {
        match frame.command {
            Command::Connect | Command::Stomp => Err(violation(
                "already connected",
                "a second CONNECT on one connection",
            )),
            Command::Send => {
                let dest = required(&frame, header::DESTINATION)?.to_owned();
                if let Some(tx) = frame.header(header::TRANSACTION) {
                    let tx = tx.to_owned();
                    return self.buffer_in_transaction(&tx, frame);
                }
                Ok(self.send(&dest, &frame).await)
            }
            Command::Subscribe => self.subscribe(&frame).await,
            Command::Unsubscribe => {
                let id = match frame.header(header::ID) {
                    Some(id) => id.to_owned(),
                    None if self.conn.version() == Version::V1_0 => {
                        required(&frame, header::DESTINATION)?.to_owned()
                    }
                    None => {
                        return Err(violation(
                            "missing header",
                            "UNSUBSCRIBE requires an id header",
                        ))
                    }
                };
                self.unsubscribe(&id);
                Ok(Outcome::Done)
            }
            Command::Ack | Command::Nack => {
                if let Some(tx) = frame.header(header::TRANSACTION) {
                    let tx = tx.to_owned();
                    // Checked now so a bad id fails at once, applied at COMMIT.
                    ack_id(&frame)?;
                    return self.buffer_in_transaction(&tx, frame);
                }
                self.ack(&frame)?;
                Ok(Outcome::Done)
            }
            Command::Begin => {
                let tx = required(&frame, header::TRANSACTION)?.to_owned();
                if self.transactions.contains_key(&tx) {
                    return Err(violation(
                        "transaction already started",
                        format!("transaction {tx} is already open"),
                    ));
                }
                self.transactions.insert(tx, Vec::new());
                Ok(Outcome::Done)
            }
            Command::Commit => {
                let tx = required(&frame, header::TRANSACTION)?;
                let frames = self.transactions.remove(tx).ok_or_else(|| {
                    violation("unknown transaction", format!("no open transaction {tx}"))
                })?;
                for f in frames {
                    match f.command {
                        Command::Send => {
                            let dest = f.header(header::DESTINATION).unwrap_or_default().to_owned();
                            // A chat send's RECEIPT belongs to its SEND, which
                            // was answered when it was buffered.
                            if let Outcome::Refused(e) = self.send(&dest, &f).await {
                                self.app_error(e, None);
                            }
                        }
                        _ => self.ack(&f)?,
                    }
                }
                Ok(Outcome::Done)
            }
            Command::Abort => {
                let tx = required(&frame, header::TRANSACTION)?;
                self.transactions.remove(tx).ok_or_else(|| {
                    violation("unknown transaction", format!("no open transaction {tx}"))
                })?;
                Ok(Outcome::Done)
            }
            Command::Disconnect => {
                let mut last = Vec::new();
                if let Some(r) = frame.header(header::RECEIPT) {
                    last.push(Out::Frame(frames::receipt(self.conn.version(), r)));
                }
                self.conn.push_final(last, 1000);
                Ok(Outcome::Disconnected)
            }
            Command::Connected | Command::Message | Command::Receipt | Command::Error => {
                Err(violation(
                    "unexpected command",
                    format!("{} is a server command", frame.command),
                ))
            }
        }
    }

    fn buffer_in_transaction(&mut self, tx: &str, frame: Frame) -> Result<Outcome, Violation> {
        let frames = self
            .transactions
            .get_mut(tx)
            .ok_or_else(|| violation("unknown transaction", format!("no open transaction {tx}")))?;
        frames.push(frame);
        Ok(Outcome::Done)
    }

    /// SEND to any destination.
    async fn send(&mut self, dest: &str, frame: &Frame) -> Outcome {
        if dest.starts_with("/app/") || dest.starts_with("/topic/chat/") {
            let in_tx = frame.header(header::TRANSACTION).is_some();
            let receipt = frame
                .header(header::RECEIPT)
                .filter(|_| !in_tx)
                .map(str::to_owned);
            return match self.chat_send(dest, frame, receipt).await {
                Ok(o) => o,
                Err(e) => Outcome::Refused(e),
            };
        }
        let kind = match destination_kind(dest) {
            Some(k) if !dest.starts_with("/user/") => k,
            _ => {
                return Outcome::Refused(AppError {
                    code: "unknown_destination",
                    message: format!("cannot send to {dest}"),
                })
            }
        };
        if !self.shared.config.acl.check(dest, AclOp::Send) {
            return Outcome::Refused(AppError {
                code: "forbidden",
                message: format!("not allowed to send to {dest}"),
            });
        }
        let user_headers = frame
            .headers
            .iter()
            .filter(|(n, _)| !is_transport_header(n));
        let msg = Arc::new(SharedMessage::new(dest, user_headers, frame.body.clone()));
        match kind {
            Kind::Fanout => {
                self.shared.broker.publish(dest, &msg);
                // Subscribers on other instances (a cluster relay only).
                self.shared.chat.gateway.publish_topic(&msg).await;
            }
            Kind::Queue => {
                if self.shared.broker.enqueue(dest, msg).is_err() {
                    metrics::counter!(names::LIMITS_HIT, labels::KIND => "queue_full").increment(1);
                    return Outcome::Refused(AppError {
                        code: "queue_full",
                        message: format!("{dest} holds too many undelivered messages"),
                    });
                }
            }
        }
        Outcome::Done
    }

    async fn subscribe(&mut self, frame: &Frame) -> Result<Outcome, Violation> {
        let dest = required(frame, header::DESTINATION)?.to_owned();
        let id = match frame.header(header::ID) {
            Some(id) => id.to_owned(),
            None if self.conn.version() == Version::V1_0 => dest.clone(),
            None => {
                return Err(violation(
                    "missing header",
                    "SUBSCRIBE requires an id header",
                ))
            }
        };
        let ack = AckMode::parse(frame.header(header::ACK)).ok_or_else(|| {
            violation(
                "invalid ack mode",
                "ack must be auto, client or client-individual",
            )
        })?;
        if self.subs.contains_key(&id) {
            return Err(violation(
                "duplicate subscription id",
                format!("subscription {id} already exists"),
            ));
        }
        if self.subs.len() >= self.shared.config.stomp.max_subscriptions {
            metrics::counter!(names::LIMITS_HIT, labels::KIND => "subscriptions").increment(1);
            return Err(violation(
                "too many subscriptions",
                "the per-connection subscription limit was reached",
            ));
        }
        if let Some(chat) = ChatDest::parse(&dest) {
            return self.chat_subscribe(frame, id, dest, chat, ack).await;
        }
        let (key, kind) = if let Some(rest) = dest.strip_prefix("/user/") {
            if !rest.starts_with("queue/") {
                return Ok(Outcome::Refused(AppError {
                    code: "unknown_destination",
                    message: format!("cannot subscribe to {dest}"),
                }));
            }
            (user_key(&self.user_id(), &dest), Kind::Fanout)
        } else {
            let Some(kind) = destination_kind(&dest) else {
                return Ok(Outcome::Refused(AppError {
                    code: "unknown_destination",
                    message: format!("cannot subscribe to {dest}"),
                }));
            };
            if !self.shared.config.acl.check(&dest, AclOp::Subscribe) {
                return Ok(Outcome::Refused(AppError {
                    code: "forbidden",
                    message: format!("not allowed to subscribe to {dest}"),
                }));
            }
            (dest.clone(), kind)
        };
        if is_generic_topic(&dest) {
            // In place before the RECEIPT: a publication on another instance
            // after it reaches this subscriber.
            self.shared.chat.gateway.watch_topic(&dest).await;
        }
        // The RECEIPT goes out before messages a queue was holding.
        if let Some(r) = frame.header(header::RECEIPT) {
            self.push(frames::receipt(self.conn.version(), r));
        }
        let sub_id: Arc<str> = id.as_str().into();
        self.subs.insert(
            id,
            Subscription {
                destination: dest,
                key: key.clone(),
                kind: Some(kind),
                ack,
            },
        );
        self.shared.broker.subscribe(
            &key,
            kind,
            Subscriber {
                conn: self.conn.clone(),
                id: sub_id,
                ack,
            },
        );
        Ok(Outcome::Answered)
    }

    fn unsubscribe(&mut self, id: &str) {
        let Some(sub) = self.subs.remove(id) else {
            return;
        };
        let Some(kind) = sub.kind else {
            self.shared
                .chat
                .gateway
                .unsubscribe(&self.conn.id, &Arc::from(id));
            self.conn.drain_pending(Some(id));
            return;
        };
        self.shared
            .broker
            .unsubscribe(&sub.key, kind, &self.conn.id, id);
        if is_generic_topic(&sub.destination) {
            self.shared.chat.gateway.unwatch_topic(&sub.destination);
        }
        let pending = self.conn.drain_pending(Some(id));
        if kind == Kind::Queue {
            let msgs = pending.into_iter().filter_map(|p| p.queued).collect();
            self.shared.broker.requeue(&sub.key, msgs, None);
        }
        tracing::trace!(session = %self.conn.id, destination = %sub.destination, "unsubscribed");
    }

    fn ack(&mut self, frame: &Frame) -> Result<(), Violation> {
        let id = ack_id(frame)?;
        let subs = &self.subs;
        let acked = self
            .conn
            .take_acked(id, |s| {
                subs.get(s).map_or(AckMode::ClientIndividual, |s| s.ack)
            })
            .ok_or_else(|| {
                violation(
                    "unknown ack id",
                    format!("message {id} is not awaiting acknowledgement"),
                )
            })?;
        if frame.command == Command::Ack {
            if let Some(a) = &self.auth {
                for (_, p) in &acked {
                    if let Some((cid, seq)) = &p.chat {
                        self.shared
                            .chat
                            .gateway
                            .delivered(a.user_id.clone(), cid.clone(), *seq);
                    }
                }
            }
        }
        if frame.command == Command::Nack {
            let mut by_sub: HashMap<Arc<str>, Vec<Arc<SharedMessage>>> = HashMap::new();
            for (_, p) in acked {
                if let Some(msg) = p.queued {
                    by_sub.entry(p.subscription).or_default().push(msg);
                }
            }
            for (sub_id, msgs) in by_sub {
                if let Some(sub) = self.subs.get(&*sub_id) {
                    let avoid = Some((&*self.conn.id, &*sub_id));
                    self.shared.broker.requeue(&sub.key, msgs, avoid);
                }
            }
        }
        Ok(())
    }

    /// SUBSCRIBE to a chat destination: members only; `since-seq` replays.
    async fn chat_subscribe(
        &mut self,
        frame: &Frame,
        id: String,
        dest: String,
        chat: ChatDest,
        ack: AckMode,
    ) -> Result<Outcome, Violation> {
        let user = self.user_id();
        let since = match frame.header("since-seq") {
            None => None,
            Some(v) => match v.trim().parse::<i64>() {
                Ok(n) if n >= 0 => Some(n),
                _ => {
                    return Ok(Outcome::Refused(AppError {
                        code: "invalid_since_seq",
                        message: "since-seq must be a non-negative integer".into(),
                    }))
                }
            },
        };
        if let Some(cid) = chat.conversation() {
            if let Err(e) = self.shared.chat.ensure_member(&user, cid).await {
                return Ok(Outcome::Refused(chat_app_error(e)));
            }
        }
        let sub_id: Arc<str> = id.as_str().into();
        self.subs.insert(
            id,
            Subscription {
                destination: dest.clone(),
                key: dest,
                kind: None,
                ack,
            },
        );
        let sub = Subscriber {
            conn: self.conn.clone(),
            id: sub_id,
            ack,
        };
        // Registered (buffering) first, then the RECEIPT, then delivery: the
        // RECEIPT precedes every MESSAGE and nothing committed meanwhile is
        // missed.
        let prepared = self
            .shared
            .chat
            .gateway
            .subscribe(sub, user.clone(), chat, since)
            .await;
        if let Some(r) = frame.header(header::RECEIPT) {
            self.push(frames::receipt(self.conn.version(), r));
        }
        match prepared {
            Ok(activation) => self.shared.chat.gateway.activate(activation),
            Err(e) => {
                tracing::warn!(error = %e, "chat subscribe failed");
                self.app_error(
                    AppError {
                        code: "unavailable",
                        message: "the subscription could not be started".into(),
                    },
                    None,
                );
            }
        }
        Ok(Outcome::Answered)
    }

    /// SEND to `/app/…` or `/topic/chat/{cid}`.
    async fn chat_send(
        &mut self,
        dest: &str,
        frame: &Frame,
        receipt: Option<String>,
    ) -> Result<Outcome, AppError> {
        let user = self.user_id();
        let chat = self.shared.chat.clone();
        let bad_json = |what: &str| AppError {
            code: "invalid_json",
            message: format!("the body must be JSON {what}"),
        };
        let text = || {
            std::str::from_utf8(&frame.body).map_err(|_| AppError {
                code: "invalid_utf8",
                message: "the body must be UTF-8 text".into(),
            })
        };
        match dest {
            "/app/chat.send" => {
                let v: serde_json::Value = serde_json::from_slice(&frame.body)
                    .map_err(|_| bad_json("{conversationId, body, clientMsgId?}"))?;
                let (Some(cid), Some(body)) = (v["conversationId"].as_str(), v["body"].as_str())
                else {
                    return Err(bad_json("{conversationId, body, clientMsgId?}"));
                };
                let client_msg_id = v["clientMsgId"].as_str().map(str::to_owned);
                self.submit(&chat, &user, cid, body.to_owned(), client_msg_id, receipt)
                    .await
            }
            "/app/chat.typing" => {
                let v: serde_json::Value = serde_json::from_slice(&frame.body)
                    .map_err(|_| bad_json("{conversationId, typing}"))?;
                let (Some(cid), Some(typing)) =
                    (v["conversationId"].as_str(), v["typing"].as_bool())
                else {
                    return Err(bad_json("{conversationId, typing}"));
                };
                chat.typing(&user, cid, typing)
                    .await
                    .map_err(chat_app_error)?;
                Ok(Outcome::Done)
            }
            "/app/chat.read" => {
                let v: serde_json::Value = serde_json::from_slice(&frame.body)
                    .map_err(|_| bad_json("{conversationId, upToSeq}"))?;
                let Some(cid) = v["conversationId"].as_str() else {
                    return Err(bad_json(
                        "{conversationId, upToSeq} or {conversationId, messageIds}",
                    ));
                };
                let result = if let Some(seq) = v["upToSeq"].as_i64() {
                    chat.mark_read(&user, cid, seq).await
                } else if let Some(ids) = v["messageIds"].as_array() {
                    let ids: Vec<String> = ids
                        .iter()
                        .filter_map(|i| i.as_str().map(str::to_owned))
                        .collect();
                    chat.mark_read_ids(&user, cid, &ids).await
                } else {
                    return Err(bad_json(
                        "{conversationId, upToSeq} or {conversationId, messageIds}",
                    ));
                };
                result.map_err(chat_app_error)?;
                Ok(Outcome::Done)
            }
            "/app/presence.set" => {
                let v: serde_json::Value =
                    serde_json::from_slice(&frame.body).map_err(|_| bad_json("{status}"))?;
                let status = v["status"].as_str().unwrap_or_default();
                self.shared
                    .presence
                    .set_status(&user, status)
                    .await
                    .map_err(|m| AppError {
                        code: "invalid_status",
                        message: m.into(),
                    })?;
                Ok(Outcome::Done)
            }
            _ => match ChatDest::parse(dest) {
                Some(ChatDest::Messages(cid)) => {
                    let body = text()?.to_owned();
                    let client_msg_id = frame.header("client-msg-id").map(str::to_owned);
                    self.submit(&chat, &user, &cid, body, client_msg_id, receipt)
                        .await
                }
                _ => Err(AppError {
                    code: "unknown_destination",
                    message: format!("cannot send to {dest}"),
                }),
            },
        }
    }

    async fn submit(
        &self,
        chat: &crate::chat::Chat,
        user: &Arc<str>,
        cid: &str,
        body: String,
        client_msg_id: Option<String>,
        receipt: Option<String>,
    ) -> Result<Outcome, AppError> {
        let completion = Completion::Stomp {
            conn: self.conn.clone(),
            user_id: user.clone(),
            receipt,
        };
        chat.submit(user, cid, body, client_msg_id, completion)
            .await
            .map_err(chat_app_error)?;
        // The RECEIPT follows once the message is durable.
        Ok(Outcome::Answered)
    }

    /// Reports an application error on the user's `/user/queue/errors`.
    fn app_error(&self, e: AppError, receipt: Option<&str>) {
        let Some(user) = self.auth.as_ref().map(|a| a.user_id.clone()) else {
            return;
        };
        let body = serde_json::json!({ "code": e.code, "message": e.message }).to_string();
        let mut headers: Vec<(&str, &str)> = vec![
            (header::CONTENT_TYPE, "application/json"),
            ("event", "error"),
            ("code", e.code),
            (header::MESSAGE, &e.message),
        ];
        if let Some(r) = receipt {
            headers.push((header::RECEIPT_ID, r));
        }
        let dest = "/user/queue/errors";
        let msg = Arc::new(SharedMessage::new(dest, headers, Bytes::from(body)));
        self.shared.broker.publish(&user_key(&user, dest), &msg);
    }

    /// Releases everything the session holds: subscriptions (handing
    /// unacknowledged queue messages back), transactions (aborted), the
    /// registry entry. Queues the close marker if nothing else did.
    pub fn finish(&mut self) {
        let ids: Vec<String> = self.subs.keys().cloned().collect();
        for id in ids {
            self.unsubscribe(&id);
        }
        self.transactions.clear();
        if let Some(a) = &self.auth {
            self.shared.registry.unregister(&a.user_id, &self.conn.id);
            self.shared.chat.gateway.user_disconnected(&a.user_id);
            self.shared.presence.disconnected(&a.user_id);
        }
        self.conn.push_final([], 1000);
    }
}

/// A `/topic/…` destination the broker delivers (not a chat one); a
/// cluster relay carries it between instances.
fn is_generic_topic(dest: &str) -> bool {
    dest.starts_with("/topic/") && !dest.starts_with("/topic/chat/")
}

fn destination_kind(dest: &str) -> Option<Kind> {
    if dest.starts_with("/topic/") || dest.starts_with("/user/") {
        Some(Kind::Fanout)
    } else if dest.starts_with("/queue/") {
        Some(Kind::Queue)
    } else {
        None
    }
}

fn chat_app_error(e: ChatError) -> AppError {
    AppError {
        code: e.code(),
        message: e.to_string(),
    }
}

/// Headers that belong to the SEND frame itself, not to the message.
fn is_transport_header(name: &str) -> bool {
    matches!(
        name,
        header::RECEIPT
            | header::TRANSACTION
            | header::DESTINATION
            | header::CONTENT_LENGTH
            | header::SUBSCRIPTION
            | header::MESSAGE_ID
            | header::ACK
            | header::REDELIVERED
            | header::AUTHORIZATION
            | "authorization"
    )
}

fn required<'a>(frame: &'a Frame, name: &'static str) -> Result<&'a str, Violation> {
    frame.header(name).ok_or_else(|| {
        violation(
            "missing header",
            format!("{} requires a {name} header", frame.command),
        )
    })
}

/// The id an ACK/NACK refers to: `id` (1.2) or `message-id` (1.0, 1.1).
fn ack_id(frame: &Frame) -> Result<u64, Violation> {
    let raw = frame
        .header(header::ID)
        .or_else(|| frame.header(header::MESSAGE_ID))
        .ok_or_else(|| {
            violation(
                "missing header",
                format!("{} requires an id header", frame.command),
            )
        })?;
    raw.parse().map_err(|_| {
        violation(
            "unknown ack id",
            format!("message {raw} is not awaiting acknowledgement"),
        )
    })
}

fn looks_like_jwt(s: &str) -> bool {
    s.len() > 20 && s.bytes().filter(|b| *b == b'.').count() == 2
}
