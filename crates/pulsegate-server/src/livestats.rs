//! Live statistics: the JSON behind `GET /api/stats` and the `$sys/stats`
//! topic the dashboard subscribes to.
//!
//! A sampler task reads the counters once a second and keeps the last
//! 61 samples, so rates over 1/10/60 s and lag quantiles over the last 10 s
//! are differences of two samples, computed without touching the hot path.
//! When someone is subscribed to `$sys/stats` (the dashboard), the sampler
//! publishes the snapshot there through the hub: the dashboard is fed by
//! our own protocol.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use pulsegate_core::now_micros;
use serde_json::{json, Value};

use crate::metrics::{HistoSnapshot, Source};
use crate::state::Shared;

/// The topic the sampler publishes to; readable by admin connections only.
pub const SYS_STATS_TOPIC: &str = "$sys/stats";
/// Rows of the connection table in `$sys/stats`.
const CONN_ROWS: usize = 50;
/// Rows of the busiest-topics table.
const TOPIC_ROWS: usize = 10;
/// How often per-topic rates are recomputed (a pass over every topic):
/// every sample while topics are few, every 5 s when there are many.
fn topic_every(topics: usize) -> Duration {
    if topics <= 10_000 {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    }
}

#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    published: u64,
    delivered: u64,
    lag: HistoSnapshot,
    rtt: HistoSnapshot,
    closes: Vec<(String, u64)>,
}

/// Busiest topic, as shown on the dashboard and `/api/topics`.
#[derive(Debug, Clone)]
pub struct TopicRate {
    /// Topic name.
    pub topic: Arc<str>,
    /// Subscribers now.
    pub subscribers: usize,
    /// Messages per second over the last ~5 s.
    pub rate: f64,
    /// Latest seq.
    pub seq: u64,
    /// Epoch.
    pub epoch: Arc<str>,
    /// Retained messages.
    pub retained: usize,
}

#[derive(Debug, Default)]
struct Window {
    samples: VecDeque<Sample>,
    topic_seqs: HashMap<Arc<str>, u64>,
    topic_at: Option<Instant>,
    topics: Vec<TopicRate>,
}

/// The sampler's state.
#[derive(Debug, Default)]
pub struct LiveStats {
    window: Mutex<Window>,
}

impl LiveStats {
    /// Takes one sample; recomputes topic rates every few seconds.
    pub fn sample(&self, shared: &Shared) {
        let m = &shared.metrics;
        let s = Sample {
            at: Instant::now(),
            published: user_publishes(shared),
            delivered: m.delivered(),
            lag: m.delivery_lag.snapshot(),
            rtt: m.ping_rtt.snapshot(),
            closes: m.closes_by_code(),
        };
        let mut w = self.window.lock();
        w.samples.push_back(s);
        while w.samples.len() > 61 {
            w.samples.pop_front();
        }
        let every = topic_every(w.topics.len());
        // A little slack so a 1 s sampler tick is never "just too early".
        let due = w
            .topic_at
            .is_none_or(|t| t.elapsed() + Duration::from_millis(100) >= every);
        if due {
            let now = Instant::now();
            let elapsed = w.topic_at.map(|t| now.duration_since(t).as_secs_f64());
            let topics = shared.hub.topics();
            let mut seqs = HashMap::with_capacity(topics.len());
            let mut rates: Vec<TopicRate> = topics
                .into_iter()
                .map(|t| {
                    let rate = match (elapsed, w.topic_seqs.get(&t.topic)) {
                        (Some(e), Some(prev)) if e > 0.0 => t.seq.saturating_sub(*prev) as f64 / e,
                        _ => 0.0,
                    };
                    seqs.insert(t.topic.clone(), t.seq);
                    TopicRate {
                        topic: t.topic,
                        subscribers: t.subscribers,
                        rate,
                        seq: t.seq,
                        epoch: t.epoch,
                        retained: t.retained,
                    }
                })
                .collect();
            rates.sort_by(|a, b| {
                b.rate
                    .total_cmp(&a.rate)
                    .then(b.subscribers.cmp(&a.subscribers))
                    .then(a.topic.cmp(&b.topic))
            });
            w.topic_seqs = seqs;
            w.topic_at = Some(now);
            w.topics = rates;
        }
    }

    /// Per-topic rates from the last pass (every topic, busiest first).
    pub fn topic_rates(&self) -> Vec<TopicRate> {
        self.window.lock().topics.clone()
    }

    fn derived(&self, shared: &Shared) -> Value {
        let w = self.window.lock();
        let newest = w.samples.back();
        let back = |n: usize| -> Option<&Sample> {
            let len = w.samples.len();
            (len >= 2).then(|| &w.samples[len.saturating_sub(n + 1)])
        };
        let rate = |n: usize, f: fn(&Sample) -> u64| -> Value {
            match (newest, back(n)) {
                (Some(a), Some(b)) if a.at > b.at => {
                    let secs = a.at.duration_since(b.at).as_secs_f64();
                    json!(round1(f(a).saturating_sub(f(b)) as f64 / secs))
                }
                _ => json!(0.0),
            }
        };
        let m = &shared.metrics;
        let quantiles = |h: &crate::metrics::Histo, f: fn(&Sample) -> &HistoSnapshot| -> Value {
            let (Some(a), Some(b)) = (newest, back(10)) else {
                return json!({"p50": null, "p99": null});
            };
            let d = f(a).since(f(b));
            let q = |q: f64| h.quantile(&d, q).map(|us| round3(us / 1000.0));
            json!({"p50": q(0.5), "p99": q(0.99)})
        };
        let closes: serde_json::Map<String, Value> = match (newest, back(60)) {
            (Some(a), Some(b)) => a
                .closes
                .iter()
                .zip(&b.closes)
                .filter(|((_, x), (_, y))| x > y)
                .map(|((code, x), (_, y))| (code.clone(), json!(x - y)))
                .collect(),
            _ => serde_json::Map::new(),
        };
        json!({
            "rates": {
                "in": {"1s": rate(1, |s| s.published), "10s": rate(10, |s| s.published), "60s": rate(60, |s| s.published)},
                "out": {"1s": rate(1, |s| s.delivered), "10s": rate(10, |s| s.delivered), "60s": rate(60, |s| s.delivered)},
            },
            "lag_ms": quantiles(&m.delivery_lag, |s| &s.lag),
            "ping_rtt_ms": quantiles(&m.ping_rtt, |s| &s.rtt),
            "closes_last_minute": closes,
        })
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Messages published by clients (HTTP and WebSocket), not by the server.
fn user_publishes(shared: &Shared) -> u64 {
    shared.metrics.publishes(Source::Http) + shared.metrics.publishes(Source::Ws)
}

/// The `/api/stats` object: totals now, rates and quantiles from the sampler.
pub fn stats_json(shared: &Shared) -> Value {
    let hub = &shared.hub;
    let m = &shared.metrics;
    let h = hub.stats();
    let r = std::sync::atomic::Ordering::Relaxed;
    let (retained, retained_bytes) = hub.retained();
    let mut v = json!({
        "ts": now_micros(),
        "node": shared.node,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": round1(shared.started.elapsed().as_secs_f64()),
        "connections": shared.active_connections(),
        "subscriptions": hub.subscription_count(),
        "topics": hub.topic_count(),
        "published": user_publishes(shared),
        "published_http": m.publishes(Source::Http),
        "published_ws": m.publishes(Source::Ws),
        "delivered": m.delivered(),
        "enqueued": h.enqueued.load(r),
        "frames_in": m.frames_in(),
        "frames_out": m.frames_out(),
        "bytes_out": m.bytes_out(),
        "history_messages": retained,
        "history_bytes": retained_bytes,
        "dropped": {
            "conflated": h.dropped_conflated.load(r),
            "queue_full": h.dropped_queue_full.load(r),
            "slow_consumer_close": h.dropped_slow_consumer.load(r),
            "connection_closed": h.dropped_connection_closed.load(r),
        },
        "slow_consumer_disconnects": h.slow_consumer_disconnects.load(r),
        "pong_timeouts": m.pong_timeouts(),
        "hibernations": m.hibernations(),
        "protocol_errors": m.frame_errors_total(),
        "accepted": m.accepted_ws(),
        "rejected": m.rejected_total(),
    });
    if let (Value::Object(o), Value::Object(d)) = (&mut v, shared.live.derived(shared)) {
        o.extend(d);
    }
    v
}

/// One row of the connection table (admin API and dashboard).
pub fn conn_json(c: &crate::state::ConnInfo) -> Value {
    let r = std::sync::atomic::Ordering::Relaxed;
    let rtt = c.ping_rtt_us.load(r);
    json!({
        "id": c.id().to_string(),
        "remote": c.peer.to_string(),
        "client_ip": c.client_ip.to_string(),
        "user_agent": c.user_agent.as_deref(),
        "subprotocol": c.codec.protocol(),
        "subscriptions": c.subscriptions.load(r),
        "queue_depth": c.outbox.depth().0,
        "ping_rtt_ms": (rtt > 0).then(|| round3(rtt as f64 / 1000.0)),
        "connected_since": rfc3339(c.connected_at_us),
        "messages_in": c.messages_in.load(r),
        "messages_out": c.outbox.sent_frames.load(r),
        "bytes_in": c.bytes_in.load(r),
        "bytes_out": c.bytes_out.load(r),
    })
}

/// One row of the topic table.
pub fn topic_json(t: &TopicRate) -> Value {
    json!({
        "topic": &*t.topic,
        "subscribers": t.subscribers,
        "rate": round1(t.rate),
        "seq": t.seq,
        "epoch": &*t.epoch,
        "retained": t.retained,
    })
}

/// The `$sys/stats` payload: `/api/stats` plus the busiest topics and the
/// connection table (admin only, so it may name addresses and topics).
pub fn sys_stats_json(shared: &Shared) -> Value {
    let mut v = stats_json(shared);
    let topics: Vec<Value> = shared
        .live
        .topic_rates()
        .iter()
        .filter(|t| !t.topic.starts_with('$'))
        .take(TOPIC_ROWS)
        .map(topic_json)
        .collect();
    let conns: Vec<Value> = shared
        .connections()
        .iter()
        .take(CONN_ROWS)
        .map(|c| conn_json(c))
        .collect();
    if let Value::Object(o) = &mut v {
        o.insert("top_topics".into(), Value::Array(topics));
        o.insert("conns".into(), Value::Array(conns));
    }
    v
}

/// Formats µs since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn rfc3339(us: u64) -> String {
    let secs = us / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (proleptic Gregorian), valid for any date after 1970.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Runs the sampler until the server stops: one sample a second, and a
/// `$sys/stats` message when someone listens.
pub async fn run_sampler(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        shared.live.sample(&shared);
        let (_, _, queued_bytes) = shared.queue_depths();
        let over = queued_bytes > shared.config.limits.max_queued_bytes_total;
        if over
            != shared
                .over_budget
                .swap(over, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                queued_bytes,
                budget = shared.config.limits.max_queued_bytes_total,
                over,
                "queued bytes crossed limits.max_queued_bytes_total"
            );
        }
        if shared.hub.has_subscribers(SYS_STATS_TOPIC) {
            let body = Bytes::from(sys_stats_json(&shared).to_string());
            let len = body.len();
            if shared.hub.publish(SYS_STATS_TOPIC, body).is_ok() {
                shared.metrics.published(Source::System, len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            super::rfc3339(1_732_400_000_123_456),
            "2024-11-23T22:13:20Z"
        );
        assert_eq!(super::rfc3339(951_782_400_000_000), "2000-02-29T00:00:00Z");
    }
}
