//! The socket's read half: WebSocket frames in, whole messages out.
//!
//! [`Reassembler`] is the pure part (fragments → message, with the size limit), tested on
//! its own. [`MessageReader`] drives it from the socket. fastwebsockets' `read_frame` is not
//! cancel-safe, so a `MessageReader` must run alone in its task, never raced in a `select!`;
//! frames it must answer (pong, close echo) go to the writer through the control channel.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload, WebSocketError, WebSocketRead};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf, ReadHalf};
use tokio::sync::mpsc;
use tracing::debug;

use super::{Io, Liveness};

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

/// The socket's read half, shared so that the session can still drain it after the reader
/// gave up (e.g. on an oversized frame): closing a socket with unread input makes the kernel
/// send a reset, which can destroy the close frame before the client reads it.
#[derive(Clone)]
pub struct SharedRead(pub(super) Arc<Mutex<ReadHalf<Io>>>);

impl AsyncRead for SharedRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        // Never contended: only one task reads at a time; the lock is not held across polls.
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Pin::new(&mut *inner).poll_read(cx, buf)
    }
}

impl SharedRead {
    /// Read and discard until the peer closes, `limit` bytes were read, or `within` passed.
    pub async fn discard(mut self, limit: usize, within: Duration) {
        let mut buf = vec![0u8; 8192];
        let mut total = 0usize;
        let _ = tokio::time::timeout(within, async {
            while total < limit {
                match self.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        })
        .await;
    }
}

/// Frames the reader hands to the writer (pong, close echo).
pub type Control = Box<Frame<'static>>;

/// Whole messages from one socket.
pub struct MessageReader {
    rd: WebSocketRead<SharedRead>,
    ctl: mpsc::Sender<Control>,
    asm: Reassembler,
    liveness: Arc<Liveness>,
}

impl MessageReader {
    pub(super) fn new(
        rd: WebSocketRead<SharedRead>,
        ctl: mpsc::Sender<Control>,
        max_message_bytes: usize,
        liveness: Arc<Liveness>,
    ) -> Self {
        MessageReader {
            rd,
            ctl,
            asm: Reassembler::new(max_message_bytes),
            liveness,
        }
    }

    /// The next whole message, or why the socket is done. Not cancel-safe.
    pub async fn next(&mut self) -> Result<Message, ReadEnd> {
        let ctl = &self.ctl;
        let mut send_fn = |f: Frame<'_>| {
            let owned = Box::new(Frame::new(
                true,
                f.opcode,
                None,
                Payload::Owned(f.payload.to_vec()),
            ));
            let ctl = ctl.clone();
            async move { ctl.send(owned).await.map_err(|_| "socket writer is gone") }
        };
        // Bounded by the socket: every round consumes a frame or ends.
        loop {
            let frame = match self.rd.read_frame(&mut send_fn).await {
                Ok(f) => f,
                Err(WebSocketError::FrameTooLarge) => return Err(ReadEnd::TooLarge),
                // fastwebsockets checks unfragmented text frames itself.
                Err(WebSocketError::InvalidUTF8) => return Err(ReadEnd::InvalidUtf8),
                Err(e) => {
                    debug!(error = %e, "socket read ended");
                    return Err(ReadEnd::Failed);
                }
            };
            self.liveness.touch();
            match self.asm.push(frame.opcode, frame.fin, &frame.payload) {
                Step::Message(m) => return Ok(m),
                Step::More => continue,
                Step::End(end) => return Err(end),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_close_frame_ends_reading() {
        let mut r = Reassembler::new(10);
        assert_eq!(
            r.push(OpCode::Close, true, b""),
            Step::End(ReadEnd::ClientClosed)
        );
    }
}
