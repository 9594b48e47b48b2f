//! The plain HTTP routes, against a real server: publishing (one message or
//! a batch), last value, history, health and readiness, and the errors each
//! returns. Every error body is `{"error": code, "message": text}`.

mod support;

use pulsegate_testkit::{get_json, http, post_json, TestServer, WsClient};
use serde_json::{json, Value};
use support::{assert_nothing_queued, now_micros, publish, recv_msg, subscribe};

/// Status and the `error` code of an error response.
fn error_code(resp: &(u16, Value)) -> (u16, &str) {
    (
        resp.0,
        resp.1["error"].as_str().unwrap_or("<no error field>"),
    )
}

#[tokio::test]
async fn publish_to_a_topic_in_the_path_returns_its_stamp_and_delivers_the_body() {
    let server = TestServer::start().await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;
    subscribe(&mut c, "site/a/power").await;

    let (status, first) =
        post_json(server.addr, "/api/publish/site/a/power", r#"{"w": 1520}"#).await;
    assert_eq!(status, 200, "{first}");
    let epoch = first["epoch"].clone();
    assert!(epoch.is_string(), "{first}");
    assert_eq!(
        first,
        json!({"topic": "site/a/power", "seq": 1, "epoch": epoch})
    );
    let (status, second) = post_json(server.addr, "/api/publish/site/a/power", "[1, 2]").await;
    assert_eq!(
        (status, second),
        (
            200,
            json!({"topic": "site/a/power", "seq": 2, "epoch": epoch})
        )
    );

    assert_eq!(recv_msg(&mut c).await["data"], json!({"w": 1520}));
    assert_eq!(recv_msg(&mut c).await["data"], json!([1, 2]));
    let (_, stats) = get_json(server.addr, "/api/stats").await;
    assert_eq!(
        (&stats["published"], &stats["published_http"]),
        (&json!(2), &json!(2)),
        "{stats}"
    );
}

/// Consecutive items of one topic are published as one burst: the stamps
/// and the order subscribers see must be those of publishing item by item.
#[tokio::test]
async fn batch_publish_returns_one_stamp_per_item_in_order() {
    let server = TestServer::start().await;
    let (mut sub, _) = WsClient::connect(&server.ws_url()).await;
    subscribe(&mut sub, "site/+/power").await;
    let topics = ["a", "a", "b", "a", "a", "a", "b", "b"];
    let body: Vec<Value> = topics
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"topic": format!("site/{t}/power"), "data": i}))
        .collect();

    let (status, stamps) = post_json(server.addr, "/api/publish", &json!(body).to_string()).await;
    assert_eq!(status, 200, "{stamps}");
    let (ea, eb) = (stamps[0]["epoch"].clone(), stamps[2]["epoch"].clone());
    let mut seqs = std::collections::HashMap::new();
    let want: Vec<Value> = topics
        .iter()
        .map(|t| {
            let seq = seqs.entry(*t).or_insert(0);
            *seq += 1;
            let epoch = if *t == "a" { &ea } else { &eb };
            json!({"topic": format!("site/{t}/power"), "seq": *seq, "epoch": epoch})
        })
        .collect();
    assert_eq!(stamps, json!(want));
    for (i, stamp) in want.iter().enumerate() {
        let m = recv_msg(&mut sub).await;
        assert_eq!(
            (&m["topic"], &m["seq"]),
            (&stamp["topic"], &stamp["seq"]),
            "{m}"
        );
        assert_eq!(m["data"], i, "{m}");
    }
    assert_nothing_queued(&mut sub).await;
    let (_, last) = get_json(server.addr, "/api/topics/site/a/power").await;
    assert_eq!(last["data"], 5);
}

#[tokio::test]
async fn a_batch_with_one_invalid_topic_publishes_nothing() {
    let server = TestServer::start().await;
    let body = json!([
        {"topic": "site/a/power", "data": 1},
        {"topic": "site/+/x", "data": 2},
    ]);

    let resp = post_json(server.addr, "/api/publish", &body.to_string()).await;
    assert_eq!(error_code(&resp), (400, "bad_topic"));
    assert!(
        resp.1["message"].as_str().unwrap().starts_with("item 1:"),
        "{}",
        resp.1
    );
    assert_eq!(
        error_code(&get_json(server.addr, "/api/topics/site/a/power").await),
        (404, "not_found")
    );
}

#[tokio::test]
async fn an_invalid_json_body_is_400_bad_json() {
    let server = TestServer::start().await;

    for (path, body) in [
        ("/api/publish/t", "{nope"),
        ("/api/publish/t", ""),
        ("/api/publish/t", "1 2"),
        ("/api/publish", "not json"),
        ("/api/publish", r#"{"topic": "t", "data": 1}"#),
        (
            "/api/publish",
            r#"[{"topic": "t", "data": 1, "extra": true}]"#,
        ),
        ("/api/publish", r#"[{"topic": "t"}]"#),
    ] {
        let resp = post_json(server.addr, path, body).await;
        assert_eq!(
            error_code(&resp),
            (400, "bad_json"),
            "POST {path} {body:?}: {}",
            resp.1
        );
    }
    let (_, stats) = get_json(server.addr, "/api/stats").await;
    assert_eq!(stats["published"], 0, "{stats}");
}

#[tokio::test]
async fn publishing_to_a_pattern_or_an_invalid_topic_is_400_bad_topic() {
    let server = TestServer::start_with(|c| c.limits.max_topic_length = 16).await;

    for path in [
        "/api/publish/site/+/x",
        "/api/publish/site/%23",
        "/api/publish/a//b",
        "/api/publish/a/../b",
        "/api/publish/xxxxxxxxxxxxxxxxx",
        "/api/publish/a/%FF",
    ] {
        let resp = post_json(server.addr, path, "1").await;
        assert_eq!(
            error_code(&resp),
            (400, "bad_topic"),
            "POST {path}: {}",
            resp.1
        );
    }
}

#[tokio::test]
async fn a_body_over_max_message_bytes_is_413() {
    let server = TestServer::start_with(|c| c.limits.max_message_bytes = 1024).await;
    let big = json!("x".repeat(2000)).to_string();

    assert_eq!(
        error_code(&post_json(server.addr, "/api/publish/t", &big).await),
        (413, "too_large")
    );
    let at_limit = json!("x".repeat(1022)).to_string();
    assert_eq!(at_limit.len(), 1024);
    assert_eq!(
        post_json(server.addr, "/api/publish/t", &at_limit).await.0,
        200
    );
}

#[tokio::test]
async fn last_value_of_a_topic_or_404() {
    let server = TestServer::start().await;
    let before = now_micros();
    publish(server.addr, "site/a/power", json!({"w": 1})).await;
    let stamp = publish(server.addr, "site/a/power", json!({"w": 2})).await;
    let after = now_micros();

    let (status, last) = get_json(server.addr, "/api/topics/site/a/power").await;
    assert_eq!(status, 200, "{last}");
    let ts = last["ts"].as_u64().expect("ts");
    assert!((before..=after).contains(&ts), "ts {ts}");
    assert_eq!(
        last,
        json!({"topic": "site/a/power", "seq": 2, "epoch": stamp["epoch"], "ts": ts, "data": {"w": 2}})
    );

    assert_eq!(
        error_code(&get_json(server.addr, "/api/topics/site/b/power").await),
        (404, "not_found")
    );
    assert_eq!(
        error_code(&get_json(server.addr, "/api/topics/site/+/power").await),
        (400, "bad_topic")
    );
}

#[tokio::test]
async fn history_since_and_limit_select_a_window() {
    let server = TestServer::start().await;
    let mut stamp = Value::Null;
    for n in 1..=5 {
        stamp = publish(server.addr, "site/a/power", json!({"n": n})).await;
    }

    let (status, h) = get_json(server.addr, "/api/history/site/a/power?since=1&limit=2").await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(
        (&h["topic"], &h["epoch"], &h["last_seq"]),
        (&json!("site/a/power"), &stamp["epoch"], &json!(5))
    );
    let window: Vec<(Value, Value)> = h["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| (m["seq"].clone(), m["data"].clone()))
        .collect();
    assert_eq!(
        window,
        vec![(json!(2), json!({"n": 2})), (json!(3), json!({"n": 3}))]
    );

    let (_, all) = get_json(server.addr, "/api/history/site/a/power").await;
    assert_eq!(
        all["messages"].as_array().unwrap().len(),
        5,
        "defaults: since=0"
    );
    let (_, none) = get_json(server.addr, "/api/history/site/a/power?since=5").await;
    assert_eq!(none["messages"], json!([]));

    for query in ["since=x", "limit=0", "limit=-1", "from=1"] {
        let resp = get_json(server.addr, &format!("/api/history/site/a/power?{query}")).await;
        assert_eq!(
            error_code(&resp),
            (400, "bad_request"),
            "{query}: {}",
            resp.1
        );
    }
    assert_eq!(
        error_code(&get_json(server.addr, "/api/history/nope").await),
        (404, "not_found")
    );
}

#[tokio::test]
async fn percent_encoded_topic_segments_are_decoded() {
    let server = TestServer::start().await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;
    subscribe(&mut c, "a b/c").await;

    let (status, stamp) = post_json(server.addr, "/api/publish/a%20b/c", "1").await;
    assert_eq!(
        (status, &stamp["topic"], &stamp["seq"]),
        (200, &json!("a b/c"), &json!(1))
    );
    let m = recv_msg(&mut c).await;
    assert_eq!((&m["topic"], &m["data"]), (&json!("a b/c"), &json!(1)));
    assert_nothing_queued(&mut c).await;

    let (status, last) = get_json(server.addr, "/api/topics/a%20b/c").await;
    assert_eq!((status, &last["topic"]), (200, &json!("a b/c")));
}

#[tokio::test]
async fn health_and_readiness_are_200_on_a_running_server() {
    let server = TestServer::start().await;
    assert_eq!(
        get_json(server.addr, "/healthz").await,
        (200, json!({"status": "ok"}))
    );
    assert_eq!(
        get_json(server.addr, "/readyz").await,
        (200, json!({"status": "ready"}))
    );
}

#[tokio::test]
async fn the_websocket_endpoints_without_an_upgrade_are_426() {
    let server = TestServer::start().await;
    for path in ["/ws", "/echo"] {
        let resp = get_json(server.addr, path).await;
        assert_eq!(error_code(&resp), (426, "upgrade_required"), "{path}");
    }
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let server = TestServer::start().await;
    assert_eq!(
        error_code(&get_json(server.addr, "/nope").await),
        (404, "not_found")
    );
    let (status, _, body) = http(server.addr, "DELETE", "/healthz", &[], b"").await;
    let body: Value = serde_json::from_slice(&body).expect("JSON body");
    assert_eq!(
        (status, &body["error"]),
        (405, &json!("method_not_allowed"))
    );
    assert_eq!(
        error_code(&get_json(server.addr, "/api/publish").await),
        (405, "method_not_allowed")
    );
}

#[tokio::test]
async fn several_requests_share_one_keep_alive_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let mut s = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let host = server.addr;
    s.write_all(
        format!(
            "POST /api/publish/t HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1\r\n\r\n7\
             GET /api/topics/t HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write two pipelined requests");
    let mut buf = Vec::new();
    tokio::time::timeout(pulsegate_testkit::STEP_TIMEOUT, s.read_to_end(&mut buf))
        .await
        .expect("responses in time")
        .expect("read");
    let text = String::from_utf8(buf).expect("UTF-8");
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert!(
        text.contains(r#""data":7"#),
        "the second request saw the first's publish: {text}"
    );
}

#[tokio::test]
async fn beyond_max_topics_a_new_topic_is_refused_and_existing_ones_keep_working() {
    let server = TestServer::start_with(|c| c.history.max_topics = 2).await;
    publish(server.addr, "a", json!(1)).await;
    publish(server.addr, "b", json!(1)).await;

    let (status, body) = post_json(server.addr, "/api/publish/c", "1").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("limit")),
        "{body}"
    );
    assert_eq!(
        error_code(&get_json(server.addr, "/api/topics/c").await),
        (404, "not_found")
    );
    let (status, stamp) = post_json(server.addr, "/api/publish/a", "2").await;
    assert_eq!((status, stamp["seq"].as_u64()), (200, Some(2)), "{stamp}");
}

#[tokio::test]
async fn payloads_no_subscriber_could_decode_are_refused() {
    let server = TestServer::start().await;
    let (status, body) = post_json(server.addr, "/api/publish/a", "1e400").await;
    assert_eq!(error_code(&(status, body)), (400, "bad_json"));
    let batch = r#"[{"topic":"a","data":1},{"topic":"b","data":"\ud800"}]"#;
    let (status, body) = post_json(server.addr, "/api/publish", batch).await;
    assert_eq!(
        error_code(&(status, body.clone())),
        (400, "bad_json"),
        "{body}"
    );
    let (_, stats) = get_json(server.addr, "/api/stats").await;
    assert_eq!(stats["published"], 0, "{stats}");
}

/// A batch the hub refuses part-way (`history.max_topics`): the items before
/// the refused one stay published and are listed, the rest are not
/// published, whether they came alone or as a run of one topic.
#[tokio::test]
async fn a_batch_refused_part_way_lists_what_was_published() {
    let server = TestServer::start_with(|c| c.history.max_topics = 2).await;
    let (mut sub, _) = WsClient::connect(&server.ws_url()).await;
    subscribe(&mut sub, "cap/#").await;
    let body = json!([
        {"topic": "cap/a", "data": 0},
        {"topic": "cap/a", "data": 1},
        {"topic": "cap/b", "data": 2},
        {"topic": "cap/b", "data": 3},
        {"topic": "cap/c", "data": 4},
        {"topic": "cap/c", "data": 5},
        {"topic": "cap/a", "data": 6},
    ]);
    let (status, resp) = post_json(server.addr, "/api/publish", &body.to_string()).await;
    assert_ne!(status, 200, "{resp}");
    assert_eq!(resp["error"], "partial", "{resp}");
    assert_eq!(resp["failed_index"], 4, "{resp}");
    let published: Vec<(String, u64)> = resp["published"]
        .as_array()
        .expect("published stamps")
        .iter()
        .map(|s| {
            (
                s["topic"].as_str().unwrap().to_string(),
                s["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, u64)> = [("cap/a", 1), ("cap/a", 2), ("cap/b", 1), ("cap/b", 2)]
        .iter()
        .map(|(t, s)| (t.to_string(), *s))
        .collect();
    assert_eq!(published, want);
    for (t, s) in &want {
        let m = recv_msg(&mut sub).await;
        assert_eq!(
            (m["topic"].as_str().unwrap(), m["seq"].as_u64().unwrap()),
            (t.as_str(), *s)
        );
    }
    assert_nothing_queued(&mut sub).await;
}
