//! The frames of the pulsegate protocol, independent of the encoding.
//!
//! Client → server: [`ClientFrame`]. Server → client: [`ServerFrame`] for
//! control traffic (welcome, ok, error, pong) — data frames (`op:"msg"`) are
//! encoded directly by [`crate::codec::Codec::encode_msg`] because they are
//! the hot path and are encoded once per message, not once per subscriber.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A request id chosen by the client and echoed in the reply: a number or a string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Id {
    /// Numeric id.
    Num(u64),
    /// String id.
    Str(String),
}

/// Where a client stands on one concrete topic: the history lifetime it saw
/// (`epoch`) and the last `seq` it received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The epoch of the topic's history the client saw.
    pub epoch: String,
    /// The last sequence number the client received (0 = none).
    pub seq: u64,
}

/// A decoded client request.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    /// `{"op":"sub","topic":P,"snapshot":bool,"since":{topic:{epoch,seq}}}`
    Sub {
        /// Echoed id.
        id: Option<Id>,
        /// Pattern text (validated by the server against its limits).
        topic: String,
        /// Send the last value of every matching topic after the `ok`.
        snapshot: bool,
        /// Recovery positions per concrete topic, sorted by topic.
        since: Vec<(String, Position)>,
    },
    /// `{"op":"unsub","topic":P}`
    Unsub {
        /// Echoed id.
        id: Option<Id>,
        /// The pattern exactly as subscribed.
        topic: String,
    },
    /// `{"op":"pub","topic":T,"data":V}`
    Pub {
        /// Echoed id.
        id: Option<Id>,
        /// Concrete topic (validated by the server).
        topic: String,
        /// The payload as canonical JSON text, whatever the subprotocol.
        data: Bytes,
    },
    /// `{"op":"ping"}` — an application-level ping for browsers.
    Ping {
        /// Echoed id.
        id: Option<Id>,
    },
    /// `{"op":"auth","token":JWT}` — authenticate, or refresh a token before it expires.
    Auth {
        /// Echoed id.
        id: Option<Id>,
        /// The JWT (a secret: never logged).
        token: String,
    },
}

impl ClientFrame {
    /// The request id, if any.
    pub fn id(&self) -> Option<&Id> {
        match self {
            ClientFrame::Sub { id, .. }
            | ClientFrame::Unsub { id, .. }
            | ClientFrame::Pub { id, .. }
            | ClientFrame::Ping { id }
            | ClientFrame::Auth { id, .. } => id.as_ref(),
        }
    }
}

/// Error codes of `{"op":"error"}` replies (see docs/protocol.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed frame, missing or invalid field, bad topic.
    BadRequest,
    /// Not allowed (auth, ACL, origin).
    Forbidden,
    /// Unknown subscription or topic.
    NotFound,
    /// A configured limit was hit (subscriptions, rate, size).
    Limit,
    /// `op` not known.
    UnknownOp,
    /// The server cannot take the request now (draining, backplane down).
    Unavailable,
    /// Internal error.
    Internal,
}

impl ErrorCode {
    /// The wire name, e.g. `bad_request`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Limit => "limit",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// Fields of an `ok` reply; only the ones that apply are sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Echoed id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    /// For `pub`: the topic published to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// For `pub`: the sequence number assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// For `pub`: the topic's epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// For `sub` with `since`: topics whose missed messages follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<Vec<String>>,
    /// For `sub` with `since`: topics that cannot be recovered (resync them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_recovered: Option<Vec<String>>,
    /// For `auth`: the token's `exp` (seconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
}

/// A control frame from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ServerFrame {
    /// First frame on every connection.
    Welcome {
        /// Connection id (as in the admin API and logs).
        conn: String,
        /// Node name.
        node: String,
        /// Server WebSocket ping interval.
        ping_interval_ms: u64,
    },
    /// Success reply.
    Ok(Reply),
    /// Error reply; the connection stays open.
    Error {
        /// Echoed id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
    /// Reply to an application `ping`.
    Pong {
        /// Echoed id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        /// Server time, µs since the Unix epoch.
        ts: u64,
    },
    /// A data message (decoding side; the server encodes these with
    /// [`crate::codec::Codec::encode_msg`]).
    Msg {
        /// Concrete topic.
        topic: String,
        /// Per-topic sequence number, +1 per message.
        seq: u64,
        /// History lifetime.
        epoch: String,
        /// Server ingress time, µs since the Unix epoch.
        ts: u64,
        /// Payload.
        data: serde_json::Value,
    },
}
