//! Seq assignment across nodes: two backplane handles (two NATS
//! connections) publishing to one topic at once still produce one
//! contiguous log. Prints the publish rate and the conflicts it cost.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use common::node;
use pulsegate_core::{now_micros, Backplane};
use pulsegate_testkit::services::Service;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_racing_on_one_topic_get_contiguous_seqs() {
    let nats = Service::nats();
    let a = node(&nats.url(), "a").await;
    let b = node(&nats.url(), "b").await;
    const EACH: u64 = 200;

    let started = Instant::now();
    let run = |bp: std::sync::Arc<pulsegate_backplane_nats::NatsBackplane>| async move {
        let mut stamps = Vec::new();
        for i in 0..EACH {
            let data = Bytes::from(format!("{{\"i\":{i}}}"));
            stamps.push(
                bp.publish("race/one", data, now_micros())
                    .await
                    .expect("publish"),
            );
        }
        stamps
    };
    let (sa, sb) = tokio::join!(
        tokio::spawn(run(a.bp.clone())),
        tokio::spawn(run(b.bp.clone()))
    );
    let elapsed = started.elapsed();
    let (sa, sb) = (sa.unwrap(), sb.unwrap());

    let epoch = sa[0].epoch.clone();
    let mut seqs = BTreeSet::new();
    for s in sa.iter().chain(&sb) {
        assert_eq!(s.epoch, epoch, "one epoch");
        assert!(seqs.insert(s.seq), "seq {} stamped twice", s.seq);
    }
    assert_eq!(
        seqs,
        (1..=2 * EACH).collect::<BTreeSet<_>>(),
        "1..=400, no gap"
    );
    // Each node's own stamps increase.
    assert!(sa.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(sb.windows(2).all(|w| w[0].seq < w[1].seq));

    let log = a.bp.read("race/one", None, 1).await.unwrap().unwrap();
    assert_eq!(log.last_seq, 2 * EACH);

    let conflicts = a.bp.stats().conflicts.load(Relaxed) + b.bp.stats().conflicts.load(Relaxed);
    let published = a.bp.stats().published.load(Relaxed) + b.bp.stats().published.load(Relaxed);
    assert_eq!(published, 2 * EACH);
    println!(
        "contended: 2 nodes x {EACH} publishes to one topic in {:?}: {:.0} publishes/s, \
         {conflicts} conflicts (retries), {:.2} per publish",
        elapsed,
        (2 * EACH) as f64 / elapsed.as_secs_f64(),
        conflicts as f64 / (2 * EACH) as f64
    );

    // The same load on two different topics: no contention at all.
    let started = Instant::now();
    let run = |bp: std::sync::Arc<pulsegate_backplane_nats::NatsBackplane>, topic: &'static str| async move {
        for _ in 0..EACH {
            bp.publish(topic, Bytes::from_static(b"1"), now_micros())
                .await
                .expect("publish");
        }
    };
    let before = a.bp.stats().conflicts.load(Relaxed) + b.bp.stats().conflicts.load(Relaxed);
    let (ra, rb) = tokio::join!(
        tokio::spawn(run(a.bp.clone(), "solo/a")),
        tokio::spawn(run(b.bp.clone(), "solo/b"))
    );
    ra.unwrap();
    rb.unwrap();
    let elapsed = started.elapsed();
    let after = a.bp.stats().conflicts.load(Relaxed) + b.bp.stats().conflicts.load(Relaxed);
    assert_eq!(after, before, "no conflicts without contention");
    println!(
        "uncontended: 2 nodes x {EACH} publishes to their own topic in {:?}: {:.0} publishes/s",
        elapsed,
        (2 * EACH) as f64 / elapsed.as_secs_f64()
    );
}

/// Two nodes creating the same fresh topics at once: exactly one of them
/// starts the epoch, the other continues it with seq 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_to_create_a_topic_starts_one_epoch() {
    let nats = Service::nats();
    let a = node(&nats.url(), "a").await;
    let b = node(&nats.url(), "b").await;
    for i in 0..50 {
        let topic = format!("fresh/{i}");
        let (x, y) = tokio::join!(
            a.bp.publish(&topic, Bytes::from_static(b"1"), now_micros()),
            b.bp.publish(&topic, Bytes::from_static(b"2"), now_micros())
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(x.epoch, y.epoch, "{topic}: one epoch");
        let mut seqs = [x.seq, y.seq];
        seqs.sort();
        assert_eq!(seqs, [1, 2], "{topic}");
    }
}

/// The server itself refuses `Nats-Expected-Last-Subject-Sequence: 0` on
/// a subject that has a message: 0 means "no message", not "no check".
#[tokio::test]
async fn expected_subject_sequence_zero_means_empty_subject() {
    let nats = Service::nats();
    let a = node(&nats.url(), "a").await; // creates the stream
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let publish = |expected: u64| {
        let js = js.clone();
        async move {
            js.send_publish(
                "pg.h.zero",
                PublishMessage::build()
                    .payload(Bytes::from_static(b"1"))
                    .expected_last_subject_sequence(expected),
            )
            .await
            .unwrap()
            .await
        }
    };
    let first = publish(0).await.expect("0 on an empty subject is accepted");
    let err = publish(0)
        .await
        .expect_err("0 on a non-empty subject is refused");
    assert_eq!(err.kind(), PublishErrorKind::WrongLastSequence);
    publish(first.sequence)
        .await
        .expect("the right sequence is accepted");
    drop(a);
}

/// What the seq scheme costs against a plain JetStream publish: prints
/// publishes/s for one node (one topic, then 8 topics at once) and for a
/// bare `js.publish` awaited one by one (the same round trip, no check).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_rates() {
    const N: usize = 1000;
    let nats = Service::nats();
    let a = node(&nats.url(), "a").await;
    let data = Bytes::from_static(b"{\"v\":12.5,\"unit\":\"kW\"}");

    let started = Instant::now();
    for _ in 0..N {
        a.bp.publish("rate/one", data.clone(), now_micros())
            .await
            .unwrap();
    }
    let one_topic = N as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (bp, data) = (a.bp.clone(), data.clone());
            tokio::spawn(async move {
                for _ in 0..N / 8 {
                    bp.publish(&format!("rate/many/{t}"), data.clone(), now_micros())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let eight_topics = N as f64 / started.elapsed().as_secs_f64();

    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let started = Instant::now();
    for _ in 0..N {
        js.publish("pg.h.rate.bare", data.clone())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let bare = N as f64 / started.elapsed().as_secs_f64();

    assert_eq!(a.bp.stats().conflicts.load(Relaxed), 0);
    println!(
        "one node: one topic {one_topic:.0}/s, 8 topics at once {eight_topics:.0}/s; \
         bare JetStream publish (no headers, no check) {bare:.0}/s"
    );
}
