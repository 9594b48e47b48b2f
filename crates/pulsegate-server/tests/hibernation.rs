//! An idle `/ws` connection drops its WebSocket layer (and read buffer)
//! after 2 s without traffic, and comes back transparently: deliveries,
//! requests and heartbeats all still work, nothing is lost or reordered.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use pulsegate_testkit::{get_json, TestServer, WsClient};
use serde_json::json;
use support::{publish, recv_msg, subscribe};

/// Longer than the server's idle threshold (2 s) plus one idle check.
const IDLE: Duration = Duration::from_millis(4500);

async fn hibernations(server: &TestServer) -> u64 {
    get_json(server.addr, "/api/stats").await.1["hibernations"]
        .as_u64()
        .expect("hibernations counter")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_hibernates_and_still_gets_every_message_in_order() {
    let server = TestServer::start().await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;
    subscribe(&mut c, "sleepy/+").await;
    publish(server.addr, "sleepy/a", json!(1)).await;
    assert_eq!(recv_msg(&mut c).await["seq"], 1);

    tokio::time::sleep(IDLE).await;
    assert!(
        hibernations(&server).await >= 1,
        "the idle connection hibernated"
    );

    // Woken by the outbox: messages published while asleep arrive in order.
    for i in 2..=4 {
        publish(server.addr, "sleepy/a", json!(i)).await;
    }
    for seq in 2..=4 {
        let m = recv_msg(&mut c).await;
        assert_eq!(
            (m["seq"].as_u64(), m["data"].as_i64()),
            (Some(seq), Some(seq as i64))
        );
    }

    tokio::time::sleep(IDLE).await;
    // Woken by the socket: a request is read and answered.
    let pong = c.request(json!({"op": "ping", "id": 7})).await;
    assert_eq!(
        (pong["op"].as_str(), pong["id"].as_u64()),
        (Some("pong"), Some(7))
    );
    assert!(hibernations(&server).await >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_continue_across_hibernation() {
    let server = TestServer::start_with(|c| {
        c.heartbeat.ping_interval = Duration::from_millis(2500);
        c.heartbeat.pong_timeout = Duration::from_millis(1500);
    })
    .await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;
    // The client answers pings while it polls its stream; only pings arrive.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(9);
    let mut pings = 0;
    while let Ok(frame) = tokio::time::timeout_at(deadline, c.ws.next()).await {
        let m = frame.expect("connection stays open").expect("valid frame");
        assert!(m.is_ping(), "only pings while idle, got {m:?}");
        pings += 1;
    }
    assert!(pings >= 3, "pings kept coming across hibernation: {pings}");
    let (_, stats) = get_json(server.addr, "/api/stats").await;
    assert_eq!(stats["pong_timeouts"], 0, "{stats}");
    assert_eq!(stats["connections"], 1, "{stats}");
    assert!(stats["hibernations"].as_u64() >= Some(1), "{stats}");
    let pong = c.request(json!({"op": "ping", "id": 1})).await;
    assert_eq!(pong["op"], "pong");
}
