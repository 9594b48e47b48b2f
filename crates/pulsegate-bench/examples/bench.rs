//! The load generator as a stand-alone program, wired exactly as the
//! `pulsegate` binary wires `pulsegate bench`:
//!
//! ```text
//! cargo build --release -p pulsegate-bench --example bench
//! taskset -c 0 target/release/examples/bench fanout --url ws://127.0.0.1:8080/ws --subscribers 1000
//! ```

use clap::Parser;
use pulsegate_bench::BenchCommand;

/// Load generator for pulsegate and its peers.
#[derive(Parser)]
#[command(name = "bench")]
struct Cli {
    #[command(subcommand)]
    cmd: BenchCommand,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    pulsegate_bench::run(Cli::parse().cmd).await
}
