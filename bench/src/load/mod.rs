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
//! - this file: the load's spec, running it (in one process or one share of several), the
//!   members' records (sent between processes as JSON), and the accounting;
//! - `member.rs`: one member's client loop (join, read, send, resume, resend, leave).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::dialect::Dialect;
use crate::wsclient::Conn;

mod member;

use member::{member, trace, Member};

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

/// One member's record; worker processes send it to the parent as JSON.
#[derive(Serialize, Deserialize)]
pub struct MemberResult {
    room: usize,
    received: NumSet,
    duplicates: u64,
    /// Send → receipt of each new delivery, µs. A plain list, merged into one histogram by
    /// [`account`]: a histogram per member is a ~150 KiB table at this range and precision,
    /// so with thousands of members every record was a cache miss in a table of its own.
    latency: Vec<u32>,
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

/// A set of message numbers. They are unique integers, so a multiplication spreads them
/// over the table as well as std's SipHash does, for a fraction of its cost: SipHash on
/// every delivery was about 6% of the generator's CPU in fanout (`perf`, 2026-12-03).
pub type NumSet = HashSet<u64, BuildHasherDefault<NumHasher>>;
/// A map keyed by message number, hashed as [`NumSet`] is.
pub type NumMap<V> = HashMap<u64, V, BuildHasherDefault<NumHasher>>;

/// The hasher of [`NumSet`]: a multiplication by an odd constant (a bijection, so distinct
/// numbers stay distinct, with their high bits mixed).
#[derive(Default, Clone, Copy)]
pub struct NumHasher(u64);

impl Hasher for NumHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
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

/// Where a run is, as the members learn it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Joining: members read but do not send.
    Joining,
    /// The start signal was given: senders send.
    Sending,
    /// The send window is over: members leave once their room is settled and quiet.
    Stopping,
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
    // Polled on every pass of a member's loop (cheap); the phase watch below wakes the
    // members that wait for it.
    let stop = Arc::new(AtomicBool::new(false));
    let (go_tx, go_rx) = watch::channel(Phase::Joining);
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
    let _ = go_tx.send(Phase::Sending);
    let timer = tokio::time::sleep(spec.duration);
    tokio::join!(timer, during);
    stop.store(true, Relaxed);
    let _ = go_tx.send(Phase::Stopping);
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
    let mut acked_by_room: HashMap<usize, NumSet> = HashMap::new();
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
            for &us in &r.latency {
                let _ = h.record(u64::from(us).max(1));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn member(room: usize, received: &[u64], duplicates: u64, acked: &[u64]) -> MemberResult {
        MemberResult {
            room,
            received: received.iter().copied().collect(),
            duplicates,
            latency: Vec::new(),
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
        // Through JSON (as a worker reports them) and back: nothing is lost on the way.
        let members: Vec<MemberResult> = members
            .iter()
            .map(|m| {
                let w = serde_json::to_string(m).unwrap();
                serde_json::from_str::<MemberResult>(&w).unwrap()
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
