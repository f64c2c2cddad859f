//! The room-load engine shared by `fanout`, `big-room` and `chaos`: R rooms × U members,
//! S senders per room at a rate, members spread over the edges. Every member resumes by
//! `lastMessageId` after any disconnect or drain request, and senders resend what was not
//! acknowledged with the same uuid — exactly what the protocol asks of clients. At the end
//! every acknowledged message is checked against every member: lost and duplicated
//! deliveries are counted, never assumed.
//!
//! Why ~470 lines: one engine (clients, senders, resume, accounting) whose parts share
//! its state; ~50 lines are its unit tests.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use crate::wsclient::{Conn, Incoming};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub rooms: usize,
    pub users_per_room: usize,
    pub senders_per_room: usize,
    /// Messages per second per sender.
    pub rate: f64,
    pub duration: Duration,
    /// Edge WebSocket URLs; members are spread over them round-robin.
    pub urls: Vec<String>,
    /// Local source addresses to spread connections over (empty: the default).
    pub sources: Vec<IpAddr>,
    /// Prefix of room names (distinct per run so history from earlier runs never counts).
    pub run_id: String,
    /// Bytes of padding in each message text.
    pub pad: usize,
    /// Start every member on the first URL (they move to the others when it fails).
    pub all_on_first: bool,
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
    /// When each successful rejoin (after a disconnect) completed.
    pub rejoins: Vec<Instant>,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow, default)]
    method: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    params: Option<Params<'a>>,
    #[serde(rename = "_id", borrow, default)]
    msg_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    error: Option<RpcError>,
    #[serde(default)]
    result: Option<serde_json::Value>,
    #[serde(default)]
    id: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow, default)]
    uuid: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RpcError {
    code: i64,
}

struct Member {
    room: usize,
    user: usize,
    sender: bool,
}

struct MemberResult {
    room: usize,
    received: HashSet<u64>,
    duplicates: u64,
    latency: Histogram<u64>,
    acked: Vec<u64>,
    sent: u64,
    refused: u64,
    reconnects: u64,
    /// When the last new message arrived.
    last_rx: Option<Instant>,
    rejoins: Vec<Instant>,
}

/// Shared clock: message texts carry nanoseconds since `origin`.
struct Clock {
    origin: Instant,
}

impl Clock {
    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

pub fn room_name(run: &str, r: usize) -> String {
    format!("{run}-room-{r}")
}

/// Run the load; `during` is awaited concurrently (chaos actions) and the load keeps
/// going until both it and the duration are over.
pub async fn run<F: std::future::Future<Output = ()>>(spec: &LoadSpec, during: F) -> LoadResult {
    let clock = Arc::new(Clock {
        origin: Instant::now(),
    });
    let next_msg = Arc::new(AtomicU64::new(1));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (go_tx, go_rx) = watch::channel(false);
    let joined = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let total = spec.rooms * spec.users_per_room;
    for r in 0..spec.rooms {
        for u in 0..spec.users_per_room {
            let m = Member {
                room: r,
                user: u,
                sender: u < spec.senders_per_room,
            };
            let i = r * spec.users_per_room + u;
            let spec = spec.clone();
            let (clock, next_msg, stop, go, joined) = (
                clock.clone(),
                next_msg.clone(),
                stop_rx.clone(),
                go_rx.clone(),
                joined.clone(),
            );
            tasks.push(tokio::spawn(async move {
                member(spec, m, i, clock, next_msg, stop, go, joined).await
            }));
            if i % 200 == 199 {
                tokio::task::yield_now().await;
            }
        }
    }
    // Wait until everyone joined (bounded), then start sending.
    let deadline = Instant::now() + Duration::from_secs(120);
    while (joined.load(Relaxed) as usize) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t0 = Instant::now();
    let _ = go_tx.send(true);
    let timer = tokio::time::sleep(spec.duration);
    tokio::join!(timer, during);
    let _ = stop_tx.send(true);
    let mut results = Vec::new();
    for t in tasks {
        if let Ok(r) = t.await {
            results.push(r);
        }
    }
    // Throughput is measured from the start signal to the last new delivery (not the quiet
    // period the end of a run waits for).
    let elapsed = results
        .iter()
        .filter_map(|r| r.last_rx)
        .max()
        .map(|t| t.saturating_duration_since(t0))
        .unwrap_or_else(|| t0.elapsed());
    account(spec, results, elapsed)
}

fn account(spec: &LoadSpec, results: Vec<MemberResult>, elapsed: Duration) -> LoadResult {
    let mut out = LoadResult {
        connections: results.len(),
        elapsed,
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
    for r in &results {
        let acked = acked_by_room.get(&r.room);
        let got = r
            .received
            .iter()
            .filter(|n| acked.is_some_and(|a| a.contains(n)))
            .count() as u64;
        out.delivered += got;
        out.duplicated += r.duplicates;
    }
    out.lost = out.expected_deliveries.saturating_sub(out.delivered);
    out.latency_us = hist;
    out
}

#[allow(clippy::too_many_arguments)]
async fn member(
    spec: LoadSpec,
    m: Member,
    index: usize,
    clock: Arc<Clock>,
    next_msg: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
    mut go: watch::Receiver<bool>,
    joined: Arc<AtomicU64>,
) -> MemberResult {
    let room = room_name(&spec.run_id, m.room);
    let user_id = format!("{}-r{}u{}", spec.run_id, m.room, m.user);
    let user_name = format!("user{}", m.user);
    let prefix = format!("{}-", spec.run_id);
    let mut res = MemberResult {
        room: m.room,
        received: HashSet::new(),
        duplicates: 0,
        latency: Histogram::new_with_bounds(1, 120_000_000, 3)
            .unwrap_or_else(|_| Histogram::new(3).expect("histogram")),
        acked: Vec::new(),
        sent: 0,
        refused: 0,
        reconnects: 0,
        last_rx: None,
        rejoins: Vec::new(),
    };
    let mut pending: HashMap<u64, String> = HashMap::new(); // msg number -> frame text
    let mut edge = if spec.all_on_first {
        0
    } else {
        index % spec.urls.len().max(1)
    };
    let source = (!spec.sources.is_empty()).then(|| spec.sources[index % spec.sources.len()]);
    let mut last_id: Option<String> = None;
    let mut counted_join = false;
    let period = Duration::from_secs_f64(1.0 / spec.rate.max(0.001));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping_since: Option<Instant> = None;
    let mut last_rx = Instant::now();
    // Bounded: every iteration either makes progress or ends on the stop deadline.
    'outer: for attempt in 0..10_000u32 {
        if attempt > 0 {
            res.reconnects += 1;
            edge = (edge + 1) % spec.urls.len().max(1);
            tokio::time::sleep(Duration::from_millis(50 + (index % 50) as u64)).await;
        }
        if stopping_since.is_some_and(|t| t.elapsed() > Duration::from_secs(30)) {
            break;
        }
        let Ok(mut conn) = Conn::connect(&spec.urls[edge], source).await else {
            continue;
        };
        let mut params = json!({"userId": user_id, "userName": user_name, "roomName": room});
        let method = if let Some(l) = &last_id {
            params["lastMessageId"] = json!(l);
            "reconnect"
        } else {
            "joinRoom"
        };
        if !conn
            .send(
                json!({"jsonrpc":"2.0","method":method,"params":params,"id":"join"})
                    .to_string()
                    .as_bytes(),
            )
            .await
        {
            continue;
        }
        let mut ok = false;
        // Wait for the join's answer; history may follow.
        while let Ok(Some(inc)) =
            tokio::time::timeout(Duration::from_secs(30), conn.incoming.recv()).await
        {
            match inc {
                Incoming::Text(b) => {
                    let Ok(f) = serde_json::from_slice::<Frame>(&b) else {
                        continue;
                    };
                    if f.id.as_ref().and_then(|v| v.as_str()) == Some("join") {
                        ok = f.result.is_some();
                        break;
                    }
                }
                Incoming::Closed(_) => break,
            }
        }
        if !ok {
            continue;
        }
        if counted_join {
            res.rejoins.push(Instant::now());
        }
        if !counted_join {
            counted_join = true;
            joined.fetch_add(1, Relaxed);
            // Wait for the start signal without reading: history arrives meanwhile and is
            // read below.
            while !*go.borrow_and_update() {
                if go.changed().await.is_err() {
                    break;
                }
            }
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
                inc = conn.incoming.recv() => match inc {
                    Some(Incoming::Text(b)) => {
                        last_rx = Instant::now();
                        let Ok(f) = serde_json::from_slice::<Frame>(&b) else { continue };
                        if let Some(id) = f.msg_id {
                            last_id = Some(id.into_owned());
                            let Some(p) = f.params else { continue };
                            let Some(n) = p.uuid.as_deref().and_then(|u| u.strip_prefix(&prefix)).and_then(|n| n.parse::<u64>().ok()) else { continue };
                            if !res.received.insert(n) {
                                res.duplicates += 1;
                                continue;
                            }
                            res.last_rx = Some(last_rx);
                            if let Some(sent) = p.text.as_deref().and_then(|t| t.split(' ').next()).and_then(|t| t.parse::<u64>().ok()) {
                                let us = clock.now_ns().saturating_sub(sent) / 1000;
                                let _ = res.latency.record(us.max(1));
                            }
                            if pending.remove(&n).is_some() {
                                res.acked.push(n);
                            }
                        } else if let Some(e) = f.error {
                            if e.code == -32010 || e.code == -32005 {
                                res.refused += 1;
                                // Resent on the next tick through `pending`.
                            }
                        } else if f.method.as_deref() == Some("reconnect") {
                            continue 'outer; // drain or slow: move and resume
                        }
                    }
                    Some(Incoming::Closed(_)) | None => continue 'outer,
                },
                _ = tick.tick(), if sending && *go.borrow() => {
                    let n = next_msg.fetch_add(1, Relaxed);
                    let text = format!("{} {}", clock.now_ns(), "x".repeat(spec.pad));
                    let frame = json!({"jsonrpc":"2.0","method":"textMessage","id":n,"params":{
                        "userId": user_id, "userName": user_name, "roomName": room, "text": text,
                        "ack": false, "uuid": format!("{prefix}{n}"), "date": 0}}).to_string();
                    res.sent += 1;
                    let ok = conn.send(frame.as_bytes()).await;
                    pending.insert(n, frame);
                    if !ok {
                        continue 'outer;
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    // Retry refused or unacknowledged messages periodically.
                    if m.sender && !pending.is_empty() && last_rx.elapsed() > Duration::from_secs(2) {
                        for text in pending.values() {
                            if !conn.send(text.as_bytes()).await {
                                continue 'outer;
                            }
                        }
                    }
                }
                _ = stop.changed(), if stopping_since.is_none() => {
                    stopping_since = Some(Instant::now());
                }
            }
            if let Some(t) = stopping_since {
                // Done when our own messages are all acknowledged and the room went quiet.
                let quiet = last_rx.elapsed() > Duration::from_millis(1500);
                if (pending.is_empty() && quiet) || t.elapsed() > Duration::from_secs(30) {
                    conn.close().await;
                    break 'outer;
                }
            }
        }
    }
    res
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
        };
        // Room 0: messages 1, 2 acked; the second member misses 2. Room 1: message 3 acked,
        // delivered twice to one member. A message nobody acked (4) does not count.
        let r = account(
            &spec,
            vec![
                member(0, &[1, 2], 0, &[1, 2]),
                member(0, &[1, 4], 0, &[]),
                member(1, &[3], 0, &[3]),
                member(1, &[3], 1, &[]),
            ],
            Duration::from_secs(1),
        );
        assert_eq!(r.acked, 3);
        assert_eq!(r.expected_deliveries, 6);
        assert_eq!(r.delivered, 5);
        assert_eq!(r.lost, 1);
        assert_eq!(r.duplicated, 1);
        assert!(r.acked_uuids.contains("t-3"));
    }
}
