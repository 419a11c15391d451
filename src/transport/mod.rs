//! Transports: STOMP over TCP and over WebSocket. Both run the same loop
//! ([`drive`]): a reader that feeds the [`Session`] and a writer task that
//! drains the connection's outbound queue, flushing once per burst.

pub mod tcp;
pub mod ws;

use std::future::pending;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::metrics::{labels, names};
use crate::stomp::connection::{Connection, Out};
use crate::stomp::{Flow, Session, Shared};

/// What a transport read produced.
pub(crate) enum Chunk {
    /// Bytes were appended; `end_of_message` marks a WebSocket message end.
    Data { end_of_message: bool },
    /// The peer closed.
    Eof,
}

/// The reading side of a transport.
pub(crate) trait Reader {
    /// Appends the next bytes to `buf`. Only cancelled when the connection
    /// is being closed anyway.
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<Chunk>;
    /// CONNECT succeeded: the transport may accept frames up to `max_frame`.
    fn connected(&mut self, _max_frame: usize) {}
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => pending().await,
    }
}

/// A fresh connection id.
pub(crate) fn new_connection(shared: &Shared) -> Arc<Connection> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    Connection::new(id.into(), shared.config.stomp.outbound_queue_bytes)
}

/// Runs a session until it closes, then releases what it holds.
pub(crate) async fn drive(mut session: Session, mut reader: impl Reader, shared: Arc<Shared>) {
    let conn = session.connection().clone();
    let mut buf = BytesMut::new();
    let mut widened = false;
    loop {
        let deadline = session.read_deadline();
        let token_deadline = session.token_deadline();
        tokio::select! {
            biased;
            _ = conn.kicked() => break,
            _ = shared.shutdown.cancelled() => {
                session.server_shutdown();
                break;
            }
            _ = sleep_until(deadline) => {
                session.deadline_passed();
                break;
            }
            _ = sleep_until(token_deadline) => {
                session.token_expired();
                break;
            }
            r = reader.read(&mut buf) => match r {
                Ok(Chunk::Data { end_of_message }) => {
                    if session.on_bytes(&mut buf, end_of_message).await == Flow::Close {
                        break;
                    }
                }
                Ok(Chunk::Eof) | Err(_) => break,
            }
        }
        if !widened && session.is_connected() {
            reader.connected(shared.config.stomp.max_frame_bytes);
            widened = true;
        }
        if buf.is_empty() {
            // Idle connections keep no read buffer.
            buf = BytesMut::new();
        }
        if let Some(pause) = session.throttle() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = conn.kicked() => break,
                _ = shared.shutdown.cancelled() => {
                    session.server_shutdown();
                    break;
                }
            }
        }
    }
    session.finish();
}

/// Waits for the writer to flush the last frames, but not forever: a peer
/// that stopped reading must not hold the task.
pub(crate) async fn join_writer(writer: tokio::task::JoinHandle<()>) {
    let abort = writer.abort_handle();
    if tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .is_err()
    {
        abort.abort();
    }
}

/// The metrics label of an encoded frame's command.
pub(crate) fn command_of(frame: &[u8]) -> &'static str {
    const KNOWN: [&str; 4] = ["MESSAGE", "RECEIPT", "ERROR", "CONNECTED"];
    KNOWN
        .into_iter()
        .find(|c| frame.starts_with(c.as_bytes()))
        .unwrap_or("OTHER")
}

pub(crate) fn count_out(item: &Out) {
    let command = match item {
        Out::Frame(b) => command_of(b),
        Out::Message { .. } => "MESSAGE",
        Out::Control { .. } | Out::Close { .. } => return,
    };
    metrics::counter!(names::FRAMES_OUT, labels::COMMAND => command).increment(1);
}

/// How a transport lays frames out on the wire.
pub(crate) trait Framing {
    /// Appends one STOMP frame given in parts (a MESSAGE is head + shared).
    fn frame(buf: &mut BytesMut, parts: &[&[u8]]);
    /// Appends a heart-beat.
    fn heartbeat(buf: &mut BytesMut);
    /// Appends a transport control frame (WebSocket pong); may ignore it.
    fn control(buf: &mut BytesMut, opcode: u8, payload: &[u8]);
    /// Appends whatever ends the stream (WebSocket close frame).
    fn close(buf: &mut BytesMut, code: u16);
}

/// The writer task: takes everything queued, lays the burst out in one
/// buffer, writes it with one call, and sends heart-beats when the queue
/// stayed empty for the negotiated interval.
pub(crate) async fn write_loop<F: Framing>(mut w: impl AsyncWrite + Unpin, conn: Arc<Connection>) {
    let mut items = Vec::new();
    let mut buf = BytesMut::new();
    loop {
        let hb = conn.heartbeat_send_ms();
        let idle = (hb > 0).then(|| Duration::from_millis(hb));
        if !conn.take_batch(&mut items, idle).await {
            F::heartbeat(&mut buf);
        }
        let mut close = false;
        for item in items.drain(..) {
            count_out(&item);
            match item {
                Out::Frame(b) => F::frame(&mut buf, &[&b]),
                Out::Message { head, shared } => F::frame(&mut buf, &[&head, &shared]),
                Out::Control { opcode, payload } => F::control(&mut buf, opcode, &payload),
                Out::Close { close_code } => {
                    F::close(&mut buf, close_code);
                    close = true;
                    break;
                }
            }
        }
        if !buf.is_empty() && w.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
        if buf.capacity() > 64 * 1024 {
            buf = BytesMut::new();
        }
        if close {
            let _ = w.shutdown().await;
            return;
        }
    }
}
