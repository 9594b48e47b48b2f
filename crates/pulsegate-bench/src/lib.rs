//! `pulsegate-bench`: the load generator behind `pulsegate bench <scenario>`.
//!
//! The binary embeds [`BenchCommand`] as a clap subcommand and calls [`run`],
//! which prints a human table (or one JSON object with `--json`) on stdout;
//! progress goes to stderr. Tests and other tools call the scenario
//! functions directly and inspect the report structs.
//!
//! | scenario | function | report | what it answers |
//! |---|---|---|---|
//! | `fanout` | [`fanout()`] | [`FanoutReport`] | publish→deliver lag at a paced rate, loss/dup/reorder |
//! | `throughput` | [`throughput()`] | [`ThroughputReport`] | publishes/s and deliveries/s at saturation |
//! | `idle` | [`idle()`] | [`IdleReport`] | handshakes/s, server memory per idle connection |
//! | `churn` | [`churn()`] | [`ChurnReport`] | connect→sub→close cycles/s and cycle time |
//!
//! Where things live: protocol details (pulsegate JSON, NATS, plain
//! broadcast) in [`wire`] and [`nats`]; message bodies in [`payload`]; the
//! publish/subscribe engine in `pubsub`; counting and percentiles in
//! [`stats`]; server CPU/RSS readings in [`probe`]; the subscriber
//! connections of `--deflate` (permessage-deflate, framed by pulsegate-ws
//! because tokio-websockets rejects compressed frames) in [`deflate`].
//!
//! Runtime: one tokio task per connection, never a thread per connection.
//! The caller's runtime is used as is, so `taskset -c 0 pulsegate bench …`
//! pins the whole load generator to one CPU (tokio sizes its worker pool
//! from the CPUs the process may run on).

pub mod churn;
pub mod common;
pub mod deflate;
pub mod fanout;
pub mod idle;
pub mod nats;
pub mod payload;
pub mod probe;
mod progress;
mod pubsub;
mod report;
pub mod stats;
pub mod sys;
pub mod throughput;
pub mod wire;

pub use churn::{churn, ChurnArgs, ChurnReport};
pub use common::CommonArgs;
pub use deflate::DeflateSummary;
pub use fanout::{fanout, FanoutArgs, FanoutReport};
pub use idle::{idle, IdleArgs, IdleReport};
pub use pubsub::DeliveryCheck;
pub use report::emit;
pub use stats::LatencySummary;
pub use throughput::{throughput, ThroughputArgs, ThroughputReport};
pub use wire::Proto;

/// `pulsegate bench <scenario>`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum BenchCommand {
    /// Publish→deliver lag and delivery correctness: S subscribers, P
    /// publishers at R msg/s each.
    Fanout(FanoutArgs),
    /// Handshake rate and server memory per idle connection.
    Idle(IdleArgs),
    /// Publishes/s and deliveries/s with publishers going as fast as the
    /// server accepts.
    Throughput(ThroughputArgs),
    /// Connect→subscribe→close cycles at a fixed rate.
    Churn(ChurnArgs),
}

/// Runs one scenario and prints its report (table, or JSON with `--json`).
pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Fanout(a) => emit(&fanout(&a).await?, a.common.json),
        BenchCommand::Idle(a) => emit(&idle(&a).await?, a.common.json),
        BenchCommand::Throughput(a) => emit(&throughput(&a).await?, a.common.json),
        BenchCommand::Churn(a) => emit(&churn(&a).await?, a.common.json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: BenchCommand,
    }

    #[test]
    fn documented_command_lines_parse() {
        let cli = Cli::try_parse_from([
            "bench",
            "fanout",
            "--url",
            "ws://127.0.0.1:8080/ws",
            "--subscribers",
            "1000",
            "--publishers",
            "1",
            "--rate",
            "100",
            "--payload",
            "64",
            "--topics",
            "1",
            "--warmup",
            "2s",
            "--duration",
            "10s",
            "--json",
            "--proto",
            "nats",
        ])
        .unwrap();
        let BenchCommand::Fanout(a) = cli.cmd else {
            panic!("not fanout")
        };
        assert_eq!(a.subscribers, 1000);
        assert_eq!(a.duration, std::time::Duration::from_secs(10));
        assert!(a.common.json);
        assert_eq!(a.common.proto, Proto::Nats);

        let cli = Cli::try_parse_from([
            "bench",
            "idle",
            "--url",
            "ws://127.0.0.1:8080/ws",
            "--connections",
            "10000",
            "--server-pid",
            "42",
            "--json",
        ])
        .unwrap();
        let BenchCommand::Idle(a) = cli.cmd else {
            panic!("not idle")
        };
        assert_eq!(a.connections, 10_000);
        assert_eq!(a.common.server_pid, Some(42));
        assert_eq!(a.hold, std::time::Duration::from_secs(5));

        assert!(Cli::try_parse_from(["bench", "throughput", "--window", "8"]).is_ok());
        let cli = Cli::try_parse_from(["bench", "fanout", "--deflate"]).unwrap();
        assert!(matches!(cli.cmd, BenchCommand::Fanout(a) if a.deflate));
        let cli = Cli::try_parse_from(["bench", "throughput", "--deflate"]).unwrap();
        assert!(matches!(cli.cmd, BenchCommand::Throughput(a) if a.deflate));
        assert!(!FanoutArgs::default().deflate);
        assert!(
            Cli::try_parse_from(["bench", "churn", "--rate", "50", "--proto", "broadcast"]).is_ok()
        );
        assert!(Cli::try_parse_from(["bench", "fanout", "--proto", "mqtt"]).is_err());
    }

    #[test]
    fn defaults_match_the_flags() {
        let f = FanoutArgs::default();
        assert_eq!(
            (f.subscribers, f.publishers, f.rate, f.payload, f.topics),
            (1000, 1, 100.0, 64, 1)
        );
        assert_eq!(f.warmup, std::time::Duration::from_secs(2));
        assert_eq!(ThroughputArgs::default().window, 256);
        assert_eq!(ChurnArgs::default().rate, 100.0);
        assert_eq!(IdleArgs::default().connections, 10_000);
    }
}
