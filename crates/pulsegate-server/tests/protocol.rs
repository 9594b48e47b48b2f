//! The WebSocket protocol as a client sees it, against a real server on
//! `127.0.0.1:0`: the welcome frame, `sub`/`unsub`/`pub`/`ping` and their
//! replies, topic patterns, request ids, the MessagePack subprotocol,
//! frame-level errors (size, UTF-8, malformed requests) and `/echo`.

mod support;

use futures_util::{SinkExt, StreamExt};
use pulsegate_proto::codec::MSGPACK_PROTOCOL;
use pulsegate_proto::{ClientFrame, Codec, Id, Reply, ServerFrame};
use pulsegate_testkit::{
    get_json, header_value, opcode, raw_upgrade, TestServer, WsClient, STEP_TIMEOUT,
};
use serde_json::{json, Value};
use support::{
    assert_nothing_queued, now_micros, publish, recv_msg, recv_topics_and_seqs, subscribe,
};
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

#[tokio::test]
async fn welcome_names_the_connection_the_node_and_the_ping_interval() {
    let server = TestServer::start().await;

    let (_first, welcome) = WsClient::connect(&server.ws_url()).await;
    assert_eq!(
        welcome,
        json!({"op": "welcome", "conn": "1", "node": "test", "ping_interval_ms": 25_000})
    );

    let (_second, welcome) = WsClient::connect(&server.ws_url()).await;
    assert_eq!(welcome["conn"], "2", "connection ids count up: {welcome}");
}

#[tokio::test]
async fn sub_and_unsub_are_acknowledged_and_unsub_stops_delivery() {
    let server = TestServer::start().await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;

    let ok = c
        .request(json!({"op": "sub", "id": 1, "topic": "site/a/power"}))
        .await;
    assert_eq!(ok, json!({"op": "ok", "id": 1}));
    publish(server.addr, "site/a/power", json!(1)).await;
    assert_eq!(recv_msg(&mut c).await["data"], 1);

    let ok = c
        .request(json!({"op": "unsub", "id": 2, "topic": "site/a/power"}))
        .await;
    assert_eq!(ok, json!({"op": "ok", "id": 2}));
    publish(server.addr, "site/a/power", json!(2)).await;
    assert_nothing_queued(&mut c).await;

    let (_, stats) = get_json(server.addr, "/api/stats").await;
    assert_eq!(stats["subscriptions"], 0, "{stats}");
}

#[tokio::test]
async fn pub_is_acknowledged_and_subscribers_get_each_message_in_seq_order() {
    let server = TestServer::start().await;
    let (mut subscriber, _) = WsClient::connect(&server.ws_url()).await;
    let (mut publisher, _) = WsClient::connect(&server.ws_url()).await;
    subscribe(&mut subscriber, "site/a/power").await;

    let before = now_micros();
    let mut epoch = Value::Null;
    for seq in 1..=3u64 {
        let id = 10 + seq;
        let data = json!({"w": 1500 + seq, "unit": "W"});
        let ok = publisher
            .request(json!({"op": "pub", "id": id, "topic": "site/a/power", "data": data}))
            .await;
        assert!(ok["epoch"].is_string(), "{ok}");
        if seq == 1 {
            epoch = ok["epoch"].clone();
        }
        assert_eq!(
            ok,
            json!({"op": "ok", "id": id, "topic": "site/a/power", "seq": seq, "epoch": epoch})
        );
    }

    for seq in 1..=3u64 {
        let m = recv_msg(&mut subscriber).await;
        let after = now_micros();
        let ts = m["ts"].as_u64().expect("ts is an integer");
        assert!(
            (before..=after).contains(&ts),
            "ts {ts} is server ingress time in µs, between {before} and {after}"
        );
        assert_eq!(
            m,
            json!({"op": "msg", "topic": "site/a/power", "seq": seq, "epoch": epoch, "ts": ts,
                   "data": {"w": 1500 + seq, "unit": "W"}})
        );
    }
    assert_nothing_queued(&mut subscriber).await;
}

#[tokio::test]
async fn ping_is_answered_with_pong_and_the_server_time() {
    let server = TestServer::start().await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;

    let before = now_micros();
    let pong = c.request(json!({"op": "ping", "id": 5})).await;
    let after = now_micros();
    let ts = pong["ts"].as_u64().expect("ts");
    assert!(
        (before..=after).contains(&ts),
        "pong ts {ts} not in [{before}, {after}]"
    );
    assert_eq!(pong, json!({"op": "pong", "id": 5, "ts": ts}));

    let pong = c.request(json!({"op": "ping"})).await;
    assert_eq!(
        pong.as_object().expect("object").len(),
        2,
        "no id when none was sent: {pong}"
    );
}

#[tokio::test]
async fn plus_matches_one_level_and_hash_matches_the_rest() {
    let server = TestServer::start().await;
    let (mut plus, _) = WsClient::connect(&server.ws_url()).await;
    let (mut hash, _) = WsClient::connect(&server.ws_url()).await;
    subscribe(&mut plus, "site/+/power").await;
    subscribe(&mut hash, "site/#").await;

    for topic in [
        "site/a/power",
        "site/a/b/power",
        "site/b/power",
        "site/a/energy",
        "site",
        "other/a/power",
        "sites/a/power",
    ] {
        publish(server.addr, topic, json!(topic)).await;
    }

    let seqs = |v: &[&str]| v.iter().map(|t| (t.to_string(), 1)).collect::<Vec<_>>();
    assert_eq!(
        recv_topics_and_seqs(&mut plus, 2).await,
        seqs(&["site/a/power", "site/b/power"])
    );
    assert_nothing_queued(&mut plus).await;
    assert_eq!(
        recv_topics_and_seqs(&mut hash, 5).await,
        seqs(&[
            "site/a/power",
            "site/a/b/power",
            "site/b/power",
            "site/a/energy",
            "site"
        ])
    );
    assert_nothing_queued(&mut hash).await;
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_each_message_once() {
    let server = TestServer::start().await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;
    for (id, topic) in [(1, "site/a/power"), (2, "site/+/power"), (3, "#")] {
        let ok = c
            .request(json!({"op": "sub", "id": id, "topic": topic}))
            .await;
        assert_eq!(ok, json!({"op": "ok", "id": id}));
    }

    publish(server.addr, "site/a/power", json!(1)).await;
    publish(server.addr, "site/a/power", json!(2)).await;

    assert_eq!(
        recv_topics_and_seqs(&mut c, 2).await,
        vec![
            ("site/a/power".to_string(), 1),
            ("site/a/power".to_string(), 2)
        ]
    );
    assert_nothing_queued(&mut c).await;
}

#[tokio::test]
async fn unsubscribing_one_of_overlapping_patterns_keeps_the_others() {
    let server = TestServer::start().await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;
    for (id, topic) in [(1, "#"), (2, "site/a/power"), (3, "site/+/power")] {
        let ok = c
            .request(json!({"op": "sub", "id": id, "topic": topic}))
            .await;
        assert_eq!(ok, json!({"op": "ok", "id": id}));
    }
    // Topics created after the subscriptions.
    publish(server.addr, "site/a/power", json!(1)).await;
    publish(server.addr, "site/b/power", json!(1)).await;
    publish(server.addr, "other", json!(1)).await;
    assert_eq!(recv_topics_and_seqs(&mut c, 3).await.len(), 3);

    let ok = c
        .request(json!({"op": "unsub", "id": 4, "topic": "#"}))
        .await;
    assert_eq!(ok, json!({"op": "ok", "id": 4}));
    publish(server.addr, "other", json!(2)).await;
    publish(server.addr, "site/a/power", json!(2)).await;
    publish(server.addr, "site/b/power", json!(2)).await;
    assert_eq!(
        recv_topics_and_seqs(&mut c, 2).await,
        vec![
            ("site/a/power".to_string(), 2),
            ("site/b/power".to_string(), 2)
        ]
    );
    assert_nothing_queued(&mut c).await;

    let ok = c
        .request(json!({"op": "unsub", "id": 5, "topic": "site/+/power"}))
        .await;
    assert_eq!(ok, json!({"op": "ok", "id": 5}));
    publish(server.addr, "site/b/power", json!(3)).await;
    publish(server.addr, "site/a/power", json!(3)).await;
    assert_eq!(
        recv_topics_and_seqs(&mut c, 1).await,
        vec![("site/a/power".to_string(), 3)]
    );
    assert_nothing_queued(&mut c).await;
}

#[tokio::test]
async fn publishing_to_a_pattern_is_a_bad_request() {
    let server = TestServer::start().await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;

    for (id, topic) in [(1, "site/+/power"), (2, "site/#")] {
        let reply = c
            .request(json!({"op": "pub", "id": id, "topic": topic, "data": 1}))
            .await;
        assert_eq!(reply["op"], "error", "{reply}");
        assert_eq!(reply["id"], id);
        assert_eq!(reply["code"], "bad_request");
        assert!(
            reply["message"].as_str().unwrap().contains("wildcards"),
            "{reply}"
        );
    }
    let (_, stats) = get_json(server.addr, "/api/stats").await;
    assert_eq!(stats["published"], 0, "{stats}");
}

#[tokio::test]
async fn invalid_and_too_long_topics_are_bad_requests() {
    let server = TestServer::start_with(|c| c.limits.max_topic_length = 16).await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;

    let bad = [
        json!({"op": "sub", "id": 1, "topic": "a//b"}),
        json!({"op": "pub", "id": 2, "topic": "a//b", "data": 1}),
        json!({"op": "sub", "id": 3, "topic": "/a"}),
        json!({"op": "sub", "id": 4, "topic": "a/b+"}),
        json!({"op": "sub", "id": 5, "topic": "x".repeat(17)}),
        json!({"op": "pub", "id": 6, "topic": "x".repeat(17), "data": 1}),
    ];
    for req in bad {
        let reply = c.request(req.clone()).await;
        assert_eq!(reply["op"], "error", "{req} -> {reply}");
        assert_eq!(reply["id"], req["id"], "{req} -> {reply}");
        assert_eq!(reply["code"], "bad_request", "{req} -> {reply}");
    }

    // The length limit is inclusive and its error names the config key.
    let reply = c
        .request(json!({"op": "sub", "id": 7, "topic": "x".repeat(17)}))
        .await;
    let message = reply["message"].as_str().unwrap();
    assert!(message.contains("limits.max_topic_length"), "{reply}");
    let ok = c
        .request(json!({"op": "sub", "id": 8, "topic": "x".repeat(16)}))
        .await;
    assert_eq!(ok, json!({"op": "ok", "id": 8}));
}

#[tokio::test]
async fn subscribing_twice_to_the_same_pattern_is_refused() {
    let server = TestServer::start().await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;
    subscribe(&mut c, "site/+/power").await;

    let reply = c
        .request(json!({"op": "sub", "id": 2, "topic": "site/+/power"}))
        .await;
    assert_eq!(reply["op"], "error", "{reply}");
    assert_eq!(reply["id"], 2);
    assert_eq!(reply["code"], "bad_request");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("already subscribed"),
        "{reply}"
    );

    publish(server.addr, "site/a/power", json!(1)).await;
    assert_eq!(recv_msg(&mut c).await["seq"], 1);
    assert_nothing_queued(&mut c).await;
}

#[tokio::test]
async fn unsub_of_a_pattern_not_subscribed_is_not_found() {
    let server = TestServer::start().await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;
    subscribe(&mut c, "site/a/power").await;

    let reply = c
        .request(json!({"op": "unsub", "id": 9, "topic": "site/+/power"}))
        .await;
    assert_eq!(reply["op"], "error", "{reply}");
    assert_eq!(reply["id"], 9);
    assert_eq!(reply["code"], "not_found");
}

#[tokio::test]
async fn subscriptions_per_connection_are_limited() {
    let server = TestServer::start_with(|c| c.limits.max_subscriptions_per_connection = 2).await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;
    let (mut other, _) = WsClient::connect(&server.ws_url()).await;

    for (id, topic) in [(1, "a"), (2, "b")] {
        let ok = c
            .request(json!({"op": "sub", "id": id, "topic": topic}))
            .await;
        assert_eq!(ok, json!({"op": "ok", "id": id}));
    }
    let reply = c.request(json!({"op": "sub", "id": 3, "topic": "c"})).await;
    assert_eq!(reply["op"], "error", "{reply}");
    assert_eq!(reply["id"], 3);
    assert_eq!(reply["code"], "limit");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("limits.max_subscriptions_per_connection"),
        "{reply}"
    );

    // The limit is per connection, and an unsub frees a slot.
    subscribe(&mut other, "c").await;
    let ok = c
        .request(json!({"op": "unsub", "id": 4, "topic": "a"}))
        .await;
    assert_eq!(ok, json!({"op": "ok", "id": 4}));
    let ok = c.request(json!({"op": "sub", "id": 5, "topic": "c"})).await;
    assert_eq!(ok, json!({"op": "ok", "id": 5}));
}

#[tokio::test]
async fn request_ids_are_echoed_as_numbers_and_as_strings() {
    let server = TestServer::start().await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;

    let ok = c
        .request(json!({"op": "sub", "id": "sub-1", "topic": "a"}))
        .await;
    assert_eq!(ok, json!({"op": "ok", "id": "sub-1"}));
    let ok = c
        .request(json!({"op": "sub", "id": 18446744073709551615u64, "topic": "b"}))
        .await;
    assert_eq!(ok, json!({"op": "ok", "id": 18446744073709551615u64}));
    let pong = c.request(json!({"op": "ping", "id": "7"})).await;
    assert_eq!(
        pong["id"], "7",
        "a numeric-looking string stays a string: {pong}"
    );
    let err = c
        .request(json!({"op": "unsub", "id": 42, "topic": "zzz"}))
        .await;
    assert_eq!(err["id"], 42, "errors echo the id too: {err}");
    let err = c.request(json!({"op": "fly", "id": "x"})).await;
    assert_eq!(err["id"], "x", "even for an unknown op: {err}");
}

// ---------------------------------------------------------------------------
// MessagePack subprotocol
// ---------------------------------------------------------------------------

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects offering `protocols` and returns the stream and the protocol the
/// server selected (its `Sec-WebSocket-Protocol` answer).
async fn connect_offering(url: &str, protocols: &str) -> (Ws, Option<String>) {
    let (ws, response) = ClientBuilder::new()
        .uri(url)
        .expect("url")
        .add_header(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_str(protocols).expect("header value"),
        )
        .expect("header")
        .connect()
        .await
        .expect("upgrade succeeds");
    let selected = response
        .headers()
        .get(http::header::SEC_WEBSOCKET_PROTOCOL)
        .map(|v| v.to_str().expect("ascii").to_string());
    (ws, selected)
}

/// Next frame of a MessagePack connection: binary, decoded both as a raw
/// MessagePack value (to see the wire shape) and as a protocol frame.
async fn recv_msgpack(ws: &mut Ws) -> (Value, ServerFrame) {
    loop {
        let msg = tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await
            .expect("frame in time")
            .expect("stream open")
            .expect("valid frame");
        if msg.is_ping() || msg.is_pong() {
            continue;
        }
        assert!(
            msg.is_binary(),
            "msgpack connections get binary frames, got {msg:?}"
        );
        let bytes = msg.as_payload().to_vec();
        let raw: Value = rmp_serde::from_slice(&bytes).expect("a MessagePack value");
        let frame = Codec::MsgPack
            .decode_server(&bytes)
            .expect("a server frame");
        return (raw, frame);
    }
}

async fn send_msgpack(ws: &mut Ws, frame: &ClientFrame) {
    let bytes = Codec::MsgPack.encode_client(frame);
    ws.send(Message::binary(bytes)).await.expect("send");
}

/// A pipelined burst, queued as one run, reaches a MessagePack subscriber
/// as one binary frame per message, in order.
#[tokio::test]
async fn a_pipelined_burst_reaches_a_msgpack_subscriber_frame_by_frame() {
    let server = TestServer::start().await;
    let (mut ws, _) = connect_offering(&server.ws_url(), MSGPACK_PROTOCOL).await;
    recv_msgpack(&mut ws).await;
    send_msgpack(
        &mut ws,
        &ClientFrame::Sub {
            id: Some(Id::Num(1)),
            topic: "mp/burst".into(),
            snapshot: false,
            since: vec![],
        },
    )
    .await;
    let (raw, _) = recv_msgpack(&mut ws).await;
    assert_eq!(raw, json!({"op": "ok", "id": 1}));
    let data: Vec<Value> = (0..40)
        .map(|i| json!({"i": i, "pad": "x".repeat(i * 10)}))
        .collect();
    let oks = support::publish_pipelined(server.addr, "mp/burst", &data).await;
    for (d, ok) in data.iter().zip(&oks) {
        let (raw, frame) = recv_msgpack(&mut ws).await;
        assert!(matches!(frame, ServerFrame::Msg { .. }), "{frame:?}");
        assert_eq!(raw["seq"], ok["seq"]);
        assert_eq!(&raw["data"], d);
    }
}

#[tokio::test]
async fn the_server_answers_the_subprotocol_it_selected() {
    let server = TestServer::start().await;
    let url = server.ws_url();

    let (_ws, selected) = connect_offering(&url, MSGPACK_PROTOCOL).await;
    assert_eq!(selected.as_deref(), Some("pulsegate.v1.msgpack"));
    let (_ws, selected) = connect_offering(&url, "chat.v2, pulsegate.v1.msgpack").await;
    assert_eq!(
        selected.as_deref(),
        Some("pulsegate.v1.msgpack"),
        "unknown ones are skipped"
    );
    let (_ws, selected) = connect_offering(&url, "pulsegate.v1.json, pulsegate.v1.msgpack").await;
    assert_eq!(
        selected.as_deref(),
        Some("pulsegate.v1.json"),
        "the client's order wins"
    );
    let (_ws, selected) = connect_offering(&url, "chat.v2").await;
    assert_eq!(
        selected, None,
        "nothing of ours offered: JSON, and no header"
    );

    // The same, on the wire.
    let (status, head, _) = raw_upgrade(
        server.addr,
        "/ws",
        &[("Sec-WebSocket-Protocol", "pulsegate.v1.msgpack")],
    )
    .await;
    assert_eq!(status, 101, "{head}");
    assert_eq!(
        header_value(&head, "sec-websocket-protocol"),
        Some("pulsegate.v1.msgpack")
    );
    assert_eq!(
        header_value(&head, "sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "RFC 6455 accept key for the RFC's sample key"
    );
}

#[tokio::test]
async fn msgpack_frames_are_binary_maps_with_the_json_field_names() {
    let server = TestServer::start().await;
    let (mut ws, _) = connect_offering(&server.ws_url(), MSGPACK_PROTOCOL).await;

    let (raw, frame) = recv_msgpack(&mut ws).await;
    assert_eq!(
        raw,
        json!({"op": "welcome", "conn": "1", "node": "test", "ping_interval_ms": 25_000})
    );
    assert!(matches!(frame, ServerFrame::Welcome { .. }), "{frame:?}");

    send_msgpack(
        &mut ws,
        &ClientFrame::Sub {
            id: Some(Id::Num(1)),
            topic: "site/+/power".into(),
            snapshot: false,
            since: vec![],
        },
    )
    .await;
    let (raw, _) = recv_msgpack(&mut ws).await;
    assert_eq!(raw, json!({"op": "ok", "id": 1}));

    send_msgpack(
        &mut ws,
        &ClientFrame::Pub {
            id: Some(Id::Str("p".into())),
            topic: "site/a/power".into(),
            data: br#"{"w":1520,"ok":true}"#.to_vec().into(),
        },
    )
    .await;
    // The publisher is subscribed too: fan-out queues its copy before the reply.
    let (raw_msg, msg) = recv_msgpack(&mut ws).await;
    let (_, ok) = recv_msgpack(&mut ws).await;
    let ServerFrame::Ok(Reply {
        id,
        topic,
        seq,
        epoch,
        ..
    }) = ok
    else {
        panic!("{ok:?}")
    };
    assert_eq!(
        (id, topic.as_deref(), seq),
        (Some(Id::Str("p".into())), Some("site/a/power"), Some(1))
    );
    let ServerFrame::Msg { ts, .. } = msg else {
        panic!("{msg:?}")
    };
    assert_eq!(
        raw_msg,
        json!({"op": "msg", "topic": "site/a/power", "seq": 1, "epoch": epoch.unwrap(), "ts": ts,
               "data": {"w": 1520, "ok": true}})
    );

    // A text frame on a MessagePack connection is refused, and the connection stays.
    ws.send(Message::text(r#"{"op":"ping"}"#))
        .await
        .expect("send");
    let (raw, _) = recv_msgpack(&mut ws).await;
    assert_eq!(raw["op"], "error", "{raw}");
    assert_eq!(raw["code"], "bad_request");
    send_msgpack(
        &mut ws,
        &ClientFrame::Ping {
            id: Some(Id::Num(2)),
        },
    )
    .await;
    let (raw, _) = recv_msgpack(&mut ws).await;
    assert_eq!(
        (raw["op"].clone(), raw["id"].clone()),
        (json!("pong"), json!(2))
    );
}

#[tokio::test]
async fn json_and_msgpack_subscribers_get_the_same_message() {
    let server = TestServer::start().await;
    let (mut json_sub, _) = WsClient::connect(&server.ws_url()).await;
    let (mut mp_sub, _) = connect_offering(&server.ws_url(), MSGPACK_PROTOCOL).await;
    recv_msgpack(&mut mp_sub).await; // welcome
    subscribe(&mut json_sub, "site/a/power").await;
    send_msgpack(
        &mut mp_sub,
        &ClientFrame::Sub {
            id: None,
            topic: "site/a/power".into(),
            snapshot: false,
            since: vec![],
        },
    )
    .await;
    assert_eq!(recv_msgpack(&mut mp_sub).await.0, json!({"op": "ok"}));

    let data = json!({"w": 1520.5, "tags": ["a", "b"], "nested": {"x": null, "n": -3}});
    let stamp = publish(server.addr, "site/a/power", data.clone()).await;

    let from_json = Codec::Json
        .decode_server(recv_msg(&mut json_sub).await.to_string().as_bytes())
        .expect("msg frame");
    let (_, from_msgpack) = recv_msgpack(&mut mp_sub).await;
    assert_eq!(from_json, from_msgpack);
    let ServerFrame::Msg {
        topic,
        seq,
        epoch,
        data: got,
        ..
    } = from_msgpack
    else {
        panic!("{from_msgpack:?}")
    };
    assert_eq!(
        (topic.as_str(), seq, epoch.as_str()),
        ("site/a/power", 1, stamp["epoch"].as_str().unwrap())
    );
    assert_eq!(got, data);
}

// ---------------------------------------------------------------------------
// Frame-level errors
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_message_over_max_message_bytes_closes_with_1009() {
    let server = TestServer::start_with(|c| c.limits.max_message_bytes = 1024).await;

    // Exactly at the limit is accepted.
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;
    let frame = json!({"op": "pub", "id": 1, "topic": "t", "data": "x"});
    let pad = 1024 - frame.to_string().len();
    let at_limit =
        json!({"op": "pub", "id": 1, "topic": "t", "data": "x".repeat(1 + pad)}).to_string();
    assert_eq!(at_limit.len(), 1024);
    c.send_text(&at_limit).await;
    assert_eq!(c.recv_json().await["seq"], 1);

    c.send_text(&"x".repeat(2000)).await;
    let (code, _) = c.recv_close(STEP_TIMEOUT).await.expect("a close frame");
    assert_eq!(code, 1009);
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    let server = TestServer::start().await;
    let (status, head, mut raw) = raw_upgrade(server.addr, "/ws", &[]).await;
    assert_eq!(status, 101, "{head}");
    let (op, welcome) = raw.read_frame().await.expect("welcome");
    assert_eq!(op, opcode::TEXT);
    assert_eq!(
        serde_json::from_slice::<Value>(&welcome).unwrap()["op"],
        "welcome"
    );

    raw.send_frame(opcode::TEXT, &[0xff, 0xfe]).await;
    let (code, _) = raw.read_close().await.expect("a close frame");
    assert_eq!(code, 1007);
    assert_eq!(
        raw.read_frame().await,
        None,
        "the server closes the TCP connection"
    );
}

#[tokio::test]
async fn malformed_json_is_answered_and_the_connection_stays_usable() {
    let server = TestServer::start().await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;

    c.send_text("{nope").await;
    let reply = c.recv_json().await;
    assert_eq!(reply["op"], "error", "{reply}");
    assert_eq!(reply["code"], "bad_request");
    assert!(reply.get("id").is_none(), "no id could be read: {reply}");

    let reply = c.request(json!({"op": "pub", "id": 3, "topic": "a"})).await;
    assert_eq!(reply["code"], "bad_request", "pub without data: {reply}");
    assert_eq!(reply["id"], 3);

    let pong = c.request(json!({"op": "ping", "id": 1})).await;
    assert_eq!(pong["op"], "pong");
}

#[tokio::test]
async fn an_unknown_op_is_answered_with_unknown_op() {
    let server = TestServer::start().await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;

    let reply = c.request(json!({"op": "fly", "id": 9})).await;
    assert_eq!(
        reply,
        json!({"op": "error", "id": 9, "code": "unknown_op", "message": "unknown op `fly`"})
    );
    assert_eq!(c.request(json!({"op": "ping"})).await["op"], "pong");
}

#[tokio::test]
async fn too_many_malformed_frames_close_with_1008() {
    let server = TestServer::start_with(|c| c.limits.max_protocol_errors = 3).await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;

    // Valid requests in between do not reset the count.
    for _ in 0..3 {
        c.send_text("not json").await;
        assert_eq!(c.recv_json().await["code"], "bad_request");
        assert_eq!(c.request(json!({"op": "ping"})).await["op"], "pong");
    }
    c.send_text("not json").await;
    let (code, reason) = c.recv_close(STEP_TIMEOUT).await.expect("a close frame");
    assert_eq!(
        (code, reason.as_str()),
        (1008, "more than 3 malformed frames")
    );

    let (_, stats) = get_json(server.addr, "/api/stats").await;
    assert_eq!(stats["protocol_errors"], 4, "{stats}");
}

#[tokio::test]
async fn the_last_malformed_frame_is_still_answered_before_the_1008_close() {
    let server = TestServer::start_with(|c| c.limits.max_protocol_errors = 1).await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;

    c.send_text("not json").await;
    assert_eq!(c.recv_json().await["code"], "bad_request");
    c.send_text(r#"{"op":"fly","id":2}"#).await;
    let reply = tokio::time::timeout(STEP_TIMEOUT, c.ws.next())
        .await
        .expect("a frame in time")
        .expect("stream open")
        .expect("valid frame");
    assert_eq!(
        reply
            .as_text()
            .map(|t| serde_json::from_str::<Value>(t).unwrap()),
        Some(json!({"op": "error", "id": 2, "code": "unknown_op", "message": "unknown op `fly`"})),
        "the reply comes before the close frame, got {reply:?}"
    );
    let (code, _) = c.recv_close(STEP_TIMEOUT).await.expect("a close frame");
    assert_eq!(code, 1008);
}

// ---------------------------------------------------------------------------
// /echo
// ---------------------------------------------------------------------------

#[tokio::test]
async fn echo_sends_back_text_and_binary_messages() {
    let server = TestServer::start().await;
    let mut c = WsClient::connect_with(&format!("ws://{}/echo", server.addr), &[])
        .await
        .expect("upgrade succeeds");

    c.ws.send(Message::text("héllo")).await.expect("send");
    c.ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .expect("send");
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = tokio::time::timeout(STEP_TIMEOUT, c.ws.next())
            .await
            .expect("echo in time")
            .expect("stream open")
            .expect("valid frame");
        if m.is_text() || m.is_binary() {
            got.push((m.is_text(), m.as_payload().to_vec()));
        }
    }
    assert_eq!(
        got,
        vec![
            (true, "héllo".as_bytes().to_vec()),
            (false, vec![0, 1, 2, 255])
        ]
    );

    // /echo is not the pub/sub endpoint: no welcome, and JSON is not interpreted.
    c.send_json(json!({"op": "ping", "id": 1})).await;
    assert_eq!(c.recv_json().await, json!({"op": "ping", "id": 1}));
}
