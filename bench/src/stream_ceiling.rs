//! Scenario `stream-ceiling`: the write ceiling of the one CHAT stream.
//!
//! Every stored room message of a natter deployment goes through one JetStream stream,
//! `CHAT`, which is one Raft group (with R3) whose leader orders every write. This scenario
//! measures how many messages/s that stream acknowledges, and at what latency and server
//! CPU, with nothing else running: no edges, no archiver, no clients.
//!
//! It starts a real nats-server (one node and an R1 stream, or with `--cluster` the 3-node
//! cluster and R3 stream the chaos scenario uses, through natter-testkit), creates CHAT from
//! `nats/streams/CHAT.json` like the services do (republish to `live.room.>` included), and
//! publishes from `--connections` NATS connections with async JetStream publishes: each
//! connection keeps up to `--inflight / --connections` publishes awaiting their ack,
//! spread round robin over `--subjects` room subjects `room.<token>`, each with a
//! `Nats-Msg-Id` like the edge sends (the stream's dedupe window applies).
//!
//! After `--warmup` seconds it measures for `--seconds`: acks received per second,
//! publish → ack latency (from handing the message to the client to its ack, hdrhistogram),
//! and the CPU seconds of each nats-server process and of this load generator. Publishes
//! refused because the stream is full (`discard: new` with max bytes: the edge's -32010)
//! are counted apart from other errors, and the run stops early when the stream is 90%
//! full rather than measure refusals.
//!
//! Why ~450 lines: a self-contained scenario (its own topology, publishers, ack collectors
//! and stream checks) that no other scenario shares.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, context::PublishAckFuture};
use bytes::Bytes;
use hdrhistogram::Histogram;
use natter_bus::subjects;
use natter_protocol::token;
use natter_testkit::{NatsCluster, NatsServer};
use serde_json::json;
use tokio::sync::mpsc;

use crate::report::{self, round, thousands, Report};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Use the 3-node NATS cluster with an R3 CHAT stream instead of one node (R1).
    #[arg(long)]
    pub cluster: bool,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Seconds of publishing before the measurement starts (not counted).
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
    /// Payload bytes per message (a stored chat message is ~300 bytes of JSON).
    #[arg(long, default_value_t = 300)]
    pub payload: usize,
    /// Publishes awaiting their ack at most at once, over all connections.
    #[arg(long, default_value_t = 4096)]
    pub inflight: usize,
    /// Room subjects `room.<token>` the messages are spread over (round robin).
    #[arg(long, default_value_t = 1000)]
    pub subjects: usize,
    /// NATS connections publishing (with --cluster, connection i is on node i mod 3).
    #[arg(long, default_value_t = 3)]
    pub connections: usize,
    /// The CHAT stream's max bytes (default: the services' default, as in CHAT.json).
    #[arg(long)]
    pub max_bytes: Option<i64>,
    /// Publish without `Nats-Msg-Id` (no dedupe lookups; the edge always sends one).
    #[arg(long)]
    pub no_msg_id: bool,
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    pub json: bool,
}

/// What one connection's ack collector saw.
struct Tally {
    /// Acks received inside the measured window, and their latencies in µs.
    hist: Histogram<u64>,
    /// Every ack received, window or not.
    acked_total: u64,
    full_errors: u64,
    timeouts: u64,
    other_errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            hist: Histogram::new_with_bounds(1, 120_000_000, 3).context("histogram")?,
            acked_total: 0,
            full_errors: 0,
            timeouts: 0,
            other_errors: 0,
            first_error: None,
        })
    }

    fn merge(&mut self, o: Tally) -> anyhow::Result<()> {
        self.hist.add(&o.hist).context("merge histograms")?;
        self.acked_total += o.acked_total;
        self.full_errors += o.full_errors;
        self.timeouts += o.timeouts;
        self.other_errors += o.other_errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        Ok(())
    }
}

/// The measured window, shared by publishers and collectors.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

/// A payload of exactly `n` bytes shaped like a stored message (JSON, text padded).
fn payload(n: usize) -> Bytes {
    let head = r#"{"jsonrpc":"2.0","method":"textMessage","params":{"userId":"u-1","userName":"User 1","roomName":"ceiling","uuid":"00000000-0000-4000-8000-000000000000","ack":true,"date":1700000000000,"text":""#;
    let tail = r#""}}"#;
    let mut s = String::with_capacity(n.max(head.len() + tail.len()));
    s.push_str(head);
    while s.len() + tail.len() < n {
        s.push('x');
    }
    s.push_str(tail);
    if s.len() > n {
        // Smaller than the JSON skeleton: plain filler.
        s = "x".repeat(n);
    }
    Bytes::from(s)
}

/// What every publisher shares.
#[derive(Clone)]
struct Load {
    tokens: Arc<Vec<String>>,
    body: Bytes,
    window: Window,
    stop: Arc<AtomicBool>,
    stride: usize,
    msg_id: bool,
}

/// One connection's publisher: publish until `stop` or the window's end; each ack future
/// goes, in order, to the collector (the async-nats context bounds how many are pending).
async fn publish(
    js: jetstream::Context,
    conn: usize,
    load: Load,
    acks: mpsc::Sender<(Instant, PublishAckFuture)>,
) -> anyhow::Result<u64> {
    let Load {
        tokens,
        body,
        window,
        stop,
        stride,
        msg_id,
    } = load;
    let mut i = conn;
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < window.end {
        let tok = &tokens[i % tokens.len()];
        i += stride;
        let subject = subjects::room(tok);
        let fut = if !msg_id {
            js.publish(subject, body.clone()).await
        } else {
            let uuid = uuid::Uuid::new_v4().to_string();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", subjects::msg_id(tok, &uuid).as_str());
            js.publish_with_headers(subject, headers, body.clone())
                .await
        }
        .context("publish")?;
        sent += 1;
        if acks.send((Instant::now(), fut)).await.is_err() {
            break;
        }
    }
    Ok(sent)
}

/// One connection's ack collector: acks arrive in publish order on a connection, so they
/// are awaited in that order and timed when each resolves.
async fn collect(
    mut rx: mpsc::Receiver<(Instant, PublishAckFuture)>,
    window: Window,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Tally> {
    let mut t = Tally::new()?;
    while let Some((sent, fut)) = rx.recv().await {
        let res = fut.await;
        let now = Instant::now();
        match res {
            Ok(_) => {
                t.acked_total += 1;
                // Once stopped (the window ended or the stream filled up), acks are no
                // longer part of the measured rate.
                if now >= window.start && now < window.end && !stop.load(Ordering::Relaxed) {
                    let us = now.saturating_duration_since(sent).as_micros() as u64;
                    t.hist.saturating_record(us.max(1));
                }
            }
            Err(e) => {
                let text = e.to_string();
                if text.contains("maximum bytes") {
                    // discard:new refused it (the edge answers -32010): stop publishing.
                    t.full_errors += 1;
                    stop.store(true, Ordering::Relaxed);
                } else if matches!(e.kind(), jetstream::context::PublishErrorKind::TimedOut) {
                    t.timeouts += 1;
                } else {
                    t.other_errors += 1;
                }
                if t.first_error.is_none() {
                    t.first_error = Some(text);
                }
            }
        }
    }
    Ok(t)
}

/// The servers under test: their client URLs and (name, pid) for CPU accounting.
struct Servers {
    _single: Option<NatsServer>,
    _cluster: Option<NatsCluster>,
    urls: Vec<String>,
    procs: Vec<(String, u32)>,
    /// nats-server `server_name` → our process name.
    names: Vec<(String, String)>,
}

async fn start_servers(cluster: bool) -> Servers {
    if cluster {
        let mut c = NatsCluster::start(3).await;
        let urls = c.nodes.iter().map(NatsServer::url).collect();
        let mut procs = Vec::new();
        let mut names = Vec::new();
        for (i, n) in c.nodes.iter_mut().enumerate() {
            if let Some(p) = n.proc().pid() {
                procs.push((format!("nats-{i}"), p));
            }
            // The cluster template names node i `n<i>`.
            names.push((format!("n{i}"), format!("nats-{i}")));
        }
        Servers {
            _single: None,
            _cluster: Some(c),
            urls,
            procs,
            names,
        }
    } else {
        let mut n = NatsServer::start().await;
        let urls = vec![n.url()];
        // The single-node template names the server `test-<port>`.
        let names = vec![(format!("test-{}", n.port), "nats".to_string())];
        let procs = n
            .proc()
            .pid()
            .map(|p| vec![("nats".to_string(), p)])
            .unwrap_or_default();
        Servers {
            _single: Some(n),
            _cluster: None,
            urls,
            procs,
            names,
        }
    }
}

/// Create CHAT (retrying while a fresh cluster elects its meta leader) and wait until the
/// stream has a leader.
async fn ensure_stream(
    js: &jetstream::Context,
    args: &natter_bus::StreamArgs,
    quiet: bool,
) -> anyhow::Result<jetstream::stream::Info> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            natter_bus::ensure_chat_stream(js, args)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut s = js.get_stream(subjects::STREAM).await.context("get CHAT")?;
            let info = s.info().await.context("CHAT info")?.clone();
            let led = info
                .cluster
                .as_ref()
                .map(|c| c.leader.is_some())
                .unwrap_or(true);
            if !led {
                bail!("CHAT has no leader yet");
            }
            Ok(info)
        };
        match attempt.await {
            Ok(info) => return Ok(info),
            Err(e) if Instant::now() < deadline => {
                if !quiet {
                    eprintln!("  waiting for the CHAT stream: {e:#}");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn stream_info(js: &jetstream::Context) -> anyhow::Result<jetstream::stream::Info> {
    let s = js.get_stream(subjects::STREAM).await.context("get CHAT")?;
    s.get_info().await.context("CHAT info")
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.seconds == 0 || args.subjects == 0 || args.connections == 0 || args.inflight == 0 {
        bail!("--seconds, --subjects, --connections and --inflight must be at least 1");
    }
    let quiet = args.json;
    let say = |s: String| {
        if !quiet {
            eprintln!("{s}");
        }
    };
    let replicas = if args.cluster { 3 } else { 1 };
    say(if args.cluster {
        "starting a 3-node nats-server cluster (R3 CHAT)...".into()
    } else {
        "starting one nats-server (R1 CHAT)...".into()
    });
    let servers = start_servers(args.cluster).await;
    let admin = natter_bus::connect(
        &servers.urls.join(","),
        "natter-bench stream-ceiling",
        Duration::from_secs(30),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let admin_js = jetstream::new(admin.clone());
    let mut stream_args = natter_bus::StreamArgs {
        stream_replicas: replicas,
        ..Default::default()
    };
    if let Some(b) = args.max_bytes {
        stream_args.stream_max_bytes = b;
    }
    let info = ensure_stream(&admin_js, &stream_args, quiet).await?;
    let max_bytes = info.config.max_bytes;

    let tokens: Arc<Vec<String>> = Arc::new(
        (0..args.subjects)
            .map(|r| token::encode(&format!("ceiling room {r}")))
            .collect(),
    );
    let body = payload(args.payload);
    let per_conn = (args.inflight / args.connections).max(1);

    let mut clients = Vec::new();
    for c in 0..args.connections {
        let url = &servers.urls[c % servers.urls.len()];
        let client = async_nats::connect(url.as_str())
            .await
            .with_context(|| format!("connect publisher {c} to {url}"))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(30))
            .max_ack_inflight(per_conn)
            .backpressure_on_inflight(true)
            .build(client.clone());
        clients.push((client, js));
    }

    let t0 = Instant::now();
    let window = Window {
        start: t0 + Duration::from_secs(args.warmup),
        end: t0 + Duration::from_secs(args.warmup + args.seconds),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let load = Load {
        tokens: tokens.clone(),
        body,
        window,
        stop: stop.clone(),
        stride: args.connections,
        msg_id: !args.no_msg_id,
    };
    let mut publishers = Vec::new();
    let mut collectors = Vec::new();
    for (c, (_, js)) in clients.iter().enumerate() {
        let (tx, rx) = mpsc::channel(per_conn);
        collectors.push(tokio::spawn(collect(rx, window, stop.clone())));
        publishers.push(tokio::spawn(publish(js.clone(), c, load.clone(), tx)));
    }
    say(format!(
        "publishing {} B messages over {} subjects from {} connections, {} in flight each; warm-up {} s, measuring {} s",
        args.payload, args.subjects, args.connections, per_conn, args.warmup, args.seconds
    ));

    // Watch the stream's fill while publishing (4 times a second, printed every second) and
    // stop before discard:new would refuse; CPU snapshots at the window's edges.
    let mut before = None;
    let mut stopped_early: Option<(Instant, &str)> = None;
    let (mut last_bytes, mut last_msgs) = (info.state.bytes, info.state.messages);
    let mut last_at = Instant::now();
    let mut last_print = Instant::now();
    let mut fill_max: f64 = 0.0;
    loop {
        let now = Instant::now();
        if before.is_none() && now >= window.start {
            before = Some(report::cpu_snapshot(&servers.procs));
        }
        if now >= window.end {
            break;
        }
        if stop.load(Ordering::Relaxed) {
            // A collector saw "maximum bytes exceeded".
            stopped_early = Some((now, "publishes refused: maximum bytes exceeded"));
            break;
        }
        let next = if before.is_none() {
            window.start
        } else {
            window.end
        };
        tokio::time::sleep_until(next.min(now + Duration::from_millis(250)).into()).await;
        if Instant::now() >= window.end {
            continue;
        }
        let i = match stream_info(&admin_js).await {
            Ok(i) => i,
            Err(e) => {
                say(format!("  stream info failed: {e:#}"));
                continue;
            }
        };
        let dt = last_at.elapsed().as_secs_f64().max(1e-3);
        let byte_rate = i.state.bytes.saturating_sub(last_bytes) as f64 / dt;
        let fill = i.state.bytes as f64 / max_bytes.max(1) as f64;
        // Where the stream will be by the next look, with some margin.
        let projected = (i.state.bytes as f64 + byte_rate * 0.75) / max_bytes.max(1) as f64;
        fill_max = fill_max.max(fill);
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            say(format!(
                "  t={:>4.1}s stored {:>10} msgs ({:>8} msg/s), {:.1} MiB = {:.2}% of max bytes",
                t0.elapsed().as_secs_f64(),
                thousands(i.state.messages as f64),
                thousands(i.state.messages.saturating_sub(last_msgs) as f64 / dt),
                i.state.bytes as f64 / 1048576.0,
                fill * 100.0
            ));
        }
        (last_bytes, last_msgs, last_at) = (i.state.bytes, i.state.messages, Instant::now());
        if projected >= 0.9 {
            say("  the stream is about to be 90% full: stopping before discard:new refuses publishes".into());
            stop.store(true, Ordering::Relaxed);
            stopped_early = Some((Instant::now(), "the stream reached 90% of max bytes"));
            break;
        }
    }
    let stopped_full = stopped_early.map(|(t, _)| t);
    let measured_end = stopped_full.unwrap_or(window.end).min(window.end);
    let mut r = Report::new("stream-ceiling");
    match &before {
        Some(b) => r.cpu(&servers.procs, b),
        None => say("the run stopped before the measured window began: no CPU figures".into()),
    }
    stop.store(true, Ordering::Relaxed);

    let mut sent = 0u64;
    for p in publishers {
        sent += p.await.context("publisher task")??;
    }
    let mut tally = Tally::new()?;
    for c in collectors {
        tally.merge(c.await.context("collector task")??)?;
    }
    let end = stream_info(&admin_js).await?;

    let secs = measured_end
        .saturating_duration_since(window.start)
        .as_secs_f64()
        .max(1e-9);
    let acked_in_window = tally.hist.len();
    let rate = acked_in_window as f64 / secs;
    let leader = end
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .map(|l| {
            servers
                .names
                .iter()
                .find(|(n, _)| *n == l)
                .map(|(_, p)| p.clone())
                .unwrap_or(l)
        });

    r.set(
        "setup",
        json!({
            "nats": if args.cluster { "3-node cluster" } else { "1 node" },
            "replicas": replicas,
            "leader": leader,
            "connections": args.connections,
            "inflight": per_conn * args.connections,
            "subjects": args.subjects,
            "payload_bytes": args.payload,
            "msg_id": !args.no_msg_id,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        }),
    );
    r.set("measured_s", round(secs, 2));
    r.set("acked_in_window", acked_in_window);
    r.set("acked_per_s", round(rate, 0));
    r.latency("publish_ack", &tally.hist);
    r.set("published_total", sent);
    r.set("acked_total", tally.acked_total);
    r.set(
        "errors",
        json!({
            "max_bytes_exceeded": tally.full_errors,
            "timed_out": tally.timeouts,
            "other": tally.other_errors,
            "first": tally.first_error,
        }),
    );
    // Where the CPU went, per acked message: the per-core figure for sizing.
    let nats_cpu: f64 = match r.figures.get("cpu_seconds") {
        Some(serde_json::Value::Object(m)) => m
            .iter()
            .filter(|(k, _)| k.starts_with("nats"))
            .filter_map(|(_, v)| v.as_f64())
            .sum(),
        _ => 0.0,
    };
    if nats_cpu > 0.0 && acked_in_window > 0 {
        r.set(
            "nats_cpu",
            json!({
                "seconds_all_nodes": round(nats_cpu, 2),
                "us_per_acked_msg": round(nats_cpu * 1e6 / acked_in_window as f64, 1),
                "acked_per_core_s": round(acked_in_window as f64 / nats_cpu, 0),
            }),
        );
    }
    let stored = end.state.messages.saturating_sub(info.state.messages);
    let bytes_per_msg = end.state.bytes.saturating_sub(info.state.bytes) / stored.max(1);
    let fill = end.state.bytes as f64 / max_bytes.max(1) as f64;
    r.set(
        "stream",
        json!({
            "stored_msgs": stored,
            "stored_equals_acked": stored == tally.acked_total,
            "bytes": end.state.bytes,
            "bytes_per_msg": bytes_per_msg,
            "max_bytes": max_bytes,
            "fill_pct": round(fill.max(fill_max) * 100.0, 3),
            "stopped_early": stopped_early.map(|(_, why)| why),
            // How long an empty stream lasts at this rate with the archiver stalled (it
            // trims only what it has stored).
            "seconds_to_full_at_rate": if rate > 0.0 && bytes_per_msg > 0 {
                round(max_bytes as f64 / (bytes_per_msg as f64 * rate), 0)
            } else { 0.0 },
        }),
    );
    if !quiet {
        println!();
    }
    r.print(args.json);
    drop(clients);
    drop(admin);
    drop(servers);
    if tally.full_errors > 0 {
        bail!(
            "{} publishes refused with 'maximum bytes exceeded': the CHAT stream filled up (raise --max-bytes or shorten --seconds)",
            tally.full_errors
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_asked_size() {
        for n in [1, 10, 100, 300, 1000] {
            assert_eq!(payload(n).len(), n, "{n}");
        }
        assert!(serde_json::from_slice::<serde_json::Value>(&payload(300)).is_ok());
    }
}
