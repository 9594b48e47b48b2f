//! End-to-end cluster tests: three `pulsegate serve` processes sharing a real
//! `nats-server -js` or `redis-server` (docs/CLUSTER.md).
//!
//! Each scenario is one async function taking the backplane kind; the
//! `per_backplane!` macro at the bottom turns it into one test per backplane
//! (`fanout::nats`, `fanout::redis`, …), each bounded by an overall time
//! limit. The scenarios:
//!
//! 1. [`fanout`]: publishes on A (HTTP and WebSocket, alternating) reach
//!    subscribers on B and C in order with contiguous `seq`, wildcards too.
//! 2. [`recovery_on_another_node`]: a subscriber that left A resumes on C
//!    with `since` and gets exactly what it missed, then live messages.
//! 3. [`node_killed_mid_stream`]: SIGKILL of A while six publishers on three
//!    nodes publish; A's client-crate subscribers fail over and recover;
//!    every acknowledged message reaches every subscriber exactly once.
//! 4. [`backplane_outage`]: NATS/Redis killed and restarted: `/readyz`,
//!    publish refusals, and delivery on the old subscriptions afterwards.
//! 5. [`reconnect_storm`]: 5,000 connections on a draining node move to the
//!    two others; the time it takes is printed as `STORM:`.
//!
//! The harness (node processes, HTTP, limits) is in `cluster_common`.

mod cluster_common;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_common::{client_options, http, wait_until, Cluster, Kind, Node};
use pulsegate_client::{
    parse_reconnect_after, Backoff, ClientError, Connection, Event, Position, Subscriber,
};
use pulsegate_proto::{ClientFrame, ErrorCode, Reply, ServerFrame};
use serde_json::{json, Value};
use tokio::time::{timeout, Instant};

/// How long one expected frame may take to arrive.
const FRAME_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Raw-connection helpers
// ---------------------------------------------------------------------------

/// One data message as received.
#[derive(Debug, Clone, PartialEq)]
struct Msg {
    topic: String,
    seq: u64,
    epoch: String,
    data: Value,
}

/// Sends `sub` (with `since`) and returns its `ok`; panics on anything else.
async fn subscribe(conn: &mut Connection, pattern: &str, since: &[(&str, &str, u64)]) -> Reply {
    let id = conn.next_id();
    conn.send(ClientFrame::Sub {
        id: Some(id.clone()),
        topic: pattern.into(),
        snapshot: false,
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
    })
    .await
    .expect("send sub");
    loop {
        match next_frame(conn).await {
            ServerFrame::Ok(reply) if reply.id.as_ref() == Some(&id) => return reply,
            ServerFrame::Pong { .. } => {}
            other => panic!("expected the ok to sub `{pattern}`, got {other:?}"),
        }
    }
}

/// The next frame, within [`FRAME_TIMEOUT`]; panics on close or timeout.
async fn next_frame(conn: &mut Connection) -> ServerFrame {
    match timeout(FRAME_TIMEOUT, conn.next()).await {
        Ok(Some(Ok(frame))) => frame,
        Ok(Some(Err(e))) => panic!("connection to {} failed: {e}", conn.welcome().node),
        Ok(None) => panic!(
            "connection to {} closed: {:?}",
            conn.welcome().node,
            conn.close_info()
        ),
        Err(_) => panic!(
            "no frame from {} within {FRAME_TIMEOUT:?}",
            conn.welcome().node
        ),
    }
}

/// The next `n` data messages; any other frame fails the test.
async fn recv_msgs(conn: &mut Connection, n: usize) -> Vec<Msg> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match next_frame(conn).await {
            ServerFrame::Msg {
                topic,
                seq,
                epoch,
                data,
                ..
            } => out.push(Msg {
                topic,
                seq,
                epoch,
                data,
            }),
            ServerFrame::Pong { .. } => {}
            other => panic!(
                "expected a msg (got {} of {n} so far), got {other:?}",
                out.len()
            ),
        }
    }
    out
}

/// Asserts that nothing but pongs arrives within `wait`.
async fn assert_quiet(conn: &mut Connection, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, conn.next()).await {
            Err(_) => return,
            Ok(Some(Ok(ServerFrame::Pong { .. }))) => {}
            Ok(other) => panic!(
                "expected nothing from {}, got {other:?}",
                conn.welcome().node
            ),
        }
    }
}

/// Publishes message `i` of a sequence: odd `i` over HTTP on `node`, even
/// `i` over WebSocket on `conn`; returns the stamp (topic, seq, epoch).
async fn publish_alternating(
    node: &Node,
    conn: &mut Connection,
    topic: &str,
    i: u64,
    data: &Value,
) -> (u64, String) {
    if i % 2 == 1 {
        let (status, body) = node
            .http_publish(topic, data)
            .await
            .unwrap_or_else(|e| panic!("HTTP publish #{i} on {}: {e}", node.name));
        assert_eq!(status, 200, "HTTP publish #{i} on {}: {body}", node.name);
        (
            body["seq"].as_u64().expect("seq in the reply"),
            body["epoch"].as_str().expect("epoch in the reply").into(),
        )
    } else {
        let p = conn
            .publish(topic, data)
            .await
            .unwrap_or_else(|e| panic!("WS publish #{i} on {}: {e}", node.name));
        assert_eq!(p.topic, topic);
        (p.seq, p.epoch)
    }
}

/// Waits until every node answers `/readyz` with `status` (and, for 503,
/// `reason`); returns how long it took.
async fn wait_readyz(
    nodes: &[&Node],
    status: u16,
    reason: Option<&str>,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    let deadline = start + limit;
    loop {
        let mut last = Vec::new();
        for node in nodes {
            let r = node.readyz().await;
            let ok = matches!(&r, Ok((s, body)) if *s == status
                && reason.is_none_or(|want| body["reason"] == want));
            if !ok {
                last.push(format!("{}: {r:?}", node.name));
            }
        }
        if last.is_empty() {
            return start.elapsed();
        }
        if Instant::now() >= deadline {
            panic!(
                "/readyz never became {status} {reason:?} on all nodes within {limit:?}: {last:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// 1. Fan-out across nodes
// ---------------------------------------------------------------------------

/// 100 messages published on A — odd ones over HTTP, even ones over
/// WebSocket — reach subscribers on B and C (concrete and wildcard) in
/// order, with `seq` exactly 1..=100 and one epoch.
async fn fanout(kind: Kind) {
    let cluster = Cluster::start(kind, "fanout", 3, &[]).await;
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    let mut on_b = b.connect().await;
    subscribe(&mut on_b, "x/1", &[]).await;
    let mut on_c = c.connect().await;
    subscribe(&mut on_c, "x/1", &[]).await;
    let mut on_c_wildcard = c.connect().await;
    subscribe(&mut on_c_wildcard, "x/+", &[]).await;

    let mut publisher = a.connect().await;
    let mut epoch = None;
    for i in 1..=100u64 {
        let (seq, e) = publish_alternating(a, &mut publisher, "x/1", i, &json!({"i": i})).await;
        assert_eq!(seq, i, "publish #{i} got seq {seq}");
        assert_eq!(
            epoch.get_or_insert_with(|| e.clone()),
            &e,
            "epoch changed at #{i}"
        );
    }
    let epoch = epoch.unwrap();

    for (who, conn) in [
        ("B x/1", &mut on_b),
        ("C x/1", &mut on_c),
        ("C x/+", &mut on_c_wildcard),
    ] {
        let msgs = recv_msgs(conn, 100).await;
        for (i, m) in (1..=100u64).zip(&msgs) {
            assert_eq!(
                (m.topic.as_str(), m.seq, m.epoch.as_str(), &m.data),
                ("x/1", i, epoch.as_str(), &json!({"i": i})),
                "{who}: message {i}"
            );
        }
        assert_quiet(conn, Duration::from_millis(300)).await;
    }
}

// ---------------------------------------------------------------------------
// 2. Recovery on another node
// ---------------------------------------------------------------------------

/// A subscriber on A receives 10 messages per topic and leaves; 15 more per
/// topic are published on B; it resumes on C with `since` and gets
/// `recovered` and exactly seq 11..=25 of each topic, then live messages.
async fn recovery_on_another_node(kind: Kind) {
    let cluster = Cluster::start(kind, "recovery", 3, &[]).await;
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    let topics = ["r/1", "r/2"];
    // Round n publishes message n (= its seq) on every topic.
    async fn publish_round(node: &Node, publisher: &mut Connection, topics: &[&str], n: u64) {
        for topic in topics {
            let data = json!({"n": n, "t": topic});
            let (seq, _) = publish_alternating(node, publisher, topic, n, &data).await;
            assert_eq!(seq, n, "{topic} #{n}");
        }
    }
    let mut publisher = b.connect().await;

    let mut on_a = a.connect().await;
    subscribe(&mut on_a, "r/+", &[]).await;
    for n in 1..=10 {
        publish_round(b, &mut publisher, &topics, n).await;
    }
    let seen = recv_msgs(&mut on_a, 20).await;
    let mut last: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for m in &seen {
        let entry = last.entry(m.topic.clone()).or_insert((m.epoch.clone(), 0));
        assert_eq!(m.seq, entry.1 + 1, "in order on A: {m:?}");
        *entry = (m.epoch.clone(), m.seq);
    }
    assert_eq!(last.values().map(|(_, s)| *s).collect::<Vec<_>>(), [10, 10]);
    on_a.close().await;

    // Published while the subscriber is away.
    for n in 11..=25 {
        publish_round(b, &mut publisher, &topics, n).await;
    }

    let mut on_c = c.connect().await;
    let since: Vec<(&str, &str, u64)> = last
        .iter()
        .map(|(t, (e, s))| (t.as_str(), e.as_str(), *s))
        .collect();
    let reply = subscribe(&mut on_c, "r/+", &since).await;
    assert_eq!(reply.recovered, Some(vec!["r/1".into(), "r/2".into()]));
    assert_eq!(reply.not_recovered, Some(vec![]));
    // The replay: per topic in name order, exactly the missed seqs.
    let replay = recv_msgs(&mut on_c, 30).await;
    let got: Vec<(&str, u64)> = replay.iter().map(|m| (m.topic.as_str(), m.seq)).collect();
    let want: Vec<(&str, u64)> = topics
        .iter()
        .flat_map(|t| (11..=25).map(move |s| (*t, s)))
        .collect();
    assert_eq!(got, want, "replay on C");
    for m in &replay {
        assert_eq!(m.epoch, last[&m.topic].0, "same epoch as seen on A: {m:?}");
        assert_eq!(m.data, json!({"n": m.seq, "t": m.topic}), "{m:?}");
    }

    // Live messages follow, published on A this time.
    let mut publisher_a = a.connect().await;
    for n in 26..=30 {
        publish_round(a, &mut publisher_a, &topics, n).await;
    }
    let live = recv_msgs(&mut on_c, 10).await;
    let mut seqs: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for m in &live {
        seqs.entry(m.topic.as_str()).or_default().push(m.seq);
    }
    for t in topics {
        assert_eq!(seqs[t], (26..=30).collect::<Vec<_>>(), "live on C, {t}");
    }
    assert_quiet(&mut on_c, Duration::from_millis(300)).await;
}

// ---------------------------------------------------------------------------
// 3. A node killed mid-stream
// ---------------------------------------------------------------------------

/// What one client-crate subscriber saw.
#[derive(Debug, Default)]
struct SubLog {
    /// Per topic, every delivered message in order: (seq, epoch, data).
    msgs: HashMap<String, Vec<(u64, String, Value)>>,
    gaps: Vec<String>,
    /// Each `Subscribed`: (node, recovered, not_recovered).
    subscribes: Vec<(String, Vec<String>, Vec<String>)>,
    disconnects: Vec<String>,
    fatal: Option<String>,
    duplicates_dropped: u64,
}

impl SubLog {
    fn last_seq(&self, topic: &str) -> u64 {
        self.msgs
            .get(topic)
            .and_then(|v| v.last())
            .map_or(0, |m| m.0)
    }
}

/// Drives a [`Subscriber`] until `stop`, recording every event in `log`.
fn spawn_subscriber(
    mut sub: Subscriber,
    log: Arc<Mutex<SubLog>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = stop.changed() => break,
                event = sub.next() => event,
            };
            let mut log = log.lock().unwrap();
            match event {
                Ok(Event::Msg {
                    topic,
                    seq,
                    epoch,
                    data,
                    ..
                }) => log.msgs.entry(topic).or_default().push((seq, epoch, data)),
                Ok(Event::Subscribed {
                    recovered,
                    not_recovered,
                }) => {
                    let node = sub.node().unwrap_or("?").to_owned();
                    log.subscribes.push((node, recovered, not_recovered));
                }
                Ok(Event::Gap {
                    topic,
                    expected,
                    got,
                }) => log
                    .gaps
                    .push(format!("{topic}: expected {expected}, got {got}")),
                Ok(Event::Disconnected { reason, .. }) => {
                    // With the positions a resume will ask for, for failure messages.
                    let since = sub.positions();
                    log.disconnects
                        .push(format!("{reason}; resuming from {since:?}"));
                }
                // Event is non-exhaustive: anything new is unexpected here.
                Ok(other) => log.gaps.push(format!("unexpected event {other:?}")),
                Err(e) => {
                    log.fatal = Some(e.to_string());
                    break;
                }
            }
        }
        log.lock().unwrap().duplicates_dropped = sub.duplicates_dropped();
        sub.close().await;
    })
}

/// What one publisher got acknowledged.
#[derive(Debug, Default)]
struct PubLog {
    /// (seq, epoch, data) of every acknowledged publish.
    acked: Vec<(u64, String, Value)>,
    /// Publishes answered with an `error` (not stored).
    refused: Vec<String>,
    /// The error that ended the publisher, if any.
    ended_by: Option<String>,
}

/// 26 subscribers (20 on A, 6 on B, each with all three nodes as failover
/// URLs) track four topics; six publishers on A, B and C (topics `k/0` and
/// `k/3` have publishers on two nodes) publish while A is SIGKILLed. A's
/// subscribers reconnect to B or C with jittered backoff and recover. In
/// the end every subscriber holds every topic as seq 1..=last exactly once
/// in one epoch, including every acknowledged publish with its payload.
async fn node_killed_mid_stream(kind: Kind) {
    const PER_PUBLISHER: u64 = 150;
    let mut cluster = Cluster::start(kind, "kill", 3, &[]).await;
    let urls: Vec<String> = cluster.nodes.iter().map(Node::ws_url).collect();
    let topics = ["k/0", "k/1", "k/2", "k/3"];

    // Subscribers: on A rotating A→B→C or A→C→B, on B rotating B→C→A.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut subs = Vec::new();
    for i in 0..26usize {
        let order: [usize; 3] = match i {
            0..20 if i % 2 == 0 => [0, 1, 2],
            0..20 => [0, 2, 1],
            _ => [1, 2, 0],
        };
        let opts = client_options(&urls[order[0]])
            .fallback_url(&urls[order[1]])
            .fallback_url(&urls[order[2]]);
        let pattern = if i % 2 == 0 { "k/+" } else { "k/#" };
        let log = Arc::new(Mutex::new(SubLog::default()));
        let task = spawn_subscriber(
            Subscriber::new(opts, pattern, false, true),
            log.clone(),
            stop_rx.clone(),
        );
        subs.push((i, order[0], log, task));
    }
    let describe_subs = |subs: &[(usize, usize, Arc<Mutex<SubLog>>, _)]| {
        subs.iter()
            .map(|(i, _, log, _)| {
                let log = log.lock().unwrap();
                format!(
                    "sub{i}: subscribes {:?}, last {:?}, disconnects {:?}, fatal {:?}",
                    log.subscribes,
                    topics.map(|t| log.last_seq(t)),
                    log.disconnects,
                    log.fatal
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    wait_until(
        "all 26 subscribers subscribed",
        Duration::from_secs(60),
        || {
            subs.iter()
                .all(|s| !s.2.lock().unwrap().subscribes.is_empty())
        },
        || describe_subs(&subs),
    )
    .await;

    // Seq 1 of every topic reaches everyone first, so each subscriber has a
    // position on every topic to resume from (a wildcard subscriber can
    // only ask `since` for topics it has seen).
    for topic in topics {
        let (status, body) = cluster.nodes[1]
            .http_publish(topic, &json!({"p": "init"}))
            .await
            .expect("initial publish");
        assert_eq!((status, body["seq"].as_u64()), (200, Some(1)), "{body}");
    }
    wait_until(
        "seq 1 of every topic everywhere",
        Duration::from_secs(30),
        || {
            subs.iter()
                .all(|s| topics.iter().all(|t| s.2.lock().unwrap().last_seq(t) >= 1))
        },
        || describe_subs(&subs),
    )
    .await;

    // Publishers: (node, topic). k/0 and k/3 each have two nodes publishing.
    let plan = [
        (0, "k/0"),
        (0, "k/3"),
        (1, "k/1"),
        (1, "k/3"),
        (2, "k/2"),
        (2, "k/0"),
    ];
    let mut publishers = Vec::new();
    for (p, (node, topic)) in plan.into_iter().enumerate() {
        let log = Arc::new(Mutex::new(PubLog::default()));
        let url = urls[node].clone();
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            let mut conn = match Connection::connect(&client_options(&url)).await {
                Ok(c) => c,
                Err(e) => {
                    task_log.lock().unwrap().ended_by = Some(format!("connect: {e}"));
                    return;
                }
            };
            for i in 0..PER_PUBLISHER {
                let data = json!({"p": p, "i": i});
                match conn.publish(topic, &data).await {
                    Ok(stamp) => {
                        task_log
                            .lock()
                            .unwrap()
                            .acked
                            .push((stamp.seq, stamp.epoch, data))
                    }
                    Err(ClientError::Server { code, message }) => task_log
                        .lock()
                        .unwrap()
                        .refused
                        .push(format!("#{i}: {} {message}", code.as_str())),
                    Err(e) => {
                        task_log.lock().unwrap().ended_by = Some(format!("#{i}: {e}"));
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        publishers.push((p, node, topic, log, task));
    }

    // Kill A once its publishers are well under way.
    wait_until(
        "A's publishers under way",
        Duration::from_secs(60),
        || {
            publishers
                .iter()
                .filter(|p| p.1 == 0)
                .all(|p| p.3.lock().unwrap().acked.len() >= 40)
        },
        || {
            format!(
                "{:?}",
                publishers
                    .iter()
                    .map(|p| p.3.lock().unwrap().acked.len())
                    .collect::<Vec<_>>()
            )
        },
    )
    .await;
    let killed_at = Instant::now();
    cluster.nodes[0].sigkill();
    eprintln!("SIGKILLed nodeA");

    for (p, node, topic, log, task) in publishers.iter_mut() {
        timeout(Duration::from_secs(120), task)
            .await
            .unwrap_or_else(|_| panic!("publisher {p} ({topic} on node {node}) did not finish"))
            .expect("publisher task");
        let log = log.lock().unwrap();
        eprintln!(
            "publisher {p} on node{} {topic}: {} acknowledged, {} refused, ended by {:?}",
            char::from(b'A' + *node as u8),
            log.acked.len(),
            log.refused.len(),
            log.ended_by
        );
        if *node != 0 {
            assert_eq!(log.ended_by, None, "publisher {p} on a surviving node");
            assert!(
                log.refused.is_empty(),
                "publisher {p}: refused {:?}",
                log.refused
            );
            assert_eq!(log.acked.len() as u64, PER_PUBLISHER);
        } else {
            assert!(log.acked.len() >= 40);
        }
    }

    // The last seq of each topic: the highest acknowledged, received, or
    // held by a surviving node (an unacknowledged publish on A may exist).
    let mut last: BTreeMap<&str, u64> = topics.iter().map(|t| (*t, 1)).collect();
    for (_, _, topic, log, _) in &publishers {
        for (seq, _, _) in &log.lock().unwrap().acked {
            let l = last.get_mut(topic).unwrap();
            *l = (*l).max(*seq);
        }
    }
    for node in &cluster.nodes[1..] {
        for topic in topics {
            let (status, body) = http(node.addr, "GET", &format!("/api/topics/{topic}"), "")
                .await
                .expect("last value");
            assert_eq!(status, 200, "{}: last value of {topic}: {body}", node.name);
            let l = last.get_mut(topic).unwrap();
            *l = (*l).max(body["seq"].as_u64().expect("seq"));
        }
    }
    for (_, _, log, _) in &subs {
        for topic in topics {
            let l = last.get_mut(topic).unwrap();
            *l = (*l).max(log.lock().unwrap().last_seq(topic));
        }
    }
    eprintln!("last seq per topic: {last:?}");
    wait_until(
        "every subscriber at the last seq of every topic",
        Duration::from_secs(60),
        || {
            subs.iter().all(|s| {
                let log = s.2.lock().unwrap();
                topics.iter().all(|t| log.last_seq(t) >= last[t])
            })
        },
        || describe_subs(&subs),
    )
    .await;
    let recovered_after = killed_at.elapsed();
    stop_tx.send(true).unwrap();
    for (i, _, _, task) in subs.iter_mut() {
        timeout(Duration::from_secs(10), task)
            .await
            .unwrap_or_else(|_| panic!("sub{i} did not stop"))
            .expect("subscriber task");
    }

    // Exactly once, contiguous, one epoch, every acknowledged payload.
    let mut acked: HashMap<&str, Vec<(u64, String, Value)>> = HashMap::new();
    for (_, _, topic, log, _) in &publishers {
        acked
            .entry(topic)
            .or_default()
            .extend(log.lock().unwrap().acked.iter().cloned());
    }
    for (i, home, log, _) in &subs {
        let log = log.lock().unwrap();
        let who = format!("sub{i} (home node{})", char::from(b'A' + *home as u8));
        assert_eq!(log.fatal, None, "{who}");
        assert!(log.gaps.is_empty(), "{who}: gaps {:?}", log.gaps);
        assert_eq!(
            log.duplicates_dropped, 0,
            "{who}: the server sent duplicates"
        );
        for (node, recovered, not_recovered) in &log.subscribes {
            assert!(
                not_recovered.is_empty(),
                "{who} on {node}: not_recovered {not_recovered:?} although the backplane \
                 holds every message (disconnects: {:?})",
                log.disconnects
            );
            assert!(
                recovered.is_empty() || recovered.len() == topics.len(),
                "{who} on {node}: recovered {recovered:?}"
            );
        }
        for topic in topics {
            let msgs = &log.msgs[topic];
            let seqs: Vec<u64> = msgs.iter().map(|m| m.0).collect();
            assert_eq!(
                seqs,
                (1..=last[topic]).collect::<Vec<_>>(),
                "{who}: {topic}"
            );
            assert!(
                msgs.iter().all(|m| m.1 == msgs[0].1),
                "{who}: {topic}: epochs differ"
            );
            for (seq, epoch, data) in acked.get(topic).into_iter().flatten() {
                let m = &msgs[usize::try_from(*seq).unwrap() - 1];
                assert_eq!((&m.1, &m.2), (epoch, data), "{who}: {topic} seq {seq}");
            }
        }
        if *home == 0 {
            assert!(!log.disconnects.is_empty(), "{who} never noticed A dying");
            let (node, recovered, _) = log.subscribes.last().unwrap();
            assert_ne!(node, "nodeA", "{who} still on A");
            assert_eq!(recovered.len(), topics.len(), "{who}: resumed on {node}");
        } else {
            assert!(log.disconnects.is_empty(), "{who}: {:?}", log.disconnects);
            assert_eq!(log.subscribes.len(), 1, "{who}");
        }
    }
    eprintln!(
        "all 26 subscribers complete {recovered_after:?} after the SIGKILL (moved: {})",
        subs.iter()
            .filter(|s| s.1 == 0)
            .map(|s| s.2.lock().unwrap().subscribes.last().unwrap().0.clone())
            .collect::<Vec<_>>()
            .join(",")
    );
}

// ---------------------------------------------------------------------------
// 4. Backplane outage
// ---------------------------------------------------------------------------

/// The backplane server is SIGKILLed: every node reports `backplane_down`
/// on `/readyz`, publishes are refused (HTTP 503, WebSocket `unavailable`)
/// and none of them is delivered later. After a restart on the same port
/// the nodes are ready again and new messages reach the subscriptions made
/// before the outage, on the same connections.
async fn backplane_outage(kind: Kind) {
    let mut cluster = Cluster::start(kind, "outage", 3, &[]).await;
    let mut on_b = cluster.nodes[1].connect().await;
    subscribe(&mut on_b, "o/+", &[]).await;
    let mut on_c = cluster.nodes[2].connect().await;
    subscribe(&mut on_c, "o/1", &[]).await;
    let mut pub_a = cluster.nodes[0].connect().await;
    for i in 1..=5u64 {
        let (seq, _) = publish_alternating(
            &cluster.nodes[0],
            &mut pub_a,
            "o/1",
            i,
            &json!({"before": i}),
        )
        .await;
        assert_eq!(seq, i);
    }
    let before_b = recv_msgs(&mut on_b, 5).await;
    let before_c = recv_msgs(&mut on_c, 5).await;
    assert_eq!(before_b, before_c);
    let epoch_before = before_b[0].epoch.clone();

    cluster.service().stop();
    let nodes: Vec<&Node> = cluster.nodes.iter().collect();
    let down_after =
        wait_readyz(&nodes, 503, Some("backplane_down"), Duration::from_secs(15)).await;
    eprintln!("all nodes report backplane_down {down_after:?} after the kill");

    // Every publish is refused, on every node, over both transports.
    let (mut refused_http, mut refused_ws) = (0, 0);
    let mut pubs: Vec<Connection> = Vec::new();
    pubs.push(pub_a);
    pubs.push(cluster.nodes[1].connect().await);
    pubs.push(cluster.nodes[2].connect().await);
    for i in 0..30u64 {
        let n = usize::try_from(i % 3).unwrap();
        let data = json!({"refused": i});
        let (status, body) = cluster.nodes[n]
            .http_publish("o/1", &data)
            .await
            .expect("HTTP answer while the backplane is down");
        assert_eq!(
            status, 503,
            "HTTP publish on {}: {body}",
            cluster.nodes[n].name
        );
        assert_eq!(body["error"], "backplane_down", "{body}");
        refused_http += 1;
        match pubs[n].publish("o/1", &data).await {
            Err(ClientError::Server {
                code: ErrorCode::Unavailable,
                ..
            }) => refused_ws += 1,
            other => panic!(
                "WS publish on {} while down: {other:?}",
                cluster.nodes[n].name
            ),
        }
    }
    // A new subscription cannot be confirmed by the backplane either.
    let mut late = cluster.nodes[0].connect().await;
    let id = late.next_id();
    match late
        .request(ClientFrame::Sub {
            id: Some(id),
            topic: "o2/#".into(),
            snapshot: false,
            since: vec![],
        })
        .await
    {
        Err(ClientError::Server {
            code: ErrorCode::Unavailable,
            ..
        }) => {}
        other => panic!("sub while the backplane is down: {other:?}"),
    }
    // The old subscriptions stay open and quiet.
    assert_quiet(&mut on_b, Duration::from_millis(500)).await;
    assert_quiet(&mut on_c, Duration::from_millis(10)).await;
    eprintln!("refused while down: {refused_http} HTTP, {refused_ws} WebSocket publishes");

    let service = cluster.backplane.take().unwrap();
    let restarted = Instant::now();
    cluster.backplane = Some(cluster_common::restart_backplane(service).await);
    let nodes: Vec<&Node> = cluster.nodes.iter().collect();
    let ready_after = wait_readyz(&nodes, 200, None, Duration::from_secs(20)).await;
    eprintln!(
        "all nodes ready {:?} after the restart ({ready_after:?} after the server listened)",
        restarted.elapsed()
    );

    // New messages reach the subscriptions made before the outage.
    let mut pub_a = pubs.swap_remove(0);
    let mut stamps = Vec::new();
    for i in 1..=10u64 {
        stamps.push(
            publish_alternating(
                &cluster.nodes[0],
                &mut pub_a,
                "o/1",
                i,
                &json!({"after": i}),
            )
            .await,
        );
    }
    let first = stamps[0].0;
    eprintln!(
        "after the restart: seq {first}.. epoch {} (before: 1..=5 epoch {epoch_before})",
        stamps[0].1
    );
    assert!(
        stamps
            .iter()
            .enumerate()
            .all(|(k, s)| s.0 == first + k as u64 && s.1 == stamps[0].1),
        "contiguous stamps after the restart: {stamps:?}"
    );
    match kind {
        // JetStream file storage keeps the log: the numbering goes on.
        Kind::Nats => assert_eq!((first, stamps[0].1.as_str()), (6, epoch_before.as_str())),
        // Redis without persistence lost it: a new epoch from 1, or (if a
        // node re-seeded it) the old numbering — either is consistent.
        Kind::Redis => assert!(
            (first == 1 && stamps[0].1 != epoch_before)
                || (first == 6 && stamps[0].1 == epoch_before),
            "after a Redis restart without persistence: {stamps:?} (epoch before {epoch_before})"
        ),
    }
    for (who, conn) in [("B o/+", &mut on_b), ("C o/1", &mut on_c)] {
        let msgs = recv_msgs(conn, 10).await;
        for (k, m) in msgs.iter().enumerate() {
            let (seq, epoch) = &stamps[k];
            assert_eq!(
                (m.topic.as_str(), m.seq, &m.epoch, &m.data),
                ("o/1", *seq, epoch, &json!({"after": k + 1})),
                "{who}: message {k} after the restart"
            );
        }
        assert_quiet(conn, Duration::from_millis(300)).await;
    }
}

// ---------------------------------------------------------------------------
// 5. Reconnect storm
// ---------------------------------------------------------------------------

/// Progress of the storm's clients.
#[derive(Default)]
struct Storm {
    subscribed: AtomicUsize,
    got_first: AtomicUsize,
    closed_by_drain: AtomicUsize,
    resubscribed: AtomicUsize,
    got_final: AtomicUsize,
    /// When the last client was resubscribed.
    last_resubscribed: Mutex<Option<Instant>>,
    /// Per client: from the start of its reconnect to the `ok` of its resume.
    reconnect_times: Mutex<Vec<Duration>>,
    connect_retries: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Storm {
    fn progress(&self) -> String {
        let failures = self.failures.lock().unwrap();
        format!(
            "subscribed {}, first {}, drained {}, resubscribed {}, final {}, connect retries {}, \
             {} failures (first: {:?})",
            self.subscribed.load(Relaxed),
            self.got_first.load(Relaxed),
            self.closed_by_drain.load(Relaxed),
            self.resubscribed.load(Relaxed),
            self.got_final.load(Relaxed),
            self.connect_retries.load(Relaxed),
            failures.len(),
            failures.iter().take(5).collect::<Vec<_>>()
        )
    }
}

/// Waits until `done` holds for the storm's progress, failing at once when
/// a client task ended with an error.
async fn storm_wait(
    what: &str,
    limit: Duration,
    done: impl Fn(&Storm) -> bool,
    clients: &mut tokio::task::JoinSet<Result<(), String>>,
    storm: &Storm,
) {
    let deadline = Instant::now() + limit;
    loop {
        while let Some(ended) = clients.try_join_next() {
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(e)) => storm.failures.lock().unwrap().push(e),
                Err(e) => storm
                    .failures
                    .lock()
                    .unwrap()
                    .push(format!("client task: {e}")),
            }
        }
        assert!(
            storm.failures.lock().unwrap().is_empty(),
            "{what}: {}",
            storm.progress()
        );
        if done(storm) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}: {}",
            storm.progress()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects to `url`, retrying (bounded) on failure; counts retries.
async fn connect_retrying(url: &str, storm: &Storm) -> Result<Connection, String> {
    let opts = client_options(url);
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    let mut last = String::new();
    for attempt in 0..10 {
        match Connection::connect(&opts).await {
            Ok(c) => return Ok(c),
            Err(e) => last = e.to_string(),
        }
        storm.connect_retries.fetch_add(1, Relaxed);
        tokio::time::sleep(backoff.delay(attempt)).await;
    }
    Err(format!("connect to {url}: {last}"))
}

/// One storm client: subscribe on A, note the first message, get drained,
/// wait the hinted time, resume on `target` with `since`, get the final message.
async fn storm_client(
    a_url: String,
    target: String,
    topic: String,
    storm: Arc<Storm>,
    connect_slots: Arc<tokio::sync::Semaphore>,
) -> Result<(), String> {
    let mut conn = {
        let _slot = connect_slots.acquire().await.expect("semaphore");
        let mut conn = connect_retrying(&a_url, &storm).await?;
        let id = conn.next_id();
        match conn
            .request(ClientFrame::Sub {
                id: Some(id),
                topic: topic.clone(),
                snapshot: false,
                since: vec![],
            })
            .await
        {
            Ok(ServerFrame::Ok(_)) => conn,
            other => return Err(format!("sub on A: {other:?}")),
        }
    };
    storm.subscribed.fetch_add(1, Relaxed);
    let position = loop {
        match conn.next().await {
            Some(Ok(ServerFrame::Msg { seq, epoch, .. })) => break Position { epoch, seq },
            Some(Ok(_)) => {}
            other => return Err(format!("waiting for the first message on A: {other:?}")),
        }
    };
    storm.got_first.fetch_add(1, Relaxed);
    // Read until A closes the connection.
    loop {
        match conn.next().await {
            None => break,
            Some(Ok(ServerFrame::Msg { seq, .. })) => {
                return Err(format!("unexpected message seq {seq} on A"))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("connection to A failed instead of draining: {e}")),
        }
    }
    let close = conn.close_info().cloned();
    let hint = match &close {
        Some(c) if c.code == Some(1001) => parse_reconnect_after(&c.reason),
        _ => None,
    };
    let Some(hint) = hint else {
        return Err(format!("A closed without a drain hint: {close:?}"));
    };
    storm.closed_by_drain.fetch_add(1, Relaxed);
    drop(conn);
    let wait = Backoff::new(Duration::ZERO, Duration::ZERO).jitter_hint(hint);
    tokio::time::sleep(wait).await;

    let started = Instant::now();
    let mut conn = connect_retrying(&target, &storm).await?;
    let id = conn.next_id();
    match conn
        .request(ClientFrame::Sub {
            id: Some(id),
            topic: topic.clone(),
            snapshot: false,
            since: vec![(topic.clone(), position.clone())],
        })
        .await
    {
        Ok(ServerFrame::Ok(reply)) if reply.recovered == Some(vec![topic.clone()]) => {}
        other => return Err(format!("resume on {target}: {other:?}")),
    }
    storm
        .reconnect_times
        .lock()
        .unwrap()
        .push(started.elapsed());
    storm.resubscribed.fetch_add(1, Relaxed);
    {
        let mut last = storm.last_resubscribed.lock().unwrap();
        let now = Instant::now();
        if last.is_none_or(|l| l < now) {
            *last = Some(now);
        }
    }
    loop {
        match conn.next().await {
            Some(Ok(ServerFrame::Msg { seq, epoch, .. })) => {
                if (seq, &epoch) == (position.seq + 1, &position.epoch) {
                    storm.got_final.fetch_add(1, Relaxed);
                    return Ok(());
                }
                return Err(format!(
                    "after the storm: seq {seq} epoch {epoch}, wanted {position:?}+1"
                ));
            }
            Some(Ok(_)) => {}
            other => {
                return Err(format!(
                    "waiting for the final message on {target}: {other:?}"
                ))
            }
        }
    }
}

/// 5,000 WebSocket clients on A, spread over four topics. A is drained
/// (SIGTERM, `server.drain_period = 5s`); each client waits the
/// `reconnect_after_ms` it was given (±10 %) and resumes on B or C
/// (alternating) with `since`. B and C must stay ready throughout; every
/// client must be resubscribed with `recovered`, and receive the next
/// message of its topic.
async fn reconnect_storm(kind: Kind) {
    const CLIENTS: usize = 5_000;
    let mut cluster = Cluster::start(kind, "storm", 3, &[("server.drain_period", "5s")]).await;
    let urls: Vec<String> = cluster.nodes.iter().map(Node::ws_url).collect();
    let topics: Vec<String> = (0..4).map(|t| format!("s/{t}")).collect();
    let storm = Arc::new(Storm::default());
    let connect_slots = Arc::new(tokio::sync::Semaphore::new(64));
    let setup = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        clients.spawn(storm_client(
            urls[0].clone(),
            urls[1 + i % 2].clone(),
            topics[i % topics.len()].clone(),
            storm.clone(),
            connect_slots.clone(),
        ));
    }
    storm_wait(
        "all clients subscribed on A",
        Duration::from_secs(60),
        |s| s.subscribed.load(Relaxed) == CLIENTS,
        &mut clients,
        &storm,
    )
    .await;
    eprintln!(
        "{CLIENTS} clients subscribed on nodeA in {:?}",
        setup.elapsed()
    );
    for topic in &topics {
        let (status, body) = cluster.nodes[1]
            .http_publish(topic, &json!({"phase": "before"}))
            .await
            .expect("publish");
        assert_eq!(status, 200, "{body}");
    }
    storm_wait(
        "the first message everywhere",
        Duration::from_secs(30),
        |s| s.got_first.load(Relaxed) == CLIENTS,
        &mut clients,
        &storm,
    )
    .await;

    // Watch B and C: they must stay ready through the storm.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let watched: Vec<(String, std::net::SocketAddr)> = cluster.nodes[1..]
        .iter()
        .map(|n| (n.name.clone(), n.addr))
        .collect();
    let watcher = tokio::spawn(async move {
        let mut polls = 0usize;
        let mut bad = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = stop_rx.changed() => break,
                _ = tick.tick() => {}
            }
            for (name, addr) in &watched {
                polls += 1;
                match http(*addr, "GET", "/readyz", "").await {
                    Ok((200, _)) => {}
                    other => bad.push(format!("{name}: {other:?}")),
                }
            }
        }
        (polls, bad)
    });

    let sigterm_at = Instant::now();
    cluster.nodes[0].sigterm();
    storm_wait(
        "every client resubscribed on B or C",
        Duration::from_secs(45),
        |s| s.resubscribed.load(Relaxed) == CLIENTS,
        &mut clients,
        &storm,
    )
    .await;
    let storm_took = storm.last_resubscribed.lock().unwrap().unwrap() - sigterm_at;
    stop_tx.send(true).unwrap();
    let (polls, bad) = timeout(Duration::from_secs(15), watcher)
        .await
        .expect("readiness watcher stops")
        .expect("watcher task");
    assert!(
        bad.is_empty(),
        "B/C not ready during the storm ({} of {polls} polls): {bad:?}",
        bad.len()
    );
    assert!(polls >= 2 * 10, "only {polls} readiness polls");

    for topic in &topics {
        let (status, body) = cluster.nodes[2]
            .http_publish(topic, &json!({"phase": "after"}))
            .await
            .expect("publish");
        assert_eq!(status, 200, "{body}");
    }
    storm_wait(
        "the message after the storm everywhere",
        Duration::from_secs(30),
        |s| s.got_final.load(Relaxed) == CLIENTS,
        &mut clients,
        &storm,
    )
    .await;
    while let Some(done) = timeout(Duration::from_secs(10), clients.join_next())
        .await
        .expect("client tasks end")
    {
        done.expect("client task").expect("client");
    }
    let exit = cluster.nodes[0].wait_exit(Duration::from_secs(20)).await;
    assert_eq!(exit, Some(0), "nodeA exits cleanly after draining");

    let mut times = storm.reconnect_times.lock().unwrap().clone();
    times.sort();
    let pct = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)];
    let backplane = match kind {
        Kind::Nats => "nats",
        Kind::Redis => "redis",
    };
    println!(
        "STORM: {backplane}: {CLIENTS} clients drained from nodeA (drain_period 5s, reconnect_after_ms hints 500-5499 ms ±10%) \
         all resubscribed with `recovered` on nodeB/nodeC {:.2} s after SIGTERM; per-client reconnect+resume p50 {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms; {} connect retries; B/C /readyz 200 in all {polls} polls",
        storm_took.as_secs_f64(),
        pct(50).as_secs_f64() * 1e3,
        pct(99).as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3,
        storm.connect_retries.load(Relaxed),
    );
}

// ---------------------------------------------------------------------------
// One test per (scenario, backplane)
// ---------------------------------------------------------------------------

/// Runs `scenario` under an overall limit. On timeout the panic happens
/// while the scenario (and its node guards) is still alive, so the nodes'
/// logs are printed as they are dropped.
async fn bounded(limit: Duration, scenario: impl Future<Output = ()>) {
    cluster_common::raise_nofile_limit();
    let mut scenario = std::pin::pin!(scenario);
    if timeout(limit, scenario.as_mut()).await.is_err() {
        panic!("the scenario did not finish within {limit:?}");
    }
}

macro_rules! per_backplane {
    ($scenario:ident, $limit_secs:expr) => {
        mod $scenario {
            use super::*;

            #[tokio::test(flavor = "multi_thread")]
            async fn nats() {
                bounded(
                    Duration::from_secs($limit_secs),
                    super::$scenario(Kind::Nats),
                )
                .await
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn redis() {
                bounded(
                    Duration::from_secs($limit_secs),
                    super::$scenario(Kind::Redis),
                )
                .await
            }
        }
    };
}

per_backplane!(fanout, 120);
per_backplane!(recovery_on_another_node, 120);
per_backplane!(node_killed_mid_stream, 240);
per_backplane!(backplane_outage, 180);
per_backplane!(reconnect_storm, 90);
