//! One node of a cluster: its [`Hub`] kept in step with the topic logs the
//! [`Backplane`] owns.
//!
//! - **Publish**: the backplane stamps and stores the message (so `seq` is
//!   contiguous cluster-wide), then every node subscribed to a matching
//!   pattern receives it on its live stream. The publishing node applies its
//!   own message at once when it is the next of the topic, so its local
//!   subscribers do not wait for the round trip; the echo is a duplicate.
//! - **Interest**: the node subscribes to the backplane once per pattern its
//!   clients use (reference-counted), and drops the subscription with the
//!   last client, so the backplane carries only topics with local readers.
//!   A client's `ok` is sent only after the backplane confirmed the
//!   subscription, so nothing published after the `ok` can be missed.
//! - **Live stream**: [`Cluster::run_ingest`] applies incoming messages with
//!   [`Hub::ingest`]; a hole (a message missed during a reconnect) is filled
//!   by reading the log before going on, so local subscribers see every seq.
//!   What the log no longer holds is counted as lost, never hidden.
//! - **Recovery**: before a client's `since` is served from the local hub,
//!   [`Cluster::catch_up`] reads the topic's log from the backplane from the
//!   client's position and applies it, so any node can recover what was
//!   published on any other — exactly, or `not_recovered`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use pulsegate_proto::{Pattern, Position};
use tokio::sync::mpsc;

use crate::backplane::{Backplane, BackplaneError, Incoming, Log};
use crate::hub::{Hub, HubError, Ingested, OnGap};
use crate::message::{now_micros, Message};

/// Counters of the cluster layer (exported as metrics by the server).
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Live messages applied to the local hub (published on other nodes,
    /// or on this one when the direct apply was not possible).
    pub remote_applied: AtomicU64,
    /// Live messages dropped as already held (overlapping patterns, echoes).
    pub duplicates: AtomicU64,
    /// Holes in a live stream filled from the log.
    pub gaps_filled: AtomicU64,
    /// Messages the log no longer held when a hole was filled: local
    /// subscribers saw `seq` jump by this much (they can tell from `seq`).
    pub gap_lost: AtomicU64,
    /// Re-reads of every subscribed topic after a backplane reconnect.
    pub resyncs: AtomicU64,
    /// Patterns this node is subscribed to on the backplane.
    pub patterns: AtomicU64,
}

/// Called with the cross-node lag (µs from publisher ingress to local
/// apply) of every message received on the live stream.
pub type LagObserver = Arc<dyn Fn(u64) + Send + Sync>;

/// A node's hub plus the backplane shared with the other nodes.
pub struct Cluster {
    hub: Arc<Hub>,
    backplane: Arc<dyn Backplane>,
    interest: tokio::sync::Mutex<HashMap<Pattern, usize>>,
    read_limit: usize,
    stats: ClusterStats,
    lag: LagObserver,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("backplane", &self.backplane.name())
            .finish()
    }
}

/// Patterns and topics under `$` belong to one node (`$sys/stats`); they
/// never travel over the backplane.
pub fn node_local(pattern_or_topic: &str) -> bool {
    pattern_or_topic.starts_with('$')
}

impl Cluster {
    /// Joins `hub` to `backplane`; reads of a topic's log return at most
    /// `read_limit` messages (the history length).
    pub fn new(
        hub: Arc<Hub>,
        backplane: Arc<dyn Backplane>,
        read_limit: usize,
        lag: LagObserver,
    ) -> Cluster {
        Cluster {
            hub,
            backplane,
            interest: tokio::sync::Mutex::new(HashMap::new()),
            read_limit: read_limit.max(1),
            stats: ClusterStats::default(),
            lag,
        }
    }

    /// The backplane.
    pub fn backplane(&self) -> &Arc<dyn Backplane> {
        &self.backplane
    }

    /// Counters.
    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    /// Stores `data` in `topic`'s log through the backplane. Refused (and
    /// nothing stored) while the backplane is down.
    pub async fn publish(&self, topic: &str, data: Bytes) -> Result<Arc<Message>, HubError> {
        if node_local(topic) {
            return self.hub.publish(topic, data);
        }
        if !self.backplane.is_up() {
            return Err(HubError::Backplane(BackplaneError::Down(format!(
                "{} backplane unavailable",
                self.backplane.name()
            ))));
        }
        let ts = now_micros();
        let stamp = self.backplane.publish(topic, data.clone(), ts).await?;
        let msg = Arc::new(Message::new(topic.into(), stamp.seq, stamp.epoch, ts, data));
        // Local subscribers get it now if it is the next of the topic; if
        // not, the live stream brings it in order.
        self.hub.ingest(&msg, OnGap::Skip)?;
        Ok(msg)
    }

    /// Makes sure the backplane delivers `pattern` to this node; returns
    /// once it does. Pair every successful call with [`Cluster::release`].
    pub async fn interest(&self, pattern: &Pattern) -> Result<(), HubError> {
        if node_local(pattern.as_str()) {
            return Ok(());
        }
        let mut map = self.interest.lock().await;
        if let Some(n) = map.get_mut(pattern) {
            *n += 1;
            return Ok(());
        }
        self.backplane.subscribe(pattern).await?;
        map.insert(pattern.clone(), 1);
        self.stats.patterns.store(map.len() as u64, Relaxed);
        Ok(())
    }

    /// Drops one use of `pattern`; the last one unsubscribes the node.
    pub async fn release(&self, pattern: &Pattern) {
        if node_local(pattern.as_str()) {
            return;
        }
        let mut map = self.interest.lock().await;
        let Some(n) = map.get_mut(pattern) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            map.remove(pattern);
            self.stats.patterns.store(map.len() as u64, Relaxed);
            if self.backplane.unsubscribe(pattern).await.is_err() {
                self.backplane.stats().error();
            }
            self.hub.forget_unsubscribed(pattern);
        }
    }

    /// Brings the local copy of `topic` up to date from the backplane before
    /// a client is served from it: from `since` (the client's position) when
    /// given, else the last value when `snapshot` asks for it. Call after
    /// [`Cluster::interest`] so that nothing falls between the read and the
    /// live stream.
    pub async fn catch_up(
        &self,
        topic: &str,
        since: Option<&Position>,
        snapshot: bool,
    ) -> Result<(), HubError> {
        if node_local(topic) {
            return Ok(());
        }
        match since {
            Some(pos) => {
                // Include the message at the client's position, so the local
                // history starts no later than it.
                let after = pos.seq.saturating_sub(1);
                let log = self
                    .backplane
                    .read(topic, Some(after), self.read_limit + 1)
                    .await?;
                let Some(log) = log else {
                    self.hub.invalidate(topic);
                    return Ok(());
                };
                if *log.epoch != *pos.epoch {
                    if self
                        .hub
                        .position(topic)
                        .is_some_and(|(e, _)| *e == *pos.epoch)
                    {
                        self.hub.invalidate(topic);
                    }
                    self.apply_log(&log, OnGap::Reset);
                    return Ok(());
                }
                let starts_at = if pos.seq == 0 { 1 } else { pos.seq };
                if log.messages.first().is_some_and(|m| m.seq == starts_at) {
                    // Live messages may have reached the hub between
                    // `interest` and this read, starting the topic there
                    // mid-stream: put what came before them in front.
                    self.hub.backfill(topic, &log.messages);
                    self.apply_log(&log, OnGap::Reset);
                }
                Ok(())
            }
            None if snapshot => {
                if let Some(log) = self.backplane.read(topic, None, 1).await? {
                    self.apply_log(&log, OnGap::Reset);
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The last value of `topic` from the backplane's log.
    pub async fn last_value(&self, topic: &str) -> Result<Option<Arc<Message>>, HubError> {
        if node_local(topic) {
            return Ok(self.hub.last_value(topic));
        }
        let log = self.backplane.read(topic, None, 1).await?;
        Ok(log.and_then(|l| l.messages.last().cloned()))
    }

    /// Retained messages of `topic` after `since`, at most `limit`, with the
    /// epoch and last seq, from the backplane's log.
    pub async fn history(
        &self,
        topic: &str,
        since: u64,
        limit: usize,
    ) -> Result<Option<Log>, HubError> {
        if node_local(topic) {
            return Ok(self
                .hub
                .history(topic, since, limit)
                .map(|(epoch, last_seq, messages)| Log {
                    epoch,
                    last_seq,
                    messages,
                }));
        }
        Ok(self.backplane.read(topic, Some(since), limit).await?)
    }

    fn apply_log(&self, log: &Log, on_gap: OnGap) {
        for m in &log.messages {
            if self.hub.ingest(m, on_gap).is_err() {
                break;
            }
        }
    }

    /// Applies the backplane's live stream to the hub until the channel
    /// closes. Run it as one task per node.
    pub async fn run_ingest(self: Arc<Self>, mut rx: mpsc::Receiver<Incoming>) {
        while let Some(incoming) = rx.recv().await {
            match incoming {
                Incoming::Message(m) => self.ingest_live(&m).await,
                Incoming::Resync => self.resync().await,
            }
        }
    }

    async fn ingest_live(&self, m: &Arc<Message>) {
        match self.hub.ingest(m, OnGap::Report) {
            Ok(Ingested::Applied) => self.applied(m),
            Ok(Ingested::Duplicate) => {
                self.stats.duplicates.fetch_add(1, Relaxed);
            }
            Ok(Ingested::Gap { last }) => {
                if let Ok(Some(log)) = self
                    .backplane
                    .read(&m.topic, Some(last), self.read_limit)
                    .await
                {
                    if *log.epoch == *m.epoch {
                        for old in log.messages.iter().filter(|o| o.seq < m.seq) {
                            if let Ok(Ingested::Applied) = self.hub.ingest(old, OnGap::Report) {
                                self.applied(old);
                            }
                        }
                    }
                }
                self.stats.gaps_filled.fetch_add(1, Relaxed);
                let held = self
                    .hub
                    .position(&m.topic)
                    .filter(|(e, _)| **e == *m.epoch)
                    .map_or(0, |(_, s)| s);
                if m.seq > held + 1 {
                    self.stats.gap_lost.fetch_add(m.seq - held - 1, Relaxed);
                }
                if let Ok(Ingested::Applied) = self.hub.ingest(m, OnGap::Reset) {
                    self.applied(m);
                }
            }
            Ok(Ingested::Skipped) => {}
            // `history.max_topics` reached on this node: local subscribers
            // of a new topic miss it; counted, not hidden.
            Err(_) => {
                self.stats.gap_lost.fetch_add(1, Relaxed);
            }
        }
    }

    fn applied(&self, m: &Message) {
        self.stats.remote_applied.fetch_add(1, Relaxed);
        (self.lag)(now_micros().saturating_sub(m.ts));
    }

    /// After an outage, re-reads every locally subscribed topic's log from
    /// where the hub stands, so messages stored while the live stream was
    /// cut reach local subscribers in order.
    async fn resync(&self) {
        self.stats.resyncs.fetch_add(1, Relaxed);
        for (topic, epoch, seq) in self.hub.subscribed_positions() {
            if node_local(&topic) {
                continue;
            }
            let Ok(Some(log)) = self
                .backplane
                .read(&topic, Some(seq), self.read_limit)
                .await
            else {
                continue;
            };
            if *log.epoch == *epoch && log.messages.first().is_some_and(|m| m.seq != seq + 1) {
                let first = log.messages[0].seq;
                self.stats.gap_lost.fetch_add(first - seq - 1, Relaxed);
            }
            for m in &log.messages {
                if let Ok(Ingested::Applied) = self.hub.ingest(m, OnGap::Reset) {
                    self.applied(m);
                }
            }
        }
    }
}
