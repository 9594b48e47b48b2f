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

// ---------------------------------------------------------------------------
// Pipelined publishes (one write, taken from the read buffer as bursts)
// ---------------------------------------------------------------------------

/// `pub` frames to one topic that arrive together are published as one
/// burst (`Conn::take_burst`). Whatever else is in between — another
/// topic, an app ping, a WebSocket ping, a refused publish — must keep its
/// place: replies in the order sent, and subscribers see the messages in
/// the order published.
#[tokio::test]
async fn pipelined_publishes_keep_their_order_around_other_frames() {
    let server = TestServer::start().await;
    let (mut sub, _) = WsClient::connect(&server.ws_url()).await;
    subscribe(&mut sub, "burst/a").await;
    subscribe(&mut sub, "burst/b").await;
    let (status, _, mut raw) = pulsegate_testkit::raw_upgrade(server.addr, "/ws", &[]).await;
    assert_eq!(status, 101);
    assert_eq!(raw.read_json().await["op"], "welcome");

    use pulsegate_testkit::opcode::{PING, PONG, TEXT};
    let publish = |id: u64, topic: &str| {
        json!({"op": "pub", "id": id, "topic": topic, "data": id}).to_string()
    };
    let mut frames: Vec<(u8, String)> = Vec::new();
    for id in 0..5 {
        frames.push((TEXT, publish(id, "burst/a")));
    }
    frames.push((TEXT, publish(5, "burst/b")));
    for id in 6..9 {
        frames.push((TEXT, publish(id, "burst/a")));
    }
    frames.push((TEXT, json!({"op": "ping", "id": 9}).to_string()));
    for id in 10..13 {
        frames.push((TEXT, publish(id, "burst/a")));
    }
    frames.push((PING, "hb".into()));
    frames.push((TEXT, publish(13, "burst/a")));
    frames.push((TEXT, publish(14, "$sys/x")));
    frames.push((TEXT, publish(15, "burst/a")));
    let refs: Vec<(u8, &[u8])> = frames.iter().map(|(o, p)| (*o, p.as_bytes())).collect();
    raw.send_frames(&refs).await;

    // (id, topic, seq) of every ok, in the order sent; `None` topic for the
    // pong and the refusal.
    let expected: Vec<(u64, Option<&str>, u64)> = vec![
        (0, Some("burst/a"), 1),
        (1, Some("burst/a"), 2),
        (2, Some("burst/a"), 3),
        (3, Some("burst/a"), 4),
        (4, Some("burst/a"), 5),
        (5, Some("burst/b"), 1),
        (6, Some("burst/a"), 6),
        (7, Some("burst/a"), 7),
        (8, Some("burst/a"), 8),
        (9, None, 0),
        (10, Some("burst/a"), 9),
        (11, Some("burst/a"), 10),
        (12, Some("burst/a"), 11),
        (13, Some("burst/a"), 12),
        (14, None, 0),
        (15, Some("burst/a"), 13),
    ];
    let mut pongs = 0;
    let mut replies = Vec::new();
    while replies.len() < expected.len() {
        let (op, payload) = raw.read_frame().await.expect("a reply");
        if op == PONG {
            assert_eq!(payload, b"hb");
            pongs += 1;
            continue;
        }
        assert_eq!(op, TEXT);
        replies.push(serde_json::from_slice::<Value>(&payload).expect("JSON reply"));
    }
    assert_eq!(pongs, 1, "the WebSocket ping is answered once");
    for (reply, (id, topic, seq)) in replies.iter().zip(&expected) {
        assert_eq!(reply["id"], *id, "replies in the order sent: {replies:?}");
        match (id, topic) {
            (9, _) => assert_eq!(reply["op"], "pong", "{reply}"),
            (14, _) => {
                assert_eq!(reply["op"], "error", "{reply}");
                assert_eq!(reply["code"], "forbidden", "{reply}");
            }
            (_, Some(t)) => {
                assert_eq!(reply["op"], "ok", "{reply}");
                assert_eq!(reply["topic"], *t, "{reply}");
                assert_eq!(reply["seq"], *seq, "{reply}");
            }
            _ => unreachable!(),
        }
    }
    let got = recv_topics_and_seqs(&mut sub, 14).await;
    let want: Vec<(String, u64)> = expected
        .iter()
        .filter_map(|(_, t, seq)| t.map(|t| (t.to_string(), *seq)))
        .collect();
    assert_eq!(got, want, "published in the order sent");
    assert_nothing_queued(&mut sub).await;
}

/// A rate limit that runs out inside a burst: the accepted publishes are
/// answered first, then each refused one, in the order sent, and
/// subscribers get exactly the accepted messages.
#[tokio::test]
async fn a_rate_limit_inside_a_pipelined_burst_refuses_the_rest_in_order() {
    let server = TestServer::start_with(|c| c.limits.publish_rate = 3).await;
    let (mut sub, _) = WsClient::connect(&server.ws_url()).await;
    subscribe(&mut sub, "burst/limited").await;
    let data: Vec<Value> = (0..8).map(|i| json!(i)).collect();
    let mut raw = support::pipelined_publisher(server.addr, "burst/limited", &data).await;
    let mut ops = Vec::new();
    for id in 0..8 {
        let r = raw.read_json().await;
        assert_eq!(r["id"], id, "{r}");
        ops.push(r["op"].as_str().expect("op").to_string());
        if r["op"] == "ok" {
            assert_eq!(r["seq"], id + 1, "{r}");
        } else {
            assert_eq!(r["code"], "limit", "{r}");
        }
    }
    let accepted = ops.iter().take_while(|o| *o == "ok").count();
    assert!((1..=3).contains(&accepted), "{ops:?}");
    assert!(ops[accepted..].iter().all(|o| o == "error"), "{ops:?}");
    let got = recv_topics_and_seqs(&mut sub, accepted).await;
    let want: Vec<(String, u64)> = (1..=accepted as u64)
        .map(|s| ("burst/limited".to_string(), s))
        .collect();
    assert_eq!(got, want);
    assert_nothing_queued(&mut sub).await;
}
