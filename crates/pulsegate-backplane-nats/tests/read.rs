//! Reading a topic's log: the last message, messages after a seq (both the
//! short walk-back and the consumer scan), limits and trimming.

mod common;

use bytes::Bytes;
use common::{config, node, node_with};
use pulsegate_backplane_nats::NatsConfig;
use pulsegate_core::{now_micros, Backplane, Log};
use pulsegate_testkit::services::Service;

async fn publish_n(bp: &impl Backplane, topic: &str, n: u64) {
    for i in 1..=n {
        let stamp = bp
            .publish(topic, Bytes::from(format!("{{\"n\":{i}}}")), now_micros())
            .await
            .expect("publish");
        assert_eq!(stamp.seq, i);
    }
}

fn seqs(log: &Log) -> Vec<u64> {
    log.messages.iter().map(|m| m.seq).collect()
}

#[tokio::test]
async fn reads_last_after_and_limit() {
    let nats = Service::nats();
    let n = node(&nats.url(), "n").await;
    assert!(n.bp.read("nothing/here", None, 10).await.unwrap().is_none());
    assert!(n
        .bp
        .read("nothing/here", Some(0), 10)
        .await
        .unwrap()
        .is_none());

    publish_n(&*n.bp, "t", 30).await;
    // Interleave another topic so stream and topic sequences differ.
    publish_n(&*n.bp, "u", 3).await;
    publish_n(&*n.bp, "u/v", 2).await;

    let last = n.bp.read("t", None, 10).await.unwrap().unwrap();
    assert_eq!(last.last_seq, 30);
    assert_eq!(seqs(&last), [30]);
    assert_eq!(last.messages[0].data, Bytes::from_static(b"{\"n\":30}"));
    assert_eq!(&*last.messages[0].topic, "t");
    assert_eq!(last.messages[0].epoch, last.epoch);
    assert!(last.epoch.starts_with('n'));

    let read = |after, limit| {
        let bp = n.bp.clone();
        async move { bp.read("t", Some(after), limit).await.unwrap().unwrap() }
    };
    // Walk back (gap <= 8).
    assert_eq!(seqs(&read(29, 10).await), [30]);
    assert_eq!(seqs(&read(25, 10).await), [26, 27, 28, 29, 30]);
    assert_eq!(seqs(&read(22, 3).await), [23, 24, 25]);
    // Consumer scan (larger gaps).
    assert_eq!(seqs(&read(0, 100).await), (1..=30).collect::<Vec<_>>());
    assert_eq!(seqs(&read(0, 5).await), [1, 2, 3, 4, 5]);
    assert_eq!(seqs(&read(10, 4).await), [11, 12, 13, 14]);
    assert_eq!(seqs(&read(20, 100).await), (21..=30).collect::<Vec<_>>());
    // Nothing newer.
    let none = read(30, 10).await;
    assert_eq!((none.last_seq, seqs(&none)), (30, vec![]));
    assert!(seqs(&read(99, 10).await).is_empty());
    assert!(seqs(&read(0, 0).await).is_empty());

    let data: Vec<_> = read(0, 3)
        .await
        .messages
        .iter()
        .map(|m| m.data.clone())
        .collect();
    assert_eq!(data, [&b"{\"n\":1}"[..], b"{\"n\":2}", b"{\"n\":3}"]);
    // `u/v` is not part of `u`.
    let u = n.bp.read("u", Some(0), 10).await.unwrap().unwrap();
    assert_eq!((u.last_seq, seqs(&u)), (3, vec![1, 2, 3]));
}

#[tokio::test]
async fn trims_to_max_messages_per_topic() {
    let nats = Service::nats();
    let n = node_with(NatsConfig {
        max_messages_per_topic: 5,
        ..config(&nats.url(), "n")
    })
    .await;
    publish_n(&*n.bp, "trim", 40).await;
    publish_n(&*n.bp, "other", 2).await;
    let read = |after, limit| {
        let bp = n.bp.clone();
        async move { bp.read("trim", Some(after), limit).await.unwrap().unwrap() }
    };
    // The log still knows its last seq; only the last 5 are retained.
    let log = read(0, 100).await;
    assert_eq!((log.last_seq, seqs(&log)), (40, vec![36, 37, 38, 39, 40]));
    assert_eq!(
        seqs(&read(30, 100).await),
        [36, 37, 38, 39, 40],
        "walk back stops at the trim"
    );
    assert_eq!(seqs(&read(37, 100).await), [38, 39, 40]);
    assert_eq!(seqs(&read(0, 2).await), [36, 37]);
    // Trimming does not break seq continuity.
    let stamp =
        n.bp.publish("trim", Bytes::from_static(b"1"), now_micros())
            .await
            .unwrap();
    assert_eq!(stamp.seq, 41);
}

#[tokio::test]
async fn a_changed_limit_updates_the_stream() {
    let nats = Service::nats();
    let first = node(&nats.url(), "a").await;
    publish_n(&*first.bp, "t", 10).await;
    let second = node_with(NatsConfig {
        max_messages_per_topic: 3,
        ..config(&nats.url(), "b")
    })
    .await;
    let log = second.bp.read("t", Some(0), 100).await.unwrap().unwrap();
    assert_eq!(seqs(&log), [8, 9, 10]);
}
