//! The publish/subscribe engine behind the `fanout` and `throughput`
//! scenarios.
//!
//! A run has four phases, each bounded in time:
//! 1. **connect** — one task per subscriber (never one thread), at most
//!    `--concurrency` handshakes in flight, each bounded by
//!    `--connect-timeout`; every subscriber subscribes to topic
//!    `index % topics`.
//! 2. **warm-up** — publishers start; messages sent before the measured
//!    window count for sequence checks but not for lag or delivery counts.
//! 3. **measure** — `--duration` of publishing, paced ([`Pacing::Rate`], a
//!    deadline schedule that bursts to catch up when late) or as fast as the
//!    server accepts ([`Pacing::Max`]).
//! 4. **drain** — wait (at most `--drain`) until every delivery owed for the
//!    measured window has arrived, then read the server's CPU time and stop.
//!
//! The measured window is decided by each message's own send time `t`, which
//! publisher and subscriber compare with the same `measure_start_ns`, so both
//! sides agree on which messages count. Subscribers record lag into a
//! [`ShardedHistogram`] and keep their own sequence checkers.
//!
//! The subscriber receive path is what limits the bench in the throughput
//! scenario, so it is kept cheap per frame:
//! - a subscriber waits in a `select!` (stop, hard deadline, keepalive,
//!   next frame) only when its socket has nothing ready; frames that are
//!   ready are handled back to back, at most [`DRAIN_BUDGET`] of them before
//!   the `select!` is visited again, so stop, deadline and keepalive are
//!   still honoured within that many frames;
//! - the receive time lag is measured against comes from a [`RecvClock`]:
//!   a wall-clock reading taken after every wait and reused for at most
//!   [`CLOCK_REFRESH_FRAMES`](crate::payload::CLOCK_REFRESH_FRAMES) frames,
//!   never for a message sent after it;
//! - measured deliveries are added to the shared counters and to the lag
//!   histogram once per batch of frames (and always before the subscriber
//!   waits again), not one atomic and one lock per frame.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, timeout_at, Instant};
use tokio_websockets::Message;

use crate::common::{error_chain, keepalive_tick, wall_ns_at, ErrorSamples};
use crate::deflate::{AnyWs, DeflateSummary, DeflateWs, WireTally};
use crate::payload::{build_data, now_ns, RecvClock};
use crate::probe::{self_cpu_seconds, ServerProbe};
use crate::progress::Progress;
use crate::stats::{expected_deliveries, SeqCounts, SeqTracker, ShardedHistogram};
use crate::wire::{decode, pong_frame, Incoming, Proto, Session, Target};

/// Number of lag histogram shards (see [`ShardedHistogram`]).
const LAG_SHARDS: usize = 16;
/// How long a publisher waits for outstanding acks after its last publish.
const ACK_GRACE: Duration = Duration::from_secs(2);
/// How long a closing connection waits for the server's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How often the orchestrator refreshes progress and checks the drain.
const POLL: Duration = Duration::from_millis(50);
/// A maximum-rate NATS publisher sends a `PING` after this many `PUB`s; the
/// `PONG` confirms them all (NATS handles a connection's input in order).
pub(crate) const NATS_PING_EVERY: usize = 64;
/// Frames a maximum-rate publisher queues before it flushes.
const MAX_RATE_FLUSH_EVERY: u32 = 64;
/// Frames a subscriber handles back to back, while they are ready, before
/// it looks at stop, hard deadline and keepalive again.
const DRAIN_BUDGET: usize = 256;
/// Measured deliveries a subscriber buffers before recording them (it also
/// records whatever it has before it waits).
const LAG_BATCH: usize = 256;

/// How publishers pace themselves.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pacing {
    /// This many messages per second per publisher.
    Rate(f64),
    /// As fast as the server accepts: at most `window` publishes per
    /// connection are unconfirmed — awaiting their `ok` (pulsegate), their
    /// own echo (broadcast), or the `PONG` to a `PING` sent after every
    /// [`NATS_PING_EVERY`] publishes (NATS). Without such a window a server
    /// that buffers without bound (Node `ws`) would accept everything and
    /// deliver the measured window long after it closed.
    Max { window: usize },
}

/// Everything a run needs to know.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub proto: Proto,
    pub subscribers: usize,
    pub publishers: usize,
    pub topics: usize,
    pub payload: usize,
    pub pacing: Pacing,
    pub warmup: Duration,
    pub duration: Duration,
    pub drain: Duration,
    pub concurrency: usize,
    pub connect_timeout: Duration,
    pub quiet: bool,
    /// Where subscriber `i` connects: `sub_targets[i % len]`; empty means
    /// the publishers' target (one node). Several nodes of a cluster make
    /// every delivery cross the backplane.
    pub sub_targets: Vec<Arc<Target>>,
    /// Subscribers connect with [`DeflateWs`], offering permessage-deflate
    /// (publishers keep tokio-websockets).
    pub deflate: bool,
}

/// Delivery correctness, shared by the fanout and throughput reports.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DeliveryCheck {
    /// Messages published in the measured window × subscribers of their topic.
    pub deliveries_expected: u64,
    /// Deliveries of measured-window messages that arrived.
    pub deliveries_received: u64,
    /// Sequence gaps never filled (whole run, warm-up included).
    pub lost: u64,
    /// Messages delivered twice to the same subscriber.
    pub duplicated: u64,
    /// Messages that arrived after a later one.
    pub out_of_order: u64,
    /// `deliveries_expected − deliveries_received` when positive: includes
    /// tail loss that sequence gaps cannot show and deliveries still in
    /// flight when the drain ended.
    pub undelivered: u64,
    /// Subscribers whose connection ended before the run did.
    pub subscriber_disconnects: u64,
    /// Times a pulsegate server announced a new epoch to a subscriber.
    pub epoch_changes: u64,
    /// Deliveries that were not bench messages, or came from an unknown
    /// publisher, and frames that did not decode.
    pub foreign_frames: u64,
    /// `error` frames received by subscribers.
    pub subscriber_errors: u64,
}

/// What a run measured; scenario modules turn it into their report.
pub(crate) struct Outcome {
    pub subscribers_connected: u64,
    pub handshake_errors: u64,
    pub handshake_error_examples: Vec<String>,
    pub connect_phase: Duration,
    pub published_total: u64,
    pub published_measured: u64,
    pub publish_acks: u64,
    pub publish_errors: u64,
    pub publish_error_examples: Vec<String>,
    pub delivery: DeliveryCheck,
    pub lag_us: Histogram<u64>,
    /// From the start of the measured window to the later of the end of
    /// publishing and the last measured delivery.
    pub delivery_window: Duration,
    pub server_cpu_seconds: Option<f64>,
    pub bench_cpu_seconds: Option<f64>,
    pub server_probe: String,
    /// With [`Plan::deflate`]: what subscribers negotiated and received.
    pub deflate: Option<DeflateSummary>,
}

/// State every subscriber task shares with the orchestrator.
struct SubShared {
    /// Wall-clock start of the measured window; `u64::MAX` until known.
    measure_start_ns: AtomicU64,
    received_measured: AtomicU64,
    last_delivery_ns: AtomicU64,
    connected: AtomicU64,
    failed: AtomicU64,
    connected_per_topic: Vec<AtomicU64>,
    lag: ShardedHistogram,
    errors: ErrorSamples,
}

/// One subscriber's private counts, returned when its task ends.
#[derive(Default)]
struct SubStats {
    connected: bool,
    disconnected: bool,
    seq: SeqCounts,
    epoch_changes: u64,
    foreign: u64,
    errors: u64,
    /// With `--deflate`: whether the server accepted the extension, and what
    /// the connection received.
    wire: Option<(bool, WireTally)>,
}

/// One subscriber's measured deliveries not yet added to [`SubShared`].
struct DeliveryBatch {
    /// Shard key of the subscriber.
    key: usize,
    lag_us: Vec<u64>,
    received: u64,
    last_ns: u64,
}

impl DeliveryBatch {
    fn new(key: usize) -> Self {
        Self {
            key,
            lag_us: Vec::new(),
            received: 0,
            last_ns: 0,
        }
    }

    /// One measured delivery, received at `recv_ns` after `lag_us`.
    fn push(&mut self, shared: &SubShared, recv_ns: u64, lag_us: u64) {
        self.lag_us.push(lag_us);
        self.received += 1;
        self.last_ns = self.last_ns.max(recv_ns);
        if self.lag_us.len() >= LAG_BATCH {
            self.flush(shared);
        }
    }

    /// Adds what is buffered to the shared histogram and counters.
    fn flush(&mut self, shared: &SubShared) {
        if self.received == 0 {
            return;
        }
        shared.lag.record_many(self.key, &self.lag_us);
        shared.last_delivery_ns.fetch_max(self.last_ns, Relaxed);
        shared.received_measured.fetch_add(self.received, Relaxed);
        self.lag_us.clear();
        self.received = 0;
    }
}

impl DeliveryCheck {
    /// Adds one subscriber's counts.
    fn add(&mut self, s: &SubStats) {
        self.lost += s.seq.lost;
        self.duplicated += s.seq.duplicated;
        self.out_of_order += s.seq.out_of_order;
        self.subscriber_disconnects += u64::from(s.connected && s.disconnected);
        self.epoch_changes += s.epoch_changes;
        self.foreign_frames += s.foreign;
        self.subscriber_errors += s.errors;
    }
}

/// One publisher's counts.
#[derive(Default)]
struct PubStats {
    published_total: u64,
    measured_per_topic: Vec<u64>,
    acks: u64,
    errors: u64,
    failure: Option<String>,
}

/// All publishers' counts added up.
struct PubTotals {
    published_total: u64,
    measured_per_topic: Vec<u64>,
    acks: u64,
    /// Error replies plus publishers that failed.
    errors: u64,
    failures: Vec<String>,
}

impl PubStats {
    fn sum(all: &[PubStats], topics: usize) -> PubTotals {
        let failures = ErrorSamples::default();
        let mut t = PubTotals {
            published_total: 0,
            measured_per_topic: vec![0; topics],
            acks: 0,
            errors: 0,
            failures: Vec::new(),
        };
        for s in all {
            t.published_total += s.published_total;
            t.acks += s.acks;
            t.errors += s.errors;
            for (m, x) in t.measured_per_topic.iter_mut().zip(&s.measured_per_topic) {
                *m += x;
            }
            if let Some(f) = &s.failure {
                t.errors += 1;
                failures.note(f.clone());
            }
        }
        t.failures = failures.take();
        t
    }
}

/// Connects every publisher (greeting included), failing on the first that
/// cannot: a run with fewer publishers than asked would measure something else.
async fn connect_publishers(target: &Target, plan: &Plan) -> anyhow::Result<Vec<Session>> {
    let mut sessions = Vec::with_capacity(plan.publishers);
    for j in 0..plan.publishers {
        match timeout(plan.connect_timeout, Session::establish(target, plan.proto)).await {
            Ok(Ok(s)) => sessions.push(s),
            Ok(Err(e)) => bail!("publisher {j} could not connect: {}", error_chain(&e)),
            Err(_) => bail!(
                "publisher {j} did not connect within {:?}",
                plan.connect_timeout
            ),
        }
    }
    Ok(sessions)
}

/// Runs the plan against `target`, reading server CPU through `probe`.
pub(crate) async fn run(
    target: Arc<Target>,
    plan: Plan,
    probe: ServerProbe,
) -> anyhow::Result<Outcome> {
    let plan = Arc::new(plan);
    let topics = if plan.proto.has_topics() {
        plan.topics.max(1)
    } else {
        1
    };
    let topic_names: Arc<Vec<String>> =
        Arc::new((0..topics).map(|i| plan.proto.topic_name(i)).collect());
    let shared = Arc::new(SubShared {
        measure_start_ns: AtomicU64::new(u64::MAX),
        received_measured: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        connected: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        connected_per_topic: (0..topics).map(|_| AtomicU64::new(0)).collect(),
        lag: ShardedHistogram::new(LAG_SHARDS),
        errors: ErrorSamples::default(),
    });

    // Phase 1: subscribers. Their hard deadline covers every later phase.
    let batches = plan.subscribers.div_ceil(plan.concurrency.max(1)) as u32;
    let connect_budget = plan.connect_timeout * batches.max(1) + Duration::from_secs(1);
    let connect_started = Instant::now();
    let hard_deadline = connect_started
        + connect_budget
        + plan.connect_timeout * 2
        + plan.warmup
        + plan.duration
        + plan.drain
        + Duration::from_secs(30);
    let (stop_tx, stop_rx) = watch::channel(false);
    let sem = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let mut subs = JoinSet::new();
    for idx in 0..plan.subscribers {
        let sub_target = match plan.sub_targets.len() {
            0 => Arc::clone(&target),
            n => Arc::clone(&plan.sub_targets[idx % n]),
        };
        subs.spawn(subscriber(
            idx,
            idx % topics,
            sub_target,
            Arc::clone(&plan),
            Arc::clone(&topic_names),
            Arc::clone(&shared),
            Arc::clone(&sem),
            stop_rx.clone(),
            hard_deadline,
        ));
    }
    let mut progress = Progress::new("subscribers", plan.subscribers as u64, plan.quiet);
    let connect_deadline = connect_started + connect_budget;
    loop {
        let ok = shared.connected.load(Relaxed);
        let failed = shared.failed.load(Relaxed);
        progress.update(ok + failed, || format!("connected {ok}, failed {failed}"));
        if ok + failed >= plan.subscribers as u64 || Instant::now() >= connect_deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let connect_phase = connect_started.elapsed();
    let subscribers_connected = shared.connected.load(Relaxed);
    let handshake_errors = plan.subscribers as u64 - subscribers_connected;
    progress.finish(&format!(
        "{subscribers_connected} connected, {handshake_errors} failed in {:.2}s",
        connect_phase.as_secs_f64()
    ));
    if subscribers_connected == 0 && plan.subscribers > 0 {
        let _ = stop_tx.send(true);
        bail!(
            "no subscriber could connect to {}: {}",
            target.url,
            shared.errors.take().join("; ")
        );
    }

    // Phase 2: publishers connect, then start on a shared schedule.
    let pub_sessions = match connect_publishers(&target, &plan).await {
        Ok(p) => p,
        Err(e) => {
            let _ = stop_tx.send(true);
            return Err(e);
        }
    };
    let start = Instant::now() + Duration::from_millis(50);
    let measure_start = start + plan.warmup;
    let end = measure_start + plan.duration;
    let measure_start_ns = wall_ns_at(measure_start);
    shared.measure_start_ns.store(measure_start_ns, Relaxed);
    let mut pub_tasks = JoinSet::new();
    for (j, session) in pub_sessions.into_iter().enumerate() {
        pub_tasks.spawn(publisher(
            j,
            session,
            Arc::clone(&plan),
            Arc::clone(&topic_names),
            start,
            end,
            measure_start_ns,
        ));
    }

    // Phases 2-3: progress while publishers run; CPU readings at the edges.
    let total_ms = (end - start).as_millis() as u64;
    let mut progress = Progress::new("publishing", total_ms / 1000, plan.quiet);
    let mut cpu_start = None;
    let mut bench_cpu_start = None;
    loop {
        let now = Instant::now();
        if cpu_start.is_none() && now >= measure_start {
            cpu_start = Some(probe.cpu_seconds().await);
            bench_cpu_start = Some(self_cpu_seconds());
        }
        if now >= end {
            break;
        }
        let phase = if now < measure_start {
            "warm-up"
        } else {
            "measuring"
        };
        let received = shared.received_measured.load(Relaxed);
        progress.update((now - start).as_millis() as u64 / 1000, || {
            format!("s ({phase}), {received} measured deliveries")
        });
        let next = (now + Duration::from_millis(250)).min(if cpu_start.is_none() {
            measure_start
        } else {
            end
        });
        sleep_until(next).await;
    }
    progress.finish(&format!(
        "{} measured deliveries so far",
        shared.received_measured.load(Relaxed)
    ));
    let pub_deadline = end + ACK_GRACE + CLOSE_GRACE + Duration::from_secs(2);
    let mut pub_stats = Vec::with_capacity(plan.publishers);
    while let Ok(Some(res)) = timeout_at(pub_deadline, pub_tasks.join_next()).await {
        if let Ok(s) = res {
            pub_stats.push(s);
        }
    }
    pub_tasks.abort_all();
    let pubs = PubStats::sum(&pub_stats, topics);
    let subs_per_topic: Vec<u64> = shared
        .connected_per_topic
        .iter()
        .map(|c| c.load(Relaxed))
        .collect();
    let expected = expected_deliveries(&pubs.measured_per_topic, &subs_per_topic);

    // Phase 4: drain.
    let drain_deadline = Instant::now() + plan.drain;
    let mut progress = Progress::new("draining", expected, plan.quiet);
    loop {
        let got = shared.received_measured.load(Relaxed);
        progress.update(got, || "deliveries".to_owned());
        if got >= expected || Instant::now() >= drain_deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let server_cpu_end = probe.cpu_seconds().await;
    let bench_cpu_end = self_cpu_seconds();
    let received = shared.received_measured.load(Relaxed);
    progress.finish(&format!("{received}/{expected} deliveries"));

    let _ = stop_tx.send(true);
    let mut delivery = DeliveryCheck::default();
    let mut deflate = plan.deflate.then(DeflateSummary::default);
    let join_deadline = Instant::now() + CLOSE_GRACE + Duration::from_secs(5);
    while let Ok(Some(res)) = timeout_at(join_deadline, subs.join_next()).await {
        if let Ok(s) = res {
            delivery.add(&s);
            if let (Some(d), Some((negotiated, tally))) = (&mut deflate, &s.wire) {
                d.add(*negotiated, tally);
            }
        }
    }
    subs.abort_all();
    delivery.deliveries_expected = expected;
    delivery.deliveries_received = received;
    delivery.undelivered = expected.saturating_sub(received);

    let last_ns = shared.last_delivery_ns.load(Relaxed);
    let delivery_window = Duration::from_nanos(
        last_ns
            .saturating_sub(measure_start_ns)
            .max(plan.duration.as_nanos() as u64),
    );
    let diff = |a: Option<Option<f64>>, b: Option<f64>| match (a.flatten(), b) {
        (Some(a), Some(b)) => Some((b - a).max(0.0)),
        _ => None,
    };
    Ok(Outcome {
        subscribers_connected,
        handshake_errors,
        handshake_error_examples: shared.errors.take(),
        connect_phase,
        published_total: pubs.published_total,
        published_measured: pubs.measured_per_topic.iter().sum(),
        publish_acks: pubs.acks,
        publish_errors: pubs.errors,
        publish_error_examples: pubs.failures,
        delivery,
        lag_us: shared.lag.merged(),
        delivery_window,
        server_cpu_seconds: diff(cpu_start, server_cpu_end),
        bench_cpu_seconds: diff(bench_cpu_start, bench_cpu_end),
        server_probe: probe.describe(),
        deflate,
    })
}

/// One subscriber: connect and subscribe, then check every delivery until
/// told to stop (or the hard deadline passes).
#[allow(clippy::too_many_arguments)]
async fn subscriber(
    idx: usize,
    topic: usize,
    target: Arc<Target>,
    plan: Arc<Plan>,
    topic_names: Arc<Vec<String>>,
    shared: Arc<SubShared>,
    sem: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    hard_deadline: Instant,
) -> SubStats {
    let mut stats = SubStats::default();
    let setup = async {
        let ws = if plan.deflate {
            AnyWs::Deflate(Box::new(DeflateWs::connect(&target, true).await?))
        } else {
            AnyWs::Plain(Box::new(target.open().await?))
        };
        let mut s = Session::greet(ws, plan.proto).await?;
        s.subscribe(&topic_names[topic]).await?;
        anyhow::Ok(s)
    };
    let mut session = {
        let Ok(_permit) = sem.acquire().await else {
            return stats;
        };
        match timeout(plan.connect_timeout, setup).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                shared.errors.note(error_chain(&e));
                shared.failed.fetch_add(1, Relaxed);
                return stats;
            }
            Err(_) => {
                shared
                    .errors
                    .note(format!("setup timed out after {:?}", plan.connect_timeout));
                shared.failed.fetch_add(1, Relaxed);
                return stats;
            }
        }
    };
    stats.connected = true;
    shared.connected_per_topic[topic].fetch_add(1, Relaxed);
    shared.connected.fetch_add(1, Relaxed);

    let proto = plan.proto;
    let mut trackers = vec![
        SeqTracker::default();
        if proto.has_server_seq() {
            1
        } else {
            plan.publishers.max(1)
        }
    ];
    let mut epoch: Option<String> = None;
    let mut pongs: Vec<Option<u64>> = Vec::new();
    let mut keepalive = session.ping_interval.map(|p| {
        let mut iv = tokio::time::interval_at(Instant::now() + p, p);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        iv
    });
    let stopped = stop.changed();
    tokio::pin!(stopped);
    let hard = sleep_until(hard_deadline);
    tokio::pin!(hard);
    let mut clock = RecvClock::new(now_ns);
    let mut batch = DeliveryBatch::new(idx);
    'conn: loop {
        // Wait: for a frame, or for whatever else needs doing.
        let mut next = tokio::select! {
            biased;
            _ = &mut stopped => break,
            _ = &mut hard => break,
            _ = keepalive_tick(&mut keepalive) => {
                if let Some(f) = session.keepalive_frame() {
                    if session.ws.send(f).await.is_err() {
                        stats.disconnected = true;
                        break;
                    }
                }
                continue;
            }
            m = session.ws.next() => m,
        };
        // This frame may have been waited for: it gets a new clock reading.
        clock.expire();
        // Then every frame that is ready without waiting, up to the budget.
        let mut handled = 0;
        loop {
            let msg = match next {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => {
                    shared.errors.note(format!("subscriber read: {e}"));
                    stats.disconnected = true;
                    break 'conn;
                }
                None => {
                    stats.disconnected = true;
                    break 'conn;
                }
            };
            clock.next_frame();
            let measure_start = shared.measure_start_ns.load(Relaxed);
            let res = decode(proto, &mut session.nats, &msg, |inc| match inc {
                Incoming::Delivery {
                    seq,
                    epoch: ep,
                    data,
                } => {
                    if let Some(seq) = seq {
                        if let Some(ep) = ep {
                            if epoch.as_deref() != Some(ep) {
                                if epoch.is_some() {
                                    stats.epoch_changes += 1;
                                    trackers[0].reset();
                                }
                                epoch = Some(ep.to_owned());
                            }
                        }
                        trackers[0].observe(seq);
                    }
                    let Some(d) = data else {
                        stats.foreign += 1;
                        return;
                    };
                    if seq.is_none() {
                        match trackers.get_mut(d.w as usize) {
                            Some(t) => t.observe(d.n),
                            None => {
                                stats.foreign += 1;
                                return;
                            }
                        }
                    }
                    if d.t >= measure_start {
                        let recv_ns = clock.recv_ns(d.t);
                        batch.push(&shared, recv_ns, recv_ns.saturating_sub(d.t) / 1000);
                    }
                }
                Incoming::ServerPing { id } => pongs.push(id),
                Incoming::Error { .. } => stats.errors += 1,
                _ => {}
            });
            if let Err(e) = res {
                stats.foreign += 1;
                if proto == Proto::Nats {
                    // The byte stream is out of sync; nothing after this parses.
                    shared
                        .errors
                        .note(format!("subscriber: {}", error_chain(&e)));
                    stats.disconnected = true;
                    break 'conn;
                }
            }
            if !pongs.is_empty() {
                for id in pongs.drain(..) {
                    if let Some(p) = pong_frame(proto, id) {
                        let _ = session.ws.send(p).await;
                    }
                }
                // The sends may have waited.
                clock.expire();
            }
            handled += 1;
            if handled >= DRAIN_BUDGET {
                break;
            }
            match session.ws.next().now_or_never() {
                Some(m) => next = m,
                None => break,
            }
        }
        batch.flush(&shared);
    }
    batch.flush(&shared);
    for t in &trackers {
        stats.seq += t.counts();
    }
    if let AnyWs::Deflate(d) = &session.ws {
        stats.wire = Some((d.negotiated().is_some(), d.tally()));
    }
    if !stats.disconnected {
        session.close(CLOSE_GRACE).await;
    }
    stats
}

/// One publisher: publishes on its schedule until `end`, reading acks (and
/// echoes, on a broadcast server) on a separate task so the server never
/// blocks writing to it. Acks are pulsegate `ok`s and, on a broadcast
/// server, the publisher's own messages coming back.
async fn publisher(
    j: usize,
    session: Session,
    plan: Arc<Plan>,
    topic_names: Arc<Vec<String>>,
    start: Instant,
    end: Instant,
    measure_start_ns: u64,
) -> PubStats {
    let proto = session.proto;
    let topics = topic_names.len();
    let use_ids = proto == Proto::Pulsegate;
    let window = match plan.pacing {
        Pacing::Max { window } => Some(Arc::new(Semaphore::new(match proto {
            Proto::Nats => window.max(NATS_PING_EVERY),
            _ => window.max(1),
        }))),
        Pacing::Rate(_) => None,
    };
    let acks = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let (pong_tx, mut pong_rx) = mpsc::channel::<Message>(16);
    let (reader_stop_tx, mut reader_stop) = watch::channel(false);
    let (mut sink, mut stream, mut nats) = {
        let Session { ws, nats, .. } = session;
        let (sink, stream) = ws.split();
        (sink, stream, nats)
    };
    let reader = {
        let (acks, errors, window) = (Arc::clone(&acks), Arc::clone(&errors), window.clone());
        let reader_deadline = end + ACK_GRACE + CLOSE_GRACE;
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = reader_stop.changed() => break,
                    _ = sleep_until(reader_deadline) => break,
                    m = stream.next() => match m {
                        Some(Ok(m)) => m,
                        _ => break,
                    },
                };
                let _ = decode(proto, &mut nats, &msg, |inc| match inc {
                    Incoming::Ok { id: Some(_) } => {
                        acks.fetch_add(1, Relaxed);
                        if let Some(w) = &window {
                            w.add_permits(1);
                        }
                    }
                    Incoming::Error { id, .. } => {
                        errors.fetch_add(1, Relaxed);
                        if let (Some(w), Some(_)) = (&window, id) {
                            w.add_permits(1);
                        }
                    }
                    Incoming::ServerPing { id } => {
                        if let Some(p) = pong_frame(proto, id) {
                            let _ = pong_tx.try_send(p);
                        }
                    }
                    Incoming::Pong => {
                        if let Some(w) = &window {
                            w.add_permits(NATS_PING_EVERY);
                        }
                    }
                    Incoming::Delivery {
                        data: Some(d),
                        seq: None,
                        ..
                    } if proto == Proto::Broadcast && d.w as usize == j => {
                        acks.fetch_add(1, Relaxed);
                        if let Some(w) = &window {
                            w.add_permits(1);
                        }
                    }
                    _ => {}
                });
            }
            stream
        })
    };

    let mut stats = PubStats {
        measured_per_topic: vec![0; topics],
        ..Default::default()
    };
    let mut counters = vec![0u64; topics];
    let publishers = plan.publishers.max(1);
    let mut next_frame = |k: u64, stats: &mut PubStats| {
        let ti = (j + k as usize) % topics;
        let n = counters[ti];
        counters[ti] += 1;
        let t = now_ns();
        let data = build_data(t, j as u32, n, plan.payload);
        let frame = proto.publish_frame(&topic_names[ti], use_ids.then_some(k + 1), &data);
        stats.published_total += 1;
        if t >= measure_start_ns {
            stats.measured_per_topic[ti] += 1;
        }
        frame
    };
    let result: Result<(), tokio_websockets::Error> = async {
        match plan.pacing {
            Pacing::Rate(rate) => {
                let period = Duration::from_secs_f64(1.0 / rate);
                // Publishers are staggered across one period, not in lockstep.
                let offset = period.mul_f64(j as f64 / publishers as f64);
                let max_msgs = ((end - start).as_secs_f64() * rate).ceil() as u64 + 1;
                for k in 0..max_msgs {
                    let due = start + offset + period.mul_f64(k as f64);
                    if due >= end {
                        break;
                    }
                    sleep_until(due).await;
                    while let Ok(p) = pong_rx.try_recv() {
                        sink.feed(p).await?;
                    }
                    let frame = next_frame(k, &mut stats);
                    sink.send(frame).await?;
                }
            }
            Pacing::Max { .. } => {
                sleep_until(start).await;
                let mut unflushed = 0u32;
                let mut k = 0u64;
                while Instant::now() < end {
                    if let Some(w) = &window {
                        match w.try_acquire() {
                            Ok(p) => p.forget(),
                            Err(_) => {
                                sink.flush().await?;
                                unflushed = 0;
                                match timeout_at(end, w.acquire()).await {
                                    Ok(Ok(p)) => p.forget(),
                                    _ => break,
                                }
                            }
                        }
                    }
                    while let Ok(p) = pong_rx.try_recv() {
                        sink.feed(p).await?;
                    }
                    let frame = next_frame(k, &mut stats);
                    k += 1;
                    sink.feed(frame).await?;
                    if proto == Proto::Nats && k % NATS_PING_EVERY as u64 == 0 {
                        sink.feed(Message::binary(&b"PING\r\n"[..])).await?;
                    }
                    unflushed += 1;
                    if unflushed >= MAX_RATE_FLUSH_EVERY {
                        sink.flush().await?;
                        unflushed = 0;
                    }
                }
                sink.flush().await?;
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        stats.failure = Some(format!("publisher {j}: {e}"));
    }

    // Let the last acks (or echoes) arrive, then close cleanly.
    if use_ids || proto == Proto::Broadcast {
        let grace = Instant::now() + ACK_GRACE;
        while acks.load(Relaxed) + errors.load(Relaxed) < stats.published_total
            && Instant::now() < grace
            && !reader.is_finished()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let _ = reader_stop_tx.send(true);
    if let Ok(stream) = reader.await {
        if let Ok(ws) = sink.reunite(stream) {
            let _ = timeout(CLOSE_GRACE, async move {
                let mut ws = ws;
                ws.close().await
            })
            .await;
        }
    }
    stats.acks = acks.load(Relaxed);
    stats.errors = errors.load(Relaxed);
    stats
}
