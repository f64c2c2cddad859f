//! `peer`: natter against the usual Node answer to the same problem — a Socket.IO v4
//! cluster (two `node bench/peer/server.js` processes with the official Redis adapter and one
//! real `redis-server`) — driven by the same clients ([`crate::load`] with a
//! [`Dialect`]) at the same offered loads, with identical latency and loss accounting.
//! natter runs as the bench always starts it: one nats-server, two edges.
//!
//! Per load and system: deliveries/s, latency p50/p99/max, lost, duplicated and server CPU
//! per delivery (natter: edges, and edges + nats-server; Socket.IO: node processes, and
//! node + redis), then the ratios. Then idle memory per joined connection, measured the same
//! way for both: N connections joined in rooms of 10, RSS delta of the server processes / N.
//!
//! The Socket.IO cluster itself (redis-server, the node processes) is [`crate::sio`]'s;
//! this file runs both systems the same way and reports them side by side.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::dialect::{Dialect, Incoming};
use crate::floor::{self, Floor, FloorArgs};
use crate::load::{self, LoadResult, LoadSpec};
use crate::procs;
use crate::report::{round, thousands};
use crate::scenarios::hold;
use crate::sio::{peer_dir, versions, SioCluster};
use crate::topology::{Topology, TopologyArgs};
use crate::wsclient::{Conn, Event};

#[derive(Debug, Clone, clap::Args)]
pub struct PeerArgs {
    /// Offered loads: messages per second per sender (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10,25,50,100")]
    pub rates: Vec<f64>,
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    #[arg(long, default_value_t = 10)]
    pub users: usize,
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
    /// Seconds per load and system.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    #[arg(long, default_value_t = 64)]
    pub pad: usize,
    /// All senders send at the same instants (bursts), as the generator did before
    /// 2026-12-02; by default their ticks are spread over the period.
    #[arg(long)]
    pub synchronized: bool,
    /// Extra flags for natter's edges, e.g. `--edge-args=--coalesce-ms=50`.
    #[arg(long, allow_hyphen_values = true, value_delimiter = ' ')]
    pub edge_args: Vec<String>,
    /// Worker threads of each natter edge (`TOKIO_WORKER_THREADS`); by default one per
    /// CPU. Each Socket.IO process has one thread.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub edge_workers: Option<u16>,
    /// Joined idle connections for the memory figure (0: skip it).
    #[arg(long, default_value_t = 5000)]
    pub idle: usize,
    /// Measure the loopback floor first and give deliveries/s as a fraction of it.
    #[arg(long)]
    pub floor: bool,
    /// Do not run bench/peer/setup.sh (redis-server and npm ci) first.
    #[arg(long)]
    pub no_setup: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

fn run_id(tag: &str) -> String {
    format!("{tag}{}", std::process::id() ^ load::mono_ns() as u32)
}

/// One system's figures at one load.
struct Figures {
    per_s: f64,
    p50: f64,
    p99: f64,
    max: f64,
    lost: u64,
    dup: u64,
    /// CPU µs per delivery: front servers only, and with the broker.
    cpu_front: f64,
    cpu_all: f64,
    json: Value,
}

fn figures(r: &LoadResult, cpu: &[(String, f64)], broker: &str) -> Figures {
    let per_s = r.delivered as f64 / r.elapsed.as_secs_f64().max(1e-9);
    let ms = |q: f64| {
        r.latency_us
            .as_ref()
            .map_or(0.0, |h| round(h.value_at_quantile(q) as f64 / 1000.0, 2))
    };
    let max = r
        .latency_us
        .as_ref()
        .map_or(0.0, |h| round(h.max() as f64 / 1000.0, 2));
    let total: f64 = cpu.iter().map(|(_, c)| c).sum();
    let brk: f64 = cpu
        .iter()
        .filter(|(n, _)| n == broker)
        .map(|(_, c)| c)
        .sum();
    let per = |s: f64| s * 1e6 / (r.delivered.max(1) as f64);
    let (cpu_front, cpu_all) = (per(total - brk), per(total));
    let cpu_map: serde_json::Map<String, Value> = cpu
        .iter()
        .map(|(n, c)| (n.clone(), json!(round(*c, 2))))
        .collect();
    Figures {
        per_s,
        p50: ms(0.5),
        p99: ms(0.99),
        max,
        lost: r.lost,
        dup: r.duplicated,
        cpu_front,
        cpu_all,
        json: json!({
            "messages_acked": r.acked, "deliveries_expected": r.expected_deliveries,
            "deliveries_received": r.delivered, "deliveries_per_s": round(per_s, 0),
            "latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": max},
            "lost": r.lost, "duplicated": r.duplicated, "reconnects": r.reconnects,
            "cpu_seconds": cpu_map,
            "cpu_us_per_delivery": round(cpu_front, 2),
            "cpu_us_per_delivery_with_broker": round(cpu_all, 2),
        }),
    }
}

async fn measure(
    a: &PeerArgs,
    dialect: Dialect,
    urls: Vec<String>,
    procs: &[(String, u32)],
    rate: f64,
    broker: &str,
) -> Figures {
    let spec = LoadSpec {
        rooms: a.rooms,
        users_per_room: a.users,
        senders_per_room: a.senders,
        rate,
        duration: Duration::from_secs(a.seconds),
        urls,
        sources: vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))],
        run_id: run_id(if dialect == Dialect::Natter { "n" } else { "s" }),
        pad: a.pad,
        all_on_first: false,
        dialect,
        per_message: false,
        quiet_join: false,
        synchronized: a.synchronized,
    };
    // CPU is taken over the sending phase and its quiet tail, after every member joined.
    let (results, held, cpu, t0) = load::run_measuring_cpu(&spec, procs).await;
    // Leaving (and its userLeft notifications) is not part of the load.
    drop(held);
    let r = load::account(&spec, results, t0);
    figures(&r, &cpu, broker)
}

/// Connect, open the session and join; the connection once the join answered OK.
pub async fn join(
    dialect: Dialect,
    url: &str,
    src: Option<IpAddr>,
    room: &str,
    user_id: &str,
    name: &str,
) -> Option<Conn> {
    let mut c = Conn::connect(&dialect.url(url), src).await.ok()?;
    if !dialect.open(&mut c).await {
        return None;
    }
    if !c
        .send(dialect.join(room, user_id, name, None).as_bytes())
        .await
    {
        return None;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Ok(Event::Text) =
        tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), c.next()).await
    {
        let (result, ping) = match dialect.classify(c.text(), b"-") {
            Incoming::JoinResult(r) => (Some(r), false),
            Incoming::Ping => (None, true),
            _ => (None, false),
        };
        if let Some(ok) = result {
            return ok.then_some(c);
        }
        if ping && !c.send(dialect.pong()).await {
            return None;
        }
    }
    None
}

/// N joined idle connections spread over `urls` in rooms of `room_size`: how many joined,
/// and the RSS delta per connection in KiB of all `procs` and of those but `broker`.
pub async fn idle_memory(
    dialect: Dialect,
    urls: &[String],
    procs: &[(String, u32)],
    broker: &str,
    n: usize,
    room_size: usize,
) -> (usize, f64, f64) {
    let rss = |front: bool| -> u64 {
        procs
            .iter()
            .filter(|(name, _)| !front || name != broker)
            .filter_map(|(_, p)| procs::rss_bytes(*p))
            .sum()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss0, front0) = (rss(false), rss(true));
    let run = run_id("i");
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(128));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut joins = Vec::with_capacity(n);
    for i in 0..n {
        let url = urls[i % urls.len().max(1)].clone();
        let room = format!("{run}-idle-{}", i / room_size.max(1));
        let (uid, name) = (format!("{run}-u{i}"), format!("u{}", i % room_size.max(1)));
        let src = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3 + (i / 20_000) as u8)));
        let (gate, stop) = (gate.clone(), stop_rx.clone());
        joins.push(tokio::spawn(async move {
            let c = {
                let _permit = gate.acquire_owned().await.ok()?;
                join(dialect, &url, src, &room, &uid, &name).await?
            };
            Some(tokio::spawn(hold(c, dialect, stop)))
        }));
    }
    let mut held = Vec::new();
    for j in joins {
        if let Ok(Some(h)) = j.await {
            held.push(h);
        }
    }
    // Let the servers settle (history, allocator) before reading their memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss1, front1) = (rss(false), rss(true));
    let joined = held.len();
    let _ = stop_tx.send(true);
    for h in held {
        let _ = h.await;
    }
    let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / joined.max(1) as f64 / 1024.0;
    (joined, per(rss0, rss1), per(front0, front1))
}

fn ratio(a: f64, b: f64) -> String {
    if b <= 0.0 {
        "–".into()
    } else {
        format!("{:.2}×", a / b)
    }
}

/// `natter-bench peer`.
pub async fn run(a: &PeerArgs) -> anyhow::Result<()> {
    if !a.no_setup {
        let script = peer_dir().join("setup.sh");
        let ok = tokio::process::Command::new("bash")
            .arg(&script)
            .stdout(Stdio::null())
            .status()
            .await
            .map(|s| s.success())
            .unwrap_or(false);
        anyhow::ensure!(ok, "{} failed", script.display());
    }
    let floor: Option<Floor> = if a.floor {
        let f = tokio::task::spawn_blocking(|| floor::measure(&FloorArgs::default())).await??;
        Some(f)
    } else {
        None
    };
    let sio = SioCluster::start(2).await?;
    let sio_procs = sio.processes();
    let mut natter = Topology::start(
        &TopologyArgs {
            edges: 2,
            cluster: false,
            target: Vec::new(),
            edge_args: a.edge_args.clone(),
            edge_workers: a.edge_workers,
            service_log: "warn".into(),
            keep_logs: None,
        },
        false,
    )
    .await;
    let natter_procs = natter.processes();
    let versions = versions();
    // Idle memory first, on fresh processes (after a load their allocators hold freed
    // memory that new connections reuse).
    let mut idle = json!(null);
    if a.idle > 0 {
        let (nj, nk, nf) = idle_memory(
            Dialect::Natter,
            &natter.urls(),
            &natter_procs,
            "nats",
            a.idle,
            10,
        )
        .await;
        let (sj, sk, sf) = idle_memory(
            Dialect::SocketIo,
            &sio.urls(),
            &sio_procs,
            "redis",
            a.idle,
            10,
        )
        .await;
        idle = json!({"natter": {"joined": nj, "kib_per_connection": round(nk, 2),
                                  "kib_per_connection_edges": round(nf, 2),
                                  "processes": "edges + nats-server"},
                      "socketio": {"joined": sj, "kib_per_connection": round(sk, 2),
                                   "kib_per_connection_node": round(sf, 2),
                                   "processes": "node ×2 + redis-server"}});
    }
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for &rate in &a.rates {
        let n = measure(
            a,
            Dialect::Natter,
            natter.urls(),
            &natter_procs,
            rate,
            "nats",
        )
        .await;
        let s = measure(a, Dialect::SocketIo, sio.urls(), &sio_procs, rate, "redis").await;
        out.push(json!({"rate_per_sender": rate,
            "offered_msgs_per_s": rate * (a.rooms * a.senders) as f64,
            "natter": n.json, "socketio": s.json,
            "natter_over_socketio": {
                "deliveries_per_s": round(n.per_s / s.per_s.max(1e-9), 3),
                "p99": round(n.p99 / s.p99.max(1e-9), 3),
                "cpu_per_delivery": round(n.cpu_front / s.cpu_front.max(1e-9), 3),
                "cpu_per_delivery_with_broker": round(n.cpu_all / s.cpu_all.max(1e-9), 3)}}));
        rows.push((rate, n, s));
    }
    drop(sio);
    let _ = natter.processes();
    if a.json {
        println!(
            "{}",
            json!({"scenario": "peer", "versions": versions, "setup": {"rooms": a.rooms,
                "users_per_room": a.users, "senders_per_room": a.senders, "seconds": a.seconds,
                "edge_args": a.edge_args, "edge_workers": a.edge_workers,
                "senders": crate::pacing::label(a.synchronized)},
                "loads": out, "idle_memory": idle,
                "floor": floor.as_ref().map(Floor::summary)})
        );
        return Ok(());
    }
    println!("natter-bench peer: natter (1 nats-server, 2 edges) vs Socket.IO (2 node processes + Redis adapter, 1 redis-server)");
    println!(
        "{} rooms × {} users, {} sender(s)/room ({}), {} s per load; same clients, same accounting",
        a.rooms,
        a.users,
        a.senders,
        crate::pacing::label(a.synchronized),
        a.seconds
    );
    if !a.edge_args.is_empty() {
        println!("natter edges started with: {}", a.edge_args.join(" "));
    }
    if let Some(n) = a.edge_workers {
        println!("natter edges with {n} worker thread(s) each");
    }
    let v = |k: &str| versions[k].as_str().unwrap_or("?").to_string();
    println!(
        "versions: natter {}, {}, node {}, socket.io {}, @socket.io/redis-adapter {}, redis (node client) {}, redis-server {}",
        v("natter"),
        v("nats_server"),
        v("node"),
        v("socket.io"),
        v("@socket.io/redis-adapter"),
        v("redis (node client)"),
        v("redis_server")
    );
    if let Some(f) = &floor {
        println!(
            "loopback floor: {} frames/s at 1 frame/write ({:.2} µs/frame both cores), {} frames/s at {}/write",
            thousands(f.single.frames_per_s),
            f.single.cpu_us_per_frame,
            thousands(f.coalesced.frames_per_s),
            f.coalesced.frames_per_write
        );
    }
    println!();
    println!("| msg/s per sender (offered total) | system | deliveries/s | p50 ms | p99 ms | max ms | lost | dup | server CPU µs/delivery | incl. broker |{}", if floor.is_some() { " of floor |" } else { "" });
    println!(
        "|---|---|---|---|---|---|---|---|---|---|{}",
        if floor.is_some() { "---|" } else { "" }
    );
    for (rate, n, s) in &rows {
        let offered = rate * (a.rooms * a.senders) as f64;
        for (name, f) in [("natter", n), ("Socket.IO", s)] {
            let of = floor
                .as_ref()
                .map(|fl| format!(" {:.3} |", fl.fraction(f.per_s)))
                .unwrap_or_default();
            println!(
                "| {rate} ({}) | {name} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} |{of}",
                thousands(offered),
                thousands(f.per_s),
                f.p50,
                f.p99,
                f.max,
                f.lost,
                f.dup,
                f.cpu_front,
                f.cpu_all
            );
        }
        println!(
            "| {rate} | natter/Socket.IO | {} | {} | {} | {} | | | {} | {} |{}",
            ratio(n.per_s, s.per_s),
            ratio(n.p50, s.p50),
            ratio(n.p99, s.p99),
            ratio(n.max, s.max),
            ratio(n.cpu_front, s.cpu_front),
            ratio(n.cpu_all, s.cpu_all),
            if floor.is_some() { " |" } else { "" }
        );
    }
    if !idle.is_null() {
        println!();
        println!(
            "idle memory per joined connection (rooms of 10, RSS delta of the server processes / N, fresh processes): natter {} KiB with nats-server, {} KiB edges only ({} joined); Socket.IO {} KiB with redis-server, {} KiB node only ({} joined)",
            idle["natter"]["kib_per_connection"],
            idle["natter"]["kib_per_connection_edges"],
            idle["natter"]["joined"],
            idle["socketio"]["kib_per_connection"],
            idle["socketio"]["kib_per_connection_node"],
            idle["socketio"]["joined"]
        );
    }
    Ok(())
}
