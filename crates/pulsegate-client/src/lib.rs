//! Client for pulsegate servers: publish, subscribe, reconnect and resume.
//!
//! Three entry points, from simplest to most complete:
//! - [`publish`]: one message over a fresh connection, returning the
//!   `{topic, seq, epoch}` the server assigned;
//! - [`Connection`]: a single connection speaking raw [`ClientFrame`]s and
//!   [`ServerFrame`]s, with no reconnect — the tool for tests;
//! - [`Subscriber`]: a subscription that reconnects with jittered backoff,
//!   honours a draining server's `reconnect_after_ms` hint, resumes from the
//!   last seen position per topic, drops duplicates and reports gaps — and,
//!   given several nodes of a cluster ([`ClientOptions::fallback_url`]),
//!   fails over to the next node on every reconnect.
//!
//! All three take [`ClientOptions`]. Where things live: `options.rs` (URLs,
//! TLS, timeouts, bounds), `connection.rs` (one socket's life), `subscriber.rs`
//! (the reconnect state machine), `backoff.rs`, `failover.rs` and
//! `positions.rs` (the pure arithmetic behind it — when, where, from which
//! position — unit-tested), `error.rs` ([`ClientError`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), pulsegate_client::ClientError> {
//! use pulsegate_client::{publish, ClientOptions, Event, Subscriber};
//!
//! // Three nodes of one cluster: reconnects rotate over them.
//! let opts = ClientOptions::new("ws://10.0.0.11:8080/ws")
//!     .fallback_url("ws://10.0.0.12:8080/ws")
//!     .fallback_url("ws://10.0.0.13:8080/ws");
//! let reply = publish(&opts, "site/a/power", serde_json::json!({"w": 1520})).await?;
//! println!("published as seq {} of epoch {}", reply.seq, reply.epoch);
//!
//! let mut sub = Subscriber::new(opts, "site/+/power", true, true);
//! loop {
//!     match sub.next().await? {
//!         Event::Msg { topic, seq, data, .. } => println!("{topic} #{seq}: {data}"),
//!         Event::Disconnected { reason, retry_in, .. } => eprintln!("{reason}; retry in {retry_in:?}"),
//!         other => eprintln!("{other:?}"),
//!     }
//! }
//! # }
//! ```
#![warn(missing_docs)]

pub mod backoff;
mod connection;
mod error;
mod failover;
mod options;
pub mod positions;
mod subscriber;

pub use backoff::{parse_reconnect_after, Backoff};
pub use connection::{publish, CloseInfo, Connection, Published, Welcome};
pub use error::{close_code_name, ClientError};
pub use options::ClientOptions;
pub use positions::{Observation, Positions};
pub use pulsegate_proto::{ClientFrame, Codec, Id, Position, ServerFrame};
pub use subscriber::{Event, Subscriber};
