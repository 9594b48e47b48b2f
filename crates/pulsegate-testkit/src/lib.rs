//! Test harness: a real pulsegate server on `127.0.0.1:0` in the test's own
//! runtime, a small WebSocket client that speaks raw frames, and a minimal
//! HTTP/1.1 client. Used by the integration tests of every crate.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pulsegate_server::{Config, Running};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

/// How long test helpers wait for any single event before failing.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running server; drained and stopped when dropped.
pub struct TestServer {
    /// Bound address.
    pub addr: SocketAddr,
    running: Option<Running>,
}

impl TestServer {
    /// Starts a server with defaults (port 0).
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `tweak` adjusted the default config (listen is forced to port 0).
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse().expect("addr");
        config.server.node_name = Some("test".into());
        tweak(&mut config);
        config.validate().expect("test config is valid");
        let running = pulsegate_server::start(config).await.expect("server starts");
        TestServer {
            addr: running.local_addr(),
            running: Some(running),
        }
    }

    /// `ws://ADDR/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The running server.
    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    /// Takes the running server out (to drain it explicitly).
    pub fn take(&mut self) -> Running {
        self.running.take().expect("running")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.terminate();
        }
    }
}

/// A raw WebSocket client for tests.
pub struct WsClient {
    /// The stream, for raw access.
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Connects to `url` and returns the client with the welcome frame.
    pub async fn connect(url: &str) -> (WsClient, Value) {
        let mut c = Self::connect_with(url, &[]).await.expect("upgrade succeeds");
        let welcome = c.recv_json().await;
        assert_eq!(welcome["op"], "welcome", "first frame is welcome: {welcome}");
        (c, welcome)
    }

    /// Connects with extra headers; `Err(status)` if the upgrade was refused.
    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<WsClient, u16> {
        let uri: http::Uri = url.parse().expect("url");
        let mut b = ClientBuilder::from_uri(uri);
        for (k, v) in headers {
            b = b
                .add_header(
                    http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                    http::HeaderValue::from_str(v).expect("header value"),
                )
                .expect("header");
        }
        match tokio::time::timeout(STEP_TIMEOUT, b.connect()).await.expect("connect in time") {
            Ok((ws, _)) => Ok(WsClient { ws }),
            Err(tokio_websockets::Error::Upgrade(e)) => Err(status_of(&e.to_string())),
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    /// Sends a JSON frame.
    pub async fn send_json(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.expect("send");
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s.to_string())).await.expect("send");
    }

    /// Next text frame as JSON (pings are skipped; panics on close or timeout).
    pub async fn recv_json(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(STEP_TIMEOUT, self.ws.next())
                .await
                .expect("frame in time")
                .expect("stream open")
                .expect("valid frame");
            if let Some(t) = msg.as_text() {
                return serde_json::from_str(t).expect("server sends JSON");
            }
            if msg.is_close() {
                panic!("unexpected close: {:?}", msg.as_close());
            }
        }
    }

    /// Next frame within `wait`, or `None` if nothing arrived.
    pub async fn try_recv_json(&mut self, wait: Duration) -> Option<Value> {
        match tokio::time::timeout(wait, self.ws.next()).await {
            Ok(Some(Ok(m))) => m.as_text().map(|t| serde_json::from_str(t).expect("json")),
            _ => None,
        }
    }

    /// Reads until the server's close frame; returns (code, reason). `None` if
    /// the connection ended without one.
    pub async fn recv_close(&mut self, wait: Duration) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(m))) => {
                    if let Some((code, reason)) = m.as_close() {
                        return Some((u16::from(code), reason.to_string()));
                    }
                }
                _ => return None,
            }
        }
    }

    /// Sends a request and returns the reply (frames before it are returned too, in order).
    pub async fn request(&mut self, v: Value) -> Value {
        self.send_json(v).await;
        self.recv_json().await
    }
}

fn status_of(s: &str) -> u16 {
    s.split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse::<u16>().ok())
        .find(|n| (100..600).contains(n))
        .unwrap_or(0)
}

/// A minimal HTTP/1.1 exchange (Connection: close). Returns (status, headers, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(STEP_TIMEOUT, s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body_text) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut body = body_text.as_bytes().to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(body_text).into_bytes();
    }
    (status, head.to_string(), body)
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// GET returning (status, JSON body).
pub async fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, _, body) = http(addr, "GET", path, &[], b"").await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// POST a JSON body returning (status, JSON body).
pub async fn post_json(addr: SocketAddr, path: &str, body: &str) -> (u16, Value) {
    let (status, _, body) = http(addr, "POST", path, &[("Content-Type", "application/json")], body.as_bytes()).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}
