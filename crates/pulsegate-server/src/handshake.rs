//! Reading the HTTP request head and answering the WebSocket handshake
//! (RFC 6455 §4.2) ourselves.
//!
//! Why not hyper's upgrade path: it keeps its read and write buffers for the
//! life of an upgraded connection, which multiplies idle memory per
//! connection (see docs/ARCHITECTURE.md). Here the head is read into a
//! small buffer that is freed before the connection goes live, and the
//! socket is handed to our own framing ([`crate::ws`]) directly.

use std::net::SocketAddr;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request head we accept (request line + headers).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The parts of a request head the gateway acts on.
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    /// `GET`, `POST`…
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// `Host`.
    pub host: Option<String>,
    /// `Origin`.
    pub origin: Option<String>,
    /// `User-Agent`.
    pub user_agent: Option<String>,
    /// True if `Upgrade: websocket` and `Connection: upgrade`.
    pub is_upgrade: bool,
    /// `Sec-WebSocket-Key`.
    pub ws_key: Option<String>,
    /// `Sec-WebSocket-Version`.
    pub ws_version: Option<String>,
    /// `Sec-WebSocket-Protocol` entries, in order.
    pub protocols: Vec<String>,
    /// `Sec-WebSocket-Extensions` header values, in order.
    pub extensions: Vec<String>,
    /// `Authorization` (a secret: never logged).
    pub authorization: Option<crate::config::Secret>,
    /// `Cookie` (may carry the dashboard's admin cookie; never logged).
    pub cookie: Option<crate::config::Secret>,
    /// The request came through a proxy (`Forwarded`, `X-Forwarded-For` or
    /// `X-Real-IP` present): a loopback peer is then not a local operator.
    pub forwarded: bool,
    /// Client addresses claimed by proxies, in order: the `for=` hops of
    /// `Forwarded`, else `X-Forwarded-For` (believed only from
    /// `server.trusted_proxies`, see [`crate::clientip`]).
    pub forwarded_chain: Vec<String>,
}

/// Why the head could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// Connection closed or failed before a full head arrived.
    #[error("connection closed before the request head was complete")]
    Eof,
    /// I/O error.
    #[error("i/o error reading the request head: {0}")]
    Io(#[from] std::io::Error),
    /// More than [`MAX_HEAD_BYTES`].
    #[error("request head larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    /// Not HTTP/1.x.
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
}

/// Reads until the end of the request head. Returns the parsed head, the
/// number of bytes it occupied, and the whole buffer read so far (which
/// may include a body or the first WebSocket frames).
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(RequestHead, usize, BytesMut), HeadError> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(1024);
        }
        let n = stream.read_buf(&mut buf).await?;
        if n == 0 {
            return Err(HeadError::Eof);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let head = head_from(&req);
                return Ok((head, len, buf));
            }
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(HeadError::Malformed(e.to_string())),
        }
    }
}

fn head_from(req: &httparse::Request<'_, '_>) -> RequestHead {
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let mut head = RequestHead {
        method: req.method.unwrap_or("").to_string(),
        path,
        query,
        ..RequestHead::default()
    };
    let mut upgrade_ws = false;
    let (mut forwarded, mut xff) = (Vec::new(), Vec::new());
    let mut connection_upgrade = false;
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value).trim().to_string();
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            head.host = Some(value);
        } else if name.eq_ignore_ascii_case("origin") {
            head.origin = Some(value);
        } else if name.eq_ignore_ascii_case("user-agent") {
            head.user_agent = Some(value.chars().take(256).collect());
        } else if name.eq_ignore_ascii_case("authorization") {
            head.authorization = Some(crate::config::Secret::new(value));
        } else if name.eq_ignore_ascii_case("forwarded") {
            head.forwarded = true;
            forwarded.extend(crate::clientip::forwarded_for(&value));
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            head.forwarded = true;
            xff.extend(crate::clientip::x_forwarded_for(&value));
        } else if name.eq_ignore_ascii_case("x-real-ip") {
            head.forwarded = true;
        } else if name.eq_ignore_ascii_case("cookie") {
            head.cookie = Some(crate::config::Secret::new(value));
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_ws |= value
                .split(',')
                .any(|v| v.trim().eq_ignore_ascii_case("websocket"));
        } else if name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= value
                .split(',')
                .any(|v| v.trim().eq_ignore_ascii_case("upgrade"));
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            head.ws_key = Some(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            head.ws_version = Some(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            head.extensions.push(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            head.protocols.extend(
                value
                    .split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty()),
            );
        }
    }
    head.forwarded_chain = if forwarded.is_empty() { xff } else { forwarded };
    head.is_upgrade = upgrade_ws && connection_upgrade;
    head
}

/// `Sec-WebSocket-Accept` for a client key.
pub fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// Checks the handshake fields RFC 6455 requires; the error is the 400 body.
pub fn validate_upgrade(head: &RequestHead) -> Result<&str, &'static str> {
    if head.method != "GET" {
        return Err("WebSocket handshake must use GET");
    }
    if head.ws_version.as_deref() != Some("13") {
        return Err("Sec-WebSocket-Version must be 13");
    }
    let key = head.ws_key.as_deref().ok_or("missing Sec-WebSocket-Key")?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(k) if k.len() == 16 => Ok(key),
        _ => Err("Sec-WebSocket-Key must be 16 base64-encoded bytes"),
    }
}

/// Whether a browser `Origin` may connect: absent (not a browser), listed in
/// `allowed` (or `*` there), or the same host as `Host`.
pub fn origin_allowed(head: &RequestHead, allowed: &[String]) -> bool {
    let Some(origin) = head.origin.as_deref() else {
        return true;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(origin)
        .trim_end_matches('/');
    head.host
        .as_deref()
        .is_some_and(|h| h.eq_ignore_ascii_case(origin_host))
}

/// Writes `101 Switching Protocols`.
pub async fn write_101<S: AsyncWrite + Unpin>(
    stream: &mut S,
    key: &str,
    protocol: Option<&str>,
    extensions: Option<&str>,
) -> std::io::Result<()> {
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        accept_key(key)
    );
    if let Some(p) = protocol {
        resp.push_str("Sec-WebSocket-Protocol: ");
        resp.push_str(p);
        resp.push_str("\r\n");
    }
    if let Some(e) = extensions {
        resp.push_str("Sec-WebSocket-Extensions: ");
        resp.push_str(e);
        resp.push_str("\r\n");
    }
    resp.push_str("\r\n");
    stream.write_all(resp.as_bytes()).await?;
    stream.flush().await
}

/// Writes a small error response and lets the caller close the connection.
pub async fn write_error<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    reason: &str,
    extra_headers: &[(&str, String)],
    body: &serde_json::Value,
) -> std::io::Result<()> {
    let body = body.to_string();
    let mut resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in extra_headers {
        resp.push_str(&format!("{k}: {v}\r\n"));
    }
    resp.push_str("\r\n");
    resp.push_str(&body);
    stream.write_all(resp.as_bytes()).await?;
    stream.flush().await
}

/// Where a request came from, for logs and limits.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// Remote socket address.
    pub addr: SocketAddr,
}

/// Splits what was read into (head, rest).
pub fn split_rest(mut buf: BytesMut, head_len: usize) -> Bytes {
    let rest = buf.split_off(head_len);
    if rest.is_empty() {
        Bytes::new()
    } else {
        rest.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_example_accept_key() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn head(origin: Option<&str>, host: &str) -> RequestHead {
        RequestHead {
            origin: origin.map(str::to_string),
            host: Some(host.to_string()),
            ..RequestHead::default()
        }
    }

    #[test]
    fn origin_rules() {
        assert!(origin_allowed(&head(None, "a:1"), &[]));
        assert!(origin_allowed(&head(Some("http://a:1"), "a:1"), &[]));
        assert!(!origin_allowed(
            &head(Some("http://evil.example"), "a:1"),
            &[]
        ));
        assert!(origin_allowed(
            &head(Some("https://dash.example"), "a:1"),
            &["https://dash.example".to_string()]
        ));
        assert!(origin_allowed(
            &head(Some("https://x"), "a:1"),
            &["*".to_string()]
        ));
    }
}
