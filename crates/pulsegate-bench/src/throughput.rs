//! `pulsegate bench throughput`: publish as fast as the server accepts over
//! P connections for `--duration`, with S subscribers, and report accepted
//! publishes/s and deliveries/s.
//!
//! "Accepts" means confirmed: each publisher keeps at most `--window`
//! publishes unconfirmed — awaiting their `ok` (pulsegate), their own echo
//! (a broadcast server sends every frame back to its sender too), or the
//! `PONG` to a `PING` sent after every 64 publishes (NATS handles a
//! connection's input in order). Without that, a server that buffers without
//! bound accepts everything at once and delivers the measured window long
//! after it closed.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::common::{defaults_of, validate_common, CommonArgs};
use crate::deflate::DeflateSummary;
use crate::fanout::{deflate_row, delivery_rows};
use crate::probe::{default_metrics_url, ServerProbe};
use crate::pubsub::{self, DeliveryCheck, Pacing, Plan};
use crate::report::{grouped, Table};
use crate::stats::{per_sec, ratio, round3, LatencySummary};
use crate::sys::{ensure_fd_room, raise_nofile_limit};
use crate::wire::{Proto, Target};

/// Flags of `pulsegate bench throughput`.
#[derive(clap::Args, Debug, Clone)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Subscriber connections.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,

    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,

    /// Size in bytes of each message's data object.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,

    /// Topics bench/0.. (NATS subjects bench.0..).
    #[arg(long, default_value_t = 1)]
    pub topics: usize,

    /// Unconfirmed publishes per connection: awaiting their `ok` (pulsegate),
    /// their own echo (broadcast), or a PONG (NATS; a PING follows every 64).
    #[arg(long, default_value_t = 256)]
    pub window: usize,

    /// Publishing before the measured window.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// Length of the measured window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// After publishing stops, how long to wait for deliveries still in flight.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain: Duration,

    /// Subscribers offer permessage-deflate (RFC 7692) and read frames with
    /// pulsegate-ws, which inflates compressed messages (tokio-websockets
    /// cannot); the report adds wire vs decoded bytes. ws:// only.
    #[arg(long)]
    pub deflate: bool,
}

impl Default for ThroughputArgs {
    fn default() -> Self {
        defaults_of()
    }
}

/// The result of a throughput run.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputReport {
    /// Always `"throughput"`.
    pub scenario: &'static str,
    /// Protocol spoken.
    pub proto: Proto,
    /// Server URL.
    pub url: String,
    /// Subscribers requested.
    pub subscribers: usize,
    /// Subscribers connected.
    pub subscribers_connected: u64,
    /// Subscribers that failed to connect.
    pub handshake_errors: u64,
    /// First distinct handshake errors.
    pub handshake_error_examples: Vec<String>,
    /// Publisher connections.
    pub publishers: usize,
    /// Data object size in bytes.
    pub payload_bytes: usize,
    /// Topics.
    pub topics: usize,
    /// Measured window in seconds.
    pub duration_seconds: f64,
    /// Messages published in the measured window.
    pub messages_published: u64,
    /// Publish `ok` replies (pulsegate) or own echoes (broadcast) received.
    pub publish_acks: u64,
    /// Publish errors.
    pub publish_errors: u64,
    /// First distinct publisher errors.
    pub publish_error_examples: Vec<String>,
    /// Measured publishes per second.
    pub publishes_per_sec: f64,
    /// Measured deliveries per second.
    pub deliveries_per_sec: f64,
    /// Delivery counts and correctness.
    #[serde(flatten)]
    pub delivery: DeliveryCheck,
    /// Lag under saturation, in milliseconds (mostly queueing).
    pub lag_ms: LatencySummary,
    /// Where server readings came from.
    pub server_probe: String,
    /// Server CPU seconds over the measured window and drain.
    pub server_cpu_seconds: Option<f64>,
    /// Measured deliveries per server CPU second.
    pub deliveries_per_server_cpu_second: Option<f64>,
    /// Bench CPU seconds over the same span.
    pub bench_cpu_seconds: Option<f64>,
    /// With `--deflate`: negotiation and wire vs decoded bytes; `null` without.
    pub deflate: Option<DeflateSummary>,
}

/// Runs the throughput scenario.
pub async fn throughput(args: &ThroughputArgs) -> anyhow::Result<ThroughputReport> {
    let c = &args.common;
    validate_common(c)?;
    anyhow::ensure!(args.publishers >= 1, "--publishers must be >= 1");
    anyhow::ensure!(args.topics >= 1, "--topics must be >= 1");
    anyhow::ensure!(args.window >= 1, "--window must be >= 1");
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
    let plan = Plan {
        proto: c.proto,
        subscribers: args.subscribers,
        publishers: args.publishers,
        topics: args.topics,
        payload: args.payload,
        pacing: Pacing::Max {
            window: args.window,
        },
        warmup: args.warmup,
        duration: args.duration,
        drain: args.drain,
        concurrency: c.concurrency as usize,
        connect_timeout: c.connect_timeout,
        quiet: c.quiet,
        sub_targets: Vec::new(),
        deflate: args.deflate,
    };
    let o = pubsub::run(target, plan, probe).await?;
    let received = o.delivery.deliveries_received;
    Ok(ThroughputReport {
        scenario: "throughput",
        proto: c.proto,
        url: c.url.clone(),
        subscribers: args.subscribers,
        subscribers_connected: o.subscribers_connected,
        handshake_errors: o.handshake_errors,
        handshake_error_examples: o.handshake_error_examples,
        publishers: args.publishers,
        payload_bytes: args.payload,
        topics: args.topics,
        duration_seconds: args.duration.as_secs_f64(),
        messages_published: o.published_measured,
        publish_acks: o.publish_acks,
        publish_errors: o.publish_errors,
        publish_error_examples: o.publish_error_examples,
        publishes_per_sec: round3(per_sec(o.published_measured, args.duration)),
        deliveries_per_sec: round3(per_sec(received, o.delivery_window)),
        delivery: o.delivery,
        lag_ms: LatencySummary::from_us(&o.lag_us),
        server_probe: o.server_probe,
        server_cpu_seconds: o.server_cpu_seconds.map(round3),
        deliveries_per_server_cpu_second: ratio(received, o.server_cpu_seconds).map(round3),
        bench_cpu_seconds: o.bench_cpu_seconds.map(round3),
        deflate: o.deflate,
    })
}

impl fmt::Display for ThroughputReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = Table::new(format!(
            "throughput  {} ({})  {} subs, {} pubs, {} B, {} topic(s), {}s",
            self.url,
            self.proto,
            self.subscribers,
            self.publishers,
            self.payload_bytes,
            self.topics,
            self.duration_seconds
        ));
        t.row(
            "subscribers",
            format!(
                "{} connected, {} handshake errors",
                self.subscribers_connected, self.handshake_errors
            ),
        )
        .examples("handshake error", &self.handshake_error_examples)
        .row(
            "published",
            format!(
                "{} measured, {} acks, {} errors",
                self.messages_published, self.publish_acks, self.publish_errors
            ),
        )
        .examples("publish error", &self.publish_error_examples)
        .row("publishes/s", grouped(self.publishes_per_sec))
        .row("deliveries/s", grouped(self.deliveries_per_sec));
        delivery_rows(&mut t, &self.delivery);
        deflate_row(&mut t, self.deflate.as_ref());
        t.latency("lag ms", &self.lag_ms)
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
