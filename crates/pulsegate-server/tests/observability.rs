//! Observability against a real server: `/metrics` (content, format, lint by
//! `promtool`), `/api/stats` rates and quantiles, the admin API, the
//! reserved `$sys/` topics and the dashboard's sign-in.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use pulsegate_server::config::Secret;
use pulsegate_testkit::{get_json, http, post_json, wait_for_stats, TestServer, WsClient};
use serde_json::{json, Value};
use support::{publish, recv_msg, subscribe};

const TOKEN: &str = "test-admin-token-0123456789";

/// `GET /metrics` in the Prometheus text format, parsed into
/// `name{labels}` → value (labels as printed).
async fn scrape(server: &TestServer) -> (String, HashMap<String, f64>) {
    let (status, head, body) = http(server.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let text = String::from_utf8(body).unwrap();
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect();
    (text, samples)
}

fn sample(samples: &HashMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key} in the scrape"))
}

#[tokio::test]
async fn metrics_count_connections_traffic_lag_closes_and_errors() {
    let server = TestServer::start().await;
    let (mut sub, _) = WsClient::connect(&server.ws_url()).await;
    subscribe(&mut sub, "site/+/power").await;
    let (mut publisher, _) = WsClient::connect(&server.ws_url()).await;
    for i in 0..5 {
        publish(server.addr, "site/a/power", json!({"w": i})).await;
    }
    for i in 0..3 {
        let ok = publisher
            .request(json!({"op": "pub", "id": i, "topic": "site/b/power", "data": i}))
            .await;
        assert_eq!(ok["op"], "ok", "{ok}");
    }
    for _ in 0..8 {
        recv_msg(&mut sub).await;
    }
    // One malformed frame and one unknown op.
    publisher.send_text("not json").await;
    assert_eq!(publisher.recv_json().await["code"], "bad_request");
    let r = publisher.request(json!({"op": "nope", "id": 9})).await;
    assert_eq!(r["code"], "unknown_op", "{r}");
    // A refused upgrade (Origin).
    let status =
        pulsegate_testkit::upgrade_status(&server.ws_url(), &[("Origin", "https://evil.example")])
            .await;
    assert_eq!(status, 403);
    // A client-initiated close.
    publisher.close().await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let (text, m) = loop {
        let (text, m) = scrape(&server).await;
        let closed = m
            .get(r#"pulsegate_connection_closes_total{code="1000",initiator="client"}"#)
            .copied()
            .unwrap_or(0.0);
        if closed >= 1.0 || tokio::time::Instant::now() > deadline {
            break (text, m);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let get = |k: &str| sample(&m, k);
    assert_eq!(get("pulsegate_connections_active"), 1.0, "{text}");
    assert_eq!(
        get(r#"pulsegate_connections_accepted_total{endpoint="ws"}"#),
        2.0
    );
    assert_eq!(
        get(r#"pulsegate_connections_rejected_total{reason="origin"}"#),
        1.0
    );
    assert_eq!(
        get(r#"pulsegate_connection_closes_total{code="1000",initiator="client"}"#),
        1.0
    );
    assert_eq!(get("pulsegate_connection_duration_seconds_count"), 1.0);
    assert_eq!(get("pulsegate_handshake_duration_seconds_count"), 2.0);
    assert_eq!(get(r#"pulsegate_publishes_total{source="http"}"#), 5.0);
    assert_eq!(get(r#"pulsegate_publishes_total{source="ws"}"#), 3.0);
    assert_eq!(get("pulsegate_publish_payload_bytes_count"), 8.0);
    assert_eq!(get("pulsegate_publish_fanout_seconds_count"), 8.0);
    // Every delivery is one lag observation and one data frame.
    assert_eq!(get("pulsegate_delivery_lag_seconds_count"), 8.0);
    assert_eq!(
        get(r#"pulsegate_messages_sent_total{codec="json",kind="data"}"#),
        8.0
    );
    assert_eq!(
        get(r#"pulsegate_messages_received_total{codec="json",kind="data"}"#),
        3.0
    );
    assert!(get(r#"pulsegate_sent_bytes_total{codec="json",kind="data"}"#) > 8.0 * 40.0);
    assert_eq!(get(r#"pulsegate_frame_errors_total{kind="bad_json"}"#), 1.0);
    assert_eq!(
        get(r#"pulsegate_frame_errors_total{kind="unknown_op"}"#),
        1.0
    );
    assert_eq!(get("pulsegate_subscriptions_active"), 1.0);
    assert_eq!(get("pulsegate_topics_active"), 2.0);
    assert_eq!(get("pulsegate_history_messages"), 8.0);
    assert_eq!(get("pulsegate_ready"), 1.0);
    assert_eq!(get(r#"pulsegate_not_ready{reason="at_capacity"}"#), 0.0);
    // Lag is sub-second on loopback: everything sits at or below the 1 s bucket.
    assert_eq!(
        get(r#"pulsegate_delivery_lag_seconds_bucket{le="1.0"}"#),
        8.0
    );
    assert!(get("process_resident_memory_bytes") > 1e6);
    assert!(get("process_open_fds") >= 3.0);
    assert!(get("process_max_fds") >= get("process_open_fds"));
    assert!(get("process_start_time_seconds") > 1.7e9);
    assert!(get("pulsegate_tokio_workers") >= 1.0);
    // No topic names or addresses as label values.
    assert!(!text.contains("site/"), "{text}");
    assert!(!text.contains("127.0.0.1"), "{text}");
}

#[tokio::test]
async fn a_live_scrape_passes_promtool_check_metrics() {
    let server = TestServer::start().await;
    let (mut sub, _) = WsClient::connect(&server.ws_url()).await;
    subscribe(&mut sub, "a").await;
    publish(server.addr, "a", json!(1)).await;
    recv_msg(&mut sub).await;
    let (text, _) = scrape(&server).await;
    let mut child = match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "promtool not runnable ({e}); install Debian's `prometheus` package (./scripts/test-all does)"
        ),
    };
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every metric family in a scrape is documented in docs/OBSERVABILITY.md,
/// and every documented metric is in the scrape.
#[tokio::test]
async fn every_metric_is_documented_and_every_documented_metric_exists() {
    let server = TestServer::start().await;
    let (text, _) = scrape(&server).await;
    let scraped: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    let doc = include_str!("../../../docs/OBSERVABILITY.md");
    let documented: std::collections::BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(name, _)| name.to_string()))
        .filter(|n| n.starts_with("pulsegate_") || n.starts_with("process_"))
        .collect();
    let missing: Vec<_> = scraped.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&scraped).collect();
    assert!(missing.is_empty(), "undocumented metrics: {missing:?}");
    assert!(stale.is_empty(), "documented but not exposed: {stale:?}");
}

#[tokio::test]
async fn openmetrics_is_served_when_asked_and_metrics_can_be_disabled() {
    let server = TestServer::start().await;
    let accept = [("Accept", "application/openmetrics-text;version=1.0.0")];
    let (status, head, body) = http(server.addr, "GET", "/metrics", &accept, b"").await;
    assert_eq!(status, 200);
    assert!(head.contains("application/openmetrics-text"), "{head}");
    let text = String::from_utf8(body).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("# TYPE pulsegate_publishes counter"),
        "{text}"
    );

    let off = TestServer::start_with(|c| c.metrics.enabled = false).await;
    let (status, body) = get_json(off.addr, "/metrics").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("metrics_disabled"))
    );
    // Counters (and so /api/stats) keep working without histograms.
    publish(off.addr, "t", json!(1)).await;
    let stats = wait_for_stats(off.addr, "published", |s| s["published"] == 1).await;
    assert_eq!(
        stats["lag_ms"],
        json!({"p50": null, "p99": null}),
        "{stats}"
    );
}

#[tokio::test]
async fn api_stats_reports_rates_and_delivery_lag_quantiles() {
    let server = TestServer::start().await;
    let (mut sub, _) = WsClient::connect(&server.ws_url()).await;
    subscribe(&mut sub, "r").await;
    for i in 0..20 {
        publish(server.addr, "r", json!(i)).await;
        recv_msg(&mut sub).await;
    }
    // The sampler ticks once a second; wait for a window that includes the traffic.
    let stats = wait_for_stats(server.addr, "rates and lag", |s| {
        s["rates"]["in"]["10s"].as_f64().unwrap_or(0.0) > 0.0 && s["lag_ms"]["p99"].is_number()
    })
    .await;
    assert_eq!(stats["published"], 20, "{stats}");
    assert_eq!(stats["delivered"], 20, "{stats}");
    assert!(
        stats["rates"]["out"]["10s"].as_f64().unwrap() > 0.0,
        "{stats}"
    );
    let p50 = stats["lag_ms"]["p50"].as_f64().unwrap();
    let p99 = stats["lag_ms"]["p99"].as_f64().unwrap();
    assert!(0.0 < p50 && p50 <= p99 && p99 < 1000.0, "{stats}");
    for key in ["1s", "10s", "60s"] {
        assert!(stats["rates"]["in"][key].is_number(), "{stats}");
    }
    // /api/stats does not list addresses or topic names (it needs no token).
    assert!(stats.get("conns").is_none() && stats.get("top_topics").is_none());
}

#[tokio::test]
async fn admin_api_is_off_without_a_token_and_needs_it_when_set() {
    let open = TestServer::start().await;
    let (status, body) = get_json(open.addr, "/api/connections").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("admin_disabled"))
    );

    let server = TestServer::start_with(|c| c.admin.token = Some(Secret::new(TOKEN))).await;
    let (status, head, _) = http(server.addr, "GET", "/api/connections", &[], b"").await;
    assert_eq!(status, 401, "{head}");
    assert!(head
        .to_ascii_lowercase()
        .contains("www-authenticate: bearer"));
    let wrong = [("Authorization", "Bearer test-admin-token-0123456780")];
    let (status, _, _) = http(server.addr, "GET", "/api/topics", &wrong, b"").await;
    assert_eq!(status, 401);
    // The query-string token is for the dashboard page only.
    let q = format!("/api/connections?token={TOKEN}");
    let (status, _, _) = http(server.addr, "GET", &q, &[], b"").await;
    assert_eq!(status, 401);
}

async fn admin_get(server: &TestServer, path: &str) -> Value {
    let auth = format!("Bearer {TOKEN}");
    let (status, _, body) = http(server.addr, "GET", path, &[("Authorization", &auth)], b"").await;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    assert_eq!(status, 200, "GET {path}: {v}");
    v
}

#[tokio::test]
async fn admin_api_lists_connections_and_topics_and_closes_a_connection() {
    let server = TestServer::start_with(|c| c.admin.token = Some(Secret::new(TOKEN))).await;
    let (mut a, welcome) = WsClient::connect(&server.ws_url()).await;
    let id = welcome["conn"].as_str().unwrap().to_string();
    subscribe(&mut a, "plant/+/temp").await;
    let (_b, _) = WsClient::connect(&server.ws_url()).await;
    for i in 0..3 {
        publish(server.addr, "plant/1/temp", json!(i)).await;
        recv_msg(&mut a).await;
    }

    let list = admin_get(&server, "/api/connections?limit=1").await;
    assert_eq!(list["total"], 2, "{list}");
    assert_eq!(list["next_offset"], 1, "{list}");
    let row = &list["connections"][0];
    assert_eq!(row["id"], id.as_str(), "{row}");
    assert!(
        row["remote"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{row}"
    );
    assert_eq!(row["subprotocol"], "pulsegate.v1.json");
    assert_eq!(row["subscriptions"], 1);
    assert_eq!(row["queue_depth"], 0);
    // welcome + sub ok + 3 messages.
    assert_eq!(row["messages_out"], 5, "{row}");
    assert_eq!(row["messages_in"], 1, "{row}");
    assert!(row["bytes_out"].as_u64().unwrap() > 100, "{row}");
    assert!(row["connected_since"].as_str().unwrap().ends_with('Z'));
    let page2 = admin_get(&server, "/api/connections?offset=1&limit=1").await;
    assert_eq!(page2["next_offset"], Value::Null, "{page2}");
    assert_ne!(page2["connections"][0]["id"], id.as_str());

    // Topic rates come from the sampler (once a second): wait for a pass
    // that saw all three messages.
    let topics = wait_for(&server, "/api/topics", |t| {
        t["topics"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["topic"] == "plant/1/temp" && x["seq"] == 3)
        })
    })
    .await;
    let t = topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["topic"] == "plant/1/temp")
        .unwrap();
    assert_eq!(
        (t["subscribers"].clone(), t["seq"].clone()),
        (json!(1), json!(3)),
        "{t}"
    );

    let auth = format!("Bearer {TOKEN}");
    let path = format!("/api/connections/{id}");
    let (status, _, body) = http(
        server.addr,
        "DELETE",
        &path,
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let close = a.recv_close(Duration::from_secs(5)).await;
    assert_eq!(close.map(|c| c.0), Some(4002));
    let (status, _, _) = http(
        server.addr,
        "DELETE",
        &path,
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, _) = http(
        server.addr,
        "DELETE",
        "/api/connections/x",
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(status, 400);
    // Counted when the close handshake ends (the client here never answers: 2 s grace).
    let key = r#"pulsegate_connection_closes_total{code="4002",initiator="server"}"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, m) = scrape(&server).await;
        if m.get(key) == Some(&1.0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no {key} sample");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for(server: &TestServer, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = admin_get(server, path).await;
        if done(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{path}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sys_topics_are_for_operators_and_never_match_wildcards() {
    let server = TestServer::start_with(|c| c.admin.token = Some(Secret::new(TOKEN))).await;
    // Without the token: forbidden, even from loopback once a token is set.
    let (mut user, _) = WsClient::connect(&server.ws_url()).await;
    let r = user
        .request(json!({"op": "sub", "id": 1, "topic": "$sys/stats"}))
        .await;
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{r}"
    );
    subscribe(&mut user, "#").await;
    let r = user
        .request(json!({"op": "pub", "id": 2, "topic": "$sys/stats", "data": 1}))
        .await;
    assert_eq!(r["code"], "forbidden", "{r}");
    let (status, body) = post_json(server.addr, "/api/publish/$sys/x", "1").await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    let (status, _) = get_json(server.addr, "/api/topics/$sys/stats").await;
    assert_eq!(status, 403);

    // With the token on the upgrade: the stats arrive once a second.
    let auth = format!("Bearer {TOKEN}");
    let mut op = WsClient::connect_with(&server.ws_url(), &[("Authorization", &auth)])
        .await
        .expect("admin upgrade");
    assert_eq!(op.recv_json().await["op"], "welcome");
    let r = op
        .request(json!({"op": "sub", "id": 1, "topic": "$sys/stats"}))
        .await;
    assert_eq!(r, json!({"op": "ok", "id": 1}));
    let m = tokio::time::timeout(Duration::from_secs(5), recv_msg(&mut op))
        .await
        .expect("a $sys/stats message within 5 s");
    assert_eq!(m["topic"], "$sys/stats");
    let d = &m["data"];
    assert_eq!(d["connections"], 2, "{d}");
    assert!(d["conns"].as_array().unwrap().len() == 2, "{d}");
    assert!(d["rates"]["out"]["1s"].is_number(), "{d}");
    // The `#` subscriber saw none of it, and $sys traffic is not user traffic.
    assert!(user
        .try_recv_json(Duration::from_millis(300))
        .await
        .is_none());
    assert_eq!(d["published"], 0, "{d}");
    assert_eq!(d["delivered"], 0, "{d}");
}

#[tokio::test]
async fn dashboard_sign_in_sets_a_cookie_and_redirects() {
    // No token: served to loopback clients.
    let open = TestServer::start().await;
    let (status, head, body) = http(open.addr, "GET", "/dashboard", &[], b"").await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("text/html"));
    assert!(String::from_utf8_lossy(&body).contains("$sys/stats"));

    let server = TestServer::start_with(|c| c.admin.token = Some(Secret::new(TOKEN))).await;
    let (status, _, _) = http(server.addr, "GET", "/dashboard", &[], b"").await;
    assert_eq!(status, 401);
    let (status, _, _) = http(
        server.addr,
        "GET",
        "/dashboard?token=wrong-token-000000",
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 401);
    let (status, head, _) = http(
        server.addr,
        "GET",
        &format!("/dashboard?token={TOKEN}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 303, "{head}");
    assert!(head.contains("location: /dashboard"), "{head}");
    let cookie = pulsegate_testkit::header_value(&head, "set-cookie").expect("a cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(TOKEN),
        "the cookie must not hold the token: {cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let (status, _, body) = http(server.addr, "GET", "/dashboard", &[("Cookie", &pair)], b"").await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("<html"));
    // The same cookie makes a WebSocket upgrade an operator connection.
    let mut op = WsClient::connect_with(&server.ws_url(), &[("Cookie", &pair)])
        .await
        .expect("upgrade");
    assert_eq!(op.recv_json().await["op"], "welcome");
    let r = op
        .request(json!({"op": "sub", "id": 1, "topic": "$sys/stats"}))
        .await;
    assert_eq!(r, json!({"op": "ok", "id": 1}));
}
