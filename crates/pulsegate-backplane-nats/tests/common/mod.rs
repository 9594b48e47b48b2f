//! Helpers shared by the integration tests: a backplane "node" on a test
//! NATS server, and bounded waits on its incoming channel.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use pulsegate_backplane_nats::{NatsBackplane, NatsConfig};
use pulsegate_core::{Incoming, Message};
use pulsegate_proto::Pattern;
use tokio::sync::mpsc;

/// Longest wait for any single expected event.
pub const STEP: Duration = Duration::from_secs(10);

/// One node: its backplane handle and the channel it delivers into.
pub struct Node {
    pub bp: Arc<NatsBackplane>,
    pub rx: mpsc::Receiver<Incoming>,
}

pub fn config(url: &str, node: &str) -> NatsConfig {
    NatsConfig {
        url: url.to_string(),
        node_name: node.to_string(),
        ..NatsConfig::default()
    }
}

pub async fn node(url: &str, name: &str) -> Node {
    node_with(config(url, name)).await
}

pub async fn node_with(config: NatsConfig) -> Node {
    let (tx, rx) = mpsc::channel(1024);
    let bp = NatsBackplane::connect(config, tx).await.expect("connect");
    assert!(
        pulsegate_core::Backplane::is_up(&*bp),
        "backplane up after connect"
    );
    Node { bp, rx }
}

pub fn pattern(p: &str) -> Pattern {
    Pattern::parse(p, 1024).expect("valid pattern")
}

/// The next incoming live message (skipping resyncs), within [`STEP`].
pub async fn next_message(rx: &mut mpsc::Receiver<Incoming>) -> Arc<Message> {
    loop {
        match tokio::time::timeout(STEP, rx.recv()).await {
            Ok(Some(Incoming::Message(m))) => return m,
            Ok(Some(Incoming::Resync)) => continue,
            Ok(None) => panic!("incoming channel closed"),
            Err(_) => panic!("no live message within {STEP:?}"),
        }
    }
}

/// Asserts that nothing but resyncs arrives for `wait`.
pub async fn assert_quiet(rx: &mut mpsc::Receiver<Incoming>, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return,
            Ok(Some(Incoming::Resync)) => continue,
            Ok(Some(Incoming::Message(m))) => {
                panic!("unexpected message {} #{}", m.topic, m.seq)
            }
            Ok(None) => return,
        }
    }
}

/// Waits (bounded by `within`) until `cond` holds.
pub async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
