//! Subscriber connections that offer permessage-deflate (RFC 7692), for
//! `--deflate`.
//!
//! tokio-websockets refuses frames with RSV1 set, so it cannot read what a
//! server compresses. [`DeflateWs`] does the HTTP upgrade by hand over a
//! `TcpStream`, offering `permessage-deflate; client_max_window_bits`, and
//! frames with the sans-IO `pulsegate-ws` crate: its client [`Decoder`] reads
//! the server's unmasked frames and inflates compressed messages; the few
//! frames a subscriber sends (`sub`, keepalives, pongs, close) are masked
//! here and never compressed.
//!
//! [`DeflateWs`] is a `Stream` and `Sink` of tokio-websockets [`Message`]s,
//! like tokio-websockets' own stream, so the protocol code
//! ([`Session`](crate::wire::Session)) and the subscriber loop drive both
//! kinds of connection the same way ([`AnyWs`]). Like tokio-websockets it
//! answers pings and echoes the server's close frame itself. It also counts
//! what arrived ([`WireTally`]): bytes read from the socket versus the
//! decoded bytes of the messages they carried.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;
use bytes::{Buf, BufMut, BytesMut};
use futures_util::{Sink, Stream};
use pulsegate_ws::deflate::{Inflater, Params};
use pulsegate_ws::{header, Decoder, OpCode};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_websockets::{CloseCode, Error as WsError, Message};

use crate::wire::{Target, Ws};

/// The extension offer: the server may pick the window of what we (never)
/// compress; what it compresses is inflated with the window it announces.
pub const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// Largest message (after inflating) a subscriber accepts.
const MAX_MESSAGE: usize = 64 << 20;
/// Bytes asked of each socket read at least.
const READ_CHUNK: usize = 8 << 10;
/// Largest upgrade response head.
const MAX_HEAD: usize = 16 << 10;
/// Queued outgoing bytes above which `poll_ready` flushes first.
const WRITE_HIGH_WATER: usize = 64 << 10;
/// RFC 6455 §1.3.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What one connection received.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WireTally {
    /// Bytes read from the socket after the upgrade response head: frame
    /// headers, control frames and (possibly compressed) payloads.
    pub wire_bytes: u64,
    /// Payload bytes of the text and binary messages, after inflating.
    pub raw_bytes: u64,
    /// Text and binary messages received.
    pub messages: u64,
    /// Of those, messages that arrived compressed (RSV1).
    pub compressed_messages: u64,
}

/// A client WebSocket over plain TCP framed by `pulsegate-ws`, with
/// permessage-deflate when the server accepted it.
pub struct DeflateWs {
    io: TcpStream,
    /// Bytes read and not decoded yet.
    rbuf: BytesMut,
    /// Encoded frames not written yet.
    wbuf: BytesMut,
    decoder: Decoder,
    params: Option<Params>,
    tally: WireTally,
    /// The message the decoder is on started with an RSV1 frame.
    compressed: bool,
    close_sent: bool,
    /// The server's close frame arrived, or the stream ended or failed.
    read_done: bool,
}

impl std::fmt::Debug for DeflateWs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeflateWs")
            .field("params", &self.params)
            .field("tally", &self.tally)
            .finish_non_exhaustive()
    }
}

impl DeflateWs {
    /// TCP connect (with `TCP_NODELAY`) and the upgrade, offering
    /// permessage-deflate when `offer` is set. A server that does not
    /// accept the offer still gives a working, uncompressed connection
    /// ([`DeflateWs::negotiated`] is `None`). `ws://` only.
    pub async fn connect(target: &Target, offer: bool) -> anyhow::Result<Self> {
        if target.url.scheme() != "ws" {
            bail!(
                "--deflate supports ws:// URLs only, got {}",
                target.url.as_str()
            );
        }
        let addr = target.addr();
        let mut io = TcpStream::connect(addr)
            .await
            .with_context(|| format!("TCP connect to {addr}"))?;
        io.set_nodelay(true)?;

        let key = base64::engine::general_purpose::STANDARD
            .encode(std::array::from_fn::<u8, 16, _>(|_| fastrand::u8(..)));
        let url = &target.url;
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let path = match &url[url::Position::BeforePath..url::Position::AfterQuery] {
            "" => "/",
            p => p,
        };
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        );
        if offer {
            req.push_str(&format!("Sec-WebSocket-Extensions: {OFFER}\r\n"));
        }
        req.push_str("\r\n");
        io.write_all(req.as_bytes())
            .await
            .context("WebSocket upgrade: writing the request")?;

        let mut buf = BytesMut::with_capacity(1024);
        let head_len = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                bail!("WebSocket upgrade: response head longer than {MAX_HEAD} bytes");
            }
            buf.reserve(1024);
            if io
                .read_buf(&mut buf)
                .await
                .context("WebSocket upgrade: reading the response")?
                == 0
            {
                bail!("WebSocket upgrade: connection closed before the response head");
            }
        };
        let params = check_response(&buf[..head_len], &key, offer).context("WebSocket upgrade")?;
        // Frames the server sent right behind the response head.
        let rbuf = buf.split_off(head_len);
        let inflater =
            params.map(|(p, no_takeover)| Inflater::new(p.server_window_bits, no_takeover));
        Ok(Self {
            io,
            tally: WireTally {
                wire_bytes: rbuf.len() as u64,
                ..WireTally::default()
            },
            rbuf,
            wbuf: BytesMut::new(),
            decoder: Decoder::client(MAX_MESSAGE, inflater),
            params: params.map(|(p, _)| p),
            compressed: false,
            close_sent: false,
            read_done: false,
        })
    }

    /// The parameters agreed, if the server accepted permessage-deflate.
    pub fn negotiated(&self) -> Option<Params> {
        self.params
    }

    /// What this connection has received so far.
    pub fn tally(&self) -> WireTally {
        self.tally
    }

    /// Queues one masked frame.
    fn queue(&mut self, opcode: OpCode, payload: &[u8]) {
        encode_masked(
            &mut self.wbuf,
            opcode,
            payload,
            fastrand::u32(..).to_ne_bytes(),
        );
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf)) {
                Ok(0) => {
                    self.wbuf.clear();
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => self.wbuf.advance(n),
                Err(e) => {
                    self.wbuf.clear();
                    return Poll::Ready(Err(e));
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    fn count(&mut self, len: usize) {
        self.tally.messages += 1;
        self.tally.raw_bytes += len as u64;
        self.tally.compressed_messages += u64::from(self.compressed);
    }

    /// Counts a decoded message, answers pings and closes, and hands the
    /// message over as tokio-websockets would.
    fn on_message(&mut self, msg: pulsegate_ws::Message) -> Message {
        match msg {
            pulsegate_ws::Message::Text(b) => {
                self.count(b.len());
                Message::text(b)
            }
            pulsegate_ws::Message::Binary(b) => {
                self.count(b.len());
                Message::binary(b)
            }
            pulsegate_ws::Message::Ping(p) => {
                if !self.close_sent {
                    self.queue(OpCode::Pong, &p);
                }
                Message::ping(p)
            }
            pulsegate_ws::Message::Pong(p) => Message::pong(p),
            pulsegate_ws::Message::Close(c) => {
                self.read_done = true;
                if !self.close_sent {
                    // Echo the code (RFC 6455 §5.5.1).
                    let payload = c.as_ref().map(|(code, _)| code.to_be_bytes());
                    self.queue(OpCode::Close, payload.as_ref().map_or(&[][..], |p| &p[..]));
                    self.close_sent = true;
                }
                match c {
                    Some((code, reason)) => {
                        Message::close(CloseCode::try_from(code).ok(), truncate(&reason, 123))
                    }
                    None => Message::close(None, ""),
                }
            }
        }
    }
}

/// Checks a `101` response head and returns the permessage-deflate
/// parameters it accepted (and whether the server drops its context after
/// each message).
fn check_response(head: &[u8], key: &str, offered: bool) -> anyhow::Result<Option<(Params, bool)>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let status = resp.parse(head).context("malformed response head")?;
    anyhow::ensure!(status.is_complete(), "incomplete response head");
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        bail!("status {code} {}", resp.reason.unwrap_or(""));
    }
    let values = |name: &str| {
        resp.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
            .collect::<Vec<_>>()
    };
    let has_token = |name: &str, token: &str| {
        values(name)
            .iter()
            .flat_map(|v| {
                v.split(',')
                    .map(|t| t.trim().to_owned())
                    .collect::<Vec<_>>()
            })
            .any(|t| t.eq_ignore_ascii_case(token))
    };
    anyhow::ensure!(
        has_token("upgrade", "websocket"),
        "101 without Upgrade: websocket"
    );
    anyhow::ensure!(
        has_token("connection", "upgrade"),
        "101 without Connection: Upgrade"
    );
    let expected = accept_key(key);
    let accept = values("sec-websocket-accept");
    anyhow::ensure!(
        accept.contains(&expected),
        "Sec-WebSocket-Accept {accept:?} does not match the key (expected {expected})"
    );
    let ext = values("sec-websocket-extensions").join(", ");
    if ext.is_empty() {
        return Ok(None);
    }
    if !offered {
        bail!("the server accepted an extension that was not offered: {ext}");
    }
    pulsegate_ws::deflate::accepted(&ext)
        .map(Some)
        .ok_or_else(|| anyhow!("the server accepted an extension we cannot use: {ext}"))
}

/// `Sec-WebSocket-Accept` for `key`.
fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// Appends one client frame (FIN set, uncompressed) masked with `mask`.
pub fn encode_masked(out: &mut BytesMut, opcode: OpCode, payload: &[u8], mask: [u8; 4]) {
    let h = header(opcode, true, false, payload.len());
    let h = h.as_bytes();
    out.reserve(h.len() + 4 + payload.len());
    out.put_u8(h[0]);
    out.put_u8(h[1] | 0x80);
    out.put_slice(&h[2..]);
    out.put_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn io_err(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> WsError {
    WsError::Io(io::Error::new(io::ErrorKind::InvalidData, e))
}

impl Stream for DeflateWs {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.read_done {
            // The echo of the server's close goes out before the end.
            let _ = ready!(this.poll_write_out(cx));
            return Poll::Ready(None);
        }
        // Pongs queued by earlier pings leave before more is read.
        if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
            this.read_done = true;
            return Poll::Ready(Some(Err(WsError::Io(e))));
        }
        loop {
            if this.decoder.is_idle() {
                if let Some(&b0) = this.rbuf.first() {
                    // RSV1 on the first frame of a data message (control
                    // frames never carry it).
                    this.compressed = b0 & 0x40 != 0;
                }
            }
            match this.decoder.decode(&mut this.rbuf) {
                Ok(Some(m)) => return Poll::Ready(Some(Ok(this.on_message(m)))),
                Ok(None) => {}
                Err(e) => {
                    this.read_done = true;
                    if !this.close_sent {
                        this.queue(OpCode::Close, &e.close_code().to_be_bytes());
                        this.close_sent = true;
                    }
                    return Poll::Ready(Some(Err(io_err(e))));
                }
            }
            let want = this
                .decoder
                .need()
                .saturating_sub(this.rbuf.len())
                .max(READ_CHUNK);
            this.rbuf.reserve(want);
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut this.rbuf
            )) {
                Ok(0) => {
                    this.read_done = true;
                    return Poll::Ready(None);
                }
                Ok(n) => this.tally.wire_bytes += n as u64,
                Err(e) => {
                    this.read_done = true;
                    return Poll::Ready(Some(Err(WsError::Io(e))));
                }
            }
        }
    }
}

impl Sink<Message> for DeflateWs {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        if this.wbuf.len() >= WRITE_HIGH_WATER {
            ready!(this.poll_write_out(cx)).map_err(WsError::Io)?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, msg: Message) -> Result<(), WsError> {
        let this = self.get_mut();
        if this.close_sent {
            return Err(WsError::AlreadyClosed);
        }
        let opcode = if msg.is_text() {
            OpCode::Text
        } else if msg.is_binary() {
            OpCode::Binary
        } else if msg.is_ping() {
            OpCode::Ping
        } else if msg.is_pong() {
            OpCode::Pong
        } else {
            this.close_sent = true;
            OpCode::Close
        };
        this.queue(opcode, msg.as_payload());
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx)).map_err(WsError::Io)?;
        Pin::new(&mut this.io).poll_flush(cx).map_err(WsError::Io)
    }

    /// Sends a close frame (1000) unless one was sent, waits for the
    /// server's (or the end of the stream), and shuts the socket down.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        if !this.close_sent {
            this.queue(OpCode::Close, &1000u16.to_be_bytes());
            this.close_sent = true;
        }
        ready!(this.poll_write_out(cx)).map_err(WsError::Io)?;
        while ready!(Pin::new(&mut *this).poll_next(cx)).is_some() {}
        Pin::new(&mut this.io)
            .poll_shutdown(cx)
            .map_err(WsError::Io)
    }
}

/// A subscriber's connection: tokio-websockets', or [`DeflateWs`] with
/// `--deflate`.
#[derive(Debug)]
pub enum AnyWs {
    /// tokio-websockets (no extension offered).
    Plain(Box<Ws>),
    /// Framed by pulsegate-ws, permessage-deflate offered.
    Deflate(Box<DeflateWs>),
}

impl Stream for AnyWs {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut() {
            Self::Plain(w) => Pin::new(&mut **w).poll_next(cx),
            Self::Deflate(w) => Pin::new(&mut **w).poll_next(cx),
        }
    }
}

impl Sink<Message> for AnyWs {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match self.get_mut() {
            Self::Plain(w) => Pin::new(&mut **w).poll_ready(cx),
            Self::Deflate(w) => Pin::new(&mut **w).poll_ready(cx),
        }
    }

    fn start_send(self: Pin<&mut Self>, msg: Message) -> Result<(), WsError> {
        match self.get_mut() {
            Self::Plain(w) => Pin::new(&mut **w).start_send(msg),
            Self::Deflate(w) => Pin::new(&mut **w).start_send(msg),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match self.get_mut() {
            Self::Plain(w) => Pin::new(&mut **w).poll_flush(cx),
            Self::Deflate(w) => Pin::new(&mut **w).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match self.get_mut() {
            Self::Plain(w) => Pin::new(&mut **w).poll_close(cx),
            Self::Deflate(w) => Pin::new(&mut **w).poll_close(cx),
        }
    }
}

/// What `--deflate` subscribers negotiated and received, summed over the
/// subscribers that completed setup.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DeflateSummary {
    /// Subscribers that offered permessage-deflate and completed setup.
    pub offered: u64,
    /// Of those, subscribers whose server accepted the extension.
    pub negotiated: u64,
    /// Bytes subscribers read from their sockets after the upgrade (frame
    /// headers, control frames, compressed payloads), whole run.
    pub wire_bytes: u64,
    /// Decoded payload bytes of the text/binary messages they received.
    pub raw_bytes: u64,
    /// `wire_bytes / raw_bytes`, to 4 decimals.
    pub wire_ratio: Option<f64>,
    /// Text/binary messages received.
    pub messages: u64,
    /// Of those, messages that arrived compressed.
    pub compressed_messages: u64,
}

impl DeflateSummary {
    /// Adds one subscriber's connection.
    pub fn add(&mut self, negotiated: bool, t: &WireTally) {
        self.offered += 1;
        self.negotiated += u64::from(negotiated);
        self.wire_bytes += t.wire_bytes;
        self.raw_bytes += t.raw_bytes;
        self.messages += t.messages;
        self.compressed_messages += t.compressed_messages;
        self.wire_ratio = (self.raw_bytes > 0)
            .then(|| (self.wire_bytes as f64 / self.raw_bytes as f64 * 1e4).round() / 1e4);
    }

    /// The report row: `1000/1000 negotiated, 1,234 B on the wire for …`.
    pub fn row(&self) -> String {
        format!(
            "{}/{} negotiated; {} B on the wire for {} B decoded ({}); {}/{} messages compressed",
            self.negotiated,
            self.offered,
            crate::report::grouped_int(self.wire_bytes),
            crate::report::grouped_int(self.raw_bytes),
            self.wire_ratio
                .map_or_else(|| "n/a".to_owned(), |r| format!("{:.1}%", r * 100.0)),
            crate::report::grouped_int(self.compressed_messages),
            crate::report::grouped_int(self.messages)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn masked_frames_decode_on_the_server_side() {
        let mut buf = BytesMut::new();
        let long = vec![b'a'; 300];
        encode_masked(&mut buf, OpCode::Text, br#"{"op":"sub"}"#, [1, 2, 3, 4]);
        encode_masked(&mut buf, OpCode::Pong, b"\0\0\0\0\0\0\0\x07", [9, 8, 7, 6]);
        encode_masked(&mut buf, OpCode::Binary, &long, [0xff, 0, 0x55, 0xaa]);
        encode_masked(
            &mut buf,
            OpCode::Close,
            &1000u16.to_be_bytes(),
            [5, 5, 5, 5],
        );
        assert_eq!(buf[1] & 0x80, 0x80, "mask bit");
        let mut server = Decoder::new(1 << 20, None);
        let mut got = Vec::new();
        while let Some(m) = server.decode(&mut buf).unwrap() {
            got.push(m);
        }
        assert_eq!(
            got,
            vec![
                pulsegate_ws::Message::Text(Bytes::from_static(br#"{"op":"sub"}"#)),
                pulsegate_ws::Message::Pong(Bytes::from_static(b"\0\0\0\0\0\0\0\x07")),
                pulsegate_ws::Message::Binary(Bytes::from(long)),
                pulsegate_ws::Message::Close(Some((1000, String::new()))),
            ]
        );
        assert!(buf.is_empty());
    }

    fn response(accept: &str, extra: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
        )
    }

    #[test]
    fn upgrade_responses_are_checked() {
        // RFC 6455 §1.3's example.
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        assert_eq!(accept_key(key), accept);
        assert_eq!(
            check_response(response(accept, "").as_bytes(), key, true).unwrap(),
            None
        );
        let (p, no_takeover) = check_response(
            response(
                accept,
                "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_max_window_bits=10\r\n",
            )
            .as_bytes(),
            key,
            true,
        )
        .unwrap()
        .unwrap();
        assert!(no_takeover);
        assert_eq!((p.server_window_bits, p.client_window_bits), (15, 10));
        let ext = "Sec-WebSocket-Extensions: permessage-deflate\r\n";
        let err = check_response(response(accept, ext).as_bytes(), key, false).unwrap_err();
        assert!(err.to_string().contains("not offered"), "{err}");
        let err = check_response(response("nope", "").as_bytes(), key, true).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        let err = check_response(
            b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n",
            key,
            true,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "status 429 Too Many Requests");
        let bad = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=99\r\n";
        let err = check_response(response(accept, bad).as_bytes(), key, true).unwrap_err();
        assert!(err.to_string().contains("cannot use"), "{err}");
    }

    #[test]
    fn summary_row() {
        let mut s = DeflateSummary::default();
        let t = WireTally {
            wire_bytes: 1_000,
            raw_bytes: 40_000,
            messages: 1_000,
            compressed_messages: 999,
        };
        s.add(true, &t);
        s.add(false, &t);
        assert_eq!(
            s.row(),
            "1/2 negotiated; 2,000 B on the wire for 80,000 B decoded (2.5%); 1,998/2,000 messages compressed"
        );
        assert_eq!(s.wire_ratio, Some(0.025));
    }
}
