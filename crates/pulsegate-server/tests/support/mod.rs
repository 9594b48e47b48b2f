//! Helpers shared by the integration tests of this crate: the few steps
//! every scenario repeats (publish over HTTP, read the next data message,
//! prove nothing else is queued). Server start-up, the WebSocket client and
//! raw frames live in `pulsegate-testkit`.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use pulsegate_testkit::{post_json, WsClient};
use serde_json::{json, Value};

/// Publishes `data` to `topic` with `POST /api/publish/{topic}` and returns
/// the `{topic, seq, epoch}` stamp.
pub async fn publish(addr: SocketAddr, topic: &str, data: Value) -> Value {
    let (status, stamp) =
        post_json(addr, &format!("/api/publish/{topic}"), &data.to_string()).await;
    assert_eq!(status, 200, "publish to {topic}: {stamp}");
    stamp
}

/// The next frame, which must be a data message.
pub async fn recv_msg(c: &mut WsClient) -> Value {
    let frame = c.recv_json().await;
    assert_eq!(frame["op"], "msg", "expected a data message, got {frame}");
    frame
}

/// The next `n` data messages as (topic, seq) pairs.
pub async fn recv_topics_and_seqs(c: &mut WsClient, n: usize) -> Vec<(String, u64)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let m = recv_msg(c).await;
        out.push((
            m["topic"].as_str().expect("topic").to_string(),
            m["seq"].as_u64().expect("seq"),
        ));
    }
    out
}

/// Proves that nothing is queued for `c`: a `ping` sent now must be
/// answered by the very next frame. Every publish in these tests completes
/// (is fanned out) before its HTTP response, so any message still owed to
/// `c` would arrive before the pong.
pub async fn assert_nothing_queued(c: &mut WsClient) {
    let reply = c.request(json!({"op": "ping", "id": "probe"})).await;
    assert_eq!(
        reply["op"], "pong",
        "expected nothing before the pong, got {reply}"
    );
    assert_eq!(reply["id"], "probe");
}

/// Subscribes and checks the plain `ok`.
pub async fn subscribe(c: &mut WsClient, topic: &str) {
    let reply = c
        .request(json!({"op": "sub", "id": 1, "topic": topic}))
        .await;
    assert_eq!(reply, json!({"op": "ok", "id": 1}), "sub {topic}");
}

/// Microseconds since the Unix epoch, the unit of `ts`.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

/// A fresh WebSocket connection that has sent a `pub` of each of `data` to
/// `topic` (ids 0, 1, …) in one write, so that the server takes them as
/// one burst; the replies are left to the caller.
pub async fn pipelined_publisher(
    addr: SocketAddr,
    topic: &str,
    data: &[Value],
) -> pulsegate_testkit::RawWs {
    let (status, _, mut raw) = pulsegate_testkit::raw_upgrade(addr, "/ws", &[]).await;
    assert_eq!(status, 101);
    assert_eq!(raw.read_json().await["op"], "welcome");
    let frames: Vec<String> = data
        .iter()
        .enumerate()
        .map(|(id, d)| json!({"op": "pub", "id": id, "topic": topic, "data": d}).to_string())
        .collect();
    let refs: Vec<(u8, &[u8])> = frames
        .iter()
        .map(|f| (pulsegate_testkit::opcode::TEXT, f.as_bytes()))
        .collect();
    raw.send_frames(&refs).await;
    raw
}

/// Publishes `data` to `topic` with [`pipelined_publisher`] (one burst,
/// queued as one run per subscriber) and returns the `ok` replies, checked
/// to be in order with consecutive `seq`s.
pub async fn publish_pipelined(addr: SocketAddr, topic: &str, data: &[Value]) -> Vec<Value> {
    let mut raw = pipelined_publisher(addr, topic, data).await;
    let mut oks: Vec<Value> = Vec::new();
    for id in 0..data.len() {
        let ok = raw.read_json().await;
        assert_eq!((&ok["op"], &ok["id"]), (&json!("ok"), &json!(id)), "{ok}");
        if let Some(prev) = oks.last() {
            assert_eq!(
                ok["seq"].as_u64(),
                prev["seq"].as_u64().map(|s| s + 1),
                "{ok}"
            );
        }
        oks.push(ok);
    }
    oks
}
