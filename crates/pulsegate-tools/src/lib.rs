//! Operator tools: `pulsegate probe` (where is the lag between here and a
//! server?) and `pulsegate doctor` (is this host ready to run one?).
//!
//! Both follow the same shape so they can be tested without a process: an
//! options struct, a `run(opts)` that measures or reads and returns a report,
//! and the report's two renderings, a plain-text table for people and one
//! JSON object (`--json`) for scripts. The binary only maps flags to options
//! and the report's verdict to an exit code.
//!
//! Where things live:
//! - [`probe`]: DNS, TCP, TLS, HTTP upgrade, WebSocket and application round
//!   trips, an idle hold, and the diagnosis drawn from them;
//! - [`doctor`]: `/proc` and rlimit checks against the server's configuration,
//!   each with its exact fix;
//! - `table.rs`: the small text-table helper both renderings share.
#![warn(missing_docs)]

pub mod doctor;
pub mod probe;
mod table;
