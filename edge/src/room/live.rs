//! A room's I/O shell: its live subscription, the task that feeds the room's [`Delivery`]
//! state machine from it, the reads that repair a gap, and the tail check
//! ([`super::tail`] decides when).
//!
//! Every decision (stale, deliver, repair first, which members get what) is the state
//! machine's; this file only moves bytes between NATS and it. It also keeps the members'
//! view of who is in the room honest when an edge crashes, and this edge's members' names
//! in presence (see `Room::check_presence`). One task per room, so live
//! messages of a room are handled one at a time, in the order NATS delivers them; with
//! `--coalesce-ms` that task also decides when the staged messages are written
//! ([`super::coalesce`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, Message};
use futures_util::{FutureExt, StreamExt};
use natter_bus::subjects;
use natter_protocol::frame;
use thiserror::Error;
use tokio::sync::OnceCell;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn, Instrument};

use super::coalesce::Coalescer;
use super::delivery::{Delivery, Live};
use super::tail::{Due, NamesRecheck, TailSchedule, Ticks};
use super::RoomDeps;
use crate::outbox::Outbox;
use crate::presence::RoomNames;
use crate::transport::frame as wire;

#[derive(Debug, Error, Clone)]
pub enum RoomError {
    #[error("could not subscribe to the room: {0}")]
    Subscribe(String),
    #[error("could not read the room's position in the stream: {0}")]
    Stream(String),
}

/// Most messages read back in one repair round trip.
const REPAIR_BATCH: usize = 512;
/// Repair attempts before the members are asked to resume instead.
const REPAIR_ATTEMPTS: u32 = 3;

/// A room with local members.
pub struct Room {
    pub name: String,
    pub token: String,
    /// The room's stored subject, cheap to clone for every publish.
    pub subject: async_nats::Subject,
    pub live_subject: String,
    delivery: Mutex<Delivery<Outbox>>,
    /// Names this edge's members know to be in the room, with how many presence checks in
    /// a row did not find each (see [`Room::check_presence`]).
    known_names: Mutex<HashMap<String, u8>>,
    pub(super) started: OnceCell<()>,
    task: Mutex<Option<AbortHandle>>,
    /// When each staged message was stored, while writes are coalesced: its delivery lag
    /// is observed when it is written, not when it is staged.
    staged_at: Mutex<Vec<time::OffsetDateTime>>,
}

impl Room {
    pub(super) fn new(name: &str, buffer_cap: usize) -> Room {
        let token = natter_protocol::token::encode(name);
        Room {
            name: name.to_owned(),
            subject: subjects::room(&token).into(),
            live_subject: subjects::live(&token),
            token,
            delivery: Mutex::new(Delivery::new(0, buffer_cap)),
            known_names: Mutex::new(HashMap::new()),
            started: OnceCell::new(),
            task: Mutex::new(None),
            staged_at: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn delivery(&self) -> MutexGuard<'_, Delivery<Outbox>> {
        self.delivery.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn names(&self) -> MutexGuard<'_, HashMap<String, u8>> {
        self.known_names.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribe first, then read where the room stands in the stream: anything stored after
    /// that point is on the subscription, anything before is history.
    pub(super) async fn start(self: &Arc<Self>, deps: &Arc<RoomDeps>) -> Result<(), RoomError> {
        let sub = deps
            .nats
            .subscribe(self.live_subject.clone())
            .await
            .map_err(|e| RoomError::Subscribe(e.to_string()))?;
        let last = deps
            .reader
            .last_seq(&self.subject)
            .await
            .map_err(|e| RoomError::Stream(e.to_string()))?;
        self.delivery().start_at(last);
        if let Ok(RoomNames { names, .. }) = deps.presence.members_checked(&self.token).await {
            self.names().extend(names.into_iter().map(|n| (n, 0)));
        }
        let span = tracing::info_span!("room", room = %self.name);
        let handle = tokio::spawn(run(self.clone(), deps.clone(), sub).instrument(span));
        let mut task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        // The room may have been discarded while this start was under way: its task must
        // not outlive it (discard closes the room before it takes the task handle).
        if self.delivery().is_closed() {
            handle.abort();
            return Err(RoomError::Subscribe(
                "the room closed while starting; retry".into(),
            ));
        }
        *task = Some(handle.abort_handle());
        Ok(())
    }

    /// Stop the room's task (the room has closed).
    pub(super) fn stop(&self) {
        if let Some(h) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.abort();
        }
    }

    /// End a member's catch-up: flush what arrived after its seam, then deliver live.
    pub fn go_live(&self, member_id: u64, deps: &RoomDeps) {
        let queued = self.delivery().go_live(member_id);
        deps.metrics.frames_out.inc_by(queued);
    }

    /// The newest sequence delivered to this room's members.
    pub fn last_seq(&self) -> u64 {
        self.delivery().last_seq()
    }

    /// Stage stored message `seq` for every member, encoded once; the members get it at
    /// the next [`Room::flush`].
    fn deliver(&self, deps: &RoomDeps, seq: u64, stored: &[u8], stamped: Option<&str>) {
        let m = &deps.metrics;
        let Some(json) = frame::with_message_id(stored, seq) else {
            warn!(seq, "stored message is not a JSON object; skipped");
            self.delivery().skip(seq);
            return;
        };
        // One WebSocket frame for every member: the sockets share this buffer.
        let frame = wire::text(&json);
        if !self.delivery().stage(seq, &frame) {
            return;
        }
        m.room_messages_fanned_out.inc();
        let Some(stored_at) = stamped.and_then(parse_stamp) else {
            return;
        };
        if deps.coalesce.is_zero() {
            // Flushed right after this batch.
            if let Some(lag) = lag_since(stored_at) {
                m.delivery_lag.observe(lag);
            }
        } else {
            self.staged_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(stored_at);
        }
    }

    /// Hand what was staged to the live members: one write per socket for the whole batch.
    fn flush(&self, deps: &RoomDeps) {
        let t0 = Instant::now();
        let queued = self.delivery().flush();
        if queued > 0 {
            deps.metrics.frames_out.inc_by(queued);
            deps.metrics.fanout_latency.observe(t0.elapsed());
        }
        if !deps.coalesce.is_zero() {
            let stamps =
                std::mem::take(&mut *self.staged_at.lock().unwrap_or_else(|p| p.into_inner()));
            for lag in stamps.into_iter().filter_map(lag_since) {
                deps.metrics.delivery_lag.observe(lag);
            }
        }
    }

    /// Read `from..=to` of this room back from the stream and deliver it.
    async fn repair(&self, deps: &RoomDeps, from: u64, to: u64) -> Result<(), String> {
        let mut next = from;
        // Bounded: each round advances `next` or ends.
        for _ in 0..10_000 {
            if next > to {
                return Ok(());
            }
            let msgs = deps
                .reader
                .range(&self.subject, next, Some(to), REPAIR_BATCH)
                .await
                .map_err(|e| e.to_string())?;
            if msgs.len() < REPAIR_BATCH {
                // `to` was seen stored on this subject: a shorter answer comes from a replica
                // that is behind, unless the stream trimmed it (then there is nothing to send).
                let reached = msgs.last().map(|m| m.seq).unwrap_or(0);
                deps.reader
                    .ensure_reached(to, reached)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let Some(last) = msgs.last().map(|m| m.seq) else {
                return Ok(());
            };
            deps.metrics.gap_messages_repaired.inc_by(msgs.len() as u64);
            for m in msgs {
                self.deliver(deps, m.seq, &m.payload, m.time.as_deref());
            }
            self.flush(deps);
            next = last + 1;
        }
        Ok(())
    }

    /// Deliver `from..=to` from the stream, retrying a few times; if the stream stays
    /// unreachable the members are asked to resume instead of silently missing messages.
    async fn repair_or_resync(&self, deps: &RoomDeps, from: u64, to: u64) {
        deps.metrics.gap_repairs.inc();
        for attempt in 0..REPAIR_ATTEMPTS {
            match self.repair(deps, from, to).await {
                Ok(()) => {
                    debug!(from, to, "gap repaired from the stream");
                    return;
                }
                Err(e) => {
                    warn!(attempt, from, to, error = %e, "gap repair failed");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
        self.delivery().resync_all();
    }

    async fn on_live(&self, deps: &RoomDeps, msg: Message) {
        let headers = msg.headers.unwrap_or_default();
        if let Some(kind) = headers.get(subjects::HDR_EVENT) {
            let skip = headers.get(subjects::HDR_USER).map(|v| v.as_str());
            debug!(event = kind.as_str(), "room event");
            self.note_event(kind.as_str(), &msg.payload);
            let queued = self
                .delivery()
                .broadcast_event(&wire::text(&msg.payload), skip);
            deps.metrics.frames_out.inc_by(queued);
            return;
        }
        let Some(seq) = header_u64(&headers, subjects::HDR_SEQUENCE) else {
            warn!("live message without {} ignored", subjects::HDR_SEQUENCE);
            return;
        };
        let prev = header_u64(&headers, subjects::HDR_LAST_SEQUENCE).unwrap_or(0);
        let decision = self.delivery().on_live(seq, prev);
        match decision {
            Live::Stale => return,
            Live::Deliver => {}
            Live::RepairFirst { from, to } => Box::pin(self.repair_or_resync(deps, from, to)).await,
        }
        let stamp = headers.get(subjects::HDR_TIME_STAMP).map(|v| v.as_str());
        self.deliver(deps, seq, &msg.payload, stamp);
    }

    /// Stage a batch of live messages (those that arrived together); the caller flushes
    /// them to the members, at once or at the end of the coalescing window.
    async fn on_batch(&self, deps: &RoomDeps, batch: &mut Vec<Message>) {
        for msg in batch.drain(..) {
            self.on_live(deps, msg).await;
        }
    }

    /// Keep the known names in step with `newUser` / `userLeft`.
    fn note_event(&self, kind: &str, payload: &[u8]) {
        let name = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v["params"]["userName"].as_str().map(str::to_owned));
        let Some(name) = name else { return };
        match kind {
            "newUser" => {
                self.names().insert(name, 0);
            }
            "userLeft" => {
                self.names().remove(&name);
            }
            _ => {}
        }
    }

    /// Every `--presence-check-secs`, at the two ticks after a disruption of the edge's
    /// NATS connection, and at the tick after a listing that first missed a name
    /// ([`NamesRecheck`]): a name the members know of that two checks in a
    /// row did not find in presence is announced as left, to this edge's members (every
    /// edge with members does the same for its own). A safety net: a name that left
    /// normally is announced by its edge, and a crashed edge's names by the edge that
    /// sweeps them, so such names never reach a second check; this one catches an
    /// announcement that was lost on the way. Names of this edge's members missing from a
    /// complete listing are put back first ([`crate::presence::Presence::repair_room`]).
    /// `None` when presence could not be listed, else whether a name was missed for the
    /// first time (the caller lists again at the next tick to confirm it).
    async fn check_presence(&self, deps: &RoomDeps) -> Option<bool> {
        deps.metrics.name_checks.inc();
        let held = match deps.presence.members_checked(&self.token).await {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "presence check failed");
                return None;
            }
        };
        if !held.complete {
            return Some(false); // a partial list proves no absence
        }
        deps.presence.repair_room(&self.token, &held).await;
        let present: HashSet<String> = held.names.into_iter().collect();
        let (gone, suspect): (Vec<String>, bool) = {
            let mut names = self.names();
            for n in &present {
                names.insert(n.clone(), 0);
            }
            let mut gone = Vec::new();
            let mut suspect = false;
            names.retain(|name, missed| {
                if present.contains(name) {
                    return true;
                }
                *missed += 1;
                if *missed >= 2 {
                    gone.push(name.clone());
                    return false;
                }
                suspect = true;
                true
            });
            (gone, suspect)
        };
        for name in gone {
            info!(user = %name, "name gone from presence (its edge is gone); telling the room");
            let note = frame::notification(
                "userLeft",
                serde_json::json!({"type": "system", "text": format!("{name} has left the room!"),
                       "roomName": self.name, "userName": name,
                       "uuid": uuid::Uuid::new_v4().to_string()}),
            );
            let queued = self.delivery().broadcast_event(&wire::text(&note), None);
            deps.metrics.frames_out.inc_by(queued);
        }
        Some(suspect)
    }

    /// Compare the room with the stream's tail and repair what it lacks; false when the
    /// stream could not be read.
    async fn check_tail(&self, deps: &RoomDeps) -> bool {
        deps.metrics.tail_checks.inc();
        match deps.reader.last_seq(&self.subject).await {
            Ok(tail) => {
                let behind = self.delivery().behind(tail);
                if let Some((from, to)) = behind {
                    info!(tail, last = from - 1, "room behind the stream; repairing");
                    self.repair_or_resync(deps, from, to).await;
                }
                true
            }
            Err(e) => {
                debug!(error = %e, "tail check failed");
                false
            }
        }
    }
}

/// Most live messages taken in one batch.
const BATCH: usize = 64;

async fn run(room: Arc<Room>, deps: Arc<RoomDeps>, mut sub: async_nats::Subscriber) {
    let start = tokio::time::Instant::now();
    let mut ticks = Ticks::new(start, deps.tail_check, deps.presence_check);
    let mut tail = TailSchedule::new(start, deps.disruptions.epoch(), deps.tail_check_quiet);
    let mut names_recheck = NamesRecheck::new(deps.disruptions.connection_epoch());
    let mut batch = Vec::new();
    let mut coalesce = Coalescer::new(deps.coalesce);
    let window_end = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(window_end);
    // Polled only when no message is waiting (the select is biased): the ticks are asked
    // for after every round instead, so a busy room still ticks.
    let next_tick = tokio::time::sleep_until(ticks.next());
    tokio::pin!(next_tick);
    loop {
        tokio::select! {
            biased;
            () = &mut window_end, if coalesce.due().is_some() => {
                room.flush(&deps);
                coalesce.written(tokio::time::Instant::now());
            }
            msg = sub.next() => match msg {
                Some(msg) => {
                    // Whatever else has arrived meanwhile goes out with it: under load a
                    // socket gets several frames per write, idle it gets each at once.
                    batch.push(msg);
                    let mut ended = false;
                    while batch.len() < BATCH {
                        match sub.next().now_or_never() {
                            Some(Some(m)) => batch.push(m),
                            Some(None) => {
                                ended = true;
                                break;
                            }
                            None => break,
                        }
                    }
                    room.on_batch(&deps, &mut batch).await;
                    // Events (typing, newUser, …) went out at once; only a batch that
                    // staged room messages counts as a write.
                    if room.delivery().has_staged() {
                        tail.stir();
                        if coalesce.staged(tokio::time::Instant::now(), deps.pressure.engaged()) {
                            room.flush(&deps);
                        } else if let Some(due) = coalesce.due() {
                            window_end.as_mut().reset(due);
                        }
                    }
                    if batch.capacity() > BATCH {
                        batch = Vec::new();
                    }
                    if ended {
                        room.flush(&deps);
                        warn!("live subscription ended; members must resume");
                        room.delivery().resync_all();
                        return;
                    }
                }
                None => {
                    room.flush(&deps);
                    warn!("live subscription ended; members must resume");
                    room.delivery().resync_all();
                    return;
                }
            },
            () = &mut next_tick => {}
        }
        let now = tokio::time::Instant::now();
        let due = ticks.due(now);
        if due == Due::default() {
            continue;
        }
        next_tick.as_mut().reset(ticks.next());
        // The names are listed once even when both ticks ask for it.
        let mut recheck = false;
        if due.tail {
            let epoch = deps.disruptions.epoch();
            if tail.tick(now, epoch) && Box::pin(room.check_tail(&deps)).await {
                tail.checked(now, epoch);
            }
            recheck = names_recheck.tick(deps.disruptions.connection_epoch());
        }
        if due.names || recheck {
            if let Some(suspect) = Box::pin(room.check_presence(&deps)).await {
                if recheck {
                    names_recheck.listed();
                }
                if suspect {
                    names_recheck.confirm();
                }
            }
        }
    }
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name).and_then(|v| v.as_str().parse().ok())
}

fn parse_stamp(stamp: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).ok()
}

fn lag_since(stored_at: time::OffsetDateTime) -> Option<Duration> {
    (time::OffsetDateTime::now_utc() - stored_at)
        .try_into()
        .ok()
}
