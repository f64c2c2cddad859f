//! The socket's read half: bytes from the `TcpStream` in, whole messages out.
//!
//! - [`Reassembler`] is the pure part (fragments → message, with the size limit), tested on
//!   its own; [`super::frame::parse`] reads each frame.
//! - [`MessageReader`] drives them from the socket. It holds **no buffer while the socket is
//!   idle**: it waits for readiness, reads what the kernel has, and gives the memory back as
//!   soon as every byte was consumed, so a joined, silent connection costs nothing here (the
//!   fastwebsockets read half it replaces allocates 8 KiB per socket for its whole life).
//! - It is **cancel-safe**: everything read is kept in the reader between calls, so the
//!   session can wait on it in a `select!` beside its other events.

use bytes::Bytes;
use tokio::net::TcpStream;

use super::frame::{self, ClientFrame, FrameError, OpCode, Parsed};

/// First read size when a frame starts; a frame's known length sizes the rest.
const FIRST_READ: usize = 2048;
/// Most bytes read in one go.
const MAX_READ: usize = 64 * 1024;

/// A whole message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Text(Vec<u8>),
    Binary(Vec<u8>),
}

/// Why reading stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    /// The client sent a close frame.
    ClientClosed,
    /// A message exceeded the size limit.
    TooLarge,
    /// A text message was not UTF-8 (however it was fragmented).
    InvalidUtf8,
    /// The socket failed or broke the protocol (e.g. a continuation out of place).
    Failed,
}

/// What one frame amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A whole message is ready.
    Message(Message),
    /// A fragment was stored, or a control frame was handled: read on.
    More,
    /// Stop reading.
    End(ReadEnd),
}

/// Reassembles fragmented messages, bounded by the message size limit.
#[derive(Debug)]
pub struct Reassembler {
    max: usize,
    partial: Option<(OpCode, Vec<u8>)>,
}

impl Reassembler {
    pub fn new(max_message_bytes: usize) -> Self {
        Reassembler {
            max: max_message_bytes,
            partial: None,
        }
    }

    /// Take one frame.
    pub fn push(&mut self, opcode: OpCode, fin: bool, payload: &[u8]) -> Step {
        match opcode {
            OpCode::Close => Step::End(ReadEnd::ClientClosed),
            OpCode::Ping | OpCode::Pong => Step::More,
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    return Step::End(ReadEnd::Failed);
                }
                if payload.len() > self.max {
                    return Step::End(ReadEnd::TooLarge);
                }
                if fin {
                    message(opcode, payload.to_vec())
                } else {
                    self.partial = Some((opcode, payload.to_vec()));
                    Step::More
                }
            }
            OpCode::Continuation => {
                let Some((op, mut buf)) = self.partial.take() else {
                    return Step::End(ReadEnd::Failed);
                };
                if buf.len() + payload.len() > self.max {
                    return Step::End(ReadEnd::TooLarge);
                }
                buf.extend_from_slice(payload);
                if fin {
                    message(op, buf)
                } else {
                    self.partial = Some((op, buf));
                    Step::More
                }
            }
        }
    }
}

/// A finished message; a text message must be UTF-8 as a whole (a fragment boundary may
/// split a character, so only the whole message is checked).
fn message(opcode: OpCode, data: Vec<u8>) -> Step {
    if opcode == OpCode::Binary {
        Step::Message(Message::Binary(data))
    } else if std::str::from_utf8(&data).is_err() {
        Step::End(ReadEnd::InvalidUtf8)
    } else {
        Step::Message(Message::Text(data))
    }
}

/// What the socket sent, as the session sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Message(Message),
    /// A ping to answer with a pong carrying the same payload.
    Ping(Vec<u8>),
    /// A pong (or any other sign of life that needs no answer).
    Pong,
    /// A close frame; its payload is echoed back.
    Close(Vec<u8>),
}

/// Whole messages from one socket.
pub struct MessageReader {
    /// Bytes read and not yet consumed (`buf[start..]`); empty, with no capacity, while idle.
    buf: Vec<u8>,
    start: usize,
    max_frame: usize,
    asm: Reassembler,
}

impl MessageReader {
    /// `leftover`: bytes already read past the upgrade request (a client may send its first
    /// frame right behind it).
    pub fn new(leftover: Bytes, max_message_bytes: usize) -> Self {
        MessageReader {
            buf: leftover.to_vec(),
            start: 0,
            max_frame: max_message_bytes,
            asm: Reassembler::new(max_message_bytes),
        }
    }

    /// Bytes held right now (0 for an idle socket).
    pub fn buffered_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The next message or control frame, or why the socket is done. Cancel-safe.
    pub async fn next(&mut self, tcp: &TcpStream) -> Result<Incoming, ReadEnd> {
        // Bounded by the socket: every round consumes a frame, reads bytes, or ends.
        loop {
            if let Some(step) = self.step()? {
                return Ok(step);
            }
            if tcp.readable().await.is_err() {
                return Err(ReadEnd::Failed);
            }
            match self.fill(tcp) {
                Ok(0) => return Err(ReadEnd::Failed), // closed without a close frame
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(ReadEnd::Failed),
            }
        }
    }

    /// Consume buffered frames until one is worth returning; `None` when more bytes are
    /// needed.
    fn step(&mut self) -> Result<Option<Incoming>, ReadEnd> {
        // Bounded by the buffer: each round consumes a frame.
        loop {
            let (f, used) = match frame::parse(&mut self.buf[self.start..], self.max_frame) {
                Ok(Parsed::Frame { frame, used }) => (frame, used),
                Ok(Parsed::Incomplete { .. }) => return Ok(None),
                Err(FrameError::TooLarge) => return Err(ReadEnd::TooLarge),
                Err(FrameError::Protocol) => return Err(ReadEnd::Failed),
            };
            self.consume(used);
            let ClientFrame {
                fin,
                opcode,
                payload,
            } = f;
            match opcode {
                OpCode::Ping => return Ok(Some(Incoming::Ping(payload))),
                OpCode::Pong => return Ok(Some(Incoming::Pong)),
                OpCode::Close => return Ok(Some(Incoming::Close(payload))),
                _ => {}
            }
            match self.asm.push(opcode, fin, &payload) {
                Step::Message(m) => return Ok(Some(Incoming::Message(m))),
                Step::More => {}
                Step::End(end) => return Err(end),
            }
        }
    }

    fn consume(&mut self, used: usize) {
        self.start += used;
        if self.start >= self.buf.len() {
            // Everything consumed: give the memory back (an idle socket holds none).
            self.buf = Vec::new();
            self.start = 0;
        }
    }

    /// One non-blocking read, sized by what the pending frame still needs. With nothing
    /// buffered it reads onto the stack first, so a wake-up that finds no data (readiness
    /// is only cleared by a read that would block) leaves the idle socket holding nothing.
    fn fill(&mut self, tcp: &TcpStream) -> std::io::Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.is_empty() {
            let mut first = [0u8; FIRST_READ];
            let n = tcp.try_read(&mut first)?;
            self.buf = first[..n].to_vec();
            return Ok(n);
        }
        let need = frame::wanted(&self.buf).saturating_sub(self.buf.len());
        let want = need.clamp(FIRST_READ, MAX_READ);
        self.buf.reserve(want);
        tcp.try_read_buf(&mut self.buf)
    }

    /// Read and discard until the peer closes, `limit` bytes were read, or `within` passed
    /// (closing a socket with unread input makes the kernel send a reset, which can destroy
    /// the close frame before the client reads it).
    pub async fn discard(&mut self, tcp: &TcpStream, limit: usize, within: std::time::Duration) {
        self.buf = Vec::new();
        self.start = 0;
        let mut total = 0usize;
        let _ = tokio::time::timeout(within, async {
            let mut scratch = vec![0u8; 8192];
            while total < limit {
                if tcp.readable().await.is_err() {
                    break;
                }
                match tcp.try_read(&mut scratch) {
                    Ok(0) => break,
                    Ok(n) => total += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
        })
        .await;
    }

    /// After the server sent its close frame: read on until the client's close frame, the
    /// end of the socket, or `within`.
    pub async fn await_close(&mut self, tcp: &TcpStream, within: std::time::Duration) {
        let _ = tokio::time::timeout(within, async {
            // Bounded by the socket and the timeout.
            loop {
                match self.next(tcp).await {
                    Ok(Incoming::Close(_)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_whole_frame_is_a_message() {
        let mut r = Reassembler::new(10);
        assert_eq!(
            r.push(OpCode::Text, true, b"hi"),
            Step::Message(Message::Text(b"hi".to_vec()))
        );
        assert_eq!(
            r.push(OpCode::Binary, true, b"\x00"),
            Step::Message(Message::Binary(vec![0]))
        );
    }

    #[test]
    fn fragments_are_joined_and_control_frames_may_interleave() {
        let mut r = Reassembler::new(10);
        assert_eq!(r.push(OpCode::Text, false, b"ab"), Step::More);
        assert_eq!(r.push(OpCode::Ping, true, b""), Step::More);
        assert_eq!(r.push(OpCode::Continuation, false, b"cd"), Step::More);
        assert_eq!(
            r.push(OpCode::Continuation, true, b"e"),
            Step::Message(Message::Text(b"abcde".to_vec()))
        );
        // And the next message starts clean.
        assert_eq!(
            r.push(OpCode::Text, true, b"x"),
            Step::Message(Message::Text(b"x".to_vec()))
        );
    }

    #[test]
    fn the_limit_counts_the_whole_message() {
        let mut r = Reassembler::new(4);
        assert_eq!(r.push(OpCode::Text, false, b"abc"), Step::More);
        assert_eq!(
            r.push(OpCode::Continuation, true, b"de"),
            Step::End(ReadEnd::TooLarge)
        );
        let mut r = Reassembler::new(4);
        assert_eq!(
            r.push(OpCode::Text, true, b"abcde"),
            Step::End(ReadEnd::TooLarge)
        );
    }

    #[test]
    fn out_of_place_frames_end_the_socket() {
        let mut r = Reassembler::new(10);
        assert_eq!(
            r.push(OpCode::Continuation, true, b"x"),
            Step::End(ReadEnd::Failed)
        );
        let mut r = Reassembler::new(10);
        assert_eq!(r.push(OpCode::Text, false, b"a"), Step::More);
        assert_eq!(r.push(OpCode::Text, true, b"b"), Step::End(ReadEnd::Failed));
    }

    #[test]
    fn invalid_utf8_ends_reading_however_it_is_fragmented() {
        let mut r = Reassembler::new(10);
        assert_eq!(
            r.push(OpCode::Text, true, b"\xff"),
            Step::End(ReadEnd::InvalidUtf8)
        );
        // "é" split across two fragments is fine...
        let mut r = Reassembler::new(10);
        assert_eq!(r.push(OpCode::Text, false, b"\xc3"), Step::More);
        assert_eq!(
            r.push(OpCode::Continuation, true, b"\xa9"),
            Step::Message(Message::Text("é".as_bytes().to_vec()))
        );
        // ...an invalid byte in any fragment is not.
        let mut r = Reassembler::new(10);
        assert_eq!(r.push(OpCode::Text, false, b"ok"), Step::More);
        assert_eq!(
            r.push(OpCode::Continuation, true, b"\xc3("),
            Step::End(ReadEnd::InvalidUtf8)
        );
        // Binary messages are not text: the session answers them with -32700.
        let mut r = Reassembler::new(10);
        assert_eq!(
            r.push(OpCode::Binary, true, b"\xff"),
            Step::Message(Message::Binary(vec![0xff]))
        );
    }

    /// A masked client text frame.
    fn client_text(payload: &[u8]) -> Vec<u8> {
        let mask = [9u8, 8, 7, 6];
        let mut out = vec![0x81, 0x80 | payload.len() as u8];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    #[tokio::test]
    async fn an_idle_reader_holds_no_buffer_and_frames_split_anywhere_arrive_whole() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (c, s) = tokio::join!(
            tokio::net::TcpStream::connect(l.local_addr().unwrap()),
            l.accept()
        );
        let (mut c, s) = (c.unwrap(), s.unwrap().0);
        // The first frame arrived behind the upgrade request.
        let first = client_text(b"one");
        let mut r = MessageReader::new(Bytes::from(first), 100);
        assert_eq!(
            r.next(&s).await,
            Ok(Incoming::Message(Message::Text(b"one".to_vec())))
        );
        assert_eq!(r.buffered_capacity(), 0);
        // A frame written in two parts.
        let two = client_text(b"two");
        c.write_all(&two[..3]).await.unwrap();
        let pending = tokio::time::timeout(Duration::from_millis(100), r.next(&s)).await;
        assert!(pending.is_err(), "half a frame is not a message");
        c.write_all(&two[3..]).await.unwrap();
        assert_eq!(
            r.next(&s).await,
            Ok(Incoming::Message(Message::Text(b"two".to_vec())))
        );
        // Waiting on a silent socket (cancelled, as the session's select! does) holds nothing.
        for _ in 0..3 {
            let idle = tokio::time::timeout(Duration::from_millis(20), r.next(&s)).await;
            assert!(idle.is_err());
            assert_eq!(r.buffered_capacity(), 0);
        }
        drop(c);
        assert_eq!(
            r.next(&s).await,
            Err(ReadEnd::Failed),
            "closed without a close frame"
        );
    }

    #[test]
    fn a_close_frame_ends_reading() {
        let mut r = Reassembler::new(10);
        assert_eq!(
            r.push(OpCode::Close, true, b""),
            Step::End(ReadEnd::ClientClosed)
        );
    }
}
