//! `pulsegate probe URL`: flags to [`ProbeOptions`], the report to stdout,
//! and a failed probe (server unreachable, upgrade refused) to a non-zero
//! exit. The measuring and the diagnosis live in `pulsegate_tools::probe`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use pulsegate_tools::probe::{self, ProbeOptions, Thresholds};

/// Arguments of `pulsegate probe`. No `Debug`: it would show `--token`.
#[derive(Args)]
pub struct ProbeArgs {
    /// Server WebSocket URL (ws:// or wss://), e.g. wss://gw.example.com/ws.
    pub url: String,
    /// Samples per step; the report shows min/median/max.
    #[arg(long, default_value_t = probe::DEFAULT_COUNT,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub count: usize,
    /// Bound on every single step, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Also hold an idle connection this long (e.g. `120s`) and report if and
    /// when something closed it, with which close code.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub idle: Option<Duration>,
    /// Flag a layer whose round trip exceeds the one below it by more than this.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pub rtt_threshold: Duration,
    /// Flag a median DNS resolution slower than this.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub dns_threshold: Duration,
    /// Flag a median full TLS handshake slower than this.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub tls_threshold: Duration,
    /// Also trust the CA certificate(s) in this PEM file (wss:// with a private CA).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Vec<PathBuf>,
    /// Send `Authorization: Bearer TOKEN` on every upgrade (a server with
    /// auth.mode = "jwt"; the pub→sub step needs subscribe and publish on
    /// probe/#). Never printed.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PULSEGATE_PROBE_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Send `Origin: ORIGIN` on every upgrade (a server with
    /// server.allowed_origins), e.g. https://app.example.com.
    #[arg(long, value_name = "ORIGIN")]
    pub origin: Option<String>,
    /// Another request header for every upgrade, as 'Name: value' (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the probe and prints its report; an error when the probe failed.
pub async fn run(args: ProbeArgs) -> anyhow::Result<()> {
    // Parsed here rather than by clap, whose errors would echo the value.
    let headers = args
        .headers
        .iter()
        .map(|h| probe::parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = ProbeOptions {
        url: args.url,
        count: args.count,
        timeout: args.timeout,
        idle: args.idle,
        thresholds: Thresholds {
            rtt_excess: args.rtt_threshold,
            dns: args.dns_threshold,
            tls: args.tls_threshold,
        },
        ca_files: args.ca_file,
        token: args.token,
        origin: args.origin,
        headers,
    };
    let report = probe::run(&opts).await?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.render_text());
    }
    if let Some(failure) = &report.failure {
        bail!("probe of {} failed: {failure}", report.url);
    }
    Ok(())
}
