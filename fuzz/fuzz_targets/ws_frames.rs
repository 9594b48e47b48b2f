//! Client bytes as the server's WebSocket decoder (`pulsegate_ws::Decoder`,
//! RFC 6455 framing and RFC 7692 permessage-deflate) reads them. Never
//! panics; what it returns obeys the RFC and the size limit; decoding the
//! input in small reads gives exactly what decoding it at once gives; every
//! decoded message, re-encoded as one masked frame (with `header`), decodes
//! to itself.
//!
//! Input layout: byte 0 configures the decoder (bit 0: permessage-deflate
//! negotiated; bit 1: `client_no_context_takeover`; bits 2–4: client window
//! 9 + n % 7 bits; bits 5–6: the message limit, one of `LIMITS`; bit 7: the
//! client side's decoder, `Decoder::client`, reading unmasked server frames);
//! byte 1 is the read size minus one (1–256 bytes); the rest is what the
//! peer sent.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pulsegate_ws::deflate::Params;
use pulsegate_ws::{close_code_valid, header, Decoder, Message, OpCode, ProtocolError};

/// Message limits: 64 KiB (twice as likely), 4 KiB, and 125 bytes (the
/// control frame limit).
const LIMITS: [usize; 4] = [64 * 1024, 64 * 1024, 4096, 125];

fuzz_target!(|data: &[u8]| {
    let &[cfg, read, ref wire @ ..] = data else {
        return;
    };
    let limit = LIMITS[usize::from(cfg >> 5) & 3];
    let params = (cfg & 1 != 0).then(|| Params {
        server_window_bits: 15,
        client_window_bits: 9 + (cfg >> 2 & 7) % 7,
        client_no_context_takeover: cfg & 2 != 0,
    });
    let client_side = cfg & 0x80 != 0;
    let decoder = move |inflater| {
        if client_side {
            Decoder::client(limit, inflater)
        } else {
            Decoder::new(limit, inflater)
        }
    };
    let new_decoder = || decoder(params.map(|p| p.inflater()));

    let (whole, whole_err) = decode(new_decoder(), wire, wire.len().max(1));
    let (chunked, chunked_err) = decode(new_decoder(), wire, usize::from(read) + 1);

    for m in &whole {
        check_message(m, limit);
    }
    if let Some(e) = &whole_err {
        assert!(
            matches!(e.close_code(), 1002 | 1007 | 1009),
            "{e:?} closes with {}",
            e.close_code()
        );
        assert!(!e.to_string().is_empty());
    }
    assert_eq!(whole, chunked, "whole and chunked reads disagree");
    assert_eq!(whole_err, chunked_err, "whole and chunked reads disagree");

    // Re-encoded as single frames (masked unless on the client side), the
    // messages decode to themselves (without an inflater: they are sent
    // uncompressed).
    let mut again = Vec::new();
    for (i, m) in whole.iter().enumerate() {
        let mask = (!client_side).then_some([cfg, read, i as u8, 0x5a]);
        encode(m, mask, &mut again);
    }
    let (decoded, err) = decode(decoder(None), &again, again.len().max(1));
    assert_eq!(err, None, "a re-encoded message was refused");
    assert_eq!(decoded, whole, "re-encoded messages decode differently");
});

/// Feeds `wire` in reads of `read` bytes, decoding after each until
/// `Ok(None)`; stops at the first error.
fn decode(mut dec: Decoder, wire: &[u8], read: usize) -> (Vec<Message>, Option<ProtocolError>) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in wire.chunks(read) {
        buf.extend_from_slice(chunk);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
        assert!(
            dec.need() > buf.len(),
            "need() = {} with {} bytes buffered",
            dec.need(),
            buf.len()
        );
    }
    (out, None)
}

/// What the decoder may return, whatever the client sent.
fn check_message(m: &Message, limit: usize) {
    match m {
        Message::Text(b) => {
            assert!(
                std::str::from_utf8(b).is_ok(),
                "a Text message is not UTF-8"
            );
            assert!(b.len() <= limit, "a message above the limit");
        }
        Message::Binary(b) => assert!(b.len() <= limit, "a message above the limit"),
        Message::Ping(b) | Message::Pong(b) => assert!(b.len() <= 125),
        Message::Close(Some((code, reason))) => {
            assert!(close_code_valid(*code), "close code {code} accepted");
            assert!(reason.len() <= 123);
        }
        Message::Close(None) => {}
    }
}

/// Encodes a message as one frame, masked when `mask` is given.
fn encode(m: &Message, mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    let close_payload;
    let (opcode, payload): (OpCode, &[u8]) = match m {
        Message::Text(b) => (OpCode::Text, b),
        Message::Binary(b) => (OpCode::Binary, b),
        Message::Ping(b) => (OpCode::Ping, b),
        Message::Pong(b) => (OpCode::Pong, b),
        Message::Close(None) => (OpCode::Close, &[]),
        Message::Close(Some((code, reason))) => {
            let mut p = code.to_be_bytes().to_vec();
            p.extend_from_slice(reason.as_bytes());
            close_payload = p;
            (OpCode::Close, &close_payload)
        }
    };
    let h = header(opcode, true, false, payload.len());
    let start = out.len();
    out.extend_from_slice(h.as_bytes());
    match mask {
        Some(mask) => {
            out[start + 1] |= 0x80;
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
}
