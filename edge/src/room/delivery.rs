//! The room's delivery bookkeeping as a plain state machine: events in, decisions out, no
//! I/O, no clock, no async. It is the part of the edge that makes "every member sees every
//! message of the room exactly once, in order" true, so it is tested on its own, including
//! property tests that interleave live messages, losses, repairs, joins and leaves at random
//! (see the tests at the bottom).
//!
//! What it tracks:
//! - `last_seq`: the stream sequence of the newest message delivered to the room. The stream
//!   republishes every stored message with `Nats-Sequence` (`seq`) and `Nats-Last-Sequence`
//!   (`prev`, the previous sequence on the same subject). `prev > last_seq` means a message
//!   was missed on the live subject: [`Delivery::on_live`] answers [`Live::RepairFirst`] and
//!   the caller reads that range back from the stream before delivering `seq`.
//! - members, each either *catching up* (registered at a seam, its live messages buffered
//!   while its session replays history up to the seam) or *live*.
//!
//! What it deliberately is not: it does not read the stream, hold sockets or know about
//! NATS. The I/O shell ([`super::live`]) feeds it and carries out what it decides; sockets
//! are reached through the [`Sink`] trait so tests can record what each member received.

use std::collections::HashMap;

use bytes::Bytes;

use crate::outbox::{CloseReason, Offer, Outbox};

/// Where a member's frames go: a socket's outbox in production, a recorder in tests.
pub trait Sink {
    /// Queue a frame without waiting.
    fn offer(&self, frame: Bytes) -> Offer;
    /// Queue several frames, in order, without waiting (written together when the socket
    /// is free). Stops at the first that is not queued.
    fn offer_many(&self, frames: &[Bytes]) -> Offer {
        for f in frames {
            let o = self.offer(f.clone());
            if o != Offer::Queued {
                return o;
            }
        }
        Offer::Queued
    }
    /// Ask the socket to close.
    fn close(&self, reason: CloseReason);
}

impl Sink for Outbox {
    fn offer(&self, frame: Bytes) -> Offer {
        Outbox::offer(self, frame)
    }

    fn offer_many(&self, frames: &[Bytes]) -> Offer {
        Outbox::offer_many(self, frames)
    }

    fn close(&self, reason: CloseReason) {
        Outbox::close(self, reason)
    }
}

/// What to do with a message that arrived on the live subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// Already delivered (by a repair, or a redelivery): drop it.
    Stale,
    /// Deliver it now.
    Deliver,
    /// Messages `from..=to` were missed: read them from the stream and deliver them first.
    RepairFirst { from: u64, to: u64 },
}

struct Member<S> {
    sink: S,
    user_token: String,
    /// `Some` while the member is catching up: messages after its seam wait here.
    buffer: Option<Vec<Bytes>>,
}

/// One room's delivery state on one edge.
pub struct Delivery<S> {
    last_seq: u64,
    members: HashMap<u64, Member<S>>,
    /// Most frames buffered for a catching-up member before it is closed as slow.
    buffer_cap: usize,
    closed: bool,
    /// Frames [`Delivery::stage`]d for the live members and not yet handed to them: a
    /// batch of messages that arrived together reaches each socket in one write.
    staged: Vec<Bytes>,
}

impl<S: Sink> Delivery<S> {
    /// A room whose newest stored message is `last_seq`.
    pub fn new(last_seq: u64, buffer_cap: usize) -> Self {
        Delivery {
            last_seq,
            members: HashMap::new(),
            buffer_cap: buffer_cap.max(1),
            closed: false,
            staged: Vec::new(),
        }
    }

    /// The newest sequence delivered to this room's members.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Set where the room stands in the stream (once, when its subscription starts).
    pub fn start_at(&mut self, last_seq: u64) {
        self.last_seq = self.last_seq.max(last_seq);
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Close the room if it has no members; true when this call closed it.
    pub fn close_if_empty(&mut self) -> bool {
        if self.closed || !self.members.is_empty() {
            return false;
        }
        self.closed = true;
        true
    }

    /// Register a catching-up member; returns its seam (history must be replayed up to and
    /// including it), or `None` when the room has closed.
    pub fn add_member(&mut self, id: u64, sink: S, user_token: String) -> Option<u64> {
        if self.closed {
            return None;
        }
        self.members.insert(
            id,
            Member {
                sink,
                user_token,
                buffer: Some(Vec::new()),
            },
        );
        Some(self.last_seq)
    }

    /// End a member's catch-up: flush what arrived after its seam, then deliver live.
    /// Returns how many frames were queued.
    pub fn go_live(&mut self, id: u64) -> u64 {
        // The staged frames are in this member's buffer already: hand them to the members
        // live before it first, so they never reach it twice.
        let mut queued = self.flush();
        let Some(m) = self.members.get_mut(&id) else {
            return queued;
        };
        for f in m.buffer.take().unwrap_or_default() {
            if m.sink.offer(f) != Offer::Queued {
                break;
            }
            queued += 1;
        }
        queued
    }

    /// Remove a member; true when it was there.
    pub fn remove_member(&mut self, id: u64) -> bool {
        self.members.remove(&id).is_some()
    }

    /// Decide what to do with live message `seq` whose predecessor on the subject is `prev`.
    pub fn on_live(&self, seq: u64, prev: u64) -> Live {
        if seq <= self.last_seq {
            Live::Stale
        } else if prev > self.last_seq {
            Live::RepairFirst {
                from: self.last_seq + 1,
                to: prev,
            }
        } else {
            Live::Deliver
        }
    }

    /// The range to repair when the stream's tail for the room is `tail`, if any.
    pub fn behind(&self, tail: u64) -> Option<(u64, u64)> {
        (tail > self.last_seq).then(|| (self.last_seq + 1, tail))
    }

    /// Deliver stored message `seq` (already encoded as `frame`) to every member: queued to
    /// live members, buffered for catching-up ones. Returns the frames queued, or `None` when
    /// `seq` was already delivered.
    pub fn deliver(&mut self, seq: u64, frame: &Bytes) -> Option<u64> {
        if seq <= self.last_seq {
            return None;
        }
        let mut queued = self.flush();
        for member in self.members.values_mut() {
            match &mut member.buffer {
                Some(buf) if buf.len() >= self.buffer_cap => member.sink.close(CloseReason::Slow),
                Some(buf) => buf.push(frame.clone()),
                None => {
                    if member.sink.offer(frame.clone()) == Offer::Queued {
                        queued += 1;
                    }
                }
            }
        }
        self.last_seq = seq;
        Some(queued)
    }

    /// Like [`Delivery::deliver`], but the live members get the frame at the next
    /// [`Delivery::flush`], together with the other frames staged before it (catching-up
    /// members buffer it at once, as always). Returns false when `seq` was already
    /// delivered.
    pub fn stage(&mut self, seq: u64, frame: &Bytes) -> bool {
        if seq <= self.last_seq {
            return false;
        }
        for member in self.members.values_mut() {
            match &mut member.buffer {
                Some(buf) if buf.len() >= self.buffer_cap => member.sink.close(CloseReason::Slow),
                Some(buf) => buf.push(frame.clone()),
                None => {}
            }
        }
        self.staged.push(frame.clone());
        self.last_seq = seq;
        true
    }

    /// Whether frames are staged and not yet flushed.
    pub fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// Hand the staged frames to every live member, in one offer each. Returns the frames
    /// queued.
    pub fn flush(&mut self) -> u64 {
        if self.staged.is_empty() {
            return 0;
        }
        let mut queued = 0;
        let n = self.staged.len() as u64;
        for member in self.members.values() {
            if member.buffer.is_none() && member.sink.offer_many(&self.staged) == Offer::Queued {
                queued += n;
            }
        }
        self.staged.clear();
        if self.staged.capacity() > 64 {
            self.staged = Vec::new();
        }
        queued
    }

    /// Move past `seq` without delivering it (a stored message that cannot be sent).
    pub fn skip(&mut self, seq: u64) {
        self.last_seq = self.last_seq.max(seq);
    }

    /// An ephemeral event (typing, newUser, userLeft): to every member but the user it is
    /// about. Returns the frames queued.
    pub fn broadcast_event(&mut self, frame: &Bytes, skip_user: Option<&str>) -> u64 {
        let mut queued = self.flush();
        for member in self.members.values() {
            if skip_user == Some(member.user_token.as_str()) {
                continue;
            }
            if member.sink.offer(frame.clone()) == Offer::Queued {
                queued += 1;
            }
        }
        queued
    }

    /// Ask every member to reconnect and resume: the room could not be kept consistent
    /// (the stream was unreachable during a repair, or the live subscription ended).
    pub fn resync_all(&self) {
        for m in self.members.values() {
            m.sink.close(CloseReason::Resync);
        }
    }
}

#[cfg(test)]
mod tests;
