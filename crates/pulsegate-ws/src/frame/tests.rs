//! Unit tests of the frame decoder, the header encoder and
//! permessage-deflate (negotiation, compression, inflation).

use super::*;
use crate::deflate::{self, Params, CLIENT_WINDOW_BITS};
use flate2::{Compress, Compression, FlushCompress};

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const LIMIT: usize = 64 * 1024;

const TEXT: u8 = 1;
const BINARY: u8 = 2;
const CONT: u8 = 0;
const CLOSE: u8 = 8;
const PING: u8 = 9;
const PONG: u8 = 10;

/// Encodes one client frame with the given first header byte, masked with
/// `mask` (or unmasked when `None`), the length in its minimal form.
fn raw_frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![b0];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked client frame.
fn frame_with_mask(opcode: u8, fin: bool, rsv1: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let b0 = (u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode;
    raw_frame(b0, payload, Some(mask))
}

/// A masked client frame with the default mask.
fn frame(opcode: u8, fin: bool, rsv1: bool, payload: &[u8]) -> Vec<u8> {
    frame_with_mask(opcode, fin, rsv1, payload, MASK)
}

/// Only the header of a masked client frame announcing `len` bytes, in the
/// given length form (7, 16 or 64 bits), mask key included.
fn header_only(b0: u8, len: u64, form: u8) -> Vec<u8> {
    let mut out = vec![b0];
    match form {
        7 => out.push(0x80 | len as u8),
        16 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out
}

fn plain() -> Decoder {
    Decoder::new(LIMIT, None)
}

fn params(client_window_bits: u8, client_no_context_takeover: bool) -> Params {
    Params {
        server_window_bits: 15,
        client_window_bits,
        client_no_context_takeover,
    }
}

fn compressing() -> Decoder {
    Decoder::new(LIMIT, Some(params(15, true).inflater()))
}

/// Decodes everything in `bytes`: the messages up to the first error (or
/// to the end of the input), and the error if there was one.
fn decode_all(dec: &mut Decoder, bytes: &[u8]) -> (Vec<Message>, Option<ProtocolError>, BytesMut) {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    loop {
        match dec.decode(&mut buf) {
            Ok(Some(m)) => out.push(m),
            Ok(None) => return (out, None, buf),
            Err(e) => return (out, Some(e), buf),
        }
    }
}

/// Decodes exactly one message from `bytes`, which must be consumed whole.
fn one(dec: &mut Decoder, bytes: &[u8]) -> Message {
    let mut buf = BytesMut::from(bytes);
    let m = dec
        .decode(&mut buf)
        .expect("valid frame")
        .expect("complete frame");
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    m
}

/// The error decoding `bytes` from the start with a fresh decoder.
fn err(dec: &mut Decoder, bytes: &[u8]) -> ProtocolError {
    let (msgs, e, _) = decode_all(dec, bytes);
    e.unwrap_or_else(|| panic!("expected an error, got {msgs:?}"))
}

fn text(s: &str) -> Message {
    Message::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn binary(b: &[u8]) -> Message {
    Message::Binary(Bytes::copy_from_slice(b))
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// Raw deflate compression with a persistent context (what a client with
/// context takeover does): sync flush, tail stripped, no reset.
fn sync_compress(c: &mut Compress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let start = c.total_in();
    loop {
        let consumed = (c.total_in() - start) as usize;
        c.compress_vec(&data[consumed..], &mut out, FlushCompress::Sync)
            .unwrap();
        if (c.total_in() - start) as usize == data.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    if out.is_empty() {
        // zlib writes nothing for an empty input right after a flush; an
        // empty stored block then stands for the empty message.
        return vec![0x00];
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A pseudo-random, poorly compressible byte string.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

// ---------------------------------------------------------------- basics

#[test]
fn text_binary_ping_pong() {
    let mut d = plain();
    assert_eq!(
        one(&mut d, &frame(TEXT, true, false, b"hello")),
        text("hello")
    );
    assert_eq!(
        one(&mut d, &frame(BINARY, true, false, &[0, 1, 2, 255])),
        binary(&[0, 1, 2, 255])
    );
    assert_eq!(
        one(&mut d, &frame(PING, true, false, b"p")),
        Message::Ping(Bytes::from_static(b"p"))
    );
    assert_eq!(
        one(&mut d, &frame(PONG, true, false, b"")),
        Message::Pong(Bytes::new())
    );
    assert_eq!(one(&mut d, &frame(TEXT, true, false, b"")), text(""));
    assert_eq!(one(&mut d, &frame(BINARY, true, false, b"")), binary(b""));
    assert!(d.is_idle());
    assert_eq!(d.buffered(), 0);
}

#[test]
fn unicode_text() {
    let s = "héllo wörld — 日本語 🎉";
    assert_eq!(
        one(&mut plain(), &frame(TEXT, true, false, s.as_bytes())),
        text(s)
    );
}

#[test]
fn every_length_form_and_mask_alignment() {
    // 7-bit, 16-bit and 64-bit lengths, and every remainder of the 8-byte
    // unmasking loop.
    let lens = (0..=20)
        .chain([125, 126, 127, 128, 1000, 65535, 65536, 65537, 70_000])
        .collect::<Vec<_>>();
    for len in lens {
        for mask in [[0, 0, 0, 0], MASK, [0xff, 0xff, 0xff, 0xff], [1, 2, 3, 4]] {
            let payload = noise(len, len as u64 + 7);
            let mut d = Decoder::new(100_000, None);
            assert_eq!(
                one(
                    &mut d,
                    &frame_with_mask(BINARY, true, false, &payload, mask)
                ),
                binary(&payload),
                "len {len} mask {mask:?}"
            );
        }
    }
}

#[test]
fn max_length_control_frame() {
    let p = [b'x'; 125];
    assert_eq!(
        one(&mut plain(), &frame(PING, true, false, &p)),
        Message::Ping(Bytes::copy_from_slice(&p))
    );
    assert_eq!(
        one(&mut plain(), &frame(PONG, true, false, &p)),
        Message::Pong(Bytes::copy_from_slice(&p))
    );
}

#[test]
fn control_frames_do_not_count_against_the_limit() {
    let mut d = Decoder::new(10, None);
    let p = [7u8; 100];
    assert_eq!(
        one(&mut d, &frame(PING, true, false, &p)),
        Message::Ping(Bytes::copy_from_slice(&p))
    );
}

// ---------------------------------------------------------------- close

#[test]
fn close_with_code_and_reason() {
    assert_eq!(
        one(
            &mut plain(),
            &frame(CLOSE, true, false, &close_payload(1000, b"bye"))
        ),
        Message::Close(Some((1000, "bye".into())))
    );
    assert_eq!(
        one(
            &mut plain(),
            &frame(CLOSE, true, false, &close_payload(4000, "ça va".as_bytes()))
        ),
        Message::Close(Some((4000, "ça va".into())))
    );
    // A code without a reason.
    assert_eq!(
        one(
            &mut plain(),
            &frame(CLOSE, true, false, &close_payload(1001, b""))
        ),
        Message::Close(Some((1001, String::new())))
    );
    // The longest reason a control frame can carry.
    let reason = "r".repeat(123);
    assert_eq!(
        one(
            &mut plain(),
            &frame(CLOSE, true, false, &close_payload(1000, reason.as_bytes()))
        ),
        Message::Close(Some((1000, reason)))
    );
}

#[test]
fn close_empty() {
    assert_eq!(
        one(&mut plain(), &frame(CLOSE, true, false, b"")),
        Message::Close(None)
    );
}

#[test]
fn close_one_byte() {
    assert_eq!(
        err(&mut plain(), &frame(CLOSE, true, false, &[0x03])),
        ProtocolError::CloseTooShort
    );
}

#[test]
fn close_invalid_codes() {
    for code in [
        0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        assert_eq!(
            err(
                &mut plain(),
                &frame(CLOSE, true, false, &close_payload(code, b"x"))
            ),
            ProtocolError::BadCloseCode(code),
            "code {code}"
        );
        assert!(!crate::close_code_valid(code));
    }
}

#[test]
fn close_valid_codes() {
    for code in [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000,
        4999,
    ] {
        assert_eq!(
            one(
                &mut plain(),
                &frame(CLOSE, true, false, &close_payload(code, b""))
            ),
            Message::Close(Some((code, String::new()))),
            "code {code}"
        );
        assert!(crate::close_code_valid(code));
    }
}

#[test]
fn close_reason_invalid_utf8() {
    for reason in [
        &[0xff][..],
        &[b'a', 0xc3],
        &[0xed, 0xa0, 0x80],
        &[0xc0, 0x80],
    ] {
        assert_eq!(
            err(
                &mut plain(),
                &frame(CLOSE, true, false, &close_payload(1000, reason))
            ),
            ProtocolError::InvalidUtf8,
            "reason {reason:?}"
        );
    }
}

// ---------------------------------------------------------------- fragmentation

#[test]
fn fragmented_text_with_control_frames_interleaved() {
    let mut wire = frame(TEXT, false, false, b"Hel");
    wire.extend(frame(PING, true, false, b"ping-1"));
    wire.extend(frame(CONT, false, false, b"lo "));
    wire.extend(frame(PONG, true, false, b""));
    wire.extend(frame(PING, true, false, b"ping-2"));
    wire.extend(frame(CONT, false, false, b""));
    wire.extend(frame(CONT, true, false, b"world"));
    wire.extend(frame(TEXT, true, false, b"next"));

    let mut d = plain();
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(
        d.decode(&mut buf).unwrap(),
        Some(Message::Ping(Bytes::from_static(b"ping-1")))
    );
    assert!(!d.is_idle());
    assert!(d.buffered() >= 3);
    assert_eq!(
        d.decode(&mut buf).unwrap(),
        Some(Message::Pong(Bytes::new()))
    );
    assert!(!d.is_idle());
    assert_eq!(
        d.decode(&mut buf).unwrap(),
        Some(Message::Ping(Bytes::from_static(b"ping-2")))
    );
    assert_eq!(d.decode(&mut buf).unwrap(), Some(text("Hello world")));
    assert!(d.is_idle());
    assert_eq!(d.buffered(), 0);
    assert_eq!(d.decode(&mut buf).unwrap(), Some(text("next")));
    assert_eq!(d.decode(&mut buf).unwrap(), None);
    assert!(buf.is_empty());
}

#[test]
fn fragmented_binary() {
    let parts: [&[u8]; 4] = [b"\x00\x01", b"", b"\x02", b"\xff\xfe"];
    let mut wire = frame(BINARY, false, false, parts[0]);
    wire.extend(frame(CONT, false, false, parts[1]));
    wire.extend(frame(CONT, false, false, parts[2]));
    wire.extend(frame(CONT, true, false, parts[3]));
    let (msgs, e, rest) = decode_all(&mut plain(), &wire);
    assert_eq!(e, None);
    assert_eq!(msgs, vec![binary(b"\x00\x01\x02\xff\xfe")]);
    assert!(rest.is_empty());
}

#[test]
fn fragmented_with_empty_first_fragment() {
    let mut wire = frame(TEXT, false, false, b"");
    wire.extend(frame(CONT, true, false, b"abc"));
    let (msgs, e, _) = decode_all(&mut plain(), &wire);
    assert_eq!(e, None);
    assert_eq!(msgs, vec![text("abc")]);
}

#[test]
fn fragmented_control_frames() {
    for op in [CLOSE, PING, PONG] {
        assert_eq!(
            err(&mut plain(), &frame(op, false, false, b"")),
            ProtocolError::FragmentedControl,
            "opcode {op}"
        );
    }
}

#[test]
fn continuation_without_start() {
    for fin in [true, false] {
        assert_eq!(
            err(&mut plain(), &frame(CONT, fin, false, b"x")),
            ProtocolError::UnexpectedContinuation
        );
    }
    // Also right after a complete fragmented message.
    let mut wire = frame(TEXT, false, false, b"a");
    wire.extend(frame(CONT, true, false, b"b"));
    wire.extend(frame(CONT, true, false, b"c"));
    let (msgs, e, _) = decode_all(&mut plain(), &wire);
    assert_eq!(msgs, vec![text("ab")]);
    assert_eq!(e, Some(ProtocolError::UnexpectedContinuation));
}

#[test]
fn new_data_frame_while_fragmented() {
    for (op, fin) in [(TEXT, true), (TEXT, false), (BINARY, true), (BINARY, false)] {
        let mut wire = frame(BINARY, false, false, b"a");
        wire.extend(frame(op, fin, false, b"b"));
        assert_eq!(
            err(&mut plain(), &wire),
            ProtocolError::ExpectedContinuation,
            "opcode {op} fin {fin}"
        );
    }
}

#[test]
fn fragmentation_order_fails_from_the_header_alone() {
    // The second header is enough: its payload never arrives.
    let mut wire = frame(TEXT, false, false, b"a");
    wire.extend([0x81, 0x85]);
    assert_eq!(
        err(&mut plain(), &wire),
        ProtocolError::ExpectedContinuation
    );
    assert_eq!(
        err(&mut plain(), &[0x80, 0x85]),
        ProtocolError::UnexpectedContinuation
    );
}

// ---------------------------------------------------------------- UTF-8

#[test]
fn invalid_utf8_single_frame() {
    for bad in [
        &[0xff][..],
        &[b'a', 0x80],
        &[0xc3],
        &[0xe2, 0x82],
        &[0xed, 0xa0, 0x80],       // surrogate
        &[0xc0, 0xaf],             // overlong
        &[0xf4, 0x90, 0x80, 0x80], // above U+10FFFF
    ] {
        assert_eq!(
            err(&mut plain(), &frame(TEXT, true, false, bad)),
            ProtocolError::InvalidUtf8,
            "{bad:?}"
        );
    }
}

#[test]
fn invalid_utf8_in_first_fragment_fails_fast() {
    let mut d = plain();
    let mut buf = BytesMut::from(&frame(TEXT, false, false, b"ok \xff rest")[..]);
    assert_eq!(d.decode(&mut buf), Err(ProtocolError::InvalidUtf8));
}

#[test]
fn invalid_utf8_in_middle_fragment_fails_fast() {
    let mut wire = frame(TEXT, false, false, b"fine");
    wire.extend(frame(CONT, false, false, b"\xc3\x28"));
    let mut d = plain();
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(d.decode(&mut buf), Err(ProtocolError::InvalidUtf8));
}

#[test]
fn invalid_sequence_split_across_fragments_fails_fast() {
    // E2 82 is a valid prefix; the 28 that follows is not a continuation
    // byte. The error comes with the second fragment, before the last.
    let mut wire = frame(TEXT, false, false, b"a\xe2\x82");
    wire.extend(frame(CONT, false, false, b"\x28bc"));
    let mut d = plain();
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(d.decode(&mut buf), Err(ProtocolError::InvalidUtf8));
}

#[test]
fn code_point_split_across_fragments() {
    // "é€🎉" split inside every multi-byte sequence.
    let s = "é€🎉";
    let b = s.as_bytes();
    let mut wire = frame(TEXT, false, false, &b[..1]);
    wire.extend(frame(CONT, false, false, &b[1..3]));
    wire.extend(frame(PING, true, false, b""));
    wire.extend(frame(CONT, false, false, &b[3..4]));
    wire.extend(frame(CONT, false, false, &b[4..6]));
    wire.extend(frame(CONT, false, false, &b[6..7]));
    wire.extend(frame(CONT, true, false, &b[7..]));
    let (msgs, e, _) = decode_all(&mut plain(), &wire);
    assert_eq!(e, None);
    assert_eq!(msgs, vec![Message::Ping(Bytes::new()), text(s)]);
}

#[test]
fn code_point_split_byte_by_byte() {
    let s = "a🎉b€";
    let b = s.as_bytes();
    let mut wire = Vec::new();
    for (i, byte) in b.iter().enumerate() {
        let op = if i == 0 { TEXT } else { CONT };
        wire.extend(frame(op, i == b.len() - 1, false, &[*byte]));
    }
    let (msgs, e, _) = decode_all(&mut plain(), &wire);
    assert_eq!(e, None);
    assert_eq!(msgs, vec![text(s)]);
}

#[test]
fn incomplete_code_point_at_the_end() {
    let mut wire = frame(TEXT, false, false, b"ab");
    wire.extend(frame(CONT, true, false, b"\xf0\x9f\x8e"));
    assert_eq!(err(&mut plain(), &wire), ProtocolError::InvalidUtf8);
}

#[test]
fn binary_is_not_checked_for_utf8() {
    let mut wire = frame(BINARY, false, false, b"\xff");
    wire.extend(frame(CONT, true, false, b"\xc3"));
    let (msgs, e, _) = decode_all(&mut plain(), &wire);
    assert_eq!(e, None);
    assert_eq!(msgs, vec![binary(b"\xff\xc3")]);
}

// ---------------------------------------------------------------- header violations

#[test]
fn unmasked() {
    for op in [TEXT, BINARY, CLOSE, PING, PONG] {
        assert_eq!(
            err(&mut plain(), &raw_frame(0x80 | op, b"abc", None)),
            ProtocolError::Unmasked,
            "opcode {op}"
        );
    }
    // The first two bytes are enough.
    assert_eq!(err(&mut plain(), &[0x81, 0x7f]), ProtocolError::Unmasked);
}

#[test]
fn reserved_bits_2_and_3() {
    for rsv in [0x20, 0x10, 0x30, 0x70] {
        for op in [TEXT, BINARY, PING, CLOSE, CONT] {
            assert_eq!(
                err(&mut plain(), &frame(op | rsv, true, false, b"x")),
                ProtocolError::ReservedBits,
                "rsv {rsv:#x} opcode {op}"
            );
            // With an inflater too: only RSV1 is negotiated.
            assert_eq!(
                err(&mut compressing(), &frame(op | rsv, true, false, b"x")),
                ProtocolError::ReservedBits,
                "rsv {rsv:#x} opcode {op} (inflater)"
            );
        }
    }
}

#[test]
fn rsv1_without_inflater() {
    for op in [TEXT, BINARY] {
        for fin in [true, false] {
            assert_eq!(
                err(&mut plain(), &frame(op, fin, true, b"x")),
                ProtocolError::ReservedBits
            );
        }
    }
}

#[test]
fn rsv1_on_continuation() {
    // Uncompressed first fragment, RSV1 on the continuation.
    let mut wire = frame(TEXT, false, false, b"a");
    wire.extend(frame(CONT, true, true, b"b"));
    assert_eq!(err(&mut compressing(), &wire), ProtocolError::ReservedBits);
    // Compressed first fragment, RSV1 repeated on the continuation.
    let c = deflate::compress(b"hello", 15, 6);
    let mut wire = frame(TEXT, false, true, &c[..1]);
    wire.extend(frame(CONT, true, true, &c[1..]));
    assert_eq!(err(&mut compressing(), &wire), ProtocolError::ReservedBits);
    // Without an inflater it is refused as well.
    let mut wire = frame(TEXT, false, false, b"a");
    wire.extend(frame(CONT, true, true, b"b"));
    assert_eq!(err(&mut plain(), &wire), ProtocolError::ReservedBits);
}

#[test]
fn rsv1_on_control_frames() {
    for op in [CLOSE, PING, PONG] {
        assert_eq!(
            err(&mut compressing(), &frame(op, true, true, b"")),
            ProtocolError::ReservedBits,
            "opcode {op}"
        );
    }
}

#[test]
fn reserved_opcodes() {
    for op in (3..=7).chain(11..=15) {
        for fin in [true, false] {
            assert_eq!(
                err(&mut plain(), &frame(op, fin, false, b"")),
                ProtocolError::ReservedOpcode(op),
                "opcode {op}"
            );
        }
        // Two bytes are enough.
        assert_eq!(
            err(&mut plain(), &[0x80 | op, 0x80]),
            ProtocolError::ReservedOpcode(op)
        );
    }
}

#[test]
fn control_too_long_from_the_header_alone() {
    for op in [CLOSE, PING, PONG] {
        // 16-bit length 126, then 64-bit length: only the length bytes are
        // present, no mask key and no payload.
        assert_eq!(
            err(&mut plain(), &[0x80 | op, 0x80 | 126, 0, 126]),
            ProtocolError::ControlTooLong,
            "opcode {op}"
        );
        assert_eq!(
            err(&mut plain(), &[0x80 | op, 0x80 | 126, 0xff, 0xff]),
            ProtocolError::ControlTooLong
        );
        let mut h = vec![0x80 | op, 0x80 | 127];
        h.extend_from_slice(&1_000_000u64.to_be_bytes());
        assert_eq!(err(&mut plain(), &h), ProtocolError::ControlTooLong);
    }
    // A whole oversized ping is refused as well.
    assert_eq!(
        err(&mut plain(), &frame(PING, true, false, &[0; 126])),
        ProtocolError::ControlTooLong
    );
}

#[test]
fn bad_length_msb_set() {
    for len in [1u64 << 63, u64::MAX, (1u64 << 63) | 5] {
        let mut h = vec![0x82, 0x80 | 127];
        h.extend_from_slice(&len.to_be_bytes());
        assert_eq!(err(&mut plain(), &h), ProtocolError::BadLength);
        // Even with no limit worth the name.
        assert_eq!(
            err(&mut Decoder::new(usize::MAX, None), &h),
            ProtocolError::BadLength
        );
    }
}

#[test]
fn lengths_must_be_in_their_shortest_form() {
    // 16-bit form for 0..=125, 64-bit form for 0..=65,535: refused, before
    // any payload arrives.
    for len in [0u16, 5, 125] {
        let mut h = vec![0x82, 0x80 | 126];
        h.extend_from_slice(&len.to_be_bytes());
        assert_eq!(
            err(&mut plain(), &h),
            ProtocolError::NonMinimalLength,
            "{len}"
        );
    }
    for len in [0u64, 125, 126, 65_535] {
        let mut h = vec![0x82, 0x80 | 127];
        h.extend_from_slice(&len.to_be_bytes());
        assert_eq!(
            err(&mut plain(), &h),
            ProtocolError::NonMinimalLength,
            "{len}"
        );
    }
    // The shortest forms at the edges still decode.
    for len in [125usize, 126, 65_535, 65_536] {
        let payload = vec![b'x'; len];
        let mut d = Decoder::new(1 << 20, None);
        assert_eq!(
            one(&mut d, &frame(TEXT, true, false, &payload)),
            Message::Text(Bytes::from(payload.clone())),
            "{len}"
        );
    }
}

#[test]
fn largest_64_bit_length_is_too_big() {
    let mut h = vec![0x82, 0x80 | 127];
    h.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
    assert_eq!(
        err(&mut plain(), &h),
        ProtocolError::MessageTooBig { limit: LIMIT }
    );
}

// ---------------------------------------------------------------- size limit

#[test]
fn message_at_the_limit() {
    let p = vec![b'a'; LIMIT];
    assert_eq!(
        one(&mut plain(), &frame(TEXT, true, false, &p)),
        Message::Text(Bytes::from(p))
    );
}

#[test]
fn message_too_big_from_the_header_alone() {
    let cases = [
        (LIMIT, LIMIT as u64 + 1, 64),
        (LIMIT, u32::MAX as u64, 64),
        (199, 200, 16),
        (10, 11, 7),
    ];
    for (limit, len, form) in cases {
        for b0 in [0x81, 0x82, 0x01, 0x02] {
            let h = header_only(b0, len, form);
            assert_eq!(
                err(&mut Decoder::new(limit, None), &h),
                ProtocolError::MessageTooBig { limit },
                "len {len} b0 {b0:#x}"
            );
            // Without the mask key either.
            assert_eq!(
                err(&mut Decoder::new(limit, None), &h[..h.len() - 4]),
                ProtocolError::MessageTooBig { limit },
                "len {len} b0 {b0:#x}"
            );
        }
    }
}

#[test]
fn message_too_big_across_fragments() {
    let mut d = Decoder::new(1000, None);
    let mut buf = BytesMut::from(&frame(BINARY, false, false, &[1; 600])[..]);
    buf.extend_from_slice(&frame(CONT, false, false, &[2; 400])[..]);
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert!(buf.is_empty());
    // 1000 bytes so far: even one more byte is too many, and the header
    // alone says so.
    buf.extend_from_slice(&header_only(0x80, 1, 7));
    assert_eq!(
        d.decode(&mut buf),
        Err(ProtocolError::MessageTooBig { limit: 1000 })
    );

    // An empty final fragment at the limit is fine.
    let mut d = Decoder::new(1000, None);
    let mut wire = frame(BINARY, false, false, &[1; 600]);
    wire.extend(frame(CONT, false, false, &[2; 400]));
    wire.extend(frame(CONT, true, false, b""));
    let (msgs, e, _) = decode_all(&mut d, &wire);
    assert_eq!(e, None);
    assert_eq!(msgs.len(), 1);

    // The limit counts the whole message, not one fragment.
    let mut d = Decoder::new(1000, None);
    let mut wire = frame(TEXT, false, false, &[b'a'; 600]);
    wire.extend(frame(PING, true, false, b""));
    wire.extend(header_only(0x80, 401, 16));
    let (msgs, e, _) = decode_all(&mut d, &wire);
    assert_eq!(msgs, vec![Message::Ping(Bytes::new())]);
    assert_eq!(e, Some(ProtocolError::MessageTooBig { limit: 1000 }));
}

// ---------------------------------------------------------------- partial input

#[test]
fn header_split_byte_by_byte() {
    for len in [0usize, 5, 125, 126, 300, 65535, 65536, 70_000] {
        let payload = noise(len, 3);
        let wire = frame(BINARY, true, false, &payload);
        let head = match len {
            0..=125 => 6,
            126..=65535 => 8,
            _ => 14,
        };
        let mut d = Decoder::new(100_000, None);
        let mut buf = BytesMut::new();
        // Byte by byte through the header and the first payload bytes,
        // then the rest at once.
        let stop = (head + 3).min(wire.len() - 1);
        for (i, b) in wire[..stop].iter().enumerate() {
            assert_eq!(d.decode(&mut buf), Ok(None), "len {len}, {i} bytes");
            let need = d.need();
            assert!(need > buf.len(), "len {len}: need {need} with {i} bytes");
            assert!(need <= wire.len(), "len {len}: need {need} > frame");
            // Nothing is consumed while waiting.
            assert_eq!(buf.len(), i);
            let expected = if i < 2 {
                2
            } else if i < 4 && head == 8 {
                4
            } else if i < 10 && head == 14 {
                10
            } else {
                wire.len()
            };
            assert_eq!(need, expected, "len {len}, {i} bytes");
            buf.extend_from_slice(&[*b]);
        }
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert_eq!(d.need(), wire.len());
        buf.extend_from_slice(&wire[stop..]);
        assert_eq!(d.decode(&mut buf), Ok(Some(binary(&payload))));
        assert!(buf.is_empty());
    }
}

#[test]
fn every_split_point_of_a_stream() {
    let mut wire = frame(TEXT, false, false, "héllo ".as_bytes());
    wire.extend(frame(PING, true, false, b"xyz"));
    wire.extend(frame(CONT, true, false, "wörld".as_bytes()));
    wire.extend(frame(BINARY, true, false, &[9; 300]));
    wire.extend(frame(CLOSE, true, false, &close_payload(1000, b"done")));
    let expected = vec![
        Message::Ping(Bytes::from_static(b"xyz")),
        text("héllo wörld"),
        binary(&[9; 300]),
        Message::Close(Some((1000, "done".into()))),
    ];
    for split in 0..=wire.len() {
        let mut d = plain();
        let mut buf = BytesMut::from(&wire[..split]);
        let mut got = Vec::new();
        while let Some(m) = d.decode(&mut buf).unwrap() {
            got.push(m);
        }
        buf.extend_from_slice(&wire[split..]);
        while let Some(m) = d.decode(&mut buf).unwrap() {
            got.push(m);
        }
        assert_eq!(got, expected, "split at {split}");
        assert!(buf.is_empty());
    }
}

#[test]
fn several_frames_in_one_buffer_decode_one_at_a_time() {
    let f1 = frame(TEXT, true, false, b"one");
    let f2 = frame(BINARY, true, false, b"two");
    let f3 = frame(PING, true, false, b"three");
    let mut buf = BytesMut::new();
    for f in [&f1, &f2, &f3] {
        buf.extend_from_slice(f);
    }
    buf.extend_from_slice(&f1[..3]); // a partial fourth frame
    let mut d = plain();
    assert_eq!(d.decode(&mut buf), Ok(Some(text("one"))));
    assert_eq!(buf.len(), f2.len() + f3.len() + 3);
    assert_eq!(d.decode(&mut buf), Ok(Some(binary(b"two"))));
    assert_eq!(buf.len(), f3.len() + 3);
    assert_eq!(
        d.decode(&mut buf),
        Ok(Some(Message::Ping(Bytes::from_static(b"three"))))
    );
    assert_eq!(buf.len(), 3);
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert_eq!(d.need(), f1.len());
    assert_eq!(buf.len(), 3);
    buf.extend_from_slice(&f1[3..]);
    assert_eq!(d.decode(&mut buf), Ok(Some(text("one"))));
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert_eq!(d.need(), 2);
}

#[test]
fn error_after_valid_frames() {
    let mut wire = frame(TEXT, true, false, b"ok");
    wire.extend(raw_frame(0x81, b"bad", None));
    let (msgs, e, _) = decode_all(&mut plain(), &wire);
    assert_eq!(msgs, vec![text("ok")]);
    assert_eq!(e, Some(ProtocolError::Unmasked));
}

// ---------------------------------------------------------------- errors

#[test]
fn close_codes_of_errors() {
    let cases = [
        (ProtocolError::Unmasked, 1002),
        (ProtocolError::Masked, 1002),
        (ProtocolError::ReservedBits, 1002),
        (ProtocolError::ReservedOpcode(3), 1002),
        (ProtocolError::FragmentedControl, 1002),
        (ProtocolError::ControlTooLong, 1002),
        (ProtocolError::UnexpectedContinuation, 1002),
        (ProtocolError::ExpectedContinuation, 1002),
        (ProtocolError::CloseTooShort, 1002),
        (ProtocolError::BadCloseCode(1005), 1002),
        (ProtocolError::BadLength, 1002),
        (ProtocolError::NonMinimalLength, 1002),
        (ProtocolError::InvalidUtf8, 1007),
        (ProtocolError::BadCompression("x".into()), 1007),
        (ProtocolError::MessageTooBig { limit: 1 }, 1009),
    ];
    for (e, code) in cases {
        assert_eq!(e.close_code(), code, "{e:?}");
        assert!(crate::close_code_valid(e.close_code()));
        assert!(!e.to_string().is_empty());
    }
}

// ---------------------------------------------------------------- header encoder

#[test]
fn header_encoding() {
    let h = header(OpCode::Text, true, false, 5);
    assert_eq!(h.as_bytes(), &[0x81, 5]);
    let h = header(OpCode::Binary, false, true, 0);
    assert_eq!(h.as_bytes(), &[0x42, 0]);
    let h = header(OpCode::Continuation, true, false, 125);
    assert_eq!(h.as_bytes(), &[0x80, 125]);
    let h = header(OpCode::Close, true, false, 126);
    assert_eq!(h.as_bytes(), &[0x88, 126, 0, 126]);
    let h = header(OpCode::Ping, true, false, 65535);
    assert_eq!(h.as_bytes(), &[0x89, 126, 0xff, 0xff]);
    let h = header(OpCode::Pong, true, false, 65536);
    assert_eq!(h.as_bytes(), &[0x8a, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    let h = header(OpCode::Text, true, true, 0x0123_4567_89ab);
    assert_eq!(
        h.as_bytes(),
        &[0xc1, 127, 0, 0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab]
    );
}

#[test]
fn header_matches_the_client_encoding_but_for_the_mask() {
    // A server header with the mask bit and a key added decodes as a client
    // frame with the same fields.
    for len in [0usize, 1, 125, 126, 65535, 65536] {
        let payload = noise(len, 11);
        let h = header(OpCode::Binary, true, false, len);
        let mut wire = h.as_bytes().to_vec();
        wire[1] |= 0x80;
        wire.extend_from_slice(&[0; 4]);
        wire.extend_from_slice(&payload);
        assert_eq!(wire, frame_with_mask(BINARY, true, false, &payload, [0; 4]));
        assert_eq!(
            one(&mut Decoder::new(100_000, None), &wire),
            binary(&payload)
        );
    }
}

#[test]
fn client_side_decoder_reads_server_frames() {
    // What the server sends: `header` and the bare payload.
    let mut wire = Vec::new();
    for (op, payload) in [
        (OpCode::Text, &b"hello"[..]),
        (OpCode::Binary, &[0u8; 300][..]),
        (OpCode::Ping, b"p"),
    ] {
        wire.extend_from_slice(header(op, true, false, payload.len()).as_bytes());
        wire.extend_from_slice(payload);
    }
    let (msgs, e, rest) = decode_all(&mut Decoder::client(LIMIT, None), &wire);
    assert_eq!(e, None);
    assert!(rest.is_empty());
    assert_eq!(
        msgs,
        vec![
            text("hello"),
            binary(&[0; 300]),
            Message::Ping(Bytes::from_static(b"p"))
        ]
    );
    // A masked frame is refused on the client side.
    assert_eq!(
        err(
            &mut Decoder::client(LIMIT, None),
            &frame(TEXT, true, false, b"x")
        ),
        ProtocolError::Masked
    );
    // A compressed server message.
    let (p, _) = deflate::negotiate(["permessage-deflate"]).unwrap();
    let z = deflate::compress(b"compressed by the server", p.server_window_bits, 6);
    let mut wire = header(OpCode::Text, true, true, z.len())
        .as_bytes()
        .to_vec();
    wire.extend_from_slice(&z);
    let inflater = deflate::Inflater::new(p.server_window_bits, true);
    assert_eq!(
        one(&mut Decoder::client(LIMIT, Some(inflater)), &wire),
        text("compressed by the server")
    );
}

// ---------------------------------------------------------------- deflate: round trips

fn compressed_round_trip(op: u8, payload: &[u8], bits: u8) -> Message {
    let c = deflate::compress(payload, bits, 6);
    let mut d = Decoder::new(200_000, Some(params(bits, true).inflater()));
    one(&mut d, &frame(op, true, true, &c))
}

#[test]
fn compressed_text_and_binary() {
    let s = "hello hello hello, wörld ".repeat(20);
    for bits in 9..=15 {
        assert_eq!(compressed_round_trip(TEXT, s.as_bytes(), bits), text(&s));
        let b = noise(3000, bits as u64);
        assert_eq!(compressed_round_trip(BINARY, &b, bits), binary(&b));
    }
}

#[test]
fn compressed_empty_payload() {
    let c = deflate::compress(b"", 15, 6);
    assert_eq!(&c[..], &[0x00]);
    assert_eq!(compressed_round_trip(TEXT, b"", 15), text(""));
    assert_eq!(compressed_round_trip(BINARY, b"", 15), binary(b""));
}

#[test]
fn compressed_large_payloads() {
    let repetitive: Vec<u8> = (0..100_000).map(|i| (i % 251) as u8).collect();
    let c = deflate::compress(&repetitive, 15, 6);
    assert!(c.len() < repetitive.len() / 10);
    assert_eq!(
        compressed_round_trip(BINARY, &repetitive, 15),
        binary(&repetitive)
    );
    let random = noise(100_000, 99);
    assert_eq!(compressed_round_trip(BINARY, &random, 15), binary(&random));
    let s = "All work and no play makes Jack a dull boy. ".repeat(2300);
    assert!(s.len() > 100_000);
    assert_eq!(compressed_round_trip(TEXT, s.as_bytes(), 15), text(&s));
}

#[test]
fn compressed_every_level() {
    let s = "abcabcabc xyz ".repeat(50);
    for level in 0..=9 {
        let c = deflate::compress(s.as_bytes(), 15, level);
        let mut d = compressing();
        assert_eq!(
            one(&mut d, &frame(TEXT, true, true, &c)),
            text(&s),
            "level {level}"
        );
    }
}

#[test]
fn compressed_fragmented_with_rsv1_on_the_first_frame_only() {
    let s = "fragmented and compressed ".repeat(100);
    let c = deflate::compress(s.as_bytes(), 15, 6);
    assert!(c.len() > 10);
    let n = c.len();
    let mut wire = frame(TEXT, false, true, &c[..1]);
    wire.extend(frame(PING, true, false, b"in between"));
    wire.extend(frame(CONT, false, false, &c[1..n / 2]));
    wire.extend(frame(CONT, false, false, b""));
    wire.extend(frame(CONT, true, false, &c[n / 2..]));
    wire.extend(frame(BINARY, true, false, b"uncompressed"));
    let (msgs, e, rest) = decode_all(&mut compressing(), &wire);
    assert_eq!(e, None);
    assert!(rest.is_empty());
    assert_eq!(
        msgs,
        vec![
            Message::Ping(Bytes::from_static(b"in between")),
            text(&s),
            binary(b"uncompressed"),
        ]
    );
}

#[test]
fn compressed_and_uncompressed_messages_mix() {
    let mut d = compressing();
    for i in 0..5 {
        let s = format!("message {i} ").repeat(i * 10 + 1);
        let c = deflate::compress(s.as_bytes(), 15, 6);
        assert_eq!(one(&mut d, &frame(TEXT, true, true, &c)), text(&s));
        assert_eq!(
            one(&mut d, &frame(TEXT, true, false, s.as_bytes())),
            text(&s)
        );
    }
}

#[test]
fn compression_is_shared() {
    let s = "the same message for every subscriber ".repeat(30);
    for bits in 9..=15 {
        let a = deflate::compress(s.as_bytes(), bits, 6);
        // Something else in between, with another window and level.
        let _ = deflate::compress(b"something else entirely", 12, 1);
        let _ = deflate::compress(&noise(5000, 1), bits, 9);
        let b = deflate::compress(s.as_bytes(), bits, 6);
        assert_eq!(a, b, "window bits {bits}");
        // And the same on another thread (another compressor).
        let s2 = s.clone();
        let c = std::thread::spawn(move || deflate::compress(s2.as_bytes(), bits, 6))
            .join()
            .unwrap();
        assert_eq!(a, c, "window bits {bits}, other thread");
    }
}

#[test]
fn compressed_invalid_utf8() {
    let c = deflate::compress(b"abc\xff", 15, 6);
    assert_eq!(
        err(&mut compressing(), &frame(TEXT, true, true, &c)),
        ProtocolError::InvalidUtf8
    );
    // Compressed binary carries anything.
    let c = deflate::compress(b"abc\xff", 15, 6);
    assert_eq!(
        one(&mut compressing(), &frame(BINARY, true, true, &c)),
        binary(b"abc\xff")
    );
}

#[test]
fn compressed_text_split_code_point_across_fragments() {
    // The compressed bytes of text are not UTF-8; only the inflated
    // message is checked.
    let s = "日本語のテキスト".repeat(10);
    let c = deflate::compress(s.as_bytes(), 15, 6);
    let mut wire = Vec::new();
    for (i, chunk) in c.chunks(3).enumerate() {
        let last = (i + 1) * 3 >= c.len();
        let op = if i == 0 { TEXT } else { CONT };
        wire.extend(frame(op, last, i == 0, chunk));
    }
    let (msgs, e, _) = decode_all(&mut compressing(), &wire);
    assert_eq!(e, None);
    assert_eq!(msgs, vec![text(&s)]);
}

// ---------------------------------------------------------------- deflate: limits and corruption

#[test]
fn inflate_bomb() {
    let zeros = vec![0u8; 10 * 1024 * 1024];
    let c = deflate::compress(&zeros, 15, 9);
    assert!(c.len() < 20_000, "{} compressed bytes", c.len());
    let mut d = compressing();
    assert_eq!(
        err(&mut d, &frame(BINARY, true, true, &c)),
        ProtocolError::MessageTooBig { limit: LIMIT }
    );
    // Inflating directly: refused, and the output never exceeds the limit
    // plus one byte (what is kept to know it was exceeded).
    let mut inf = params(15, true).inflater();
    assert!(matches!(
        inf.inflate(&c, LIMIT),
        Err(deflate::InflateError::TooBig)
    ));
    assert_eq!(inf.footprint(), 0, "state dropped after the error");
}

#[test]
fn inflate_limit_is_exact() {
    let data = vec![b'z'; 5000];
    let c = deflate::compress(&data, 15, 6);
    for (max, ok) in [(4999, false), (5000, true), (5001, true)] {
        let mut d = Decoder::new(max, Some(params(15, false).inflater()));
        let (msgs, e, _) = decode_all(&mut d, &frame(TEXT, true, true, &c));
        if ok {
            assert_eq!(e, None, "max {max}");
            assert_eq!(msgs.len(), 1);
        } else {
            assert_eq!(e, Some(ProtocolError::MessageTooBig { limit: max }));
        }
    }
    // The compressed size counts against the limit too.
    let random = noise(2000, 5);
    let c = deflate::compress(&random, 15, 6);
    assert!(c.len() > 2000);
    let mut d = Decoder::new(2000, Some(params(15, false).inflater()));
    assert_eq!(
        err(&mut d, &header_only(0xc2, c.len() as u64, 16)),
        ProtocolError::MessageTooBig { limit: 2000 }
    );
}

#[test]
fn inflate_limit_zero() {
    let c = deflate::compress(b"", 15, 6);
    let mut d = Decoder::new(1, Some(params(15, true).inflater()));
    assert_eq!(one(&mut d, &frame(BINARY, true, true, &c)), binary(b""));
    let mut d = Decoder::new(0, Some(params(15, true).inflater()));
    assert_eq!(
        err(&mut d, &frame(BINARY, true, true, &c)),
        ProtocolError::MessageTooBig { limit: 0 }
    );
    // Uncompressed, an empty message fits a zero limit.
    let mut d = Decoder::new(0, Some(params(15, true).inflater()));
    assert_eq!(one(&mut d, &frame(BINARY, true, false, b"")), binary(b""));
}

#[test]
fn corrupt_compressed_data() {
    // 0xff: a final block of the reserved type 3.
    for bad in [&[0xffu8][..], &[0xff, 0xff, 0xff], &[0x06, 0xff, 0x00]] {
        let e = err(&mut compressing(), &frame(BINARY, true, true, bad));
        assert!(
            matches!(e, ProtocolError::BadCompression(_)),
            "{bad:?}: {e:?}"
        );
        assert_eq!(e.close_code(), 1007);
    }
    // A stored block whose length check fails.
    let e = err(
        &mut compressing(),
        &frame(BINARY, true, true, &[0x00, 0x05, 0x00, 0x00, 0x00]),
    );
    assert!(matches!(e, ProtocolError::BadCompression(_)), "{e:?}");
}

#[test]
fn corrupt_distance_too_far_back() {
    // A message compressed with a context (context takeover) inflated by a
    // fresh inflater references bytes it never saw.
    let mut c = Compress::new_with_window_bits(Compression::new(6), false, 15);
    let s = "a sentence long enough to be matched by the compressor";
    let _first = sync_compress(&mut c, s.as_bytes());
    let second = sync_compress(&mut c, s.as_bytes());
    let e = err(&mut compressing(), &frame(TEXT, true, true, &second));
    assert!(matches!(e, ProtocolError::BadCompression(_)), "{e:?}");
}

// ---------------------------------------------------------------- deflate: context takeover

#[test]
fn context_takeover_across_messages() {
    let msgs = [
        "the quick brown fox jumps over the lazy dog",
        "the quick brown fox jumps over the lazy dog",
        "the quick brown fox jumps over the lazy dog, again and again",
        "",
        "something else: the lazy dog",
    ];
    let mut c = Compress::new_with_window_bits(Compression::new(6), false, 15);
    let mut d = Decoder::new(LIMIT, Some(params(15, false).inflater()));
    let mut prev_len = usize::MAX;
    for (i, m) in msgs.iter().enumerate() {
        let z = sync_compress(&mut c, m.as_bytes());
        if i == 1 {
            // The repeated message refers back into the first one.
            assert!(z.len() < prev_len / 2, "{} vs {prev_len}", z.len());
        }
        prev_len = z.len();
        assert_eq!(
            one(&mut d, &frame(TEXT, true, true, &z)),
            text(m),
            "message {i}"
        );
        assert!(d.buffered() > 0, "the inflate context is kept");
    }
}

#[test]
fn context_takeover_fragmented_and_interleaved() {
    let mut c = Compress::new_with_window_bits(Compression::new(6), false, 15);
    let mut d = Decoder::new(LIMIT, Some(params(15, false).inflater()));
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for i in 0..10 {
        let m = format!("message number {i}: {}", "lorem ipsum dolor ".repeat(i));
        if i % 3 == 2 {
            // Uncompressed messages in between do not touch the context.
            wire.extend(frame(BINARY, true, false, m.as_bytes()));
            expected.push(binary(m.as_bytes()));
            continue;
        }
        let z = sync_compress(&mut c, m.as_bytes());
        let (a, b) = z.split_at(z.len() / 2);
        wire.extend(frame(TEXT, false, true, a));
        wire.extend(frame(PING, true, false, b""));
        wire.extend(frame(CONT, true, false, b));
        expected.push(Message::Ping(Bytes::new()));
        expected.push(text(&m));
    }
    let (msgs, e, _) = decode_all(&mut d, &wire);
    assert_eq!(e, None);
    assert_eq!(msgs, expected);
}

#[test]
fn context_takeover_with_a_final_block() {
    // A client may end a message with a final block (Z_FINISH): the
    // stream ends, and the next message starts a new one.
    let mut d = Decoder::new(LIMIT, Some(params(15, false).inflater()));
    for m in ["first, finished", "second, finished too"] {
        let mut c = Compress::new_with_window_bits(Compression::new(6), false, 15);
        let mut z = Vec::with_capacity(200);
        c.compress_vec(m.as_bytes(), &mut z, FlushCompress::Finish)
            .unwrap();
        assert_eq!(one(&mut d, &frame(TEXT, true, true, &z)), text(m));
    }
    // Then an ordinary message.
    let z = deflate::compress(b"ordinary", 15, 6);
    assert_eq!(one(&mut d, &frame(TEXT, true, true, &z)), text("ordinary"));
}

#[test]
fn no_context_takeover_drops_the_state() {
    let mut d = compressing();
    let z = deflate::compress(b"hello", 15, 6);
    assert_eq!(one(&mut d, &frame(TEXT, true, true, &z)), text("hello"));
    assert_eq!(d.buffered(), 0);
}

#[test]
fn small_client_window() {
    // client_max_window_bits=8: zlib cannot inflate raw deflate with an
    // 8-bit window, so the inflater uses 9 bits, which reads a stream
    // made with 9 (the smallest zlib writes) as well.
    let p = params(8, false);
    let s = "small window, small window, small window ".repeat(40);
    let mut c = Compress::new_with_window_bits(Compression::new(6), false, 9);
    let mut d = Decoder::new(LIMIT, Some(p.inflater()));
    for _ in 0..3 {
        let z = sync_compress(&mut c, s.as_bytes());
        assert_eq!(one(&mut d, &frame(TEXT, true, true, &z)), text(&s));
    }
}

// ---------------------------------------------------------------- negotiation

fn neg(values: &[&str]) -> Option<(Params, String)> {
    deflate::negotiate(values.iter().copied())
}

#[test]
fn negotiate_plain_offer() {
    let (p, r) = neg(&["permessage-deflate"]).unwrap();
    assert_eq!(
        p,
        Params {
            server_window_bits: 15,
            client_window_bits: 15,
            client_no_context_takeover: false,
        }
    );
    assert_eq!(r, "permessage-deflate; server_no_context_takeover");
    // Case-insensitive name, surrounding spaces.
    let (p2, r2) = neg(&["  PerMessage-Deflate  "]).unwrap();
    assert_eq!((p2, r2), (p, r));
}

#[test]
fn negotiate_client_max_window_bits_without_value() {
    let (p, r) = neg(&["permessage-deflate; client_max_window_bits"]).unwrap();
    assert_eq!(p.client_window_bits, CLIENT_WINDOW_BITS);
    assert_eq!(CLIENT_WINDOW_BITS, 10);
    assert_eq!(
        r,
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=10"
    );
}

#[test]
fn negotiate_client_max_window_bits_with_values() {
    // Below what we would ask for: the client uses it; nothing to answer.
    for b in [8u8, 9] {
        let (p, r) =
            neg(&[format!("permessage-deflate; client_max_window_bits={b}").as_str()]).unwrap();
        assert_eq!(p.client_window_bits, b);
        assert_eq!(r, "permessage-deflate; server_no_context_takeover");
    }
    // At or above: we answer with our smaller window.
    for b in [10u8, 12, 15] {
        let (p, r) =
            neg(&[format!("permessage-deflate; client_max_window_bits={b}").as_str()]).unwrap();
        assert_eq!(p.client_window_bits, 10);
        assert_eq!(
            r,
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=10"
        );
    }
    // A quoted value.
    let (p, _) = neg(&["permessage-deflate; client_max_window_bits=\"9\""]).unwrap();
    assert_eq!(p.client_window_bits, 9);
}

#[test]
fn negotiate_server_max_window_bits() {
    let (p, r) = neg(&["permessage-deflate; server_max_window_bits=12"]).unwrap();
    assert_eq!(p.server_window_bits, 12);
    assert_eq!(
        r,
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"
    );
    let (p, _) = neg(&["permessage-deflate; server_max_window_bits=9"]).unwrap();
    assert_eq!(p.server_window_bits, 9);
    // server_max_window_bits needs a value.
    assert_eq!(neg(&["permessage-deflate; server_max_window_bits"]), None);
}

#[test]
fn negotiate_server_window_8_falls_back_to_the_next_offer() {
    let (p, r) = neg(&[
        "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits",
    ])
    .unwrap();
    assert_eq!(p.server_window_bits, 15);
    assert_eq!(p.client_window_bits, 10);
    assert_eq!(
        r,
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=10"
    );
    // Alone, it is refused.
    assert_eq!(neg(&["permessage-deflate; server_max_window_bits=8"]), None);
}

#[test]
fn negotiate_no_context_takeover_parameters() {
    let (p, r) =
        neg(&["permessage-deflate; server_no_context_takeover; client_no_context_takeover"])
            .unwrap();
    assert!(p.client_no_context_takeover);
    assert_eq!(
        r,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
    let (p, r) = neg(&["permessage-deflate; client_no_context_takeover; client_max_window_bits; server_max_window_bits=10"]).unwrap();
    assert_eq!(
        p,
        Params {
            server_window_bits: 10,
            client_window_bits: 10,
            client_no_context_takeover: true,
        }
    );
    assert_eq!(
        r,
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; \
         client_no_context_takeover; client_max_window_bits=10"
    );
}

#[test]
fn negotiate_skips_bad_offers() {
    let bad = [
        "permessage-deflate; unknown_param",
        "permessage-deflate; unknown=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        "permessage-deflate; server_max_window_bits=10; server_max_window_bits=11",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=true",
        "permessage-deflate; server_max_window_bits=0",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=08",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; server_max_window_bits=abc",
        "permessage-deflate; server_max_window_bits=",
        "permessage-deflate; server_max_window_bits=-9",
        "permessage-deflate; server_max_window_bits=+9",
        "permessage-deflate; server_max_window_bits=1 0",
        "permessage-deflate; server_max_window_bits=255",
        "permessage-deflate; client_max_window_bits=0",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=08",
        "permessage-deflate; client_max_window_bits=abc",
        "permessage-deflate; client_max_window_bits=",
    ];
    for offer in bad {
        assert_eq!(neg(&[offer]), None, "{offer}");
        // Followed by a good offer in the same value: that one is taken.
        let (p, r) =
            neg(&[format!("{offer}, permessage-deflate; client_no_context_takeover").as_str()])
                .unwrap_or_else(|| panic!("{offer}"));
        assert!(p.client_no_context_takeover, "{offer}");
        assert!(r.ends_with("client_no_context_takeover"), "{offer}");
    }
}

#[test]
fn negotiate_ignores_other_extensions() {
    assert_eq!(neg(&[]), None);
    assert_eq!(neg(&[""]), None);
    assert_eq!(neg(&["x-webkit-deflate-frame"]), None);
    assert_eq!(neg(&["deflate-frame; no_context_takeover"]), None);
    assert_eq!(neg(&["permessage-deflatex"]), None);
    let (p, _) =
        neg(&["foo; bar=1, x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=9"])
            .unwrap();
    assert_eq!(p.client_window_bits, 9);
}

#[test]
fn negotiate_multiple_header_values() {
    let (p, r) = neg(&[
        "x-custom",
        "permessage-deflate; server_max_window_bits=99",
        "permessage-deflate; server_max_window_bits=11, permessage-deflate",
    ])
    .unwrap();
    assert_eq!(p.server_window_bits, 11);
    assert_eq!(
        r,
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=11"
    );
    // The first acceptable offer wins, across values.
    let (p, _) = neg(&[
        "permessage-deflate; client_no_context_takeover",
        "permessage-deflate",
    ])
    .unwrap();
    assert!(p.client_no_context_takeover);
}

#[test]
fn negotiate_response_always_has_server_no_context_takeover() {
    let offers = [
        "permessage-deflate",
        "permessage-deflate; server_no_context_takeover",
        "permessage-deflate; client_no_context_takeover",
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; client_max_window_bits=8",
        "permessage-deflate; server_max_window_bits=15",
        "permessage-deflate;server_max_window_bits=9;client_max_window_bits=15",
    ];
    for o in offers {
        let (p, r) = neg(&[o]).unwrap_or_else(|| panic!("{o}"));
        assert!(
            r.starts_with("permessage-deflate; server_no_context_takeover"),
            "{o}: {r}"
        );
        assert_eq!(
            r.matches("server_no_context_takeover").count(),
            1,
            "{o}: {r}"
        );
        // Whatever was agreed, the inflater reads what compress writes.
        let z = deflate::compress(b"negotiated", p.client_window_bits.max(9), 6);
        let mut d = Decoder::new(LIMIT, Some(p.inflater()));
        assert_eq!(
            one(&mut d, &frame(TEXT, true, true, &z)),
            text("negotiated")
        );
    }
}

#[test]
fn accepted_reads_our_responses() {
    for offer in [
        "permessage-deflate",
        "permessage-deflate; client_no_context_takeover",
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; client_max_window_bits=9",
        "permessage-deflate; server_max_window_bits=11; client_max_window_bits",
    ] {
        let (p, response) = neg(&[offer]).unwrap();
        let (q, server_nct) = deflate::accepted(&response).unwrap_or_else(|| panic!("{response}"));
        assert!(server_nct, "{response}");
        assert_eq!(q.server_window_bits, p.server_window_bits, "{response}");
        assert_eq!(
            q.client_no_context_takeover, p.client_no_context_takeover,
            "{response}"
        );
        if response.contains("client_max_window_bits") {
            assert_eq!(q.client_window_bits, p.client_window_bits, "{response}");
        } else {
            // Not limited by the response (the client may still use less,
            // as it announced).
            assert_eq!(q.client_window_bits, 15, "{response}");
        }
    }
    assert_eq!(deflate::accepted("x-webkit-deflate-frame"), None);
    assert_eq!(deflate::accepted("permessage-deflate; bogus"), None);
}

#[test]
fn invalid_utf8_inside_one_chopped_frame_fails_before_the_frame_is_complete() {
    let mut payload = "κόσμε".repeat(50).into_bytes();
    payload.extend_from_slice(&[
        0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80,
    ]);
    payload.extend_from_slice(&"x".repeat(4000).into_bytes());
    let bytes = frame_with_mask(1, true, false, &payload, [0x37, 0xfa, 0x21, 0x3d]);
    // Fed in pieces, as far as just past the invalid sequence: refused
    // although thousands of payload bytes are still missing.
    let cut = 8 + "κόσμε".len() * 50 + 14;
    let mut dec = plain();
    let mut buf = BytesMut::new();
    let mut result = Ok(None);
    for piece in bytes[..cut].chunks(7) {
        buf.extend_from_slice(piece);
        result = dec.decode(&mut buf);
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(ProtocolError::InvalidUtf8));

    // Valid text fed in odd-sized pieces still decodes whole and unmasked right.
    let good = "κόσμε".repeat(900);
    let bytes = frame_with_mask(1, true, false, good.as_bytes(), [1, 2, 3, 4]);
    let mut dec = plain();
    let mut buf = BytesMut::new();
    let mut got = None;
    for piece in bytes.chunks(13) {
        buf.extend_from_slice(piece);
        if let Some(m) = dec.decode(&mut buf).unwrap() {
            got = Some(m);
        }
    }
    assert_eq!(got, Some(text(&good)));
}
