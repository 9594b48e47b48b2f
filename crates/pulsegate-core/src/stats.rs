//! Counters of the hub, updated with relaxed atomics off any lock and read
//! at scrape time by the metrics layer.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a message did not reach a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Replaced by a newer message on the same topic (`slow_consumer = "conflate"`).
    Conflated,
    /// The queue was full and had no older message of the same topic to replace;
    /// the oldest queued message was dropped (`conflate` policy).
    QueueFull,
    /// The subscriber was disconnected as a slow consumer; its queued and
    /// incoming messages are dropped (`disconnect` policy). The client recovers them with `since`.
    SlowConsumerClose,
    /// Queued for a connection that then ended for another reason (client
    /// close, error, pong timeout, shutdown), or published to it while it was closing.
    ConnectionClosed,
}

impl DropReason {
    /// Metric label value.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Conflated => "conflated",
            DropReason::QueueFull => "queue_full",
            DropReason::SlowConsumerClose => "slow_consumer_close",
            DropReason::ConnectionClosed => "connection_closed",
        }
    }
}

/// Hub-wide counters.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Messages published (stamped).
    pub published: AtomicU64,
    /// Messages put into subscriber queues.
    pub enqueued: AtomicU64,
    /// Drops, by reason.
    pub dropped_conflated: AtomicU64,
    /// See [`DropReason::QueueFull`].
    pub dropped_queue_full: AtomicU64,
    /// See [`DropReason::SlowConsumerClose`].
    pub dropped_slow_consumer: AtomicU64,
    /// See [`DropReason::ConnectionClosed`].
    pub dropped_connection_closed: AtomicU64,
    /// Subscribers closed as slow consumers.
    pub slow_consumer_disconnects: AtomicU64,
    /// Recovery requests per topic that were answered with a replay.
    pub recovered: AtomicU64,
    /// Recovery requests per topic that could not be served.
    pub not_recovered: AtomicU64,
}

impl HubStats {
    /// Counts `n` drops for `reason`.
    pub fn count_drop(&self, reason: DropReason, n: u64) {
        let c = match reason {
            DropReason::Conflated => &self.dropped_conflated,
            DropReason::QueueFull => &self.dropped_queue_full,
            DropReason::SlowConsumerClose => &self.dropped_slow_consumer,
            DropReason::ConnectionClosed => &self.dropped_connection_closed,
        };
        c.fetch_add(n, Relaxed);
    }

    /// Total drops for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::Conflated => self.dropped_conflated.load(Relaxed),
            DropReason::QueueFull => self.dropped_queue_full.load(Relaxed),
            DropReason::SlowConsumerClose => self.dropped_slow_consumer.load(Relaxed),
            DropReason::ConnectionClosed => self.dropped_connection_closed.load(Relaxed),
        }
    }
}
