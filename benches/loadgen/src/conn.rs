//! One STOMP client connection over TCP or WebSocket: connect (optionally
//! from a chosen source address), the CONNECT handshake, batched writes and a
//! streaming frame reader built on `stomp-codec`.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use stomp_codec::{encode_frame, header, Command, Decoder, Frame, Item, Limits, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

/// How bytes reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// STOMP frames straight on a TCP stream.
    Tcp,
    /// STOMP frames in WebSocket text messages, one frame per message.
    Ws,
}

/// Where to connect: `tcp://IP:PORT` or `ws://IP:PORT/PATH`.
#[derive(Debug, Clone)]
pub struct Target {
    /// TCP or WebSocket.
    pub transport: Transport,
    /// The socket address (an IP literal; no name resolution).
    pub addr: SocketAddr,
    /// The URL as given, for the WebSocket upgrade request and reports.
    pub url: String,
}

impl Target {
    /// Parses a target URL.
    pub fn parse(url: &str) -> Result<Target> {
        let (transport, rest) = if let Some(rest) = url.strip_prefix("tcp://") {
            (Transport::Tcp, rest)
        } else if let Some(rest) = url.strip_prefix("ws://") {
            (Transport::Ws, rest)
        } else {
            bail!("target {url:?} must start with tcp:// or ws://");
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let addr = authority
            .parse()
            .with_context(|| format!("{authority:?} is not an IP:PORT address"))?;
        Ok(Target {
            transport,
            addr,
            url: url.to_owned(),
        })
    }
}

/// CONNECT credentials. `passcode` may be an access token for servers that
/// accept one there.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// `login` header.
    pub login: String,
    /// `passcode` header.
    pub passcode: String,
    /// `host` header (RabbitMQ reads the virtual host from it).
    pub host: String,
    /// Heart-beat interval offered both ways, ms (0 = none). The caller
    /// sends its own heart-beats; see [`Writer::send_heartbeat`].
    pub heartbeat_ms: u64,
}

/// Frames queued for one write: a single `write` on TCP, one WebSocket
/// message per frame (flushed together) on WebSocket.
#[derive(Default)]
pub struct Batch {
    buf: BytesMut,
    ends: Vec<usize>,
}

impl Batch {
    /// Appends one encoded frame.
    pub fn push(&mut self, frame: &Frame) {
        encode_frame(frame, Version::V1_2, &mut self.buf);
        self.ends.push(self.buf.len());
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// The sending half of a connection.
pub enum Writer {
    /// Raw TCP.
    Tcp(OwnedWriteHalf),
    /// WebSocket.
    Ws(SplitSink<Ws, Message>),
}

impl Writer {
    /// Writes and empties `batch`.
    pub async fn send(&mut self, batch: &mut Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let bytes = batch.buf.split().freeze();
        match self {
            Writer::Tcp(w) => w.write_all(&bytes).await?,
            Writer::Ws(sink) => {
                let mut start = 0;
                for &end in &batch.ends {
                    let text = Utf8Bytes::try_from(bytes.slice(start..end))
                        .context("frame is not UTF-8")?;
                    sink.feed(Message::Text(text)).await?;
                    start = end;
                }
                sink.flush().await?;
            }
        }
        batch.ends.clear();
        Ok(())
    }

    /// Sends a heart-beat (one EOL).
    pub async fn send_heartbeat(&mut self) -> Result<()> {
        match self {
            Writer::Tcp(w) => w.write_all(stomp_codec::HEARTBEAT).await?,
            Writer::Ws(sink) => sink.send(Message::Text(Utf8Bytes::from("\n"))).await?,
        }
        Ok(())
    }

    /// Sends one frame.
    pub async fn send_frame(&mut self, frame: &Frame) -> Result<()> {
        let mut batch = Batch::default();
        batch.push(frame);
        self.send(&mut batch).await
    }
}

enum Source {
    Tcp(OwnedReadHalf),
    Ws(SplitStream<Ws>),
}

/// The receiving half: bytes in, frames out.
pub struct Reader {
    source: Source,
    buf: BytesMut,
    decoder: Decoder,
}

/// Read size for TCP; small so that thousands of idle sessions stay cheap on
/// the client side too.
const READ_CHUNK: usize = 8 * 1024;

impl Reader {
    /// The next frame; `None` when the server closed the connection.
    /// Heart-beats are skipped.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            match self.decoder.decode(&mut self.buf)? {
                Some(Item::Frame(frame)) => return Ok(Some(frame)),
                Some(Item::HeartBeat) => continue,
                None => {}
            }
            match &mut self.source {
                Source::Tcp(r) => {
                    self.buf.reserve(READ_CHUNK);
                    if r.read_buf(&mut self.buf).await? == 0 {
                        return Ok(None);
                    }
                }
                Source::Ws(stream) => match stream.next().await {
                    None | Some(Ok(Message::Close(_))) => return Ok(None),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(Message::Text(t))) => self.buf.extend_from_slice(t.as_bytes()),
                    Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                    Some(Ok(_)) => {}
                },
            }
        }
    }
}

/// An established STOMP session.
pub struct Conn {
    /// Sending half.
    pub writer: Writer,
    /// Receiving half.
    pub reader: Reader,
}

/// Opens the transport (bound to `source` when given) and completes CONNECT.
pub async fn connect(target: &Target, creds: &Credentials, source: Option<IpAddr>) -> Result<Conn> {
    let socket = if target.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind {ip}"))?;
    }
    let stream = socket
        .connect(target.addr)
        .await
        .with_context(|| format!("connect {}", target.addr))?;
    stream.set_nodelay(true)?;
    let (mut writer, source) = match target.transport {
        Transport::Tcp => {
            let (r, w) = stream.into_split();
            (Writer::Tcp(w), Source::Tcp(r))
        }
        Transport::Ws => {
            let mut request = target.url.as_str().into_client_request()?;
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", "v12.stomp".parse()?);
            let config = WebSocketConfig::default()
                .read_buffer_size(READ_CHUNK)
                .write_buffer_size(0);
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                    .await
                    .context("WebSocket upgrade")?;
            let (sink, stream) = ws.split();
            (Writer::Ws(sink), Source::Ws(stream))
        }
    };
    let mut reader = Reader {
        source,
        buf: BytesMut::new(),
        decoder: Decoder::new(Limits::DEFAULT),
    };
    let connect = Frame::new(Command::Connect)
        .with_header(header::ACCEPT_VERSION, "1.2")
        .with_header(header::HOST, &creds.host)
        .with_header(header::LOGIN, &creds.login)
        .with_header(header::PASSCODE, &creds.passcode)
        .with_header(header::HEART_BEAT, &format!("{0},{0}", creds.heartbeat_ms));
    writer.send_frame(&connect).await?;
    match reader.next_frame().await? {
        Some(f) if f.command == Command::Connected => Ok(Conn { writer, reader }),
        Some(f) => bail!(
            "CONNECT answered {:?}: {}",
            f.command,
            f.header(header::MESSAGE).unwrap_or_default()
        ),
        None => bail!("connection closed during CONNECT"),
    }
}

impl Conn {
    /// SUBSCRIBE with `ack:auto` and a receipt, and waits for the RECEIPT so
    /// the caller knows the subscription is live before anything is published.
    pub async fn subscribe(&mut self, id: &str, destination: &str) -> Result<()> {
        let receipt = format!("sub-{id}");
        let frame = Frame::new(Command::Subscribe)
            .with_header(header::ID, id)
            .with_header(header::DESTINATION, destination)
            .with_header(header::ACK, "auto")
            .with_header(header::RECEIPT, &receipt);
        self.writer.send_frame(&frame).await?;
        loop {
            match self.reader.next_frame().await? {
                Some(f) if f.command == Command::Receipt => {
                    if f.header(header::RECEIPT_ID) == Some(receipt.as_str()) {
                        return Ok(());
                    }
                }
                Some(f) if f.command == Command::Error => bail!(
                    "SUBSCRIBE {destination} refused: {}",
                    f.header(header::MESSAGE).unwrap_or_default()
                ),
                Some(_) => {}
                None => bail!("connection closed before the SUBSCRIBE receipt"),
            }
        }
    }
}

/// A SEND frame for the publisher's hot path.
pub fn send_frame(destination: &str, body: Bytes, receipt: Option<&str>) -> Frame {
    let mut frame = Frame::new(Command::Send)
        .with_header(header::DESTINATION, destination)
        .with_header(header::CONTENT_TYPE, "text/plain");
    if let Some(r) = receipt {
        frame = frame.with_header(header::RECEIPT, r);
    }
    frame.with_body(body)
}
