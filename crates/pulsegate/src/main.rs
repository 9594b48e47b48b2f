//! The `pulsegate` binary: parses arguments and calls library code.
//! Subcommands: `serve`, `check-config`, `pub`, `sub`, `bench`, `probe`, `doctor`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pulsegate_server::Config;

mod cmd;

/// jemalloc: no chunk headers next to allocations, so the untouched part of
/// each connection's read buffer stays out of RSS (measured in docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "pulsegate",
    version,
    about = "Real-time WebSocket telemetry gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (in-memory hub; config from file, PULSEGATE_* env and flags).
    Serve(ServeArgs),
    /// Validate a config file (plus PULSEGATE_* env) and print the effective config.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
        /// Print the effective configuration as TOML.
        #[arg(long)]
        print: bool,
    },
    /// Publish one JSON value to a topic.
    Pub(cmd::pubsub::PubArgs),
    /// Subscribe to a pattern and print one JSON line per message.
    Sub(cmd::pubsub::SubArgs),
    /// Load generator: fan-out lag, idle memory, throughput, churn.
    #[command(subcommand)]
    Bench(pulsegate_bench::BenchCommand),
    /// Where is the lag? Time DNS, TCP, TLS, upgrade, pings and pub→sub to a server.
    Probe(cmd::probe::ProbeArgs),
    /// Is this host ready? Check file limits, kernel settings and memory against the config.
    Doctor(cmd::doctor::DoctorArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Listen address (server.listen), e.g. 127.0.0.1:8080.
    #[arg(long)]
    listen: Option<String>,
    /// Any config key as KEY=VALUE, e.g. --set delivery.slow_consumer=conflate (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal, so log files and journald stay greppable.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::CheckConfig { file, print } => {
                let config = Config::load(Some(&file), &[])?;
                if print {
                    print!("{}", config.to_toml_string());
                } else {
                    println!("{}: ok", file.display());
                }
                Ok(())
            }
            Command::Pub(args) => cmd::pubsub::run_pub(args).await,
            Command::Sub(args) => cmd::pubsub::run_sub(args).await,
            Command::Bench(b) => pulsegate_bench::run(b).await,
            Command::Probe(args) => cmd::probe::run(args).await,
            Command::Doctor(args) => cmd::doctor::run(args),
        }
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut overrides: Vec<(String, String)> = Vec::new();
    if let Some(l) = args.listen {
        overrides.push(("server.listen".into(), l));
    }
    for kv in args.set {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set expects KEY=VALUE, got `{kv}`"))?;
        overrides.push((k.to_string(), v.to_string()));
    }
    let overrides: Vec<(&str, String)> = overrides
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let config = Config::load(args.config.as_deref(), &overrides)?;
    let running = pulsegate_server::start(config).await?;
    running.run_until_signal().await?;
    Ok(())
}
