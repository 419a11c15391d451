//! STOMP over WebSocket (`GET /ws`), upgraded with fastwebsockets.
//!
//! Reading uses fastwebsockets' frame parser. Writing builds the server's
//! (unmasked) frame headers straight into one buffer per burst, so many
//! STOMP frames leave in one write instead of one write each.

use std::io;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use fastwebsockets::upgrade::IncomingUpgrade;
use fastwebsockets::{after_handshake_split, OpCode, Payload, Role, WebSocketError, WebSocketRead};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use stomp_codec::Version;
use tokio::io::ReadHalf;
use tokio::sync::OwnedSemaphorePermit;

use super::{drive, join_writer, new_connection, write_loop, Chunk, Framing, Reader};
use crate::api::client::{self, ClientIp};
use crate::auth::SESSION_COOKIE;
use crate::metrics::{labels, names};
use crate::stomp::connection::{Connection, Out};
use crate::stomp::{Session, Shared, TransportKind};

type Stream = TokioIo<Upgraded>;

/// State of the `/ws` route.
#[derive(Clone)]
pub struct WsState {
    /// Shared session state.
    pub shared: Arc<Shared>,
    /// Server-wide connection permits.
    pub permits: Arc<tokio::sync::Semaphore>,
    /// Tracks connection tasks for graceful shutdown.
    pub tracker: tokio_util::task::TaskTracker,
}

/// Query parameters of the upgrade request.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    access_token: Option<String>,
}

/// The subprotocol to answer with: the highest STOMP version the client
/// offered. `None` when it offered none we know (the session then follows
/// CONNECT's `accept-version`).
pub fn choose_subprotocol(headers: &HeaderMap) -> Option<Version> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(Version::from_subprotocol)
        .max()
}

/// `GET /ws`: upgrades to WebSocket and runs a STOMP session on it.
pub async fn handler(
    State(state): State<WsState>,
    Query(query): Query<WsQuery>,
    ClientIp(peer): ClientIp,
    headers: HeaderMap,
    upgrade: IncomingUpgrade,
) -> Response {
    if state.shared.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "server shutting down").into_response();
    }
    // A browser sends the session cookie with any page's WebSocket, so the
    // cookie counts only from allowed origins (cross-site WebSocket
    // hijacking); a foreign page cannot read a token to use instead.
    let session_cookie = client::cookie(&headers, SESSION_COOKIE).map(str::to_owned);
    if session_cookie.is_some() {
        if let Some(origin) = client::origin(&headers) {
            if !client::origin_allowed(&headers, origin, &state.shared.config.auth.allowed_origins)
            {
                metrics::counter!(names::AUTH_FAILURES, labels::REASON => "origin_not_allowed")
                    .increment(1);
                return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
            }
        }
    }
    let Ok(permit) = state.permits.clone().try_acquire_owned() else {
        metrics::counter!(names::LIMITS_HIT, labels::KIND => "connections").increment(1);
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    let subprotocol = choose_subprotocol(&headers);
    let (response, fut) = match upgrade.upgrade() {
        Ok(x) => x,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let shared = state.shared.clone();
    let access_token = query.access_token.filter(|t| !t.is_empty());
    let transport = TransportKind::WebSocket {
        subprotocol,
        access_token,
        session_cookie,
    };
    state.tracker.spawn(async move {
        match fut.await {
            Ok(ws) => serve(ws.into_inner(), shared, transport, peer, permit).await,
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let (mut parts, body) = response.into_parts();
    if let Some(v) = subprotocol {
        parts.headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(v.subprotocol()),
        );
    }
    Response::from_parts(parts, axum::body::Body::new(body))
}

struct WsReader {
    ws: WebSocketRead<ReadHalf<Stream>>,
    conn: Arc<Connection>,
}

impl Reader for WsReader {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<Chunk> {
        let conn = self.conn.clone();
        loop {
            let frame = self
                .ws
                .read_frame(&mut |f: fastwebsockets::Frame<'_>| {
                    // Pongs the parser owes the peer go out through the writer.
                    let _ = conn.push(Out::Control {
                        opcode: f.opcode as u8,
                        payload: Bytes::copy_from_slice(&f.payload),
                    });
                    std::future::ready(Ok::<(), std::convert::Infallible>(()))
                })
                .await
                .map_err(to_io)?;
            match frame.opcode {
                OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                    let fin = frame.fin;
                    match frame.payload {
                        // The common case takes the parser's buffer as is.
                        Payload::Bytes(b) if buf.is_empty() => *buf = b,
                        other => buf.extend_from_slice(&other),
                    }
                    return Ok(Chunk::Data {
                        end_of_message: fin,
                    });
                }
                OpCode::Close => return Ok(Chunk::Eof),
                OpCode::Ping | OpCode::Pong => continue,
            }
        }
    }

    fn connected(&mut self, max_frame: usize) {
        self.ws.set_max_message_size(max_frame.saturating_add(1024));
    }
}

fn to_io(e: WebSocketError) -> io::Error {
    match e {
        WebSocketError::IoError(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

async fn serve(
    stream: Stream,
    shared: Arc<Shared>,
    transport: TransportKind,
    peer: Option<std::net::IpAddr>,
    _permit: OwnedSemaphorePermit,
) {
    let (r, w) = tokio::io::split(stream);
    let (mut ws, _) = after_handshake_split(r, tokio::io::sink(), Role::Server);
    ws.set_auto_close(false);
    ws.set_auto_pong(true);
    ws.set_max_message_size(
        shared
            .config
            .stomp
            .max_frame_bytes_before_connect
            .saturating_add(1024),
    );
    let conn = new_connection(&shared);
    metrics::gauge!(names::CONNECTIONS, labels::TRANSPORT => "ws").increment(1.0);
    let writer = tokio::spawn(write_loop::<WsFrames>(w, conn.clone()));
    let mut session = Session::new(shared.clone(), conn.clone(), transport);
    if let Some(ip) = peer {
        session.set_peer(ip);
    }
    drive(session, WsReader { ws, conn }, shared).await;
    join_writer(writer).await;
    metrics::gauge!(names::CONNECTIONS, labels::TRANSPORT => "ws").decrement(1.0);
}

/// Appends one unmasked, final WebSocket frame header (RFC 6455 §5.2).
fn put_ws_head(buf: &mut BytesMut, opcode: u8, len: usize) {
    buf.put_u8(0x80 | opcode);
    if len < 126 {
        buf.put_u8(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        buf.put_u8(126);
        buf.put_u16(short);
    } else {
        buf.put_u8(127);
        buf.put_u64(len as u64);
    }
}

/// One WebSocket message per STOMP frame: text when the frame is UTF-8
/// (what browsers' STOMP clients expect), binary otherwise.
struct WsFrames;

impl Framing for WsFrames {
    fn frame(buf: &mut BytesMut, parts: &[&[u8]]) {
        let utf8 = parts.iter().all(|p| std::str::from_utf8(p).is_ok());
        let opcode = if utf8 { OpCode::Text } else { OpCode::Binary };
        put_ws_head(buf, opcode as u8, parts.iter().map(|p| p.len()).sum());
        for p in parts {
            buf.put_slice(p);
        }
    }

    fn heartbeat(buf: &mut BytesMut) {
        Self::frame(buf, &[stomp_codec::HEARTBEAT]);
    }

    fn control(buf: &mut BytesMut, opcode: u8, payload: &[u8]) {
        put_ws_head(buf, opcode, payload.len());
        buf.put_slice(payload);
    }

    fn close(buf: &mut BytesMut, code: u16) {
        put_ws_head(buf, OpCode::Close as u8, 2);
        buf.put_u16(code);
    }
}
