//! Progress output on stderr: an indicatif bar on a terminal, a plain line at
//! most once a second otherwise (CI logs, pipes, `--json` runs redirected to a
//! file). Stdout is reserved for the report.
//!
//! Scenario orchestrators poll their atomic counters on a timer and call
//! [`Progress::update`]; connection tasks never touch the progress display.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Minimum spacing of plain progress lines.
const PLAIN_EVERY: Duration = Duration::from_secs(1);

/// One phase's progress (connecting, warm-up, measuring, …).
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    last_line: Option<Instant>,
    quiet: bool,
}

impl Progress {
    /// A phase counting up to `total`; `quiet` suppresses all output.
    pub fn new(label: &str, total: u64, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg}")
                    .expect("static progress template is valid")
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.to_owned());
            bar
        });
        Self {
            bar,
            label: label.to_owned(),
            total,
            last_line: None,
            quiet,
        }
    }

    /// Moves to `pos` with a short status message.
    pub fn update(&mut self, pos: u64, msg: impl FnOnce() -> String) {
        if self.quiet {
            return;
        }
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
            bar.set_message(msg());
            return;
        }
        let now = Instant::now();
        if self
            .last_line
            .is_none_or(|t| now.duration_since(t) >= PLAIN_EVERY)
        {
            self.last_line = Some(now);
            eprintln!("{}: {pos}/{} {}", self.label, self.total, msg());
        }
    }

    /// Ends the phase with a summary line.
    pub fn finish(self, summary: &str) {
        if self.quiet {
            return;
        }
        match self.bar {
            Some(bar) => {
                bar.set_style(
                    ProgressStyle::with_template("{prefix:>12} {msg}")
                        .expect("static progress template is valid"),
                );
                bar.finish_with_message(format!("done, {summary}"));
            }
            None => eprintln!("{}: done, {summary}", self.label),
        }
    }
}
