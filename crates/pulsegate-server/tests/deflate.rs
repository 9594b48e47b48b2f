//! permessage-deflate (RFC 7692) against a real server on `127.0.0.1:0`,
//! with a client driven by hand over a raw `TcpStream`: the upgrade is
//! written here, client frames are masked here, and every server frame's
//! header is inspected (RSV1, payload size on the wire) before
//! `pulsegate_ws::Decoder` inflates it. Covers negotiation, the
//! compression threshold, one compression shared by all subscribers (and
//! its metrics), compressed client frames (with and without context
//! takeover, fragmented), mixed subscribers and the close codes for bad
//! compressed input.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pulsegate_testkit::{http, TestServer, STEP_TIMEOUT};
use pulsegate_ws::deflate::{self, Inflater, Params};
use pulsegate_ws::{Decoder, Message};
use serde_json::{json, Value};
use support::publish;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// What browsers send (and what we offer unless a test says otherwise).
const OFFER: &str = "permessage-deflate; client_max_window_bits";
/// The server's answer to [`OFFER`].
const ACCEPTED: &str = "permessage-deflate; server_no_context_takeover; client_max_window_bits=10";

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_PING: u8 = 0x9;

/// Largest message the test client accepts (inflated).
const CLIENT_MAX_MESSAGE: usize = 64 << 20;

/// One server frame as received: its header bits and, decoded (inflated
/// when RSV1 was set), its message.
#[derive(Debug)]
struct Frame {
    rsv1: bool,
    opcode: u8,
    /// The payload as it was on the wire (compressed when `rsv1`).
    wire: Bytes,
    msg: Message,
}

/// A data message the server sent, as text.
#[derive(Debug)]
struct Received {
    rsv1: bool,
    /// Payload bytes on the wire (compressed when `rsv1`).
    wire: Bytes,
    text: String,
    json: Value,
}

/// A WebSocket client over a raw socket.
struct Client {
    stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
    /// What the server agreed on, when it accepted permessage-deflate.
    params: Option<Params>,
    mask_state: u32,
}

/// The result of an upgrade request: the status, the response head, the
/// `Sec-WebSocket-Extensions` value(s), and the client when upgraded.
struct Upgrade {
    status: u16,
    head: String,
    extensions: Option<String>,
    client: Option<Client>,
}

/// The value of every `name` header of a response head, joined with ", ".
fn header_values(head: &str, name: &str) -> Option<String> {
    let values: Vec<&str> = head
        .lines()
        .skip(1)
        .filter_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// Sends an upgrade request to `/ws` with `Sec-WebSocket-Extensions:
/// offer` (when given) and reads the response head.
async fn upgrade(addr: SocketAddr, offer: Option<&str>) -> Upgrade {
    let mut stream = timeout(STEP_TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut req = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(offer) = offer {
        req.push_str(&format!("Sec-WebSocket-Extensions: {offer}\r\n"));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .expect("write upgrade request");
    let mut buf = BytesMut::with_capacity(4096);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = timeout(STEP_TIMEOUT, stream.read_buf(&mut buf))
            .await
            .expect("response head in time")
            .expect("read response head");
        assert!(
            n > 0,
            "connection closed before the response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
    };
    let head = String::from_utf8_lossy(&buf.split_to(head_end)).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let extensions = header_values(&head, "Sec-WebSocket-Extensions");
    let client = (status == 101).then(|| {
        let params = extensions.as_deref().map(|e| {
            let (params, server_no_context_takeover) = deflate::accepted(e)
                .unwrap_or_else(|| panic!("server answered an extension we cannot parse: {e}"));
            assert!(
                server_no_context_takeover,
                "the server always answers server_no_context_takeover: {e}"
            );
            params
        });
        Client {
            stream,
            buf,
            decoder: Decoder::client(
                CLIENT_MAX_MESSAGE,
                params.map(|p| Inflater::new(p.server_window_bits, true)),
            ),
            params,
            mask_state: 0x9e37_79b9,
        }
    });
    Upgrade {
        status,
        head,
        extensions,
        client,
    }
}

/// The header of the unmasked frame at the start of `buf`: (fin, rsv1,
/// opcode, header length, payload length), or `None` until it is all there.
fn split_frame(buf: &[u8]) -> Option<(bool, bool, u8, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (b0, b1) = (buf[0], buf[1]);
    assert_eq!(
        b1 & 0x80,
        0,
        "server frames are not masked: {b0:#04x} {b1:#04x}"
    );
    let (len, head) = match b1 & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    (buf.len() >= head + len).then_some((b0 & 0x80 != 0, b0 & 0x40 != 0, b0 & 0x0f, head, len))
}

impl Client {
    /// Upgrades with `offer` and reads the welcome (which is small, so
    /// never compressed).
    async fn connect(addr: SocketAddr, offer: Option<&str>) -> Client {
        let up = upgrade(addr, offer).await;
        assert_eq!(up.status, 101, "upgrade refused: {}", up.head);
        let mut c = up.client.expect("upgraded");
        let welcome = c.recv().await;
        assert_eq!(welcome.json["op"], "welcome", "{}", welcome.text);
        assert!(!welcome.rsv1, "a welcome is below the threshold");
        c
    }

    /// Connects with [`OFFER`] and checks the server accepted it.
    async fn connect_deflate(addr: SocketAddr) -> Client {
        let c = Self::connect(addr, Some(OFFER)).await;
        assert!(c.params.is_some(), "the server accepted permessage-deflate");
        c
    }

    fn next_mask(&mut self) -> [u8; 4] {
        self.mask_state ^= self.mask_state << 13;
        self.mask_state ^= self.mask_state >> 17;
        self.mask_state ^= self.mask_state << 5;
        self.mask_state.to_be_bytes()
    }

    /// Sends one masked frame.
    async fn send_frame(&mut self, fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) {
        let mask = self.next_mask();
        let frame = pulsegate_testkit::client_frame(fin, rsv1, opcode, mask, payload);
        // A server that already closed may reset the connection: what it
        // sent before is still read by the caller.
        let _ = timeout(STEP_TIMEOUT, self.stream.write_all(&frame))
            .await
            .expect("write in time");
    }

    /// Sends a JSON request uncompressed.
    async fn send_json(&mut self, v: &Value) {
        self.send_frame(true, false, OP_TEXT, v.to_string().as_bytes())
            .await;
    }

    /// Sends a JSON request compressed on its own (no context takeover),
    /// with the client window the server answered.
    async fn send_json_compressed(&mut self, v: &Value) {
        let bits = self.params.expect("deflate negotiated").client_window_bits;
        let compressed = deflate::compress(v.to_string().as_bytes(), bits, 6);
        self.send_frame(true, true, OP_TEXT, &compressed).await;
    }

    /// The next frame; `None` when the connection ended first.
    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((fin, rsv1, opcode, head, len)) = split_frame(&self.buf) {
                assert!(fin, "the server does not fragment its messages");
                let mut raw = self.buf.split_to(head + len);
                let wire = Bytes::copy_from_slice(&raw[head..]);
                let msg = self
                    .decoder
                    .decode(&mut raw)
                    .unwrap_or_else(|e| {
                        panic!("invalid server frame (rsv1 {rsv1}, opcode {opcode}): {e}")
                    })
                    .expect("a whole frame is one message");
                assert!(raw.is_empty(), "the decoder used the whole frame");
                return Some(Frame {
                    rsv1,
                    opcode,
                    wire,
                    msg,
                });
            }
            match timeout(STEP_TIMEOUT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("server frame in time")
            {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next text message (pings and pongs skipped); panics on close.
    async fn recv(&mut self) -> Received {
        loop {
            let f = self.next_frame().await.expect("connection open");
            match f.msg {
                Message::Text(t) => {
                    assert_eq!(f.opcode, OP_TEXT);
                    let text = String::from_utf8(t.to_vec()).expect("decoder checked UTF-8");
                    let json = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("server sent invalid JSON ({e}): {text}"));
                    return Received {
                        rsv1: f.rsv1,
                        wire: f.wire,
                        text,
                        json,
                    };
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// The next data message, which must be a `msg`.
    async fn recv_msg(&mut self) -> Received {
        let r = self.recv().await;
        assert_eq!(r.json["op"], "msg", "expected a data message: {}", r.text);
        r
    }

    /// Reads until the server's close frame and returns its code; `None`
    /// if the connection ended without one.
    async fn recv_close(&mut self) -> Option<u16> {
        while let Some(f) = self.next_frame().await {
            if let Message::Close(c) = f.msg {
                return Some(c.map_or(1005, |(code, _)| code));
            }
        }
        None
    }

    /// Subscribes (uncompressed request) and checks the `ok`.
    async fn subscribe(&mut self, topic: &str) {
        self.send_json(&json!({"op": "sub", "id": "s", "topic": topic}))
            .await;
        let ok = self.recv().await;
        assert_eq!(ok.json, json!({"op": "ok", "id": "s"}), "sub {topic}");
    }

    /// Proves the connection is alive and has nothing else queued: a
    /// `ping` is answered by the very next frame.
    async fn assert_alive_and_idle(&mut self) {
        self.send_json(&json!({"op": "ping", "id": "probe"})).await;
        let r = self.recv().await;
        assert_eq!(r.json["op"], "pong", "expected only a pong: {}", r.text);
        assert_eq!(r.json["id"], "probe");
    }
}

/// About `target` bytes of repetitive telemetry JSON: compresses well.
fn telemetry(device: &str, target: usize) -> Value {
    let mut v = json!({"device": device, "unit": "W", "samples": []});
    let mut len = v.to_string().len();
    let mut samples = Vec::new();
    for i in 0u64.. {
        if len >= target {
            break;
        }
        let s =
            json!({"t": 1_700_000_000 + i, "w": 1500 + i % 7, "v": 230.1, "a": 6.52, "ok": true});
        // Each sample after the first adds a comma.
        len += s.to_string().len() + usize::from(i > 0);
        samples.push(s);
    }
    v["samples"] = Value::Array(samples);
    assert_eq!(v.to_string().len(), len);
    v
}

/// The exact text of the `msg` frame for a publish: field order `op,
/// topic, seq, epoch, ts, data`, `data` as published (compact JSON).
fn expected_msg(stamp: &Value, ts: u64, data: &Value) -> String {
    format!(
        r#"{{"op":"msg","topic":{},"seq":{},"epoch":{},"ts":{ts},"data":{data}}}"#,
        stamp["topic"], stamp["seq"], stamp["epoch"]
    )
}

/// Checks a received `msg` against the publish it came from, as parsed
/// JSON and as exact text.
fn check_msg(r: &Received, stamp: &Value, data: &Value) {
    assert_eq!(r.json["topic"], stamp["topic"], "{}", r.text);
    assert_eq!(r.json["seq"], stamp["seq"], "{}", r.text);
    assert_eq!(r.json["epoch"], stamp["epoch"], "{}", r.text);
    assert_eq!(&r.json["data"], data, "{}", r.text);
    let ts = r.json["ts"].as_u64().expect("ts is an integer");
    assert_eq!(r.text, expected_msg(stamp, ts, data), "exact frame text");
}

/// `GET /metrics`, parsed into `name{labels}` → value.
async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, head, body) = http(addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200, "{head}");
    String::from_utf8(body)
        .expect("metrics are text")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn sample(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in the scrape"))
}

// ---------------------------------------------------------------------------
// 1. Negotiation
// ---------------------------------------------------------------------------

#[tokio::test]
async fn negotiation_accepts_a_browser_offer_and_answers_exactly() {
    let server = TestServer::start().await;

    let up = upgrade(server.addr, Some(OFFER)).await;
    assert_eq!(up.status, 101, "{}", up.head);
    assert_eq!(
        up.extensions.as_deref(),
        Some(ACCEPTED),
        "response head:\n{}",
        up.head
    );
    let mut c = up.client.expect("upgraded");
    let params = c.params.expect("accepted");
    assert_eq!(params.client_window_bits, 10);
    assert_eq!(params.server_window_bits, 15);
    let welcome = c.recv().await;
    assert_eq!(welcome.json["op"], "welcome");
    assert!(!welcome.rsv1, "the welcome is below the threshold");
    c.assert_alive_and_idle().await;

    // A plain offer (no parameters): no client_max_window_bits in the answer.
    let up = upgrade(server.addr, Some("permessage-deflate")).await;
    assert_eq!(up.status, 101, "{}", up.head);
    assert_eq!(
        up.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover"),
        "{}",
        up.head
    );

    let m = scrape(server.addr).await;
    assert_eq!(sample(&m, "pulsegate_deflate_connections_total"), 2.0);
}

#[tokio::test]
async fn no_offer_means_no_extension_header() {
    let server = TestServer::start().await;
    let up = upgrade(server.addr, None).await;
    assert_eq!(up.status, 101, "{}", up.head);
    assert_eq!(up.extensions, None, "response head:\n{}", up.head);
    let mut c = up.client.expect("upgraded");
    assert!(c.params.is_none());
    assert_eq!(c.recv().await.json["op"], "welcome");
    c.assert_alive_and_idle().await;

    let m = scrape(server.addr).await;
    assert_eq!(sample(&m, "pulsegate_deflate_connections_total"), 0.0);
}

#[tokio::test]
async fn compression_disabled_in_config_declines_every_offer() {
    let server = TestServer::start_with(|c| c.compression.enabled = false).await;
    for offer in [
        OFFER,
        "permessage-deflate",
        "permessage-deflate; client_no_context_takeover; server_no_context_takeover",
    ] {
        let up = upgrade(server.addr, Some(offer)).await;
        assert_eq!(up.status, 101, "{offer}: {}", up.head);
        assert_eq!(up.extensions, None, "{offer}: response head:\n{}", up.head);
    }

    // Large messages then go out uncompressed to a client that offered.
    let mut c = Client::connect(server.addr, Some(OFFER)).await;
    c.subscribe("off/t").await;
    let data = telemetry("m-1", 8192);
    let stamp = publish(server.addr, "off/t", data.clone()).await;
    let r = c.recv_msg().await;
    assert!(!r.rsv1, "compression is disabled");
    check_msg(&r, &stamp, &data);

    let m = scrape(server.addr).await;
    assert_eq!(sample(&m, "pulsegate_deflate_connections_total"), 0.0);
    assert_eq!(sample(&m, "pulsegate_deflate_messages_total"), 0.0);
}

#[tokio::test]
async fn offers_with_unknown_or_unusable_parameters_are_declined() {
    let server = TestServer::start().await;
    for offer in [
        "permessage-deflate; foo=bar",
        "permessage-deflate; unknown_param",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=8",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "x-webkit-deflate-frame",
    ] {
        let up = upgrade(server.addr, Some(offer)).await;
        assert_eq!(
            up.status, 101,
            "a declined offer still upgrades: {}",
            up.head
        );
        assert_eq!(up.extensions, None, "{offer}: response head:\n{}", up.head);
        let mut c = up.client.expect("upgraded");
        assert_eq!(c.recv().await.json["op"], "welcome", "{offer}");
    }

    // The first acceptable offer of a list wins.
    let up = upgrade(
        server.addr,
        Some("permessage-deflate; foo, permessage-deflate; client_max_window_bits=12"),
    )
    .await;
    assert_eq!(up.status, 101, "{}", up.head);
    assert_eq!(
        up.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_max_window_bits=10"),
        "{}",
        up.head
    );

    let m = scrape(server.addr).await;
    assert_eq!(sample(&m, "pulsegate_deflate_connections_total"), 1.0);
}

/// Pseudo-random hex: does not compress on its own.
fn noise(seed: u32, len: usize) -> String {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            char::from_digit(x % 16, 16).expect("hex digit")
        })
        .collect()
}

#[tokio::test]
async fn server_max_window_bits_is_honoured_and_not_mixed_up_with_other_windows() {
    let server = TestServer::start().await;
    let topic = "window/t";
    let up = upgrade(
        server.addr,
        Some("permessage-deflate; server_max_window_bits=10"),
    )
    .await;
    assert_eq!(up.status, 101, "{}", up.head);
    assert_eq!(
        up.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=10"),
        "{}",
        up.head
    );
    // Our inflater has a 1 KiB window: data compressed with a larger one
    // that refers further back fails to inflate.
    let mut small = up.client.expect("upgraded");
    assert_eq!(small.params.expect("accepted").server_window_bits, 10);
    assert_eq!(small.recv().await.json["op"], "welcome");
    let mut large = Client::connect_deflate(server.addr).await;
    // `large` first, so that its 32 KiB-window compression is cached when
    // `small` needs the same message.
    large.subscribe(topic).await;
    small.subscribe(topic).await;

    // 3 KiB of noise, twice: the repeat is 3 KiB back.
    let n = noise(7, 3072);
    let data = json!([n, n]);
    let stamp = publish(server.addr, topic, data.clone()).await;
    let l = large.recv_msg().await;
    let s = small.recv_msg().await;
    assert!(l.rsv1 && s.rsv1);
    check_msg(&l, &stamp, &data);
    check_msg(&s, &stamp, &data);
    assert!(
        l.wire.len() < 5000,
        "a 32 KiB window finds the repeat: {} bytes",
        l.wire.len()
    );
    assert!(
        s.wire.len() > 5000,
        "a 1 KiB window cannot: {} bytes",
        s.wire.len()
    );
}

// ---------------------------------------------------------------------------
// 2. Threshold
// ---------------------------------------------------------------------------

#[tokio::test]
async fn only_frames_at_or_above_the_threshold_are_compressed() {
    let server = TestServer::start().await;
    let mut c = Client::connect_deflate(server.addr).await;
    c.subscribe("site/a/telemetry").await;

    let small = json!({"w": 1520, "unit": "W"});
    let stamp = publish(server.addr, "site/a/telemetry", small.clone()).await;
    let r = c.recv_msg().await;
    assert!(!r.rsv1, "a small msg is sent uncompressed: {}", r.text);
    assert_eq!(r.wire.len(), r.text.len());
    check_msg(&r, &stamp, &small);
    // Bytes of the frame around `data` (same for seq 2..9: one digit).
    let envelope = r.text.len() - small.to_string().len();

    let large = telemetry("meter-17", 8192);
    assert!(large.to_string().len() >= 8192);
    let stamp = publish(server.addr, "site/a/telemetry", large.clone()).await;
    let r = c.recv_msg().await;
    assert!(r.rsv1, "an 8 KB msg is compressed");
    check_msg(&r, &stamp, &large);
    assert!(
        r.wire.len() * 4 < r.text.len(),
        "repetitive JSON compresses well: {} bytes on the wire for {}",
        r.wire.len(),
        r.text.len()
    );

    // The boundary: a frame of 2047 bytes is sent as is, one of 2048
    // (compression.threshold) compressed.
    for (frame_len, compressed) in [(2047usize, false), (2048, true)] {
        // A JSON string: two quotes around the filler.
        let data = Value::String("x".repeat(frame_len - envelope - 2));
        let stamp = publish(server.addr, "site/a/telemetry", data.clone()).await;
        let r = c.recv_msg().await;
        assert_eq!(r.text.len(), frame_len, "{}", r.text);
        assert_eq!(
            r.rsv1, compressed,
            "a frame of {frame_len} bytes with threshold 2048"
        );
        check_msg(&r, &stamp, &data);
    }
    c.assert_alive_and_idle().await;
}

// ---------------------------------------------------------------------------
// 3. One compression shared by every subscriber
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_compressed_once_per_worker_and_shared_by_all_subscribers() {
    const SUBSCRIBERS: usize = 20;
    const MESSAGES: usize = 10;
    let server = TestServer::start().await;
    let topic = "fleet/telemetry";
    let mut clients = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut c = Client::connect_deflate(server.addr).await;
        c.subscribe(topic).await;
        clients.push(c);
    }

    let mut sent = Vec::new();
    for i in 0..MESSAGES {
        let data = telemetry(&format!("meter-{i}"), 8192);
        let stamp = publish(server.addr, topic, data.clone()).await;
        assert_eq!(stamp["seq"], i as u64 + 1, "{stamp}");
        sent.push((stamp, data));
    }

    let (mut raw_total, mut wire_total) = (0u64, 0u64);
    // The compressed bytes of each message, as the first subscriber got them.
    let mut first: Vec<Bytes> = Vec::new();
    for (k, c) in clients.iter_mut().enumerate() {
        for (i, (stamp, data)) in sent.iter().enumerate() {
            let r = c.recv_msg().await;
            assert!(r.rsv1, "subscriber {k}: seq {} compressed", stamp["seq"]);
            check_msg(&r, stamp, data);
            raw_total += r.text.len() as u64;
            wire_total += r.wire.len() as u64;
            if k == 0 {
                first.push(r.wire);
            } else {
                assert_eq!(
                    r.wire, first[i],
                    "subscriber {k} got the same compressed bytes for seq {}",
                    stamp["seq"]
                );
            }
        }
    }

    // The counters are added after each write; wait for all of them.
    let expected = (SUBSCRIBERS * MESSAGES) as f64;
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    let m = loop {
        let m = scrape(server.addr).await;
        if sample(&m, "pulsegate_deflate_messages_total") >= expected
            || tokio::time::Instant::now() >= deadline
        {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let workers = sample(&m, "pulsegate_tokio_workers");
    let messages = sample(&m, "pulsegate_deflate_messages_total");
    let compressions = sample(&m, "pulsegate_deflate_compressions_total");
    let raw = sample(&m, "pulsegate_deflate_raw_bytes_total");
    let wire = sample(&m, "pulsegate_deflate_wire_bytes_total");
    assert_eq!(workers, 2.0, "the test runtime's workers");
    assert_eq!(
        sample(&m, "pulsegate_deflate_connections_total"),
        SUBSCRIBERS as f64
    );
    assert_eq!(messages, expected, "every compressed send is counted");
    assert!(
        compressions >= MESSAGES as f64,
        "each message is compressed at least once: {compressions}"
    );
    assert!(
        compressions <= MESSAGES as f64 * workers,
        "at most once per message and worker thread: {compressions} compressions \
         for {MESSAGES} messages on {workers} workers"
    );
    assert_eq!(
        raw, raw_total as f64,
        "raw bytes = what the clients inflated"
    );
    assert_eq!(
        wire, wire_total as f64,
        "wire bytes = compressed payloads read"
    );
    assert!(raw > wire * 4.0, "raw {raw} vs wire {wire}");
}

// ---------------------------------------------------------------------------
// 4. The client compresses
// ---------------------------------------------------------------------------

#[tokio::test]
async fn compressed_client_requests_are_inflated_and_acted_on() {
    let server = TestServer::start().await;
    let mut c = Client::connect_deflate(server.addr).await;
    let topic = "client/compressed";

    c.send_json_compressed(&json!({"op": "sub", "id": 1, "topic": topic}))
        .await;
    let ok = c.recv().await;
    assert_eq!(ok.json, json!({"op": "ok", "id": 1}), "{}", ok.text);

    // A large compressed `pub`: the publisher, subscribed itself, gets the
    // `msg` (compressed) before the `ok`.
    let data = telemetry("meter-c", 16 * 1024);
    c.send_json_compressed(&json!({"op": "pub", "id": 2, "topic": topic, "data": data}))
        .await;
    let msg = c.recv_msg().await;
    let ok = c.recv().await;
    assert_eq!(ok.json["op"], "ok", "{}", ok.text);
    assert_eq!(ok.json["id"], 2);
    assert_eq!(ok.json["seq"], 1);
    assert!(msg.rsv1);
    check_msg(&msg, &ok.json, &data);

    // A compressed message in two fragments: RSV1 on the first only.
    let body = json!({"op": "pub", "id": 3, "topic": topic, "data": {"frag": true}}).to_string();
    let bits = c.params.expect("negotiated").client_window_bits;
    let compressed = deflate::compress(body.as_bytes(), bits, 6);
    let (a, b) = compressed.split_at(compressed.len() / 2);
    c.send_frame(false, true, OP_TEXT, a).await;
    c.send_frame(true, false, OP_CONTINUATION, b).await;
    let msg = c.recv_msg().await;
    let ok = c.recv().await;
    assert_eq!(ok.json["id"], 3, "{}", ok.text);
    check_msg(&msg, &ok.json, &json!({"frag": true}));

    // Compressed and uncompressed requests mix on one connection.
    c.assert_alive_and_idle().await;
    c.send_json_compressed(&json!({"op": "ping", "id": "z"}))
        .await;
    assert_eq!(c.recv().await.json["op"], "pong");
}

#[tokio::test]
async fn client_context_takeover_is_inflated_across_messages() {
    let server = TestServer::start().await;
    // With `client_max_window_bits` the server picks a 1 KiB window; with
    // a bare offer the client may use 32 KiB and refer that far back.
    for (offer, bits, noise_len) in [(OFFER, 10u8, 300usize), ("permessage-deflate", 15, 6000)] {
        context_takeover_round(server.addr, offer, bits, noise_len).await;
    }
}

/// Publishes the same incompressible data three times over one
/// connection whose compressor keeps its context: the second and third
/// messages are mostly back-references into the first.
async fn context_takeover_round(addr: SocketAddr, offer: &str, bits: u8, noise_len: usize) {
    use flate2::{Compress, Compression, FlushCompress};

    let topic = format!("client/takeover/{bits}");
    let mut sub = Client::connect(addr, None).await;
    sub.subscribe(&topic).await;

    let mut c = Client::connect(addr, Some(offer)).await;
    let params = c.params.expect("negotiated");
    assert!(
        !params.client_no_context_takeover,
        "the client keeps its context"
    );
    assert_eq!(params.client_window_bits, bits, "{offer}");
    // One compressor for the whole connection, with the window the server
    // allowed (RFC 7692 §7.2.1: sync flush, the trailing 00 00 ff ff removed).
    let mut z = Compress::new_with_window_bits(Compression::new(6), false, bits);
    let mut compress = |payload: &[u8]| -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + 64);
        let start = z.total_in();
        loop {
            let done = (z.total_in() - start) as usize;
            z.compress_vec(&payload[done..], &mut out, FlushCompress::Sync)
                .expect("deflate");
            if (z.total_in() - start) as usize == payload.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(256);
        }
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]), "sync flush");
        out.truncate(out.len() - 4);
        out
    };

    let noise = noise(bits.into(), noise_len);
    let mut sizes = Vec::new();
    for id in 1..=3u64 {
        let req = json!({"op": "pub", "id": id, "topic": topic, "data": noise});
        let compressed = compress(req.to_string().as_bytes());
        sizes.push(compressed.len());
        c.send_frame(true, true, OP_TEXT, &compressed).await;
        let ok = c.recv().await;
        assert_eq!(ok.json["op"], "ok", "{offer}: pub {id}: {}", ok.text);
        assert_eq!(ok.json["id"], id);
        let msg = sub.recv_msg().await;
        check_msg(&msg, &ok.json, &json!(noise));
    }
    assert!(
        sizes[1] * 4 < sizes[0] && sizes[2] * 4 < sizes[0],
        "{offer}: later messages refer back to the first (context takeover): {sizes:?}"
    );
    c.assert_alive_and_idle().await;
}

// ---------------------------------------------------------------------------
// 5. Mixed subscribers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn deflate_and_plain_subscribers_decode_identical_messages() {
    let server = TestServer::start().await;
    let topic = "mixed/t";
    let mut zipped = Client::connect_deflate(server.addr).await;
    let mut plain = Client::connect(server.addr, None).await;
    assert!(plain.params.is_none());
    zipped.subscribe(topic).await;
    plain.subscribe(topic).await;

    let payloads = [
        json!({"w": 1}),
        telemetry("meter-m1", 4096),
        json!("short"),
        telemetry("meter-m2", 64 * 1024),
        json!(null),
    ];
    for data in &payloads {
        let stamp = publish(server.addr, topic, data.clone()).await;
        let z = zipped.recv_msg().await;
        let p = plain.recv_msg().await;
        assert_eq!(z.text, p.text, "same decoded frame for both");
        check_msg(&z, &stamp, data);
        assert!(!p.rsv1, "never compressed without negotiation");
        assert_eq!(p.wire.len(), p.text.len());
        assert_eq!(
            z.rsv1,
            z.text.len() >= 2048,
            "compressed iff at the threshold ({} bytes)",
            z.text.len()
        );
    }
    zipped.assert_alive_and_idle().await;
    plain.assert_alive_and_idle().await;
}

/// A pipelined burst reaches subscribers as one queued run: the plain
/// subscriber gets it framed once for all, the deflate subscriber message
/// by message, each compressed iff at the threshold.
#[tokio::test]
async fn a_pipelined_burst_reaches_deflate_and_plain_subscribers_alike() {
    let server = TestServer::start().await;
    let topic = "mixed/burst";
    let mut zipped = Client::connect_deflate(server.addr).await;
    let mut plain = Client::connect(server.addr, None).await;
    zipped.subscribe(topic).await;
    plain.subscribe(topic).await;
    let payloads = [
        json!({"w": 1}),
        telemetry("meter-b1", 4096),
        json!("short"),
        telemetry("meter-b2", 64 * 1024),
        json!(null),
    ];
    let oks = support::publish_pipelined(server.addr, topic, &payloads).await;
    for (data, ok) in payloads.iter().zip(&oks) {
        let z = zipped.recv_msg().await;
        let p = plain.recv_msg().await;
        assert_eq!(z.text, p.text, "same decoded frame for both");
        assert_eq!(z.json["seq"], ok["seq"]);
        assert_eq!(&z.json["data"], data);
        assert!(!p.rsv1, "never compressed without negotiation");
        assert_eq!(
            z.rsv1,
            z.text.len() >= 2048,
            "compressed iff at the threshold"
        );
    }
    zipped.assert_alive_and_idle().await;
    plain.assert_alive_and_idle().await;
}

// ---------------------------------------------------------------------------
// 6. Bad compressed input
// ---------------------------------------------------------------------------

/// A deflate and a plain client can still subscribe and receive a large
/// message (compressed for the first).
async fn assert_server_healthy(addr: SocketAddr, topic: &str) {
    let mut z = Client::connect_deflate(addr).await;
    let mut p = Client::connect(addr, None).await;
    z.subscribe(topic).await;
    p.subscribe(topic).await;
    let data = telemetry("after", 8192);
    let stamp = publish(addr, topic, data.clone()).await;
    let r = z.recv_msg().await;
    assert!(r.rsv1);
    check_msg(&r, &stamp, &data);
    let r = p.recv_msg().await;
    assert!(!r.rsv1);
    check_msg(&r, &stamp, &data);
}

/// Expects the server to close with `code` and then end the connection.
async fn expect_close(c: &mut Client, code: u16, what: &str) {
    assert_eq!(c.recv_close().await, Some(code), "{what}");
    // Reply with our close and end our side: the server ends the connection.
    c.send_frame(true, false, 0x8, &code.to_be_bytes()).await;
    let _ = c.stream.shutdown().await;
    let end = timeout(STEP_TIMEOUT, async {
        while c.next_frame().await.is_some() {}
    })
    .await;
    assert!(end.is_ok(), "{what}: the server ends the connection");
}

#[tokio::test]
async fn garbage_compressed_data_closes_with_1007() {
    let server = TestServer::start().await;
    let mut c = Client::connect_deflate(server.addr).await;
    // BFINAL=1, BTYPE=11: a reserved block type.
    c.send_frame(true, true, OP_TEXT, &[0xff; 32]).await;
    expect_close(&mut c, 1007, "invalid deflate data").await;

    // Valid deflate that inflates to invalid UTF-8 in a text message: 1007 too.
    let mut c = Client::connect_deflate(server.addr).await;
    let bad = deflate::compress(&[0xc3, 0x28, b'a', b'b'], 10, 6);
    c.send_frame(true, true, OP_TEXT, &bad).await;
    expect_close(&mut c, 1007, "inflated text is not UTF-8").await;

    assert_server_healthy(server.addr, "healthy/1007").await;
}

#[tokio::test]
async fn rsv1_without_negotiation_or_on_control_frames_closes_with_1002() {
    let server = TestServer::start().await;
    let mut c = Client::connect(server.addr, None).await;
    assert!(c.params.is_none());
    let req = deflate::compress(json!({"op": "ping", "id": 1}).to_string().as_bytes(), 15, 6);
    c.send_frame(true, true, OP_TEXT, &req).await;
    expect_close(&mut c, 1002, "RSV1 without permessage-deflate").await;

    // Declined offer: same thing.
    let mut c = Client::connect(server.addr, Some("permessage-deflate; foo")).await;
    assert!(c.params.is_none());
    c.send_frame(true, true, OP_TEXT, &req).await;
    expect_close(&mut c, 1002, "RSV1 after a declined offer").await;

    // Negotiated, but RSV1 on a ping (control frames are never compressed).
    let mut c = Client::connect_deflate(server.addr).await;
    c.send_frame(true, true, OP_PING, b"hi").await;
    expect_close(&mut c, 1002, "RSV1 on a ping").await;

    // Negotiated, but RSV1 on a continuation frame (RFC 7692 §6.1).
    let mut c = Client::connect_deflate(server.addr).await;
    let (a, b) = req.split_at(req.len() / 2);
    c.send_frame(false, true, OP_TEXT, a).await;
    c.send_frame(true, true, OP_CONTINUATION, b).await;
    expect_close(&mut c, 1002, "RSV1 on a continuation").await;

    assert_server_healthy(server.addr, "healthy/1002").await;
}

#[tokio::test]
async fn a_compressed_bomb_closes_with_1009() {
    let server = TestServer::start_with(|c| c.limits.max_message_bytes = 65_536).await;
    let mut c = Client::connect_deflate(server.addr).await;
    let bomb = deflate::compress(&vec![0u8; 1 << 20], 10, 9);
    assert!(bomb.len() < 65_536, "the compressed frame itself is small");
    c.send_frame(true, true, OP_TEXT, &bomb).await;
    expect_close(&mut c, 1009, "1 MB inflated with a 64 KiB limit").await;

    // Just over the limit, with context takeover after a valid message.
    let mut c = Client::connect_deflate(server.addr).await;
    c.send_json_compressed(&json!({"op": "ping", "id": 1}))
        .await;
    assert_eq!(c.recv().await.json["op"], "pong");
    let over = deflate::compress(&vec![b' '; 65_537], 10, 6);
    c.send_frame(true, true, OP_TEXT, &over).await;
    expect_close(&mut c, 1009, "65537 bytes inflated with a 65536 limit").await;

    // At the limit exactly: accepted (whitespace then a request).
    let mut c = Client::connect_deflate(server.addr).await;
    let req = json!({"op": "ping", "id": "edge"}).to_string();
    let mut body = vec![b' '; 65_536 - req.len()];
    body.extend_from_slice(req.as_bytes());
    c.send_frame(true, true, OP_TEXT, &deflate::compress(&body, 10, 6))
        .await;
    let r = c.recv().await;
    assert_eq!(
        r.json["op"], "pong",
        "a message of exactly the limit: {}",
        r.text
    );

    assert_server_healthy(server.addr, "healthy/1009").await;
}
