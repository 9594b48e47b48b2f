//! permessage-deflate (RFC 7692): negotiation, compression of outgoing
//! payloads, inflation of incoming ones.
//!
//! The server always answers with `server_no_context_takeover`, which RFC
//! 7692 §7.1.1.1 allows even when the client did not ask for it: every
//! message is then compressed on its own, so the compressed bytes of a
//! message depend only on the payload, the window size and the level, and
//! one compression serves every subscriber (see [`compress`]).

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The four bytes a sync flush ends with; stripped from every compressed
/// message and appended again before inflating (RFC 7692 §7.2.1–7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The client window we ask for when the client lets us choose
/// (`client_max_window_bits` without a value): 1 KiB of history keeps the
/// inflate state of a connection small; clients mostly send small frames.
pub const CLIENT_WINDOW_BITS: u8 = 10;

/// What both sides agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// LZ77 window of the messages we send (9–15).
    pub server_window_bits: u8,
    /// Largest LZ77 window the client may use (8–15).
    pub client_window_bits: u8,
    /// The client resets its compressor after every message, so we can
    /// drop our inflate state between messages.
    pub client_no_context_takeover: bool,
}

impl Params {
    /// The inflater for what this client sends.
    pub fn inflater(&self) -> Inflater {
        Inflater::new(self.client_window_bits, self.client_no_context_takeover)
    }
}

/// Picks the first `permessage-deflate` offer in the
/// `Sec-WebSocket-Extensions` header values that we can honour, and
/// returns the agreed parameters and the response header value. Offers
/// with unknown, repeated or malformed parameters are skipped, as is one
/// asking for an 8-bit server window (zlib cannot produce raw deflate
/// with a 256-byte window).
pub fn negotiate<'a>(header_values: impl IntoIterator<Item = &'a str>) -> Option<(Params, String)> {
    header_values
        .into_iter()
        .flat_map(|v| v.split(','))
        .find_map(accept_offer)
}

fn accept_offer(offer: &str) -> Option<(Params, String)> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let (mut snct, mut cnct) = (false, false);
    let mut server_bits: Option<u8> = None;
    let mut client_bits: Option<Option<u8>> = None;
    for p in parts {
        let (key, value) = match p.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        };
        match (key.to_ascii_lowercase().as_str(), value) {
            ("server_no_context_takeover", None) if !snct => snct = true,
            ("client_no_context_takeover", None) if !cnct => cnct = true,
            ("server_max_window_bits", Some(v)) if server_bits.is_none() => {
                server_bits = Some(window_bits(v)?)
            }
            ("client_max_window_bits", v) if client_bits.is_none() => {
                client_bits = Some(match v {
                    Some(v) => Some(window_bits(v)?),
                    None => None,
                })
            }
            _ => return None,
        }
    }
    if server_bits == Some(8) {
        return None;
    }
    let mut response = String::from("permessage-deflate; server_no_context_takeover");
    let server_window_bits = server_bits.unwrap_or(15);
    if let Some(b) = server_bits {
        response.push_str(&format!("; server_max_window_bits={b}"));
    }
    if cnct {
        response.push_str("; client_no_context_takeover");
    }
    let client_window_bits = match client_bits {
        // The client lets us choose, and commits to what we answer.
        Some(offered) if offered.unwrap_or(15) >= CLIENT_WINDOW_BITS => {
            response.push_str(&format!("; client_max_window_bits={CLIENT_WINDOW_BITS}"));
            CLIENT_WINDOW_BITS
        }
        // It announced a smaller window it will use anyway.
        Some(Some(b)) => b,
        // It did not say: it may use up to 32 KiB.
        _ => 15,
    };
    Some((
        Params {
            server_window_bits,
            client_window_bits,
            client_no_context_takeover: cnct,
        },
        response,
    ))
}

/// Client side: the parameters a server's `Sec-WebSocket-Extensions`
/// response accepted, if it accepted permessage-deflate. Inflate what the
/// server sends with `Inflater::new(p.server_window_bits,
/// server_no_context_takeover)`; the second value is that flag.
pub fn accepted(response: &str) -> Option<(Params, bool)> {
    let ext = response.split(',').find(|e| {
        e.split(';')
            .next()
            .is_some_and(|n| n.trim().eq_ignore_ascii_case("permessage-deflate"))
    })?;
    let mut params = Params {
        server_window_bits: 15,
        client_window_bits: 15,
        client_no_context_takeover: false,
    };
    let mut server_no_context_takeover = false;
    for p in ext.split(';').skip(1).map(str::trim) {
        let (key, value) = match p.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        };
        match (key.to_ascii_lowercase().as_str(), value) {
            ("server_no_context_takeover", None) => server_no_context_takeover = true,
            ("client_no_context_takeover", None) => params.client_no_context_takeover = true,
            ("server_max_window_bits", Some(v)) => params.server_window_bits = window_bits(v)?,
            ("client_max_window_bits", Some(v)) => params.client_window_bits = window_bits(v)?,
            _ => return None,
        }
    }
    Some((params, server_no_context_takeover))
}

fn window_bits(v: &str) -> Option<u8> {
    if v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let b: u8 = v.parse().ok()?;
    (8..=15).contains(&b).then_some(b)
}

thread_local! {
    /// One reusable compressor per thread and window size (index
    /// `bits - 9`): creating one allocates a few hundred KiB.
    static COMPRESSORS: RefCell<[Option<(u32, Compress)>; 7]> = const { RefCell::new([None, None, None, None, None, None, None]) };
}

/// Compresses one message payload with no context takeover: raw deflate,
/// sync-flushed, without the trailing `00 00 ff ff`. The result is the
/// same for every connection with the same window size, so a gateway
/// compresses a message once and shares it.
pub fn compress(payload: &[u8], window_bits: u8, level: u32) -> Bytes {
    let bits = window_bits.clamp(9, 15);
    COMPRESSORS.with(|cell| {
        let mut slots = cell.borrow_mut();
        let slot = &mut slots[(bits - 9) as usize];
        if !matches!(slot, Some((l, _)) if *l == level) {
            *slot = Some((
                level,
                Compress::new_with_window_bits(Compression::new(level), false, bits),
            ));
        }
        let (_, c) = slot.as_mut().expect("set above");
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        let start_in = c.total_in();
        loop {
            let consumed = (c.total_in() - start_in) as usize;
            c.compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
                .expect("deflate of an in-memory buffer cannot fail");
            let done = (c.total_in() - start_in) as usize == payload.len();
            if done && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        c.reset();
        debug_assert!(out.ends_with(&TAIL));
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        Bytes::from(out)
    })
}

/// Why a compressed message could not be inflated.
#[derive(Debug)]
pub enum InflateError {
    /// It inflates to more than the message limit.
    TooBig,
    /// Not valid deflate data.
    Corrupt(String),
}

/// Inflates the compressed messages of one connection.
pub struct Inflater {
    /// Created on the first compressed message; dropped after each one
    /// when the client does not keep its context.
    state: Option<Box<Decompress>>,
    window_bits: u8,
    no_context_takeover: bool,
}

impl Inflater {
    /// An inflater for a peer compressing with `window_bits` (8–15); with
    /// `no_context_takeover` its state is dropped after every message. The
    /// client side of a connection to pulsegate uses
    /// `Inflater::new(params.server_window_bits, true)`.
    pub fn new(window_bits: u8, no_context_takeover: bool) -> Self {
        Inflater {
            state: None,
            window_bits: window_bits.clamp(9, 15),
            no_context_takeover,
        }
    }

    /// Approximate heap bytes held (zlib's inflate state and window).
    pub fn footprint(&self) -> usize {
        if self.state.is_some() {
            7 * 1024 + (1usize << self.window_bits)
        } else {
            0
        }
    }

    /// Inflates one message; refuses output above `max` bytes.
    pub fn inflate(&mut self, compressed: &[u8], max: usize) -> Result<Bytes, InflateError> {
        let bits = self.window_bits;
        let d = self
            .state
            .get_or_insert_with(|| Box::new(Decompress::new_with_window_bits(false, bits)));
        let mut input = Vec::with_capacity(compressed.len() + TAIL.len());
        input.extend_from_slice(compressed);
        input.extend_from_slice(&TAIL);
        let limit = max.saturating_add(1);
        let mut out: Vec<u8> = Vec::with_capacity((compressed.len() * 4 + 64).min(limit));
        let (in0, mut pos) = (d.total_in(), 0usize);
        let mut ended = false;
        let result = loop {
            if out.len() == out.capacity() {
                if out.len() >= limit {
                    break Err(InflateError::TooBig);
                }
                let more = out.capacity().max(256).min(limit - out.len());
                out.reserve_exact(more);
            }
            let (before_in, before_out) = (d.total_in(), d.total_out());
            let status = match d.decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync) {
                Ok(s) => s,
                Err(e) => break Err(InflateError::Corrupt(e.to_string())),
            };
            pos = (d.total_in() - in0) as usize;
            if out.len() > max {
                break Err(InflateError::TooBig);
            }
            if status == Status::StreamEnd {
                ended = true;
                break Ok(());
            }
            let progressed = d.total_in() != before_in || d.total_out() != before_out;
            if pos == input.len() && out.len() < out.capacity() {
                break Ok(());
            }
            if !progressed && out.len() < out.capacity() {
                break Err(InflateError::Corrupt("inflate made no progress".into()));
            }
        };
        if result.is_err() || ended || self.no_context_takeover {
            // A final block ends the stream: the next message starts a new one.
            self.state = None;
        }
        result.map(|()| Bytes::from(out))
    }
}
