//! `big-room`: one room of thousands of members, the members spread over several worker
//! processes (this executable re-run as `natter-bench worker`) so the generator is not the
//! bound. Each worker joins its share, says `ready <n>` on stdout, starts on a `go` line on
//! stdin and at the end prints one JSON line with its members' records and its CPU seconds;
//! the parent merges them with the same accounting as every room load. Clocks are
//! CLOCK_MONOTONIC, shared by all processes of the machine.
//!
//! Reported: per-delivery latency, and per message the time from its send to the last
//! member's receipt ("reach all"), with how many messages did not reach every member.

use std::process::Stdio;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use tokio::process::Command;

use crate::dialect::Dialect;
use crate::load::{self, LoadSpec, MemberResult};
use crate::procs;
use crate::report::{cpu_snapshot, round, Report};
use crate::scenarios::BigRoomArgs;
use crate::topology::Topology;

/// `natter-bench worker` (internal): one share of a load.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// `i/n`: run the members whose index is i modulo n.
    #[arg(long)]
    pub share: String,
    /// The load, as JSON.
    #[arg(long)]
    pub spec: String,
}

#[derive(Serialize, Deserialize)]
struct WorkerReport {
    joined: usize,
    cpu_s: f64,
    members: Vec<MemberResult>,
}

/// The worker side: join, report ready, wait for go, run, print the records.
pub async fn worker(a: &WorkerArgs) -> anyhow::Result<()> {
    let spec: LoadSpec = serde_json::from_str(&a.spec)?;
    let (i, n) = a
        .share
        .split_once('/')
        .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("--share wants i/n"))?;
    let joined = std::cell::Cell::new(0);
    let (results, held) = load::run_share(
        &spec,
        (i, n),
        |j| {
            joined.set(j);
            println!("ready {j}");
        },
        async {
            let _ = tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)
            })
            .await;
        },
        async {},
    )
    .await;
    let report = WorkerReport {
        joined: joined.get(),
        cpu_s: procs::cpu_seconds(std::process::id()).unwrap_or(0.0),
        members: results,
    };
    println!("{}", serde_json::to_string(&report)?);
    // Connections stay open until the parent has its CPU figures (every leave notifies the
    // whole room: N² frames that are not the load).
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)
    })
    .await;
    drop(held);
    Ok(())
}

/// What [`run_workers`] gathered.
pub struct Gathered {
    pub members: Vec<MemberResult>,
    /// CPU seconds of the worker processes from the start signal on.
    pub worker_cpu_s: f64,
    /// When sending started ([`load::mono_ns`]).
    pub t0: u64,
    pub joined: usize,
}

/// Run `spec` over `n` worker processes. `at_end` is called with the CPU seconds `procs`
/// had at the start signal once every worker reported, before any member leaves.
pub async fn run_workers(
    spec: &LoadSpec,
    n: usize,
    procs: &[(String, u32)],
    at_end: impl FnOnce(&[(String, f64)]),
) -> anyhow::Result<Gathered> {
    let exe = std::env::current_exe()?;
    let spec_json = serde_json::to_string(spec)?;
    let mut children = Vec::new();
    for i in 0..n {
        let mut c = Command::new(&exe)
            .args([
                "worker",
                "--share",
                &format!("{i}/{n}"),
                "--spec",
                &spec_json,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let out = c
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("worker stdout"))?;
        children.push((c, BufReader::new(out).lines()));
    }
    // Everyone joined (or gave up waiting) before anyone sends.
    let mut joined = 0;
    for (_, lines) in children.iter_mut() {
        let line = tokio::time::timeout(Duration::from_secs(300), lines.next_line())
            .await
            .map_err(|_| anyhow::anyhow!("a worker did not get ready in 300 s"))??
            .unwrap_or_default();
        joined += line
            .strip_prefix("ready ")
            .and_then(|j| j.trim().parse::<usize>().ok())
            .ok_or_else(|| anyhow::anyhow!("worker said {line:?}"))?;
    }
    let before = cpu_snapshot(procs);
    let worker_cpu0: f64 = children
        .iter()
        .filter_map(|(c, _)| c.id().and_then(procs::cpu_seconds))
        .sum();
    let t0 = load::mono_ns();
    for (c, _) in children.iter_mut() {
        if let Some(stdin) = c.stdin.as_mut() {
            stdin.write_all(b"go\n").await?;
            stdin.flush().await?;
        }
    }
    let mut members = Vec::new();
    let mut cpu = 0.0;
    let mut reports = Vec::new();
    for (_, lines) in children.iter_mut() {
        reports.push(lines.next_line().await?.unwrap_or_default());
    }
    // Every member has every message: the end of the measured span (parsing is not in it).
    at_end(&before);
    for line in reports {
        let r: WorkerReport =
            serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("worker report: {e}"))?;
        cpu += r.cpu_s;
        members.extend(r.members);
    }
    for (mut c, _) in children {
        if let Some(stdin) = c.stdin.as_mut() {
            let _ = stdin.write_all(b"close\n").await;
            let _ = stdin.flush().await;
        }
        let _ = c.wait().await;
    }
    Ok(Gathered {
        members,
        worker_cpu_s: cpu - worker_cpu0,
        t0,
        joined,
    })
}

/// `natter-bench big-room`.
pub async fn run(a: &BigRoomArgs) -> Report {
    let mut rep = Report::new("big-room");
    let mut topo = Topology::start(&a.topology, false).await;
    let procs = topo.processes();
    let spec = LoadSpec {
        rooms: 1,
        users_per_room: a.users,
        senders_per_room: a.senders,
        rate: a.rate,
        duration: Duration::from_secs(a.seconds),
        urls: topo.urls(),
        sources: crate::scenarios::sources(a.users),
        run_id: format!("g{}", std::process::id() ^ load::mono_ns() as u32),
        pad: a.pad,
        all_on_first: false,
        dialect: Dialect::Natter,
        per_message: true,
        quiet_join: true,
        synchronized: false,
    };
    rep.set(
        "setup",
        json!({"users": a.users, "senders": a.senders, "rate_per_sender": a.rate,
               "seconds": a.seconds, "edges": spec.urls.len(), "generator_processes": a.procs}),
    );
    let mut cpu = Report::new("cpu");
    let g = match run_workers(&spec, a.procs.max(1), &procs, |before| {
        cpu.cpu(&procs, before)
    })
    .await
    {
        Ok(x) => x,
        Err(e) => {
            rep.set("error", e.to_string());
            return rep;
        }
    };
    let worker_cpu = g.worker_cpu_s;
    let r = load::account(&spec, g.members, g.t0);
    rep.set("joined", g.joined);
    rep.load(&r);
    let mut reach = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
    let mut partial = 0u64;
    for &(count, us) in &r.reach_us {
        if count as usize >= r.room_size {
            let _ = reach.record(us.max(1));
        } else {
            partial += 1;
        }
    }
    rep.latency("reach_all_members", &reach);
    rep.set("messages_not_reaching_all", partial);
    for (k, v) in cpu.figures {
        rep.set(&k, v);
    }
    rep.set("generator_cpu_s_workers", round(worker_cpu, 2));
    rep.set(
        "cpu_note",
        "from the start signal until every member had all messages (joins and leaves excluded); load-generator is the parent, which only coordinates",
    );
    rep
}
