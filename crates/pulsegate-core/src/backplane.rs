//! The seam between this node's hub and the other nodes of a cluster.
//!
//! A single node needs no backplane: its [`Hub`](crate::Hub) stamps, retains
//! and fans out by itself, and the server calls it directly. In a cluster the
//! backplane (NATS JetStream or Redis, in their own crates) owns each topic's
//! log: it assigns `seq` and `epoch` atomically, keeps the history, and
//! carries every stored message to every node that subscribed to a matching
//! pattern. The node's hub then becomes a gap-free cache of those logs
//! (see [`crate::cluster`]).
//!
//! [`MemoryBackplane`] implements the trait inside one process. It is the
//! reference implementation the cluster layer is tested against (several
//! hubs sharing one log) and the behaviour the NATS and Redis crates copy.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use pulsegate_proto::Pattern;
use tokio::sync::mpsc;

use crate::message::Message;

/// A failure of the backplane; publishing is refused while it lasts.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackplaneError {
    /// The backplane cannot be reached (or answered an error).
    #[error("backplane is down: {0}")]
    Down(String),
    /// Seq assignment kept conflicting with other nodes (NATS optimistic
    /// concurrency) and gave up; the message was not published.
    #[error("backplane contention on topic `{0}`: publish not stored, retry")]
    Contention(String),
}

/// Where the backplane put a published message in its topic's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// Per-topic sequence number, contiguous across the cluster.
    pub seq: u64,
    /// The lifetime of the topic's log (changes when the log is lost or expired).
    pub epoch: Arc<str>,
}

/// A topic's log as the backplane holds it at one instant.
#[derive(Debug, Clone)]
pub struct Log {
    /// Current epoch.
    pub epoch: Arc<str>,
    /// Last seq assigned.
    pub last_seq: u64,
    /// Retained messages asked for, ascending by seq. When trimming removed
    /// some of them, the first one's seq is above what was asked for; callers
    /// check contiguity themselves.
    pub messages: Vec<Arc<Message>>,
}

/// What the backplane delivers to a node, in order, on the channel given to it.
#[derive(Debug)]
pub enum Incoming {
    /// A message stored in a topic log, for a pattern this node subscribed to.
    Message(Arc<Message>),
    /// The backplane reconnected after an outage: live messages may have
    /// been missed, so the node re-reads the logs of its topics.
    Resync,
}

/// Counters every backplane keeps; the server exports them as metrics.
#[derive(Debug, Default)]
pub struct BackplaneStats {
    /// Messages stored through this node.
    pub published: AtomicU64,
    /// Live messages received from the backplane.
    pub received: AtomicU64,
    /// Failed operations (publish, subscribe, read, health check).
    pub errors: AtomicU64,
    /// Transitions from down to up.
    pub reconnects: AtomicU64,
    /// Publishes retried because another node stored a message on the same
    /// topic first (NATS expected-sequence conflicts).
    pub conflicts: AtomicU64,
    /// Whether the backplane is reachable.
    pub up: AtomicBool,
}

impl BackplaneStats {
    /// Marks the backplane up; returns true on a down → up transition.
    pub fn set_up(&self) -> bool {
        let was = self.up.swap(true, Relaxed);
        if !was {
            self.reconnects.fetch_add(1, Relaxed);
        }
        !was
    }

    /// Marks the backplane down; returns true on an up → down transition.
    pub fn set_down(&self) -> bool {
        self.up.swap(false, Relaxed)
    }

    /// Counts one failed operation.
    pub fn error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }
}

/// Connects a node's hub to the other nodes of a cluster.
///
/// Contract (every implementation, tested in each crate):
/// - `publish` appends to the topic's log with the next `seq` of the
///   topic's current epoch, atomically for the whole cluster, and only then
///   delivers the message to every node subscribed to a matching pattern.
///   A topic whose log was lost or expired starts a new epoch at seq 1.
/// - The live stream of one topic reaches a node in `seq` order. Messages
///   may be missing from it after an outage (the node re-reads the log on
///   [`Incoming::Resync`] and fills any gap it sees) or repeated (a message
///   matching two of the node's patterns); the node de-duplicates by `seq`.
/// - `subscribe` returns once the backplane will deliver every message
///   stored from then on.
#[async_trait]
pub trait Backplane: Send + Sync + 'static {
    /// `memory`, `nats`, `redis`: for logs, `/readyz` and metrics.
    fn name(&self) -> &'static str;
    /// Counters and up/down state.
    fn stats(&self) -> &BackplaneStats;
    /// Whether publishing can proceed.
    fn is_up(&self) -> bool {
        self.stats().up.load(Relaxed)
    }
    /// Appends `data` (validated JSON text) to `topic`'s log with the
    /// publisher's ingress time `ts` (µs), and delivers it to subscribed nodes.
    async fn publish(&self, topic: &str, data: Bytes, ts: u64) -> Result<Stamp, BackplaneError>;
    /// Starts delivering messages of topics matching `pattern` to this node.
    async fn subscribe(&self, pattern: &Pattern) -> Result<(), BackplaneError>;
    /// Stops what `subscribe` started.
    async fn unsubscribe(&self, pattern: &Pattern) -> Result<(), BackplaneError>;
    /// Reads `topic`'s log: with `after = Some(s)`, retained messages with
    /// `seq > s` (at most `limit`); with `None`, the last message only.
    /// `Ok(None)` when the topic has no log.
    async fn read(
        &self,
        topic: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Option<Log>, BackplaneError>;
}

struct MemLog {
    epoch: Arc<str>,
    seq: u64,
    history: VecDeque<Arc<Message>>,
}

struct MemNode {
    patterns: Vec<Pattern>,
    tx: mpsc::Sender<Incoming>,
}

#[derive(Default)]
struct MemShared {
    logs: HashMap<Arc<str>, MemLog>,
    nodes: Vec<(u64, MemNode)>,
    epochs: u64,
}

/// An in-process backplane: one shared set of topic logs, several nodes.
///
/// Create one with [`MemoryBackplane::new`], then one handle per node with
/// [`MemoryBackplane::node`]. `set_up(false)` simulates an outage.
#[derive(Clone)]
pub struct MemoryBackplane {
    shared: Arc<Mutex<MemShared>>,
    max_history: usize,
    node: u64,
    stats: Arc<BackplaneStats>,
}

impl std::fmt::Debug for MemoryBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackplane")
            .field("node", &self.node)
            .finish()
    }
}

impl MemoryBackplane {
    /// A shared log keeping at most `max_history` messages per topic.
    pub fn new(max_history: usize) -> MemoryBackplane {
        let stats = BackplaneStats::default();
        stats.up.store(true, Relaxed);
        MemoryBackplane {
            shared: Arc::default(),
            max_history,
            node: 0,
            stats: Arc::new(stats),
        }
    }

    /// A handle for one more node, delivering live messages into `tx`.
    pub fn node(&self, tx: mpsc::Sender<Incoming>) -> MemoryBackplane {
        let mut s = self.shared.lock();
        let id = s.nodes.iter().map(|(id, _)| *id).max().unwrap_or(0) + 1;
        s.nodes.push((
            id,
            MemNode {
                patterns: Vec::new(),
                tx,
            },
        ));
        let stats = BackplaneStats::default();
        stats.up.store(self.stats.up.load(Relaxed), Relaxed);
        MemoryBackplane {
            shared: self.shared.clone(),
            max_history: self.max_history,
            node: id,
            stats: Arc::new(stats),
        }
    }

    /// Simulates an outage (`false`) or its end (`true`, which sends
    /// [`Incoming::Resync`] to this node).
    pub fn set_up(&self, up: bool) {
        if up {
            if self.stats.set_up() {
                let s = self.shared.lock();
                if let Some((_, n)) = s.nodes.iter().find(|(id, _)| *id == self.node) {
                    let _ = n.tx.try_send(Incoming::Resync);
                }
            }
        } else {
            self.stats.set_down();
        }
    }

    /// Forgets a topic's log, as an expiry in Redis or a purge in NATS would.
    pub fn forget(&self, topic: &str) {
        self.shared.lock().logs.remove(topic);
    }

    fn check_up(&self) -> Result<(), BackplaneError> {
        if self.is_up() {
            Ok(())
        } else {
            self.stats.error();
            Err(BackplaneError::Down("memory backplane marked down".into()))
        }
    }
}

#[async_trait]
impl Backplane for MemoryBackplane {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn stats(&self) -> &BackplaneStats {
        &self.stats
    }

    async fn publish(&self, topic: &str, data: Bytes, ts: u64) -> Result<Stamp, BackplaneError> {
        self.check_up()?;
        let msg = {
            let mut s = self.shared.lock();
            let s = &mut *s;
            let epochs = &mut s.epochs;
            let log = s.logs.entry(topic.into()).or_insert_with(|| {
                *epochs += 1;
                MemLog {
                    epoch: format!("m{:x}{:x}", fastrand::u32(..), *epochs).into(),
                    seq: 0,
                    history: VecDeque::new(),
                }
            });
            log.seq += 1;
            let msg = Arc::new(Message::new(
                topic.into(),
                log.seq,
                log.epoch.clone(),
                ts,
                data,
            ));
            log.history.push_back(msg.clone());
            while log.history.len() > self.max_history {
                log.history.pop_front();
            }
            // Sending under the lock keeps every node's stream in seq order;
            // a full channel loses the message, which the node then sees as
            // a gap and fills from the log (as after a real outage).
            for (_, n) in &s.nodes {
                for _ in n.patterns.iter().filter(|p| p.matches(topic)) {
                    let _ = n.tx.try_send(Incoming::Message(msg.clone()));
                }
            }
            msg
        };
        self.stats.published.fetch_add(1, Relaxed);
        Ok(Stamp {
            seq: msg.seq,
            epoch: msg.epoch.clone(),
        })
    }

    async fn subscribe(&self, pattern: &Pattern) -> Result<(), BackplaneError> {
        self.check_up()?;
        let mut s = self.shared.lock();
        if let Some((_, n)) = s.nodes.iter_mut().find(|(id, _)| *id == self.node) {
            n.patterns.push(pattern.clone());
        }
        Ok(())
    }

    async fn unsubscribe(&self, pattern: &Pattern) -> Result<(), BackplaneError> {
        let mut s = self.shared.lock();
        if let Some((_, n)) = s.nodes.iter_mut().find(|(id, _)| *id == self.node) {
            if let Some(i) = n.patterns.iter().position(|p| p == pattern) {
                n.patterns.swap_remove(i);
            }
        }
        Ok(())
    }

    async fn read(
        &self,
        topic: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Option<Log>, BackplaneError> {
        self.check_up()?;
        let s = self.shared.lock();
        let Some(log) = s.logs.get(topic) else {
            return Ok(None);
        };
        let messages = match after {
            Some(a) => log
                .history
                .iter()
                .filter(|m| m.seq > a)
                .take(limit)
                .cloned()
                .collect(),
            None => log.history.back().cloned().into_iter().collect(),
        };
        Ok(Some(Log {
            epoch: log.epoch.clone(),
            last_seq: log.seq,
            messages,
        }))
    }
}

/// `url` with any password (or lone user token) replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some((a, h)) => (a, h),
        None => return url.to_string(),
    };
    let user = match auth.split_once(':') {
        Some((u, _)) => format!("{u}:***"),
        None => "***".to_string(),
    };
    format!("{scheme}://{user}@{host}")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redact_url("redis://:s3cret@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact_url("nats://bob:pw@h:4222"), "nats://bob:***@h:4222");
        assert_eq!(redact_url("nats://tok3n@h:4222"), "nats://***@h:4222");
        assert_eq!(redact_url("no scheme"), "no scheme");
    }
}
