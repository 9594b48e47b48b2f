//! NATS going away and coming back: the up state, refused publishes,
//! `Incoming::Resync`, subscriptions that survive, and history kept on disk.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{next_message, node, pattern, wait_for, STEP};
use pulsegate_backplane_nats::{NatsBackplane, NatsConfig};
use pulsegate_core::{now_micros, Backplane, BackplaneError, Incoming};
use pulsegate_testkit::services::Service;
use tokio::sync::mpsc;

async fn publish(bp: &NatsBackplane, topic: &str) -> Result<u64, BackplaneError> {
    bp.publish(topic, Bytes::from_static(b"1"), now_micros())
        .await
        .map(|s| s.seq)
}

#[tokio::test]
async fn history_survives_a_nats_restart() {
    let mut nats = Service::nats();
    let (epoch, last) = {
        let n = node(&nats.url(), "before").await;
        for i in 1..=12 {
            assert_eq!(publish(&n.bp, "kept/t").await.unwrap(), i);
        }
        let log = n.bp.read("kept/t", None, 1).await.unwrap().unwrap();
        n.bp.close().await;
        (log.epoch, log.last_seq)
    };
    nats.stop();
    nats.start_again();

    let n = node(&nats.url(), "after").await;
    let log = n.bp.read("kept/t", Some(0), 100).await.unwrap().unwrap();
    assert_eq!((log.epoch.clone(), log.last_seq), (epoch.clone(), last));
    assert_eq!(log.messages.len(), 12);
    let stamp =
        n.bp.publish("kept/t", Bytes::from_static(b"2"), now_micros())
            .await
            .unwrap();
    assert_eq!(
        (stamp.epoch, stamp.seq),
        (epoch, last + 1),
        "same epoch, next seq"
    );
}

#[tokio::test]
async fn outage_marks_down_then_resyncs_and_keeps_subscriptions() {
    let mut nats = Service::nats();
    let publisher = node(&nats.url(), "pub").await;
    let mut n = node(&nats.url(), "n").await;
    n.bp.subscribe(&pattern("live/#")).await.unwrap();
    assert_eq!(publish(&publisher.bp, "live/x").await.unwrap(), 1);
    assert_eq!(next_message(&mut n.rx).await.seq, 1);

    nats.stop();
    let stopped = Instant::now();
    wait_for("down after the server died", Duration::from_secs(3), || {
        !n.bp.is_up() && !publisher.bp.is_up()
    })
    .await;
    println!("down detected in {:?}", stopped.elapsed());
    assert!(matches!(
        publish(&publisher.bp, "live/x").await,
        Err(BackplaneError::Down(_))
    ));
    assert!(n.bp.read("live/x", None, 1).await.is_err());
    assert!(n.bp.subscribe(&pattern("other")).await.is_err());
    let errors = publisher.bp.stats().errors.load(Relaxed);
    assert!(errors >= 1);

    nats.start_again();
    let restarted = Instant::now();
    wait_for(
        "up after the server came back",
        Duration::from_secs(10),
        || n.bp.is_up() && publisher.bp.is_up(),
    )
    .await;
    println!("up again in {:?}", restarted.elapsed());
    assert_eq!(n.bp.stats().reconnects.load(Relaxed), 1);

    // A resync is the first thing after the outage.
    match tokio::time::timeout(STEP, n.rx.recv()).await {
        Ok(Some(Incoming::Resync)) => {}
        other => panic!("expected Resync, got {other:?}"),
    }
    // The subscription was re-established without subscribing again.
    assert_eq!(publish(&publisher.bp, "live/x").await.unwrap(), 2);
    let m = next_message(&mut n.rx).await;
    assert_eq!((&*m.topic, m.seq), ("live/x", 2));
}

#[tokio::test]
async fn connect_returns_down_and_comes_up_when_the_server_appears() {
    // A port and data directory whose server is not running yet.
    let mut nats = Service::nats();
    nats.stop();
    let (tx, mut rx) = mpsc::channel(16);
    let config = NatsConfig {
        op_timeout: Duration::from_millis(300),
        ..common::config(&nats.url(), "early")
    };
    let started = Instant::now();
    let bp = NatsBackplane::connect(config, tx)
        .await
        .expect("connect returns");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!bp.is_up());
    assert!(publish(&bp, "t").await.is_err());

    nats.start_again();
    wait_for("up once the server exists", Duration::from_secs(10), || {
        bp.is_up()
    })
    .await;
    assert_eq!(publish(&bp, "t").await.unwrap(), 1);
    match tokio::time::timeout(STEP, rx.recv()).await {
        Ok(Some(Incoming::Resync)) => {}
        other => panic!("expected Resync, got {other:?}"),
    }
}
