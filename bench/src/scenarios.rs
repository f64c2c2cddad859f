//! The scenarios. Each starts (or targets) a topology, drives real WebSocket clients, and
//! returns a [`Report`] of what it measured.
//!
//! Why ~500 lines: one function per scenario, each short; they share setup and reporting
//! helpers that would otherwise be exported across files. (The bench is to be reworked with
//! the fan-out performance work.)

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::dialect::Dialect;
use crate::load::{self, LoadSpec};
use crate::procs as procstat;
use crate::report::{round, Report};
use crate::topology::{Topology, TopologyArgs};
use crate::wsclient::{Conn, Event};

fn run_id() -> String {
    format!(
        "b{}",
        std::process::id() ^ (Instant::now().elapsed().subsec_nanos())
    )
}

/// Source addresses 127.0.0.2.. so many connections do not exhaust one address's
/// ephemeral ports (about 28k per source/destination pair).
pub fn sources(connections: usize) -> Vec<IpAddr> {
    let n = connections / 20_000 + 1;
    (0..n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
        .collect()
}

#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    #[arg(long, default_value_t = 10)]
    pub users: usize,
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
    /// Messages per second per sender.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Padding bytes per message text.
    #[arg(long, default_value_t = 64)]
    pub pad: usize,
    /// All senders send at the same instants (bursts of one message per sender), as the
    /// generator did before 2026-12-02; by default their ticks are spread over the period.
    #[arg(long)]
    pub synchronized: bool,
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// Measure the loopback floor (`natter-bench floor`) first and give deliveries/s as a
    /// fraction of its one-frame-per-write figure.
    #[arg(long)]
    pub floor: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BigRoomArgs {
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
    /// Messages per second per sender (low: this measures latency, not throughput).
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    #[arg(long, default_value_t = 64)]
    pub pad: usize,
    /// Generator processes the members are spread over.
    #[arg(long, default_value_t = 4)]
    pub procs: usize,
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

impl From<BigRoomArgs> for FanoutArgs {
    fn from(b: BigRoomArgs) -> Self {
        FanoutArgs {
            rooms: 1,
            users: b.users,
            senders: b.senders,
            rate: b.rate,
            seconds: b.seconds,
            pad: b.pad,
            synchronized: false,
            topology: b.topology,
            floor: false,
            json: b.json,
        }
    }
}

/// `fanout` (and `big-room`: one room): steady traffic, every delivery accounted.
pub async fn fanout(name: &str, a: &FanoutArgs) -> Report {
    let floor = if a.floor {
        tokio::task::spawn_blocking(|| crate::floor::measure(&Default::default()))
            .await
            .ok()
            .and_then(Result::ok)
    } else {
        None
    };
    let mut topo = Topology::start(&a.topology, false).await;
    let procs = topo.processes();
    let spec = LoadSpec {
        rooms: a.rooms,
        users_per_room: a.users,
        senders_per_room: a.senders,
        rate: a.rate,
        duration: Duration::from_secs(a.seconds),
        urls: topo.urls(),
        sources: sources(a.rooms * a.users),
        run_id: run_id(),
        pad: a.pad,
        all_on_first: false,
        dialect: Dialect::Natter,
        per_message: false,
        quiet_join: false,
        synchronized: a.synchronized,
    };
    // CPU from the start signal (every member joined) until every member had every message.
    let (results, held, cpu, t0) = load::run_measuring_cpu(&spec, &procs).await;
    let r = load::account(&spec, results, t0);
    let mut rep = Report::new(name);
    rep.set(
        "setup",
        json!({"rooms": a.rooms, "users_per_room": a.users, "senders_per_room": a.senders,
               "rate_per_sender": a.rate, "seconds": a.seconds, "edges": topo.urls().len(),
               "edge_workers": a.topology.edge_workers,
               "senders": crate::pacing::label(a.synchronized)}),
    );
    rep.load(&r);
    rep.set(
        "cpu_seconds",
        Value::Object(
            cpu.iter()
                .map(|(n, s)| (n.clone(), json!(round(*s, 2))))
                .collect(),
        ),
    );
    drop(held);
    // CPU µs per delivery received, per process.
    let per_delivery: Vec<(&str, f64)> = cpu
        .iter()
        .map(|(n, s)| (n.as_str(), s * 1e6 / r.delivered.max(1) as f64))
        .collect();
    rep.set(
        "cpu_us_per_delivery",
        Value::Object(
            per_delivery
                .iter()
                .map(|(n, us)| (n.to_string(), json!(round(*us, 2))))
                .collect(),
        ),
    );
    if let Some(f) = floor {
        let per_s = r.delivered as f64 / r.elapsed.as_secs_f64().max(1e-9);
        rep.set("loopback_floor", f.summary());
        rep.set("deliveries_per_s_of_floor", f.fraction(per_s));
        // The edges' CPU per delivery against what one frame costs the floor (its writer
        // and reader together, one frame per write), so it reads the same on a fast or slow
        // machine.
        let edges_us: f64 = per_delivery
            .iter()
            .filter(|(n, _)| n.starts_with("edge-"))
            .map(|(_, us)| us)
            .sum();
        if edges_us > 0.0 {
            rep.set(
                "edges_cpu_per_delivery_of_floor_frame",
                f.cpu_multiple(edges_us),
            );
        }
    }
    rep
}

#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    #[arg(long, default_value_t = 20_000)]
    pub connections: usize,
    /// Members per room.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// After joining, stay idle this long and report the CPU each process used meanwhile
    /// (WebSocket pings, presence upkeep); at least one presence TTL to see its upkeep.
    #[arg(long, default_value_t = 40)]
    pub idle_secs: u64,
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `idle`: N joined, idle connections on one edge; edge RSS per connection, and the CPU
/// that keeping them joined costs the edge and nats-server.
pub async fn idle(a: &IdleArgs) -> Report {
    let mut t = a.topology.clone();
    t.edges = 1;
    let mut topo = Topology::start(&t, false).await;
    let procs = topo.processes();
    let edge_pid = procs.iter().find(|(n, _)| n == "edge-0").map(|(_, p)| *p);
    let url = topo.urls()[0].clone();
    // Each side needs one descriptor per connection plus its own: stay below the limit.
    let fd_limit = procstat::raise_fd_limit() as usize;
    let wanted = a.connections;
    let connections = wanted.min(fd_limit.saturating_sub(200));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = edge_pid.and_then(procstat::rss_bytes).unwrap_or(0);
    let srcs = sources(connections);
    let run = run_id();
    let t0 = Instant::now();
    // Join with bounded concurrency (like a crowd arriving, not one by one).
    let gate = Arc::new(tokio::sync::Semaphore::new(128));
    let mut joins = Vec::with_capacity(connections);
    for i in 0..connections {
        let room = format!("{run}-idle-{}", i / a.room_size.max(1));
        let (url, src, uid, name) = (
            url.clone(),
            srcs[i % srcs.len()],
            format!("{run}-u{i}"),
            format!("u{}", i % a.room_size.max(1)),
        );
        let gate = gate.clone();
        joins.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            join(&url, Some(src), &room, &uid, &name).await
        }));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = Vec::with_capacity(connections);
    let mut failed = 0usize;
    for j in joins {
        match j.await {
            Ok(Some(c)) => conns.push(tokio::spawn(hold(c, Dialect::Natter, stop_rx.clone()))),
            _ => failed += 1,
        }
    }
    let connect_s = t0.elapsed().as_secs_f64();
    // Let history frames drain and the allocator settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = edge_pid.and_then(procstat::rss_bytes).unwrap_or(0);
    let n = conns.len().max(1) as f64;
    let mut rep = Report::new("idle");
    if connections < wanted {
        rep.set(
            "capped_by_open_file_limit",
            format!("{wanted} asked, {connections} possible with a limit of {fd_limit}"),
        );
    }
    rep.set("connections", conns.len());
    rep.set("failed", failed);
    rep.set("connect_and_join_s", round(connect_s, 2));
    rep.set("edge_rss_before_mib", round(rss0 as f64 / 1048576.0, 1));
    rep.set("edge_rss_after_mib", round(rss1 as f64 / 1048576.0, 1));
    rep.set(
        "edge_rss_per_connection_kib",
        round((rss1.saturating_sub(rss0)) as f64 / n / 1024.0, 2),
    );
    if a.idle_secs > 0 {
        let before = crate::report::cpu_snapshot(&procs);
        tokio::time::sleep(Duration::from_secs(a.idle_secs)).await;
        rep.set("idle_window_s", a.idle_secs);
        rep.cpu(&procs, &before);
    }
    let _ = stop_tx.send(true);
    for c in conns {
        let _ = c.await;
    }
    let _ = topo;
    rep
}

/// Keep a joined connection alive (read and drop what arrives, answer pings, the
/// dialect's too) until `stop`.
pub async fn hold(mut c: Conn, dialect: Dialect, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            ev = c.next() => {
                if ev != Event::Text {
                    return;
                }
                let ping = dialect.classify(c.text(), b"-") == crate::dialect::Incoming::Ping;
                if ping && !c.send(dialect.pong()).await {
                    return;
                }
            }
            _ = stop.changed() => break,
        }
    }
    c.close().await;
}

/// Connect and join; the connection once the join answered OK.
async fn join(
    url: &str,
    src: Option<IpAddr>,
    room: &str,
    user_id: &str,
    name: &str,
) -> Option<Conn> {
    let mut c = Conn::connect(url, src).await.ok()?;
    let req = json!({"jsonrpc":"2.0","method":"joinRoom","id":"j","params":{"userId":user_id,"userName":name,"roomName":room}});
    if !c.send(req.to_string().as_bytes()).await {
        return None;
    }
    wait_result(&mut c, "j").await.then_some(c)
}

async fn wait_result(c: &mut Conn, id: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Ok(Event::Text) =
        tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), c.next()).await
    {
        let t = c.text();
        if crate::scan::str_field(t, b"id") == Some(id.as_bytes()) {
            return crate::scan::field(t, b"result").is_some();
        }
    }
    false
}

#[derive(Debug, Clone, clap::Args)]
pub struct CatchupArgs {
    /// Messages missed before each resume.
    #[arg(long, default_value_t = 1000)]
    pub missed: usize,
    /// Resumes measured.
    #[arg(long, default_value_t = 20)]
    pub rounds: usize,
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `catch-up`: a member misses M messages and resumes; time from sending `reconnect` to
/// having all M.
pub async fn catchup(a: &CatchupArgs) -> Report {
    let topo = Topology::start(&a.topology, false).await;
    let url = topo.urls()[0].clone();
    let run = run_id();
    let room = format!("{run}-catchup");
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut sender = join(&url, None, &room, "sender", "sender")
        .await
        .expect("sender joins");
    let mut incomplete = 0;
    let mut last = String::new();
    // The reader joins once to learn where the room is.
    {
        let mut r = join(&url, None, &room, "reader", "reader")
            .await
            .expect("reader joins");
        r.close().await;
    }
    let mut n = 0u64;
    for _ in 0..a.rounds {
        // Publish M messages while the reader is away; wait for the sender's last echo.
        let mut last_uuid = String::new();
        for _ in 0..a.missed {
            n += 1;
            last_uuid = format!("{run}-{n}");
            let m = json!({"jsonrpc":"2.0","method":"textMessage","params":{"userId":"sender","userName":"sender","roomName":room,"text":"x","uuid":last_uuid}});
            sender.send(m.to_string().as_bytes()).await;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Ok(Event::Text) = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            sender.next(),
        )
        .await
        {
            let v: serde_json::Value = serde_json::from_slice(sender.text()).unwrap_or_default();
            if v["params"]["uuid"] == last_uuid.as_str() {
                break;
            }
            if let Some(id) = v["_id"].as_str() {
                if last.is_empty() {
                    last = (id.parse::<u64>().unwrap_or(1) - 1).to_string();
                }
            }
        }
        // Resume and time the replay.
        let Ok(mut r) = Conn::connect(&url, None).await else {
            incomplete += 1;
            continue;
        };
        let t0 = Instant::now();
        let req = json!({"jsonrpc":"2.0","method":"reconnect","id":"r","params":{"userId":"reader","userName":"reader","roomName":room,"lastMessageId":last}});
        r.send(req.to_string().as_bytes()).await;
        let mut got = 0usize;
        while got < a.missed {
            match tokio::time::timeout(Duration::from_secs(30), r.next()).await {
                Ok(Event::Text) => {
                    let v: serde_json::Value = serde_json::from_slice(r.text()).unwrap_or_default();
                    if let Some(id) = v["_id"].as_str() {
                        got += 1;
                        last = id.to_owned();
                    }
                }
                _ => break,
            }
        }
        if got == a.missed {
            let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
        } else {
            incomplete += 1;
        }
        r.close().await;
    }
    let mut rep = Report::new("catch-up");
    rep.set("missed_per_resume", a.missed);
    rep.set("resumes", a.rounds);
    rep.set("incomplete", incomplete);
    rep.latency("resume", &hist);
    rep
}

#[derive(Debug, Clone, clap::Args)]
pub struct StormArgs {
    #[arg(long, default_value_t = 5000)]
    pub clients: usize,
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// Seconds of traffic; the edge is killed after 3. Every client must have resumed and
    /// caught up before the end, or its missing deliveries count as lost.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `reconnect-storm`: every client of one edge loses it at once (kill -9) and resumes on
/// the others; time until all resumed, and every delivery accounted.
pub async fn storm(a: &StormArgs) -> Report {
    let mut t = a.topology.clone();
    t.edges = t.edges.max(2);
    let mut topo = Topology::start(&t, false).await;
    let urls = topo.urls();
    let rooms = (a.clients / a.room_size.max(1)).max(1);
    // All members start on edge 0 (the one that will die); senders on the others.
    let spec = LoadSpec {
        rooms,
        users_per_room: a.room_size,
        senders_per_room: 1,
        rate: 1.0,
        duration: Duration::from_secs(a.seconds.max(4)),
        urls: vec![urls[0].clone()],
        sources: sources(a.clients),
        run_id: run_id(),
        pad: 16,
        all_on_first: true,
        dialect: Dialect::Natter,
        per_message: false,
        quiet_join: false,
        synchronized: false,
    };
    let victim = topo.edges.remove(0);
    let survivors = urls[1..].to_vec();
    let killed_at = Arc::new(std::sync::Mutex::new(None::<u64>));
    let k = killed_at.clone();
    let chaos = async move {
        let mut victim = victim;
        tokio::time::sleep(Duration::from_secs(3)).await;
        victim.proc().kill9();
        *k.lock().unwrap_or_else(|p| p.into_inner()) = Some(load::mono_ns());
    };
    // Clients rotate to the next URL when their edge dies: give them the survivors after
    // the first.
    let mut spec2 = spec.clone();
    spec2.urls = std::iter::once(urls[0].clone()).chain(survivors).collect();
    let (r, _held) = load::run(&spec2, chaos).await;
    let mut rep = Report::new("reconnect-storm");
    rep.set("clients", a.clients);
    if let Some(k) = *killed_at.lock().unwrap_or_else(|p| p.into_inner()) {
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
        for t in &r.rejoins {
            let _ = h.record((t.saturating_sub(k) / 1000).max(1));
        }
        rep.set("clients_resumed", r.rejoins.len());
        rep.latency("resumed_after_kill", &h);
    }
    rep.load(&r);
    rep
}

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    #[arg(long, default_value_t = 5)]
    pub users: usize,
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Also kill and restart the archiver (needs Postgres) and compare rows with acks.
    #[arg(long)]
    pub archive: bool,
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What a chaos run did and found.
pub struct ChaosOutcome {
    pub report: Report,
    pub lost: u64,
    pub duplicated: u64,
    pub rows_missing: u64,
    pub rows_extra: u64,
}

/// `chaos`: steady traffic while edges are killed and drained, the archiver is killed,
/// and (with `--cluster`) a NATS node is killed and restarted.
pub async fn chaos(a: &ChaosArgs) -> ChaosOutcome {
    let mut t = a.topology.clone();
    t.edges = t.edges.max(2);
    let mut topo = Topology::start(&t, a.archive).await;
    let spec = LoadSpec {
        rooms: a.rooms,
        users_per_room: a.users,
        senders_per_room: 1,
        rate: a.rate,
        duration: Duration::from_secs(a.seconds),
        urls: topo.urls(),
        sources: Vec::new(),
        run_id: run_id(),
        pad: 16,
        all_on_first: false,
        dialect: Dialect::Natter,
        per_message: false,
        quiet_join: false,
        synchronized: false,
    };
    let log = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let step = Duration::from_secs((a.seconds / 5).max(1));
    let r = {
        let topo = &mut topo;
        let log = log.clone();
        let actions = async move {
            let note = |s: String| log.lock().unwrap_or_else(|p| p.into_inner()).push(s);
            tokio::time::sleep(step).await;
            topo.edges[0].proc().kill9();
            note("kill -9 edge-0".into());
            tokio::time::sleep(Duration::from_millis(500)).await;
            topo.edges[0].restart().await;
            note("edge-0 restarted".into());
            tokio::time::sleep(step).await;
            topo.edges[1].proc().term();
            note("SIGTERM edge-1 (drain)".into());
            let _ = topo.edges[1]
                .proc()
                .wait_exit(Duration::from_secs(10))
                .await;
            topo.edges[1].restart().await;
            note("edge-1 restarted".into());
            if let Some(arch) = topo.archiver.as_mut() {
                tokio::time::sleep(step).await;
                arch.proc().kill9();
                note("kill -9 archiver".into());
                tokio::time::sleep(Duration::from_secs(1)).await;
                arch.restart().await;
                note("archiver restarted".into());
            }
            if let Some(c) = topo.cluster.as_mut() {
                tokio::time::sleep(step).await;
                c.nodes[2].kill();
                note("kill -9 nats-2".into());
                tokio::time::sleep(Duration::from_secs(2)).await;
                c.nodes[2].restart().await;
                note("nats-2 restarted".into());
            }
        };
        load::run(&spec, actions).await.0
    };
    let mut rep = Report::new("chaos");
    rep.set(
        "actions",
        json!(*log.lock().unwrap_or_else(|p| p.into_inner())),
    );
    rep.load(&r);
    let (mut missing, mut extra) = (0u64, 0u64);
    if let Some(pg) = topo.postgres.as_ref() {
        let (rows_missing, rows_extra, rows) =
            crate::archive_check::compare(&pg.url(), &r.acked_uuids, &spec.run_id).await;
        missing = rows_missing;
        extra = rows_extra;
        rep.set("postgres_rows", rows);
        rep.set("postgres_rows_missing", rows_missing);
        rep.set("postgres_rows_extra", rows_extra);
    }
    ChaosOutcome {
        lost: r.lost,
        duplicated: r.duplicated,
        rows_missing: missing,
        rows_extra: extra,
        report: rep,
    }
}
