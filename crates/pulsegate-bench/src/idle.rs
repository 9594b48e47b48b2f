//! `pulsegate bench idle`: how many handshakes per second the server takes,
//! and how much memory an idle connection costs it.
//!
//! N connections are opened with bounded concurrency (one task each), held
//! open for `--hold` while answering the server's pings and sending the
//! keepalives it asked for, then closed. Server RSS is read before the first
//! connect and at the end of the hold; the difference divided by the
//! connections held is the per-connection cost. It excludes the kernel's
//! socket buffers (≈4–5 KB per idle TCP socket), which are not in RSS.
//!
//! File descriptors: the bench holds N client sockets and the server N
//! accepted ones, each in its own process, so N = 10,000 fits the 20,000
//! per-process hard limit on both sides.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, timeout_at, Instant};

use crate::common::{
    defaults_of, error_chain, keepalive_tick, validate_common, CommonArgs, ErrorSamples,
};
use crate::probe::{default_metrics_url, ServerProbe};
use crate::progress::Progress;
use crate::report::{grouped, Table};
use crate::stats::{bytes_per_connection, new_lag_histogram, per_sec, round3, LatencySummary};
use crate::sys::{ensure_fd_room, raise_nofile_limit};
use crate::wire::{decode, pong_frame, Incoming, Proto, Session, Target};

/// How long a closing connection waits for the server's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Flags of `pulsegate bench idle`.
#[derive(clap::Args, Debug, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Connections to open and hold (each needs one file descriptor here).
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,

    /// How long to hold the connections open after the last one connected.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
}

impl Default for IdleArgs {
    fn default() -> Self {
        defaults_of()
    }
}

/// The result of an idle run.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// Always `"idle"`.
    pub scenario: &'static str,
    /// Protocol spoken.
    pub proto: Proto,
    /// Server URL.
    pub url: String,
    /// Connections requested.
    pub connections: usize,
    /// Connections that completed the handshake and greeting.
    pub connected: u64,
    /// Connections that did not.
    pub handshake_errors: u64,
    /// First distinct handshake errors.
    pub handshake_error_examples: Vec<String>,
    /// Seconds from the first connect to the last one finishing.
    pub connect_seconds: f64,
    /// Successful handshakes per second over the connect phase.
    pub handshakes_per_sec: f64,
    /// TCP connect + WebSocket upgrade, in milliseconds.
    pub handshake_ms: LatencySummary,
    /// Handshake plus the protocol greeting (welcome / NATS CONNECT+PONG).
    pub ready_ms: LatencySummary,
    /// Seconds the connections were held.
    pub hold_seconds: f64,
    /// Connections the server closed during the hold.
    pub dropped_during_hold: u64,
    /// Where server readings came from.
    pub server_probe: String,
    /// Server RSS before connecting.
    pub server_rss_before_bytes: Option<u64>,
    /// Server RSS at the end of the hold.
    pub server_rss_after_bytes: Option<u64>,
    /// Server RSS growth divided by connections held.
    pub bytes_per_connection: Option<f64>,
    /// Soft RLIMIT_NOFILE of the bench after raising it.
    pub nofile_limit: u64,
}

struct IdleShared {
    connected: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    /// Nanoseconds after the start at which the last setup finished.
    last_done_ns: AtomicU64,
    handshake_us: Mutex<Histogram<u64>>,
    ready_us: Mutex<Histogram<u64>>,
    errors: ErrorSamples,
}

/// Runs the idle scenario.
pub async fn idle(args: &IdleArgs) -> anyhow::Result<IdleReport> {
    let c = &args.common;
    validate_common(c)?;
    anyhow::ensure!(args.connections >= 1, "--connections must be >= 1");
    let limit = raise_nofile_limit();
    ensure_fd_room(args.connections as u64, limit)?;
    let target = Arc::new(Target::resolve(&c.url).await?);
    let metrics_url = c
        .metrics_url
        .clone()
        .or_else(|| default_metrics_url(&target.url))
        .unwrap_or_default();
    let probe = ServerProbe::detect(c.server_pid, &metrics_url).await;
    let rss_before = probe.rss_bytes().await;

    let shared = Arc::new(IdleShared {
        connected: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        last_done_ns: AtomicU64::new(0),
        handshake_us: Mutex::new(new_lag_histogram()),
        ready_us: Mutex::new(new_lag_histogram()),
        errors: ErrorSamples::default(),
    });
    let concurrency = c.concurrency as usize;
    let batches = args.connections.div_ceil(concurrency) as u32;
    let connect_budget = c.connect_timeout * batches.max(1) + Duration::from_secs(1);
    let start = Instant::now();
    let hard_deadline = start + connect_budget + args.hold + Duration::from_secs(30);
    let (stop_tx, stop_rx) = watch::channel(false);
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut conns = JoinSet::new();
    for _ in 0..args.connections {
        conns.spawn(idle_connection(
            Arc::clone(&target),
            c.proto,
            c.connect_timeout,
            Arc::clone(&sem),
            Arc::clone(&shared),
            stop_rx.clone(),
            start,
            hard_deadline,
        ));
    }
    let mut progress = Progress::new("connecting", args.connections as u64, c.quiet);
    loop {
        let ok = shared.connected.load(Relaxed);
        let failed = shared.failed.load(Relaxed);
        progress.update(ok + failed, || format!("connected {ok}, failed {failed}"));
        if ok + failed >= args.connections as u64 || Instant::now() >= start + connect_budget {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected = shared.connected.load(Relaxed);
    let connect_phase = Duration::from_nanos(shared.last_done_ns.load(Relaxed));
    progress.finish(&format!(
        "{connected} connected in {:.2}s",
        connect_phase.as_secs_f64()
    ));

    let hold_end = Instant::now() + args.hold;
    let mut progress = Progress::new("holding", args.hold.as_secs(), c.quiet);
    while Instant::now() < hold_end {
        let left = hold_end - Instant::now();
        progress.update(args.hold.saturating_sub(left).as_secs(), || {
            format!("s, {} dropped", shared.dropped.load(Relaxed))
        });
        tokio::time::sleep(left.min(Duration::from_millis(250))).await;
    }
    let rss_after = probe.rss_bytes().await;
    let dropped = shared.dropped.load(Relaxed);
    progress.finish(&format!("{dropped} dropped"));

    let _ = stop_tx.send(true);
    let join_deadline = Instant::now() + CLOSE_GRACE + Duration::from_secs(5);
    while let Ok(Some(_)) = timeout_at(join_deadline, conns.join_next()).await {}
    conns.abort_all();

    let held = connected.saturating_sub(dropped);
    let hs = shared
        .handshake_us
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let ready = shared.ready_us.lock().unwrap_or_else(|p| p.into_inner());
    Ok(IdleReport {
        scenario: "idle",
        proto: c.proto,
        url: c.url.clone(),
        connections: args.connections,
        connected,
        handshake_errors: args.connections as u64 - connected,
        handshake_error_examples: shared.errors.take(),
        connect_seconds: round3(connect_phase.as_secs_f64()),
        handshakes_per_sec: round3(per_sec(connected, connect_phase)),
        handshake_ms: LatencySummary::from_us(&hs),
        ready_ms: LatencySummary::from_us(&ready),
        hold_seconds: args.hold.as_secs_f64(),
        dropped_during_hold: dropped,
        server_probe: probe.describe(),
        server_rss_before_bytes: rss_before,
        server_rss_after_bytes: rss_after,
        bytes_per_connection: bytes_per_connection(rss_before, rss_after, held).map(round3),
        nofile_limit: limit,
    })
}

/// One idle connection: set up under the semaphore, then hold until stopped.
#[allow(clippy::too_many_arguments)]
async fn idle_connection(
    target: Arc<Target>,
    proto: Proto,
    connect_timeout: Duration,
    sem: Arc<Semaphore>,
    shared: Arc<IdleShared>,
    mut stop: watch::Receiver<bool>,
    start: Instant,
    hard_deadline: Instant,
) {
    let mut session = {
        let Ok(_permit) = sem.acquire().await else {
            return;
        };
        let t0 = Instant::now();
        let setup = async {
            let ws = target.open().await?;
            let handshake = t0.elapsed();
            let s = Session::greet(ws, proto).await?;
            anyhow::Ok((s, handshake))
        };
        let r = timeout(connect_timeout, setup).await;
        shared
            .last_done_ns
            .fetch_max((Instant::now() - start).as_nanos() as u64, Relaxed);
        match r {
            Ok(Ok((s, handshake))) => {
                let record = |h: &Mutex<Histogram<u64>>, d: Duration| {
                    h.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .saturating_record((d.as_micros() as u64).max(1));
                };
                record(&shared.handshake_us, handshake);
                record(&shared.ready_us, t0.elapsed());
                shared.connected.fetch_add(1, Relaxed);
                s
            }
            Ok(Err(e)) => {
                shared.errors.note(error_chain(&e));
                shared.failed.fetch_add(1, Relaxed);
                return;
            }
            Err(_) => {
                shared
                    .errors
                    .note(format!("setup timed out after {connect_timeout:?}"));
                shared.failed.fetch_add(1, Relaxed);
                return;
            }
        }
    };

    let mut keepalive = session
        .ping_interval
        .map(|p| tokio::time::interval_at(Instant::now() + p, p));
    let stopped = stop.changed();
    tokio::pin!(stopped);
    let hard = sleep_until(hard_deadline);
    tokio::pin!(hard);
    let mut pongs = Vec::new();
    let mut dropped = false;
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            _ = &mut hard => break,
            _ = keepalive_tick(&mut keepalive) => {
                if let Some(f) = session.keepalive_frame() {
                    if session.ws.send(f).await.is_err() {
                        dropped = true;
                        break;
                    }
                }
            }
            m = session.ws.next() => {
                let Some(Ok(msg)) = m else {
                    dropped = true;
                    break;
                };
                let _ = decode(proto, &mut session.nats, &msg, |inc| {
                    if let Incoming::ServerPing { id } = inc {
                        pongs.push(id);
                    }
                });
                for id in pongs.drain(..) {
                    if let Some(p) = pong_frame(proto, id) {
                        let _ = session.ws.send(p).await;
                    }
                }
            }
        }
    }
    if dropped {
        shared.dropped.fetch_add(1, Relaxed);
    } else {
        session.close(CLOSE_GRACE).await;
    }
}

impl fmt::Display for IdleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = Table::new(format!(
            "idle  {} ({})  {} connections, hold {}s",
            self.url, self.proto, self.connections, self.hold_seconds
        ));
        t.row(
            "connected",
            format!(
                "{} ({} errors) in {:.2}s",
                self.connected, self.handshake_errors, self.connect_seconds
            ),
        )
        .examples("handshake error", &self.handshake_error_examples)
        .row("handshakes/s", grouped(self.handshakes_per_sec))
        .latency("handshake ms", &self.handshake_ms)
        .latency("ready ms", &self.ready_ms)
        .row("dropped in hold", self.dropped_during_hold)
        .row("server probe", &self.server_probe)
        .opt("server RSS before", self.server_rss_before_bytes)
        .opt("server RSS after", self.server_rss_after_bytes)
        .opt(
            "bytes/connection",
            self.bytes_per_connection.map(|b| format!("{b:.0}")),
        )
        .row("bench nofile limit", self.nofile_limit);
        write!(f, "{t}")
    }
}
