//! The pulsegate server: listener, one task per connection, HTTP routes,
//! configuration and shutdown. The binary calls [`start`] and
//! [`Running::run_until_signal`]; tests call [`start`] with port 0.
//!
//! Where things live:
//! - [`server`]: accept loop, request-head dispatch, start/drain/stop;
//! - [`handshake`]: our RFC 6455 handshake (no per-connection hyper buffers);
//! - [`conn`]: one WebSocket connection's whole life;
//! - [`http`]: REST routes;
//! - [`config`]: the one validated config tree;
//! - [`state`]: what every connection shares (hub, limits, phase, live connections);
//! - [`metrics`]: counters and histograms, exposed at `/metrics`;
//! - [`livestats`]: `/api/stats`, and the `$sys/stats` topic of the dashboard;
//! - [`process`]: the process's CPU, memory and file descriptors.
#![warn(missing_docs)]

pub mod admin;
pub mod auth;
pub mod clientip;
pub mod config;
pub mod conn;
pub mod handshake;
pub mod http;
pub mod io;
pub mod livestats;
pub mod metrics;
pub mod process;
pub mod ratelimit;
pub mod server;
pub mod state;
pub mod tls;
pub mod ws;

pub use config::Config;
pub use server::{start, Running};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen on {0} (server.listen): {1}")]
    Bind(std::net::SocketAddr, std::io::Error),
    /// TLS files unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// Auth key files unusable.
    #[error("auth: {0}")]
    Auth(String),
    /// The backplane configuration is unusable (not: the server is down).
    #[error("cluster backplane: {0}")]
    Backplane(String),
}
