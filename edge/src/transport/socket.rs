//! The socket's write side: frames go **straight into the kernel** from whoever has them
//! (a room's fan-out, the session's replies) when nothing is pending, and into a bounded
//! queue only when the socket is busy.
//!
//! Why: the common case for a chat socket is an idle socket receiving one frame. Writing it
//! directly costs one non-blocking `write` and nothing else: no channel hop, no task to wake,
//! no allocation (a room's frame is one shared buffer for all its members). Only when the
//! kernel's send buffer is full (or a frame was written in part) does the socket queue
//! frames and start a flush task, which writes everything pending with one vectored write
//! per readiness (frames coalesced) and ends when the queue is empty. An idle socket has no
//! writer task and no write buffer.
//!
//! Order is kept by one rule: a frame is written directly only when nothing is queued and no
//! flush is under way; otherwise it joins the queue behind the others. All of it happens
//! under the socket's lock, which is only ever held for a non-blocking call.
//!
//! Slow clients are handled as before: a queue that reaches its cap refuses the frame
//! ([`Push::Full`]) and the room closes the socket as slow (1013); the client resumes.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tracing::{debug, Instrument};

/// Most frames gathered into one vectored write.
const MAX_IOVECS: usize = 64;

/// One WebSocket's TCP socket and what waits to be written to it.
pub struct Socket {
    tcp: TcpStream,
    out: Mutex<Out>,
    /// Woken when the queue shrinks, empties or the socket closes (and by the session's
    /// outbox when a close is requested), for whoever waits for room or for the flush.
    progress: Notify,
    /// Most frames queued before [`Push::Full`].
    cap: usize,
    /// Set once the socket is to be closed: data frames are refused from then on, so that
    /// nothing reaches the client after the point its session tells it to resume from
    /// (only the session's own control frames still go out).
    refuse_data: AtomicBool,
}

#[derive(Default)]
struct Out {
    /// Encoded frames not yet written; the first may be a remainder of a partial write.
    queue: VecDeque<Bytes>,
    /// The flush task, while one runs.
    flusher: Option<AbortHandle>,
    closed: bool,
}

/// What became of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Written to the kernel at once.
    Written,
    /// Queued behind other frames; the flush task writes it.
    Queued,
    /// The queue is at its cap: nothing was done.
    Full,
    /// The socket is closed or failed.
    Closed,
}

impl Push {
    pub fn accepted(self) -> bool {
        matches!(self, Push::Written | Push::Queued)
    }
}

impl Socket {
    pub fn new(tcp: TcpStream, cap: usize) -> Arc<Socket> {
        // Frames are written whole and at once; Nagle would only delay them.
        let _ = tcp.set_nodelay(true);
        Arc::new(Socket {
            tcp,
            out: Mutex::new(Out::default()),
            progress: Notify::new(),
            cap: cap.max(1),
            refuse_data: AtomicBool::new(false),
        })
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Refuse data frames from now on (the socket is being closed).
    pub fn refuse_data(&self) {
        self.refuse_data.store(true, Ordering::SeqCst);
    }

    fn out(&self) -> MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write `frame` now if the socket is free, else queue it. `force` ignores the cap (for
    /// the few control frames the session itself sends: pong, close, reconnect).
    pub fn push(self: &Arc<Self>, frame: Bytes, force: bool) -> Push {
        if !force && self.refuse_data.load(Ordering::SeqCst) {
            return Push::Closed;
        }
        let mut out = self.out();
        if out.closed {
            return Push::Closed;
        }
        if out.queue.is_empty() && out.flusher.is_none() {
            match self.tcp.try_write(&frame) {
                Ok(n) if n == frame.len() => return Push::Written,
                Ok(n) => out.queue.push_back(frame.slice(n..)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => out.queue.push_back(frame),
                Err(e) => {
                    debug!(error = %e, "socket write failed");
                    Self::fail(&mut out);
                    drop(out);
                    self.progress.notify_waiters();
                    return Push::Closed;
                }
            }
            self.start_flush(&mut out);
            return Push::Queued;
        }
        if !force && out.queue.len() >= self.cap {
            return Push::Full;
        }
        out.queue.push_back(frame);
        if out.flusher.is_none() {
            self.start_flush(&mut out);
        }
        Push::Queued
    }

    /// Write several frames, in order: all in one vectored write when the socket is free,
    /// the rest queued. `Full` (nothing done) when they do not fit the queue's cap.
    pub fn push_many(self: &Arc<Self>, frames: &[Bytes]) -> Push {
        if frames.len() == 1 {
            return self.push(frames[0].clone(), false);
        }
        if self.refuse_data.load(Ordering::SeqCst) {
            return Push::Closed;
        }
        let mut out = self.out();
        if out.closed {
            return Push::Closed;
        }
        let busy = !out.queue.is_empty() || out.flusher.is_some();
        if busy && out.queue.len() + frames.len() > self.cap {
            return Push::Full;
        }
        let mut rest = frames;
        if !busy {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = frames.len().min(MAX_IOVECS);
            for (slot, f) in slices.iter_mut().zip(frames) {
                *slot = IoSlice::new(f);
            }
            match self.tcp.try_write_vectored(&slices[..n]) {
                Ok(mut written) => {
                    // Bounded by the frames.
                    while let Some((first, tail)) = rest.split_first() {
                        if written < first.len() {
                            if written > 0 {
                                out.queue.push_back(first.slice(written..));
                                rest = tail;
                            }
                            break;
                        }
                        written -= first.len();
                        rest = tail;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    debug!(error = %e, "socket write failed");
                    Self::fail(&mut out);
                    drop(out);
                    self.progress.notify_waiters();
                    return Push::Closed;
                }
            }
            if rest.is_empty() && out.queue.is_empty() {
                return Push::Written;
            }
        }
        out.queue.extend(rest.iter().cloned());
        if out.flusher.is_none() {
            self.start_flush(&mut out);
        }
        Push::Queued
    }

    /// Queue `frame`, waiting while the queue is full; false when the socket closed or
    /// `give_up()` turned true (checked whenever the socket makes progress or is woken).
    pub async fn push_wait(self: &Arc<Self>, frame: Bytes, give_up: impl Fn() -> bool) -> bool {
        // Bounded by the socket: every round either queues, ends, or waits for progress.
        loop {
            let mut woken = pin!(self.progress.notified());
            woken.as_mut().enable();
            match self.push(frame.clone(), false) {
                Push::Written | Push::Queued => return true,
                Push::Closed => return false,
                Push::Full => {}
            }
            if give_up() {
                return false;
            }
            woken.await;
        }
    }

    /// Wait until everything queued was written (true), the socket failed, or `within`
    /// passed.
    pub async fn flushed(&self, within: Duration) -> bool {
        tokio::time::timeout(within, async {
            // Bounded by the socket and the timeout.
            loop {
                let mut woken = pin!(self.progress.notified());
                woken.as_mut().enable();
                {
                    let out = self.out();
                    if out.closed {
                        return false;
                    }
                    if out.queue.is_empty() && out.flusher.is_none() {
                        return true;
                    }
                }
                woken.await;
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Wake whoever waits on this socket (a close was requested: they should look).
    pub fn wake(&self) {
        self.progress.notify_waiters();
    }

    /// Frames waiting to be written.
    pub fn pending(&self) -> usize {
        self.out().queue.len()
    }

    /// Stop writing, drop what is queued and shut the connection down both ways. Frames
    /// offered afterwards get [`Push::Closed`].
    pub fn shutdown(&self) {
        {
            let mut out = self.out();
            Self::fail(&mut out);
        }
        self.progress.notify_waiters();
        let _ = socket2::SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Both);
    }

    fn fail(out: &mut Out) {
        out.closed = true;
        out.queue = VecDeque::new();
        if let Some(f) = out.flusher.take() {
            f.abort();
        }
    }

    fn start_flush(self: &Arc<Self>, out: &mut Out) {
        let me = self.clone();
        let task = tokio::spawn(async move { me.flush().await }.in_current_span());
        out.flusher = Some(task.abort_handle());
    }

    /// The flush task: write what is queued, coalesced, until nothing is; wait for the
    /// socket when the kernel's buffer is full.
    async fn flush(self: Arc<Self>) {
        // Bounded by the socket: every round writes bytes, waits for it, or ends.
        loop {
            let blocked = {
                let mut out = self.out();
                if out.closed {
                    return;
                }
                if out.queue.is_empty() {
                    out.flusher = None;
                    // Memory back: a socket that was busy once should not keep the ring.
                    out.queue = VecDeque::new();
                    drop(out);
                    self.progress.notify_waiters();
                    return;
                }
                match write_queued(&self.tcp, &mut out.queue) {
                    Ok(()) => false,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
                    Err(e) => {
                        debug!(error = %e, "socket write failed");
                        out.flusher = None;
                        Self::fail(&mut out);
                        drop(out);
                        self.progress.notify_waiters();
                        return;
                    }
                }
            };
            self.progress.notify_waiters();
            if blocked && self.tcp.writable().await.is_err() {
                let mut out = self.out();
                out.flusher = None;
                Self::fail(&mut out);
                drop(out);
                self.progress.notify_waiters();
                return;
            }
        }
    }
}

/// One vectored write of the front of the queue; drops what was written, keeps the rest of
/// a frame written in part.
fn write_queued(tcp: &TcpStream, queue: &mut VecDeque<Bytes>) -> io::Result<()> {
    let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
    let mut n = 0;
    for f in queue.iter().take(MAX_IOVECS) {
        slices[n] = IoSlice::new(f);
        n += 1;
    }
    let mut written = tcp.try_write_vectored(&slices[..n])?;
    if written == 0 {
        return Err(io::ErrorKind::WriteZero.into());
    }
    // Bounded by the queue.
    while written > 0 {
        let Some(front) = queue.front_mut() else {
            break;
        };
        if written >= front.len() {
            written -= front.len();
            queue.pop_front();
        } else {
            *front = front.slice(written..);
            written = 0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn pair() -> (Arc<Socket>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), l.accept());
        (Socket::new(server.unwrap().0, 4), client.unwrap())
    }

    #[tokio::test]
    async fn an_idle_socket_is_written_at_once_without_a_task() {
        let (s, mut c) = pair().await;
        assert_eq!(s.push(Bytes::from_static(b"hello"), false), Push::Written);
        assert!(s.out().flusher.is_none());
        let mut got = [0u8; 5];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }

    #[tokio::test]
    async fn a_reader_that_stops_fills_the_queue_then_everything_arrives_in_order() {
        let (s, mut c) = pair().await;
        s.tcp().set_nodelay(true).unwrap();
        // Write until the kernel's buffers are full and frames queue, then until the cap.
        let frame = |i: u32| Bytes::from([i.to_be_bytes().to_vec(), vec![b'x'; 60_000]].concat());
        let mut sent = 0u32;
        let mut full = false;
        for i in 0..10_000u32 {
            match s.push(frame(i), false) {
                Push::Written | Push::Queued => sent += 1,
                Push::Full => {
                    full = true;
                    break;
                }
                Push::Closed => panic!("closed"),
            }
        }
        assert!(full, "the queue never filled");
        assert_eq!(s.pending(), 4);
        // A forced frame passes the cap.
        assert_eq!(s.push(frame(sent), true), Push::Queued);
        sent += 1;
        // The reader catches up: every frame arrives whole and in order.
        let mut buf = vec![0u8; 60_004];
        for i in 0..sent {
            c.read_exact(&mut buf).await.unwrap();
            assert_eq!(u32::from_be_bytes(buf[..4].try_into().unwrap()), i);
        }
        assert!(s.flushed(Duration::from_secs(10)).await);
        assert!(s.out().flusher.is_none());
        assert_eq!(s.out().queue.capacity(), 0);
    }

    #[tokio::test]
    async fn several_frames_go_out_together_and_in_order() {
        let (s, mut c) = pair().await;
        let frames: Vec<Bytes> = (0..100u8).map(|i| Bytes::from(vec![i; 10])).collect();
        assert_eq!(s.push_many(&frames[..3]), Push::Written);
        // More than one vectored write takes: the rest is queued behind, in order.
        assert!(s.push_many(&frames[3..]).accepted());
        let mut got = vec![0u8; 1000];
        c.read_exact(&mut got).await.unwrap();
        for (i, chunk) in got.chunks(10).enumerate() {
            assert!(chunk.iter().all(|&b| b == i as u8), "frame {i}");
        }
        assert!(s.flushed(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn a_socket_being_closed_takes_control_frames_only() {
        let (s, mut c) = pair().await;
        s.refuse_data();
        assert_eq!(s.push(Bytes::from_static(b"data"), false), Push::Closed);
        assert_eq!(
            s.push_many(&[Bytes::from_static(b"a"), Bytes::from_static(b"b")]),
            Push::Closed
        );
        assert_eq!(s.push(Bytes::from_static(b"close"), true), Push::Written);
        let mut got = [0u8; 5];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"close");
    }

    #[tokio::test]
    async fn shutdown_refuses_further_frames_and_ends_the_stream() {
        let (s, mut c) = pair().await;
        s.shutdown();
        assert_eq!(s.push(Bytes::from_static(b"late"), true), Push::Closed);
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
    }
}
