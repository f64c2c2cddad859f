//! The edge's publishes into the CHAT stream and their acknowledgements, tracked once for
//! the whole edge.
//!
//! A `textMessage` is published with a reply subject `<inbox>.<n>` under one inbox of this
//! edge; one task reads every acknowledgement from a single subscription (`<inbox>.*`) and
//! settles publish `n`. The sender's real acknowledgement is its own echo, delivered by the
//! room; what the stream's reply decides is whether the client is told to retry:
//!
//! - stored (or a duplicate the stream's dedupe absorbed): nothing is sent, the latency is
//!   observed;
//! - refused (an error reply, e.g. a full stream; no stream listening), or no reply within
//!   the NATS timeout (`--nats-timeout-ms`): the request gets `-32010` and the client
//!   retries with the same uuid, which the stream's dedupe keeps once even if the first
//!   attempt was stored after all.
//!
//! How a publish travels: the socket's reader checks the message, takes a slot and queues
//! it (one lock, no future, no wake-up unless the queue was empty); one sender task sends
//! everything queued to the NATS connection, after yielding once so that the publishes of
//! every socket served in the same scheduler round go out together (one write to NATS
//! instead of one per message); one settling task reads every reply from a single
//! subscription and settles the ones that came together under one lock.
//!
//! Why not `jetstream::Context::publish`: it pays per publish a fresh inbox, a oneshot, a
//! boxed future, a timer and a wake-up of the task awaiting it, and the connection is
//! woken, and writes, once per message.
//!
//! Bounds: a socket has at most [`SOCKET_IN_FLIGHT`] publishes awaiting their reply and
//! the edge at most [`EDGE_IN_FLIGHT`]; past either, the socket's reader waits
//! (backpressure, as the stream's own client does it). Replies are matched by number in a
//! queue ordered by publish time, so the timeout sweep looks only at its front. A queued
//! publish whose timeout passed before the sender took it (a congested connection) is not
//! sent: its client was already told to retry.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::{Message, StatusCode, Subject};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use natter_protocol::{frame, ErrorCode, RpcError};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::transport::frame as wire;

/// Publishes one socket may have awaiting the stream's reply; a client with more waits.
pub const SOCKET_IN_FLIGHT: usize = 256;

/// Publishes the whole edge may have awaiting the stream's reply (as `async-nats`' default).
pub const EDGE_IN_FLIGHT: usize = 5_000;

/// Replies settled under one lock at most (the rest wait for the next round).
const BATCH: usize = 256;

/// The error a client gets when its message was not stored.
pub fn unavailable() -> RpcError {
    RpcError::new(
        ErrorCode::Unavailable,
        "temporarily unavailable: the message was not stored; retry with the same uuid",
    )
}

/// A socket's share of the edge's publishes: created on its first publish (idle sockets
/// cost nothing), it bounds the publishes of that socket awaiting their reply.
#[derive(Clone)]
pub struct SocketSlots(Arc<Semaphore>);

impl Default for SocketSlots {
    fn default() -> Self {
        SocketSlots(Arc::new(Semaphore::new(SOCKET_IN_FLIGHT)))
    }
}

/// One message for the stream, with what its reply is settled against.
pub struct Outgoing {
    pub subject: Subject,
    pub payload: Bytes,
    /// The stream's dedupe key (`Nats-Msg-Id`).
    pub msg_id: String,
    /// The JSON-RPC id of the request, for a `-32010`.
    pub request_id: Option<Value>,
}

/// The edge's publisher: the queue of publishes, their waiters, and the tasks that send
/// them and settle their replies.
pub struct Publisher {
    edge: Arc<Semaphore>,
    shared: Arc<Shared>,
}

impl Publisher {
    /// Subscribe to this edge's reply inbox and start the sending and settling tasks (the
    /// settling task ends with the NATS client; the sender waits for work as long as the
    /// runtime runs, and refuses what the client can no longer send).
    pub async fn start(
        nats: async_nats::Client,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Publisher, async_nats::SubscribeError> {
        let inbox = nats.new_inbox();
        let replies = nats.subscribe(format!("{inbox}.*")).await?;
        let shared = Arc::new(Shared::default());
        tokio::spawn(settle(replies, shared.clone(), metrics.clone(), timeout));
        tokio::spawn(send(nats, inbox, shared.clone(), metrics));
        Ok(Publisher {
            edge: Arc::new(Semaphore::new(EDGE_IN_FLIGHT)),
            shared,
        })
    }

    /// Queue one message for `outbox`'s socket without waiting. `Err` gives it back when a
    /// slot of the socket or of the edge is not free (for [`Publisher::publish`]). Once
    /// queued, a refusal or a missing reply sends `-32010` to `outbox`.
    pub fn try_publish(
        &self,
        slots: &SocketSlots,
        outbox: &Outbox,
        msg: Outgoing,
    ) -> Result<(), Outgoing> {
        let socket = slots.0.clone().try_acquire_owned();
        let edge = self.edge.clone().try_acquire_owned();
        match (socket, edge) {
            (Ok(socket), Ok(edge)) => {
                self.shared.queue(msg, outbox, (socket, edge));
                Ok(())
            }
            _ => Err(msg),
        }
    }

    /// Queue one message, waiting while the socket (`slots`) or the edge has too many
    /// publishes awaiting their reply. `Err` (never in practice: the bounds are never
    /// closed) gives back the request id for the caller to answer.
    pub async fn publish(
        &self,
        slots: &SocketSlots,
        outbox: &Outbox,
        msg: Outgoing,
    ) -> Result<(), Option<Value>> {
        let socket = slots.0.clone().acquire_owned().await;
        let edge = self.edge.clone().acquire_owned().await;
        let (Ok(socket), Ok(edge)) = (socket, edge) else {
            return Err(msg.request_id);
        };
        self.shared.queue(msg, outbox, (socket, edge));
        Ok(())
    }
}

/// What the sessions and the two tasks share.
#[derive(Default)]
struct Shared {
    book: Mutex<Book>,
    /// Wakes the sender when the queue stops being empty.
    wake: Notify,
}

/// Publishes awaiting a reply, and those of them not yet sent.
#[derive(Default)]
struct Book {
    waiting: Slots<Waiting>,
    unsent: Vec<Unsent>,
}

/// A queued publish: what goes on the wire, and its number.
struct Unsent {
    n: u64,
    subject: Subject,
    payload: Bytes,
    msg_id: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queue(
        &self,
        msg: Outgoing,
        outbox: &Outbox,
        permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    ) {
        let was_empty = {
            let mut book = self.lock();
            let n = book.waiting.push(Waiting {
                outbox: outbox.clone(),
                request_id: msg.request_id,
                sent: Instant::now(),
                _permits: permits,
            });
            book.unsent.push(Unsent {
                n,
                subject: msg.subject,
                payload: msg.payload,
                msg_id: msg.msg_id,
            });
            book.unsent.len() == 1
        };
        if was_empty {
            self.wake.notify_one();
        }
    }
}

/// Send what is queued, a scheduler round's worth at a time, for as long as the runtime runs
/// (a publish the NATS client refuses, e.g. once closed, is answered `-32010`).
async fn send(nats: async_nats::Client, inbox: String, shared: Arc<Shared>, metrics: Arc<Metrics>) {
    let mut batch: Vec<Unsent> = Vec::new();
    loop {
        shared.wake.notified().await;
        // Let every socket that is ready in this round queue its publishes first: tokio
        // runs a yielded task once the worker has no other ready task, or at its next poll
        // of the sockets (every 61 tasks).
        tokio::task::yield_now().await;
        {
            let mut book = shared.lock();
            std::mem::swap(&mut batch, &mut book.unsent);
            // A publish whose client was told to retry (its reply overdue while it sat
            // here) is not sent.
            let Book { waiting, .. } = &*book;
            batch.retain(|u| waiting.waits(u.n));
        }
        for u in batch.drain(..) {
            let mut headers = HeaderMap::new();
            headers.insert(NATS_MESSAGE_ID, u.msg_id.as_str());
            let reply = format!("{inbox}.{}", u.n);
            match nats
                .publish_with_reply_and_headers(u.subject, reply, headers, u.payload)
                .await
            {
                Ok(()) => {
                    metrics.messages_in.inc();
                }
                Err(e) => {
                    let w = shared.lock().waiting.take(u.n);
                    if let Some(w) = w {
                        refuse(&metrics, w, &format!("not sent: {e}"));
                    }
                }
            }
        }
    }
}

/// A publish awaiting the stream's reply.
struct Waiting {
    outbox: Outbox,
    request_id: Option<Value>,
    sent: Instant,
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

/// Numbered waiters in the order they came: `slots[i]` is number `first + i`, `None` once
/// taken. Taken slots leave from the front, so the oldest waiter is always first.
struct Slots<T> {
    first: u64,
    slots: VecDeque<Option<T>>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            first: 0,
            slots: VecDeque::new(),
        }
    }
}

impl<T> Slots<T> {
    /// Queue a waiter; its number.
    fn push(&mut self, w: T) -> u64 {
        let n = self.first + self.slots.len() as u64;
        self.slots.push_back(Some(w));
        n
    }

    /// Whether waiter `n` still waits.
    fn waits(&self, n: u64) -> bool {
        n.checked_sub(self.first)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.slots.get(i))
            .is_some_and(Option::is_some)
    }

    /// Take waiter `n` if it still waits.
    fn take(&mut self, n: u64) -> Option<T> {
        let i = usize::try_from(n.checked_sub(self.first)?).ok()?;
        let w = self.slots.get_mut(i)?.take();
        self.trim();
        w
    }

    /// Take the oldest waiters for as long as `expired` says so of them.
    fn expired(&mut self, expired: impl Fn(&T) -> bool) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(front) = self.slots.front_mut() {
            match front {
                Some(w) if !expired(w) => break,
                Some(_) => out.extend(front.take()),
                None => {}
            }
            self.slots.pop_front();
            self.first += 1;
        }
        out
    }

    fn trim(&mut self) {
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.first += 1;
        }
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
}

/// What the stream replied to a publish.
#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    duplicate: bool,
    error: Option<ReplyError>,
}

#[derive(Deserialize)]
struct ReplyError {
    #[serde(default)]
    description: String,
}

/// How one reply settles its publish.
#[derive(Debug, PartialEq)]
enum Verdict {
    Stored { duplicate: bool },
    Refused(String),
}

fn verdict(msg: &Message) -> Verdict {
    if msg.status == Some(StatusCode::NO_RESPONDERS) {
        return Verdict::Refused("no stream listens on the subject".into());
    }
    match serde_json::from_slice::<Reply>(&msg.payload) {
        Ok(Reply { error: Some(e), .. }) => Verdict::Refused(e.description),
        Ok(Reply { duplicate, .. }) => Verdict::Stored { duplicate },
        Err(e) => Verdict::Refused(format!("unreadable reply: {e}")),
    }
}

/// The publish number a reply subject `<inbox>.<n>` names.
fn number(subject: &str) -> Option<u64> {
    subject.rsplit_once('.')?.1.parse().ok()
}

/// Settle replies as they come and time out the ones that do not, until the subscription
/// ends (the NATS client is gone).
async fn settle(
    mut replies: async_nats::Subscriber,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    timeout: Duration,
) {
    let mut sweep = tokio::time::interval(
        (timeout / 4).clamp(Duration::from_millis(20), Duration::from_millis(500)),
    );
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch: Vec<Message> = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            msg = replies.next() => {
                let Some(msg) = msg else { break };
                batch.push(msg);
                // The replies that are already here are settled in the same round.
                while batch.len() < BATCH {
                    match replies.next().now_or_never() {
                        Some(Some(m)) => batch.push(m),
                        _ => break,
                    }
                }
                let settled: Vec<(Option<Waiting>, Verdict)> = {
                    let mut book = shared.lock();
                    batch
                        .drain(..)
                        .map(|m| {
                            let w = number(m.subject.as_str()).and_then(|n| book.waiting.take(n));
                            (w, verdict(&m))
                        })
                        .collect()
                };
                for (w, v) in settled {
                    let Some(w) = w else {
                        // A reply after its timeout (the client was told to retry) or not
                        // ours: the retry's dedupe keeps the message once.
                        debug!(verdict = ?v, "reply for no waiting publish");
                        continue;
                    };
                    match v {
                        Verdict::Stored { duplicate } => {
                            metrics.publish_latency.observe(w.sent.elapsed());
                            if duplicate {
                                metrics.messages_duplicate.inc();
                                debug!("duplicate publish (retry) absorbed by the stream");
                            }
                        }
                        Verdict::Refused(why) => refuse(&metrics, w, &why),
                    }
                }
            }
            _ = sweep.tick() => {
                let deadline = Instant::now().checked_sub(timeout);
                let expired = match deadline {
                    Some(d) => shared.lock().waiting.expired(|w| w.sent <= d),
                    None => Vec::new(),
                };
                for w in expired {
                    refuse(&metrics, w, "no reply from the stream in time");
                }
            }
        }
    }
    debug!("publish replies ended");
}

/// Tell the client its message was not stored.
fn refuse(metrics: &Metrics, w: Waiting, why: &str) {
    warn!(session = %w.outbox.session(), error = why, request = ?w.request_id, "publish not acknowledged");
    metrics.publish_errors.inc();
    metrics.client_errors.inc();
    let json = frame::error(w.request_id.as_ref(), &unavailable());
    // Owed to the client like a pong, so past the queue's cap (bounded by the socket's
    // slots); a socket that is gone is simply not told.
    w.outbox.send_control(wire::text(&json));
}

#[cfg(test)]
mod tests;
