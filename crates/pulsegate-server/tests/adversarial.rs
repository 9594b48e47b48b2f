//! Hostile clients against a real server: handshake floods, publish floods
//! (WebSocket and HTTP), 10,000 subscriptions on one connection, pattern
//! bombs, ping floods (application and WebSocket level), empty, maximal and
//! endlessly fragmented frames, and a reader so slow that queued bytes pass
//! the global budget. Each gets its documented outcome, and a bystander
//! client keeps being served throughout.

mod support;

use std::time::Duration;

use pulsegate_testkit::{get_json, http, upgrade_status, TestServer, WsClient};
use serde_json::{json, Value};
use support::{publish, recv_msg, subscribe};
use tokio::io::AsyncWriteExt;

/// A subscriber on `probe/t` that must keep receiving while others misbehave.
async fn bystander(server: &TestServer) -> WsClient {
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;
    subscribe(&mut c, "probe/t").await;
    c
}

/// Publishes one message and checks the bystander gets it within a second.
async fn assert_served(server: &TestServer, c: &mut WsClient, n: u64) {
    publish(server.addr, "probe/t", json!(n)).await;
    let m = tokio::time::timeout(Duration::from_secs(1), recv_msg(c))
        .await
        .expect("the bystander is still served within 1 s");
    assert_eq!(m["data"], n);
}

async fn metric(server: &TestServer, key: &str) -> f64 {
    let (_, _, body) = http(server.addr, "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8(body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {key} in the scrape"))
}

#[tokio::test]
async fn a_handshake_flood_from_one_address_is_rate_limited() {
    let server = TestServer::start_with(|c| {
        c.limits.handshake_rate_per_ip = 2;
        c.limits.handshake_burst_per_ip = 5;
    })
    .await;
    let mut by = bystander(&server).await; // the first of the burst
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(upgrade_status(&server.ws_url(), &[]).await);
    }
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert!(refused >= 5, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 101 || *s == 429),
        "{statuses:?}"
    );
    let (_, head, _) = pulsegate_testkit::raw_upgrade(server.addr, "/ws", &[]).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    assert_served(&server, &mut by, 1).await;
    assert!(metric(&server, r#"pulsegate_rate_limited_total{what="handshake"}"#).await >= 5.0);
    assert!(
        metric(
            &server,
            r#"pulsegate_connections_rejected_total{reason="rate_limit"}"#
        )
        .await
            >= 5.0
    );
    // The bucket refills: after a second, an upgrade passes again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(upgrade_status(&server.ws_url(), &[]).await, 101);
}

#[tokio::test]
async fn a_publish_flood_is_limited_per_connection_without_gaps_for_subscribers() {
    let server = TestServer::start_with(|c| c.limits.publish_rate = 20).await;
    let mut by = bystander(&server).await;
    let (mut sub, _) = WsClient::connect(&server.ws_url()).await;
    subscribe(&mut sub, "flood").await;
    let (mut p, _) = WsClient::connect(&server.ws_url()).await;
    for i in 0..200 {
        p.send_json(json!({"op": "pub", "id": i, "topic": "flood", "data": i}))
            .await;
    }
    let (mut ok, mut limited) = (0u64, 0u64);
    for _ in 0..200 {
        let r = p.recv_json().await;
        match (r["op"].as_str(), r["code"].as_str()) {
            (Some("ok"), _) => ok += 1,
            (Some("error"), Some("limit")) => limited += 1,
            other => panic!("unexpected reply {other:?}: {r}"),
        }
    }
    assert!((20..=30).contains(&ok), "ok {ok}, limited {limited}");
    assert_eq!(ok + limited, 200);
    // The subscriber sees exactly the accepted messages, seq 1..=ok, no gap.
    for seq in 1..=ok {
        assert_eq!(recv_msg(&mut sub).await["seq"], seq);
    }
    assert_served(&server, &mut by, 2).await;
    // A refused publish is not a malformed frame: the connection stays open.
    let r = p.request(json!({"op": "ping", "id": "still"})).await;
    assert_eq!(r["op"], "pong");
    assert!(metric(&server, r#"pulsegate_rate_limited_total{what="publish"}"#).await >= 170.0);
}

#[tokio::test]
async fn http_publishes_are_limited_per_client_address() {
    let server = TestServer::start_with(|c| c.limits.publish_rate = 5).await;
    let mut statuses = Vec::new();
    for i in 0..8 {
        let (s, _) =
            pulsegate_testkit::post_json(server.addr, "/api/publish/h", &i.to_string()).await;
        statuses.push(s);
    }
    assert_eq!(&statuses[..5], &[200; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    let (_, body) = pulsegate_testkit::post_json(server.addr, "/api/publish/h", "9").await;
    assert_eq!(body["error"], "rate_limited", "{body}");
}

#[tokio::test]
async fn ten_thousand_subscriptions_from_one_connection_stop_at_the_limit() {
    let server = TestServer::start().await;
    let mut by = bystander(&server).await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;
    for i in 0..10_000 {
        c.send_json(json!({"op": "sub", "id": i, "topic": format!("bomb/{i}")}))
            .await;
    }
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..10_000 {
        let r = c.recv_json().await;
        match r["op"].as_str() {
            Some("ok") => ok += 1,
            _ if r["code"] == "limit" => limited += 1,
            _ => panic!("unexpected {r}"),
        }
    }
    assert_eq!((ok, limited), (1000, 9000));
    let (_, stats) = get_json(server.addr, "/api/stats").await;
    assert_eq!(stats["subscriptions"], 1001, "{stats}");
    assert_served(&server, &mut by, 3).await;
}

#[tokio::test]
async fn patterns_with_too_many_wildcards_are_refused() {
    let server = TestServer::start().await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;
    let bomb = ["+"; 9].join("/");
    let r = c
        .request(json!({"op": "sub", "id": 1, "topic": bomb}))
        .await;
    assert_eq!(r["code"], "bad_request", "{r}");
    assert!(r["message"]
        .as_str()
        .unwrap()
        .contains("max_pattern_wildcards"));
    let ok = ["+"; 8].join("/");
    let r = c.request(json!({"op": "sub", "id": 2, "topic": ok})).await;
    assert_eq!(r["op"], "ok", "{r}");
}

#[tokio::test]
async fn ping_floods_are_answered_without_starving_others() {
    let server = TestServer::start().await;
    let mut by = bystander(&server).await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;
    for i in 0..5000 {
        c.send_json(json!({"op": "ping", "id": i})).await;
    }
    assert_served(&server, &mut by, 4).await;
    for i in 0..5000 {
        let r = c.recv_json().await;
        assert_eq!(
            (r["op"].as_str(), r["id"].as_u64()),
            (Some("pong"), Some(i))
        );
    }
    // WebSocket-level pings: each is answered with a pong by the server.
    let (status, _, mut raw) = pulsegate_testkit::raw_upgrade(server.addr, "/ws", &[]).await;
    assert_eq!(status, 101);
    for _ in 0..2000 {
        raw.send_frame(0x9, b"x").await;
    }
    let mut pongs = 0;
    while pongs < 2000 {
        let (op, _) = raw.read_frame().await.expect("frame");
        if op == 0xA {
            pongs += 1;
        }
    }
    assert_served(&server, &mut by, 5).await;
}

#[tokio::test]
async fn empty_maximal_and_endlessly_fragmented_frames() {
    let server = TestServer::start_with(|c| c.limits.max_message_bytes = 4096).await;
    let mut by = bystander(&server).await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;
    // Zero-length text frame: not an object, answered and survived.
    c.send_text("").await;
    assert_eq!(c.recv_json().await["code"], "bad_request");
    // A `pub` frame of exactly max_message_bytes is accepted.
    let head = r#"{"op":"pub","id":1,"topic":"big","data":""#;
    let tail = r#""}"#;
    let fill = "x".repeat(4096 - head.len() - tail.len());
    let frame = format!("{head}{fill}{tail}");
    assert_eq!(frame.len(), 4096);
    c.send_text(&frame).await;
    assert_eq!(c.recv_json().await["op"], "ok");

    // A message fragmented into 1-byte continuation frames past the limit: 1009.
    let (status, _, mut raw) = pulsegate_testkit::raw_upgrade(server.addr, "/ws", &[]).await;
    assert_eq!(status, 101);
    let mask = [1u8, 2, 3, 4];
    let frag = |opcode: u8, fin: bool| {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode, 0x80 | 1];
        f.extend_from_slice(&mask);
        f.push(b'{' ^ mask[0]);
        f
    };
    // 4097 one-byte fragments: the last one crosses the limit, and nothing
    // is left unread behind it (unread bytes would turn the close into a reset).
    let mut bytes = frag(0x1, false);
    for _ in 0..4096 {
        bytes.extend(frag(0x0, false));
    }
    raw.stream
        .write_all(&bytes)
        .await
        .expect("fragments written");
    let close = raw.read_close().await;
    assert_eq!(close.map(|c| c.0), Some(1009));
    assert_served(&server, &mut by, 6).await;
}

#[tokio::test]
async fn queued_bytes_over_the_global_budget_refuse_newcomers_until_drained() {
    let server = TestServer::start_with(|c| {
        c.limits.max_queued_bytes_total = 64 * 1024;
        c.delivery.queue_max_bytes = 64 * 1024 * 1024;
        c.delivery.queue_max_messages = 100_000;
    })
    .await;
    let (mut slow, _) = WsClient::connect_with_recv_buffer(&server.ws_url(), 4096).await;
    subscribe(&mut slow, "heavy").await;
    let payload = "y".repeat(16 * 1024);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let batch: Vec<Value> = (0..50)
            .map(|_| json!({"topic": "heavy", "data": payload}))
            .collect();
        let (s, _, _) = http(
            server.addr,
            "POST",
            "/api/publish",
            &[("Content-Type", "application/json")],
            Value::from(batch).to_string().as_bytes(),
        )
        .await;
        assert_eq!(s, 200);
        let (status, ready) = get_json(server.addr, "/readyz").await;
        if status == 503 {
            assert_eq!(ready["reason"], "at_capacity", "{ready}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "budget never exceeded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(upgrade_status(&server.ws_url(), &[]).await, 503);
    assert!(
        metric(
            &server,
            r#"pulsegate_connections_rejected_total{reason="memory_budget"}"#
        )
        .await
            >= 1.0
    );
    // The slow reader goes away; within a sample or two the server takes newcomers again.
    drop(slow);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = get_json(server.addr, "/readyz").await;
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "budget never recovered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(upgrade_status(&server.ws_url(), &[]).await, 101);
}

#[tokio::test]
async fn forwarded_addresses_count_only_behind_trusted_proxies() {
    let xff = |ip: &'static str| [("X-Forwarded-For", ip)];
    // Not trusted: every client behind the "proxy" shares its address.
    let plain = TestServer::start_with(|c| c.limits.max_connections_per_ip = 1).await;
    let (s1, _, _c1) = pulsegate_testkit::raw_upgrade(plain.addr, "/ws", &xff("203.0.113.1")).await;
    let (s2, _, _c2) = pulsegate_testkit::raw_upgrade(plain.addr, "/ws", &xff("203.0.113.2")).await;
    assert_eq!((s1, s2), (101, 429));

    // Trusted: each forwarded client has its own per-IP allowance.
    let proxied = TestServer::start_with(|c| {
        c.limits.max_connections_per_ip = 1;
        c.server.trusted_proxies = vec!["127.0.0.1".into()];
        c.admin.token = Some(pulsegate_server::config::Secret::new(
            "proxy-test-admin-token",
        ));
    })
    .await;
    let (a, _, _k1) =
        pulsegate_testkit::raw_upgrade(proxied.addr, "/ws", &xff("203.0.113.1")).await;
    let (b, _, _k2) =
        pulsegate_testkit::raw_upgrade(proxied.addr, "/ws", &xff("203.0.113.2")).await;
    // A client cannot pick its address by prepending to the header.
    let (c, _, _k3) =
        pulsegate_testkit::raw_upgrade(proxied.addr, "/ws", &xff("198.51.100.9, 203.0.113.1"))
            .await;
    assert_eq!((a, b, c), (101, 101, 429));
    let auth = [("Authorization", "Bearer proxy-test-admin-token")];
    let (_, _, body) = http(proxied.addr, "GET", "/api/connections", &auth, b"").await;
    let list: Value = serde_json::from_slice(&body).unwrap();
    let ips: Vec<&str> = list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_ip"].as_str().unwrap())
        .collect();
    assert_eq!(ips, ["203.0.113.1", "203.0.113.2"], "{list}");
}

#[tokio::test]
async fn a_connection_that_never_sends_a_frame_is_closed() {
    let server =
        TestServer::start_with(|c| c.server.first_frame_timeout = Duration::from_millis(400)).await;
    let (mut silent, _) = WsClient::connect(&server.ws_url()).await;
    let (mut talker, _) = WsClient::connect(&server.ws_url()).await;
    let r = talker.request(json!({"op": "ping", "id": 1})).await;
    assert_eq!(r["op"], "pong");
    let close = silent.recv_close(Duration::from_secs(3)).await;
    assert_eq!(
        close,
        Some((
            1008,
            "no frame within server.first_frame_timeout".to_string()
        ))
    );
    // One frame was enough: the other connection stays.
    assert!(talker
        .try_recv_json(Duration::from_millis(600))
        .await
        .is_none());
    let r = talker.request(json!({"op": "ping", "id": 2})).await;
    assert_eq!(r["op"], "pong");
}
