//! A published message after the hub stamped it with `seq`, `epoch` and `ts`.
//!
//! Cost model: the payload is parsed once at ingress (to validate it) and the
//! data frame is encoded at most once per codec, lazily, by the first
//! subscriber that needs it; every other subscriber clones the `Bytes`
//! (a reference-count increment).

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pulsegate_proto::Codec;

/// Microseconds since the Unix epoch, the unit of `ts` on the wire.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// One stamped message, shared by history, last-value cache and every queue.
#[derive(Debug)]
pub struct Message {
    /// Concrete topic.
    pub topic: Arc<str>,
    /// Per-topic sequence number, starting at 1, +1 per message.
    pub seq: u64,
    /// The lifetime of this topic's history.
    pub epoch: Arc<str>,
    /// Server ingress time, µs since the Unix epoch.
    pub ts: u64,
    /// Payload as JSON text.
    pub data: Bytes,
    json: OnceLock<Bytes>,
    msgpack: OnceLock<Bytes>,
}

impl Message {
    /// Builds a stamped message.
    pub fn new(topic: Arc<str>, seq: u64, epoch: Arc<str>, ts: u64, data: Bytes) -> Message {
        Message {
            topic,
            seq,
            epoch,
            ts,
            data,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
        }
    }

    /// The data frame for `codec`, encoded on first use and then shared.
    pub fn frame(&self, codec: Codec) -> Bytes {
        self.frame_ref(codec).clone()
    }

    /// [`Message::frame`] without taking a reference.
    pub fn frame_ref(&self, codec: Codec) -> &Bytes {
        let cell = match codec {
            Codec::Json => &self.json,
            Codec::MsgPack => &self.msgpack,
        };
        cell.get_or_init(|| {
            codec.encode_msg(&self.topic, self.seq, &self.epoch, self.ts, &self.data)
        })
    }

    /// Approximate retained size in bytes (payload plus encoded frames).
    pub fn retained_bytes(&self) -> usize {
        self.data.len()
            + self.json.get().map_or(0, Bytes::len)
            + self.msgpack.get().map_or(0, Bytes::len)
            + self.topic.len()
    }
}

/// Consecutive messages of one topic published together (a publisher's
/// pipelined burst, see [`crate::Hub::publish_many`]), queued as one entry
/// per subscriber. Besides each message's own frame, a run keeps, per
/// codec, its frames already wrapped for the wire and back to back, built
/// once by the first subscriber that writes the run and shared by all: a
/// connection writes the whole run with one copy, or none.
#[derive(Debug)]
pub struct Run {
    /// The messages, in `seq` order.
    pub msgs: Vec<Arc<Message>>,
    json: RunCodec,
    msgpack: RunCodec,
}

#[derive(Debug, Default)]
struct RunCodec {
    /// Sum of the messages' frame lengths (what the queue bounds count).
    len: OnceLock<usize>,
    /// The frames as written to the socket.
    wire: OnceLock<Bytes>,
}

impl Run {
    /// A run of `msgs` (at least one).
    pub fn new(msgs: Vec<Arc<Message>>) -> Run {
        debug_assert!(!msgs.is_empty());
        Run {
            msgs,
            json: RunCodec::default(),
            msgpack: RunCodec::default(),
        }
    }

    fn codec(&self, codec: Codec) -> &RunCodec {
        match codec {
            Codec::Json => &self.json,
            Codec::MsgPack => &self.msgpack,
        }
    }

    /// Total length of the messages' frames for `codec`.
    pub fn frames_len(&self, codec: Codec) -> usize {
        *self
            .codec(codec)
            .len
            .get_or_init(|| self.msgs.iter().map(|m| m.frame_ref(codec).len()).sum())
    }

    /// The frames for `codec` as the transport writes them, built by
    /// `frame` on first use and then shared.
    pub fn wire(&self, codec: Codec, frame: impl FnOnce(&[Arc<Message>]) -> Bytes) -> &Bytes {
        self.codec(codec).wire.get_or_init(|| frame(&self.msgs))
    }
}
