//! What a benchmark message carries and the frames that carry it.
//!
//! Every published message has the same JSON body, the "bench data":
//! `{"t":<send time, ns since the Unix epoch>,"w":<publisher>,"n":<counter>,"p":"xxxx…"}`,
//! padded with `x` so that the whole object is `--payload` bytes long.
//! `t` is what lag is measured from; `w` and `n` let a subscriber detect loss,
//! duplicates and reordering on protocols that carry no sequence number of
//! their own (NATS, the plain broadcast peers): `n` counts per publisher and
//! per topic, starting at 0.
//!
//! Frames are built with `format!` rather than serde because the shapes are
//! fixed and the publisher is on the measured path.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// The fields a subscriber reads back out of the bench data (`p` is skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct BenchData {
    /// Send time in nanoseconds since the Unix epoch.
    pub t: u64,
    /// Index of the publisher that sent the message.
    #[serde(default)]
    pub w: u32,
    /// Per-publisher, per-topic message counter.
    #[serde(default)]
    pub n: u64,
}

impl BenchData {
    /// Reads bench data from a JSON object; `None` for anything else
    /// (including arrays, which serde would otherwise accept for a struct).
    pub fn parse(json: &[u8]) -> Option<Self> {
        if let Some(d) = Self::parse_exact(json) {
            return Some(d);
        }
        let first = json.iter().find(|b| !b.is_ascii_whitespace())?;
        if *first != b'{' {
            return None;
        }
        serde_json::from_slice(json).ok()
    }

    /// Reads the object exactly as [`build_data`] writes it, without a JSON
    /// parser (the bench's one core is what limits the throughput scenario,
    /// and JSON parsing was most of its work); `None` for anything else,
    /// which [`BenchData::parse`] then gives to serde.
    fn parse_exact(json: &[u8]) -> Option<Self> {
        let rest = json.strip_prefix(b"{\"t\":")?;
        let (t, rest) = leading_u64(rest)?;
        let (w, rest) = leading_u64(rest.strip_prefix(b",\"w\":")?)?;
        let (n, rest) = leading_u64(rest.strip_prefix(b",\"n\":")?)?;
        let pad = rest.strip_prefix(b",\"p\":\"")?.strip_suffix(b"\"}")?;
        if pad.iter().any(|&b| b != b'x') {
            return None;
        }
        Some(BenchData {
            t,
            w: u32::try_from(w).ok()?,
            n,
        })
    }
}

/// The unsigned decimal integer `bytes` starts with, and what follows it;
/// `None` without a digit or on overflow.
pub(crate) fn leading_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let mut v = 0u64;
    for &b in &bytes[..digits] {
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some((v, &bytes[digits..]))
}

/// Wall-clock time in nanoseconds since the Unix epoch.
///
/// Publisher and subscribers run in the same process (or at least on the same
/// machine), so wall-clock differences are a valid lag measure.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Builds the bench data object, padded with `x` to exactly `size` bytes.
///
/// When `size` is smaller than the unpadded object, the object is returned
/// with an empty `p` (it cannot shrink below its fields).
pub fn build_data(t_ns: u64, w: u32, n: u64, size: usize) -> String {
    let head = format!("{{\"t\":{t_ns},\"w\":{w},\"n\":{n},\"p\":\"");
    let tail = "\"}";
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut s = String::with_capacity(head.len() + pad + tail.len());
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str(tail);
    s
}

/// The pulsegate topic name for topic index `i`.
pub fn pulsegate_topic(i: usize) -> String {
    format!("bench/{i}")
}

/// The NATS subject for topic index `i`.
pub fn nats_subject(i: usize) -> String {
    format!("bench.{i}")
}

/// `{"op":"pub","id":7,"topic":"bench/0","data":{…}}`; without `id` the server
/// sends no reply.
pub fn pulsegate_pub_frame(id: Option<u64>, topic: &str, data: &str) -> String {
    match id {
        Some(id) => format!("{{\"op\":\"pub\",\"id\":{id},\"topic\":\"{topic}\",\"data\":{data}}}"),
        None => format!("{{\"op\":\"pub\",\"topic\":\"{topic}\",\"data\":{data}}}"),
    }
}

/// `{"op":"sub","id":1,"topic":"bench/0"}`.
pub fn pulsegate_sub_frame(id: u64, topic: &str) -> String {
    format!("{{\"op\":\"sub\",\"id\":{id},\"topic\":\"{topic}\"}}")
}

/// `{"op":"ping","id":4}`.
pub fn pulsegate_ping_frame(id: u64) -> String {
    format!("{{\"op\":\"ping\",\"id\":{id}}}")
}

/// `{"op":"pong","id":4}`, the answer to a server-initiated `ping`.
pub fn pulsegate_pong_frame(id: Option<u64>) -> String {
    match id {
        Some(id) => format!("{{\"op\":\"pong\",\"id\":{id}}}"),
        None => "{\"op\":\"pong\"}".to_owned(),
    }
}

/// `PUB <subject> <len>\r\n<payload>\r\n`.
pub fn nats_pub_frame(subject: &str, data: &str) -> String {
    format!("PUB {subject} {}\r\n{data}\r\n", data.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exact_reader_agrees_with_serde_and_leaves_the_rest_to_it() {
        for size in [0, 40, 64, 100, 1024] {
            let s = build_data(1_732_400_000_123_456_789, 3, 42, size);
            let exact = BenchData::parse_exact(s.as_bytes());
            assert!(exact.is_some(), "{s}");
            assert_eq!(exact, serde_json::from_str(&s).ok(), "{s}");
        }
        // Not what build_data writes: serde decides.
        for other in [
            r#"{"t":1,"w":2,"n":3,"p":"xy"}"#,
            r#"{"t":1, "w":2,"n":3,"p":"xx"}"#,
            r#"{"w":2,"t":1,"n":3,"p":""}"#,
            r#"{"t":1,"w":4294967296,"n":3,"p":""}"#,
            r#"{"t":99999999999999999999,"w":2,"n":3,"p":""}"#,
            r#"{"t":1,"w":2,"n":3,"p":"xx"} "#,
            r#"{"t":-1,"w":2,"n":3,"p":""}"#,
        ] {
            assert_eq!(BenchData::parse_exact(other.as_bytes()), None, "{other}");
            assert_eq!(
                BenchData::parse(other.as_bytes()),
                serde_json::from_str(other).ok(),
                "{other}"
            );
        }
        assert_eq!(
            leading_u64(b"18446744073709551615,"),
            Some((u64::MAX, &b","[..]))
        );
        assert_eq!(leading_u64(b"18446744073709551616"), None);
        assert_eq!(leading_u64(b"x1"), None);
    }

    #[test]
    fn data_is_padded_to_the_requested_size_and_parses_back() {
        for size in [64, 100, 1024] {
            let s = build_data(1_732_400_000_123_456_789, 3, 42, size);
            assert_eq!(s.len(), size, "{s}");
            let d: BenchData = serde_json::from_str(&s).unwrap();
            assert_eq!(
                d,
                BenchData {
                    t: 1_732_400_000_123_456_789,
                    w: 3,
                    n: 42
                }
            );
            assert!(s.ends_with("xx\"}"));
        }
    }

    #[test]
    fn data_smaller_than_its_fields_is_not_truncated() {
        let s = build_data(5, 0, 0, 1);
        assert_eq!(s, r#"{"t":5,"w":0,"n":0,"p":""}"#);
    }

    #[test]
    fn data_without_counters_still_parses() {
        let d = BenchData::parse(br#"{"t":9,"p":"xx"}"#).unwrap();
        assert_eq!(d, BenchData { t: 9, w: 0, n: 0 });
        assert_eq!(BenchData::parse(b"[1,2,3]"), None);
        assert_eq!(BenchData::parse(br#"{"x":1}"#), None);
        assert_eq!(BenchData::parse(b"PUB x"), None);
    }

    #[test]
    fn frames_have_the_documented_shape() {
        assert_eq!(
            pulsegate_pub_frame(Some(7), "bench/0", r#"{"t":1}"#),
            r#"{"op":"pub","id":7,"topic":"bench/0","data":{"t":1}}"#
        );
        assert_eq!(
            pulsegate_pub_frame(None, "bench/1", "{}"),
            r#"{"op":"pub","topic":"bench/1","data":{}}"#
        );
        assert_eq!(
            pulsegate_sub_frame(1, "bench/0"),
            r#"{"op":"sub","id":1,"topic":"bench/0"}"#
        );
        assert_eq!(nats_pub_frame("bench.0", "abc"), "PUB bench.0 3\r\nabc\r\n");
        assert_eq!(pulsegate_pong_frame(Some(4)), r#"{"op":"pong","id":4}"#);
        let v: serde_json::Value = serde_json::from_str(&pulsegate_ping_frame(4)).unwrap();
        assert_eq!(v["op"], "ping");
    }
}
