//! One node's side of clustering, in process, against a real Redis and a
//! real NATS started on free ports: the node subscribes to the backplane once
//! per pattern (not per client) and only while it has local subscribers;
//! an outage turns `/readyz` to 503 `backplane_down` and refuses publishes
//! (HTTP 503, WebSocket `error` `unavailable`); metrics name the backplane;
//! the backplane URL's password never shows in `check-config --print`.
//! Multi-process scenarios (three nodes, SIGKILL, storms) are in
//! `crates/pulsegate/tests/cluster.rs`.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pulsegate_server::config::{BackplaneKind, ServerUrl};
use pulsegate_testkit::services::Service;
use pulsegate_testkit::{get_json, http, post_json, TestServer, WsClient};
use serde_json::json;
use support::subscribe;

async fn node(kind: BackplaneKind, url: &str, prefix: &str) -> TestServer {
    let url = url.to_string();
    let prefix = prefix.to_string();
    TestServer::start_with(move |c| {
        c.cluster.backplane = kind;
        c.cluster.prefix = prefix;
        match kind {
            BackplaneKind::Nats => c.cluster.nats_url = ServerUrl::new(url),
            _ => c.cluster.redis_url = ServerUrl::new(url),
        }
        c.limits.handshake_rate_per_ip = 0;
    })
    .await
}

async fn metrics(server: &TestServer) -> HashMap<String, f64> {
    let (status, _, body) = http(server.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    String::from_utf8(body)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

async fn wait_until(what: &str, limit: Duration, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ready(server: &TestServer) -> (u16, serde_json::Value) {
    get_json(server.addr, "/readyz").await
}

async fn one_subscription_per_pattern_and_outage(kind: BackplaneKind, mut service: Service) {
    let a = node(kind, &service.url(), "t1").await;
    let b = node(kind, &service.url(), "t1").await;
    wait_until("node a ready", Duration::from_secs(15), async || {
        ready(&a).await.0 == 200
    })
    .await;
    wait_until("node b ready", Duration::from_secs(15), async || {
        ready(&b).await.0 == 200
    })
    .await;
    let m = metrics(&a).await;
    let name = if kind == BackplaneKind::Nats {
        "nats"
    } else {
        "redis"
    };
    assert_eq!(
        m[&format!("pulsegate_backplane_up{{backplane=\"{name}\"}}")],
        1.0
    );
    assert_eq!(m["pulsegate_backplane_patterns"], 0.0);

    // 50 clients on two patterns: two backplane subscriptions.
    let mut clients = Vec::new();
    for i in 0..50 {
        let (mut c, _) = WsClient::connect(&b.ws_url()).await;
        subscribe(&mut c, if i % 2 == 0 { "grid/+" } else { "grid/m1" }).await;
        clients.push(c);
    }
    assert_eq!(metrics(&b).await["pulsegate_backplane_patterns"], 2.0);
    let (status, stamp) = post_json(a.addr, "/api/publish/grid/m1", "{\"v\":1}").await;
    assert_eq!(status, 200, "{stamp}");
    for c in &mut clients {
        let m = c.recv_json().await;
        assert_eq!(
            (m["topic"].as_str(), m["seq"].as_u64()),
            (Some("grid/m1"), Some(1))
        );
    }
    let received = metrics(&b).await["pulsegate_backplane_received_total"];
    assert!(
        received >= 1.0,
        "one message per matching pattern, got {received}"
    );

    // The backplane goes away: not ready, publishes refused, nothing stored.
    service.stop();
    wait_until(
        "backplane_down on /readyz",
        Duration::from_secs(15),
        async || {
            let (s, body) = ready(&a).await;
            s == 503 && body.to_string().contains("backplane_down")
        },
    )
    .await;
    let (status, body) = post_json(a.addr, "/api/publish/grid/m1", "{\"v\":2}").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "backplane_down", "{body}");
    let (mut publisher, _) = WsClient::connect(&a.ws_url()).await;
    let reply = publisher
        .request(json!({"op": "pub", "id": 7, "topic": "grid/m1", "data": 2}))
        .await;
    assert_eq!(reply["op"], "error", "{reply}");
    assert_eq!(reply["code"], "unavailable", "{reply}");
    assert_eq!(
        metrics(&a).await[&format!("pulsegate_backplane_up{{backplane=\"{name}\"}}")],
        0.0
    );

    // Back: ready again, existing subscriptions deliver without resubscribing.
    service.start_again();
    wait_until("ready again", Duration::from_secs(30), async || {
        ready(&a).await.0 == 200 && ready(&b).await.0 == 200
    })
    .await;
    let mut stored = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while stored.is_none() {
        let (status, body) = post_json(a.addr, "/api/publish/grid/m1", "{\"v\":3}").await;
        if status == 200 {
            stored = Some(body);
        } else {
            assert!(Instant::now() < deadline, "publish after recovery: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for c in &mut clients {
        let m = c.recv_json().await;
        assert_eq!(m["data"], json!({"v": 3}), "{m}");
    }

    // The last client of a pattern gone: the node unsubscribes.
    for mut c in clients {
        c.close().await;
    }
    wait_until("patterns back to 0", Duration::from_secs(10), async || {
        metrics(&b).await["pulsegate_backplane_patterns"] == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_one_subscription_per_pattern_and_outage() {
    one_subscription_per_pattern_and_outage(BackplaneKind::Redis, Service::redis()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_one_subscription_per_pattern_and_outage() {
    one_subscription_per_pattern_and_outage(BackplaneKind::Nats, Service::nats()).await;
}

#[tokio::test]
async fn a_node_starts_while_its_backplane_is_down_and_says_so() {
    let mut service = Service::redis();
    service.stop();
    let a = node(BackplaneKind::Redis, &service.url(), "t2").await;
    let (status, body) = ready(&a).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("backplane_down"), "{body}");
    service.start_again();
    wait_until(
        "ready once Redis is up",
        Duration::from_secs(30),
        async || ready(&a).await.0 == 200,
    )
    .await;
}

#[test]
fn backplane_passwords_never_show() {
    let mut c = pulsegate_server::Config::default();
    c.cluster.backplane = BackplaneKind::Redis;
    c.cluster.redis_url = ServerUrl::new("redis://:hunter2-secret@10.0.0.5:6379/0");
    c.cluster.nats_url = ServerUrl::new("nats://bob:hunter2-secret@10.0.0.5:4222");
    let printed = c.to_toml_string();
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(
        printed.contains("redis://:***@10.0.0.5:6379/0"),
        "{printed}"
    );
    assert!(!format!("{c:?}").contains("hunter2"));
}
