//! The arithmetic of a benchmark: sequence checking, lag histograms and the
//! numbers a report derives from counts. Pure code, no I/O.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// How many missing sequence numbers one stream remembers so that a late
/// arrival can be classified as out-of-order rather than duplicate. Gaps
/// beyond this are still counted as lost, only not reclassifiable.
pub const MAX_TRACKED_MISSING: usize = 4096;

/// Loss, duplication and reordering counts; they add up across streams.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SeqCounts {
    /// Sequence numbers skipped and never seen later.
    pub lost: u64,
    /// Sequence numbers seen more than once.
    pub duplicated: u64,
    /// Sequence numbers that arrived after a higher one.
    pub out_of_order: u64,
}

impl std::ops::AddAssign for SeqCounts {
    fn add_assign(&mut self, o: Self) {
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
    }
}

/// Checks one stream whose sequence numbers should increase by exactly 1.
///
/// The first number seen is the baseline (a topic may already have history,
/// and a subscriber may join mid-stream). Tail loss — messages after the last
/// one received — is invisible here; reports catch it as "undelivered".
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    next: Option<u64>,
    missing: BTreeSet<u64>,
    counts: SeqCounts,
}

impl SeqTracker {
    /// Records the arrival of `seq`.
    pub fn observe(&mut self, seq: u64) {
        match self.next {
            None => self.next = Some(seq.saturating_add(1)),
            Some(next) if seq == next => self.next = Some(next + 1),
            Some(next) if seq > next => {
                let gap = seq - next;
                self.counts.lost += gap;
                if self.missing.len() as u64 + gap <= MAX_TRACKED_MISSING as u64 {
                    self.missing.extend(next..seq);
                }
                self.next = Some(seq + 1);
            }
            Some(_) => {
                if self.missing.remove(&seq) {
                    self.counts.lost -= 1;
                    self.counts.out_of_order += 1;
                } else {
                    self.counts.duplicated += 1;
                }
            }
        }
    }

    /// Forgets the baseline, e.g. after the server announced a new epoch.
    pub fn reset(&mut self) {
        self.next = None;
        self.missing.clear();
    }

    /// The counts so far.
    pub fn counts(&self) -> SeqCounts {
        self.counts
    }
}

/// Lag in microseconds from 1 µs to one hour, 3 significant figures.
pub fn new_lag_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

/// A histogram shared by many tasks, split into shards so that a thousand
/// subscribers neither contend on one lock nor each own a 180 KB histogram.
/// Locks are held for one `record` and never across an `.await`.
pub struct ShardedHistogram {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl ShardedHistogram {
    /// `shards` histograms (at least one).
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(new_lag_histogram()))
                .collect(),
        }
    }

    /// Records `value_us` into the shard picked by `key`; values past the
    /// upper bound are clamped to it.
    pub fn record(&self, key: usize, value_us: u64) {
        let shard = &self.shards[key % self.shards.len()];
        shard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .saturating_record(value_us.max(1));
    }

    /// Records every value of `values_us` into the shard picked by `key`
    /// under one lock, exactly as that many [`ShardedHistogram::record`]
    /// calls would.
    pub fn record_many(&self, key: usize, values_us: &[u64]) {
        if values_us.is_empty() {
            return;
        }
        let shard = &self.shards[key % self.shards.len()];
        let mut h = shard.lock().unwrap_or_else(|p| p.into_inner());
        for &v in values_us {
            h.saturating_record(v.max(1));
        }
    }

    /// All shards added together.
    pub fn merged(&self) -> Histogram<u64> {
        let mut out = new_lag_histogram();
        for s in &self.shards {
            let h = s.lock().unwrap_or_else(|p| p.into_inner());
            out.add(&*h).expect("shards share bounds");
        }
        out
    }
}

/// Percentiles of a latency histogram recorded in microseconds, in ms.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub samples: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest sample.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl LatencySummary {
    /// Summarises `h` (µs) in milliseconds; all zero when `h` is empty.
    pub fn from_us(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            samples: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// `count` per second over `window`; 0 for an empty window.
pub fn per_sec(count: u64, window: Duration) -> f64 {
    let s = window.as_secs_f64();
    if s > 0.0 {
        count as f64 / s
    } else {
        0.0
    }
}

/// Deliveries a perfect server makes: every message published on a topic,
/// once to every subscriber of that topic.
pub fn expected_deliveries(published_per_topic: &[u64], subscribers_per_topic: &[u64]) -> u64 {
    published_per_topic
        .iter()
        .zip(subscribers_per_topic)
        .map(|(p, s)| p * s)
        .sum()
}

/// Server memory attributable to each connection; `None` without both
/// readings or without connections. May be negative when the allocator
/// returned memory in between.
pub fn bytes_per_connection(before: Option<u64>, after: Option<u64>, conns: u64) -> Option<f64> {
    match (before, after) {
        (Some(b), Some(a)) if conns > 0 => Some((a as f64 - b as f64) / conns as f64),
        _ => None,
    }
}

/// `numerator / denominator` when the denominator is a positive reading.
pub fn ratio(numerator: u64, denominator: Option<f64>) -> Option<f64> {
    denominator
        .filter(|d| *d > 0.0)
        .map(|d| numerator as f64 / d)
}

/// Rounds to three decimals so reports stay readable.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(seqs: &[u64]) -> SeqCounts {
        let mut t = SeqTracker::default();
        for s in seqs {
            t.observe(*s);
        }
        t.counts()
    }

    #[test]
    fn in_order_stream_is_clean_from_any_baseline() {
        assert_eq!(track(&[41, 42, 43, 44]), SeqCounts::default());
    }

    #[test]
    fn gaps_are_lost() {
        assert_eq!(
            track(&[1, 2, 5, 6, 9]),
            SeqCounts {
                lost: 4,
                ..Default::default()
            }
        );
    }

    #[test]
    fn late_arrivals_are_out_of_order_not_lost() {
        assert_eq!(
            track(&[1, 3, 2, 4]),
            SeqCounts {
                out_of_order: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn repeats_are_duplicates() {
        assert_eq!(
            track(&[1, 2, 2, 3, 1, 3]),
            SeqCounts {
                duplicated: 3,
                ..Default::default()
            }
        );
        // A late arrival counts once; its second copy is a duplicate.
        assert_eq!(
            track(&[1, 3, 2, 2]),
            SeqCounts {
                lost: 0,
                duplicated: 1,
                out_of_order: 1
            }
        );
    }

    #[test]
    fn huge_gaps_are_counted_without_remembering_them() {
        let mut t = SeqTracker::default();
        t.observe(0);
        t.observe(1_000_000);
        assert_eq!(t.counts().lost, 999_999);
        assert!(t.missing.is_empty());
        t.observe(5);
        assert_eq!(t.counts().duplicated, 1);
    }

    #[test]
    fn reset_takes_a_new_baseline() {
        let mut t = SeqTracker::default();
        t.observe(10);
        t.reset();
        t.observe(1);
        t.observe(2);
        assert_eq!(t.counts(), SeqCounts::default());
    }

    #[test]
    fn summary_converts_microseconds_to_milliseconds() {
        let sh = ShardedHistogram::new(4);
        for v in 1..=1000u64 {
            sh.record(v as usize, v * 100); // 0.1 ms .. 100 ms
        }
        let s = LatencySummary::from_us(&sh.merged());
        assert_eq!(s.samples, 1000);
        assert!((s.p50 - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p99 - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max - 100.0).abs() < 0.1, "{s:?}");
        assert!((s.mean - 50.05).abs() < 0.1, "{s:?}");
        assert_eq!(
            LatencySummary::from_us(&new_lag_histogram()),
            LatencySummary::default()
        );
    }

    #[test]
    fn recording_in_batches_is_recording_one_by_one() {
        let values: Vec<u64> = (0..5000u64)
            .map(|i| (i * 7919) % 10_000_000 + i % 3)
            .chain([0, 1, u64::MAX, 3_600_000_001])
            .collect();
        let one = ShardedHistogram::new(4);
        let many = ShardedHistogram::new(4);
        for (k, chunk) in values.chunks(97).enumerate() {
            for &v in chunk {
                one.record(k, v);
            }
            many.record_many(k, chunk);
        }
        many.record_many(3, &[]);
        let (a, b) = (one.merged(), many.merged());
        assert_eq!(a.len(), values.len() as u64);
        assert_eq!(a, b);
        assert_eq!(LatencySummary::from_us(&a), LatencySummary::from_us(&b));
    }

    #[test]
    fn report_math() {
        assert_eq!(expected_deliveries(&[10, 20], &[3, 5]), 130);
        assert_eq!(per_sec(500, Duration::from_millis(250)), 2000.0);
        assert_eq!(per_sec(5, Duration::ZERO), 0.0);
        assert_eq!(
            bytes_per_connection(Some(1_000_000), Some(8_000_000), 1000),
            Some(7000.0)
        );
        assert_eq!(bytes_per_connection(Some(1), None, 10), None);
        assert_eq!(bytes_per_connection(Some(1), Some(2), 0), None);
        assert_eq!(ratio(100, Some(0.5)), Some(200.0));
        assert_eq!(ratio(100, Some(0.0)), None);
        assert_eq!(round3(1.23456), 1.235);
        let mut c = SeqCounts {
            lost: 1,
            duplicated: 2,
            out_of_order: 3,
        };
        c += c;
        assert_eq!(c.out_of_order, 6);
    }
}
