//! The per-edge room registry: one live subscription per room with local members, the
//! member list, and fanout of each message encoded once.
//!
//! A room tracks `last_seq`, the stream sequence of the newest message it delivered. The
//! stream republishes every stored message to `live.room.<token>` with `Nats-Sequence` and
//! `Nats-Last-Sequence` (the previous sequence on the same subject): when the latter is ahead
//! of `last_seq`, a message was missed on the live subject and the range is read back from
//! the stream before going on. A periodic tail check does the same for a room that went
//! quiet right after a loss. So every member sees every message, in order, exactly once.
//!
//! A member that joins is registered *catching up* at a seam (`last_seq` at that instant):
//! its session replays history up to the seam from the stream while the room buffers what
//! arrives after it; then the buffer is flushed and the member goes live. No gap, no
//! duplicate at the seam.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, Message};
use bytes::Bytes;
use futures_util::StreamExt;
use natter_nats::subjects;
use natter_protocol::frame;
use thiserror::Error;
use tokio::sync::OnceCell;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn, Instrument};

use crate::metrics::Metrics;
use crate::node::Node;
use crate::outbox::{CloseReason, Offer, Outbox};

#[derive(Debug, Error, Clone)]
pub enum RoomError {
    #[error("could not subscribe to the room: {0}")]
    Subscribe(String),
    #[error("could not read the room's position in the stream: {0}")]
    Stream(String),
}

/// One member of a room on this edge.
struct Member {
    outbox: Outbox,
    user_token: String,
    /// `Some` while the member is catching up: messages after its seam wait here.
    buffer: Option<Vec<Bytes>>,
}

struct RoomState {
    last_seq: u64,
    members: HashMap<u64, Member>,
    closed: bool,
}

/// A room with local members.
pub struct Room {
    pub name: String,
    pub token: String,
    pub subject: String,
    pub live_subject: String,
    state: Mutex<RoomState>,
    started: OnceCell<()>,
    task: Mutex<Option<AbortHandle>>,
}

impl Room {
    fn new(name: &str) -> Room {
        let token = natter_protocol::token::encode(name);
        Room {
            name: name.to_owned(),
            subject: subjects::room(&token),
            live_subject: subjects::live(&token),
            token,
            state: Mutex::new(RoomState {
                last_seq: 0,
                members: HashMap::new(),
                closed: false,
            }),
            started: OnceCell::new(),
            task: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RoomState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribe first, then read where the room stands in the stream: anything stored after
    /// that point is on the subscription, anything before is history.
    async fn start(self: &Arc<Self>, node: &Arc<Node>) -> Result<(), RoomError> {
        let sub = node
            .nats
            .subscribe(self.live_subject.clone())
            .await
            .map_err(|e| RoomError::Subscribe(e.to_string()))?;
        let last = node
            .reader
            .last_seq(&self.subject)
            .await
            .map_err(|e| RoomError::Stream(e.to_string()))?;
        self.lock().last_seq = last;
        let span = tracing::info_span!("room", room = %self.name);
        let handle = tokio::spawn(run(self.clone(), node.clone(), sub).instrument(span));
        let mut task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        // The room may have been discarded while this start was under way: its task must
        // not outlive it (discard sets `closed` before it takes the task handle).
        if self.lock().closed {
            handle.abort();
            return Err(RoomError::Subscribe(
                "the room closed while starting; retry".into(),
            ));
        }
        *task = Some(handle.abort_handle());
        Ok(())
    }

    /// Register a catching-up member; returns its seam.
    fn add_member(&self, id: u64, outbox: Outbox, user_token: String) -> Option<u64> {
        let mut st = self.lock();
        if st.closed {
            return None;
        }
        st.members.insert(
            id,
            Member {
                outbox,
                user_token,
                buffer: Some(Vec::new()),
            },
        );
        Some(st.last_seq)
    }

    /// End a member's catch-up: flush what arrived after its seam, then deliver live.
    pub fn go_live(&self, id: u64, metrics: &Metrics) {
        let mut st = self.lock();
        let Some(m) = st.members.get_mut(&id) else {
            return;
        };
        for f in m.buffer.take().unwrap_or_default() {
            if m.outbox.offer(f) != Offer::Queued {
                break;
            }
            metrics.frames_out.fetch_add(1, Relaxed);
        }
    }

    /// The newest sequence delivered to this room's members.
    pub fn last_seq(&self) -> u64 {
        self.lock().last_seq
    }

    /// Queue a stored message (with `_id` = `seq`) to every member, once encoded.
    fn deliver(&self, seq: u64, stored: &[u8], node: &Node, stamped: Option<&str>) {
        let m = &node.metrics;
        let Some(frame) = frame::with_message_id(stored, seq) else {
            warn!(seq, "stored message is not a JSON object; skipped");
            self.lock().last_seq = seq;
            return;
        };
        let t0 = Instant::now();
        let cap = node.config.outbound_queue;
        let mut queued = 0u64;
        {
            let mut st = self.lock();
            if seq <= st.last_seq {
                return;
            }
            for member in st.members.values_mut() {
                match &mut member.buffer {
                    Some(buf) if buf.len() >= cap => member.outbox.close(CloseReason::Slow),
                    Some(buf) => buf.push(frame.clone()),
                    None => {
                        if member.outbox.offer(frame.clone()) == Offer::Queued {
                            queued += 1;
                        }
                    }
                }
            }
            st.last_seq = seq;
        }
        m.frames_out.fetch_add(queued, Relaxed);
        m.room_messages_fanned_out.fetch_add(1, Relaxed);
        m.fanout_latency.observe(t0.elapsed());
        if let Some(lag) = stamped.and_then(lag_since) {
            m.delivery_lag.observe(lag);
        }
    }

    /// An ephemeral event (typing, newUser, userLeft): to every member but its subject.
    fn broadcast_event(&self, frame: Bytes, skip_user: Option<&str>, metrics: &Metrics) {
        let st = self.lock();
        let mut queued = 0;
        for member in st.members.values() {
            if skip_user == Some(member.user_token.as_str()) {
                continue;
            }
            if member.outbox.offer(frame.clone()) == Offer::Queued {
                queued += 1;
            }
        }
        metrics.frames_out.fetch_add(queued, Relaxed);
    }

    /// Ask every member to reconnect and resume (used when the room cannot be kept
    /// consistent, e.g. the stream is unreachable during a gap repair).
    fn resync_all(&self) {
        for m in self.lock().members.values() {
            m.outbox.close(CloseReason::Resync);
        }
    }

    /// Read `from..=to` of this room back from the stream and deliver it.
    async fn repair(&self, node: &Node, from: u64, to: u64) -> Result<(), String> {
        let mut next = from;
        // Bounded: each round advances `next` or ends.
        for _ in 0..10_000 {
            if next > to {
                return Ok(());
            }
            let msgs = node
                .reader
                .range(&self.subject, next, Some(to), 512)
                .await
                .map_err(|e| e.to_string())?;
            let Some(last) = msgs.last().map(|m| m.seq) else {
                return Ok(());
            };
            node.metrics
                .gap_messages_repaired
                .fetch_add(msgs.len() as u64, Relaxed);
            for m in msgs {
                self.deliver(m.seq, &m.payload, node, m.time.as_deref());
            }
            next = last + 1;
        }
        Ok(())
    }

    /// Bring the room up to `to`, if it is behind. Retries a few times; if the stream stays
    /// unreachable the members are asked to resume instead of silently missing messages.
    async fn catch_up_to(&self, node: &Node, to: u64) -> bool {
        let from = self.last_seq() + 1;
        if from > to {
            return true;
        }
        Metrics::inc(&node.metrics.gap_repairs);
        for attempt in 0..3u32 {
            match self.repair(node, from, to).await {
                Ok(()) => {
                    debug!(from, to, "gap repaired from the stream");
                    return true;
                }
                Err(e) => {
                    warn!(attempt, from, to, error = %e, "gap repair failed");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
        false
    }

    async fn on_live(&self, node: &Node, msg: Message) {
        let headers = msg.headers.unwrap_or_default();
        if let Some(kind) = headers.get(subjects::HDR_EVENT) {
            let skip = headers
                .get(subjects::HDR_USER)
                .map(|v| v.as_str().to_owned());
            debug!(event = kind.as_str(), "room event");
            self.broadcast_event(msg.payload, skip.as_deref(), &node.metrics);
            return;
        }
        let Some(seq) = header_u64(&headers, subjects::HDR_SEQUENCE) else {
            warn!("live message without {} ignored", subjects::HDR_SEQUENCE);
            return;
        };
        let prev = header_u64(&headers, subjects::HDR_LAST_SEQUENCE).unwrap_or(0);
        let last = self.last_seq();
        if seq <= last {
            return; // already delivered (by a repair)
        }
        if prev > last && !Box::pin(self.catch_up_to(node, prev)).await {
            self.resync_all();
        }
        let stamp = headers
            .get(subjects::HDR_TIME_STAMP)
            .map(|v| v.as_str().to_owned());
        self.deliver(seq, &msg.payload, node, stamp.as_deref());
    }

    async fn check_tail(&self, node: &Node) {
        match node.reader.last_seq(&self.subject).await {
            Ok(tail) if tail > self.last_seq() => {
                info!(
                    tail,
                    last = self.last_seq(),
                    "room behind the stream; repairing"
                );
                if !self.catch_up_to(node, tail).await {
                    self.resync_all();
                }
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "tail check failed"),
        }
    }
}

async fn run(room: Arc<Room>, node: Arc<Node>, mut sub: async_nats::Subscriber) {
    let period = Duration::from_secs(node.config.tail_check_secs.max(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = sub.next() => match msg {
                Some(msg) => room.on_live(&node, msg).await,
                None => {
                    warn!("live subscription ended; members must resume");
                    room.resync_all();
                    return;
                }
            },
            _ = tick.tick() => Box::pin(room.check_tail(&node)).await,
        }
    }
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name).and_then(|v| v.as_str().parse().ok())
}

fn lag_since(stamp: &str) -> Option<Duration> {
    let t =
        time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).ok()?;
    let d = time::OffsetDateTime::now_utc() - t;
    d.try_into().ok()
}

/// A member's place in a room, held by its session.
pub struct Membership {
    pub room: Arc<Room>,
    pub member_id: u64,
    pub seam: u64,
}

/// Every room with local members.
#[derive(Default)]
pub struct Rooms {
    map: Mutex<HashMap<String, Arc<Room>>>,
}

impl Rooms {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Room>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Join `name` as a catching-up member; creates and starts the room on first use.
    pub async fn join(
        &self,
        node: &Arc<Node>,
        name: &str,
        member_id: u64,
        outbox: Outbox,
        user_token: String,
    ) -> Result<Membership, RoomError> {
        // A room closing concurrently is replaced; a few rounds always suffice.
        for _ in 0..5 {
            let room = {
                let mut map = self.lock();
                map.entry(natter_protocol::token::encode(name))
                    .or_insert_with(|| {
                        node.metrics.rooms.fetch_add(1, Relaxed);
                        Arc::new(Room::new(name))
                    })
                    .clone()
            };
            if let Err(e) = room.started.get_or_try_init(|| room.start(node)).await {
                self.discard_if_empty(&room, &node.metrics);
                return Err(e);
            }
            if let Some(seam) = room.add_member(member_id, outbox.clone(), user_token.clone()) {
                node.metrics.members.fetch_add(1, Relaxed);
                return Ok(Membership {
                    room,
                    member_id,
                    seam,
                });
            }
        }
        Err(RoomError::Subscribe("the room kept closing; retry".into()))
    }

    /// Remove a member; the room's subscription ends with its last member.
    pub fn leave(&self, membership: &Membership, metrics: &Metrics) {
        let room = &membership.room;
        if room.lock().members.remove(&membership.member_id).is_some() {
            metrics.members.fetch_sub(1, Relaxed);
        }
        self.discard_if_empty(room, metrics);
    }

    fn discard_if_empty(&self, room: &Arc<Room>, metrics: &Metrics) {
        {
            let mut st = room.lock();
            if !st.members.is_empty() || st.closed {
                return;
            }
            st.closed = true;
        }
        let mut map = self.lock();
        if map.get(&room.token).is_some_and(|r| Arc::ptr_eq(r, room)) {
            map.remove(&room.token);
            metrics.rooms.fetch_sub(1, Relaxed);
        }
        drop(map);
        if let Some(h) = room.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.abort();
        }
    }
}
