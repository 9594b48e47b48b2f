//! Live delivery: what a node subscribed to a pattern receives, in order,
//! and what it stops receiving after unsubscribing.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use common::{assert_quiet, next_message, node, pattern};
use pulsegate_core::{now_micros, Backplane};
use pulsegate_testkit::services::Service;

async fn publish(bp: &impl Backplane, topic: &str, data: &str) -> u64 {
    bp.publish(topic, Bytes::from(data.to_string()), now_micros())
        .await
        .expect("publish")
        .seq
}

#[tokio::test]
async fn exact_and_wildcard_patterns_deliver_in_seq_order() {
    let nats = Service::nats();
    let publisher = node(&nats.url(), "pub").await;
    let mut exact = node(&nats.url(), "exact").await;
    let mut plus = node(&nats.url(), "plus").await;
    let mut hash = node(&nats.url(), "hash").await;
    exact.bp.subscribe(&pattern("a/b")).await.unwrap();
    plus.bp.subscribe(&pattern("a/+")).await.unwrap();
    hash.bp.subscribe(&pattern("a/#")).await.unwrap();

    for i in 1..=20 {
        assert_eq!(publish(&*publisher.bp, "a/b", &format!("{i}")).await, i);
    }
    publish(&*publisher.bp, "a", "\"root\"").await;
    publish(&*publisher.bp, "a/b/c", "\"deep\"").await;
    publish(&*publisher.bp, "x/b", "\"other\"").await;

    for i in 1..=20 {
        for rx in [&mut exact.rx, &mut plus.rx, &mut hash.rx] {
            let m = next_message(rx).await;
            assert_eq!((&*m.topic, m.seq), ("a/b", i));
            assert_eq!(m.data, Bytes::from(format!("{i}")));
        }
    }
    let m = next_message(&mut hash.rx).await;
    assert_eq!((&*m.topic, m.seq, &m.data[..]), ("a", 1, &b"\"root\""[..]));
    let m = next_message(&mut hash.rx).await;
    assert_eq!((&*m.topic, m.seq), ("a/b/c", 1));
    for rx in [&mut exact.rx, &mut plus.rx, &mut hash.rx] {
        assert_quiet(rx, Duration::from_millis(200)).await;
    }
    assert_eq!(hash.bp.stats().received.load(Relaxed), 22);

    // Every live message carries the same stamp as the stored one.
    let log = publisher.bp.read("a/b", None, 1).await.unwrap().unwrap();
    assert_eq!(log.last_seq, 20);

    // Unsubscribed: nothing more.
    exact.bp.unsubscribe(&pattern("a/b")).await.unwrap();
    plus.bp.unsubscribe(&pattern("a/+")).await.unwrap();
    hash.bp.unsubscribe(&pattern("a/#")).await.unwrap();
    publish(&*publisher.bp, "a/b", "21").await;
    publish(&*publisher.bp, "a", "2").await;
    for rx in [&mut exact.rx, &mut plus.rx, &mut hash.rx] {
        assert_quiet(rx, Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn overlapping_patterns_share_subjects_and_unsubscribe_exactly() {
    let nats = Service::nats();
    let publisher = node(&nats.url(), "pub").await;
    let mut n = node(&nats.url(), "n").await;
    // `a/#` uses `pg.l.a.>` and `pg.l.a`; `a` uses `pg.l.a` too.
    n.bp.subscribe(&pattern("a/#")).await.unwrap();
    n.bp.subscribe(&pattern("a")).await.unwrap();
    publish(&*publisher.bp, "a", "1").await;
    let m = next_message(&mut n.rx).await;
    assert_eq!((&*m.topic, m.seq), ("a", 1));
    assert_quiet(&mut n.rx, Duration::from_millis(200)).await;

    n.bp.unsubscribe(&pattern("a/#")).await.unwrap();
    publish(&*publisher.bp, "a/x", "1").await;
    publish(&*publisher.bp, "a", "2").await;
    let m = next_message(&mut n.rx).await;
    assert_eq!((&*m.topic, m.seq), ("a", 2), "`a` still subscribed");
    assert_quiet(&mut n.rx, Duration::from_millis(200)).await;

    // Unsubscribing a pattern that was never subscribed changes nothing.
    n.bp.unsubscribe(&pattern("a/+")).await.unwrap();
    publish(&*publisher.bp, "a", "3").await;
    assert_eq!(next_message(&mut n.rx).await.seq, 3);

    n.bp.unsubscribe(&pattern("a")).await.unwrap();
    publish(&*publisher.bp, "a", "4").await;
    assert_quiet(&mut n.rx, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn first_level_wildcards_skip_dollar_topics() {
    let nats = Service::nats();
    let publisher = node(&nats.url(), "pub").await;
    let mut all = node(&nats.url(), "all").await;
    let mut sys = node(&nats.url(), "sys").await;
    all.bp.subscribe(&pattern("#")).await.unwrap();
    all.bp.subscribe(&pattern("+/stats")).await.unwrap();
    sys.bp.subscribe(&pattern("$sys/#")).await.unwrap();
    publish(&*publisher.bp, "$sys/stats", "1").await;
    publish(&*publisher.bp, "plain", "1").await;
    assert_eq!(&*next_message(&mut sys.rx).await.topic, "$sys/stats");
    assert_eq!(&*next_message(&mut all.rx).await.topic, "plain");
    assert_quiet(&mut all.rx, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn unusual_topic_names_round_trip() {
    let nats = Service::nats();
    let publisher = node(&nats.url(), "pub").await;
    let mut n = node(&nats.url(), "n").await;
    let topics = [
        "with space/x",
        "dot.ted/v1.2",
        "star*/gt>",
        "tilde~/~7E",
        "ünïcødé/日本/🚀",
        "$sys/x",
        "-_/--",
    ];
    for t in topics {
        n.bp.subscribe(&pattern(t)).await.unwrap();
    }
    n.bp.subscribe(&pattern("+/#")).await.unwrap();
    for t in topics {
        assert_eq!(publish(&*publisher.bp, t, "1").await, 1, "{t}");
        assert_eq!(publish(&*publisher.bp, t, "2").await, 2, "{t}");
    }
    // Each topic comes through its exact pattern and `+/#` (which skips
    // `$` topics); subscriptions run side by side, so group by topic.
    let copies = |t: &str| if t.starts_with('$') { 1 } else { 2 };
    let total: usize = topics.iter().map(|t| 2 * copies(t)).sum();
    let mut got: HashMap<String, Vec<u64>> = HashMap::new();
    for _ in 0..total {
        let m = next_message(&mut n.rx).await;
        got.entry(m.topic.to_string()).or_default().push(m.seq);
    }
    for t in topics {
        let mut seqs = got.remove(t).unwrap_or_default();
        seqs.sort();
        let want: Vec<u64> = if copies(t) == 2 {
            vec![1, 1, 2, 2]
        } else {
            vec![1, 2]
        };
        assert_eq!(seqs, want, "{t}");
        let log = publisher.bp.read(t, Some(0), 10).await.unwrap().unwrap();
        let seqs: Vec<u64> = log.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 2], "{t}");
        assert!(log.messages.iter().all(|m| &*m.topic == t));
    }
    assert!(got.is_empty(), "{got:?}");
    assert_quiet(&mut n.rx, Duration::from_millis(200)).await;
}
