#![allow(dead_code)]

//! A real SMTP server on loopback for tests: it speaks enough of RFC 5321
//! (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) for an ordinary client
//! such as lettre, accepts everything, and hands each message to the test.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex};

/// How long a test waits for a message.
const WAIT: Duration = Duration::from_secs(20);

/// One delivered message.
#[derive(Debug, Clone)]
pub struct Mail {
    /// Envelope sender.
    pub from: String,
    /// Envelope recipients.
    pub to: Vec<String>,
    /// The message as sent (headers and body), dot-unstuffed.
    pub data: String,
}

impl Mail {
    /// The six-digit code in the message's subject.
    pub fn code(&self) -> String {
        let subject = self
            .data
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .expect("a Subject header");
        let digits: String = subject
            .rsplit(": ")
            .next()
            .unwrap_or_default()
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        assert_eq!(digits.len(), 6, "a six-digit code in {subject:?}");
        digits
    }
}

/// The running sink.
pub struct SmtpSink {
    /// Where it listens.
    pub addr: SocketAddr,
    inbox: Mutex<mpsc::UnboundedReceiver<Mail>>,
}

impl SmtpSink {
    /// A sink on an ephemeral loopback port.
    pub async fn start() -> SmtpSink {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// A sink on `addr` (retrying the bind for a while, for a port that was
    /// just given up).
    pub async fn start_on(addr: SocketAddr) -> SmtpSink {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("binding the SMTP sink on {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, tx.clone()));
            }
        });
        SmtpSink {
            addr,
            inbox: Mutex::new(rx),
        }
    }

    /// `smtp://` URL of the sink (plain SMTP).
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// The next delivered message.
    pub async fn next_mail(&self) -> Mail {
        tokio::time::timeout(WAIT, self.inbox.lock().await.recv())
            .await
            .expect("timed out waiting for mail")
            .expect("sink stopped")
    }

    /// A message already delivered, if any (does not wait).
    pub async fn try_mail(&self) -> Option<Mail> {
        self.inbox.lock().await.try_recv().ok()
    }
}

fn angle(arg: &str) -> String {
    let arg = arg.trim();
    let start = arg.find('<').map_or(0, |i| i + 1);
    let end = arg.rfind('>').unwrap_or(arg.len());
    arg[start..end.max(start)].to_string()
}

async fn session(stream: TcpStream, tx: mpsc::UnboundedSender<Mail>) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    if w.write_all(b"220 sink ESMTP ready\r\n").await.is_err() {
        return;
    }
    let mut from = String::new();
    let mut to = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink greets you\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
        } else if upper.starts_with("HELO") {
            b"250 sink\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = angle(&line[10..]);
            to.clear();
            b"250 OK\r\n"
        } else if upper.starts_with("RCPT TO:") {
            to.push(angle(&line[8..]));
            b"250 OK\r\n"
        } else if upper == "DATA" {
            if w.write_all(b"354 end with <CRLF>.<CRLF>\r\n")
                .await
                .is_err()
            {
                return;
            }
            let mut data = String::new();
            loop {
                match lines.next_line().await {
                    Ok(Some(l)) if l == "." => break,
                    Ok(Some(l)) => {
                        data.push_str(l.strip_prefix('.').unwrap_or(&l));
                        data.push('\n');
                    }
                    _ => return,
                }
            }
            let _ = tx.send(Mail {
                from: from.clone(),
                to: std::mem::take(&mut to),
                data,
            });
            b"250 OK queued\r\n"
        } else if upper.starts_with("RSET") || upper.starts_with("NOOP") {
            b"250 OK\r\n"
        } else if upper.starts_with("QUIT") {
            let _ = w.write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"502 command not implemented\r\n"
        };
        if w.write_all(reply).await.is_err() {
            return;
        }
    }
}
