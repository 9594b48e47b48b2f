//! `pulsegate doctor`: flags to [`DoctorOptions`], the report to stdout, and
//! the verdict (any `fail`, or with `--strict` any `warn`) to the exit code.
//! The checks live in `pulsegate_tools::doctor`.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use pulsegate_tools::doctor::{self, DoctorOptions, Status};

/// Arguments of `pulsegate doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The server's TOML config file (default: built-in defaults plus PULSEGATE_* env).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Check the open-file limits of this running server process instead of
    /// this shell's.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Exit non-zero on warnings too, not only on failures.
    #[arg(long)]
    pub strict: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the checks and prints the report; an error when the host is not ready.
pub fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let opts = DoctorOptions {
        config: args.config,
        pid: args.pid,
        ..DoctorOptions::default()
    };
    let report = doctor::run(&opts)?;
    if args.json {
        println!("{}", report.to_json(args.strict));
    } else {
        print!("{}", report.render_text(args.strict));
    }
    if report.failed(args.strict) {
        bail!(
            "host not ready: {} fail, {} warn{}",
            report.count(Status::Fail),
            report.count(Status::Warn),
            if args.strict { " (--strict)" } else { "" }
        );
    }
    Ok(())
}
