//! A stream with bytes already read put back in front of it, which can also
//! follow WebSocket frame boundaries in what it reads.
//!
//! The listener reads the HTTP request head itself to decide between a
//! WebSocket upgrade and a plain HTTP request; whatever it read beyond what
//! it consumed is replayed first by [`Prefixed`]. Empty prefixes hold no
//! allocation, so an idle upgraded connection pays nothing for this.
//!
//! For `/ws` connections a [`FrameTracker`] watches the client's bytes as
//! they pass to tokio-websockets. When they end exactly at a frame boundary
//! outside a fragmented message, and the WebSocket stream has nothing more
//! to decode, its read buffer holds nothing: the connection task may then
//! drop the stream while idle ("hibernate", see `conn.rs`) and rebuild it
//! when the socket becomes readable, so an idle connection holds no read buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `inner`, with `prefix` read first.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
    tracker: Option<FrameTracker>,
}

impl<S> Prefixed<S> {
    /// Wraps `inner`; `prefix` is returned by the first reads.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Prefixed {
            prefix,
            inner,
            tracker: None,
        }
    }

    /// Like [`Prefixed::new`], following the WebSocket frames read.
    pub fn tracking_frames(prefix: Bytes, inner: S) -> Self {
        Prefixed {
            prefix,
            inner,
            tracker: Some(FrameTracker::default()),
        }
    }

    /// True when everything read so far ends at a frame boundary outside a
    /// fragmented message, and no replayed prefix is left.
    pub fn at_frame_boundary(&self) -> bool {
        self.prefix.is_empty() && self.tracker.as_ref().is_some_and(FrameTracker::at_boundary)
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                this.prefix = Bytes::new();
            }
            Poll::Ready(Ok(()))
        } else {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        };
        if let (Some(t), Poll::Ready(Ok(()))) = (this.tracker.as_mut(), &result) {
            t.feed(&buf.filled()[before..]);
        }
        result
    }
}

/// Follows frame boundaries in a client→server WebSocket byte stream
/// (RFC 6455 §5.2): header (2–14 bytes), then the payload length.
#[derive(Debug, Default, Clone)]
pub struct FrameTracker {
    header: [u8; 14],
    header_len: u8,
    payload_left: u64,
    in_fragmented: bool,
}

impl FrameTracker {
    /// Consumes bytes read from the client.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.payload_left > 0 {
                let n = (data.len() as u64).min(self.payload_left);
                self.payload_left -= n;
                data = &data[n as usize..];
                continue;
            }
            self.header[self.header_len as usize] = data[0];
            self.header_len += 1;
            data = &data[1..];
            if let Some(len) = self.complete_header() {
                let (fin, opcode) = (self.header[0] & 0x80 != 0, self.header[0] & 0x0f);
                if opcode < 8 {
                    // Data or continuation frame; control frames may interleave.
                    self.in_fragmented = !fin;
                }
                self.payload_left = len;
                self.header_len = 0;
            }
        }
    }

    /// The payload length once the whole header has arrived.
    fn complete_header(&self) -> Option<u64> {
        let h = &self.header[..self.header_len as usize];
        if h.len() < 2 {
            return None;
        }
        let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
        let (ext, len7) = match h[1] & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        if h.len() < 2 + ext + mask {
            return None;
        }
        Some(len7.unwrap_or_else(|| {
            h[2..2 + ext]
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
        }))
    }

    /// Nothing of a frame or fragmented message is pending.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0 && !self.in_fragmented
    }
}

/// Streams a connection can hibernate on: wait for readability without
/// the WebSocket layer (and its buffers) around them.
pub trait Hibernate {
    /// Whether the WebSocket layer could be dropped now without losing bytes.
    fn can_hibernate(&self) -> bool;
    /// Resolves when the socket has bytes (or an error/EOF) to read.
    fn readable(&self) -> impl std::future::Future<Output = ()> + Send;
}

impl Hibernate for Prefixed<tokio::net::TcpStream> {
    fn can_hibernate(&self) -> bool {
        self.at_frame_boundary()
    }

    async fn readable(&self) {
        let _ = self.inner.readable().await;
    }
}

/// TLS connections do not hibernate: rustls may hold decrypted bytes that
/// socket readiness would not announce.
impl Hibernate for Prefixed<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    fn can_hibernate(&self) -> bool {
        false
    }

    async fn readable(&self) {
        std::future::pending::<()>().await
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::FrameTracker;

    fn masked_frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        match len {
            0..=125 => f.push(0x80 | len as u8),
            126..=65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(std::iter::repeat_n(7u8, len));
        f
    }

    #[test]
    fn boundaries_at_every_split() {
        let mut stream = masked_frame(true, 1, 5);
        stream.extend(masked_frame(true, 2, 300));
        stream.extend(masked_frame(true, 1, 70_000));
        let ends = [
            masked_frame(true, 1, 5).len(),
            masked_frame(true, 1, 5).len() + masked_frame(true, 2, 300).len(),
            stream.len(),
        ];
        for chunk in [1, 2, 3, 7, 64, 1000, stream.len()] {
            let mut t = FrameTracker::default();
            let mut fed = 0;
            for piece in stream.chunks(chunk) {
                t.feed(piece);
                fed += piece.len();
                assert_eq!(
                    t.at_boundary(),
                    ends.contains(&fed),
                    "chunk {chunk}, fed {fed}"
                );
            }
        }
    }

    #[test]
    fn fragmented_messages_are_not_boundaries() {
        let mut t = FrameTracker::default();
        t.feed(&masked_frame(false, 1, 3));
        assert!(!t.at_boundary());
        t.feed(&masked_frame(true, 9, 2)); // a ping in between
        assert!(!t.at_boundary());
        t.feed(&masked_frame(true, 0, 3));
        assert!(t.at_boundary());
    }
}
