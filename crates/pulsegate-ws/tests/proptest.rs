//! Property tests of the frame decoder: random message streams decode to
//! exactly what was sent whatever the read sizes, and no input panics.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::sample::Index;
use pulsegate_ws::deflate::{self, Params};
use pulsegate_ws::{close_code_valid, Decoder, Message, ProtocolError};

const TEXT: u8 = 1;
const BINARY: u8 = 2;
const CONT: u8 = 0;
const CLOSE: u8 = 8;
const PING: u8 = 9;
const PONG: u8 = 10;

/// Encodes one masked client frame.
fn frame(opcode: u8, fin: bool, rsv1: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode];
    raw_frame_into(&mut out, true, payload, mask);
    out
}

/// Appends the length, mask key (when `masked`) and payload of a frame.
fn raw_frame_into(out: &mut Vec<u8>, masked: bool, payload: &[u8], mask: [u8; 4]) {
    let bit = if masked { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(bit | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if masked {
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
}

/// Deterministic pseudo-random bytes (xorshift), for payloads too large to
/// generate element by element.
fn prng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// A large payload: random bytes, a repeated pattern (compressible), or
/// text mixing 1- to 4-byte code points.
fn big_payload(text: bool, seed: u64, len: usize, repetitive: bool) -> Vec<u8> {
    let mut next = prng(seed);
    if text {
        let alphabet = [
            'a', 'Z', ' ', '\n', 'é', 'ß', 'Ж', '€', '日', '語', '🎉', '𝄞',
        ];
        let unit_len = if repetitive {
            1 + (seed % 40) as usize
        } else {
            len
        };
        let unit: String = (0..unit_len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        let mut s = String::new();
        while s.len() < len {
            s.push_str(&unit);
        }
        // Cut back to a character boundary at or below `len`.
        let mut end = len.min(s.len());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.into_bytes()
    } else if repetitive {
        let unit: Vec<u8> = (0..1 + seed % 64).map(|_| next() as u8).collect();
        unit.iter().copied().cycle().take(len).collect()
    } else {
        (0..len).map(|_| next() as u8).collect()
    }
}

fn payload(text: bool) -> BoxedStrategy<Vec<u8>> {
    let small = if text {
        prop::collection::vec(any::<char>(), 0..200)
            .prop_map(|cs| cs.into_iter().collect::<String>().into_bytes())
            .boxed()
    } else {
        prop::collection::vec(any::<u8>(), 0..300).boxed()
    };
    let big = (any::<u64>(), 0usize..20_000, any::<bool>())
        .prop_map(move |(seed, len, rep)| big_payload(text, seed, len, rep));
    prop_oneof![3 => small, 1 => big].boxed()
}

#[derive(Debug, Clone)]
enum Control {
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

fn control() -> impl Strategy<Value = Control> {
    let p = prop::collection::vec(any::<u8>(), 0..=125);
    prop_oneof![p.clone().prop_map(Control::Ping), p.prop_map(Control::Pong)]
}

#[derive(Debug, Clone)]
struct Spec {
    text: bool,
    payload: Vec<u8>,
    compressed: bool,
    level: u32,
    /// Fragment boundaries, as positions in the (possibly compressed) payload.
    cuts: Vec<Index>,
    /// Control frames after each fragment (`cuts.len() + 1` slots).
    controls: Vec<Vec<Control>>,
    mask: [u8; 4],
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        any::<bool>(),
        any::<bool>(),
        0u32..=9,
        0usize..5,
        any::<[u8; 4]>(),
    )
        .prop_flat_map(|(text, compressed, level, n_cuts, mask)| {
            (
                payload(text),
                prop::collection::vec(any::<Index>(), n_cuts),
                prop::collection::vec(prop::collection::vec(control(), 0..3), n_cuts + 1),
            )
                .prop_map(move |(payload, cuts, controls)| Spec {
                    text,
                    payload,
                    compressed,
                    level,
                    cuts,
                    controls,
                    mask,
                })
        })
}

fn control_frame(c: &Control, mask: [u8; 4]) -> (Vec<u8>, Message) {
    match c {
        Control::Ping(p) => (
            frame(PING, true, false, p, mask),
            Message::Ping(Bytes::copy_from_slice(p)),
        ),
        Control::Pong(p) => (
            frame(PONG, true, false, p, mask),
            Message::Pong(Bytes::copy_from_slice(p)),
        ),
    }
}

/// The wire bytes of a stream of messages, and the messages the decoder
/// must return for it.
fn encode_stream(specs: &[Spec], window_bits: u8, close: bool) -> (Vec<u8>, Vec<Message>) {
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for s in specs {
        let body = if s.compressed {
            deflate::compress(&s.payload, window_bits, s.level).to_vec()
        } else {
            s.payload.clone()
        };
        let mut cuts: Vec<usize> = s.cuts.iter().map(|i| i.index(body.len() + 1)).collect();
        cuts.sort_unstable();
        let mut bounds = vec![0];
        bounds.extend(cuts);
        bounds.push(body.len());
        let n = bounds.len() - 1;
        for i in 0..n {
            let op = if i == 0 {
                if s.text {
                    TEXT
                } else {
                    BINARY
                }
            } else {
                CONT
            };
            let last = i == n - 1;
            wire.extend(frame(
                op,
                last,
                i == 0 && s.compressed,
                &body[bounds[i]..bounds[i + 1]],
                s.mask,
            ));
            if last {
                let b = Bytes::copy_from_slice(&s.payload);
                expected.push(if s.text {
                    Message::Text(b)
                } else {
                    Message::Binary(b)
                });
            }
            for c in &s.controls[i] {
                let (f, m) = control_frame(c, s.mask);
                wire.extend(f);
                expected.push(m);
            }
        }
    }
    if close {
        let mut p = 1000u16.to_be_bytes().to_vec();
        p.extend_from_slice("au revoir".as_bytes());
        wire.extend(frame(CLOSE, true, false, &p, [1, 2, 3, 4]));
        expected.push(Message::Close(Some((1000, "au revoir".into()))));
    }
    (wire, expected)
}

/// Feeds `wire` to `dec` in chunks of the given sizes (cycled), decoding
/// after each chunk until `Ok(None)`; stops at the first error.
fn decode_chunked(
    dec: &mut Decoder,
    wire: &[u8],
    chunks: &[usize],
    check_need: bool,
) -> (Vec<Message>, Option<ProtocolError>, usize) {
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let (mut pos, mut ci) = (0, 0);
    loop {
        if pos < wire.len() {
            let n = chunks[ci % chunks.len()].clamp(1, wire.len() - pos);
            ci += 1;
            buf.extend_from_slice(&wire[pos..pos + n]);
            pos += n;
        }
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(m)) => got.push(m),
                Ok(None) => break,
                Err(e) => return (got, Some(e), buf.len()),
            }
        }
        let need = dec.need();
        assert!(need > buf.len(), "need {need} with {} buffered", buf.len());
        if check_need {
            // The next frame is complete within what the sender still sends:
            // the decoder never asks for more than that.
            assert!(
                pos == wire.len() || need <= buf.len() + (wire.len() - pos),
                "need {need}, buffered {}, left {}",
                buf.len(),
                wire.len() - pos
            );
        }
        if pos == wire.len() {
            return (got, None, buf.len());
        }
    }
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        prop::collection::vec(1usize..8, 1..16),
        prop::collection::vec(1usize..300, 1..16),
        prop::collection::vec(1usize..70_000, 1..4),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn random_streams_round_trip(
        specs in prop::collection::vec(spec(), 0..6),
        chunks in chunk_sizes(),
        window_bits in 9u8..=15,
        no_context_takeover in any::<bool>(),
        close in any::<bool>(),
    ) {
        let (wire, expected) = encode_stream(&specs, window_bits, close);
        let params = Params {
            server_window_bits: 15,
            client_window_bits: window_bits,
            client_no_context_takeover: no_context_takeover,
        };
        let mut dec = Decoder::new(1 << 20, Some(params.inflater()));
        let (got, err, left) = decode_chunked(&mut dec, &wire, &chunks, true);
        prop_assert_eq!(err, None);
        prop_assert_eq!(left, 0);
        prop_assert!(dec.is_idle());
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn uncompressed_streams_round_trip_without_inflater(
        specs in prop::collection::vec(spec(), 0..6),
        chunks in chunk_sizes(),
    ) {
        let specs: Vec<Spec> = specs
            .into_iter()
            .map(|s| Spec { compressed: false, ..s })
            .collect();
        let (wire, expected) = encode_stream(&specs, 15, false);
        let mut dec = Decoder::new(1 << 20, None);
        let (got, err, left) = decode_chunked(&mut dec, &wire, &chunks, true);
        prop_assert_eq!(err, None);
        prop_assert_eq!(left, 0);
        prop_assert!(dec.is_idle());
        prop_assert_eq!(dec.buffered(), 0);
        prop_assert_eq!(got, expected);
    }
}

/// What may come out of a decoder, whatever it is fed.
fn check_message(m: &Message, limit: usize) {
    match m {
        Message::Text(b) => {
            assert!(std::str::from_utf8(b).is_ok(), "text not UTF-8: {b:?}");
            assert!(b.len() <= limit);
        }
        Message::Binary(b) => assert!(b.len() <= limit),
        Message::Ping(b) | Message::Pong(b) => assert!(b.len() <= 125),
        Message::Close(Some((code, reason))) => {
            assert!(close_code_valid(*code), "close code {code}");
            assert!(reason.len() <= 123);
        }
        Message::Close(None) => {}
    }
}

fn decoder(inflater: Option<(u8, bool)>, limit: usize) -> Decoder {
    Decoder::new(
        limit,
        inflater.map(|(bits, cnct)| {
            Params {
                server_window_bits: 15,
                client_window_bits: bits,
                client_no_context_takeover: cnct,
            }
            .inflater()
        }),
    )
}

/// Decodes `wire` whole and in chunks: both must give the same messages
/// and the same error, and nothing panics.
fn differential(wire: &[u8], inflater: Option<(u8, bool)>, limit: usize, chunks: &[usize]) {
    let mut whole = decoder(inflater, limit);
    let (a, ea, _) = decode_chunked(&mut whole, wire, &[wire.len().max(1)], false);
    let mut chunked = decoder(inflater, limit);
    let (b, eb, _) = decode_chunked(&mut chunked, wire, chunks, false);
    for m in &a {
        check_message(m, limit);
    }
    if let Some(e) = &ea {
        assert!(matches!(e.close_code(), 1002 | 1007 | 1009));
        assert!(!e.to_string().is_empty());
    }
    assert_eq!(a, b);
    assert_eq!(ea, eb);
}

/// A frame with arbitrary header bits, but a length that matches its
/// payload, which is sometimes valid deflate data.
#[derive(Debug, Clone)]
struct AnyFrame {
    b0: u8,
    masked: bool,
    payload: Vec<u8>,
    deflate: bool,
    mask: [u8; 4],
}

fn any_frame() -> impl Strategy<Value = AnyFrame> {
    let opcode = prop_oneof![
        4 => prop::sample::select(vec![CONT, TEXT, BINARY, CLOSE, PING, PONG]),
        1 => 0u8..16,
    ];
    let flags = prop_oneof![
        4 => prop::sample::select(vec![0x80u8, 0x00, 0xc0, 0x40]),
        1 => prop::sample::select(vec![0x10u8, 0x20, 0x30, 0xf0]),
    ];
    let payload = prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..130),
        1 => prop::collection::vec(any::<u8>(), 0..2000),
        1 => "[a-zé€🎉]{0,40}".prop_map(String::into_bytes),
    ];
    (
        opcode,
        flags,
        prop::bool::weighted(0.95),
        payload,
        prop::bool::weighted(0.3),
        any::<[u8; 4]>(),
    )
        .prop_map(|(op, flags, masked, payload, deflate, mask)| AnyFrame {
            b0: flags | op,
            masked,
            payload,
            deflate,
            mask,
        })
}

fn encode_any(frames: &[AnyFrame]) -> Vec<u8> {
    let mut wire = Vec::new();
    for f in frames {
        wire.push(f.b0);
        let payload = if f.deflate {
            deflate::compress(&f.payload, 15, 6).to_vec()
        } else {
            f.payload.clone()
        };
        raw_frame_into(&mut wire, f.masked, &payload, f.mask);
    }
    wire
}

fn inflater_choice() -> impl Strategy<Value = Option<(u8, bool)>> {
    prop::option::of((9u8..=15, any::<bool>()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        inflater in inflater_choice(),
        limit in prop::sample::select(vec![0usize, 1, 125, 126, 1000, 4096]),
        chunks in prop::collection::vec(1usize..64, 1..8),
    ) {
        differential(&bytes, inflater, limit, &chunks);
    }

    #[test]
    fn arbitrary_frames_never_panic(
        frames in prop::collection::vec(any_frame(), 0..12),
        inflater in inflater_choice(),
        limit in prop::sample::select(vec![0usize, 1, 125, 126, 1000, 4096]),
        chunks in prop::collection::vec(1usize..64, 1..8),
    ) {
        differential(&encode_any(&frames), inflater, limit, &chunks);
    }
}
