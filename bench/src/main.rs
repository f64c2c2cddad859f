//! `natter-bench <scenario>`: see `natter-bench --help` and BENCHMARKS.md.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use natter_bench::{archiver, bigroom, floor, parse, peer, procs, scenarios, stream_ceiling};

#[derive(Debug, Parser)]
#[command(
    name = "natter-bench",
    version,
    about = "natter benchmarks, load scenarios and chaos runs"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// R rooms × U users, S senders per room at a rate, members spread over the edges.
    Fanout(scenarios::FanoutArgs),
    /// One room of thousands of members, the generator spread over worker processes.
    BigRoom(scenarios::BigRoomArgs),
    /// natter vs a Socket.IO v4 + Redis adapter cluster, same clients, same loads.
    Peer(peer::PeerArgs),
    /// The raw loopback TCP floor: frames/s with one and with K frames per write.
    Floor(floor::FloorArgs),
    /// The edge's cost per textMessage before publishing (parse + stored form), fast path
    /// against the general JSON-tree path.
    Parse(parse::Args),
    /// (internal) One share of a load, run by `big-room`'s parent process.
    #[command(hide = true)]
    Worker(bigroom::WorkerArgs),
    /// N joined idle connections; edge memory per connection.
    Idle(scenarios::IdleArgs),
    /// A member misses M messages and resumes; time to have them all.
    CatchUp(scenarios::CatchupArgs),
    /// Thousands of clients lose their edge at once (kill -9) and resume elsewhere.
    ReconnectStorm(scenarios::StormArgs),
    /// Steady traffic while edges are killed and drained, the archiver is killed and (with
    /// --cluster) a NATS node is killed; every acknowledged message checked.
    Chaos(scenarios::ChaosArgs),
    /// Archive throughput and lag: publish N stored messages across R rooms and measure
    /// rows/s written by natter-archiver and publish-ack → row-visible lag.
    Archiver(archiver::Args),
    /// Write ceiling of the one CHAT stream: async JetStream publishes, acked msgs/s,
    /// publish→ack latency and nats-server CPU (with --cluster: 3 nodes, R3).
    StreamCeiling(stream_ceiling::Args),
}

/// natter binaries used by scenarios; found through `NATTER_BIN_<NAME>` by natter-testkit.
const BINARIES: &[&str] = &["natter-archiver", "natter-edge", "natter-filestore"];

/// Point natter-testkit at the natter binaries next to this executable, unless already set.
fn locate_binaries() {
    let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.to_path_buf()))
    else {
        return;
    };
    for name in BINARIES {
        let var = format!("NATTER_BIN_{}", name.replace('-', "_").to_uppercase());
        let path = dir.join(name);
        if std::env::var_os(&var).is_none() && path.exists() {
            // Single-threaded here: no runtime has started yet.
            std::env::set_var(var, path);
        }
    }
}

fn main() -> anyhow::Result<()> {
    locate_binaries();
    procs::raise_fd_limit();
    let cli = Cli::parse();
    // A big-room worker is one of several processes sharing the machine's cores: one thread
    // each, so a burst's wake-ups are not handed between threads of the same process (a
    // third less generator CPU per delivery than with two threads).
    let rt = if matches!(cli.scenario, Scenario::Worker(_)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    }
    .context("start the tokio runtime")?;
    rt.block_on(async move {
        match cli.scenario {
            Scenario::Fanout(a) => scenarios::fanout("fanout", &a).await.print(a.json),
            Scenario::BigRoom(a) => bigroom::run(&a).await.print(a.json),
            Scenario::Peer(a) => return peer::run(&a).await,
            Scenario::Floor(a) => floor::floor(&a).await.print(a.json),
            Scenario::Parse(a) => parse::run(&a).print(a.json),
            Scenario::Worker(a) => return bigroom::worker(&a).await,
            Scenario::Idle(a) => scenarios::idle(&a).await.print(a.json),
            Scenario::CatchUp(a) => scenarios::catchup(&a).await.print(a.json),
            Scenario::ReconnectStorm(a) => scenarios::storm(&a).await.print(a.json),
            Scenario::Chaos(a) => {
                let out = scenarios::chaos(&a).await;
                out.report.print(a.json);
                if out.lost + out.duplicated + out.rows_missing + out.rows_extra > 0 {
                    anyhow::bail!(
                        "chaos: {} lost, {} duplicated, {} rows missing, {} rows extra",
                        out.lost,
                        out.duplicated,
                        out.rows_missing,
                        out.rows_extra
                    );
                }
            }
            Scenario::Archiver(args) => return archiver::run(args).await,
            Scenario::StreamCeiling(args) => return stream_ceiling::run(args).await,
        }
        Ok(())
    })
}
