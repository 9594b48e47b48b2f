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
        if !all_x(pad) {
            return None;
        }
        Some(BenchData {
            t,
            w: u32::try_from(w).ok()?,
            n,
        })
    }
}

/// Whether `pad` is nothing but `x`s. Branch-free within 64-byte chunks
/// (an OR of XORs, which the compiler vectorizes) instead of one compare
/// and branch per byte.
fn all_x(pad: &[u8]) -> bool {
    pad.chunks(64)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | (b ^ b'x')) == 0)
}

/// Digits of a `u64` that can never overflow it: 10^19 − 1 < 2^64 − 1.
const SAFE_DIGITS: usize = 19;

/// The unsigned decimal integer `bytes` starts with, and what follows it;
/// `None` without a digit or on overflow. Leading zeros are read like any
/// other digit (`b"007"` is 7).
///
/// One pass over the digits, with unchecked arithmetic for the first
/// [`SAFE_DIGITS`] digits, which cannot overflow, and checked arithmetic
/// only for a 20th digit and beyond (about twice as fast as counting the
/// digits first and then accumulating with checked arithmetic).
pub(crate) fn leading_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digit = |b: &u8| Some(b.wrapping_sub(b'0')).filter(|d| *d <= 9);
    let mut v = 0u64;
    let mut i = 0usize;
    for d in bytes.iter().take(SAFE_DIGITS).map_while(digit) {
        v = v * 10 + u64::from(d);
        i += 1;
    }
    if i == 0 {
        return None;
    }
    if i == SAFE_DIGITS {
        for d in bytes[i..].iter().map_while(digit) {
            v = v.checked_mul(10)?.checked_add(u64::from(d))?;
            i += 1;
        }
    }
    Some((v, &bytes[i..]))
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

/// Frames that one wall-clock reading may serve as their receive time (see
/// [`RecvClock`]).
pub const CLOCK_REFRESH_FRAMES: u32 = 16;

/// The receive time a subscriber measures lag against, read from the wall
/// clock lazily and at most once per [`CLOCK_REFRESH_FRAMES`] frames instead
/// of once per frame (the read was ~9 % of the bench's CPU in the
/// throughput scenario).
///
/// A reading is taken when a measured delivery needs a receive time and the
/// last reading
/// - was [expired](RecvClock::expire) (the caller waited for the socket, or
///   may have, since it was taken),
/// - has already served [`CLOCK_REFRESH_FRAMES`] frames, or
/// - is older than the message's own send time `t` — a reading that stale
///   would otherwise turn the lag into 0.
///
/// A frame that reuses a reading was taken out of the socket's buffer after
/// it, so its lag can only be understated, and by no more than the time the
/// subscriber spent on the (at most 15) frames handled since the reading;
/// the caller never awaits in between without expiring the reading.
#[derive(Debug)]
pub struct RecvClock<F = fn() -> u64> {
    read: F,
    now: u64,
    /// Frames the reading in `now` has served, the current one included;
    /// more than [`CLOCK_REFRESH_FRAMES`] means it is expired.
    served: u32,
}

impl<F: FnMut() -> u64> RecvClock<F> {
    /// A clock that reads time from `read` (ns since the Unix epoch;
    /// [`now_ns`] outside tests). It starts expired.
    pub fn new(read: F) -> Self {
        Self {
            read,
            now: 0,
            served: u32::MAX,
        }
    }

    /// Forgets the current reading: the caller has waited, or may have.
    pub fn expire(&mut self) {
        self.served = u32::MAX;
    }

    /// Starts the next received frame.
    pub fn next_frame(&mut self) {
        self.served = self.served.saturating_add(1);
    }

    /// The receive time of a message of the current frame that was sent at
    /// `t_ns`: the current reading, or a new one when the current reading is
    /// expired, has served its frames, or is earlier than `t_ns`.
    pub fn recv_ns(&mut self, t_ns: u64) -> u64 {
        if self.served > CLOCK_REFRESH_FRAMES || self.now < t_ns {
            self.now = (self.read)();
            self.served = 1;
        }
        self.now
    }
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

    /// `leading_u64` as it was before the one-pass version: the reference.
    fn leading_u64_reference(bytes: &[u8]) -> Option<(u64, &[u8])> {
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

    #[test]
    fn leading_u64_at_the_digit_count_edges() {
        type Case<'a> = (&'a [u8], Option<(u64, &'a [u8])>);
        let cases: &[Case<'_>] = &[
            (b"", None),
            (b",1", None),
            (b"0", Some((0, b""))),
            (b"7,", Some((7, b","))),
            (b"12345678", Some((12_345_678, b""))),
            (b"123456789}", Some((123_456_789, b"}"))),
            (b"1234567/", Some((1_234_567, b"/"))),
            (b"12345678:", Some((12_345_678, b":"))),
            // 19 digits: the largest count that cannot overflow.
            (
                b"9999999999999999999",
                Some((9_999_999_999_999_999_999, b"")),
            ),
            (
                b"1732400000123456789,\"w\"",
                Some((1_732_400_000_123_456_789, b",\"w\"")),
            ),
            // 20 digits: checked.
            (
                b"10000000000000000000",
                Some((10_000_000_000_000_000_000, b"")),
            ),
            (b"18446744073709551615", Some((u64::MAX, b""))),
            (b"18446744073709551616", None),
            (b"18446744073709551620", None),
            (b"99999999999999999999", None),
            (b"184467440737095516150", None),
            // Leading zeros are digits like any other, as before.
            (b"007x", Some((7, b"x"))),
            (b"0000000000000000000000000001,", Some((1, b","))),
            (
                b"00000000000000000018446744073709551615",
                Some((u64::MAX, b"")),
            ),
        ];
        for (input, want) in cases {
            let text = String::from_utf8_lossy(input);
            assert_eq!(leading_u64(input), *want, "{text}");
            assert_eq!(leading_u64_reference(input), *want, "{text}");
        }
    }

    #[test]
    fn leading_u64_agrees_with_the_reference_on_random_input() {
        let alphabet = b"0123456789/:,x\"";
        let mut rng = fastrand::Rng::with_seed(7);
        let mut buf = Vec::new();
        for _ in 0..200_000 {
            buf.clear();
            let digits = rng.usize(0..=24);
            for _ in 0..digits {
                // Mostly digits, sometimes something next to '0' and '9'.
                buf.push(if rng.u8(0..16) == 0 {
                    alphabet[rng.usize(..alphabet.len())]
                } else {
                    b'0' + rng.u8(0..10)
                });
            }
            for _ in 0..rng.usize(0..4) {
                buf.push(alphabet[rng.usize(..alphabet.len())]);
            }
            assert_eq!(
                leading_u64(&buf),
                leading_u64_reference(&buf),
                "{}",
                String::from_utf8_lossy(&buf)
            );
        }
        for v in [0, 1, 9, 10, 99_999_999, 100_000_000, u64::MAX - 1, u64::MAX] {
            for _ in 0..1000 {
                let v = if v == 0 { rng.u64(..) } else { v };
                let s = format!("{v},");
                assert_eq!(leading_u64(s.as_bytes()), Some((v, &b","[..])), "{s}");
            }
        }
    }

    #[test]
    fn padding_check_covers_every_byte() {
        for len in [0, 1, 15, 16, 17, 63, 64, 65, 200, 1000] {
            let pad = vec![b'x'; len];
            assert!(all_x(&pad), "{len}");
            for pos in 0..len {
                let mut bad = pad.clone();
                bad[pos] = b'y';
                assert!(!all_x(&bad), "{len} {pos}");
                bad[pos] = b'x' ^ 0x80;
                assert!(!all_x(&bad), "{len} {pos}");
            }
        }
        // Through parse_exact: one stray byte anywhere in a long pad.
        let s = build_data(1, 2, 3, 300);
        let at = s.len() - 100;
        let bad = format!("{}X{}", &s[..at], &s[at + 1..]);
        assert_eq!(BenchData::parse_exact(bad.as_bytes()), None);
        assert_eq!(
            BenchData::parse(bad.as_bytes()),
            serde_json::from_str(&bad).ok()
        );
    }

    #[test]
    fn the_receive_clock_is_read_once_per_refresh_bound() {
        use std::cell::Cell;
        let reads = Cell::new(0u64);
        // Each read returns 1000 × the number of reads so far.
        let mut c = RecvClock::new(|| {
            reads.set(reads.get() + 1);
            reads.get() * 1000
        });
        // Starts expired: the first frame reads.
        c.next_frame();
        assert_eq!(c.recv_ns(0), 1000);
        assert_eq!(c.recv_ns(500), 1000, "same frame, same reading");
        for _ in 1..CLOCK_REFRESH_FRAMES {
            c.next_frame();
            assert_eq!(c.recv_ns(0), 1000);
        }
        assert_eq!(reads.get(), 1);
        // The 17th frame reads again.
        c.next_frame();
        assert_eq!(c.recv_ns(0), 2000);
        // Frames without a measured delivery still age the reading.
        for _ in 0..CLOCK_REFRESH_FRAMES {
            c.next_frame();
        }
        assert_eq!(c.recv_ns(0), 3000);
        // A message sent after the reading forces a new one.
        c.next_frame();
        assert_eq!(c.recv_ns(3000), 3000);
        assert_eq!(c.recv_ns(3001), 4000);
        assert_eq!(reads.get(), 4);
        // Expired: the next delivery reads even on the same frame.
        c.expire();
        assert_eq!(c.recv_ns(0), 5000);
        c.expire();
        c.next_frame();
        assert_eq!(c.recv_ns(0), 6000);
        // A reading that stays earlier than t is taken every time; lag
        // saturates at 0 as before.
        assert_eq!(c.recv_ns(u64::MAX), 7000);
        assert_eq!(c.recv_ns(u64::MAX), 8000);
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
