//! Server-side counters (connections, frames, errors). Relaxed atomics,
//! read by `/api/stats` and, in the observability issue, by `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of the server layer.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// WebSocket connections accepted.
    pub accepted: AtomicU64,
    /// Upgrades refused (origin, limits, draining, bad request).
    pub rejected: AtomicU64,
    /// Frames received from clients.
    pub frames_in: AtomicU64,
    /// Frames written to clients.
    pub frames_out: AtomicU64,
    /// Bytes written to clients (payloads).
    pub bytes_out: AtomicU64,
    /// Malformed frames / unknown ops answered with `error`.
    pub protocol_errors: AtomicU64,
    /// Connections closed for missing pongs.
    pub pong_timeouts: AtomicU64,
    /// Messages published over HTTP.
    pub published_http: AtomicU64,
    /// Messages published over WebSocket.
    pub published_ws: AtomicU64,
    /// Times an idle connection dropped its WebSocket layer (hibernated).
    pub hibernations: AtomicU64,
}

impl ServerStats {
    /// Adds one to a counter.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }
}
