//! Server-side WebSocket framing (RFC 6455) and permessage-deflate
//! (RFC 7692), without I/O.
//!
//! Why pulsegate frames its own sockets instead of using a WebSocket crate
//! (docs/ARCHITECTURE.md, "WebSocket layer"): a gateway sends the same
//! message to many connections, so a compressed message must be
//! compressed once and the same bytes written to every subscriber that
//! negotiated compression; the crates we measured either reject RSV1
//! (tokio-websockets) or compress inside each connection with no way to
//! hand them an already-compressed payload (yawc). The rest follows from
//! owning the bytes: a connection holds no buffer while idle, and a batch
//! of frames leaves in one vectored write.
//!
//! - [`Decoder`] turns the bytes a client sent into [`Message`]s, enforcing
//!   every RFC 6455 rule a server must (masking, reserved bits and opcodes,
//!   control frame size, fragmentation order, UTF-8 of text and close
//!   reasons, close codes) and the message size limit, and inflating
//!   compressed messages.
//! - [`header`] encodes the header of a frame the server sends.
//! - [`deflate`] negotiates the extension and compresses payloads.

#![warn(missing_docs)]

pub mod deflate;
mod frame;

pub use frame::{header, Decoder, Header, Message, OpCode, ProtocolError};

/// Whether a close code received from a peer is one RFC 6455 §7.4 allows
/// on the wire (1000–1003, 1007–1014, 3000–4999).
pub fn close_code_valid(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}
