//! A stream with bytes already read put back in front of it.
//!
//! The listener reads the HTTP request head itself to decide between a
//! WebSocket upgrade and a plain HTTP request; whatever it read beyond what
//! it consumed is replayed first by [`Prefixed`]. Empty prefixes hold no
//! allocation, so an idle upgraded connection pays nothing for this.
//!
//! An idle `/ws` connection drops its buffers ("hibernate", see `conn.rs`
//! and [`crate::ws`]) once the prefix is consumed; [`Hibernate`] tells
//! whether the stream under it can do without one.

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
}

impl<S> Prefixed<S> {
    /// Wraps `inner`; `prefix` is returned by the first reads.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Prefixed { prefix, inner }
    }

    /// True once the replayed prefix has been read.
    pub fn prefix_consumed(&self) -> bool {
        self.prefix.is_empty()
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
        let this = &mut *self;
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                this.prefix = Bytes::new();
            }
            Poll::Ready(Ok(()))
        } else {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        }
    }
}

/// Streams a connection can hibernate on: wait for readability without
/// a read buffer.
pub trait Hibernate {
    /// Whether the connection may release its buffers and wait for
    /// readability instead of reading.
    fn can_hibernate(&self) -> bool;
    /// Ready when the socket has bytes (or an error/EOF) to read. Keeps no
    /// state of its own: the waker goes to the socket's registration.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<()>;
}

impl Hibernate for Prefixed<tokio::net::TcpStream> {
    fn can_hibernate(&self) -> bool {
        self.prefix_consumed()
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.poll_read_ready(cx).map(|_| ())
    }
}

/// TLS connections do not hibernate: rustls may hold decrypted bytes that
/// socket readiness would not announce.
impl Hibernate for Prefixed<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    fn can_hibernate(&self) -> bool {
        false
    }

    fn poll_readable(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
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
