//! Metrics of the server: what `/metrics` exposes and `/api/stats` and the
//! dashboard summarise.
//!
//! Why not prometheus-client's own `Histogram`/`Family`: they take a lock
//! per observation, and the delivery-lag histogram is observed once per
//! delivered message (100k+ times a second) from every worker thread. Here
//! every counter and histogram bucket is a relaxed atomic in a per-thread
//! shard (cache-line aligned, so two workers never write the same line);
//! shards are summed only when `/metrics` is scraped or the sampler ticks.
//! prometheus-client still does the exposition (OpenMetrics text) through a
//! [`Collector`], so names, types, units and escaping follow its rules.
//!
//! Label values are bounded: close codes outside a fixed list are `other`;
//! no topic names or addresses become labels.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use pulsegate_core::DropReason;
use pulsegate_proto::Codec;

use crate::state::{NotReady, Shared};

/// Shards per counter set; a power of two larger than the usual worker count.
const SHARDS: usize = 8;

thread_local! {
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Relaxed) % SHARDS
    };
}

fn shard() -> usize {
    SHARD.with(|s| *s)
}

#[repr(align(128))]
struct Padded<T>(T);

/// `N` counters, sharded per thread.
pub struct Counters<const N: usize> {
    shards: Box<[Padded<[AtomicU64; N]>]>,
}

impl<const N: usize> Default for Counters<N> {
    fn default() -> Self {
        Counters {
            shards: (0..SHARDS)
                .map(|_| Padded(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }
}

impl<const N: usize> Counters<N> {
    /// Adds `n` to counter `i`.
    #[inline]
    pub fn add(&self, i: usize, n: u64) {
        self.shards[shard()].0[i].fetch_add(n, Relaxed);
    }

    /// Current value of counter `i`.
    pub fn get(&self, i: usize) -> u64 {
        self.shards.iter().map(|s| s.0[i].load(Relaxed)).sum()
    }

    /// Current values of all counters.
    pub fn snapshot(&self) -> [u64; N] {
        std::array::from_fn(|i| self.get(i))
    }
}

impl<const N: usize> std::fmt::Debug for Counters<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.snapshot()).finish()
    }
}

/// A histogram of integer observations (µs for durations, bytes, frames)
/// with fixed upper bounds, sharded per thread. Observing is a binary search
/// and two relaxed atomic adds.
pub struct Histo {
    /// Inclusive upper bounds, ascending, in the observed unit.
    bounds: &'static [u64],
    /// Multiplier from the observed unit to the exposed base unit.
    scale: f64,
    /// Per shard: one count per bound, one for +Inf, then the sum.
    shards: Box<[Padded<Box<[AtomicU64]>>]>,
}

/// A histogram's totals at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoSnapshot {
    /// Count per bucket (not cumulative), the last one is +Inf.
    pub counts: Vec<u64>,
    /// Sum of observations, in the observed unit.
    pub sum: u64,
}

impl HistoSnapshot {
    /// Observations in total.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// What was observed between `earlier` and `self`.
    pub fn since(&self, earlier: &HistoSnapshot) -> HistoSnapshot {
        if earlier.counts.len() != self.counts.len() {
            return self.clone();
        }
        HistoSnapshot {
            counts: self
                .counts
                .iter()
                .zip(&earlier.counts)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            sum: self.sum.saturating_sub(earlier.sum),
        }
    }
}

impl Histo {
    fn new(bounds: &'static [u64], scale: f64) -> Histo {
        Histo {
            bounds,
            scale,
            shards: (0..SHARDS)
                .map(|_| Padded((0..bounds.len() + 2).map(|_| AtomicU64::new(0)).collect()))
                .collect(),
        }
    }

    /// Records one observation.
    #[inline]
    pub fn observe(&self, v: u64) {
        let i = self.bounds.partition_point(|b| *b < v);
        let s = &self.shards[shard()].0;
        s[i].fetch_add(1, Relaxed);
        s[self.bounds.len() + 1].fetch_add(v, Relaxed);
    }

    /// Records `n` observations of the same value.
    #[inline]
    pub fn observe_n(&self, v: u64, n: u64) {
        let i = self.bounds.partition_point(|b| *b < v);
        let s = &self.shards[shard()].0;
        s[i].fetch_add(n, Relaxed);
        s[self.bounds.len() + 1].fetch_add(v * n, Relaxed);
    }

    /// Records `now - t`, `k` times, for every `(t, k)` in `ts`
    /// (saturating): one atomic add per run of observations in the same
    /// bucket, plus one for the sum, instead of two per observation (a
    /// subscriber's batch of deliveries lands in one or two buckets).
    pub fn observe_since(&self, now: u64, ts: &[(u64, u64)]) {
        let s = &self.shards[shard()].0;
        let mut sum = 0u64;
        // The current run: its bucket and count, and the bucket's range
        // (lo, hi] (no lower end for the first bucket).
        let mut run: Option<(usize, u64)> = None;
        let (mut lo, mut hi) = (None, 0u64);
        for &(t, k) in ts {
            let v = now.saturating_sub(t);
            sum = sum.wrapping_add(v.wrapping_mul(k));
            if let Some((_, n)) = &mut run {
                if v <= hi && lo.is_none_or(|l| v > l) {
                    *n += k;
                    continue;
                }
            }
            let i = self.bounds.partition_point(|b| *b < v);
            lo = i.checked_sub(1).map(|k| self.bounds[k]);
            hi = self.bounds.get(i).copied().unwrap_or(u64::MAX);
            match &mut run {
                Some((j, n)) if *j == i => *n += k,
                _ => {
                    if let Some((j, n)) = run.replace((i, k)) {
                        s[j].fetch_add(n, Relaxed);
                    }
                }
            }
        }
        if let Some((j, n)) = run {
            s[j].fetch_add(n, Relaxed);
            s[self.bounds.len() + 1].fetch_add(sum, Relaxed);
        }
    }

    /// Sums the shards.
    pub fn snapshot(&self) -> HistoSnapshot {
        let n = self.bounds.len() + 1;
        let mut counts = vec![0u64; n];
        let mut sum = 0u64;
        for s in self.shards.iter() {
            for (c, a) in counts.iter_mut().zip(s.0.iter()) {
                *c += a.load(Relaxed);
            }
            sum += s.0[n].load(Relaxed);
        }
        HistoSnapshot { counts, sum }
    }

    /// The `q` quantile (0..=1) of `snap`, in the observed unit, linearly
    /// interpolated inside its bucket; `None` without observations. Values
    /// in the +Inf bucket are reported as the largest bound.
    pub fn quantile(&self, snap: &HistoSnapshot, q: f64) -> Option<f64> {
        let total = snap.count();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).max(1.0);
        let mut seen = 0u64;
        for (i, c) in snap.counts.iter().enumerate() {
            if *c == 0 {
                continue;
            }
            if (seen + c) as f64 >= rank {
                let Some(&upper) = self.bounds.get(i) else {
                    return self.bounds.last().map(|b| *b as f64);
                };
                let lower = if i == 0 { 0 } else { self.bounds[i - 1] };
                let within = (rank - seen as f64) / *c as f64;
                return Some(lower as f64 + (upper - lower) as f64 * within);
            }
            seen += c;
        }
        self.bounds.last().map(|b| *b as f64)
    }

    fn encode(&self, enc: &mut prometheus_client::encoding::MetricEncoder) -> std::fmt::Result {
        let snap = self.snapshot();
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .map(|b| *b as f64 * self.scale)
            .chain(std::iter::once(f64::MAX))
            .zip(snap.counts.iter().copied())
            .collect();
        enc.encode_histogram::<NoLabelSet>(
            snap.sum as f64 * self.scale,
            snap.count(),
            &buckets,
            None,
        )
    }
}

impl std::fmt::Debug for Histo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histo")
            .field("count", &self.snapshot().count())
            .finish()
    }
}

/// Delivery lag, fan-out time and RTT buckets, µs: fine below 10 ms where
/// healthy traffic lives, coarse up to 10 s.
const LAG_US: &[u64] = &[
    50, 75, 100, 150, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000,
    20_000, 30_000, 50_000, 75_000, 100_000, 150_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];
/// Handshake durations, µs.
const HANDSHAKE_US: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];
/// Connection lifetimes, ms.
const DURATION_MS: &[u64] = &[
    100, 1_000, 5_000, 10_000, 30_000, 60_000, 300_000, 600_000, 1_800_000, 3_600_000, 7_200_000,
    21_600_000, 86_400_000,
];
/// Payload sizes, bytes.
const SIZE_BYTES: &[u64] = &[
    16, 64, 256, 1_024, 4_096, 16_384, 65_536, 262_144, 1_048_576, 4_194_304, 16_777_216,
];
/// Frames per vectored write.
const BATCH_FRAMES: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256];

/// Close codes that get their own label value; anything else is `other`.
pub const CLOSE_CODES: &[u16] = &[
    1000, 1001, 1002, 1006, 1007, 1008, 1009, 1011, 4000, 4001, 4002, 4003, 4004, 4005,
];
const CLOSE_SLOTS: usize = 15;

/// Who initiated a close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    /// The client sent a close frame first.
    Client,
    /// We closed (policy, limits, drain, operator).
    Server,
    /// The connection ended without a close frame (1006).
    Abnormal,
}

impl Initiator {
    /// Label value.
    pub fn label(self) -> &'static str {
        match self {
            Initiator::Client => "client",
            Initiator::Server => "server",
            Initiator::Abnormal => "abnormal",
        }
    }
}

const INITIATORS: [Initiator; 3] = [Initiator::Client, Initiator::Server, Initiator::Abnormal];

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// `Origin` not allowed.
    Origin,
    /// `limits.max_connections`.
    LimitTotal,
    /// `limits.max_connections_per_ip`.
    LimitPerIp,
    /// No complete request head within `server.handshake_timeout`.
    HandshakeTimeout,
    /// Malformed upgrade request.
    BadRequest,
    /// The server is draining.
    Draining,
    /// A token on the upgrade was invalid or expired (`auth.mode = "jwt"`).
    Auth,
    /// Over `limits.handshake_rate_per_ip`.
    RateLimit,
    /// Queued bytes over `limits.max_queued_bytes_total`.
    MemoryBudget,
}

const REJECTED: [(&str, Rejected); 9] = [
    ("origin", Rejected::Origin),
    ("limit_total", Rejected::LimitTotal),
    ("limit_per_ip", Rejected::LimitPerIp),
    ("handshake_timeout", Rejected::HandshakeTimeout),
    ("bad_request", Rejected::BadRequest),
    ("draining", Rejected::Draining),
    ("auth", Rejected::Auth),
    ("rate_limit", Rejected::RateLimit),
    ("memory_budget", Rejected::MemoryBudget),
];

/// What a rate limit refused.
const RATE_LIMITED: [&str; 3] = ["handshake", "publish", "publish_bytes"];

/// Why a token was refused (upgrade, `auth` message, HTTP).
const AUTH_FAILURES: [&str; 3] = ["missing", "expired", "invalid"];
/// Operations refused by a token's ACL.
const ACL_OPS: [&str; 3] = ["sub", "pub", "read"];

/// Kinds of malformed client input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Text frame with invalid UTF-8 (1007).
    InvalidUtf8,
    /// Frame above `limits.max_message_bytes` (1009).
    Oversize,
    /// RFC 6455 violation (1002).
    ProtocolViolation,
    /// Not a JSON/MessagePack object.
    BadJson,
    /// Unknown `op`.
    UnknownOp,
    /// Well-formed but invalid request (missing field, bad topic).
    BadRequest,
    /// Text on a MessagePack connection or binary on a JSON one.
    WrongFrameType,
}

const FRAME_ERRORS: [(&str, FrameError); 7] = [
    ("invalid_utf8", FrameError::InvalidUtf8),
    ("oversize", FrameError::Oversize),
    ("protocol_violation", FrameError::ProtocolViolation),
    ("bad_json", FrameError::BadJson),
    ("unknown_op", FrameError::UnknownOp),
    ("bad_request", FrameError::BadRequest),
    ("wrong_frame_type", FrameError::WrongFrameType),
];

/// Where a publish came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `POST /api/publish…`.
    Http,
    /// `pub` over WebSocket.
    Ws,
    /// The server itself (`$sys/…`).
    System,
}

const SOURCES: [&str; 3] = ["http", "ws", "system"];

/// Why a publish was refused.
pub const PUBLISH_ERRORS: [&str; 6] = [
    "bad_request",
    "too_large",
    "limit",
    "unavailable",
    "forbidden",
    "unauthorized",
];

/// Message kinds for traffic counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Published messages in, `msg` frames out.
    Data,
    /// Everything else.
    Control,
}

/// Index into the traffic counters: `codec × kind × {messages, bytes}`.
fn traffic(codec: Codec, kind: Kind) -> usize {
    (usize::from(codec.is_binary()) * 2 + usize::from(kind == Kind::Control)) * 2
}

/// Every metric of the server that is not read from the hub or the process.
pub struct Metrics {
    enabled: bool,
    /// Server ingress → frame written to the socket, per delivery (µs).
    pub delivery_lag: Histo,
    /// Server ingress → in every local subscriber's queue (µs).
    pub publish_fanout: Histo,
    /// WebSocket ping → pong (µs).
    pub ping_rtt: Histo,
    /// Publisher's ingress on another node → applied here from the backplane (µs).
    pub backplane_lag: Histo,
    /// TCP accept → 101 written (µs).
    pub handshake: Histo,
    /// Connection lifetime (ms).
    pub conn_duration: Histo,
    /// Published payload sizes (bytes).
    pub payload: Histo,
    /// Frames per vectored write.
    pub write_batch: Histo,
    /// accepted ws, accepted echo.
    accepted: Counters<2>,
    rejected: Counters<9>,
    rate_limited: Counters<3>,
    auth_failures: Counters<3>,
    acl_denials: Counters<3>,
    closes: Counters<{ CLOSE_SLOTS * 3 }>,
    /// [codec][kind][messages|bytes] in, then the same out.
    traffic_in: Counters<8>,
    traffic_out: Counters<8>,
    publishes: Counters<3>,
    publish_errors: Counters<6>,
    frame_errors: Counters<7>,
    /// pong timeouts, write timeouts, hibernations.
    misc: Counters<3>,
    /// permessage-deflate: [negotiated connections, messages compressed,
    /// their bytes before, their bytes after, compressions performed].
    deflate: Counters<5>,
    /// Connections hibernating now.
    pub hibernating: AtomicUsize,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// New, all zero. With `enabled = false` histograms are not recorded.
    pub fn new(enabled: bool) -> Metrics {
        Metrics {
            enabled,
            delivery_lag: Histo::new(LAG_US, 1e-6),
            publish_fanout: Histo::new(LAG_US, 1e-6),
            ping_rtt: Histo::new(LAG_US, 1e-6),
            backplane_lag: Histo::new(LAG_US, 1e-6),
            handshake: Histo::new(HANDSHAKE_US, 1e-6),
            conn_duration: Histo::new(DURATION_MS, 1e-3),
            payload: Histo::new(SIZE_BYTES, 1.0),
            write_batch: Histo::new(BATCH_FRAMES, 1.0),
            accepted: Counters::default(),
            rejected: Counters::default(),
            rate_limited: Counters::default(),
            auth_failures: Counters::default(),
            acl_denials: Counters::default(),
            closes: Counters::default(),
            traffic_in: Counters::default(),
            traffic_out: Counters::default(),
            publishes: Counters::default(),
            publish_errors: Counters::default(),
            frame_errors: Counters::default(),
            misc: Counters::default(),
            deflate: Counters::default(),
            hibernating: AtomicUsize::new(0),
        }
    }

    /// Whether histograms are recorded and `/metrics` is served.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Records a histogram observation if metrics are enabled.
    #[inline]
    pub fn observe(&self, h: &Histo, v: u64) {
        if self.enabled {
            h.observe(v);
        }
    }

    /// Counts an accepted connection (`echo` for `/echo`).
    pub fn accepted(&self, echo: bool) {
        self.accepted.add(usize::from(echo), 1);
    }

    /// WebSocket connections accepted on `/ws`.
    pub fn accepted_ws(&self) -> u64 {
        self.accepted.get(0)
    }

    /// Counts a refused upgrade.
    pub fn rejected(&self, why: Rejected) {
        let i = REJECTED.iter().position(|(_, r)| *r == why).unwrap_or(0);
        self.rejected.add(i, 1);
    }

    /// Counts a refusal by a rate limit: `handshake`, `publish` or `publish_bytes`.
    pub fn rate_limited(&self, what: &str) {
        if let Some(i) = RATE_LIMITED.iter().position(|r| *r == what) {
            self.rate_limited.add(i, 1);
        }
    }

    /// Counts a refused token; `reason` is `missing`, `expired` or `invalid`.
    pub fn auth_failure(&self, reason: &str) {
        if let Some(i) = AUTH_FAILURES.iter().position(|r| *r == reason) {
            self.auth_failures.add(i, 1);
        }
    }

    /// Counts an operation a token's ACL did not allow: `sub`, `pub` or
    /// `read` (HTTP last value / history).
    pub fn acl_denied(&self, op: &str) {
        if let Some(i) = ACL_OPS.iter().position(|r| *r == op) {
            self.acl_denials.add(i, 1);
        }
    }

    /// Refused upgrades in total.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.snapshot().iter().sum()
    }

    /// Counts a closed connection.
    pub fn closed(&self, code: u16, initiator: Initiator) {
        let slot = CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CLOSE_SLOTS - 1);
        let who = INITIATORS.iter().position(|i| *i == initiator).unwrap_or(0);
        self.closes.add(slot * 3 + who, 1);
    }

    /// Closes per code label (summed over initiators), for the dashboard.
    pub fn closes_by_code(&self) -> Vec<(String, u64)> {
        let snap = self.closes.snapshot();
        (0..CLOSE_SLOTS)
            .map(|slot| {
                let label = CLOSE_CODES
                    .get(slot)
                    .map_or_else(|| "other".to_string(), |c| c.to_string());
                (label, snap[slot * 3..slot * 3 + 3].iter().sum())
            })
            .collect()
    }

    /// Counts frames received from a client.
    #[inline]
    pub fn received(&self, codec: Codec, kind: Kind, bytes: u64) {
        let i = traffic(codec, kind);
        self.traffic_in.add(i, 1);
        self.traffic_in.add(i + 1, bytes);
    }

    /// Counts frames written to a client.
    #[inline]
    pub fn sent(&self, codec: Codec, kind: Kind, frames: u64, bytes: u64) {
        if frames == 0 {
            return;
        }
        let i = traffic(codec, kind);
        self.traffic_out.add(i, frames);
        self.traffic_out.add(i + 1, bytes);
    }

    /// Data frames written to subscribers, all codecs.
    pub fn delivered(&self) -> u64 {
        self.traffic_out.get(traffic(Codec::Json, Kind::Data))
            + self.traffic_out.get(traffic(Codec::MsgPack, Kind::Data))
    }

    /// Frames written to clients, all codecs and kinds.
    pub fn frames_out(&self) -> u64 {
        (0..4).map(|i| self.traffic_out.get(i * 2)).sum()
    }

    /// Frames received from clients, all codecs and kinds.
    pub fn frames_in(&self) -> u64 {
        (0..4).map(|i| self.traffic_in.get(i * 2)).sum()
    }

    /// Bytes written to clients, all codecs and kinds.
    pub fn bytes_out(&self) -> u64 {
        (0..4).map(|i| self.traffic_out.get(i * 2 + 1)).sum()
    }

    /// Counts an accepted publish and its payload size.
    pub fn published(&self, source: Source, payload_bytes: usize) {
        self.publishes.add(source as usize, 1);
        self.observe(&self.payload, payload_bytes as u64);
    }

    /// Accepted publishes from `source`.
    pub fn publishes(&self, source: Source) -> u64 {
        self.publishes.get(source as usize)
    }

    /// Counts a refused publish; `reason` is one of [`PUBLISH_ERRORS`].
    pub fn publish_error(&self, reason: &str) {
        if let Some(i) = PUBLISH_ERRORS.iter().position(|r| *r == reason) {
            self.publish_errors.add(i, 1);
        }
    }

    /// Counts a malformed frame.
    pub fn frame_error(&self, kind: FrameError) {
        let i = FRAME_ERRORS
            .iter()
            .position(|(_, k)| *k == kind)
            .unwrap_or(0);
        self.frame_errors.add(i, 1);
    }

    /// Malformed frames in total.
    pub fn frame_errors_total(&self) -> u64 {
        self.frame_errors.snapshot().iter().sum()
    }

    /// Counts a connection closed for a missing pong.
    pub fn pong_timeout(&self) {
        self.misc.add(0, 1);
    }

    /// Connections closed for missing pongs.
    pub fn pong_timeouts(&self) -> u64 {
        self.misc.get(0)
    }

    /// Counts a connection dropped because its socket stopped taking writes.
    pub fn write_timeout(&self) {
        self.misc.add(1, 1);
    }

    /// Counts a hibernation.
    pub fn hibernated(&self) {
        self.misc.add(2, 1);
    }

    /// Hibernations in total.
    pub fn hibernations(&self) -> u64 {
        self.misc.get(2)
    }

    /// Counts a connection that negotiated permessage-deflate.
    pub fn deflate_negotiated(&self) {
        self.deflate.add(0, 1);
    }

    /// Adds what a connection sent compressed.
    pub fn deflated(&self, t: crate::ws::DeflateTally) {
        if t.messages > 0 {
            self.deflate.add(1, t.messages);
            self.deflate.add(2, t.raw_bytes);
            self.deflate.add(3, t.wire_bytes);
            self.deflate.add(4, t.compressions);
        }
    }

    /// permessage-deflate counters: negotiated connections, messages
    /// compressed, bytes before, bytes after, compressions performed.
    pub fn deflate_counts(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.deflate.get(i))
    }
}

/// Builds the registry served at `/metrics`.
pub fn registry(shared: Arc<Shared>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(ServerCollector(shared)));
    r
}

/// Reads every metric at scrape time.
#[derive(Debug)]
struct ServerCollector(Arc<Shared>);

/// A counter or gauge value already read.
#[derive(Debug)]
struct Value(MetricType, f64);

impl EncodeMetric for Value {
    fn encode(&self, mut e: prometheus_client::encoding::MetricEncoder) -> std::fmt::Result {
        match self.0 {
            MetricType::Counter => {
                if self.1.fract() == 0.0 {
                    e.encode_counter::<NoLabelSet, _, u64>(&(self.1 as u64), None)
                } else {
                    e.encode_counter::<NoLabelSet, _, u64>(&self.1, None)
                }
            }
            _ => {
                if self.1.fract() == 0.0 && self.1.abs() < 9.0e15 {
                    e.encode_gauge(&(self.1 as i64))
                } else {
                    e.encode_gauge(&self.1)
                }
            }
        }
    }

    fn metric_type(&self) -> MetricType {
        self.0
    }
}

struct Enc<'a, 'b> {
    e: &'a mut DescriptorEncoder<'b>,
}

impl Enc<'_, '_> {
    fn one(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        ty: MetricType,
        v: f64,
    ) -> std::fmt::Result {
        let m = self.e.encode_descriptor(name, help, unit.as_ref(), ty)?;
        Value(ty, v).encode(m)
    }

    fn labelled(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        ty: MetricType,
        rows: &[(Vec<(&str, String)>, f64)],
    ) -> std::fmt::Result {
        let mut m = self.e.encode_descriptor(name, help, unit.as_ref(), ty)?;
        for (labels, v) in rows {
            let fam = m.encode_family(labels)?;
            Value(ty, *v).encode(fam)?;
        }
        Ok(())
    }

    fn histo(&mut self, name: &str, help: &str, unit: Option<Unit>, h: &Histo) -> std::fmt::Result {
        let mut m = self
            .e
            .encode_descriptor(name, help, unit.as_ref(), MetricType::Histogram)?;
        h.encode(&mut m)
    }
}

const COUNTER: MetricType = MetricType::Counter;
const GAUGE: MetricType = MetricType::Gauge;

impl Collector for ServerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let shared = &self.0;
        let m = &shared.metrics;
        let hub = &shared.hub;
        let h = hub.stats();
        let mut e = Enc { e: &mut encoder };

        e.labelled(
            "pulsegate_build_info",
            "Build information; always 1.",
            None,
            GAUGE,
            &[(
                vec![("version", env!("CARGO_PKG_VERSION").to_string())],
                1.0,
            )],
        )?;

        // Connections.
        e.one(
            "pulsegate_connections_active",
            "WebSocket connections open now (/ws and /echo).",
            None,
            GAUGE,
            shared.active_connections() as f64,
        )?;
        e.one(
            "pulsegate_connections_max",
            "Configured limits.max_connections.",
            None,
            GAUGE,
            shared.config.limits.max_connections as f64,
        )?;
        e.labelled(
            "pulsegate_connections_accepted",
            "WebSocket upgrades completed, by endpoint.",
            None,
            COUNTER,
            &[
                (vec![("endpoint", "ws".into())], m.accepted.get(0) as f64),
                (vec![("endpoint", "echo".into())], m.accepted.get(1) as f64),
            ],
        )?;
        let rejected = m.rejected.snapshot();
        let rows: Vec<_> = REJECTED
            .iter()
            .zip(rejected)
            .map(|((label, _), v)| (vec![("reason", label.to_string())], v as f64))
            .collect();
        e.labelled(
            "pulsegate_connections_rejected",
            "WebSocket upgrades refused, by reason.",
            None,
            COUNTER,
            &rows,
        )?;
        let rows: Vec<_> = RATE_LIMITED
            .iter()
            .enumerate()
            .map(|(i, r)| (vec![("what", r.to_string())], m.rate_limited.get(i) as f64))
            .collect();
        e.labelled("pulsegate_rate_limited", "Upgrades and publishes refused by a rate limit (limits.handshake_rate_per_ip, publish_rate, publish_bytes_rate).", None, COUNTER, &rows)?;
        let rows: Vec<_> = AUTH_FAILURES
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    vec![("reason", r.to_string())],
                    m.auth_failures.get(i) as f64,
                )
            })
            .collect();
        e.labelled(
            "pulsegate_auth_failures",
            "Tokens refused (upgrade, auth message, HTTP), by reason.",
            None,
            COUNTER,
            &rows,
        )?;
        let rows: Vec<_> = ACL_OPS
            .iter()
            .enumerate()
            .map(|(i, r)| (vec![("op", r.to_string())], m.acl_denials.get(i) as f64))
            .collect();
        e.labelled(
            "pulsegate_acl_denials",
            "Operations refused by a token's topic ACL, by operation.",
            None,
            COUNTER,
            &rows,
        )?;
        e.histo(
            "pulsegate_connection_duration",
            "Lifetime of closed /ws connections.",
            Some(Unit::Seconds),
            &m.conn_duration,
        )?;
        e.histo(
            "pulsegate_handshake_duration",
            "TCP accept (including TLS) to the 101 response written.",
            Some(Unit::Seconds),
            &m.handshake,
        )?;
        e.one(
            "pulsegate_ready",
            "1 when /readyz answers 200.",
            None,
            GAUGE,
            f64::from(u8::from(shared.not_ready().is_none())),
        )?;
        let not_ready = shared.not_ready();
        let rows: Vec<_> = [
            NotReady::Draining,
            NotReady::AtCapacity,
            NotReady::BackplaneDown,
        ]
        .iter()
        .map(|r| {
            (
                vec![("reason", r.as_str().to_string())],
                f64::from(u8::from(not_ready == Some(*r))),
            )
        })
        .collect();
        e.labelled(
            "pulsegate_not_ready",
            "1 for the reason /readyz answers 503, else 0.",
            None,
            GAUGE,
            &rows,
        )?;

        // Cluster backplane (all zero, `backplane="memory"`, on a single node).
        let cluster = shared.cluster.get();
        let name = cluster.map_or("memory", |c| c.backplane().name());
        let up = cluster.is_none_or(|c| c.backplane().is_up());
        e.labelled(
            "pulsegate_backplane_up",
            "1 when the cluster backplane is reachable (always 1 for memory).",
            None,
            GAUGE,
            &[(
                vec![("backplane", name.to_string())],
                f64::from(u8::from(up)),
            )],
        )?;
        let bp = |f: fn(&pulsegate_core::BackplaneStats) -> &AtomicU64| {
            cluster.map_or(0, |c| f(c.backplane().stats()).load(Relaxed)) as f64
        };
        let cs = |f: fn(&pulsegate_core::ClusterStats) -> &AtomicU64| {
            cluster.map_or(0, |c| f(c.stats()).load(Relaxed)) as f64
        };
        for (metric, help, ty, v) in [
            ("pulsegate_backplane_errors", "Failed backplane operations (publish, subscribe, read, health check).", COUNTER, bp(|s| &s.errors)),
            ("pulsegate_backplane_reconnects", "Backplane transitions from down to up.", COUNTER, bp(|s| &s.reconnects)),
            ("pulsegate_backplane_conflicts", "Publishes retried because another node stored on the same topic first (NATS).", COUNTER, bp(|s| &s.conflicts)),
            ("pulsegate_backplane_published", "Messages stored in the backplane by this node.", COUNTER, bp(|s| &s.published)),
            ("pulsegate_backplane_received", "Live messages received from the backplane.", COUNTER, bp(|s| &s.received)),
            ("pulsegate_backplane_applied", "Live messages applied to this node's hub (mostly published on other nodes).", COUNTER, cs(|s| &s.remote_applied)),
            ("pulsegate_backplane_duplicates", "Live messages dropped as already held (echo of own publish, overlapping patterns).", COUNTER, cs(|s| &s.duplicates)),
            ("pulsegate_backplane_gaps_filled", "Holes in the live stream filled by reading the topic log.", COUNTER, cs(|s| &s.gaps_filled)),
            ("pulsegate_backplane_gap_lost_messages", "Messages a hole needed that the log no longer held; local subscribers saw seq jump.", COUNTER, cs(|s| &s.gap_lost)),
            ("pulsegate_backplane_resyncs", "Re-reads of all subscribed topics after a backplane reconnect.", COUNTER, cs(|s| &s.resyncs)),
            ("pulsegate_backplane_patterns", "Patterns this node is subscribed to on the backplane now.", GAUGE, cs(|s| &s.patterns)),
        ] {
            e.one(metric, help, None, ty, v)?;
        }
        e.histo(
            "pulsegate_backplane_lag",
            "Publisher's ingress (on any node) to the message applied on this node from the backplane: cross-node lag.",
            Some(Unit::Seconds),
            &m.backplane_lag,
        )?;

        // Closes.
        let closes = m.closes.snapshot();
        let mut rows = Vec::new();
        for slot in 0..CLOSE_SLOTS {
            let code = CLOSE_CODES
                .get(slot)
                .map_or_else(|| "other".to_string(), |c| c.to_string());
            for (w, who) in INITIATORS.iter().enumerate() {
                let v = closes[slot * 3 + w];
                if v > 0 {
                    rows.push((
                        vec![
                            ("code", code.clone()),
                            ("initiator", who.label().to_string()),
                        ],
                        v as f64,
                    ));
                }
            }
        }
        e.labelled("pulsegate_connection_closes", "Closed /ws connections, by close code and by who initiated the close (abnormal: no close frame, 1006).", None, COUNTER, &rows)?;

        // Traffic.
        for (name, help, c) in [
            (
                "pulsegate_messages_received",
                "WebSocket frames received from clients.",
                &m.traffic_in,
            ),
            (
                "pulsegate_messages_sent",
                "WebSocket frames written to clients.",
                &m.traffic_out,
            ),
        ] {
            e.labelled(name, help, None, COUNTER, &traffic_rows(c, 0))?;
        }
        for (name, help, c) in [
            (
                "pulsegate_received",
                "Payload bytes of frames received from clients.",
                &m.traffic_in,
            ),
            (
                "pulsegate_sent",
                "Payload bytes of frames written to clients.",
                &m.traffic_out,
            ),
        ] {
            e.labelled(name, help, Some(Unit::Bytes), COUNTER, &traffic_rows(c, 1))?;
        }
        let rows: Vec<_> = SOURCES
            .iter()
            .enumerate()
            .map(|(i, s)| (vec![("source", s.to_string())], m.publishes.get(i) as f64))
            .collect();
        e.labelled(
            "pulsegate_publishes",
            "Messages accepted for publishing, by source.",
            None,
            COUNTER,
            &rows,
        )?;
        let rows: Vec<_> = PUBLISH_ERRORS
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    vec![("reason", s.to_string())],
                    m.publish_errors.get(i) as f64,
                )
            })
            .collect();
        e.labelled(
            "pulsegate_publish_errors",
            "Publishes refused, by reason.",
            None,
            COUNTER,
            &rows,
        )?;
        e.histo(
            "pulsegate_publish_payload",
            "Size of published payloads.",
            Some(Unit::Bytes),
            &m.payload,
        )?;

        // Lag.
        e.histo("pulsegate_delivery_lag", "Server ingress of a message to its frame written to a subscriber's socket, per delivery.", Some(Unit::Seconds), &m.delivery_lag)?;
        e.histo(
            "pulsegate_publish_fanout",
            "Server ingress of a message until it is in every local subscriber's queue.",
            Some(Unit::Seconds),
            &m.publish_fanout,
        )?;

        // Heartbeats.
        e.histo(
            "pulsegate_ping_rtt",
            "WebSocket ping to pong round trip.",
            Some(Unit::Seconds),
            &m.ping_rtt,
        )?;
        e.one(
            "pulsegate_pong_timeouts",
            "Connections closed (4001) because no pong came within heartbeat.pong_timeout.",
            None,
            COUNTER,
            m.pong_timeouts() as f64,
        )?;

        // Backpressure.
        let (max_depth, queued, queued_bytes) = shared.queue_depths();
        e.one(
            "pulsegate_queue_depth_max_messages",
            "Deepest subscriber queue now, in messages.",
            None,
            GAUGE,
            max_depth as f64,
        )?;
        e.one(
            "pulsegate_queued_messages",
            "Messages queued for all subscribers now.",
            None,
            GAUGE,
            queued as f64,
        )?;
        e.one(
            "pulsegate_queued",
            "Bytes queued for all subscribers now.",
            Some(Unit::Bytes),
            GAUGE,
            queued_bytes as f64,
        )?;
        e.histo(
            "pulsegate_write_batch_frames",
            "Frames written per vectored write (how much had queued up).",
            None,
            &m.write_batch,
        )?;
        let rows: Vec<_> = [
            DropReason::Conflated,
            DropReason::QueueFull,
            DropReason::SlowConsumerClose,
            DropReason::ConnectionClosed,
        ]
        .iter()
        .map(|r| (vec![("reason", r.label().to_string())], h.drops(*r) as f64))
        .collect();
        e.labelled(
            "pulsegate_dropped_messages",
            "Messages that did not reach a subscriber, by reason.",
            None,
            COUNTER,
            &rows,
        )?;
        e.one(
            "pulsegate_slow_consumer_disconnects",
            "Subscribers closed (4000) because their queue overflowed.",
            None,
            COUNTER,
            h.slow_consumer_disconnects.load(Relaxed) as f64,
        )?;
        e.one("pulsegate_write_timeouts", "Connections dropped (4003) because their socket took no data for server.write_timeout.", None, COUNTER, m.misc.get(1) as f64)?;

        // Protocol.
        let fe = m.frame_errors.snapshot();
        let rows: Vec<_> = FRAME_ERRORS
            .iter()
            .zip(fe)
            .map(|((label, _), v)| (vec![("kind", label.to_string())], v as f64))
            .collect();
        e.labelled(
            "pulsegate_frame_errors",
            "Malformed client frames, by kind.",
            None,
            COUNTER,
            &rows,
        )?;
        e.one(
            "pulsegate_subscriptions_active",
            "Subscriptions (pattern x connection) now.",
            None,
            GAUGE,
            hub.subscription_count() as f64,
        )?;
        e.one(
            "pulsegate_topics_active",
            "Concrete topics known to the hub now.",
            None,
            GAUGE,
            hub.topic_count() as f64,
        )?;
        let (retained, retained_bytes) = hub.retained();
        e.one(
            "pulsegate_history_messages",
            "Messages retained in topic history.",
            None,
            GAUGE,
            retained as f64,
        )?;
        e.one(
            "pulsegate_history",
            "Payload bytes retained in topic history.",
            Some(Unit::Bytes),
            GAUGE,
            retained_bytes as f64,
        )?;
        e.labelled(
            "pulsegate_recoveries",
            "Per-topic recovery requests (`since`), by outcome.",
            None,
            COUNTER,
            &[
                (
                    vec![("outcome", "recovered".into())],
                    h.recovered.load(Relaxed) as f64,
                ),
                (
                    vec![("outcome", "not_recovered".into())],
                    h.not_recovered.load(Relaxed) as f64,
                ),
            ],
        )?;
        e.one(
            "pulsegate_hibernations",
            "Times an idle connection released its WebSocket buffers.",
            None,
            COUNTER,
            m.hibernations() as f64,
        )?;
        let [negotiated, messages, raw, wire, compressions] = m.deflate_counts();
        for (name, help, v) in [
            (
                "pulsegate_deflate_connections",
                "Connections that negotiated permessage-deflate.",
                negotiated,
            ),
            (
                "pulsegate_deflate_messages",
                "Messages sent compressed (at least compression.threshold bytes).",
                messages,
            ),
            (
                "pulsegate_deflate_raw_bytes",
                "Size of the messages sent compressed, before compression.",
                raw,
            ),
            (
                "pulsegate_deflate_wire_bytes",
                "Size of the messages sent compressed, as written (payload).",
                wire,
            ),
            (
                "pulsegate_deflate_compressions",
                "Compressions performed; the other compressed sends reused a shared result.",
                compressions,
            ),
        ] {
            e.one(name, help, None, COUNTER, v as f64)?;
        }
        e.one(
            "pulsegate_hibernating_connections",
            "Connections hibernating now.",
            None,
            GAUGE,
            m.hibernating.load(Relaxed) as f64,
        )?;

        // Runtime.
        let rt = tokio::runtime::Handle::try_current()
            .ok()
            .map(|h| h.metrics());
        if let Some(rt) = rt {
            e.one(
                "pulsegate_tokio_workers",
                "Tokio worker threads.",
                None,
                GAUGE,
                rt.num_workers() as f64,
            )?;
            e.one(
                "pulsegate_tokio_alive_tasks",
                "Tokio tasks alive (about one per connection).",
                None,
                GAUGE,
                rt.num_alive_tasks() as f64,
            )?;
            e.one(
                "pulsegate_tokio_global_queue_depth",
                "Tasks waiting in tokio's global queue.",
                None,
                GAUGE,
                rt.global_queue_depth() as f64,
            )?;
        }

        // Process.
        let p = crate::process::read();
        e.one(
            "process_cpu_seconds",
            "User and system CPU time spent.",
            None,
            COUNTER,
            p.cpu_seconds,
        )?;
        e.one(
            "process_resident_memory",
            "Resident memory size.",
            Some(Unit::Bytes),
            GAUGE,
            p.resident_bytes as f64,
        )?;
        e.one(
            "process_virtual_memory",
            "Virtual memory size.",
            Some(Unit::Bytes),
            GAUGE,
            p.virtual_bytes as f64,
        )?;
        e.one(
            "process_open_fds",
            "Open file descriptors.",
            None,
            GAUGE,
            p.open_fds as f64,
        )?;
        e.one(
            "process_max_fds",
            "Soft limit on open file descriptors.",
            None,
            GAUGE,
            p.max_fds as f64,
        )?;
        e.one(
            "process_threads",
            "OS threads.",
            None,
            GAUGE,
            p.threads as f64,
        )?;
        e.one(
            "process_start_time",
            "Start time since the Unix epoch.",
            Some(Unit::Seconds),
            GAUGE,
            p.start_time_seconds,
        )?;
        Ok(())
    }
}

/// Converts OpenMetrics text to the Prometheus text format 0.0.4: counter
/// families take their `_total` sample name in `HELP`/`TYPE`, and the
/// OpenMetrics-only `UNIT` and `EOF` lines go. Samples are unchanged.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|r| r.strip_suffix(" counter"))
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (*p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn traffic_rows<const N: usize>(
    c: &Counters<N>,
    offset: usize,
) -> Vec<(Vec<(&'static str, String)>, f64)> {
    let mut rows = Vec::new();
    for codec in [Codec::Json, Codec::MsgPack] {
        for (kind, label) in [(Kind::Data, "data"), (Kind::Control, "control")] {
            rows.push((
                vec![
                    ("codec", codec.label().to_string()),
                    ("kind", label.to_string()),
                ],
                c.get(traffic(codec, kind) + offset) as f64,
            ));
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_sum_and_quantiles() {
        let h = Histo::new(&[10, 20, 40], 1.0);
        for v in [1, 10, 11, 20, 39, 1000] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.counts, vec![2, 2, 1, 1]);
        assert_eq!(s.sum, 1081);
        assert_eq!(s.count(), 6);
        // rank 3 of 6 falls in the second bucket (10, 20]: halfway.
        assert_eq!(h.quantile(&s, 0.5), Some(15.0));
        assert_eq!(h.quantile(&s, 1.0), Some(40.0));
        assert_eq!(h.quantile(&HistoSnapshot::default(), 0.5), None);
        h.observe(5);
        let later = h.snapshot();
        assert_eq!(later.since(&s).counts, vec![1, 0, 0, 0]);
        assert_eq!(later.since(&s).sum, 5);
    }

    #[test]
    fn observing_a_batch_equals_observing_each() {
        let ts = [
            1000u64, 995, 990, 960, 962, 1001, 500, 0, 999, 1000, 1000, 980, 981, 0, 0,
        ];
        let one = Histo::new(&[10, 20, 40], 1.0);
        for t in ts {
            one.observe(1000u64.saturating_sub(t));
        }
        let batch = Histo::new(&[10, 20, 40], 1.0);
        let pairs: Vec<(u64, u64)> = ts.iter().map(|t| (*t, 1)).collect();
        batch.observe_since(1000, &pairs);
        batch.observe_since(1000, &[]);
        let (a, b) = (one.snapshot(), batch.snapshot());
        assert_eq!(a.counts, b.counts);
        assert_eq!(a.sum, b.sum);
        assert_eq!(b.count(), ts.len() as u64);
        // Counted pairs: the same as repeating the time.
        let counted = Histo::new(&[10, 20, 40], 1.0);
        counted.observe_since(1000, &[(1000, 2), (995, 3), (500, 1), (990, 0), (980, 4)]);
        let each = Histo::new(&[10, 20, 40], 1.0);
        for (t, k) in [(1000u64, 2), (995, 3), (500, 1), (980, 4)] {
            for _ in 0..k {
                each.observe(1000 - t);
            }
        }
        let (a, b) = (each.snapshot(), counted.snapshot());
        assert_eq!((a.counts, a.sum), (b.counts, b.sum));
    }

    #[test]
    fn counters_sum_over_threads() {
        let c = Arc::new(Counters::<2>::default());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(1, 2);
                    }
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(c.snapshot(), [0, 8000]);
    }

    #[test]
    fn prometheus_text_names_counters_with_total() {
        let om = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total 3\n# HELP c_seconds T.\n# TYPE c_seconds histogram\n# UNIT c_seconds seconds\nc_seconds_sum 1.0\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total 3\n# HELP c_seconds T.\n# TYPE c_seconds histogram\nc_seconds_sum 1.0\n"
        );
    }

    #[test]
    fn close_codes_outside_the_list_are_other() {
        let m = Metrics::new(true);
        m.closed(1000, Initiator::Client);
        m.closed(4999, Initiator::Client);
        m.closed(3000, Initiator::Server);
        let by_code: std::collections::HashMap<_, _> = m.closes_by_code().into_iter().collect();
        assert_eq!(by_code["1000"], 1);
        assert_eq!(by_code["other"], 2);
    }
}
