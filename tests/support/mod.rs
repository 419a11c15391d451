//! A real server on ephemeral ports, plus raw STOMP clients over TCP and
//! WebSocket that speak bytes and parse answers with the codec.

#![allow(dead_code)]

pub mod kafka;
pub mod pg;
pub mod process;
pub mod services;
pub mod smtp;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use stomp_codec::{Command, Decoder, Frame, Item, Limits, Version};
use stompline::config::Config;
use stompline::server::{start, Running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// How long any single expectation may wait.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub running: Running,
    pub http: SocketAddr,
    pub stomp: SocketAddr,
    _dir: tempfile::TempDir,
    /// The scratch PostgreSQL database when the suite runs on PostgreSQL.
    pg: Option<pg::PgDatabase>,
}

/// `STOMPLINE_TEST_BACKEND=postgres` runs the server suites on a fresh
/// PostgreSQL database per server instead of SQLite (CI does both).
fn on_postgres() -> bool {
    std::env::var("STOMPLINE_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(db) = self.pg.take() {
            self.running.shutdown();
            db.drop_database_blocking();
        }
    }
}

pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config {
        http_addr: "127.0.0.1:0".into(),
        stomp_addr: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    // Cheaper hashing keeps the suite fast; production parameters are the
    // defaults and are exercised by the accounts tests.
    c.auth.argon2_memory_kib = 1024;
    c.auth.argon2_iterations = 1;
    // Suites register many users from one address; the limits have tests
    // of their own (tests/identity.rs) that switch them back on.
    c.rate_limit.enabled = false;
    c.auth.otp_per_hour_per_ip = 0;
    c
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(dir.path());
        let pg = if on_postgres() {
            let db = pg::PgDatabase::create()
                .await
                .expect("STOMPLINE_TEST_BACKEND=postgres needs a reachable PostgreSQL");
            config.database_url = db.url.clone();
            Some(db)
        } else {
            None
        };
        f(&mut config);
        let running = start(config).await.expect("server starts");
        TestServer {
            http: running.http_addr,
            stomp: running.stomp_addr.expect("stomp listener"),
            running,
            _dir: dir,
            pg,
        }
    }

    /// Registers `name` (password `password-<name>`) and returns
    /// `(user id, access token, refresh token)`.
    pub async fn register(&self, name: &str) -> (String, String, String) {
        let res = reqwest::Client::new()
            .post(format!("http://{}/api/auth/register", self.http))
            .json(&serde_json::json!({"username": name, "password": format!("password-{name}")}))
            .send()
            .await
            .expect("register request");
        assert_eq!(res.status(), 201, "register {name}");
        let v: serde_json::Value = res.json().await.expect("json");
        (
            v["user"]["id"].as_str().unwrap().to_owned(),
            v["accessToken"].as_str().unwrap().to_owned(),
            v["refreshToken"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn tcp(&self) -> Client {
        Client::tcp(&self.stomp.to_string()).await
    }

    /// A WebSocket client offering `protocols` (may be empty), with an
    /// optional query string.
    pub async fn ws(&self, protocols: &str, query: &str) -> Client {
        self.try_ws(protocols, query).await.expect("ws connect").0
    }

    /// Like [`ws`], also returning the subprotocol the server chose.
    pub async fn try_ws(
        &self,
        protocols: &str,
        query: &str,
    ) -> Result<(Client, Option<String>), tokio_tungstenite::tungstenite::Error> {
        let mut req = format!("ws://{}/ws{}", self.http, query).into_client_request()?;
        if !protocols.is_empty() {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
        }
        let (ws, resp) = tokio_tungstenite::connect_async(req).await?;
        let chosen = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        Ok((Client::new(Transport::Ws(Box::new(ws))), chosen))
    }

    /// A TCP client, connected as a freshly registered user.
    pub async fn user(&self, name: &str) -> (Client, String) {
        let (id, _, _) = self.register(name).await;
        let mut c = self.tcp().await;
        c.connect_password(name).await;
        (c, id)
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

pub enum Transport {
    Tcp(TcpStream),
    Ws(Box<Ws>),
}

/// What the WebSocket peer did to close, if it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    Eof,
    WsClose(u16),
}

pub struct Client {
    pub transport: Transport,
    dec: Decoder,
    buf: BytesMut,
    pub closed: Option<Closed>,
    pub heartbeats: usize,
    /// Frames read while waiting for something else (e.g. a RECEIPT).
    stash: std::collections::VecDeque<Frame>,
}

impl Client {
    /// A raw TCP client of the server at `addr`.
    pub async fn tcp(addr: &str) -> Client {
        let s = TcpStream::connect(addr).await.expect("tcp connect");
        Client::new(Transport::Tcp(s))
    }

    /// A raw TCP client, or `None` when the connection is refused.
    pub async fn try_tcp(addr: &str) -> Option<Client> {
        let s = TcpStream::connect(addr).await.ok()?;
        Some(Client::new(Transport::Tcp(s)))
    }

    /// A client over an already upgraded WebSocket.
    pub fn from_ws(ws: Ws) -> Client {
        Client::new(Transport::Ws(Box::new(ws)))
    }

    fn new(transport: Transport) -> Client {
        Client {
            transport,
            dec: Decoder::new(Limits::default()),
            buf: BytesMut::new(),
            closed: None,
            heartbeats: 0,
            stash: Default::default(),
        }
    }

    pub fn set_version(&mut self, v: Version) {
        self.dec.set_version(v);
    }

    /// Sends raw bytes (one WebSocket text message for WS).
    pub async fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).await.expect("send");
    }

    pub async fn try_send(&mut self, bytes: &[u8]) -> Result<(), String> {
        match &mut self.transport {
            Transport::Tcp(s) => s.write_all(bytes).await.map_err(|e| e.to_string()),
            Transport::Ws(ws) => {
                let msg = match std::str::from_utf8(bytes) {
                    Ok(t) => Message::text(t),
                    Err(_) => Message::binary(bytes.to_vec()),
                };
                ws.send(msg).await.map_err(|e| e.to_string())
            }
        }
    }

    /// Sends a binary WebSocket message.
    pub async fn send_binary(&mut self, bytes: &[u8]) {
        let Transport::Ws(ws) = &mut self.transport else {
            panic!("not a websocket")
        };
        ws.send(Message::binary(bytes.to_vec()))
            .await
            .expect("send");
    }

    async fn fill(&mut self) -> bool {
        if self.closed.is_some() {
            return false;
        }
        match &mut self.transport {
            Transport::Tcp(s) => {
                self.buf.reserve(8192);
                match s.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => {
                        self.closed = Some(Closed::Eof);
                        false
                    }
                    Ok(_) => true,
                }
            }
            Transport::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        self.buf.extend_from_slice(t.as_bytes());
                        return true;
                    }
                    Some(Ok(Message::Binary(b))) => {
                        self.buf.extend_from_slice(&b);
                        return true;
                    }
                    Some(Ok(Message::Close(c))) => {
                        self.closed = Some(Closed::WsClose(c.map_or(1005, |c| u16::from(c.code))));
                        return false;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => {
                        self.closed = Some(Closed::Eof);
                        return false;
                    }
                }
            },
        }
    }

    /// The next item, or `None` once the server closed.
    pub async fn item(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self
                .dec
                .decode(&mut self.buf)
                .expect("server sent valid STOMP")
            {
                return Some(item);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next frame (heart-beats are counted and skipped), within [`WAIT`].
    pub async fn try_frame(&mut self) -> Option<Frame> {
        if let Some(f) = self.stash.pop_front() {
            return Some(f);
        }
        tokio::time::timeout(WAIT, self.read_frame())
            .await
            .expect("timed out waiting for a frame")
    }

    /// The next frame off the wire (not the stash); heart-beats are counted.
    async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            match self.item().await {
                Some(Item::Frame(f)) => return Some(f),
                Some(Item::HeartBeat) => self.heartbeats += 1,
                None => return None,
            }
        }
    }

    pub async fn frame(&mut self) -> Frame {
        self.try_frame()
            .await
            .expect("connection closed while a frame was expected")
    }

    /// The next frame must be `command`.
    pub async fn expect(&mut self, command: Command) -> Frame {
        let f = self.frame().await;
        assert_eq!(f.command, command, "got {f:?}");
        f
    }

    /// The next frame must be ERROR with this `message`, then the server
    /// closes.
    pub async fn expect_error(&mut self, message: &str) -> Frame {
        let f = self.expect(Command::Error).await;
        assert_eq!(f.header("message"), Some(message), "got {f:?}");
        self.expect_closed().await;
        f
    }

    /// Reads until the server closes; panics on any further frame.
    pub async fn expect_closed(&mut self) {
        if let Some(f) = self.try_frame().await {
            panic!("expected close, got {f:?}");
        }
    }

    /// True when nothing but heart-beats arrives within `d`.
    pub async fn quiet_for(&mut self, d: Duration) -> bool {
        self.stash.is_empty() && tokio::time::timeout(d, self.read_frame()).await.is_err()
    }

    /// CONNECT with username/password; returns CONNECTED.
    pub async fn connect_password(&mut self, user: &str) -> Frame {
        let f = format!(
            "CONNECT\naccept-version:1.2\nhost:localhost\nlogin:{user}\npasscode:password-{user}\n\n\0"
        );
        self.send(f.as_bytes()).await;
        self.expect(Command::Connected).await
    }

    /// CONNECT with a bearer token.
    pub async fn connect_token(&mut self, token: &str) -> Frame {
        let f = format!(
            "CONNECT\naccept-version:1.2\nhost:localhost\nAuthorization:Bearer {token}\n\n\0"
        );
        self.send(f.as_bytes()).await;
        self.expect(Command::Connected).await
    }

    /// SUBSCRIBE and wait for its RECEIPT (frames arriving meanwhile are
    /// kept for later reads).
    pub async fn subscribe(&mut self, id: &str, dest: &str, ack: &str) {
        let receipt = format!("sub-{id}");
        let f =
            format!("SUBSCRIBE\nid:{id}\ndestination:{dest}\nack:{ack}\nreceipt:{receipt}\n\n\0");
        self.send(f.as_bytes()).await;
        self.await_receipt(&receipt).await;
    }

    /// Reads until the RECEIPT `receipt_id`, stashing everything else.
    pub async fn await_receipt(&mut self, receipt_id: &str) -> Frame {
        let mut held = Vec::new();
        let receipt = loop {
            let f = tokio::time::timeout(WAIT, self.read_frame())
                .await
                .expect("timed out waiting for a receipt")
                .expect("closed while waiting for a receipt");
            if f.command == Command::Receipt && f.header("receipt-id") == Some(receipt_id) {
                break f;
            }
            held.push(f);
        };
        self.stash.extend(held);
        receipt
    }

    /// SEND `body` to `dest` and wait for the RECEIPT; frames arriving
    /// meanwhile are kept for later reads.
    pub async fn send_to(&mut self, dest: &str, body: &str) {
        let f = format!("SEND\ndestination:{dest}\nreceipt:send\n\n{body}\0");
        self.send(f.as_bytes()).await;
        self.await_receipt("send").await;
    }
}
