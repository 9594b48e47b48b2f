//! Pieces every scenario shares: the common flags, error sampling, and the
//! conversion between monotonic deadlines and the wall clock that message
//! timestamps use.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::{Instant, Interval};

use crate::payload::now_ns;
use crate::wire::Proto;

/// Flags every scenario takes.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// WebSocket URL of the server under test (ws:// only; loopback or this machine).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,

    /// Protocol to speak: pulsegate JSON, NATS over nats-server's WebSocket
    /// port, or a plain broadcast server.
    #[arg(long, value_enum, default_value_t = Proto::Pulsegate)]
    pub proto: Proto,

    /// PID of the server process: CPU time and RSS are read from /proc/PID.
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// Prometheus endpoint with process_cpu_seconds_total /
    /// process_resident_memory_bytes, used when --server-pid is not given
    /// [default: http://<host:port of --url>/metrics].
    #[arg(long)]
    pub metrics_url: Option<String>,

    /// Connection handshakes in flight at once.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// Bound on one connection's setup: TCP connect, WebSocket upgrade,
    /// greeting and subscription.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Print the report as one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,

    /// No progress output on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl Default for CommonArgs {
    fn default() -> Self {
        defaults_of()
    }
}

/// Any clap `Args` struct with every flag at its declared default, so that
/// defaults are written once, in the `#[arg]` attributes.
pub(crate) fn defaults_of<A: clap::Args + clap::FromArgMatches>() -> A {
    let cmd = A::augment_args(clap::Command::new("defaults").no_binary_name(true));
    let matches = cmd
        .try_get_matches_from(std::iter::empty::<String>())
        .expect("every benchmark flag has a default");
    A::from_arg_matches(&matches).expect("defaults parse into the args struct")
}

/// How many distinct error messages a report lists.
pub const MAX_ERROR_EXAMPLES: usize = 5;

/// The first few distinct error messages seen by many tasks.
#[derive(Default)]
pub struct ErrorSamples {
    inner: Mutex<Vec<String>>,
}

impl ErrorSamples {
    /// Keeps `msg` if it is new and there is room.
    pub fn note(&self, msg: String) {
        let mut v = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < MAX_ERROR_EXAMPLES && !v.contains(&msg) {
            v.push(msg);
        }
    }

    /// The messages kept.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The wall-clock time (ns since the Unix epoch) at which monotonic
/// `instant` falls, so that a deadline can be compared with message `t`s.
pub fn wall_ns_at(instant: Instant) -> u64 {
    let now_i = Instant::now();
    let now_w = now_ns();
    if instant >= now_i {
        now_w + (instant - now_i).as_nanos() as u64
    } else {
        now_w.saturating_sub((now_i - instant).as_nanos() as u64)
    }
}

/// An error and its causes on one line, skipping a cause whose text the
/// previous message already contains (some errors repeat their source).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if out.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}

/// Waits for the next keepalive tick, or forever when there is no interval
/// (the server asked for no client pings).
pub(crate) async fn keepalive_tick(iv: &mut Option<Interval>) {
    match iv {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Fails early on values that would make a scenario meaningless.
pub(crate) fn validate_common(c: &CommonArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !c.connect_timeout.is_zero(),
        "--connect-timeout must be > 0"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_attributes() {
        let c = CommonArgs::default();
        assert_eq!(c.url, "ws://127.0.0.1:8080/ws");
        assert_eq!(c.proto, Proto::Pulsegate);
        assert_eq!(c.concurrency, 200);
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert!(!c.json);
    }

    #[test]
    fn error_chain_skips_repeated_causes() {
        let e = anyhow::anyhow!(std::io::Error::other("status 429"))
            .context("status 429")
            .context("WebSocket upgrade");
        assert_eq!(error_chain(&e), "WebSocket upgrade: status 429");
    }

    #[test]
    fn error_samples_are_distinct_and_capped() {
        let s = ErrorSamples::default();
        for i in 0..20 {
            s.note(format!("e{}", i % 7));
            s.note("e0".into());
        }
        assert_eq!(s.take(), vec!["e0", "e1", "e2", "e3", "e4"]);
    }

    #[tokio::test]
    async fn wall_clock_of_a_deadline() {
        let in_1s = Instant::now() + Duration::from_secs(1);
        let diff = wall_ns_at(in_1s) as i128 - now_ns() as i128;
        assert!((diff - 1_000_000_000).abs() < 50_000_000, "{diff}");
    }
}
