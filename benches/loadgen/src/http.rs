//! A minimal HTTP/1.1 JSON client for the chat scenario's set-up calls
//! (register users, create conversations): one connection per request,
//! `Connection: close`, bodies by `Content-Length` or chunked.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `http://IP:PORT` (a path, if any, is ignored).
pub fn parse_base(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url:?} must start with http://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    authority
        .parse()
        .with_context(|| format!("{authority:?} is not an IP:PORT address"))
}

/// POSTs `body` as JSON to `path`; returns the parsed JSON answer of a 2xx
/// response and fails on any other status.
pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
    body: &serde_json::Value,
) -> Result<serde_json::Value> {
    let payload = body.to_string();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        payload.len()
    );
    if let Some(t) = bearer {
        req += &format!("Authorization: Bearer {t}\r\n");
    }
    req += "\r\n";
    req += &payload;
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("HTTP answer without a header end")?;
    let head = std::str::from_utf8(&raw[..split]).context("HTTP head is not UTF-8")?;
    let mut content = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("HTTP status line")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        content = dechunk(&content)?;
    }
    if !(200..300).contains(&status) {
        bail!(
            "POST {path}: HTTP {status}: {}",
            String::from_utf8_lossy(&content)
        );
    }
    serde_json::from_slice(&content).with_context(|| format!("POST {path}: answer is not JSON"))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line")?;
        let size_text = std::str::from_utf8(&data[..eol])?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("chunk size")?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies() {
        let body = b"4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(dechunk(body).unwrap(), b"{\"a\":1}");
        assert!(parse_base("http://127.0.0.1:80/x").is_ok());
        assert!(parse_base("ws://127.0.0.1:80").is_err());
    }
}
