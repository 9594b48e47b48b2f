//! The one error type of the client, [`ClientError`].
//!
//! Each variant names the step that failed (URL, TLS setup, connecting, the
//! server's reply, the connection closing) so a caller can `match` on it, and
//! its message says what to check. [`ClientError::is_retryable`] is the single
//! place that decides whether [`crate::Subscriber`] reconnects after an error
//! or gives up at once.

use std::time::Duration;

use pulsegate_proto::{close_code, ErrorCode};

/// Everything that can go wrong in the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server URL is not a `ws://` or `wss://` URL with a host.
    #[error("invalid server URL `{url}`: {reason} (expected e.g. ws://127.0.0.1:8080/ws or wss://host/ws)")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS configuration could not be built (e.g. an unreadable CA file).
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The TCP connection, TLS handshake or WebSocket upgrade failed.
    #[error("could not connect to {url}: {source}")]
    Connect {
        /// The URL connected to.
        url: String,
        /// The underlying failure.
        #[source]
        source: tokio_websockets::Error,
    },
    /// A step did not finish in time.
    #[error("timed out after {after:?} {what}")]
    Timeout {
        /// The step, e.g. `waiting for the reply to pub`.
        what: &'static str,
        /// The configured limit that was hit.
        after: Duration,
    },
    /// Reading from or writing to an established WebSocket failed.
    #[error("WebSocket error: {0}")]
    WebSocket(#[from] tokio_websockets::Error),
    /// The server sent a frame this client cannot decode.
    #[error("undecodable frame from the server: {0}")]
    Decode(String),
    /// The server broke the protocol (e.g. its first frame was not `welcome`).
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    /// The server answered a request with `{"op":"error"}`.
    #[error("the server refused the request: {} ({message})", code.as_str())]
    Server {
        /// Machine-readable code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The connection was closed (by the server, or lost without a close frame).
    #[error("{}", describe_close(*code, reason))]
    Closed {
        /// The close code, when the server sent a close frame with one.
        code: Option<u16>,
        /// The close reason (may be empty).
        reason: String,
    },
    /// [`crate::Subscriber`] stopped reconnecting after
    /// `ClientOptions::max_reconnect_attempts` consecutive failures.
    #[error("gave up after {attempts} reconnect attempts; last error: {last}")]
    GaveUp {
        /// How many reconnects were tried.
        attempts: u32,
        /// The error that ended the last attempt.
        #[source]
        last: Box<ClientError>,
    },
    /// [`crate::Subscriber::next`] was called again after it returned a fatal error.
    #[error("the subscriber stopped after an earlier fatal error; create a new one")]
    Stopped,
}

impl ClientError {
    /// Whether trying again later (on a new connection) may succeed.
    ///
    /// Configuration mistakes (URL, TLS files) and refusals that a retry
    /// cannot change (`bad_request`, `forbidden`, …) are not retryable;
    /// network failures, closes, timeouts and `unavailable` / `limit` /
    /// `internal` replies are.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::InvalidUrl { .. } | ClientError::Tls(_) | ClientError::Stopped => false,
            ClientError::GaveUp { .. } => false,
            ClientError::Server { code, .. } => matches!(
                code,
                ErrorCode::Unavailable | ErrorCode::Limit | ErrorCode::Internal
            ),
            ClientError::Connect { .. }
            | ClientError::Timeout { .. }
            | ClientError::WebSocket(_)
            | ClientError::Decode(_)
            | ClientError::Protocol(_)
            | ClientError::Closed { .. } => true,
        }
    }

    /// The close code and reason, when this error is a close.
    pub fn close(&self) -> Option<(Option<u16>, &str)> {
        match self {
            ClientError::Closed { code, reason } => Some((*code, reason)),
            _ => None,
        }
    }
}

/// A name for the close codes pulsegate uses, for messages.
pub fn close_code_name(code: u16) -> &'static str {
    match code {
        1000 => "normal closure",
        close_code::GOING_AWAY => "going away",
        close_code::PROTOCOL_ERROR => "protocol error",
        close_code::INVALID_PAYLOAD => "invalid payload",
        close_code::POLICY_VIOLATION => "policy violation",
        close_code::MESSAGE_TOO_BIG => "message too big",
        close_code::INTERNAL_ERROR => "internal error",
        close_code::SLOW_CONSUMER => "slow consumer",
        close_code::PONG_TIMEOUT => "pong timeout",
        close_code::KICKED => "kicked",
        close_code::WRITE_TIMEOUT => "write timeout",
        _ => "unknown code",
    }
}

fn describe_close(code: Option<u16>, reason: &str) -> String {
    let mut s = match code {
        Some(c) => format!(
            "connection closed by the server with code {c} ({})",
            close_code_name(c)
        ),
        None => "connection lost without a close code".to_string(),
    };
    if !reason.is_empty() {
        s.push_str(": ");
        s.push_str(reason);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_messages_name_the_code() {
        let e = ClientError::Closed {
            code: Some(4000),
            reason: "queue full".into(),
        };
        assert_eq!(
            e.to_string(),
            "connection closed by the server with code 4000 (slow consumer): queue full"
        );
        let e = ClientError::Closed {
            code: None,
            reason: String::new(),
        };
        assert_eq!(e.to_string(), "connection lost without a close code");
    }

    #[test]
    fn retryability() {
        let server = |code| ClientError::Server {
            code,
            message: String::new(),
        };
        assert!(!server(ErrorCode::BadRequest).is_retryable());
        assert!(!server(ErrorCode::Forbidden).is_retryable());
        assert!(server(ErrorCode::Unavailable).is_retryable());
        assert!(server(ErrorCode::Limit).is_retryable());
        assert!(!ClientError::Tls("x".into()).is_retryable());
        assert!(ClientError::Closed {
            code: Some(1001),
            reason: String::new()
        }
        .is_retryable());
    }
}
