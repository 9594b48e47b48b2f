//! The cluster layer against the in-process reference backplane: several
//! hubs sharing one set of topic logs, as NATS or Redis would give them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pulsegate_core::{
    Cluster, Hub, HubConfig, Incoming, MemoryBackplane, Outbox, OutboxLimits, SlowConsumerPolicy,
    SubscribeOutcome,
};
use pulsegate_proto::{Codec, Pattern, Position, ServerFrame};
use tokio::sync::mpsc;

struct Node {
    hub: Arc<Hub>,
    cluster: Arc<Cluster>,
    bp: MemoryBackplane,
}

fn node(shared: &MemoryBackplane, channel: usize) -> (Node, mpsc::Receiver<Incoming>) {
    let (tx, rx) = mpsc::channel(channel);
    let bp = shared.node(tx);
    let hub = Arc::new(Hub::new(HubConfig {
        max_history_messages: 100,
        max_history_age: Duration::from_secs(60),
        max_topics: 1000,
    }));
    let cluster = Arc::new(Cluster::new(
        hub.clone(),
        Arc::new(bp.clone()),
        100,
        Arc::new(|_| {}),
    ));
    (Node { hub, cluster, bp }, rx)
}

fn started(shared: &MemoryBackplane) -> Node {
    let (n, rx) = node(shared, 1024);
    tokio::spawn(n.cluster.clone().run_ingest(rx));
    n
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn outbox() -> Arc<Outbox> {
    Outbox::new(
        NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        Codec::Json,
        OutboxLimits {
            max_messages: 10_000,
            max_bytes: 1 << 24,
            policy: SlowConsumerPolicy::Disconnect,
        },
    )
}

fn pat(s: &str) -> Pattern {
    Pattern::parse(s, 256).unwrap()
}

async fn subscribe(
    n: &Node,
    ob: &Arc<Outbox>,
    pattern: &str,
    since: &[(String, Position)],
) -> SubscribeOutcome {
    let p = pat(pattern);
    n.cluster.interest(&p).await.unwrap();
    for (t, pos) in since {
        n.cluster.catch_up(t, Some(pos), false).await.unwrap();
    }
    n.hub.subscribe(ob, &p, false, since, |_| {
        Bytes::from_static(br#"{"op":"ok"}"#)
    })
}

/// (topic, seq, epoch) of every message queued so far (replies skipped).
fn drain(ob: &Outbox) -> Vec<(String, u64, String)> {
    let mut out = VecDeque::new();
    ob.take_batch(&mut out, usize::MAX, usize::MAX).unwrap();
    out.iter()
        .flat_map(|o| o.frames(Codec::Json))
        .filter_map(|f| match Codec::Json.decode_server(f).unwrap() {
            ServerFrame::Msg {
                topic, seq, epoch, ..
            } => Some((topic, seq, epoch)),
            _ => None,
        })
        .collect()
}

async fn wait_for(ob: &Outbox, n: usize) -> Vec<(String, u64, String)> {
    let mut got = Vec::new();
    for _ in 0..500 {
        got.extend(drain(ob));
        if got.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    got
}

fn seqs(v: &[(String, u64, String)]) -> Vec<u64> {
    v.iter().map(|m| m.1).collect()
}

#[tokio::test]
async fn publish_on_one_node_reaches_the_others_in_order() {
    let shared = MemoryBackplane::new(100);
    let (a, b, c) = (started(&shared), started(&shared), started(&shared));
    let (sb, sc) = (outbox(), outbox());
    subscribe(&b, &sb, "grid/+", &[]).await;
    subscribe(&c, &sc, "grid/meter1", &[]).await;
    for i in 1..=20u64 {
        let m = a
            .cluster
            .publish("grid/meter1", Bytes::from(i.to_string()))
            .await
            .unwrap();
        assert_eq!(m.seq, i);
    }
    let want: Vec<u64> = (1..=20).collect();
    assert_eq!(seqs(&wait_for(&sb, 20).await), want);
    assert_eq!(seqs(&wait_for(&sc, 20).await), want);
    assert_eq!(
        a.hub.position("grid/meter1"),
        None,
        "A has no subscriber, so no copy"
    );
}

#[tokio::test]
async fn concurrent_publishers_on_all_nodes_share_one_contiguous_seq() {
    let shared = MemoryBackplane::new(1000);
    let nodes: Vec<Node> = (0..3).map(|_| started(&shared)).collect();
    let sub = outbox();
    subscribe(&nodes[1], &sub, "t", &[]).await;
    let mut tasks = Vec::new();
    for n in &nodes {
        let c = n.cluster.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100u64 {
                c.publish("t", Bytes::from(i.to_string())).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        seqs(&wait_for(&sub, 300).await),
        (1..=300).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn recovery_on_another_node_gives_exactly_the_missed_messages() {
    let shared = MemoryBackplane::new(100);
    let (a, b, c) = (started(&shared), started(&shared), started(&shared));
    let first = outbox();
    subscribe(&a, &first, "room", &[]).await;
    for i in 1..=3u64 {
        b.cluster
            .publish("room", Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    let seen = wait_for(&first, 3).await;
    assert_eq!(seqs(&seen), vec![1, 2, 3]);
    let epoch = seen[2].2.clone();
    a.hub.remove_connection(first.id(), [&pat("room")]);
    a.cluster.release(&pat("room")).await;
    for i in 4..=8u64 {
        b.cluster
            .publish("room", Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    // C never had the topic: it reads the log from the backplane.
    let again = outbox();
    let since = vec![(
        "room".to_string(),
        Position {
            epoch: epoch.clone(),
            seq: 3,
        },
    )];
    let out = subscribe(&c, &again, "room", &since).await;
    assert_eq!(out.recovered, vec!["room".to_string()]);
    assert_eq!(seqs(&drain(&again)), vec![4, 5, 6, 7, 8]);
    b.cluster
        .publish("room", Bytes::from_static(b"9"))
        .await
        .unwrap();
    assert_eq!(seqs(&wait_for(&again, 1).await), vec![9]);
    // A dropped its copy when its last subscriber left; it reads the log again.
    let back = outbox();
    let since = vec![("room".to_string(), Position { epoch, seq: 5 })];
    let out = subscribe(&a, &back, "room", &since).await;
    assert_eq!(out.recovered, vec!["room".to_string()]);
    assert_eq!(seqs(&drain(&back)), vec![6, 7, 8, 9]);
}

#[tokio::test]
async fn a_trimmed_or_forgotten_log_is_not_recovered_partially() {
    let shared = MemoryBackplane::new(5);
    let (a, b) = (started(&shared), started(&shared));
    for i in 1..=20u64 {
        a.cluster
            .publish("x", Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    let epoch = b
        .cluster
        .last_value("x")
        .await
        .unwrap()
        .unwrap()
        .epoch
        .to_string();
    let ob = outbox();
    let since = vec![(
        "x".to_string(),
        Position {
            epoch: epoch.clone(),
            seq: 3,
        },
    )];
    let out = subscribe(&b, &ob, "x", &since).await;
    assert_eq!(
        out.not_recovered,
        vec!["x".to_string()],
        "4..15 were trimmed"
    );
    assert!(drain(&ob).is_empty());
    // The log is lost (expiry): the old epoch cannot be recovered anywhere.
    shared.forget("x");
    let m = a
        .cluster
        .publish("x", Bytes::from_static(b"1"))
        .await
        .unwrap();
    assert_eq!(m.seq, 1);
    assert_ne!(*m.epoch, *epoch);
    let ob2 = outbox();
    let since = vec![("x".to_string(), Position { epoch, seq: 20 })];
    let out = subscribe(&b, &ob2, "x", &since).await;
    assert_eq!(out.not_recovered, vec!["x".to_string()]);
}

#[tokio::test]
async fn holes_in_the_live_stream_are_filled_from_the_log() {
    let shared = MemoryBackplane::new(100);
    let a = started(&shared);
    // B's channel holds two messages and its ingest task is not running yet.
    let (b, rx) = node(&shared, 2);
    let ob = outbox();
    subscribe(&b, &ob, "h", &[]).await;
    for i in 1..=5u64 {
        a.cluster
            .publish("h", Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    tokio::spawn(b.cluster.clone().run_ingest(rx));
    assert_eq!(seqs(&wait_for(&ob, 2).await), vec![1, 2]);
    a.cluster
        .publish("h", Bytes::from_static(b"6"))
        .await
        .unwrap();
    assert_eq!(seqs(&wait_for(&ob, 4).await), vec![3, 4, 5, 6]);
    assert_eq!(
        b.cluster
            .stats()
            .gaps_filled
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        b.cluster
            .stats()
            .gap_lost
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn a_reconnect_resyncs_the_tail_and_an_outage_refuses_publishes() {
    let shared = MemoryBackplane::new(100);
    let a = started(&shared);
    let (b, rx) = node(&shared, 1);
    let ob = outbox();
    subscribe(&b, &ob, "r", &[]).await;
    for i in 1..=4u64 {
        a.cluster
            .publish("r", Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    tokio::spawn(b.cluster.clone().run_ingest(rx));
    assert_eq!(seqs(&wait_for(&ob, 1).await), vec![1]);
    b.bp.set_up(false);
    let refused = b.cluster.publish("r", Bytes::from_static(b"0")).await;
    assert!(
        refused.is_err(),
        "publishing while down is refused, not lost"
    );
    b.bp.set_up(true);
    assert_eq!(seqs(&wait_for(&ob, 3).await), vec![2, 3, 4]);
}

#[tokio::test]
async fn live_messages_arriving_before_the_catch_up_do_not_spoil_recovery() {
    let shared = MemoryBackplane::new(100);
    let (a, c) = (started(&shared), started(&shared));
    for i in 1..=10u64 {
        a.cluster
            .publish("q", Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    let epoch = a
        .cluster
        .last_value("q")
        .await
        .unwrap()
        .unwrap()
        .epoch
        .to_string();
    // A first subscriber on C: live messages start the topic there at 11.
    let p = pat("q");
    let other = outbox();
    subscribe(&c, &other, "q", &[]).await;
    for i in 11..=14u64 {
        a.cluster
            .publish("q", Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    for _ in 0..200 {
        if c.hub.position("q").is_some_and(|(_, s)| s == 14) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(c.hub.position("q").map(|(_, s)| s), Some(14));
    // Now a client resumes on C from 5: the catch-up read must fill 6..10 in.
    let ob = outbox();
    let since = vec![("q".to_string(), Position { epoch, seq: 5 })];
    c.cluster
        .catch_up("q", Some(&since[0].1), false)
        .await
        .unwrap();
    let out = c.hub.subscribe(&ob, &p, false, &since, |_| {
        Bytes::from_static(br#"{"op":"ok"}"#)
    });
    assert_eq!(out.recovered, vec!["q".to_string()]);
    assert_eq!(seqs(&drain(&ob)), (6..=14).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_new_subscriber_does_not_get_what_was_published_while_the_node_had_none() {
    let shared = MemoryBackplane::new(100);
    let (a, b) = (started(&shared), started(&shared));
    let first = outbox();
    subscribe(&b, &first, "s", &[]).await;
    for i in 1..=3u64 {
        a.cluster
            .publish("s", Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    assert_eq!(seqs(&wait_for(&first, 3).await), vec![1, 2, 3]);
    b.hub.remove_connection(first.id(), [&pat("s")]);
    b.cluster.release(&pat("s")).await;
    for i in 4..=6u64 {
        a.cluster
            .publish("s", Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    let later = outbox();
    subscribe(&b, &later, "s", &[]).await;
    a.cluster
        .publish("s", Bytes::from_static(b"7"))
        .await
        .unwrap();
    assert_eq!(seqs(&wait_for(&later, 1).await), vec![7]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        drain(&later).is_empty(),
        "4..6 were published before it subscribed"
    );
}
