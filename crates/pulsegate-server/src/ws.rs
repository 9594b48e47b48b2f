//! One WebSocket connection's bytes: reads frames through
//! [`pulsegate_ws::Decoder`], writes queued frames in one vectored write,
//! answers pings and closes, and compresses large messages once for all
//! subscribers when permessage-deflate was negotiated.
//!
//! Memory: the read buffer is allocated while bytes are being read and
//! released by [`WsStream::release_buffers`] when the connection goes idle;
//! the write queue likewise. A connection that negotiated compression holds
//! no compressor (compression is per message, with a per-thread
//! compressor) and an inflate state only if the client compresses with
//! context takeover.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use pulsegate_ws::deflate::Params;
use pulsegate_ws::{header, Decoder, Header, Message, OpCode, ProtocolError};
use tokio::io::{AsyncRead, AsyncWrite};

/// Bytes read per `read` call when no larger frame is pending.
const READ_CHUNK: usize = 4096;
/// Room for the next read after a read that did not fill its room: usually
/// a pong or one small request, so a connection that wakes for a heartbeat
/// does not make a 4 KiB buffer resident to read a few bytes (after a mass
/// reconnect, heartbeats are synchronised and every connection wakes at
/// once). A read that fills its room makes the next one [`READ_CHUNK`].
const SMALL_READ: usize = 512;
/// Control replies (pongs) queued beyond this stop reading from the
/// client until they are written: a ping flood cannot grow our memory.
const MAX_PENDING_CONTROL: u32 = 64 * 1024;
/// At most this many buffers per vectored write (Linux IOV_MAX is 1024).
const MAX_IOV: usize = 512;
/// Without vectored writes (TLS), frames are copied into one buffer of up to this size.
const COALESCE: usize = 64 * 1024;
/// Payloads up to this size are copied into the write buffer when queued
/// rather than given to the kernel as an iovec of their own.
const INLINE_MAX: usize = 2048;
/// Write-buffer room made when first used: 1 KiB, the class of the outbox
/// and batch storage, which are freed at hibernation too; no long-lived
/// per-connection object uses it, so freeing them leaves no hole between
/// those (a 2 KiB first buffer cost about 40 B of RSS per idle connection).
const WBUF_RESERVE: usize = 1024;
/// Write-buffer capacity kept between flushes; above it the buffer is freed
/// once everything is written (a connection that bursts does not keep it).
const WBUF_KEEP: usize = 64 * 1024;

/// What went wrong on the connection.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The client broke RFC 6455 (or our message size limit).
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// Compression negotiated for this connection.
#[derive(Debug, Clone, Copy)]
pub struct Deflate {
    /// Agreed parameters.
    pub params: Params,
    /// Messages shorter than this are sent uncompressed.
    pub threshold: usize,
    /// zlib level (1–9).
    pub level: u32,
}

/// Compression counters of one connection since the last take.
#[derive(Debug, Default, Clone, Copy)]
pub struct DeflateTally {
    /// Messages sent compressed.
    pub messages: u64,
    /// Their size before compression.
    pub raw_bytes: u64,
    /// Their size on the wire (payload).
    pub wire_bytes: u64,
    /// Compressions this connection performed (the rest were shared).
    pub compressions: u64,
}

/// A server-side WebSocket connection over `S`.
pub struct WsStream<S> {
    io: S,
    rbuf: BytesMut,
    decoder: Decoder,
    /// What to write, in order; `written` bytes of the first chunk are out
    /// when it is a [`Chunk::Frame`].
    queue: VecDeque<Chunk>,
    written: usize,
    /// The bytes of the [`Chunk::Buf`] chunks, in queue order, from
    /// `wbuf_head` on: small frames are copied here when queued, so a batch
    /// of telemetry goes to the kernel as one long buffer (one iovec per
    /// frame part costs more in the kernel than the copy costs here).
    wbuf: Vec<u8>,
    wbuf_head: u32,
    /// Queued pong/close bytes not yet written (for the ping-flood bound).
    control_bytes: u32,
    /// Boxed: most connections do not compress, and an idle connection's
    /// state should be small (docs/ARCHITECTURE.md, memory).
    deflate: Option<Box<(Deflate, DeflateTally)>>,
    close_sent: bool,
    /// The last read did not fill its room: the next may be small.
    small_read: bool,
    /// No more frames will be read: close received, EOF, or a protocol error.
    read_done: bool,
    /// After a protocol error: discard what the client still sends until EOF.
    discarding: bool,
    /// Without vectored writes (TLS): the next bytes to write, coalesced.
    scratch: Vec<u8>,
}

/// A run of queued bytes.
enum Chunk {
    /// The next this-many bytes of the write buffer: whole small frames.
    Buf(usize),
    /// A frame whose payload is written from where it is (large payloads,
    /// and control frames, whose bytes the ping-flood bound counts).
    Frame(Header, Bytes),
    /// Whole data frames, already framed ([`frame_all`]), written from
    /// where they are.
    Framed(Bytes),
}

/// Data frames (text, or binary) of `payloads`, back to back, as
/// [`WsStream::queue_framed`] takes them; uncompressed.
pub fn frame_all<'a>(binary: bool, payloads: impl Iterator<Item = &'a Bytes> + Clone) -> Bytes {
    let opcode = if binary { OpCode::Binary } else { OpCode::Text };
    let len = payloads.clone().map(|p| p.len() + 10).sum();
    let mut out = Vec::with_capacity(len);
    for p in payloads {
        out.extend_from_slice(header(opcode, true, false, p.len()).as_bytes());
        out.extend_from_slice(p);
    }
    out.into()
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Wraps a socket whose handshake is done. `max_message` bounds a
    /// message (inflated, when compressed).
    pub fn new(io: S, max_message: usize, deflate: Option<Deflate>) -> Self {
        WsStream {
            io,
            rbuf: BytesMut::new(),
            decoder: Decoder::new(max_message, deflate.map(|d| d.params.inflater())),
            queue: VecDeque::new(),
            written: 0,
            wbuf: Vec::new(),
            wbuf_head: 0,
            control_bytes: 0,
            deflate: deflate.map(|d| Box::new((d, DeflateTally::default()))),
            close_sent: false,
            small_read: true,
            read_done: false,
            discarding: false,
            scratch: Vec::new(),
        }
    }

    /// The socket.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Whether permessage-deflate is on.
    pub fn compressing(&self) -> bool {
        self.deflate.is_some()
    }

    /// True when nothing is buffered in either direction and no message is
    /// half read: the connection can drop its buffers and sleep.
    pub fn is_idle(&self) -> bool {
        self.rbuf.is_empty() && self.decoder.is_idle() && self.queue.is_empty()
    }

    /// Frees the read buffer and the write queue's storage if idle.
    pub fn release_buffers(&mut self) -> bool {
        if !self.is_idle() {
            return false;
        }
        self.rbuf = BytesMut::new();
        self.queue = VecDeque::new();
        self.wbuf = Vec::new();
        self.wbuf_head = 0;
        self.scratch = Vec::new();
        self.small_read = true;
        true
    }

    /// Compression counters since the last call.
    pub fn take_tally(&mut self) -> DeflateTally {
        self.deflate
            .as_mut()
            .map(|d| std::mem::take(&mut d.1))
            .unwrap_or_default()
    }

    /// Queues a data message (text or binary), compressed when negotiated
    /// and at least the threshold; `threshold` overrides the configured one.
    /// A small payload is copied, a large one shared.
    pub fn queue_data(&mut self, binary: bool, payload: &Bytes, threshold: Option<usize>) {
        if self.close_sent {
            return;
        }
        let opcode = if binary { OpCode::Binary } else { OpCode::Text };
        match self.deflate.as_deref_mut() {
            Some((d, tally)) if payload.len() >= threshold.unwrap_or(d.threshold) => {
                let (wire, fresh) = shared_compress(payload, d.params.server_window_bits, d.level);
                tally.messages += 1;
                tally.raw_bytes += payload.len() as u64;
                tally.wire_bytes += wire.len() as u64;
                tally.compressions += u64::from(fresh);
                self.push_data(header(opcode, true, true, wire.len()), &wire);
            }
            _ => self.push_data(header(opcode, true, false, payload.len()), payload),
        }
    }

    fn push_data(&mut self, h: Header, payload: &Bytes) {
        if payload.len() > INLINE_MAX {
            return self.push(h, payload.clone(), false);
        }
        self.copy_in(&[h.as_bytes(), payload]);
    }

    /// Appends whole frames to the write buffer.
    fn copy_in(&mut self, parts: &[&[u8]]) {
        if self.wbuf.capacity() == 0 {
            // Not a size class of the long-lived per-connection objects.
            self.wbuf.reserve(WBUF_RESERVE);
        }
        let mut n = 0;
        for part in parts {
            self.wbuf.extend_from_slice(part);
            n += part.len();
        }
        match self.queue.back_mut() {
            Some(Chunk::Buf(len)) => *len += n,
            _ => self.queue.push_back(Chunk::Buf(n)),
        }
    }

    fn push_chunk(&mut self, chunk: Chunk) {
        if self.queue.capacity() == 0 {
            // 16 frames: a size class no long-lived per-connection object
            // uses, so freeing it at hibernation leaves no hole between them.
            self.queue.reserve(16);
        }
        self.queue.push_back(chunk);
    }

    /// Queues data frames built by [`frame_all`] (so never compressed): up
    /// to [`INLINE_MAX`] copied into the write buffer, larger runs shared.
    pub fn queue_framed(&mut self, frames: &Bytes) {
        if self.close_sent {
            return;
        }
        if frames.len() > INLINE_MAX {
            self.push_chunk(Chunk::Framed(frames.clone()));
        } else {
            self.copy_in(&[frames]);
        }
    }

    /// Queues a ping.
    pub fn queue_ping(&mut self, payload: Bytes) {
        if !self.close_sent {
            self.push(
                header(OpCode::Ping, true, false, payload.len()),
                payload,
                true,
            );
        }
    }

    /// Queues our close frame (once); later data is not sent.
    pub fn queue_close(&mut self, code: Option<u16>, reason: &str) {
        if self.close_sent {
            return;
        }
        self.close_sent = true;
        let payload = match code {
            Some(c) => {
                // A reason is at most 123 bytes, cut at a character boundary.
                let mut end = reason.len().min(123);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                let mut p = Vec::with_capacity(2 + end);
                p.extend_from_slice(&c.to_be_bytes());
                p.extend_from_slice(&reason.as_bytes()[..end]);
                Bytes::from(p)
            }
            None => Bytes::new(),
        };
        self.push(
            header(OpCode::Close, true, false, payload.len()),
            payload,
            true,
        );
    }

    /// Whether our close frame was queued.
    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    fn push(&mut self, h: Header, payload: Bytes, control: bool) {
        if control {
            // A control frame is at most 129 bytes, and reading stops while
            // more than MAX_PENDING_CONTROL of them are queued.
            self.control_bytes += (h.as_bytes().len() + payload.len()) as u32;
        }
        self.push_chunk(Chunk::Frame(h, payload));
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Queues a data message and flushes.
    pub async fn send_close(&mut self, code: Option<u16>, reason: &str) -> io::Result<()> {
        self.queue_close(code, reason);
        self.flush().await
    }

    /// The next message from the client; `None` once the connection is
    /// closed (close frame answered, EOF, or after a protocol error the
    /// client's remaining bytes were discarded).
    pub async fn next(&mut self) -> Option<Result<Message, WsError>> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, WsError>>> {
        // Replies queued by earlier frames go out before more is read; if
        // the client does not read them, stop reading it.
        if !self.queue.is_empty() {
            if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
                return Poll::Ready(Some(Err(e.into())));
            }
            if self.control_bytes > MAX_PENDING_CONTROL {
                return Poll::Pending;
            }
        }
        loop {
            if self.read_done && !self.discarding {
                return Poll::Ready(None);
            }
            if !self.discarding {
                if let Some(got) = self.decode_buffered() {
                    return Poll::Ready(Some(got));
                }
            } else {
                self.rbuf.clear();
            }
            let floor = if self.small_read {
                SMALL_READ
            } else {
                READ_CHUNK
            };
            let want = self
                .decoder
                .need()
                .saturating_sub(self.rbuf.len())
                .max(floor);
            self.rbuf.reserve(want);
            let room = self.rbuf.capacity() - self.rbuf.len();
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.io),
                cx,
                &mut self.rbuf
            )) {
                Ok(0) => {
                    self.read_done = true;
                    self.discarding = false;
                    self.rbuf = BytesMut::new();
                    return Poll::Ready(None);
                }
                Ok(n) => self.small_read = n < room,
                Err(e) => {
                    self.read_done = true;
                    self.discarding = false;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    /// The next message if it is already complete in the read buffer,
    /// without reading the socket or flushing replies (`None` otherwise,
    /// also while more than `MAX_PENDING_CONTROL` bytes of pongs and
    /// closes wait to be written). The connection uses it to take a
    /// publisher's pipelined `pub` frames in one go.
    pub fn next_buffered(&mut self) -> Option<Result<Message, WsError>> {
        if self.read_done || self.discarding || self.control_bytes > MAX_PENDING_CONTROL {
            return None;
        }
        self.decode_buffered()
    }

    fn decode_buffered(&mut self) -> Option<Result<Message, WsError>> {
        match self.decoder.decode(&mut self.rbuf) {
            Ok(Some(msg)) => Some(Ok(self.on_message(msg))),
            Ok(None) => None,
            Err(e) => {
                self.read_done = true;
                self.discarding = true;
                self.rbuf = BytesMut::new();
                Some(Err(e.into()))
            }
        }
    }

    /// Answers pings and closes as RFC 6455 requires.
    fn on_message(&mut self, msg: Message) -> Message {
        match &msg {
            Message::Ping(p) if !self.close_sent => {
                self.push(header(OpCode::Pong, true, false, p.len()), p.clone(), true);
            }
            Message::Close(c) => {
                self.read_done = true;
                // Echo the code (RFC 6455 §5.5.1); 1005 never goes on the wire.
                self.queue_close(c.as_ref().map(|(code, _)| *code), "");
                self.rbuf = BytesMut::new();
            }
            _ => {}
        }
        msg
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.queue.is_empty() {
            let head = self.wbuf_head as usize;
            let parts = || unwritten(&self.queue, &self.wbuf, head, self.written);
            let n = if self.io.is_write_vectored() {
                let mut slices = [IoSlice::new(&[]); MAX_IOV];
                let mut k = 0;
                for part in parts().take(MAX_IOV) {
                    slices[k] = IoSlice::new(part);
                    k += 1;
                }
                ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..k]))?
            } else {
                if self.scratch.is_empty() {
                    for part in parts() {
                        self.scratch.extend_from_slice(part);
                        if self.scratch.len() >= COALESCE {
                            break;
                        }
                    }
                }
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.scratch))?;
                self.scratch.drain(..n);
                n
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        if self.wbuf.capacity() > WBUF_KEEP {
            self.wbuf = Vec::new();
        }
        if self.scratch.capacity() > WBUF_KEEP {
            self.scratch = Vec::new();
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Drops `n` written bytes from the front of the queue.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            match self.queue.front_mut().expect("written bytes were queued") {
                Chunk::Buf(len) => {
                    let step = n.min(*len);
                    *len -= step;
                    // The write buffer holds at most one batch (≤ 256
                    // frames of ≤ 2 KiB): far below u32::MAX.
                    self.wbuf_head += step as u32;
                    n -= step;
                    if *len > 0 {
                        return;
                    }
                    self.queue.pop_front();
                    if self.wbuf_head as usize == self.wbuf.len() {
                        self.wbuf.clear();
                        self.wbuf_head = 0;
                    }
                }
                Chunk::Frame(h, p) => {
                    let frame = h.as_bytes().len() + p.len();
                    let left = frame - self.written;
                    if n < left {
                        self.written += n;
                        return;
                    }
                    n -= left;
                    self.written = 0;
                    let control = matches!(h.as_bytes()[0] & 0x0f, 8..=10);
                    if control {
                        self.control_bytes = self.control_bytes.saturating_sub(frame as u32);
                    }
                    self.queue.pop_front();
                }
                Chunk::Framed(p) => {
                    let left = p.len() - self.written;
                    if n < left {
                        self.written += n;
                        return;
                    }
                    n -= left;
                    self.written = 0;
                    self.queue.pop_front();
                }
            }
        }
    }
}

/// The bytes of `queue` not yet written, as non-empty slices in order: the
/// [`Chunk::Buf`] runs are in `wbuf` from `head` on, and `written` bytes of
/// a leading [`Chunk::Frame`] are out.
fn unwritten<'a>(
    queue: &'a VecDeque<Chunk>,
    wbuf: &'a [u8],
    head: usize,
    written: usize,
) -> impl Iterator<Item = &'a [u8]> {
    let mut off = head;
    let mut skip = written;
    queue
        .iter()
        .flat_map(move |c| match c {
            Chunk::Buf(len) => {
                let run = &wbuf[off..off + len];
                off += len;
                [run, &[][..]]
            }
            Chunk::Frame(h, p) => [h.as_bytes(), &p[..]],
            Chunk::Framed(p) => [&p[..], &[][..]],
        })
        .filter_map(move |part| {
            if skip >= part.len() {
                skip -= part.len();
                None
            } else {
                let rest = &part[skip..];
                skip = 0;
                Some(rest)
            }
        })
}

/// Compressed payloads of recent messages, per worker thread, keyed by the
/// identity of the encoded frame the hub shares among subscribers. The
/// original is kept alive, so its address cannot be reused while cached.
struct CacheEntry {
    original: Bytes,
    bits: u8,
    level: u32,
    compressed: Bytes,
}

const CACHE_ENTRIES: usize = 64;
/// Bytes of originals and compressed forms a thread's cache may hold.
const CACHE_BYTES: usize = 4 << 20;

#[derive(Default)]
struct Cache {
    entries: VecDeque<CacheEntry>,
    bytes: usize,
}

thread_local! {
    static CACHE: std::cell::RefCell<Cache> = std::cell::RefCell::new(Cache::default());
}

/// The compressed form of `payload`: from this thread's cache when the same
/// frame (same allocation) was compressed recently, else compressed now.
/// Returns whether a compression was performed.
fn shared_compress(payload: &Bytes, bits: u8, level: u32) -> (Bytes, bool) {
    CACHE.with(|c| {
        let cache = &mut *c.borrow_mut();
        if let Some(e) = cache.entries.iter().find(|e| {
            e.original.as_ptr() == payload.as_ptr()
                && e.original.len() == payload.len()
                && e.bits == bits
                && e.level == level
        }) {
            return (e.compressed.clone(), false);
        }
        let compressed = pulsegate_ws::deflate::compress(payload, bits, level);
        let size = payload.len() + compressed.len();
        if size <= CACHE_BYTES {
            while cache.entries.len() >= CACHE_ENTRIES || cache.bytes + size > CACHE_BYTES {
                let Some(old) = cache.entries.pop_front() else {
                    break;
                };
                cache.bytes -= old.original.len() + old.compressed.len();
            }
            cache.bytes += size;
            cache.entries.push_back(CacheEntry {
                original: payload.clone(),
                bits,
                level,
                compressed: compressed.clone(),
            });
        }
        (compressed, true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `step` bytes per write, vectored or not,
    /// and returns nothing to read.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
        vectored: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut left = self.step;
            for b in bufs {
                let n = b.len().min(left);
                self.out.extend_from_slice(&b[..n]);
                left -= n;
                if left == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(self.step - left))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn partial_writes_resume_mid_frame_and_keep_frame_order() {
        // Small payloads (copied into the write buffer) and large ones
        // (written from where they are), interleaved, alone and in runs.
        let payloads: Vec<Bytes> = (0..40)
            .map(|i| {
                let len = if i % 7 == 3 {
                    2000 + i * 97
                } else {
                    i * 37 % 300
                };
                Bytes::from(vec![b'a' + (i % 26) as u8; len])
            })
            .collect();
        let mut expected = Vec::new();
        for p in &payloads {
            expected.extend_from_slice(header(OpCode::Text, true, false, p.len()).as_bytes());
            expected.extend_from_slice(p);
        }
        expected.extend_from_slice(header(OpCode::Ping, true, false, 3).as_bytes());
        expected.extend_from_slice(b"abc");
        for vectored in [true, false] {
            for step in [1, 7, 130, 5000] {
                let io = Trickle {
                    out: Vec::new(),
                    step,
                    vectored,
                };
                let mut ws = WsStream::new(io, 1 << 20, None);
                // Every third group of three as one pre-framed run (copied
                // when small, shared when large), the rest frame by frame.
                for (g, group) in payloads.chunks(3).enumerate() {
                    if g % 3 == 0 {
                        ws.queue_framed(&frame_all(false, group.iter()));
                    } else {
                        for p in group {
                            ws.queue_data(false, p, None);
                        }
                    }
                }
                ws.queue_ping(Bytes::from_static(b"abc"));
                ws.flush().await.unwrap();
                assert!(ws.is_idle());
                assert_eq!(ws.control_bytes, 0);
                assert!(ws.wbuf.is_empty() && ws.wbuf_head == 0);
                assert_eq!(
                    ws.get_ref().out,
                    expected,
                    "vectored={vectored} step={step}"
                );
            }
        }
    }
}
