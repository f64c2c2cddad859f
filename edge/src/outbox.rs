//! A socket's outside handle: the bounded queue of frames to write to it, and the signal
//! by which rooms, presence and the drain tell it to stop.
//!
//! Rooms never await a socket: they offer an already-encoded frame (written at once when the
//! socket is free, see [`crate::transport::socket`]) and, when its queue is full, tell the
//! socket to go (the client resumes by `_id` elsewhere). So one slow
//! client can neither stall a room nor grow the edge's memory.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use crate::transport::frame;
use crate::transport::socket::{Push, Socket};

/// Why a socket is being closed, as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its outbound queue overflowed: reconnect and resume by `_id`.
    Slow,
    /// Nothing heard from the client for too long.
    Idle,
    /// The edge is stopping (drain deadline reached).
    Shutdown,
    /// A message exceeded the frame limit.
    TooLarge,
    /// A text message was not valid UTF-8.
    InvalidUtf8,
    /// The room could not be kept consistent (a gap that could not be repaired), or the
    /// session's name passed to another userId while the edge was cut off: rejoin/resume.
    Resync,
    /// No room was joined within `--join-timeout-secs` of the upgrade.
    NoJoin,
    /// The session ended on its own (client closed or the socket failed).
    Done,
}

impl CloseReason {
    /// WebSocket close code and reason text.
    pub fn close_frame(self) -> (u16, &'static str) {
        match self {
            CloseReason::Slow => (1013, "too slow: reconnect and resume"),
            CloseReason::Idle => (1001, "idle timeout"),
            CloseReason::Shutdown => (1001, "server shutting down: reconnect"),
            CloseReason::TooLarge => (1009, "message too large"),
            CloseReason::InvalidUtf8 => (1007, "invalid UTF-8 in a text message"),
            CloseReason::Resync => (1013, "resync: reconnect and resume"),
            CloseReason::NoJoin => (1008, "no room joined in time"),
            CloseReason::Done => (1000, "bye"),
        }
    }

    /// Whether the client should get a `reconnect` request before the close frame.
    pub fn hints_reconnect(self) -> Option<&'static str> {
        match self {
            CloseReason::Slow => Some("slow"),
            CloseReason::Shutdown => Some("draining"),
            CloseReason::Resync => Some("resync"),
            _ => None,
        }
    }
}

/// The latest instruction for a socket's session. `watch` keeps only the newest, so
/// signalling never blocks and never fills up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signal {
    /// Send the `reconnect` request (the edge is draining) but keep serving.
    pub drain: bool,
    /// Close with this reason.
    pub close: Option<CloseReason>,
}

/// Cloneable handle to one socket.
#[derive(Clone)]
pub struct Outbox {
    socket: Arc<Socket>,
    signal: watch::Sender<Signal>,
    /// The session's id, for what is logged about it away from its span.
    session: uuid::Uuid,
}

/// What happened to a frame offered to a socket.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// The queue was full; the socket has been told to close as slow.
    Overflow,
    /// The socket is gone.
    Closed,
}

impl Outbox {
    pub fn new(socket: Arc<Socket>, signal: watch::Sender<Signal>, session: uuid::Uuid) -> Self {
        Outbox {
            socket,
            signal,
            session,
        }
    }

    /// The id of the socket's session (as its `session` span field shows it).
    pub fn session(&self) -> uuid::fmt::Simple {
        self.session.simple()
    }

    /// Offer an encoded WebSocket frame (see [`crate::transport::frame`]) without waiting:
    /// written at once when the socket is free, queued when it is busy; a full queue closes
    /// the socket as slow.
    pub fn offer(&self, wire_frame: Bytes) -> Offer {
        match self.socket.push(wire_frame, false) {
            Push::Written | Push::Queued => Offer::Queued,
            Push::Full => {
                self.close(CloseReason::Slow);
                Offer::Overflow
            }
            Push::Closed => Offer::Closed,
        }
    }

    /// Offer several encoded frames at once, in order (one write when the socket is free).
    pub fn offer_many(&self, wire_frames: &[Bytes]) -> Offer {
        match self.socket.push_many(wire_frames) {
            Push::Written | Push::Queued => Offer::Queued,
            Push::Full => {
                self.close(CloseReason::Slow);
                Offer::Overflow
            }
            Push::Closed => Offer::Closed,
        }
    }

    /// Send a JSON text message, waiting for room in the queue (only the socket's own
    /// session does this, e.g. while replaying history). Returns false when the socket is
    /// gone or closing.
    pub async fn send(&self, json: Bytes) -> bool {
        let wire = frame::text(&json);
        self.socket
            .push_wait(wire, || self.signal.borrow().close.is_some())
            .await
    }

    /// Send a control frame the session owes the client (pong, close, reconnect), past the
    /// queue's cap.
    pub fn send_control(&self, wire_frame: Bytes) -> bool {
        self.socket.push(wire_frame, true).accepted()
    }

    /// The socket itself (for the session that runs it).
    pub fn socket(&self) -> &Arc<Socket> {
        &self.socket
    }

    /// Ask the session to close the socket with `reason` (the first reason wins).
    pub fn close(&self, reason: CloseReason) {
        let changed = self.signal.send_if_modified(|s| {
            if s.close.is_none() {
                s.close = Some(reason);
                true
            } else {
                false
            }
        });
        if changed {
            // From here on the client gets no more data, only the reconnect hint and the
            // close: what it resumes from must be the last message it was sent (a room that
            // asks its members to resync after a gap must not hand them a later message).
            self.socket.refuse_data();
            // A session waiting for room in the queue should stop waiting.
            self.socket.wake();
        }
    }

    /// Ask the session to send the drain `reconnect` request.
    pub fn drain(&self) {
        self.signal.send_if_modified(|s| {
            let changed = !s.drain;
            s.drain = true;
            changed
        });
    }

    /// A receiver of this socket's signal (for whoever must enforce a close).
    pub fn watch(&self) -> watch::Receiver<Signal> {
        self.signal.subscribe()
    }

    /// The close reason, if one was given.
    pub fn closing(&self) -> Option<CloseReason> {
        self.signal.borrow().close
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A room that asks its members to resync after a gap hands the batch's later messages
    /// to the sockets right after: none of them may reach the client, or it would resume
    /// after the gap and never see the messages in it.
    #[tokio::test]
    async fn once_a_close_is_asked_for_no_data_frame_goes_out() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (c, s) = tokio::join!(
            tokio::net::TcpStream::connect(l.local_addr().unwrap()),
            l.accept()
        );
        let (mut c, s) = (c.unwrap(), s.unwrap().0);
        let (tx, _rx) = watch::channel(Signal::default());
        let outbox = Outbox::new(Socket::new(s, 8), tx, uuid::Uuid::nil());
        assert_eq!(outbox.offer(frame::text(b"1")), Offer::Queued);
        outbox.close(CloseReason::Resync);
        assert_eq!(outbox.offer(frame::text(b"2")), Offer::Closed);
        assert_eq!(
            outbox.offer_many(&[frame::text(b"3"), frame::text(b"4")]),
            Offer::Closed
        );
        assert!(!outbox.send(Bytes::from_static(b"{}")).await);
        // The session's close still goes out, right behind the last data frame.
        assert!(outbox.send_control(frame::close(1013, "resync")));
        outbox.socket().shutdown();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        let mut want = frame::text(b"1").to_vec();
        want.extend_from_slice(&frame::close(1013, "resync"));
        assert_eq!(got, want);
    }
}
