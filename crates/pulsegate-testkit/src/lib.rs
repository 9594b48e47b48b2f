//! Test harness: a real pulsegate server on `127.0.0.1:0` in the test's own
//! runtime, a small WebSocket client that speaks raw frames, and a minimal
//! HTTP/1.1 client. Used by the integration tests of every crate.

pub mod services;

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

/// Raises this process's soft `RLIMIT_NOFILE` to the hard limit (child
/// processes inherit it), once: tests that hold thousands of sockets
/// (both ends in this process) need more than the common soft limit of 1024.
pub fn raise_nofile_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let lim = getrlimit(Resource::Nofile);
        if lim.current != lim.maximum {
            let raised = Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            };
            if let Err(e) = setrlimit(Resource::Nofile, raised) {
                eprintln!("could not raise RLIMIT_NOFILE to {:?}: {e}", lim.maximum);
            }
        }
    });
}

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
        let running = pulsegate_server::start(config)
            .await
            .expect("server starts");
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
        let mut c = Self::connect_with(url, &[])
            .await
            .expect("upgrade succeeds");
        let welcome = c.recv_json().await;
        assert_eq!(
            welcome["op"], "welcome",
            "first frame is welcome: {welcome}"
        );
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
        match tokio::time::timeout(STEP_TIMEOUT, b.connect())
            .await
            .expect("connect in time")
        {
            Ok((ws, _)) => Ok(WsClient { ws }),
            Err(tokio_websockets::Error::Upgrade(
                tokio_websockets::upgrade::Error::DidNotSwitchProtocols(status),
            )) => Err(status),
            Err(tokio_websockets::Error::Upgrade(e)) => panic!("upgrade failed: {e}"),
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    /// Sends a JSON frame.
    pub async fn send_json(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, s: &str) {
        self.ws
            .send(Message::text(s.to_string()))
            .await
            .expect("send");
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

    /// Closes with 1000 and waits (up to the step timeout) for the server's close reply.
    pub async fn close(&mut self) {
        let close = Message::close(Some(tokio_websockets::CloseCode::NORMAL_CLOSURE), "bye");
        self.ws.send(close).await.expect("send close");
        let _ = self.recv_close(STEP_TIMEOUT).await;
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

/// A minimal HTTP/1.1 exchange (Connection: close). Returns (status, headers, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
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
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
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
        rest = tail[n..].trim_start_matches("\r\n");
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
    let (status, _, body) = http(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Polls `GET /api/stats` until `done` holds for the body, and returns that
/// body; panics with the last body after [`STEP_TIMEOUT`].
pub async fn wait_for_stats(addr: SocketAddr, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let (status, stats) = get_json(addr, "/api/stats").await;
        assert_eq!(status, 200, "GET /api/stats: {stats}");
        if done(&stats) {
            return stats;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("stats never showed {what}: {stats}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl WsClient {
    /// Connects with the client socket's receive buffer set to `recv_buffer`
    /// bytes, so a client that stops reading fills the TCP window after a few
    /// kilobytes instead of megabytes (slow-consumer tests). Returns the client
    /// with the welcome frame.
    pub async fn connect_with_recv_buffer(url: &str, recv_buffer: u32) -> (WsClient, Value) {
        let uri: http::Uri = url.parse().expect("url");
        let addr: SocketAddr = uri
            .authority()
            .expect("authority")
            .as_str()
            .parse()
            .expect("ip:port");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(recv_buffer).expect("SO_RCVBUF");
        let tcp = tokio::time::timeout(STEP_TIMEOUT, socket.connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let (ws, _) = tokio::time::timeout(
            STEP_TIMEOUT,
            ClientBuilder::from_uri(uri).connect_on(MaybeTlsStream::Plain(tcp)),
        )
        .await
        .expect("upgrade in time")
        .expect("upgrade succeeds");
        let mut c = WsClient { ws };
        let welcome = c.recv_json().await;
        assert_eq!(
            welcome["op"], "welcome",
            "first frame is welcome: {welcome}"
        );
        (c, welcome)
    }
}

/// WebSocket opcodes, for [`RawWs`].
pub mod opcode {
    /// Text frame.
    pub const TEXT: u8 = 0x1;
    /// Binary frame.
    pub const BINARY: u8 = 0x2;
    /// Close frame.
    pub const CLOSE: u8 = 0x8;
    /// Ping frame.
    pub const PING: u8 = 0x9;
    /// Pong frame.
    pub const PONG: u8 = 0xA;
}

/// A WebSocket connection driven by hand, byte by byte: the handshake is
/// written by the test, frames are built and parsed here, and nothing is
/// answered automatically (no pongs, no close echo). For what a well-behaved
/// client library refuses to do: invalid UTF-8, half-open peers.
pub struct RawWs {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read but not consumed yet.
    pub buf: Vec<u8>,
}

/// Sends an upgrade request to `path` with `headers` added, and reads the
/// response head. Returns (status, response head, connection); on a refusal
/// the rest of the response (the body) can be read with [`RawWs::read_to_end`].
pub async fn raw_upgrade(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, RawWs) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .expect("write upgrade request");
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(STEP_TIMEOUT, stream.read(&mut chunk))
            .await
            .expect("response head in time")
            .expect("read response head");
        assert!(
            n > 0,
            "connection closed before the response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let rest = buf.split_off(head_end);
    (status, head, RawWs { stream, buf: rest })
}

/// The value of header `name` (case-insensitive) in a response head.
pub fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

impl RawWs {
    /// Sends one masked frame with FIN set, as a client must.
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        self.send_frames(&[(opcode, payload)]).await;
    }

    /// Sends masked frames with one write, so that the server finds them
    /// in its read buffer together (a client pipelining requests).
    pub async fn send_frames(&mut self, frames: &[(u8, &[u8])]) {
        let mut bytes = Vec::new();
        for (opcode, payload) in frames {
            bytes.extend_from_slice(&masked_frame(*opcode, payload));
        }
        self.stream.write_all(&bytes).await.expect("write frames");
    }

    /// Reads the next frame, which must be a text frame, as JSON.
    pub async fn read_json(&mut self) -> Value {
        let (op, payload) = self.read_frame().await.expect("a frame");
        assert_eq!(op, opcode::TEXT, "text frame expected");
        serde_json::from_slice(&payload).expect("JSON frame")
    }

    /// Reads the next frame from the server as (opcode, payload); `None` when
    /// the connection ended first. Panics after [`STEP_TIMEOUT`].
    pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(STEP_TIMEOUT, self.stream.read(&mut chunk))
                .await
                .expect("frame in time");
            match n {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads frames until a close frame and returns its (code, reason),
    /// skipping pings and data; `None` if the connection ended without one.
    pub async fn read_close(&mut self) -> Option<(u16, String)> {
        while let Some((op, payload)) = self.read_frame().await {
            if op == opcode::CLOSE {
                let code = payload
                    .get(..2)
                    .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                let reason =
                    String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).to_string();
                return Some((code, reason));
            }
        }
        None
    }

    /// Everything until the server closes the connection (a refused
    /// upgrade's body), including bytes already buffered.
    pub async fn read_to_end(mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(STEP_TIMEOUT, self.stream.read_to_end(&mut rest))
            .await
            .expect("server closes in time");
        self.buf.extend_from_slice(&rest);
        self.buf
    }
}

/// One masked client frame with FIN set.
fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(true, false, opcode, [0x37, 0xfa, 0x21, 0x3d], payload)
}

/// One client frame: the FIN and RSV1 bits, the opcode, masked with `mask`.
pub fn client_frame(fin: bool, rsv1: bool, opcode: u8, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![(u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// One unmasked server frame at the start of `buf`: ((opcode, payload), bytes used).
fn parse_server_frame(buf: &[u8]) -> Option<((u8, Vec<u8>), usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (len, header) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    let end = header + len;
    (buf.len() >= end).then(|| ((opcode, buf[header..end].to_vec()), end))
}

/// The status a real WebSocket client gets for an upgrade to `url` with
/// `headers` added: 101 when upgraded (the connection is then dropped), else
/// the refusal's status. Unlike [`WsClient::connect_with`], whose error path
/// reads the first number of the error text (always the 101 of "expected
/// HTTP 101 Switching Protocols, got status code 403"), this matches the
/// error variant.
pub async fn upgrade_status(url: &str, headers: &[(&str, &str)]) -> u16 {
    let mut b = ClientBuilder::new().uri(url).expect("url");
    for (k, v) in headers {
        b = b
            .add_header(
                http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                http::HeaderValue::from_str(v).expect("header value"),
            )
            .expect("header");
    }
    match tokio::time::timeout(STEP_TIMEOUT, b.connect())
        .await
        .expect("connect in time")
    {
        Ok(_) => 101,
        Err(tokio_websockets::Error::Upgrade(
            tokio_websockets::upgrade::Error::DidNotSwitchProtocols(status),
        )) => status,
        Err(e) => panic!("connect failed: {e}"),
    }
}
