//! Where a connection lives and dies, against a real server: heartbeats and
//! half-open peers, draining, the origin check, and the connection limits
//! that refuse an upgrade before it happens.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pulsegate_testkit::{
    get_json, header_value, opcode, raw_upgrade, upgrade_status, wait_for_stats, TestServer,
    WsClient, STEP_TIMEOUT,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_websockets::{CloseCode, Message};

// ---------------------------------------------------------------------------
// Heartbeat
// ---------------------------------------------------------------------------

const PING_INTERVAL: Duration = Duration::from_millis(200);
const PONG_TIMEOUT: Duration = Duration::from_millis(300);

async fn heartbeat_server() -> TestServer {
    TestServer::start_with(|c| {
        c.heartbeat.ping_interval = PING_INTERVAL;
        c.heartbeat.pong_timeout = PONG_TIMEOUT;
    })
    .await
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_connected() {
    let server = heartbeat_server().await;
    let (mut c, welcome) = WsClient::connect(&server.ws_url()).await;
    assert_eq!(welcome["ping_interval_ms"], 200);

    // Polling the stream is what answers pings: tokio-websockets queues the
    // pong for each ping it yields.
    let started = Instant::now();
    let mut pings = Vec::new();
    while pings.len() < 4 {
        let m = tokio::time::timeout(STEP_TIMEOUT, c.ws.next())
            .await
            .expect("a ping in time")
            .expect("stream open")
            .expect("valid frame");
        assert!(m.is_ping(), "only pings on an idle connection, got {m:?}");
        pings.push(m.as_payload().to_vec());
    }
    assert!(
        started.elapsed() >= PING_INTERVAL * 3,
        "pings are spaced by the interval"
    );
    pings.dedup();
    assert_eq!(pings.len(), 4, "each ping carries a new payload: {pings:?}");

    // Four pings took longer than ping_interval + pong_timeout: still open.
    assert_eq!(c.request(json!({"op": "ping"})).await["op"], "pong");
    let (_, stats) = get_json(server.addr, "/api/stats").await;
    assert_eq!(
        (&stats["connections"], &stats["pong_timeouts"]),
        (&json!(1), &json!(0)),
        "{stats}"
    );
}

#[tokio::test]
async fn a_half_open_peer_is_closed_after_ping_interval_plus_pong_timeout() {
    let server = heartbeat_server().await;
    let started = Instant::now();
    let (status, head, mut peer) = raw_upgrade(server.addr, "/ws", &[]).await;
    assert_eq!(status, 101, "{head}");

    // The peer never reads and never answers.
    let stats = wait_for_stats(server.addr, "the half-open connection gone", |s| {
        s["connections"] == 0
    })
    .await;
    assert!(
        started.elapsed() >= PING_INTERVAL + PONG_TIMEOUT,
        "not before the pong was due ({:?})",
        started.elapsed()
    );
    assert_eq!(stats["pong_timeouts"], 1, "{stats}");

    // What the server sent meanwhile: the welcome, one ping (no second
    // ping while one is unanswered), the close, then the end of the stream.
    let (op, welcome) = peer.read_frame().await.expect("welcome");
    assert_eq!(op, opcode::TEXT);
    assert_eq!(
        serde_json::from_slice::<Value>(&welcome).unwrap()["op"],
        "welcome"
    );
    let (op, _) = peer.read_frame().await.expect("a ping");
    assert_eq!(op, opcode::PING);
    let (op, close) = peer.read_frame().await.expect("a close frame");
    assert_eq!(op, opcode::CLOSE);
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 4001);
    assert_eq!(&close[2..], b"pong timeout");
    assert_eq!(peer.read_frame().await, None);
}

// ---------------------------------------------------------------------------
// Handshake and close
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_client_close_is_echoed_and_its_slot_released() {
    let server = TestServer::start_with(|c| c.limits.max_connections = 1).await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;

    c.ws.send(Message::close(Some(CloseCode::NORMAL_CLOSURE), "bye"))
        .await
        .expect("send close");
    let (code, _) = c.recv_close(STEP_TIMEOUT).await.expect("the close echo");
    assert_eq!(code, 1000);
    wait_for_stats(server.addr, "the connection gone", |s| {
        s["connections"] == 0
    })
    .await;
    let (_again, _) = WsClient::connect(&server.ws_url()).await;
}

#[tokio::test]
async fn a_peer_that_sends_no_request_is_dropped_after_handshake_timeout() {
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(300);
    let server = TestServer::start_with(|c| c.server.handshake_timeout = HANDSHAKE_TIMEOUT).await;
    let started = Instant::now();
    let mut idle = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    idle.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write part of a head");

    let mut buf = Vec::new();
    let read = tokio::time::timeout(STEP_TIMEOUT, idle.read_to_end(&mut buf))
        .await
        .expect("the server closes in time");
    assert!(
        read.is_ok() && buf.is_empty(),
        "closed without a response: {buf:?}"
    );
    assert!(
        started.elapsed() >= HANDSHAKE_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_oversized_request_head_is_431() {
    let server = TestServer::start().await;
    let big = "x".repeat(20 * 1024);
    let (status, head, _) = raw_upgrade(server.addr, "/ws", &[("X-Big", &big)]).await;
    assert_eq!(status, 431, "{head}");
}

#[tokio::test]
async fn an_upgrade_without_a_valid_key_is_400() {
    let server = TestServer::start().await;
    let (status, head, _) =
        raw_upgrade(server.addr, "/ws", &[("Sec-WebSocket-Key", "short")]).await;
    assert_eq!(status, 400, "{head}");
}

#[tokio::test]
async fn an_unsupported_websocket_version_is_answered_with_the_supported_one() {
    let server = TestServer::start().await;
    // The later header wins in the server's parser.
    let (status, head, _) =
        raw_upgrade(server.addr, "/ws", &[("Sec-WebSocket-Version", "8")]).await;
    assert_eq!(status, 426, "{head}");
    assert_eq!(
        header_value(&head, "sec-websocket-version"),
        Some("13"),
        "{head}"
    );
}

// ---------------------------------------------------------------------------
// Drain
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_refuses_newcomers_and_spreads_1001_closes_over_the_drain_period() {
    const DRAIN_PERIOD: Duration = Duration::from_secs(1);
    let mut server = TestServer::start_with(|c| c.server.drain_period = DRAIN_PERIOD).await;
    let addr = server.addr;
    let mut readers = Vec::new();
    for _ in 0..10 {
        let (mut c, _) = WsClient::connect(&server.ws_url()).await;
        readers.push(tokio::spawn(async move {
            let close = c.recv_close(STEP_TIMEOUT).await;
            (Instant::now(), close)
        }));
    }
    let (_, stats) = get_json(addr, "/api/stats").await;
    assert_eq!(stats["connections"], 10, "{stats}");

    let running = server.take();
    let started = Instant::now();
    running.drain();

    let (status, body) = get_json(addr, "/readyz").await;
    assert_eq!(
        (status, body),
        (503, json!({"status": "not_ready", "reason": "draining"}))
    );
    let (status, head, refused) = raw_upgrade(addr, "/ws", &[]).await;
    assert_eq!(status, 503, "{head}");
    assert_eq!(header_value(&head, "retry-after"), Some("5"), "{head}");
    let body: Value = serde_json::from_slice(&refused.read_to_end().await).expect("JSON body");
    assert_eq!(body["error"], "draining", "{body}");

    tokio::time::timeout(STEP_TIMEOUT, running.wait_drained())
        .await
        .expect("wait_drained returns once every connection closed");

    let mut times = Vec::new();
    for reader in readers {
        let (at, close) = reader.await.expect("reader task");
        let (code, reason) = close.expect("a close frame");
        assert_eq!(code, 1001, "{reason}");
        let hint: u64 = reason
            .strip_prefix("draining; reconnect_after_ms=")
            .unwrap_or_else(|| panic!("reason carries a reconnect hint: {reason}"))
            .parse()
            .expect("the hint is a number of milliseconds");
        assert!((500..5500).contains(&hint), "hint {hint}");
        times.push(at - started);
    }
    times.sort();
    let spread = times[9] - times[0];
    assert!(
        spread > DRAIN_PERIOD / 5,
        "closes are spread over the drain period, not all at once: {times:?}"
    );
    assert!(
        times[9] < DRAIN_PERIOD + Duration::from_secs(5),
        "all closed within the drain period (and slack): {times:?}"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "after wait_drained the listener is closed"
    );
}

// ---------------------------------------------------------------------------
// Origin
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_foreign_origin_is_refused_with_403_before_the_upgrade() {
    let server = TestServer::start_with(|c| {
        c.server.allowed_origins = vec!["https://dash.example".to_string()];
    })
    .await;

    let (status, head, refused) =
        raw_upgrade(server.addr, "/ws", &[("Origin", "http://evil.example")]).await;
    assert_eq!(status, 403, "{head}");
    let body: Value = serde_json::from_slice(&refused.read_to_end().await).expect("JSON body");
    assert_eq!(body["error"], "origin", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("server.allowed_origins"),
        "{body}"
    );

    let other_port = format!("http://127.0.0.1:{}", server.addr.port().wrapping_add(1));
    assert_eq!(
        upgrade_status(&server.ws_url(), &[("Origin", &other_port)]).await,
        403,
        "same host, another port is another origin"
    );
    let (_, stats) = get_json(server.addr, "/api/stats").await;
    assert_eq!(stats["connections"], 0, "{stats}");
}

#[tokio::test]
async fn listed_same_and_absent_origins_are_upgraded() {
    let server = TestServer::start_with(|c| {
        c.server.allowed_origins = vec!["https://dash.example".to_string()];
    })
    .await;
    let same_origin = format!("http://{}", server.addr);

    for headers in [
        vec![("Origin", "https://dash.example")],
        vec![("Origin", same_origin.as_str())],
        vec![],
    ] {
        assert_eq!(
            upgrade_status(&server.ws_url(), &headers).await,
            101,
            "{headers:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Connection limits
// ---------------------------------------------------------------------------

#[tokio::test]
async fn beyond_max_connections_upgrades_get_503_and_readyz_says_at_capacity() {
    let server = TestServer::start_with(|c| c.limits.max_connections = 2).await;
    let (first, _) = WsClient::connect(&server.ws_url()).await;
    let (_second, _) = WsClient::connect(&server.ws_url()).await;

    assert_eq!(upgrade_status(&server.ws_url(), &[]).await, 503);
    let (status, head, refused) = raw_upgrade(server.addr, "/ws", &[]).await;
    assert_eq!(status, 503, "{head}");
    assert_eq!(header_value(&head, "retry-after"), Some("5"), "{head}");
    let body: Value = serde_json::from_slice(&refused.read_to_end().await).expect("JSON body");
    assert_eq!(body["error"], "limit_total", "{body}");
    assert_eq!(
        get_json(server.addr, "/readyz").await,
        (503, json!({"status": "not_ready", "reason": "at_capacity"}))
    );

    // A slot frees when a connection closes.
    drop(first);
    wait_for_stats(server.addr, "one connection left", |s| {
        s["connections"] == 1
    })
    .await;
    assert_eq!(
        get_json(server.addr, "/readyz").await,
        (200, json!({"status": "ready"}))
    );
    let (_third, _) = WsClient::connect(&server.ws_url()).await;
}

#[tokio::test]
async fn beyond_max_connections_per_ip_upgrades_get_429() {
    let server = TestServer::start_with(|c| c.limits.max_connections_per_ip = 1).await;
    let (_first, _) = WsClient::connect(&server.ws_url()).await;

    assert_eq!(upgrade_status(&server.ws_url(), &[]).await, 429);
    let (status, head, refused) = raw_upgrade(server.addr, "/ws", &[]).await;
    assert_eq!(status, 429, "{head}");
    let body: Value = serde_json::from_slice(&refused.read_to_end().await).expect("JSON body");
    assert_eq!(body["error"], "limit_per_ip", "{body}");
    // Only WebSocket connections count: the server is still ready for others.
    assert_eq!(
        get_json(server.addr, "/readyz").await,
        (200, json!({"status": "ready"}))
    );
}
