//! Hub semantics: ordering, recovery, snapshots, conflation, deduplication.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use pulsegate_core::{DropReason, Hub, HubConfig, Outbox, OutboxLimits, SlowConsumerPolicy};
use pulsegate_proto::{Codec, Pattern, Position, ServerFrame};

fn hub(max_history: usize) -> Hub {
    Hub::new(HubConfig {
        max_history_messages: max_history,
        max_history_age: Duration::from_secs(60),
        max_topics: 1000,
    })
}

fn outbox(id: u64, max: usize, policy: SlowConsumerPolicy) -> Arc<Outbox> {
    Outbox::new(
        id,
        Codec::Json,
        OutboxLimits {
            max_messages: max,
            max_bytes: 1 << 20,
            policy,
        },
    )
}

fn pat(s: &str) -> Pattern {
    Pattern::parse(s, 256).unwrap()
}

/// Everything queued, decoded: ("ok", 0) for replies, (topic, seq) for messages.
fn drain(ob: &Outbox) -> Vec<(String, u64)> {
    let mut out = VecDeque::new();
    ob.take_batch(&mut out, usize::MAX, usize::MAX).unwrap();
    out.iter()
        .flat_map(|o| o.frames(Codec::Json))
        .map(|f| match Codec::Json.decode_server(f).unwrap() {
            ServerFrame::Msg { topic, seq, .. } => (topic, seq),
            ServerFrame::Ok(_) => ("ok".to_string(), 0),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

fn ok_frame(_: &pulsegate_core::SubscribeOutcome) -> Bytes {
    Bytes::from_static(br#"{"op":"ok"}"#)
}

fn publish(h: &Hub, topic: &str, n: u64) -> Arc<pulsegate_core::Message> {
    h.publish(topic, Bytes::from(n.to_string())).unwrap()
}

#[test]
fn seq_is_contiguous_per_topic() {
    let h = hub(100);
    for i in 1..=5 {
        assert_eq!(publish(&h, "a", i).seq, i);
    }
    assert_eq!(publish(&h, "b", 1).seq, 1);
    let (epoch_a, seq, msgs) = h.history("a", 2, 10).unwrap();
    assert_eq!(seq, 5);
    assert_eq!(
        msgs.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert_ne!(
        epoch_a,
        h.history("b", 0, 1).unwrap().0,
        "each topic has its own epoch"
    );
}

#[test]
fn a_burst_gets_consecutive_seqs_is_retained_and_reaches_every_subscriber_in_order() {
    let h = hub(3);
    let exact = outbox(1, 100, SlowConsumerPolicy::Disconnect);
    let wild = outbox(2, 100, SlowConsumerPolicy::Disconnect);
    h.subscribe(&exact, &pat("burst/a"), false, &[], ok_frame);
    h.subscribe(&wild, &pat("burst/#"), false, &[], ok_frame);
    publish(&h, "burst/a", 0);
    let msgs = h
        .publish_many("burst/a", (1..=4).map(|n| Bytes::from(n.to_string())))
        .unwrap();
    assert_eq!(msgs.iter().map(|m| m.seq).collect::<Vec<_>>(), [2, 3, 4, 5]);
    assert!(msgs.iter().all(|m| m.ts == msgs[0].ts), "one ingress time");
    publish(&h, "burst/a", 5);
    let want: Vec<(String, u64)> = std::iter::once(("ok".to_string(), 0))
        .chain((1..=6).map(|s| ("burst/a".to_string(), s)))
        .collect();
    assert_eq!(drain(&exact), want);
    assert_eq!(drain(&wild), want);
    // History bounded per message, not per burst.
    let (_, seq, kept) = h.history("burst/a", 0, 10).unwrap();
    assert_eq!(seq, 6);
    assert_eq!(kept.iter().map(|m| m.seq).collect::<Vec<_>>(), [4, 5, 6]);
    assert_eq!(
        h.stats()
            .published
            .load(std::sync::atomic::Ordering::Relaxed),
        6
    );
}

#[test]
fn wildcard_subscriber_gets_new_and_existing_topics_once() {
    let h = hub(100);
    publish(&h, "site/a/power", 1);
    let ob = outbox(1, 100, SlowConsumerPolicy::Disconnect);
    h.subscribe(&ob, &pat("site/+/power"), false, &[], ok_frame);
    h.subscribe(&ob, &pat("site/#"), false, &[], ok_frame);
    publish(&h, "site/a/power", 2);
    publish(&h, "site/b/power", 1);
    publish(&h, "site/b/energy", 1);
    publish(&h, "other/x", 1);
    assert_eq!(
        drain(&ob),
        vec![
            ("ok".into(), 0),
            ("ok".into(), 0),
            ("site/a/power".into(), 2),
            ("site/b/power".into(), 1),
            ("site/b/energy".into(), 1),
        ]
    );
    h.unsubscribe(1, &pat("site/#"));
    publish(&h, "site/b/energy", 2);
    publish(&h, "site/b/power", 2);
    assert_eq!(drain(&ob), vec![("site/b/power".into(), 2)]);
    h.unsubscribe(1, &pat("site/+/power"));
    publish(&h, "site/b/power", 3);
    assert!(drain(&ob).is_empty());
    assert_eq!(h.subscription_count(), 0);
}

#[test]
fn exact_subscription_before_first_publish() {
    let h = hub(100);
    let ob = outbox(1, 100, SlowConsumerPolicy::Disconnect);
    h.subscribe(&ob, &pat("later/topic"), true, &[], ok_frame);
    publish(&h, "later/topic", 1);
    assert_eq!(
        drain(&ob),
        vec![("ok".into(), 0), ("later/topic".into(), 1)]
    );
}

#[test]
fn snapshot_sends_last_value_of_each_matching_topic_after_ok() {
    let h = hub(100);
    publish(&h, "s/a", 1);
    publish(&h, "s/a", 2);
    publish(&h, "s/b", 1);
    let ob = outbox(1, 100, SlowConsumerPolicy::Disconnect);
    let out = h.subscribe(&ob, &pat("s/+"), true, &[], ok_frame);
    assert_eq!(out.snapshot, 2);
    publish(&h, "s/a", 3);
    assert_eq!(
        drain(&ob),
        vec![
            ("ok".into(), 0),
            ("s/a".into(), 2),
            ("s/b".into(), 1),
            ("s/a".into(), 3)
        ]
    );
}

#[test]
fn recovery_replays_exactly_the_missed_messages() {
    let h = hub(100);
    let m = publish(&h, "t", 1);
    publish(&h, "t", 2);
    for i in 3..=6 {
        publish(&h, "t", i);
    }
    let ob = outbox(1, 100, SlowConsumerPolicy::Disconnect);
    let since = vec![(
        "t".to_string(),
        Position {
            epoch: m.epoch.to_string(),
            seq: 2,
        },
    )];
    let out = h.subscribe(&ob, &pat("t"), true, &since, ok_frame);
    assert_eq!(out.recovered, vec!["t".to_string()]);
    assert_eq!(out.replayed, 4);
    assert_eq!(
        out.snapshot, 0,
        "a recovered topic gets its replay, not a snapshot"
    );
    publish(&h, "t", 7);
    let got: Vec<u64> = drain(&ob).into_iter().skip(1).map(|(_, s)| s).collect();
    assert_eq!(got, vec![3, 4, 5, 6, 7]);
}

#[test]
fn recovery_refused_when_epoch_changed_or_trimmed_or_future() {
    let h = hub(3);
    let m = publish(&h, "t", 1);
    for i in 2..=10 {
        publish(&h, "t", i);
    }
    let epoch = m.epoch.to_string();
    let cases = [
        (
            Position {
                epoch: "other".into(),
                seq: 9,
            },
            false,
        ),
        (
            Position {
                epoch: epoch.clone(),
                seq: 2,
            },
            false,
        ), // trimmed: oldest retained is 8
        (
            Position {
                epoch: epoch.clone(),
                seq: 6,
            },
            false,
        ),
        (
            Position {
                epoch: epoch.clone(),
                seq: 7,
            },
            true,
        ), // 8, 9, 10 are retained
        (
            Position {
                epoch: epoch.clone(),
                seq: 10,
            },
            true,
        ), // nothing missed
        (
            Position {
                epoch: epoch.clone(),
                seq: 11,
            },
            false,
        ), // from the future
    ];
    for (i, (pos, ok)) in cases.into_iter().enumerate() {
        let ob = outbox(i as u64 + 1, 100, SlowConsumerPolicy::Disconnect);
        let out = h.subscribe(
            &ob,
            &pat("t"),
            false,
            &[("t".into(), pos.clone())],
            ok_frame,
        );
        assert_eq!(out.recovered.len() == 1, ok, "{pos:?}");
        assert_eq!(out.not_recovered.len() == 1, !ok, "{pos:?}");
        let msgs = drain(&ob).len() - 1;
        assert_eq!(
            msgs,
            if ok { (10 - pos.seq) as usize } else { 0 },
            "no partial replay for {pos:?}"
        );
    }
}

#[test]
fn since_for_unknown_or_unmatched_topic_is_not_recovered() {
    let h = hub(10);
    let m = publish(&h, "x/1", 1);
    let ob = outbox(1, 100, SlowConsumerPolicy::Disconnect);
    let since = vec![
        (
            "nope".to_string(),
            Position {
                epoch: "E".into(),
                seq: 1,
            },
        ),
        (
            "x/1".to_string(),
            Position {
                epoch: m.epoch.to_string(),
                seq: 0,
            },
        ),
    ];
    let out = h.subscribe(&ob, &pat("y/+"), false, &since, ok_frame);
    assert_eq!(
        out.not_recovered,
        vec!["nope".to_string(), "x/1".to_string()]
    );
}

#[test]
fn slow_consumer_does_not_affect_others() {
    let h = hub(10);
    let slow = outbox(1, 3, SlowConsumerPolicy::Disconnect);
    let fast = outbox(2, 1000, SlowConsumerPolicy::Disconnect);
    h.subscribe(&slow, &pat("t"), false, &[], ok_frame);
    h.subscribe(&fast, &pat("t"), false, &[], ok_frame);
    for i in 1..=10 {
        publish(&h, "t", i);
    }
    let mut v = VecDeque::new();
    assert!(slow.take_batch(&mut v, 10, 1 << 20).is_err());
    assert_eq!(drain(&fast).len(), 11);
    assert_eq!(
        h.stats()
            .slow_consumer_disconnects
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(h.stats().drops(DropReason::SlowConsumerClose) >= 8);
}

#[test]
fn conflation_shows_seq_jump() {
    let h = hub(10);
    let ob = outbox(1, 2, SlowConsumerPolicy::Conflate);
    h.subscribe(&ob, &pat("t"), false, &[], ok_frame);
    for i in 1..=10 {
        publish(&h, "t", i);
    }
    let got = drain(&ob);
    assert_eq!(got, vec![("ok".into(), 0), ("t".into(), 10)]);
    assert_eq!(h.stats().drops(DropReason::Conflated), 9);
}

#[test]
fn too_many_topics_is_an_error() {
    let h = Hub::new(HubConfig {
        max_topics: 2,
        ..HubConfig::default()
    });
    publish(&h, "a", 1);
    publish(&h, "b", 1);
    assert!(h.publish("c", Bytes::from_static(b"1")).is_err());
    assert!(h.publish("a", Bytes::from_static(b"1")).is_ok());
}

#[test]
fn sweep_forgets_idle_topics_and_new_epoch_follows() {
    let h = Hub::new(HubConfig {
        max_history_age: Duration::from_millis(1),
        ..HubConfig::default()
    });
    let m = publish(&h, "gone", 1);
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(h.sweep(), 1);
    assert_eq!(h.topic_count(), 0);
    let m2 = publish(&h, "gone", 1);
    assert_eq!(m2.seq, 1);
    assert_ne!(m.epoch, m2.epoch);
}

#[test]
fn concurrent_publishers_and_subscribe_never_gap() {
    // Publishers on two threads while a subscriber joins mid-stream with
    // snapshot: it sees its snapshot then strictly consecutive seqs.
    let h = Arc::new(hub(1000));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pubs: Vec<_> = (0..2)
        .map(|_| {
            let h = h.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 20_000 {
                    h.publish("hot", Bytes::from_static(b"0")).unwrap();
                    n += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(2));
    let ob = outbox(9, 1_000_000, SlowConsumerPolicy::Disconnect);
    h.subscribe(&ob, &pat("hot"), true, &[], ok_frame);
    std::thread::sleep(Duration::from_millis(5));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    pubs.into_iter().for_each(|p| p.join().unwrap());
    let seqs: Vec<u64> = drain(&ob).into_iter().skip(1).map(|(_, s)| s).collect();
    assert!(seqs.len() > 1);
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1);
    }
}

proptest! {
    /// A client that disconnects at random points and comes back with `since`
    /// ends up with every message exactly once, in order, whenever the
    /// history reached back far enough; otherwise it is told not_recovered.
    #[test]
    fn resume_is_exact(plan in prop::collection::vec((0u8..3, 1u64..6), 1..40), history in 1usize..8) {
        let h = hub(history);
        let mut id = 1;
        let mut ob = outbox(id, 10_000, SlowConsumerPolicy::Disconnect);
        let first = h.subscribe(&ob, &pat("p/+"), false, &[], ok_frame);
        prop_assert!(first.recovered.is_empty());
        let mut seen: std::collections::BTreeMap<String, (String, u64)> = Default::default();
        let mut published: std::collections::BTreeMap<String, u64> = Default::default();
        let mut connected = true;
        for t in ["p/0", "p/1", "p/2"] {
            h.publish(t, Bytes::from_static(b"1")).unwrap();
            published.insert(t.to_string(), 1);
        }
        let read = |ob: &Outbox, seen: &mut std::collections::BTreeMap<String, (String, u64)>| -> Result<(), TestCaseError> {
            let mut out = VecDeque::new();
            ob.take_batch(&mut out, usize::MAX, usize::MAX).unwrap();
            for f in out.iter().flat_map(|o| o.frames(Codec::Json)) {
                if let ServerFrame::Msg { topic, seq, epoch, .. } = Codec::Json.decode_server(f).unwrap() {
                    let last = seen.get(&topic).map(|(_, s)| *s).unwrap_or(0);
                    prop_assert_eq!(seq, last + 1, "gap or duplicate on {}", topic);
                    seen.insert(topic, (epoch, seq));
                }
            }
            Ok(())
        };
        read(&ob, &mut seen)?;
        for (action, n) in plan {
            match action {
                0 => {
                    for _ in 0..n {
                        let t = format!("p/{}", n % 3);
                        h.publish(&t, Bytes::from_static(b"1")).unwrap();
                        *published.entry(t).or_default() += 1;
                    }
                }
                1 if connected => {
                    read(&ob, &mut seen)?;
                    h.remove_connection(id, [&pat("p/+")]);
                    connected = false;
                }
                _ if !connected => {
                    id += 1;
                    ob = outbox(id, 10_000, SlowConsumerPolicy::Disconnect);
                    let since: Vec<_> = seen.iter().map(|(t, (e, s))| (t.clone(), Position { epoch: e.clone(), seq: *s })).collect();
                    let out = h.subscribe(&ob, &pat("p/+"), false, &since, ok_frame);
                    for t in out.not_recovered {
                        // resync: jump to the newest seq the server has
                        let (e, s, _) = h.history(&t, u64::MAX, 0).unwrap();
                        seen.insert(t.clone(), (e.to_string(), s));
                        prop_assert!(published[&t] - seen_before(&since, &t) > history as u64, "refused although retained");
                    }
                    connected = true;
                }
                _ => read(&ob, &mut seen)?,
            }
        }
        if connected {
            read(&ob, &mut seen)?;
            for (t, n) in &published {
                prop_assert_eq!(seen.get(t).map(|(_, s)| *s), Some(*n));
            }
        }
    }
}

fn seen_before(since: &[(String, Position)], t: &str) -> u64 {
    since
        .iter()
        .find(|(x, _)| x == t)
        .map(|(_, p)| p.seq)
        .unwrap_or(0)
}
