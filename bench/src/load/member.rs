//! One member of a room load: a client that joins, reads its socket, sends at its rate if
//! it is a sender, resumes by `lastMessageId` after any disconnect or drain request, resends
//! what was not acknowledged with the same uuid, and leaves once its room is settled and
//! quiet after the stop. Its record ([`MemberResult`]) is what [`super::account`] checks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{mono_ns, room_name, LoadSpec, MemberResult, NumMap, NumSet, Phase};
use crate::dialect::Incoming;
use crate::pacing::{phase, RetryBackoff};
use crate::wsclient::{Conn, Event};

/// Who a member is in the load.
pub(super) struct Member {
    pub(super) room: usize,
    pub(super) user: usize,
    pub(super) sender: bool,
    /// How many of this room's senders (in this process) still await acknowledgements
    /// after the stop: the room's other members stay until it is zero. Leaving on silence
    /// alone would leave before the messages a sender is still retrying (a stream with no
    /// leader for a few seconds refuses them) are stored and delivered, and count them lost.
    pub(super) unsettled: Arc<AtomicU64>,
}

/// Counts a sender out of its room's [`Member::unsettled`] once, however it ends.
struct Settle(Option<Arc<AtomicU64>>);

impl Settle {
    fn now(&mut self) {
        if let Some(c) = self.0.take() {
            c.fetch_sub(1, Relaxed);
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        self.now();
    }
}

/// With `NATTER_BENCH_DEBUG` set, why members reconnect (on stderr).
pub(super) fn trace(index: usize, what: std::fmt::Arguments<'_>) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("NATTER_BENCH_DEBUG").is_some()) {
        eprintln!("member {index}: {what}");
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn member(
    spec: LoadSpec,
    m: Member,
    index: usize,
    share: (usize, usize),
    next_msg: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    mut go: watch::Receiver<Phase>,
    (joined, mut permit): (Arc<AtomicU64>, Option<tokio::sync::OwnedSemaphorePermit>),
) -> (MemberResult, Option<Conn>) {
    let dialect = spec.dialect;
    let room = room_name(&spec.run_id, m.room);
    let user_id = format!("{}-r{}u{}", spec.run_id, m.room, m.user);
    let user_name = format!("user{}", m.user);
    let prefix = format!("{}-", spec.run_id);
    let pad = "x".repeat(spec.pad);
    let mut res = MemberResult {
        room: m.room,
        received: NumSet::default(),
        duplicates: 0,
        latency: Vec::new(),
        acked: Vec::new(),
        sent: 0,
        refused: 0,
        reconnects: 0,
        last_rx: None,
        rejoins: Vec::new(),
        receipts: Vec::new(),
    };
    let mut pending: NumMap<String> = NumMap::default(); // msg number -> frame text
    let mut edge = if spec.all_on_first {
        0
    } else {
        index % spec.urls.len().max(1)
    };
    let source = (!spec.sources.is_empty()).then(|| spec.sources[index % spec.sources.len()]);
    // The last message id seen (reused buffer; empty: none yet).
    let mut last_id = String::new();
    let mut counted_join = false;
    let period = Duration::from_secs_f64(1.0 / spec.rate.max(0.001));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Only senders retry; a member that does not send ticks only once the run is stopping
    // (to see its room go quiet): 10,000 idle members of a big room ticking 4 times a
    // second were a tenth of the generator's CPU.
    let mut retry = tokio::time::interval(Duration::from_millis(250));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Resends back off, as real clients do (our JS client doubles its delay on `-32010`,
    // up to 5 s): the first after 2 s without any delivery, then 2, 4, 8 s apart, reset by
    // an ack. Resending everything every 250 ms made ~10k refusals/s while the stream had
    // no leader, a load no real client puts on an edge.
    let mut backoff = RetryBackoff::default();
    let mut stopping_since: Option<Instant> = None;
    let mut started = false;
    let mut last_rx = Instant::now();
    let mut settle = Settle(m.sender.then(|| m.unsettled.clone()));
    // When this member first saw every sender of its room settled.
    let mut room_settled_at: Option<Instant> = None;
    // Bounded: every iteration either makes progress or ends on the stop deadline.
    'outer: for attempt in 0..10_000u32 {
        if attempt > 0 {
            res.reconnects += 1;
            edge = (edge + 1) % spec.urls.len().max(1);
            tokio::time::sleep(Duration::from_millis(50 + (index % 50) as u64)).await;
        }
        if stopping_since.is_none() && stop.load(Relaxed) {
            stopping_since = Some(Instant::now());
        }
        if stopping_since.is_some_and(|t| t.elapsed() > Duration::from_secs(30)) {
            break;
        }
        let Some(url) = spec.urls.get(edge) else {
            break;
        };
        let Ok(mut conn) = Conn::connect(&dialect.url(url), source).await else {
            continue;
        };
        if !dialect.open(&mut conn).await {
            continue;
        }
        let last = if !last_id.is_empty() {
            Some(last_id.as_str())
        } else if spec.quiet_join {
            Some("0")
        } else {
            None
        };
        if !conn
            .send(dialect.join(&room, &user_id, &user_name, last).as_bytes())
            .await
        {
            continue;
        }
        let mut ok = false;
        // Wait for the join's answer (and natter's welcome, after which the member is in
        // the room: counting it joined earlier would start the load while the edges still
        // admit members); history may follow.
        let mut answered = false;
        while let Ok(ev) = tokio::time::timeout(Duration::from_secs(30), conn.next()).await {
            if ev != Event::Text {
                break;
            }
            let (result, ping, welcome) = match dialect.classify(conn.text(), prefix.as_bytes()) {
                Incoming::JoinResult(r) => (Some(r), false, false),
                Incoming::Ping => (None, true, false),
                Incoming::Welcome => (None, false, true),
                _ => (None, false, false),
            };
            if result == Some(false) {
                trace(
                    index,
                    format_args!("join refused: {}", String::from_utf8_lossy(conn.text())),
                );
                break;
            }
            answered |= result == Some(true);
            if answered && (welcome || !dialect.welcomes()) {
                ok = true;
                break;
            }
            if ping && !conn.send(dialect.pong()).await {
                break;
            }
        }
        if !ok {
            trace(index, format_args!("join failed"));
            continue;
        }
        if counted_join {
            res.rejoins.push(mono_ns());
        } else {
            counted_join = true;
            joined.fetch_add(1, Relaxed);
            drop(permit.take());
        }
        // Resend what was never acknowledged (same uuid: the stream deduplicates).
        for text in pending.values() {
            if !conn.send(text.as_bytes()).await {
                continue 'outer;
            }
        }
        loop {
            let sending = m.sender && stopping_since.is_none();
            tokio::select! {
                ev = conn.next() => {
                    if ev != Event::Text {
                        trace(index, format_args!("{ev:?}"));
                        continue 'outer;
                    }
                    // What the frame means, copied out of it so the socket is free again.
                    let (n, sent_ns, pong, move_on, acked) =
                        match dialect.classify(conn.text(), prefix.as_bytes()) {
                            Incoming::Delivery { msg_id, n, sent_ns } => {
                                // Quiet means no room messages (presence comes and goes).
                                last_rx = Instant::now();
                                if let Some(id) = msg_id.and_then(|i| std::str::from_utf8(i).ok()) {
                                    last_id.clear();
                                    last_id.push_str(id);
                                }
                                (n, sent_ns, false, false, None)
                            }
                            Incoming::Ack(n) => (None, None, false, false, Some(n)),
                            Incoming::Refused => {
                                // Resent by the retry timer through `pending`.
                                res.refused += 1;
                                (None, None, false, false, None)
                            }
                            Incoming::Reconnect => (None, None, false, true, None),
                            Incoming::Ping => (None, None, true, false, None),
                            Incoming::JoinResult(_) | Incoming::Welcome | Incoming::Other => {
                                (None, None, false, false, None)
                            }
                        };
                    if move_on {
                        trace(index, format_args!("asked to move: {}", String::from_utf8_lossy(conn.text())));
                        continue 'outer; // drain or slow: move and resume
                    }
                    if pong && !conn.send(dialect.pong()).await {
                        continue 'outer;
                    }
                    if let Some(a) = acked {
                        if pending.remove(&a).is_some() {
                            res.acked.push(a);
                            backoff = RetryBackoff::default();
                        }
                    }
                    let Some(n) = n else { continue };
                    if !res.received.insert(n) {
                        res.duplicates += 1;
                        continue;
                    }
                    let now = mono_ns();
                    res.last_rx = Some(now);
                    if let Some(sent) = sent_ns {
                        let us = now.saturating_sub(sent) / 1000;
                        res.latency.push(u32::try_from(us).unwrap_or(u32::MAX));
                        if spec.per_message {
                            res.receipts.push((n, now, sent));
                        }
                    }
                    if dialect.echo_acks() && pending.remove(&n).is_some() {
                        res.acked.push(n);
                        backoff = RetryBackoff::default();
                    }
                }
                _ = tick.tick(), if sending && started => {
                    // Numbers are unique over all worker processes: interleaved by share.
                    let n = next_msg.fetch_add(1, Relaxed) * share.1 as u64 + share.0 as u64;
                    let text = format!("{} {pad}", mono_ns());
                    let frame = dialect.message(n, &room, &user_id, &user_name, &text, &format!("{prefix}{n}"));
                    res.sent += 1;
                    let ok = conn.send(frame.as_bytes()).await;
                    pending.insert(n, frame);
                    if !ok {
                        continue 'outer;
                    }
                }
                _ = retry.tick(), if m.sender || stopping_since.is_some() => {
                    // Retry refused or unacknowledged messages periodically.
                    if m.sender
                        && !pending.is_empty()
                        && last_rx.elapsed() > Duration::from_secs(2)
                        && backoff.due(Instant::now())
                    {
                        for text in pending.values() {
                            if !conn.send(text.as_bytes()).await {
                                continue 'outer;
                            }
                        }
                    }
                }
                // Before the start signal the member reads (history, presence) but sends
                // nothing; a member that does not send also waits here for the stop.
                r = go.changed(), if !started || (!m.sender && stopping_since.is_none()) => {
                    if r.is_err() {
                        break 'outer;
                    }
                    let was_started = started;
                    started = *go.borrow_and_update() != Phase::Joining;
                    if started && !was_started && !spec.synchronized {
                        tick.reset_at(tokio::time::Instant::now() + period.mul_f64(phase(index)));
                    }
                }
            }
            if stopping_since.is_none() && stop.load(Relaxed) {
                stopping_since = Some(Instant::now());
            }
            if let Some(t) = stopping_since {
                // Done when our own messages are all acknowledged, so are those of the
                // room's senders, and the room went quiet since.
                if pending.is_empty() {
                    settle.now();
                }
                if room_settled_at.is_none() && m.unsettled.load(Relaxed) == 0 {
                    room_settled_at = Some(Instant::now());
                }
                let quiet = Duration::from_millis(1500);
                let settled = room_settled_at.is_some_and(|s| s.elapsed() > quiet);
                if (pending.is_empty() && settled && last_rx.elapsed() > quiet)
                    || t.elapsed() > Duration::from_secs(30)
                {
                    // Kept open until the caller has its figures.
                    return (res, Some(conn));
                }
            }
        }
    }
    (res, None)
}
