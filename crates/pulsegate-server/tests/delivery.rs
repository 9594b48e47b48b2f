//! What a subscriber receives beyond live messages, against a real server:
//! the snapshot of last values, recovery of missed messages with `since`
//! (and its refusal when the history cannot serve it whole), and what the
//! slow-consumer policies do to a subscriber that stops reading.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use pulsegate_server::config::SlowConsumer;
use pulsegate_testkit::{post_json, wait_for_stats, TestServer, WsClient, STEP_TIMEOUT};
use serde_json::{json, Value};
use support::{assert_nothing_queued, publish, recv_msg, recv_topics_and_seqs, subscribe};

const TOPIC: &str = "site/a/power";

// ---------------------------------------------------------------------------
// Snapshot
// ---------------------------------------------------------------------------

#[tokio::test]
async fn snapshot_sends_the_last_value_of_every_matching_topic_right_after_ok() {
    let server = TestServer::start().await;
    publish(server.addr, "site/b/power", json!({"w": 10})).await;
    publish(server.addr, "site/a/power", json!({"w": 1})).await;
    publish(server.addr, "site/a/power", json!({"w": 2})).await;
    publish(server.addr, "site/a/energy", json!({"kwh": 5})).await;

    let (mut c, _) = WsClient::connect(&server.ws_url()).await;
    let ok = c
        .request(json!({"op": "sub", "id": 1, "topic": "site/+/power", "snapshot": true}))
        .await;
    assert_eq!(ok, json!({"op": "ok", "id": 1}));
    // One message per topic (the last), in topic order.
    let a = recv_msg(&mut c).await;
    let b = recv_msg(&mut c).await;
    assert_eq!(
        (&a["topic"], &a["seq"], &a["data"]),
        (&json!("site/a/power"), &json!(2), &json!({"w": 2}))
    );
    assert_eq!(
        (&b["topic"], &b["seq"], &b["data"]),
        (&json!("site/b/power"), &json!(1), &json!({"w": 10}))
    );
    assert_nothing_queued(&mut c).await;

    // Then live messages continue the sequence.
    publish(server.addr, "site/a/power", json!({"w": 3})).await;
    assert_eq!(
        recv_topics_and_seqs(&mut c, 1).await,
        vec![("site/a/power".to_string(), 3)]
    );
}

#[tokio::test]
async fn without_snapshot_or_without_a_value_nothing_precedes_live_messages() {
    let server = TestServer::start().await;
    publish(server.addr, TOPIC, json!(1)).await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;

    subscribe(&mut c, TOPIC).await;
    assert_nothing_queued(&mut c).await;
    let ok = c
        .request(json!({"op": "sub", "id": 2, "topic": "never/published", "snapshot": true}))
        .await;
    assert_eq!(ok, json!({"op": "ok", "id": 2}));
    assert_nothing_queued(&mut c).await;
}

// ---------------------------------------------------------------------------
// Recovery with `since`
// ---------------------------------------------------------------------------

/// Sends `sub` with `since` and returns the reply.
async fn sub_since(c: &mut WsClient, topic: &str, epoch: &Value, seq: u64) -> Value {
    c.request(json!({
        "op": "sub", "id": 1, "topic": topic,
        "since": {TOPIC: {"epoch": epoch, "seq": seq}}
    }))
    .await
}

fn recovered() -> Value {
    json!({"op": "ok", "id": 1, "recovered": [TOPIC], "not_recovered": []})
}

fn not_recovered() -> Value {
    json!({"op": "ok", "id": 1, "recovered": [], "not_recovered": [TOPIC]})
}

#[tokio::test]
async fn a_reconnecting_subscriber_gets_exactly_the_missed_messages_then_live_ones() {
    let server = TestServer::start().await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;
    subscribe(&mut c, TOPIC).await;
    for n in 1..=3 {
        publish(server.addr, TOPIC, json!({"n": n})).await;
    }
    let mut last = Value::Null;
    for n in 1..=3 {
        last = recv_msg(&mut c).await;
        assert_eq!(last["data"], json!({"n": n}));
    }
    drop(c);

    for n in 4..=8 {
        publish(server.addr, TOPIC, json!({"n": n})).await;
    }

    let (mut c, _) = WsClient::connect(&server.ws_url()).await;
    let seen = last["seq"].as_u64().unwrap();
    assert_eq!(seen, 3);
    assert_eq!(
        sub_since(&mut c, "site/+/power", &last["epoch"], seen).await,
        recovered()
    );
    for n in 4..=8u64 {
        let m = recv_msg(&mut c).await;
        assert_eq!(
            (&m["seq"], &m["epoch"], &m["data"]),
            (&json!(n), &last["epoch"], &json!({"n": n}))
        );
    }
    for n in 9..=10 {
        publish(server.addr, TOPIC, json!({"n": n})).await;
    }
    assert_eq!(
        recv_topics_and_seqs(&mut c, 2).await,
        vec![(TOPIC.to_string(), 9), (TOPIC.to_string(), 10)]
    );
    assert_nothing_queued(&mut c).await;
}

#[tokio::test]
async fn recovery_and_snapshot_combine_per_topic_under_a_wildcard() {
    let server = TestServer::start().await;
    let mut epochs = std::collections::HashMap::new();
    for topic in ["site/a/power", "site/b/power", "site/c/power"] {
        for n in 1..=3 {
            let stamp = publish(server.addr, topic, json!({"n": n})).await;
            epochs.insert(topic, stamp["epoch"].clone());
        }
    }

    // a: seen up to 1; c: seen up to 2; b: never seen (snapshot);
    // other/x: not under the pattern, so it cannot be recovered by it.
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;
    let ok = c
        .request(json!({
            "op": "sub", "id": 1, "topic": "site/+/power", "snapshot": true,
            "since": {
                "site/c/power": {"epoch": epochs["site/c/power"], "seq": 2},
                "site/a/power": {"epoch": epochs["site/a/power"], "seq": 1},
                "other/x": {"epoch": epochs["site/a/power"], "seq": 1},
            }
        }))
        .await;
    assert_eq!(
        ok,
        json!({"op": "ok", "id": 1, "recovered": ["site/a/power", "site/c/power"],
               "not_recovered": ["other/x"]})
    );
    assert_eq!(
        recv_topics_and_seqs(&mut c, 4).await,
        vec![
            ("site/a/power".to_string(), 2),
            ("site/a/power".to_string(), 3),
            ("site/b/power".to_string(), 3),
            ("site/c/power".to_string(), 3),
        ]
    );
    assert_nothing_queued(&mut c).await;
}

#[tokio::test]
async fn a_subscriber_that_missed_nothing_is_recovered_with_no_replay() {
    let server = TestServer::start().await;
    let stamp = publish(server.addr, TOPIC, json!(1)).await;
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;

    assert_eq!(
        sub_since(&mut c, TOPIC, &stamp["epoch"], 1).await,
        recovered()
    );
    assert_nothing_queued(&mut c).await;
}

#[tokio::test]
async fn recovery_is_refused_for_another_epoch_and_nothing_is_replayed() {
    let server = TestServer::start().await;
    for n in 1..=3 {
        publish(server.addr, TOPIC, json!(n)).await;
    }
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;

    assert_eq!(
        sub_since(&mut c, TOPIC, &json!("not-the-epoch"), 1).await,
        not_recovered()
    );
    assert_nothing_queued(&mut c).await;
    publish(server.addr, TOPIC, json!(4)).await;
    assert_eq!(
        recv_topics_and_seqs(&mut c, 1).await,
        vec![(TOPIC.to_string(), 4)]
    );
}

#[tokio::test]
async fn recovery_is_refused_after_a_restart_because_the_epoch_changed() {
    let first = TestServer::start().await;
    let mut old = Value::Null;
    for n in 1..=3 {
        old = publish(first.addr, TOPIC, json!(n)).await;
    }
    drop(first);

    // A new server is a new in-memory history: the same topic, a new epoch,
    // and seq numbers that overlap the old ones.
    let second = TestServer::start().await;
    let mut new = Value::Null;
    for n in 1..=5 {
        new = publish(second.addr, TOPIC, json!(n)).await;
    }
    assert_ne!(new["epoch"], old["epoch"]);

    let (mut c, _) = WsClient::connect(&second.ws_url()).await;
    assert_eq!(
        sub_since(&mut c, TOPIC, &old["epoch"], 3).await,
        not_recovered()
    );
    assert_nothing_queued(&mut c).await;
    publish(second.addr, TOPIC, json!(6)).await;
    assert_eq!(
        recv_topics_and_seqs(&mut c, 1).await,
        vec![(TOPIC.to_string(), 6)]
    );
}

#[tokio::test]
async fn trimmed_history_is_not_recovered_and_never_partially_replayed() {
    let server = TestServer::start_with(|c| c.history.max_messages = 3).await;
    let mut stamp = Value::Null;
    for n in 1..=10 {
        stamp = publish(server.addr, TOPIC, json!(n)).await;
    }
    let epoch = &stamp["epoch"];

    // History holds 8, 9, 10: after seq 6, message 7 is gone.
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;
    assert_eq!(sub_since(&mut c, TOPIC, epoch, 6).await, not_recovered());
    assert_nothing_queued(&mut c).await;

    // After seq 7, everything missed is still there.
    let (mut c, _) = WsClient::connect(&server.ws_url()).await;
    assert_eq!(sub_since(&mut c, TOPIC, epoch, 7).await, recovered());
    assert_eq!(
        recv_topics_and_seqs(&mut c, 3).await,
        vec![
            (TOPIC.to_string(), 8),
            (TOPIC.to_string(), 9),
            (TOPIC.to_string(), 10)
        ]
    );
    assert_nothing_queued(&mut c).await;
}

// ---------------------------------------------------------------------------
// Slow consumers
// ---------------------------------------------------------------------------

/// About 4 KB of payload per message.
fn payload(n: u64) -> Value {
    json!({"n": n, "pad": "x".repeat(4000)})
}

/// A small receive buffer on the slow client's socket, so it stops
/// accepting data after a few kilobytes rather than the megabytes loopback
/// autotuning would allow.
const SLOW_RECV_BUFFER: u32 = 4096;
/// Messages per `POST /api/publish` batch: small enough that a subscriber
/// that does read (with a 16-message queue) always keeps up.
const BATCH: u64 = 4;
/// Upper bound on messages published while waiting for the policy to act.
/// The server's socket send buffer autotunes up to `net.ipv4.tcp_wmem`'s
/// maximum (4 MB by default, about 700 of these messages) before its writes
/// stall; this leaves room for hosts tuned to 4× that.
const MAX_MESSAGES: u64 = 8000;

/// Publishes 4 KB messages to `topic` in small batches until `done` holds
/// for `/api/stats`; returns how many were published.
async fn publish_until(
    addr: std::net::SocketAddr,
    topic: &str,
    done: impl Fn(&Value) -> bool,
) -> u64 {
    let mut published = 0;
    while published < MAX_MESSAGES {
        let batch: Vec<Value> = (published + 1..=published + BATCH)
            .map(|n| json!({"topic": topic, "data": payload(n)}))
            .collect();
        let (status, body) = post_json(addr, "/api/publish", &Value::from(batch).to_string()).await;
        assert_eq!(status, 200, "{body}");
        published += BATCH;
        let (_, stats) = pulsegate_testkit::get_json(addr, "/api/stats").await;
        if done(&stats) {
            return published;
        }
    }
    panic!("the slow-consumer policy did not act within {MAX_MESSAGES} messages");
}

/// Reads data messages until the close frame: (seqs received, close code and reason).
async fn read_until_close(c: &mut WsClient) -> (Vec<u64>, Option<(u16, String)>) {
    let mut seqs = Vec::new();
    loop {
        let next = tokio::time::timeout(STEP_TIMEOUT, c.ws.next())
            .await
            .expect("frame in time");
        match next {
            Some(Ok(m)) if m.is_text() => {
                let v: Value = serde_json::from_str(m.as_text().unwrap()).unwrap();
                seqs.push(v["seq"].as_u64().expect("a data message"));
            }
            Some(Ok(m)) if m.is_close() => {
                let (code, reason) = m.as_close().unwrap();
                return (seqs, Some((u16::from(code), reason.to_string())));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return (seqs, None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_policy_closes_a_slow_consumer_with_4000_and_spares_the_others() {
    let server = TestServer::start_with(|c| {
        c.delivery.queue_max_messages = 16;
        c.delivery.queue_max_bytes = 64 * 1024;
        c.delivery.slow_consumer = SlowConsumer::Disconnect;
        c.server.write_timeout = Duration::from_secs(2);
    })
    .await;
    let (mut slow, _) =
        WsClient::connect_with_recv_buffer(&server.ws_url(), SLOW_RECV_BUFFER).await;
    subscribe(&mut slow, "load").await;
    let (mut reader, _) = WsClient::connect(&server.ws_url()).await;
    subscribe(&mut reader, "load").await;
    // The reader reads everything, until the `"end"` message.
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        loop {
            let m = recv_msg(&mut reader).await;
            seqs.push(m["seq"].as_u64().unwrap());
            if m["data"] == "end" {
                return seqs;
            }
        }
    });

    // `slow` reads nothing from here on.
    let published =
        publish_until(server.addr, "load", |s| s["slow_consumer_disconnects"] == 1).await;
    let end = publish(server.addr, "load", json!("end")).await;
    let total = published + 1;
    assert_eq!(end["seq"], total);

    // When it reads again: a gap-free prefix of the stream, then close 4000.
    // (4003, write timeout, is never seen by a client: a stalled write drops
    // the socket without a close frame. The queue overflows long before
    // write_timeout, so the close here is the slow-consumer one.)
    let (seqs, close) = read_until_close(&mut slow).await;
    assert_eq!(close, Some((4000, "slow consumer".to_string())));
    let expected_prefix: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(
        seqs, expected_prefix,
        "in order, without gaps, up to the close"
    );
    assert!((seqs.len() as u64) < total, "{} of {total}", seqs.len());

    let reader_seqs = tokio::time::timeout(STEP_TIMEOUT, reader)
        .await
        .expect("reader done")
        .unwrap();
    assert_eq!(
        reader_seqs,
        (1..=total).collect::<Vec<_>>(),
        "the other subscriber got everything"
    );

    let stats = wait_for_stats(server.addr, "the slow consumer gone", |s| {
        s["connections"] == 1
    })
    .await;
    assert_eq!(stats["slow_consumer_disconnects"], 1, "{stats}");
    assert!(
        stats["dropped"]["slow_consumer_close"].as_u64().unwrap() > 0,
        "{stats}"
    );
    assert_eq!(stats["dropped"]["conflated"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflate_policy_skips_to_the_newest_message_and_keeps_the_connection() {
    let server = TestServer::start_with(|c| {
        c.delivery.queue_max_messages = 16;
        c.delivery.queue_max_bytes = 64 * 1024;
        c.delivery.slow_consumer = SlowConsumer::Conflate;
        // Long enough that the socket write the test deliberately stalls
        // does not end the connection before the client reads again.
        c.server.write_timeout = Duration::from_secs(30);
    })
    .await;
    let (mut slow, _) =
        WsClient::connect_with_recv_buffer(&server.ws_url(), SLOW_RECV_BUFFER).await;
    subscribe(&mut slow, "load").await;

    let total = publish_until(server.addr, "load", |s| {
        s["dropped"]["conflated"].as_u64().unwrap() > 0
    })
    .await;

    let mut seqs = Vec::new();
    while seqs.last() != Some(&total) {
        seqs.push(recv_msg(&mut slow).await["seq"].as_u64().unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "increasing: {seqs:?}");
    assert!(
        seqs.windows(2).any(|w| w[1] > w[0] + 1),
        "some seqs skipped: {seqs:?}"
    );
    assert_nothing_queued(&mut slow).await;

    // Every message is either delivered or counted as conflated.
    let (_, stats) = pulsegate_testkit::get_json(server.addr, "/api/stats").await;
    let conflated = stats["dropped"]["conflated"].as_u64().unwrap();
    assert_eq!(seqs.len() as u64 + conflated, total, "{stats}");
    assert_eq!(
        stats["dropped"]["queue_full"], 0,
        "one topic: always conflated, {stats}"
    );
    assert_eq!(stats["slow_consumer_disconnects"], 0, "{stats}");

    // The connection is still live.
    publish(server.addr, "load", json!("after")).await;
    let m = recv_msg(&mut slow).await;
    assert_eq!(
        (&m["seq"], &m["data"]),
        (&json!(total + 1), &json!("after"))
    );
}
