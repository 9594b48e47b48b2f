//! The pulsegate wire protocol, with no I/O and no async runtime.
//!
//! Everything that turns bytes from a client into a request, or a published
//! message into bytes for a subscriber, lives here, so it can be tested and
//! fuzzed without a socket:
//! - [`topic`]: topic and pattern syntax (`site/a/power`, `site/+/power`, `site/#`) and matching;
//! - [`frame`]: the frames clients send and the frames the server sends;
//! - [`codec`]: the two subprotocols, `pulsegate.v1.json` (text) and
//!   `pulsegate.v1.msgpack` (binary, MessagePack maps with the same field names).
#![warn(missing_docs)]

pub mod codec;
pub mod frame;
pub mod topic;

pub use codec::{Codec, DecodeError, DecodeErrorKind};
pub use frame::{ClientFrame, ErrorCode, Id, Position, Reply, ServerFrame};
pub use topic::{Pattern, TopicError};

/// Close codes pulsegate sends, beyond the RFC 6455 ones; documented in README.
pub mod close_code {
    /// The server is going away (drain, shutdown); reconnect elsewhere after the hinted delay.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol violation at the WebSocket layer.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Invalid UTF-8 in a text frame.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Too many malformed frames of our protocol (`limits.max_protocol_errors`).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message above `limits.max_message_bytes`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Internal error.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The subscriber could not keep up and `delivery.slow_consumer = "disconnect"`.
    pub const SLOW_CONSUMER: u16 = 4000;
    /// No pong within `heartbeat.pong_timeout`.
    pub const PONG_TIMEOUT: u16 = 4001;
    /// Closed by an operator (admin API).
    pub const KICKED: u16 = 4002;
    /// The connection's socket write made no progress for `server.write_timeout`.
    pub const WRITE_TIMEOUT: u16 = 4003;
    /// The connection's token expired and was not refreshed with `{"op":"auth"}` in time.
    pub const AUTH_EXPIRED: u16 = 4004;
    /// `auth.mode = "jwt"` and no valid token arrived within `auth.timeout` of connecting.
    pub const AUTH_TIMEOUT: u16 = 4005;
}
