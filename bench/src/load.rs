//! The room-load engine shared by `fanout`, `big-room`, `peer` and `chaos`: R rooms × U
//! members, S senders per room at a rate, members spread over the servers. Every member
//! resumes by `lastMessageId` after any disconnect or drain request, and senders resend what
//! was not acknowledged with the same uuid — exactly what the protocol asks of clients. At
//! the end every acknowledged message is checked against every member: lost and duplicated
//! deliveries are counted, never assumed.
//!
//! Each member is one task that reads its own socket ([`Conn::next`] is cancel-safe) and
//! finds the few fields it measures with [`crate::scan`] through its [`Dialect`]: no reader
//! task, no channel hop and no JSON tree per delivery. Clocks are CLOCK_MONOTONIC
//! nanoseconds, the same in every process of the machine, so a run can be split over worker
//! processes ([`run_share`]) and merged ([`account`]).
//!
//! Why ~550 lines: one engine (clients, senders, resume, accounting, the worker wire form)
//! whose parts share its state; ~60 lines are its unit tests.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::dialect::{Dialect, Incoming};
use crate::pacing::{phase, RetryBackoff};
use crate::wsclient::{Conn, Event};

/// What to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadSpec {
    pub rooms: usize,
    pub users_per_room: usize,
    pub senders_per_room: usize,
    /// Messages per second per sender.
    pub rate: f64,
    pub duration: Duration,
    /// Server WebSocket URLs; members are spread over them round-robin.
    pub urls: Vec<String>,
    /// Local source addresses to spread connections over (empty: the default).
    pub sources: Vec<IpAddr>,
    /// Prefix of room names (distinct per run so history from earlier runs never counts).
    pub run_id: String,
    /// Bytes of padding in each message text.
    pub pad: usize,
    /// Start every member on the first URL (they move to the others when it fails).
    pub all_on_first: bool,
    /// The protocol the servers speak.
    pub dialect: Dialect,
    /// Keep every member's (message, receipt time) to time each message's whole fan-out.
    pub per_message: bool,
    /// Join by resuming after message 0 (natter's `reconnect`): the same membership and
    /// catch-up without a `newUser` notification to every member (in a room of thousands,
    /// joins would otherwise send each member a notification per later joiner).
    #[serde(default)]
    pub quiet_join: bool,
    /// Every sender sends at the same instants (all first messages at the start signal,
    /// then each period): the whole offered load arrives in bursts. Off by default: each
    /// sender's ticks are offset by its own fraction of the period, so the load is
    /// spread evenly, as independent users' messages are.
    #[serde(default)]
    pub synchronized: bool,
}

/// What every member saw.
#[derive(Default)]
pub struct LoadResult {
    pub connections: usize,
    pub sent: u64,
    pub acked: u64,
    pub refused: u64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reconnects: u64,
    pub elapsed: Duration,
    pub latency_us: Option<Histogram<u64>>,
    /// uuids of acknowledged messages (for cross-checks such as the archive).
    pub acked_uuids: HashSet<String>,
    /// When each successful rejoin (after a disconnect) completed ([`mono_ns`]).
    pub rejoins: Vec<u64>,
    /// Per acknowledged message with `per_message`: (members reached, send → last
    /// member's receipt in µs).
    pub reach_us: Vec<(u64, u64)>,
    /// Members per room (the reach a message needs).
    pub room_size: usize,
}

struct Member {
    room: usize,
    user: usize,
    sender: bool,
    /// How many of this room's senders (in this process) still await acknowledgements
    /// after the stop: the room's other members stay until it is zero. Leaving on silence
    /// alone would leave before the messages a sender is still retrying (a stream with no
    /// leader for a few seconds refuses them) are stored and delivered, and count them lost.
    unsettled: Arc<AtomicU64>,
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

/// One member's record; [`MemberWire`] is its form between processes.
pub struct MemberResult {
    room: usize,
    received: HashSet<u64>,
    duplicates: u64,
    latency: Histogram<u64>,
    acked: Vec<u64>,
    sent: u64,
    refused: u64,
    reconnects: u64,
    /// When the last new message arrived ([`mono_ns`]).
    last_rx: Option<u64>,
    rejoins: Vec<u64>,
    /// (message, received at, sent at) with `per_message`.
    receipts: Vec<(u64, u64, u64)>,
}

/// A [`MemberResult`] as a worker process reports it (histogram as value/count pairs).
#[derive(Serialize, Deserialize)]
pub struct MemberWire {
    room: usize,
    received: Vec<u64>,
    duplicates: u64,
    latency: Vec<(u64, u64)>,
    acked: Vec<u64>,
    sent: u64,
    refused: u64,
    reconnects: u64,
    last_rx: Option<u64>,
    rejoins: Vec<u64>,
    receipts: Vec<(u64, u64, u64)>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("histogram"))
}

impl From<&MemberResult> for MemberWire {
    fn from(r: &MemberResult) -> Self {
        MemberWire {
            room: r.room,
            received: r.received.iter().copied().collect(),
            duplicates: r.duplicates,
            latency: r
                .latency
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
            acked: r.acked.clone(),
            sent: r.sent,
            refused: r.refused,
            reconnects: r.reconnects,
            last_rx: r.last_rx,
            rejoins: r.rejoins.clone(),
            receipts: r.receipts.clone(),
        }
    }
}

impl From<MemberWire> for MemberResult {
    fn from(w: MemberWire) -> Self {
        let mut latency = histogram();
        for (v, c) in w.latency {
            let _ = latency.record_n(v.max(1), c);
        }
        MemberResult {
            room: w.room,
            received: w.received.into_iter().collect(),
            duplicates: w.duplicates,
            latency,
            acked: w.acked,
            sent: w.sent,
            refused: w.refused,
            reconnects: w.reconnects,
            last_rx: w.last_rx,
            rejoins: w.rejoins,
            receipts: w.receipts,
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the machine, so a
/// message text can carry its send time to a member in another worker process.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// With `NATTER_BENCH_DEBUG` set, why members reconnect (on stderr).
fn trace(index: usize, what: std::fmt::Arguments<'_>) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("NATTER_BENCH_DEBUG").is_some()) {
        eprintln!("member {index}: {what}");
    }
}

pub fn room_name(run: &str, r: usize) -> String {
    format!("{run}-room-{r}")
}

/// Run the load; `during` is awaited concurrently (chaos actions) and the load keeps
/// going until both it and the duration are over.
/// The connections stay open in the returned [`Held`] until it is dropped: take server CPU
/// figures first (every member leaving sends `userLeft` to the rest of its room, which in
/// a big room is N² frames that are not the load).
pub async fn run<F: std::future::Future<Output = ()>>(
    spec: &LoadSpec,
    during: F,
) -> (LoadResult, Held) {
    let t0 = std::cell::Cell::new(0u64);
    let (results, held) = run_share(
        spec,
        (0, 1),
        |_| {},
        async {
            t0.set(mono_ns());
        },
        during,
    )
    .await;
    (account(spec, results, t0.get()), held)
}

/// Members' connections after the load (closed when dropped).
pub struct Held(Vec<Conn>);

impl Held {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A run whose server CPU is measured from the start signal (every member joined) to the
/// end of the load, joins and leaves excluded: the members' results, the connections still
/// held (drop them to leave), the CPU seconds each of `procs` and the generator used
/// meanwhile, and the start time ([`mono_ns`]).
pub async fn run_measuring_cpu(
    spec: &LoadSpec,
    procs: &[(String, u32)],
) -> (Vec<MemberResult>, Held, Vec<(String, f64)>, u64) {
    let before = std::cell::RefCell::new(Vec::new());
    let t0 = std::cell::Cell::new(0u64);
    let (results, held) = run_share(
        spec,
        (0, 1),
        |_| {},
        async {
            *before.borrow_mut() = crate::report::cpu_snapshot(procs);
            t0.set(mono_ns());
        },
        async {},
    )
    .await;
    let cpu = crate::report::cpu_since(procs, &before.into_inner());
    (results, held, cpu, t0.get())
}

/// Run the members `i` with `i % share.1 == share.0`: once they all joined (bounded wait),
/// call `ready` with how many did, await `go`, then send for the duration while `during`
/// runs.
pub async fn run_share<R, G, F>(
    spec: &LoadSpec,
    share: (usize, usize),
    ready: R,
    go: G,
    during: F,
) -> (Vec<MemberResult>, Held)
where
    R: FnOnce(usize),
    G: std::future::Future<Output = ()>,
    F: std::future::Future<Output = ()>,
{
    let next_msg = Arc::new(AtomicU64::new(1));
    // Polled, not awaited: a shared watch in every member's select! would put a lock on
    // each delivery's path.
    let stop = Arc::new(AtomicBool::new(false));
    let (go_tx, go_rx) = watch::channel(false);
    let joined = Arc::new(AtomicU64::new(0));
    // First joins arrive like a crowd, not all in the same millisecond (128 in flight per
    // process, as `idle` joins): a burst of thousands only measures the presence store's
    // timeouts.
    let gate = Arc::new(tokio::sync::Semaphore::new(128));
    let mut tasks = Vec::new();
    let (mine, of) = (share.0, share.1.max(1));
    for r in 0..spec.rooms {
        let unsettled = Arc::new(AtomicU64::new(0));
        for u in 0..spec.users_per_room {
            let i = r * spec.users_per_room + u;
            if i % of != mine {
                continue;
            }
            let sender = u < spec.senders_per_room;
            if sender {
                unsettled.fetch_add(1, Relaxed);
            }
            let m = Member {
                room: r,
                user: u,
                sender,
                unsettled: unsettled.clone(),
            };
            let spec = spec.clone();
            let (next_msg, stop, go, joined, gate) = (
                next_msg.clone(),
                stop.clone(),
                go_rx.clone(),
                joined.clone(),
                gate.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let permit = gate.acquire_owned().await.ok();
                member(spec, m, i, (mine, of), next_msg, stop, go, (joined, permit)).await
            }));
            if tasks.len() % 200 == 199 {
                tokio::task::yield_now().await;
            }
        }
    }
    let total = tasks.len();
    // Wait until everyone joined (bounded), then start sending.
    let deadline = Instant::now() + Duration::from_secs(120);
    while (joined.load(Relaxed) as usize) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ready(joined.load(Relaxed) as usize);
    go.await;
    let _ = go_tx.send(true);
    let timer = tokio::time::sleep(spec.duration);
    tokio::join!(timer, during);
    stop.store(true, Relaxed);
    let mut results = Vec::new();
    let mut held = Vec::new();
    for t in tasks {
        if let Ok((r, c)) = t.await {
            results.push(r);
            held.extend(c);
        }
    }
    (results, Held(held))
}

/// Merge member records into the run's figures; `t0` is when sending started
/// ([`mono_ns`]). Throughput is measured from it to the last new delivery (not the quiet
/// period the end of a run waits for).
pub fn account(spec: &LoadSpec, results: Vec<MemberResult>, t0: u64) -> LoadResult {
    let end = results.iter().filter_map(|r| r.last_rx).max();
    let elapsed = Duration::from_nanos(end.unwrap_or_else(mono_ns).saturating_sub(t0));
    let mut out = LoadResult {
        connections: results.len(),
        elapsed,
        room_size: spec.users_per_room,
        ..Default::default()
    };
    let mut acked_by_room: HashMap<usize, HashSet<u64>> = HashMap::new();
    let mut members_by_room: HashMap<usize, u64> = HashMap::new();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).ok();
    for r in &results {
        *members_by_room.entry(r.room).or_default() += 1;
        acked_by_room
            .entry(r.room)
            .or_default()
            .extend(r.acked.iter().copied());
        out.sent += r.sent;
        out.refused += r.refused;
        out.reconnects += r.reconnects;
        out.rejoins.extend(r.rejoins.iter().copied());
        if let Some(h) = hist.as_mut() {
            let _ = h.add(&r.latency);
        }
    }
    for (room, acked) in &acked_by_room {
        out.acked += acked.len() as u64;
        out.expected_deliveries +=
            acked.len() as u64 * members_by_room.get(room).copied().unwrap_or(0);
        for n in acked {
            out.acked_uuids.insert(format!("{}-{n}", spec.run_id));
        }
    }
    // Per message: how many members had it, and when the last of them did.
    let mut reach: HashMap<u64, (u64, u64, u64)> = HashMap::new();
    for (i, r) in results.iter().enumerate() {
        let acked = acked_by_room.get(&r.room);
        let got = r
            .received
            .iter()
            .filter(|n| acked.is_some_and(|a| a.contains(n)))
            .count() as u64;
        out.delivered += got;
        out.duplicated += r.duplicates;
        if let Some(acked) = acked.filter(|a| got < a.len() as u64) {
            let mut missing: Vec<u64> = acked.difference(&r.received).copied().collect();
            missing.sort_unstable();
            trace(
                i,
                format_args!(
                    "room {} missed {} of {} acked messages (first {:?}, last {:?}); reconnects {}",
                    r.room,
                    missing.len(),
                    acked.len(),
                    missing.first(),
                    missing.last(),
                    r.reconnects
                ),
            );
        }
        for &(n, at, sent) in &r.receipts {
            let e = reach.entry(n).or_insert((0, 0, sent));
            e.0 += 1;
            e.1 = e.1.max(at);
        }
    }
    out.reach_us = reach
        .into_values()
        .map(|(count, last, sent)| (count, last.saturating_sub(sent) / 1000))
        .collect();
    out.lost = out.expected_deliveries.saturating_sub(out.delivered);
    out.latency_us = hist;
    out
}

#[allow(clippy::too_many_arguments)]
async fn member(
    spec: LoadSpec,
    m: Member,
    index: usize,
    share: (usize, usize),
    next_msg: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    mut go: watch::Receiver<bool>,
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
        received: HashSet::new(),
        duplicates: 0,
        latency: histogram(),
        acked: Vec::new(),
        sent: 0,
        refused: 0,
        reconnects: 0,
        last_rx: None,
        rejoins: Vec::new(),
        receipts: Vec::new(),
    };
    let mut pending: HashMap<u64, String> = HashMap::new(); // msg number -> frame text
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
    // Also how often a member looks at the stop flag when nothing arrives.
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
                        let _ = res.latency.record(us.max(1));
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
                _ = retry.tick() => {
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
                // nothing.
                r = go.changed(), if !started => {
                    if r.is_err() {
                        break 'outer;
                    }
                    started = *go.borrow_and_update();
                    if started && !spec.synchronized {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn member(room: usize, received: &[u64], duplicates: u64, acked: &[u64]) -> MemberResult {
        MemberResult {
            room,
            received: received.iter().copied().collect(),
            duplicates,
            latency: Histogram::new(3).unwrap(),
            acked: acked.to_vec(),
            sent: acked.len() as u64,
            refused: 0,
            reconnects: 0,
            last_rx: None,
            rejoins: Vec::new(),
            receipts: received.iter().map(|n| (*n, 1000 + n * 1000, 0)).collect(),
        }
    }

    #[test]
    fn accounting_catches_a_missing_and_a_duplicated_delivery() {
        let spec = LoadSpec {
            rooms: 2,
            users_per_room: 2,
            senders_per_room: 1,
            rate: 1.0,
            duration: Duration::from_secs(1),
            urls: vec![],
            sources: vec![],
            run_id: "t".into(),
            pad: 0,
            all_on_first: false,
            dialect: Dialect::Natter,
            per_message: true,
            quiet_join: false,
            synchronized: false,
        };
        // Room 0: messages 1, 2 acked; the second member misses 2. Room 1: message 3 acked,
        // delivered twice to one member. A message nobody acked (4) does not count.
        let members = [
            member(0, &[1, 2], 0, &[1, 2]),
            member(0, &[1, 4], 0, &[]),
            member(1, &[3], 0, &[3]),
            member(1, &[3], 1, &[]),
        ];
        // Through the worker wire form and back: nothing is lost on the way.
        let members: Vec<MemberResult> = members
            .iter()
            .map(|m| {
                let w = serde_json::to_string(&MemberWire::from(m)).unwrap();
                serde_json::from_str::<MemberWire>(&w).unwrap().into()
            })
            .collect();
        let r = account(&spec, members, 0);
        assert_eq!(r.acked, 3);
        assert_eq!(r.expected_deliveries, 6);
        assert_eq!(r.delivered, 5);
        assert_eq!(r.lost, 1);
        assert_eq!(r.duplicated, 1);
        assert!(r.acked_uuids.contains("t-3"));
        let mut reach = r.reach_us.clone();
        reach.sort();
        // Message 1 reached both members of room 0, the last after 2 µs; 3 reached 2.
        assert!(reach.contains(&(2, 2)) && reach.contains(&(2, 4)));
    }
}
