//! `pulsegate bench churn`: connection churn at a fixed rate — C cycles per
//! second of connect → greeting → subscribe → close, for `--duration`.
//!
//! Cycles start on a deadline schedule. At most `--concurrency` cycles are
//! in flight; a cycle due while all slots are busy is skipped and counted,
//! so a server that cannot keep up shows as skipped cycles rather than as a
//! bench that silently slowed down. A cycle is complete when the server has
//! answered the subscription and acknowledged the close, within
//! `--connect-timeout`.
//!
//! Ports: every cycle uses a fresh ephemeral port (32768–60999 here); the
//! side that closes first keeps it in TIME_WAIT for 60 s, so keep
//! `rate × 60` well under ~28,000 when the bench closes first.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout_at, Instant};

use crate::common::{defaults_of, error_chain, validate_common, CommonArgs, ErrorSamples};
use crate::probe::{default_metrics_url, self_cpu_seconds, ServerProbe};
use crate::progress::Progress;
use crate::report::{grouped, Table};
use crate::stats::{new_lag_histogram, per_sec, round3, LatencySummary};
use crate::sys::{ensure_fd_room, raise_nofile_limit};
use crate::wire::{Proto, Session, Target};

/// Flags of `pulsegate bench churn`.
#[derive(clap::Args, Debug, Clone)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Cycles started per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,

    /// How long to keep starting cycles.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Topics to spread subscriptions over.
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
}

impl Default for ChurnArgs {
    fn default() -> Self {
        defaults_of()
    }
}

/// The result of a churn run.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnReport {
    /// Always `"churn"`.
    pub scenario: &'static str,
    /// Protocol spoken.
    pub proto: Proto,
    /// Server URL.
    pub url: String,
    /// Cycles per second asked for.
    pub target_rate: f64,
    /// Seconds cycles were started for.
    pub duration_seconds: f64,
    /// Cycles started.
    pub attempted: u64,
    /// Cycles that finished connect → subscribe → close.
    pub completed: u64,
    /// Cycles that failed with an error.
    pub errors: u64,
    /// Cycles that did not finish within --connect-timeout.
    pub timeouts: u64,
    /// Cycles not started because --concurrency cycles were in flight.
    pub skipped_at_capacity: u64,
    /// First distinct errors.
    pub error_examples: Vec<String>,
    /// Completed cycles per second.
    pub cycles_per_sec: f64,
    /// Time of a completed cycle, in milliseconds.
    pub cycle_ms: LatencySummary,
    /// Where server readings came from.
    pub server_probe: String,
    /// Server CPU seconds during the run.
    pub server_cpu_seconds: Option<f64>,
    /// Bench CPU seconds during the run.
    pub bench_cpu_seconds: Option<f64>,
}

enum Cycle {
    Done(Duration),
    Failed(String),
    TimedOut,
}

/// Runs the churn scenario.
pub async fn churn(args: &ChurnArgs) -> anyhow::Result<ChurnReport> {
    let c = &args.common;
    validate_common(c)?;
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite() && args.rate <= 100_000.0,
        "--rate must be between 0 and 100,000 cycles per second, got {}",
        args.rate
    );
    anyhow::ensure!(args.topics >= 1, "--topics must be >= 1");
    let limit = raise_nofile_limit();
    ensure_fd_room(u64::from(c.concurrency), limit)?;
    let target = Arc::new(Target::resolve(&c.url).await?);
    let metrics_url = c
        .metrics_url
        .clone()
        .or_else(|| default_metrics_url(&target.url))
        .unwrap_or_default();
    let probe = ServerProbe::detect(c.server_pid, &metrics_url).await;
    let topics: Arc<Vec<String>> = Arc::new(
        (0..if c.proto.has_topics() { args.topics } else { 1 })
            .map(|i| c.proto.topic_name(i))
            .collect(),
    );

    let sem = Arc::new(Semaphore::new(c.concurrency as usize));
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let max_cycles = (args.duration.as_secs_f64() * args.rate).ceil() as u64;
    let cpu_start = probe.cpu_seconds().await;
    let bench_cpu_start = self_cpu_seconds();
    let start = Instant::now();
    let end = start + args.duration;
    let mut hist = new_lag_histogram();
    let errors = ErrorSamples::default();
    let (mut attempted, mut completed, mut failed, mut timeouts, mut skipped) = (0u64, 0, 0, 0, 0);
    let mut last_done = start;
    let mut tally = |r: Cycle, hist: &mut hdrhistogram::Histogram<u64>| match r {
        Cycle::Done(d) => {
            completed += 1;
            last_done = Instant::now();
            hist.saturating_record((d.as_micros() as u64).max(1));
        }
        Cycle::Failed(e) => {
            failed += 1;
            errors.note(e);
        }
        Cycle::TimedOut => timeouts += 1,
    };
    let mut tasks = JoinSet::new();
    let mut progress = Progress::new("churn", max_cycles, c.quiet);
    for k in 0..max_cycles {
        let due = start + period.mul_f64(k as f64);
        if due >= end {
            break;
        }
        sleep_until(due).await;
        while let Some(Ok(r)) = tasks.try_join_next() {
            tally(r, &mut hist);
        }
        progress.update(k, || format!("cycles, {} in flight", tasks.len()));
        let Ok(permit) = Arc::clone(&sem).try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        attempted += 1;
        let (target, topics, proto) = (Arc::clone(&target), Arc::clone(&topics), c.proto);
        let deadline = Instant::now() + c.connect_timeout;
        tasks.spawn(async move {
            let _permit = permit;
            let t0 = Instant::now();
            let cycle = async {
                let mut s = Session::establish(&target, proto).await?;
                s.subscribe(&topics[k as usize % topics.len()]).await?;
                s.ws.close().await?;
                anyhow::Ok(())
            };
            match timeout_at(deadline, cycle).await {
                Ok(Ok(())) => Cycle::Done(t0.elapsed()),
                Ok(Err(e)) => Cycle::Failed(error_chain(&e)),
                Err(_) => Cycle::TimedOut,
            }
        });
    }
    let join_deadline = Instant::now() + c.connect_timeout + Duration::from_secs(1);
    while let Ok(Some(res)) = timeout_at(join_deadline, tasks.join_next()).await {
        if let Ok(r) = res {
            tally(r, &mut hist);
        }
    }
    let stragglers = tasks.len() as u64;
    tasks.abort_all();
    let server_cpu_end = probe.cpu_seconds().await;
    let bench_cpu_end = self_cpu_seconds();
    timeouts += stragglers;
    progress.finish(&format!(
        "{completed} completed, {failed} errors, {timeouts} timeouts, {skipped} skipped"
    ));

    let span = last_done.duration_since(start).max(args.duration);
    let diff = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| round3((b - a).max(0.0)));
    Ok(ChurnReport {
        scenario: "churn",
        proto: c.proto,
        url: c.url.clone(),
        target_rate: args.rate,
        duration_seconds: args.duration.as_secs_f64(),
        attempted,
        completed,
        errors: failed,
        timeouts,
        skipped_at_capacity: skipped,
        error_examples: errors.take(),
        cycles_per_sec: round3(per_sec(completed, span)),
        cycle_ms: LatencySummary::from_us(&hist),
        server_probe: probe.describe(),
        server_cpu_seconds: diff(cpu_start, server_cpu_end),
        bench_cpu_seconds: diff(bench_cpu_start, bench_cpu_end),
    })
}

impl fmt::Display for ChurnReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = Table::new(format!(
            "churn  {} ({})  {} cycles/s for {}s",
            self.url, self.proto, self.target_rate, self.duration_seconds
        ));
        t.row(
            "cycles",
            format!(
                "{} attempted, {} completed, {} errors, {} timeouts, {} skipped at capacity",
                self.attempted,
                self.completed,
                self.errors,
                self.timeouts,
                self.skipped_at_capacity
            ),
        )
        .examples("error", &self.error_examples)
        .row("cycles/s", grouped(self.cycles_per_sec))
        .latency("cycle ms", &self.cycle_ms)
        .row("server probe", &self.server_probe)
        .opt("server CPU s", self.server_cpu_seconds)
        .opt("bench CPU s", self.bench_cpu_seconds);
        write!(f, "{t}")
    }
}
