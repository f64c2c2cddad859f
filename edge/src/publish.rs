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
//! Why not `jetstream::Context::publish`: it pays per publish a fresh inbox, a oneshot, a
//! boxed future, a timer and a wake-up of the task awaiting it; here a publish costs one
//! slot in a queue and the acknowledgements of a burst are settled under one lock by a task
//! that wakes once for them.
//!
//! Bounds: a socket has at most [`SOCKET_IN_FLIGHT`] publishes awaiting their reply and
//! the edge at most [`EDGE_IN_FLIGHT`]; past either, the socket's reader waits
//! (backpressure, as the stream's own client does it). Replies are matched by number in a
//! queue ordered by publish time, so the timeout sweep looks only at its front.

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
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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

/// Why a publish was not accepted by the edge's NATS connection.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the NATS connection did not take the publish in time")]
    TimedOut,
    #[error(transparent)]
    Nats(#[from] async_nats::PublishError),
    /// Never in practice: the in-flight bounds are never closed.
    #[error("the publisher is closed")]
    Closed,
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

/// How [`Publisher::try_publish`] went.
pub enum Try {
    /// The NATS connection took it; the reply is settled later.
    Sent,
    /// The connection refused it (e.g. closed); the caller answers the request.
    NotSent(PublishError, Option<Value>),
    /// It would have to wait for a slot or for room in the connection: nothing was sent.
    Busy(Outgoing),
}

/// The edge's publisher: publishes and the task that settles their replies.
pub struct Publisher {
    nats: async_nats::Client,
    inbox: String,
    timeout: Duration,
    edge: Arc<Semaphore>,
    pending: Arc<Pending>,
    metrics: Arc<Metrics>,
}

impl Publisher {
    /// Subscribe to this edge's reply inbox and start the task that settles replies (it
    /// ends when the NATS client closes the subscription).
    pub async fn start(
        nats: async_nats::Client,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Publisher, async_nats::SubscribeError> {
        let inbox = nats.new_inbox();
        let replies = nats.subscribe(format!("{inbox}.*")).await?;
        let pending = Arc::new(Pending::default());
        tokio::spawn(settle(replies, pending.clone(), metrics.clone(), timeout));
        Ok(Publisher {
            nats,
            inbox,
            timeout,
            edge: Arc::new(Semaphore::new(EDGE_IN_FLIGHT)),
            pending,
            metrics,
        })
    }

    /// Publish one message without waiting, which is what a publish costs when neither
    /// bound is reached and the NATS connection has room: no future is kept. When it would
    /// have to wait, nothing was sent and the message comes back ([`Try::Busy`]) for
    /// [`Publisher::publish`].
    pub fn try_publish(&self, slots: &SocketSlots, outbox: &Outbox, msg: Outgoing) -> Try {
        let socket = slots.0.clone().try_acquire_owned();
        let edge = self.edge.clone().try_acquire_owned();
        let (Ok(socket), Ok(edge)) = (socket, edge) else {
            return Try::Busy(msg);
        };
        let n = self.pending.lock().push(Waiting {
            outbox: outbox.clone(),
            request_id: msg.request_id,
            sent: Instant::now(),
            _permits: (socket, edge),
        });
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, msg.msg_id.as_str());
        let reply = format!("{}.{n}", self.inbox);
        // One poll: the send completes at once when the connection's queue has room. A
        // send dropped before it completes has sent nothing (tokio's mpsc is cancel-safe).
        let sent = self
            .nats
            .publish_with_reply_and_headers(
                msg.subject.clone(),
                reply,
                headers,
                msg.payload.clone(),
            )
            .now_or_never();
        if let Some(Ok(())) = sent {
            self.metrics.messages_in.inc();
            return Try::Sent;
        }
        // Nothing was sent; the waiter was pushed a moment ago, so it is still there.
        let Some(w) = self.pending.lock().take(n) else {
            return Try::Sent;
        };
        match sent {
            Some(Err(e)) => Try::NotSent(e.into(), w.request_id),
            _ => Try::Busy(Outgoing {
                request_id: w.request_id,
                ..msg
            }),
        }
    }

    /// Publish one message for `outbox`'s socket, waiting while the socket (`slots`) or the
    /// edge has too many awaiting their reply. `Ok` means the NATS connection took it; its
    /// reply is settled later (a refusal or a timeout sends `-32010` to `outbox`). `Err`
    /// means it was not sent, and the caller answers the request, whose id comes back.
    pub async fn publish(
        &self,
        slots: &SocketSlots,
        outbox: &Outbox,
        msg: Outgoing,
    ) -> Result<(), (PublishError, Option<Value>)> {
        let socket = slots.0.clone().acquire_owned().await;
        let edge = self.edge.clone().acquire_owned().await;
        let (Ok(socket), Ok(edge)) = (socket, edge) else {
            return Err((PublishError::Closed, msg.request_id));
        };
        let n = self.pending.lock().push(Waiting {
            outbox: outbox.clone(),
            request_id: msg.request_id,
            sent: Instant::now(),
            _permits: (socket, edge),
        });
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, msg.msg_id.as_str());
        let reply = format!("{}.{n}", self.inbox);
        let sent = tokio::time::timeout(
            self.timeout,
            self.nats
                .publish_with_reply_and_headers(msg.subject, reply, headers, msg.payload),
        )
        .await;
        let err = match sent {
            Ok(Ok(())) => {
                self.metrics.messages_in.inc();
                return Ok(());
            }
            Ok(Err(e)) => PublishError::from(e),
            Err(_) => PublishError::TimedOut,
        };
        // Not sent: the caller answers, unless the timeout sweep already did.
        match self.pending.lock().take(n) {
            Some(w) => Err((err, w.request_id)),
            None => Ok(()),
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

/// Publishes awaiting a reply.
#[derive(Default)]
struct Pending(Mutex<Slots<Waiting>>);

impl Pending {
    fn lock(&self) -> MutexGuard<'_, Slots<Waiting>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
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
    pending: Arc<Pending>,
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
                    let mut p = pending.lock();
                    batch
                        .drain(..)
                        .map(|m| {
                            let w = number(m.subject.as_str()).and_then(|n| p.take(n));
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
                    Some(d) => pending.lock().expired(|w| w.sent <= d),
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
    warn!(error = why, request = ?w.request_id, "publish not acknowledged");
    metrics.publish_errors.inc();
    metrics.client_errors.inc();
    let json = frame::error(w.request_id.as_ref(), &unavailable());
    // Owed to the client like a pong, so past the queue's cap (bounded by the socket's
    // slots); a socket that is gone is simply not told.
    w.outbox.send_control(wire::text(&json));
}

#[cfg(test)]
mod tests;
