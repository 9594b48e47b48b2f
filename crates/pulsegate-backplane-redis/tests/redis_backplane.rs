//! The Redis backplane against a real `redis-server` (one per test, on a
//! free port): seq assignment across nodes, live delivery by pattern,
//! reads, trimming, expiry, odd topic names, and outages.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pulsegate_backplane_redis::{RedisBackplane, RedisConfig};
use pulsegate_core::{Backplane, BackplaneError, Incoming, Message};
use pulsegate_proto::Pattern;
use pulsegate_testkit::services::Service;
use tokio::sync::mpsc;

/// Longest wait for any single expected event.
const STEP: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(400);

fn config(service: &Service, node: &str) -> RedisConfig {
    RedisConfig {
        url: service.url(),
        node_name: node.into(),
        prefix: "pgtest".into(),
        ..Default::default()
    }
}

async fn node(config: RedisConfig) -> (Arc<RedisBackplane>, mpsc::Receiver<Incoming>) {
    let (tx, rx) = mpsc::channel(1024);
    let bp = tokio::time::timeout(STEP, RedisBackplane::connect(config, tx))
        .await
        .expect("connect within the step timeout")
        .expect("valid URL");
    (bp, rx)
}

fn pat(s: &str) -> Pattern {
    Pattern::parse(s, 256).expect("valid pattern")
}

async fn publish(bp: &RedisBackplane, topic: &str, data: &str) -> u64 {
    bp.publish(topic, Bytes::from(data.to_string()), 1_700_000_000_000_000)
        .await
        .unwrap_or_else(|e| panic!("publish to {topic}: {e}"))
        .seq
}

/// The next live message, skipping `Resync`s.
async fn next_message(rx: &mut mpsc::Receiver<Incoming>) -> Arc<Message> {
    let deadline = Instant::now() + STEP;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(Incoming::Message(m))) => return m,
            Ok(Some(Incoming::Resync)) => {}
            Ok(None) => panic!("backplane channel closed"),
            Err(_) => panic!("no live message within {STEP:?}"),
        }
    }
}

/// `(topic, seq)` of the next `n` live messages.
async fn next_messages(rx: &mut mpsc::Receiver<Incoming>, n: usize) -> Vec<(String, u64)> {
    let mut got = Vec::new();
    for _ in 0..n {
        let m = next_message(rx).await;
        got.push((m.topic.to_string(), m.seq));
    }
    got
}

async fn expect_no_message(rx: &mut mpsc::Receiver<Incoming>) {
    let deadline = Instant::now() + QUIET;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(Incoming::Message(m))) => panic!("unexpected message on {}", m.topic),
            Ok(Some(Incoming::Resync)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

async fn expect_resync(rx: &mut mpsc::Receiver<Incoming>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(Incoming::Resync)) => return,
            Ok(Some(Incoming::Message(_))) => {}
            Ok(None) => panic!("backplane channel closed"),
            Err(_) => panic!("no Resync within {within:?}"),
        }
    }
}

async fn wait_until(what: &str, within: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn t(topic: &str, seq: u64) -> (String, u64) {
    (topic.to_string(), seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_get_contiguous_seqs() {
    let redis = Service::redis();
    let (a, _rx_a) = node(config(&redis, "a")).await;
    let (b, _rx_b) = node(config(&redis, "b")).await;
    assert_eq!(a.name(), "redis");
    assert!(a.is_up() && b.is_up());

    let run = |bp: Arc<RedisBackplane>| {
        tokio::spawn(async move {
            let mut stamps = Vec::new();
            for i in 0..200 {
                let s = bp
                    .publish("c/t", Bytes::from(format!("{i}")), 1)
                    .await
                    .expect("publish");
                stamps.push(s);
            }
            stamps
        })
    };
    let (sa, sb) = tokio::join!(run(a.clone()), run(b.clone()));
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    let epochs: BTreeSet<_> = sa.iter().chain(&sb).map(|s| s.epoch.clone()).collect();
    assert_eq!(epochs.len(), 1, "one epoch: {epochs:?}");
    let mut seqs: Vec<u64> = sa.iter().chain(&sb).map(|s| s.seq).collect();
    // Each publisher sees its own seqs increase.
    assert!(sa.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(sb.windows(2).all(|w| w[0].seq < w[1].seq));
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
    assert_eq!(
        a.stats()
            .published
            .load(std::sync::atomic::Ordering::Relaxed),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_messages_reach_matching_patterns_in_seq_order() {
    let redis = Service::redis();
    let (publisher, _rx) = node(config(&redis, "pub")).await;
    let (exact, mut rx_exact) = node(config(&redis, "exact")).await;
    let (plus, mut rx_plus) = node(config(&redis, "plus")).await;
    let (hash, mut rx_hash) = node(config(&redis, "hash")).await;
    exact.subscribe(&pat("a/b")).await.unwrap();
    plus.subscribe(&pat("a/+")).await.unwrap();
    hash.subscribe(&pat("a/#")).await.unwrap();

    for topic in ["a", "a/b", "a/c", "a/b/c", "x/y", "a/b", "a/b"] {
        publish(&publisher, topic, "{\"v\":\n1}").await;
    }
    assert_eq!(
        next_messages(&mut rx_exact, 3).await,
        [t("a/b", 1), t("a/b", 2), t("a/b", 3)]
    );
    assert_eq!(
        next_messages(&mut rx_plus, 4).await,
        [t("a/b", 1), t("a/c", 1), t("a/b", 2), t("a/b", 3)]
    );
    let m = next_message(&mut rx_hash).await;
    assert_eq!(
        (&*m.topic, m.seq, &m.data[..]),
        ("a", 1, &b"{\"v\":\n1}"[..])
    );
    assert_eq!(m.ts, 1_700_000_000_000_000);
    assert!(m.epoch.starts_with('r'));
    assert_eq!(
        next_messages(&mut rx_hash, 5).await,
        [
            t("a/b", 1),
            t("a/c", 1),
            t("a/b/c", 1),
            t("a/b", 2),
            t("a/b", 3)
        ]
    );
    for rx in [&mut rx_exact, &mut rx_plus, &mut rx_hash] {
        expect_no_message(rx).await;
    }
    assert_eq!(
        hash.stats()
            .received
            .load(std::sync::atomic::Ordering::Relaxed),
        6
    );

    // After unsubscribe: nothing more.
    plus.unsubscribe(&pat("a/+")).await.unwrap();
    exact.unsubscribe(&pat("a/b")).await.unwrap();
    publish(&publisher, "a/b", "4").await;
    assert_eq!(next_messages(&mut rx_hash, 1).await, [t("a/b", 4)]);
    expect_no_message(&mut rx_plus).await;
    expect_no_message(&mut rx_exact).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsubscribe_keeps_what_other_patterns_need() {
    let redis = Service::redis();
    let (publisher, _rx) = node(config(&redis, "pub")).await;
    let (bp, mut rx) = node(config(&redis, "sub")).await;
    // `a` and `a/#` both need the channel of `a`.
    bp.subscribe(&pat("a")).await.unwrap();
    bp.subscribe(&pat("a/#")).await.unwrap();
    bp.unsubscribe(&pat("a/#")).await.unwrap();
    publish(&publisher, "a/z", "1").await;
    publish(&publisher, "a", "1").await;
    assert_eq!(next_messages(&mut rx, 1).await, [t("a", 1)]);
    expect_no_message(&mut rx).await;

    bp.subscribe(&pat("a/#")).await.unwrap();
    bp.unsubscribe(&pat("a")).await.unwrap();
    // Unsubscribing what was never subscribed changes nothing.
    bp.unsubscribe(&pat("a/+/q")).await.unwrap();
    publish(&publisher, "a", "2").await;
    publish(&publisher, "a/z", "2").await;
    assert_eq!(next_messages(&mut rx, 2).await, [t("a", 2), t("a/z", 2)]);

    bp.unsubscribe(&pat("a/#")).await.unwrap();
    publish(&publisher, "a", "3").await;
    expect_no_message(&mut rx).await;

    // First-level wildcards never match `$` topics.
    bp.subscribe(&pat("#")).await.unwrap();
    bp.subscribe(&pat("+/x")).await.unwrap();
    publish(&publisher, "$sys/x", "1").await;
    publish(&publisher, "q/x", "1").await;
    let got = next_messages(&mut rx, 2).await;
    assert_eq!(got, [t("q/x", 1), t("q/x", 1)], "once per subscription");
    expect_no_message(&mut rx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_returns_the_log_after_a_seq_or_the_last_message() {
    let redis = Service::redis();
    let (bp, _rx) = node(config(&redis, "r")).await;
    assert!(bp.read("r/none", Some(0), 10).await.unwrap().is_none());
    assert!(bp.read("r/none", None, 10).await.unwrap().is_none());
    for i in 1..=5 {
        bp.publish("r/t", Bytes::from(format!("[{i}]")), 100 + i)
            .await
            .unwrap();
    }
    let seqs = |log: &pulsegate_core::Log| log.messages.iter().map(|m| m.seq).collect::<Vec<_>>();

    let all = bp.read("r/t", Some(0), 10).await.unwrap().unwrap();
    assert_eq!(all.last_seq, 5);
    assert_eq!(seqs(&all), [1, 2, 3, 4, 5]);
    let third = &all.messages[2];
    assert_eq!(
        (&*third.topic, &third.data[..], third.ts),
        ("r/t", &b"[3]"[..], 103)
    );
    assert!(all.messages.iter().all(|m| m.epoch == all.epoch));

    let some = bp.read("r/t", Some(2), 2).await.unwrap().unwrap();
    assert_eq!(seqs(&some), [3, 4]);
    assert_eq!(some.last_seq, 5);
    let last = bp.read("r/t", None, 10).await.unwrap().unwrap();
    assert_eq!(seqs(&last), [5]);
    let none_newer = bp.read("r/t", Some(5), 10).await.unwrap().unwrap();
    assert!(none_newer.messages.is_empty());
    assert_eq!((none_newer.last_seq, &none_newer.epoch), (5, &all.epoch));
    let zero = bp.read("r/t", Some(0), 0).await.unwrap().unwrap();
    assert!(zero.messages.is_empty());
    assert_eq!(zero.last_seq, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_is_trimmed_to_about_max_history() {
    let redis = Service::redis();
    let (bp, _rx) = node(RedisConfig {
        max_history: 20,
        ..config(&redis, "trim")
    })
    .await;
    for i in 0..500 {
        publish(&bp, "trim/t", &i.to_string()).await;
    }
    let log = bp.read("trim/t", Some(0), 1000).await.unwrap().unwrap();
    assert_eq!(log.last_seq, 500);
    let n = log.messages.len();
    // `MAXLEN ~` trims whole stream nodes (100 entries by default).
    assert!((20..=200).contains(&n), "kept {n}");
    let first = log.messages[0].seq;
    assert!(
        first > 1,
        "a read after a trimmed seq starts later: {first}"
    );
    assert!(log.messages.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert_eq!(log.messages[n - 1].seq, 500);
    let later = bp
        .read("trim/t", Some(first - 1), 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(later.messages[0].seq, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_topic_expires_and_starts_a_new_epoch() {
    let redis = Service::redis();
    let (bp, _rx) = node(RedisConfig {
        history_ttl: Duration::from_millis(300),
        ..config(&redis, "ttl")
    })
    .await;
    let s1 = bp
        .publish("e/t", Bytes::from_static(b"1"), 1)
        .await
        .unwrap();
    let s2 = bp
        .publish("e/t", Bytes::from_static(b"2"), 2)
        .await
        .unwrap();
    assert_eq!((s1.seq, s2.seq), (1, 2));
    assert_eq!(s1.epoch, s2.epoch);
    let deadline = Instant::now() + STEP;
    while bp.read("e/t", None, 1).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the log did not expire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s3 = bp
        .publish("e/t", Bytes::from_static(b"3"), 3)
        .await
        .unwrap();
    assert_eq!(s3.seq, 1);
    assert_ne!(s3.epoch, s1.epoch);
    let log = bp.read("e/t", Some(0), 10).await.unwrap().unwrap();
    assert_eq!(log.messages.len(), 1);
    assert_eq!(log.epoch, s3.epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn odd_topic_names_work() {
    let redis = Service::redis();
    let (publisher, _rx) = node(config(&redis, "pub")).await;
    let (bp, mut rx) = node(config(&redis, "sub")).await;
    let odd = "site one/*[x]?\\/ünï/$v";
    bp.subscribe(&pat(odd)).await.unwrap();
    bp.subscribe(&pat("site one/*[x]?\\/+/#")).await.unwrap();
    // Would match the glob if `*` and `[x]` were not escaped.
    publish(&publisher, "site one/abc x\\/ünï/$v", "0").await;
    publish(&publisher, odd, "{}").await;
    let got = next_messages(&mut rx, 2).await;
    assert_eq!(got, [t(odd, 1), t(odd, 1)]);
    expect_no_message(&mut rx).await;
    let log = publisher.read(odd, Some(0), 10).await.unwrap().unwrap();
    assert_eq!(log.messages.len(), 1);
    assert_eq!(&*log.messages[0].topic, odd);
    assert_eq!(&log.messages[0].data[..], b"{}");

    bp.subscribe(&pat("$sys/#")).await.unwrap();
    publish(&publisher, "$sys/stats", "1").await;
    assert_eq!(next_messages(&mut rx, 1).await, [t("$sys/stats", 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_marks_down_then_resyncs_and_resubscribes() {
    let mut redis = Service::redis();
    let (publisher, mut rx_pub) = node(config(&redis, "pub")).await;
    let (bp, mut rx) = node(config(&redis, "sub")).await;
    bp.subscribe(&pat("o/t")).await.unwrap();
    bp.subscribe(&pat("w/+")).await.unwrap();
    publish(&publisher, "o/t", "1").await;
    assert_eq!(next_messages(&mut rx, 1).await, [t("o/t", 1)]);

    redis.stop();
    wait_until("subscriber down", Duration::from_secs(3), || !bp.is_up()).await;
    wait_until("publisher down", Duration::from_secs(5), || {
        !publisher.is_up()
    })
    .await;
    match publisher.publish("o/t", Bytes::from_static(b"2"), 2).await {
        Err(BackplaneError::Down(why)) => assert!(why.contains("redis"), "{why}"),
        other => panic!("publish during an outage: {other:?}"),
    }
    assert!(bp.read("o/t", None, 1).await.is_err());

    redis.start_again();
    wait_until("subscriber up", Duration::from_secs(12), || bp.is_up()).await;
    wait_until("publisher up", Duration::from_secs(12), || {
        publisher.is_up()
    })
    .await;
    expect_resync(&mut rx, STEP).await;
    expect_resync(&mut rx_pub, STEP).await;
    assert!(
        bp.stats()
            .reconnects
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );

    // Subscriptions came back by themselves. Redis restarted empty: new epoch.
    publish(&publisher, "o/t", "3").await;
    publish(&publisher, "w/x", "3").await;
    assert_eq!(next_messages(&mut rx, 2).await, [t("o/t", 1), t("w/x", 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connect_while_redis_is_down_comes_up_later() {
    let mut redis = Service::redis();
    redis.stop();
    let started = Instant::now();
    let (bp, mut rx) = node(config(&redis, "late")).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!bp.is_up());
    assert!(matches!(
        bp.publish("l/t", Bytes::from_static(b"1"), 1).await,
        Err(BackplaneError::Down(_))
    ));
    assert!(bp.subscribe(&pat("l/t")).await.is_err());

    redis.start_again();
    wait_until("up", Duration::from_secs(12), || bp.is_up()).await;
    expect_resync(&mut rx, STEP).await;
    bp.subscribe(&pat("l/t")).await.unwrap();
    assert_eq!(publish(&bp, "l/t", "1").await, 1);
    assert_eq!(next_messages(&mut rx, 1).await, [t("l/t", 1)]);
}

#[tokio::test]
async fn an_invalid_url_is_refused_without_echoing_the_password() {
    let (tx, _rx) = mpsc::channel(1);
    let err = RedisBackplane::connect(
        RedisConfig {
            url: "http://:s3cret@host:1".into(),
            ..Default::default()
        },
        tx,
    )
    .await
    .expect_err("not a redis URL");
    let text = err.to_string();
    assert!(text.contains("invalid redis URL"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_output_hides_the_password() {
    let redis = Service::redis();
    let (bp, _rx) = node(RedisConfig {
        url: format!("redis://:s3cret@127.0.0.1:{}", redis.port),
        op_timeout: Duration::from_millis(300),
        ..config(&redis, "dbg")
    })
    .await;
    // The server has no password: AUTH fails, so it stays down.
    let shown = format!("{bp:?} {:?}", bp.config());
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains(":***@"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_live_buffer_is_answered_with_a_resync() {
    let redis = Service::redis();
    let (publisher, _rx) = node(config(&redis, "pub")).await;
    // A node that does not read: its channel holds 1, the buffer 2.
    let (tx, mut rx) = mpsc::channel(1);
    let slow = RedisBackplane::connect(
        RedisConfig {
            push_buffer: 2,
            ..config(&redis, "slow")
        },
        tx,
    )
    .await
    .unwrap();
    slow.subscribe(&pat("f/t")).await.unwrap();
    for i in 0..50 {
        publish(&publisher, "f/t", &i.to_string()).await;
    }
    // Let the pushes pile up, then drain.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut messages, mut resyncs) = (Vec::new(), 0);
    while let Ok(Some(incoming)) = tokio::time::timeout(QUIET, rx.recv()).await {
        match incoming {
            Incoming::Message(m) => messages.push(m.seq),
            Incoming::Resync => resyncs += 1,
        }
    }
    assert!(resyncs >= 1, "no Resync after an overflow");
    assert!(messages.len() < 50, "nothing was dropped? {messages:?}");
    assert!(messages.windows(2).all(|w| w[0] < w[1]), "{messages:?}");
    let errors = slow
        .stats()
        .errors
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(errors >= 1);
    assert!(slow.is_up(), "an overflow is not an outage");
}
