//! The socket's write buffer, made for connections that are mostly idle: it allocates only
//! while frames are pending and gives the memory back after each flush, so an idle
//! connection costs no write buffer at all (a `BufWriter` would hold its whole capacity
//! forever).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

/// Above this, writes go straight to the socket after what is buffered.
const MAX_BUFFERED: usize = 64 * 1024;

pub struct LazyBufWriter<W> {
    inner: W,
    buf: Vec<u8>,
    written: usize,
}

impl<W: AsyncWrite + Unpin> LazyBufWriter<W> {
    pub fn new(inner: W) -> Self {
        LazyBufWriter {
            inner,
            buf: Vec::new(),
            written: 0,
        }
    }

    /// Write out everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.written = 0;
        // Free it: a busy socket reallocates per flushed batch, an idle one holds nothing.
        self.buf = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for LazyBufWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = &mut *self;
        if me.buf.len() + data.len() > MAX_BUFFERED {
            match me.poll_drain(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            if data.len() > MAX_BUFFERED {
                return Pin::new(&mut me.inner).poll_write(cx, data);
            }
        }
        me.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = &mut *self;
        match me.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut me.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = &mut *self;
        match me.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut me.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn buffers_until_flush_then_frees() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = LazyBufWriter::new(a);
        w.write_all(b"hello ").await.unwrap();
        w.write_all(b"world").await.unwrap();
        assert_eq!(w.buf.len(), 11);
        w.flush().await.unwrap();
        assert_eq!(w.buf.capacity(), 0);
        let mut got = [0u8; 11];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello world");
        // A write larger than the buffer limit still arrives whole and in order.
        let big = vec![7u8; MAX_BUFFERED + 10];
        w.write_all(b"x").await.unwrap();
        w.write_all(&big).await.unwrap();
        w.flush().await.unwrap();
        let mut got = vec![0u8; big.len() + 1];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got[0], b'x');
        assert!(got[1..].iter().all(|&x| x == 7));
    }
}
