//! `pulsegate bench fanout`: publish→deliver lag and correctness at a paced
//! rate, S subscribers over T topics, P publishers at R msg/s each.
//!
//! Publisher `j` sends its k-th message to topic `(j + k) % T`, so each
//! topic receives `P·R/T` msg/s and each subscriber sees its topic's share.
//! See [`crate::pubsub`] for the phases and what counts as measured.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::common::{defaults_of, validate_common, CommonArgs};
use crate::deflate::DeflateSummary;
use crate::probe::{default_metrics_url, ServerProbe};
use crate::pubsub::{self, DeliveryCheck, Pacing, Plan};
use crate::report::{grouped, Table};
use crate::stats::{per_sec, ratio, round3, LatencySummary};
use crate::sys::{ensure_fd_room, raise_nofile_limit};
use crate::wire::{Proto, Target};

/// Flags of `pulsegate bench fanout`.
#[derive(clap::Args, Debug, Clone)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Subscriber connections (each subscribes to topic index % --topics).
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,

    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,

    /// Messages per second per publisher.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,

    /// Size in bytes of each message's data object (minimum ~45, its fields).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,

    /// Topics bench/0.. (NATS subjects bench.0..); broadcast servers have one.
    #[arg(long, default_value_t = 1)]
    pub topics: usize,

    /// Publishing before the measured window (not counted in lag or deliveries).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// Length of the measured window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Subscribers connect here instead of --url, round-robin (repeat the
    /// flag for several nodes of a cluster; publishers stay on --url), to
    /// measure cross-node delivery through the backplane.
    #[arg(long = "sub-url")]
    pub sub_urls: Vec<String>,

    /// After publishing stops, how long to wait for deliveries still in flight.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain: Duration,

    /// Subscribers offer permessage-deflate (RFC 7692) and read frames with
    /// pulsegate-ws, which inflates compressed messages (tokio-websockets
    /// cannot); the report adds wire vs decoded bytes. ws:// only.
    #[arg(long)]
    pub deflate: bool,
}

impl Default for FanoutArgs {
    fn default() -> Self {
        defaults_of()
    }
}

/// The result of a fanout run.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// Always `"fanout"`.
    pub scenario: &'static str,
    /// Protocol spoken.
    pub proto: Proto,
    /// Server URL.
    pub url: String,
    /// Subscribers requested.
    pub subscribers: usize,
    /// Subscribers that completed connect + subscribe.
    pub subscribers_connected: u64,
    /// Subscribers that did not.
    pub handshake_errors: u64,
    /// First distinct handshake error messages.
    pub handshake_error_examples: Vec<String>,
    /// Seconds the connect phase took.
    pub connect_seconds: f64,
    /// Publisher connections.
    pub publishers: usize,
    /// Messages per second per publisher.
    pub rate_per_publisher: f64,
    /// Data object size in bytes.
    pub payload_bytes: usize,
    /// Topics.
    pub topics: usize,
    /// Warm-up seconds.
    pub warmup_seconds: f64,
    /// Measured window in seconds.
    pub duration_seconds: f64,
    /// Messages published in the measured window.
    pub messages_published: u64,
    /// Messages published including warm-up.
    pub messages_published_total: u64,
    /// Publish `ok` replies (pulsegate) or own echoes (broadcast) received.
    pub publish_acks: u64,
    /// Publish `error` replies plus failed publisher connections.
    pub publish_errors: u64,
    /// First distinct publisher errors.
    pub publish_error_examples: Vec<String>,
    /// Delivery counts and correctness.
    #[serde(flatten)]
    pub delivery: DeliveryCheck,
    /// Publish→receive lag of measured messages, in milliseconds.
    pub lag_ms: LatencySummary,
    /// Measured deliveries per second (over the measured window, extended to
    /// the last measured delivery if the server fell behind).
    pub deliveries_per_sec: f64,
    /// Where server readings came from: `pid N`, a metrics URL, or `none`.
    pub server_probe: String,
    /// Server CPU seconds (user+system) from the start of the measured window
    /// to the end of the drain.
    pub server_cpu_seconds: Option<f64>,
    /// Measured deliveries per server CPU second.
    pub deliveries_per_server_cpu_second: Option<f64>,
    /// CPU seconds the bench itself used over the same span; near the window
    /// length means the load generator was saturated too.
    pub bench_cpu_seconds: Option<f64>,
    /// With `--deflate`: subscribers that negotiated permessage-deflate, and
    /// the bytes they read from the wire vs the decoded message bytes;
    /// `null` without the flag.
    pub deflate: Option<DeflateSummary>,
}

/// Runs the fanout scenario.
pub async fn fanout(args: &FanoutArgs) -> anyhow::Result<FanoutReport> {
    let c = &args.common;
    validate_common(c)?;
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite() && args.rate <= 1_000_000.0,
        "--rate must be between 0 and 1,000,000 messages per second per publisher, got {}",
        args.rate
    );
    anyhow::ensure!(args.publishers >= 1, "--publishers must be >= 1");
    anyhow::ensure!(args.topics >= 1, "--topics must be >= 1");
    anyhow::ensure!(!args.duration.is_zero(), "--duration must be > 0");
    anyhow::ensure!(
        c.proto.has_topics() || args.topics == 1,
        "--proto broadcast has a single implicit topic; use --topics 1"
    );
    let limit = raise_nofile_limit();
    ensure_fd_room((args.subscribers + args.publishers) as u64, limit)?;
    let target = Arc::new(Target::resolve(&c.url).await?);
    let metrics_url = c
        .metrics_url
        .clone()
        .or_else(|| default_metrics_url(&target.url))
        .unwrap_or_default();
    let probe = ServerProbe::detect(c.server_pid, &metrics_url).await;
    let mut sub_targets = Vec::new();
    for u in &args.sub_urls {
        sub_targets.push(Arc::new(Target::resolve(u).await?));
    }
    let plan = Plan {
        proto: c.proto,
        subscribers: args.subscribers,
        publishers: args.publishers,
        topics: args.topics,
        payload: args.payload,
        pacing: Pacing::Rate(args.rate),
        warmup: args.warmup,
        duration: args.duration,
        drain: args.drain,
        concurrency: c.concurrency as usize,
        connect_timeout: c.connect_timeout,
        quiet: c.quiet,
        sub_targets,
        deflate: args.deflate,
    };
    let o = pubsub::run(target, plan, probe).await?;
    let received = o.delivery.deliveries_received;
    Ok(FanoutReport {
        scenario: "fanout",
        proto: c.proto,
        url: c.url.clone(),
        subscribers: args.subscribers,
        subscribers_connected: o.subscribers_connected,
        handshake_errors: o.handshake_errors,
        handshake_error_examples: o.handshake_error_examples,
        connect_seconds: round3(o.connect_phase.as_secs_f64()),
        publishers: args.publishers,
        rate_per_publisher: args.rate,
        payload_bytes: args.payload,
        topics: args.topics,
        warmup_seconds: args.warmup.as_secs_f64(),
        duration_seconds: args.duration.as_secs_f64(),
        messages_published: o.published_measured,
        messages_published_total: o.published_total,
        publish_acks: o.publish_acks,
        publish_errors: o.publish_errors,
        publish_error_examples: o.publish_error_examples,
        delivery: o.delivery,
        lag_ms: LatencySummary::from_us(&o.lag_us),
        deliveries_per_sec: round3(per_sec(received, o.delivery_window)),
        server_probe: o.server_probe,
        server_cpu_seconds: o.server_cpu_seconds.map(round3),
        deliveries_per_server_cpu_second: ratio(received, o.server_cpu_seconds).map(round3),
        bench_cpu_seconds: o.bench_cpu_seconds.map(round3),
        deflate: o.deflate,
    })
}

impl fmt::Display for FanoutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = Table::new(format!(
            "fanout  {} ({})  {} subs, {} pub x {} msg/s, {} B, {} topic(s), {}s (+{}s warm-up)",
            self.url,
            self.proto,
            self.subscribers,
            self.publishers,
            self.rate_per_publisher,
            self.payload_bytes,
            self.topics,
            self.duration_seconds,
            self.warmup_seconds
        ));
        t.row(
            "subscribers",
            format!(
                "{} connected, {} handshake errors ({:.2}s)",
                self.subscribers_connected, self.handshake_errors, self.connect_seconds
            ),
        )
        .examples("handshake error", &self.handshake_error_examples)
        .row(
            "published",
            format!(
                "{} measured ({} total), {} acks, {} errors",
                self.messages_published,
                self.messages_published_total,
                self.publish_acks,
                self.publish_errors
            ),
        )
        .examples("publish error", &self.publish_error_examples);
        delivery_rows(&mut t, &self.delivery);
        deflate_row(&mut t, self.deflate.as_ref());
        t.latency("lag ms", &self.lag_ms)
            .row("deliveries/s", grouped(self.deliveries_per_sec))
            .row("server probe", &self.server_probe)
            .opt("server CPU s", self.server_cpu_seconds)
            .opt(
                "deliveries/CPU-s",
                self.deliveries_per_server_cpu_second.map(grouped),
            )
            .opt("bench CPU s", self.bench_cpu_seconds);
        write!(f, "{t}")
    }
}

/// The `--deflate` row shared with the throughput report.
pub(crate) fn deflate_row(t: &mut Table, d: Option<&DeflateSummary>) {
    if let Some(d) = d {
        t.row("deflate", d.row());
    }
}

/// The delivery-check rows shared with the throughput report.
pub(crate) fn delivery_rows(t: &mut Table, d: &DeliveryCheck) {
    t.row(
        "deliveries",
        format!(
            "{} received / {} expected ({} undelivered)",
            d.deliveries_received, d.deliveries_expected, d.undelivered
        ),
    )
    .row(
        "seq check",
        format!(
            "{} lost, {} duplicated, {} out of order",
            d.lost, d.duplicated, d.out_of_order
        ),
    );
    if d.subscriber_disconnects + d.epoch_changes + d.foreign_frames + d.subscriber_errors > 0 {
        t.row(
            "anomalies",
            format!(
                "{} subscriber disconnects, {} epoch changes, {} foreign frames, {} error frames",
                d.subscriber_disconnects, d.epoch_changes, d.foreign_frames, d.subscriber_errors
            ),
        );
    }
}
