//! STOMP over TCP.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;

use super::{drive, join_writer, new_connection, write_loop, Chunk, Framing, Reader};
use crate::metrics::{labels, names};
use crate::stomp::{frames, Session, Shared, TransportKind};

struct TcpReader {
    r: OwnedReadHalf,
    chunk: usize,
}

impl Reader for TcpReader {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<Chunk> {
        loop {
            // Wait for data before reserving, so an idle connection holds no
            // read buffer.
            self.r.readable().await?;
            buf.reserve(self.chunk);
            match self.r.try_read_buf(buf) {
                Ok(0) => return Ok(Chunk::Eof),
                Ok(_) => {
                    return Ok(Chunk::Data {
                        end_of_message: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Serves one accepted TCP connection until it closes.
pub async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    let (r, w) = stream.into_split();
    let conn = new_connection(&shared);
    metrics::gauge!(names::CONNECTIONS, labels::TRANSPORT => "tcp").increment(1.0);
    let writer = tokio::spawn(write_loop::<Raw>(w, conn.clone()));
    let mut session = Session::new(shared.clone(), conn, TransportKind::Tcp);
    if let Some(ip) = peer {
        session.set_peer(ip);
    }
    let reader = TcpReader {
        r,
        chunk: shared.config.stomp.read_buffer_bytes.max(512),
    };
    drive(session, reader, shared).await;
    join_writer(writer).await;
    metrics::gauge!(names::CONNECTIONS, labels::TRANSPORT => "tcp").decrement(1.0);
}

/// Refuses a connection over the server-wide limit: ERROR, then close.
pub async fn refuse(mut stream: TcpStream) {
    let frame = frames::error(
        stomp_codec::Version::V1_2,
        "too many connections",
        None,
        "server connection limit reached",
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(&frame).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Raw STOMP frames back to back.
struct Raw;

impl Framing for Raw {
    fn frame(buf: &mut BytesMut, parts: &[&[u8]]) {
        for p in parts {
            buf.put_slice(p);
        }
    }

    fn heartbeat(buf: &mut BytesMut) {
        buf.put_slice(stomp_codec::HEARTBEAT);
    }

    fn control(_: &mut BytesMut, _: u8, _: &[u8]) {}

    fn close(_: &mut BytesMut, _: u16) {}
}
