//! The client against a scripted WebSocket server on 127.0.0.1:0.
//!
//! Each test plays the server's side frame by frame (welcome, ok, msg, close
//! codes, drain hints) with a real tokio-websockets server, so the client's
//! reconnect, resume, duplicate and gap handling is checked on the wire
//! without depending on the real pulsegate server. Tests against the real
//! server belong in `live.rs` once `pulsegate-testkit` can start one.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pulsegate_client::{
    publish, ClientError, ClientOptions, Codec, Connection, Event, Position, Subscriber,
};
use pulsegate_proto::codec::MSGPACK_PROTOCOL;
use pulsegate_proto::{ClientFrame, ErrorCode, Id, Reply, ServerFrame};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_websockets::{CloseCode, Message, WebSocketStream};

const STEP: Duration = Duration::from_secs(5);
const MS: Duration = Duration::from_millis(1);

/// A listener that performs the upgrade and sends `welcome`; the test does the rest.
struct ScriptedServer {
    listener: TcpListener,
    codec: Codec,
}

/// The server's end of one connection.
struct Peer {
    ws: WebSocketStream<TcpStream>,
    codec: Codec,
    request: http::Request<()>,
}

impl ScriptedServer {
    async fn start(codec: Codec) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self { listener, codec }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.listener.local_addr().unwrap())
    }

    async fn accept_raw(&self) -> Peer {
        let (stream, _) = timeout(STEP, self.listener.accept())
            .await
            .expect("the client connects in time")
            .unwrap();
        let mut builder = tokio_websockets::ServerBuilder::new();
        if self.codec == Codec::MsgPack {
            builder = builder
                .add_header(
                    http::header::SEC_WEBSOCKET_PROTOCOL,
                    http::HeaderValue::from_static(MSGPACK_PROTOCOL),
                )
                .unwrap();
        }
        let (request, ws) = builder.accept(stream).await.unwrap();
        Peer {
            ws,
            codec: self.codec,
            request,
        }
    }

    async fn accept(&self) -> Peer {
        let mut peer = self.accept_raw().await;
        peer.send(ServerFrame::Welcome {
            conn: "c1".into(),
            node: "test".into(),
            ping_interval_ms: 25_000,
        })
        .await;
        peer
    }
}

impl Peer {
    async fn send_bytes(&mut self, bytes: bytes::Bytes) {
        let msg = if self.codec.is_binary() {
            Message::binary(bytes)
        } else {
            Message::text(bytes)
        };
        self.ws.send(msg).await.unwrap();
    }

    async fn send(&mut self, frame: ServerFrame) {
        let bytes = self.codec.encode(&frame);
        self.send_bytes(bytes).await;
    }

    async fn send_msg(&mut self, topic: &str, seq: u64, epoch: &str) {
        let data = format!("{{\"seq\":{seq}}}");
        let bytes = self
            .codec
            .encode_msg(topic, seq, epoch, 1_000 + seq, data.as_bytes());
        self.send_bytes(bytes).await;
    }

    async fn ok(
        &mut self,
        id: u64,
        recovered: Option<Vec<&str>>,
        not_recovered: Option<Vec<&str>>,
    ) {
        let strings = |v: Option<Vec<&str>>| v.map(|v| v.into_iter().map(String::from).collect());
        self.send(ServerFrame::Ok(Reply {
            id: Some(Id::Num(id)),
            recovered: strings(recovered),
            not_recovered: strings(not_recovered),
            ..Reply::default()
        }))
        .await;
    }

    async fn recv(&mut self) -> ClientFrame {
        loop {
            let msg = timeout(STEP, self.ws.next())
                .await
                .expect("the client sends in time")
                .expect("connection open")
                .unwrap();
            if msg.is_ping() || msg.is_pong() {
                continue;
            }
            assert!(!msg.is_close(), "unexpected close: {:?}", msg.as_close());
            assert_eq!(
                msg.is_binary(),
                self.codec.is_binary(),
                "frame type matches the codec"
            );
            return self.codec.decode(msg.as_payload()).unwrap();
        }
    }

    /// Answers whatever the client sends next (its close) in the background.
    fn drain(mut self) {
        tokio::spawn(async move { while let Some(Ok(_)) = self.ws.next().await {} });
    }

    /// Sends a close frame and completes the closing handshake in the background.
    async fn close(mut self, code: u16, reason: &str) {
        let code = CloseCode::try_from(code).unwrap();
        self.ws
            .send(Message::close(Some(code), reason))
            .await
            .unwrap();
        self.drain();
    }
}

fn drive(mut sub: Subscriber) -> mpsc::Receiver<Result<Event, ClientError>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let result = sub.next().await;
            let stop = result.is_err();
            if tx.send(result).await.is_err() || stop {
                break;
            }
        }
    });
    rx
}

async fn event(rx: &mut mpsc::Receiver<Result<Event, ClientError>>) -> Event {
    timeout(STEP, rx.recv())
        .await
        .expect("an event in time")
        .expect("subscriber task alive")
        .expect("no error")
}

async fn error(rx: &mut mpsc::Receiver<Result<Event, ClientError>>) -> ClientError {
    match timeout(STEP, rx.recv()).await.expect("a result in time") {
        Some(Err(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn msg(topic: &str, seq: u64, epoch: &str) -> Event {
    Event::Msg {
        topic: topic.into(),
        seq,
        epoch: epoch.into(),
        ts: 1_000 + seq,
        data: serde_json::json!({ "seq": seq }),
    }
}

fn subscribed(recovered: &[&str], not_recovered: &[&str]) -> Event {
    Event::Subscribed {
        recovered: recovered.iter().map(|s| s.to_string()).collect(),
        not_recovered: not_recovered.iter().map(|s| s.to_string()).collect(),
    }
}

fn sub_frame(id: u64, snapshot: bool, since: &[(&str, &str, u64)]) -> ClientFrame {
    ClientFrame::Sub {
        id: Some(Id::Num(id)),
        topic: "site/+/power".into(),
        snapshot,
        since: since
            .iter()
            .map(|(t, e, s)| {
                (
                    t.to_string(),
                    Position {
                        epoch: e.to_string(),
                        seq: *s,
                    },
                )
            })
            .collect(),
    }
}

#[tokio::test]
async fn publish_returns_the_assigned_position() {
    for codec in [Codec::Json, Codec::MsgPack] {
        let server = ScriptedServer::start(codec).await;
        let opts = ClientOptions::new(server.url()).codec(codec);
        let client = tokio::spawn(async move {
            publish(&opts, "site/a/power", serde_json::json!({"w": 1520})).await
        });
        let mut peer = server.accept().await;
        let offered = peer.request.headers()[http::header::SEC_WEBSOCKET_PROTOCOL].clone();
        assert_eq!(
            offered.to_str().unwrap(),
            match codec {
                Codec::Json => "pulsegate.v1.json",
                Codec::MsgPack => "pulsegate.v1.msgpack",
            }
        );
        let ClientFrame::Pub { id, topic, data } = peer.recv().await else {
            panic!("expected pub");
        };
        assert_eq!(topic, "site/a/power");
        assert_eq!(&data[..], br#"{"w":1520}"#);
        peer.send(ServerFrame::Ok(Reply {
            id,
            topic: Some("site/a/power".into()),
            seq: Some(42),
            epoch: Some("E".into()),
            ..Reply::default()
        }))
        .await;
        peer.drain();
        let published = client.await.unwrap().unwrap();
        assert_eq!(
            (
                published.topic.as_str(),
                published.seq,
                published.epoch.as_str()
            ),
            ("site/a/power", 42, "E"),
            "{codec:?}"
        );
    }
}

#[tokio::test]
async fn publish_reports_the_servers_refusal() {
    let server = ScriptedServer::start(Codec::Json).await;
    let opts = ClientOptions::new(server.url());
    let client = tokio::spawn(async move { publish(&opts, "a/b", serde_json::json!(1)).await });
    let mut peer = server.accept().await;
    let frame = peer.recv().await;
    // An unrelated frame before the reply is skipped.
    peer.send(ServerFrame::Pong { id: None, ts: 1 }).await;
    peer.send(ServerFrame::Error {
        id: frame.id().cloned(),
        code: ErrorCode::Forbidden,
        message: "no publishing to a/b".into(),
    })
    .await;
    peer.drain();
    match client.await.unwrap() {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::Forbidden);
            assert_eq!(message, "no publishing to a/b");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn connection_requires_welcome_first() {
    let server = ScriptedServer::start(Codec::Json).await;
    let opts = ClientOptions::new(server.url());
    let client = tokio::spawn(async move { Connection::connect(&opts).await });
    let mut peer = server.accept_raw().await;
    peer.send(ServerFrame::Pong { id: None, ts: 1 }).await;
    match client.await.unwrap() {
        Err(ClientError::Protocol(m)) => assert!(m.contains("expected a welcome"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn connection_yields_frames_then_the_close() {
    let server = ScriptedServer::start(Codec::Json).await;
    let opts = ClientOptions::new(server.url());
    let client = tokio::spawn(async move {
        let mut conn = Connection::connect(&opts).await.unwrap();
        assert_eq!(conn.welcome().node, "test");
        assert_eq!(conn.welcome().ping_interval, Duration::from_secs(25));
        let first = conn.next().await;
        let second = conn.next().await;
        let third = conn.next().await;
        let end = conn.next().await;
        (first, second, third, end, conn.close_info().cloned())
    });
    let mut peer = server.accept().await;
    peer.send_msg("a/b", 1, "E").await;
    peer.send_bytes(bytes::Bytes::from_static(b"{\"op\":\"nonsense\"}"))
        .await;
    peer.send(ServerFrame::Pong { id: None, ts: 9 }).await;
    peer.close(4000, "slow consumer").await;
    let (first, second, third, end, close) = client.await.unwrap();
    assert!(
        matches!(first, Some(Ok(ServerFrame::Msg { seq: 1, .. }))),
        "{first:?}"
    );
    assert!(
        matches!(second, Some(Err(ClientError::Decode(_)))),
        "{second:?}"
    );
    assert!(
        matches!(third, Some(Ok(ServerFrame::Pong { ts: 9, .. }))),
        "{third:?}"
    );
    assert!(end.is_none());
    let close = close.unwrap();
    assert_eq!(
        (close.code, close.reason.as_str()),
        (Some(4000), "slow consumer")
    );
}

#[tokio::test]
async fn drain_hint_is_honoured_and_resume_gets_exactly_the_missed_messages() {
    let server = ScriptedServer::start(Codec::Json).await;
    let opts = ClientOptions::new(server.url()).backoff(5 * MS, 20 * MS);
    let mut events = drive(Subscriber::new(opts, "site/+/power", false, true));

    let mut peer = server.accept().await;
    assert_eq!(peer.recv().await, sub_frame(1, false, &[]));
    peer.ok(1, None, None).await;
    peer.send_msg("site/a/power", 41, "E").await;
    peer.send_msg("site/a/power", 42, "E").await;
    peer.send_msg("site/b/power", 7, "F").await;
    assert_eq!(event(&mut events).await, subscribed(&[], &[]));
    assert_eq!(event(&mut events).await, msg("site/a/power", 41, "E"));
    assert_eq!(event(&mut events).await, msg("site/a/power", 42, "E"));
    assert_eq!(event(&mut events).await, msg("site/b/power", 7, "F"));

    peer.close(1001, "draining; reconnect_after_ms=300").await;
    let closed_at = Instant::now();
    match event(&mut events).await {
        Event::Disconnected {
            code,
            reason,
            retry_in,
        } => {
            assert_eq!(code, Some(1001));
            assert_eq!(reason, "draining; reconnect_after_ms=300");
            assert!(retry_in >= 270 * MS && retry_in <= 330 * MS, "{retry_in:?}");
        }
        other => panic!("{other:?}"),
    }

    let mut peer = server.accept().await;
    assert!(
        closed_at.elapsed() >= 250 * MS,
        "reconnected after {:?}",
        closed_at.elapsed()
    );
    assert_eq!(
        peer.recv().await,
        sub_frame(
            2,
            false,
            &[("site/a/power", "E", 42), ("site/b/power", "F", 7)]
        )
    );
    peer.ok(2, Some(vec!["site/a/power"]), Some(vec!["site/b/power"]))
        .await;
    peer.send_msg("site/a/power", 42, "E").await; // overlap: dropped
    peer.send_msg("site/a/power", 43, "E").await;
    peer.send_msg("site/b/power", 1, "G").await; // resynced topic: no gap reported
    peer.send_msg("site/a/power", 45, "E").await; // conflated: gap
    assert_eq!(
        event(&mut events).await,
        subscribed(&["site/a/power"], &["site/b/power"])
    );
    assert_eq!(event(&mut events).await, msg("site/a/power", 43, "E"));
    assert_eq!(event(&mut events).await, msg("site/b/power", 1, "G"));
    assert_eq!(
        event(&mut events).await,
        Event::Gap {
            topic: "site/a/power".into(),
            expected: 44,
            got: 45
        }
    );
    assert_eq!(event(&mut events).await, msg("site/a/power", 45, "E"));
}

/// A URL on which nothing listens (a port bound and released at once).
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("ws://{}/ws", listener.local_addr().unwrap())
}

#[tokio::test]
async fn failover_rotates_over_the_urls_and_resumes_with_since_on_each() {
    let (a, b, c) = (
        ScriptedServer::start(Codec::Json).await,
        ScriptedServer::start(Codec::Json).await,
        ScriptedServer::start(Codec::Json).await,
    );
    let dead = dead_url();
    let opts = ClientOptions::new(a.url())
        .fallback_url(b.url())
        .fallback_url(dead.clone())
        .fallback_url(c.url())
        .backoff(5 * MS, 20 * MS);
    let mut events = drive(Subscriber::new(opts, "site/+/power", false, true));

    // Node A: subscribed, two messages, then a drain with a hint.
    let mut peer = a.accept().await;
    assert_eq!(peer.recv().await, sub_frame(1, false, &[]));
    peer.ok(1, None, None).await;
    peer.send_msg("site/a/power", 1, "E").await;
    peer.send_msg("site/a/power", 2, "E").await;
    assert_eq!(event(&mut events).await, subscribed(&[], &[]));
    assert_eq!(event(&mut events).await, msg("site/a/power", 1, "E"));
    assert_eq!(event(&mut events).await, msg("site/a/power", 2, "E"));
    peer.close(1001, "draining; reconnect_after_ms=50").await;
    match event(&mut events).await {
        Event::Disconnected { code, retry_in, .. } => {
            assert_eq!(code, Some(1001));
            assert!(retry_in >= 45 * MS && retry_in <= 55 * MS, "{retry_in:?}");
        }
        other => panic!("{other:?}"),
    }

    // Node B (the next URL) gets the resume, then vanishes without a close frame.
    let mut peer = b.accept().await;
    assert_eq!(
        peer.recv().await,
        sub_frame(2, false, &[("site/a/power", "E", 2)])
    );
    peer.ok(2, Some(vec!["site/a/power"]), Some(vec![])).await;
    peer.send_msg("site/a/power", 3, "E").await;
    assert_eq!(event(&mut events).await, subscribed(&["site/a/power"], &[]));
    assert_eq!(event(&mut events).await, msg("site/a/power", 3, "E"));
    drop(peer);
    assert!(matches!(
        event(&mut events).await,
        Event::Disconnected { code: None, .. }
    ));

    // The dead URL fails; the one after it, node C, is tried next.
    match event(&mut events).await {
        Event::Disconnected { code, reason, .. } => {
            assert_eq!(code, None);
            assert!(reason.contains(&dead), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let mut peer = c.accept().await;
    assert_eq!(
        peer.recv().await,
        sub_frame(3, false, &[("site/a/power", "E", 3)])
    );
    peer.ok(3, Some(vec!["site/a/power"]), Some(vec![])).await;
    peer.send_msg("site/a/power", 3, "E").await; // overlap: dropped
    peer.send_msg("site/a/power", 4, "E").await;
    assert_eq!(event(&mut events).await, subscribed(&["site/a/power"], &[]));
    assert_eq!(event(&mut events).await, msg("site/a/power", 4, "E"));
    peer.close(4000, "slow consumer").await;
    assert!(matches!(
        event(&mut events).await,
        Event::Disconnected {
            code: Some(4000),
            ..
        }
    ));

    // After the last URL comes the first again.
    let mut peer = a.accept().await;
    assert_eq!(
        peer.recv().await,
        sub_frame(4, false, &[("site/a/power", "E", 4)])
    );
    peer.ok(4, Some(vec!["site/a/power"]), Some(vec![])).await;
    assert_eq!(event(&mut events).await, subscribed(&["site/a/power"], &[]));
}

#[tokio::test]
async fn publish_falls_back_to_the_next_url_when_one_cannot_be_reached() {
    let server = ScriptedServer::start(Codec::Json).await;
    let opts = ClientOptions::new(dead_url()).fallback_url(server.url());
    let client = tokio::spawn(async move { publish(&opts, "a/b", serde_json::json!(1)).await });
    let mut peer = server.accept().await;
    let ClientFrame::Pub { id, .. } = peer.recv().await else {
        panic!("expected pub");
    };
    peer.send(ServerFrame::Ok(Reply {
        id,
        topic: Some("a/b".into()),
        seq: Some(9),
        epoch: Some("E".into()),
        ..Reply::default()
    }))
    .await;
    peer.drain();
    assert_eq!(client.await.unwrap().unwrap().seq, 9);

    // A malformed fallback is refused before anything is sent.
    let opts = ClientOptions::new(server.url()).fallback_url("tcp://nowhere");
    let e = publish(&opts, "a/b", serde_json::json!(1))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::InvalidUrl { .. }), "{e}");
}

#[tokio::test]
async fn slow_consumer_close_reconnects_with_backoff_in_msgpack() {
    let server = ScriptedServer::start(Codec::MsgPack).await;
    let opts = ClientOptions::new(server.url())
        .codec(Codec::MsgPack)
        .backoff(50 * MS, 1000 * MS);
    let mut events = drive(Subscriber::new(opts, "site/+/power", true, true));

    let mut peer = server.accept().await;
    assert_eq!(peer.recv().await, sub_frame(1, true, &[]));
    peer.ok(1, None, None).await;
    peer.send_msg("site/a/power", 9, "E").await; // snapshot
    assert_eq!(event(&mut events).await, subscribed(&[], &[]));
    assert_eq!(event(&mut events).await, msg("site/a/power", 9, "E"));
    peer.close(4000, "queue full").await;
    match event(&mut events).await {
        Event::Disconnected { code, retry_in, .. } => {
            assert_eq!(code, Some(4000));
            assert!(
                retry_in <= 50 * MS,
                "first retry within backoff min: {retry_in:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let mut peer = server.accept().await;
    assert_eq!(
        peer.recv().await,
        sub_frame(2, true, &[("site/a/power", "E", 9)])
    );
    peer.ok(2, Some(vec!["site/a/power"]), Some(vec![])).await;
    peer.send_msg("site/a/power", 10, "E").await;
    peer.send_msg("site/a/power", 10, "E").await; // snapshot repeating the last recovered value
    peer.send_msg("site/a/power", 11, "E").await;
    assert_eq!(event(&mut events).await, subscribed(&["site/a/power"], &[]));
    assert_eq!(event(&mut events).await, msg("site/a/power", 10, "E"));
    assert_eq!(event(&mut events).await, msg("site/a/power", 11, "E"));
}

#[tokio::test]
async fn a_refused_subscription_is_fatal() {
    let server = ScriptedServer::start(Codec::Json).await;
    let opts = ClientOptions::new(server.url()).backoff(5 * MS, 5 * MS);
    let mut events = drive(Subscriber::new(opts, "site/+/power", false, false));
    let mut peer = server.accept().await;
    let frame = peer.recv().await;
    peer.send(ServerFrame::Error {
        id: frame.id().cloned(),
        code: ErrorCode::BadRequest,
        message: "invalid pattern".into(),
    })
    .await;
    match error(&mut events).await {
        ClientError::Server { code, .. } => assert_eq!(code, ErrorCode::BadRequest),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_unavailable_server_is_retried() {
    let server = ScriptedServer::start(Codec::Json).await;
    let opts = ClientOptions::new(server.url()).backoff(5 * MS, 5 * MS);
    let mut events = drive(Subscriber::new(opts, "site/+/power", false, false));
    let mut peer = server.accept().await;
    let frame = peer.recv().await;
    peer.send(ServerFrame::Error {
        id: frame.id().cloned(),
        code: ErrorCode::Unavailable,
        message: "draining".into(),
    })
    .await;
    match event(&mut events).await {
        Event::Disconnected { code, reason, .. } => {
            assert_eq!(code, None);
            assert!(reason.contains("unavailable"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let mut peer = server.accept().await;
    assert_eq!(peer.recv().await, sub_frame(2, false, &[]));
}

#[tokio::test]
async fn gives_up_after_max_reconnect_attempts() {
    // A port nobody listens on.
    let url = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("ws://{}/ws", listener.local_addr().unwrap())
    };
    let opts = ClientOptions::new(url)
        .backoff(1 * MS, 2 * MS)
        .max_reconnect_attempts(Some(2));
    let mut events = drive(Subscriber::new(opts, "a/#", false, true));
    for _ in 0..2 {
        match event(&mut events).await {
            Event::Disconnected {
                code: None, reason, ..
            } => {
                assert!(reason.contains("could not connect"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
    match error(&mut events).await {
        ClientError::GaveUp { attempts, last } => {
            assert_eq!(attempts, 2);
            assert!(matches!(*last, ClientError::Connect { .. }), "{last:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn next_is_cancel_safe_under_a_timeout() {
    let server = ScriptedServer::start(Codec::Json).await;
    let opts = ClientOptions::new(server.url());
    let mut sub = Subscriber::new(opts, "site/+/power", false, false);
    let serve = tokio::spawn(async move {
        let mut peer = server.accept().await;
        peer.recv().await;
        peer.ok(1, None, None).await;
        tokio::time::sleep(200 * MS).await;
        peer.send_msg("site/a/power", 1, "E").await;
        peer
    });
    assert_eq!(sub.next().await.unwrap(), subscribed(&[], &[]));
    // Time out a few waits; the message that arrives later is not lost.
    let mut timeouts = 0;
    let got = loop {
        match timeout(50 * MS, sub.next()).await {
            Ok(event) => break event.unwrap(),
            Err(_) => timeouts += 1,
        }
    };
    assert!(timeouts >= 1);
    assert_eq!(got, msg("site/a/power", 1, "E"));
    assert!(sub.is_connected());
    let _peer = serve.await.unwrap();
}
