//! Scenario `archiver`: how fast natter-archiver writes the CHAT stream to Postgres, and how
//! far behind it runs.
//!
//! Starts its own nats-server, Postgres and natter-archiver (through natter-testkit), then
//! publishes `--messages` stored-shape room messages across `--rooms` rooms, at full speed
//! or at `--rate` messages/s, with `Nats-Msg-Id` like the edge does. It measures:
//!
//! - throughput: rows committed per second from the first commit to the last (from the
//!   rows' `archived_at`, the start of the statement that wrote them);
//! - lag: for one message in `--sample-every`, the time from its publish ack to its row
//!   being visible in Postgres (polled every `--poll-ms`, which bounds the resolution);
//! - the consumer lag (pending + unacked messages) the archiver reports, its maximum;
//! - exactly once: rows in the archive versus messages published.
//!
//! With `--preload` everything is published before the archiver starts: a pure catch-up
//! throughput figure (lag is then not sampled).
//!
//! Why ~550 lines: a self-contained scenario (its own topology, load and lag sampling) that
//! no other scenario shares.

use std::collections::VecDeque;
use std::future::IntoFuture as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use natter_bus::subjects;
use natter_protocol::token;
use natter_testkit::{NatsServer, Postgres, Service};
use serde::Serialize;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row as _;
use tokio::sync::mpsc;

use crate::report::{thousands, Latency};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Messages to publish.
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,
    /// Rooms the messages are spread over (round robin).
    #[arg(long, default_value_t = 100)]
    pub rooms: u64,
    /// Publish rate in messages/s; 0 publishes as fast as the server acks.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Publishes awaiting their ack at most at once.
    #[arg(long, default_value_t = 2048)]
    pub in_flight: usize,
    /// Sample the lag of one message in this many.
    #[arg(long, default_value_t = 100)]
    pub sample_every: u64,
    /// How often sampled rows are looked up in Postgres, in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub poll_ms: u64,
    /// Characters of text per message.
    #[arg(long, default_value_t = 64)]
    pub text_len: usize,
    /// Publish everything first, then start the archiver (catch-up throughput).
    #[arg(long)]
    pub preload: bool,
    /// The archiver's --batch-size (its default when absent).
    #[arg(long)]
    pub batch_size: Option<u32>,
    /// The archiver's --writers (its default when absent).
    #[arg(long)]
    pub writers: Option<u32>,
    /// Number of archiver replicas sharing the consumer.
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// Extra argument passed to every archiver (repeatable), e.g. --archiver-arg=--fetch-wait-ms=200.
    #[arg(long = "archiver-arg", allow_hyphen_values = true)]
    pub archiver_args: Vec<String>,
    /// Give up waiting for the archive after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Use this Postgres server instead of starting a private one (whose fsync is off): a
    /// fresh database `natter_bench_<timestamp>` is created on it for the run and left behind.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    messages: u64,
    rooms: u64,
    mode: &'static str,
    target_rate: u64,
    replicas: u32,
    archiver_args: Vec<String>,
    cpus: usize,
    publish_secs: f64,
    publish_rate: f64,
    rows: i64,
    missing: i64,
    duplicates: i64,
    archive_secs: f64,
    rows_per_sec: f64,
    lag: Latency,
    lag_resolution_ms: u64,
    consumer_lag_max: f64,
    consumer_lag_end: f64,
    batches: f64,
    mean_batch_rows: f64,
}

/// A stored-shape room message (no `_id`), as the edge publishes it.
fn payload(room: &str, uuid: &str, i: u64, text: &str) -> String {
    serde_json::json!({
        "jsonrpc": "2.0",
        "method": "textMessage",
        "params": {
            "userId": format!("user-{}", i % 1000),
            "userName": format!("User {}", i % 1000),
            "roomName": room,
            "text": text,
            "ack": true,
            "uuid": uuid,
            "date": 1_700_000_000_000u64 + i,
            "ts": "2026-11-25T02:00:00.123Z"
        },
        "id": i
    })
    .to_string()
}

/// A sampled message: its stream sequence and when its publish was acked.
type Sample = (u64, Instant);

async fn publish_all(
    js: jetstream::Context,
    args: Args,
    samples: Option<mpsc::UnboundedSender<Sample>>,
) -> anyhow::Result<Duration> {
    let rooms: Vec<(String, String)> = (0..args.rooms.max(1))
        .map(|r| {
            let name = format!("bench room {r}");
            let tok = token::encode(&name);
            (name, tok)
        })
        .collect();
    let text: String = "lorem ipsum dolor sit amet "
        .chars()
        .cycle()
        .take(args.text_len)
        .collect();
    let mut window = VecDeque::with_capacity(args.in_flight);
    let started = Instant::now();
    for i in 0..args.messages {
        if args.rate > 0 {
            // Pace by schedule: message i is due at i / rate seconds.
            let due = started + Duration::from_secs_f64(i as f64 / args.rate as f64);
            let now = Instant::now();
            if due > now + Duration::from_millis(1) {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let (room, tok) = &rooms[(i % rooms.len() as u64) as usize];
        let uuid = uuid::Uuid::new_v4().to_string();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", subjects::msg_id(tok, &uuid).as_str());
        let fut = js
            .publish_with_headers(
                subjects::room(tok),
                headers,
                payload(room, &uuid, i, &text).into(),
            )
            .await
            .context("publish")?;
        match &samples {
            Some(tx) if i % args.sample_every.max(1) == 0 => {
                // Await sampled acks on their own, so the ack time is not delayed by the window.
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Ok(ack) = fut.await {
                        let _ = tx.send((ack.sequence, Instant::now()));
                    }
                });
            }
            _ => {
                if window.len() >= args.in_flight.max(1) {
                    if let Some(f) = window.pop_front() {
                        await_ack(f).await?;
                    }
                }
                window.push_back(fut);
            }
        }
    }
    for f in window {
        await_ack(f).await?;
    }
    Ok(started.elapsed())
}

async fn await_ack(f: jetstream::context::PublishAckFuture) -> anyhow::Result<u64> {
    let ack = tokio::time::timeout(Duration::from_secs(30), f.into_future())
        .await
        .context("publish ack timed out")?
        .context("publish ack")?;
    Ok(ack.sequence)
}

/// Look sampled rows up until each is found or `deadline`; their lags.
async fn poll_samples(
    db: PgPool,
    mut rx: mpsc::UnboundedReceiver<Sample>,
    every: Duration,
    deadline: Instant,
) -> Vec<Duration> {
    let mut pending: Vec<Sample> = Vec::new();
    let mut lags = Vec::new();
    let mut open = true;
    loop {
        while open {
            match rx.try_recv() {
                Ok(s) => pending.push(s),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        if !open && pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "lag sampling: {} samples never appeared before the deadline",
                pending.len()
            );
            break;
        }
        if !pending.is_empty() {
            let ids: Vec<i64> = pending.iter().map(|(s, _)| *s as i64).collect();
            let found = sqlx::query("SELECT _id FROM messages WHERE _id = ANY($1)")
                .bind(&ids)
                .fetch_all(&db)
                .await;
            let seen = Instant::now();
            if let Ok(rows) = found {
                let found: std::collections::HashSet<i64> =
                    rows.iter().map(|r| r.get::<i64, _>("_id")).collect();
                pending.retain(|(seq, acked)| {
                    if found.contains(&(*seq as i64)) {
                        lags.push(seen.saturating_duration_since(*acked));
                        false
                    } else {
                        true
                    }
                });
            }
        }
        tokio::time::sleep(every).await;
    }
    lags
}

async fn rows_written(svcs: &[Service]) -> f64 {
    let mut total = 0.0;
    for s in svcs {
        total += s
            .metric("natter_archiver_rows_written_total")
            .await
            .unwrap_or(0.0);
    }
    total
}

async fn consumer_lag(svcs: &[Service]) -> f64 {
    match svcs.first() {
        Some(s) => s
            .metric("natter_archiver_consumer_lag")
            .await
            .unwrap_or(0.0),
        None => 0.0,
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.messages == 0 {
        bail!("--messages must be at least 1");
    }
    let quiet = args.json;
    let say = |s: String| {
        if !quiet {
            eprintln!("{s}");
        }
    };
    say("starting nats-server and Postgres...".into());
    let nats = NatsServer::start().await;
    let (private_pg, db_url) = match &args.database_url {
        None => {
            let pg = Postgres::start().await;
            let url = pg.url();
            (Some(pg), url)
        }
        Some(url) => (None, fresh_database(url).await?),
    };
    let client = async_nats::connect(nats.url())
        .await
        .context("connect to NATS")?;
    let js = jetstream::new(client.clone());
    let stream_args = natter_bus::StreamArgs::default();
    natter_bus::ensure_chat_stream(&js, &stream_args)
        .await
        .context("ensure CHAT")?;

    let mut arch_args = vec![
        "--nats-url".to_string(),
        nats.url(),
        "--database-url".to_string(),
        db_url.clone(),
    ];
    if let Some(b) = args.batch_size {
        arch_args.extend(["--batch-size".to_string(), b.to_string()]);
    }
    if let Some(w) = args.writers {
        arch_args.extend(["--writers".to_string(), w.to_string()]);
    }
    arch_args.extend(args.archiver_args.iter().cloned());
    let envs = vec![("RUST_LOG".to_string(), "warn".to_string())];

    let mut publish_secs = 0.0;
    if args.preload {
        say(format!("preloading {} messages...", args.messages));
        publish_secs = publish_all(js.clone(), args.clone(), None)
            .await?
            .as_secs_f64();
    }
    say(format!("starting {} archiver replica(s)...", args.replicas));
    let mut svcs = Vec::new();
    for _ in 0..args.replicas.max(1) {
        svcs.push(Service::start("natter-archiver", &arch_args, &envs).await);
    }
    let db = PgPoolOptions::new()
        .max_connections(2)
        .connect(&db_url)
        .await
        .context("connect to Postgres")?;

    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let (tx, rx) = mpsc::unbounded_channel();
    let poller = (!args.preload).then(|| {
        tokio::spawn(poll_samples(
            db.clone(),
            rx,
            Duration::from_millis(args.poll_ms.max(1)),
            deadline,
        ))
    });
    let publisher =
        (!args.preload).then(|| tokio::spawn(publish_all(js.clone(), args.clone(), Some(tx))));

    // Progress, and the highest consumer lag seen, until every row is archived.
    let started = Instant::now();
    let mut lag_max: f64 = 0.0;
    let mut last_print = Instant::now();
    loop {
        let written = rows_written(&svcs).await;
        let lag = consumer_lag(&svcs).await;
        lag_max = lag_max.max(lag);
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            say(format!(
                "  t={:>5.1}s archived {:>9} rows, consumer lag {:>7}",
                started.elapsed().as_secs_f64(),
                thousands(written),
                thousands(lag)
            ));
        }
        if written >= args.messages as f64 {
            break;
        }
        if Instant::now() >= deadline {
            say("timed out waiting for the archive".into());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(p) = publisher {
        publish_secs = p.await.context("publisher task")??.as_secs_f64();
    }
    let lags = match poller {
        Some(p) => p.await.context("lag poller task")?,
        None => Vec::new(),
    };
    // Let the lag gauge settle (acks, then the next consumer-info read).
    let mut lag_end = consumer_lag(&svcs).await;
    let settle = Instant::now() + Duration::from_secs(10);
    while lag_end > 0.0 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(200)).await;
        lag_end = consumer_lag(&svcs).await;
    }

    let row = sqlx::query(
        "SELECT count(*) AS n, count(DISTINCT (room, uuid)) AS distinct_msgs, \
         COALESCE(EXTRACT(EPOCH FROM max(archived_at) - min(archived_at))::float8, 0) AS span, \
         count(*) FILTER (WHERE archived_at = (SELECT min(archived_at) FROM messages)) AS first_batch, \
         count(DISTINCT archived_at) AS batches \
         FROM messages",
    )
    .fetch_one(&db)
    .await
    .context("archive summary")?;
    let rows: i64 = row.get("n");
    let distinct: i64 = row.get("distinct_msgs");
    let span: f64 = row.get("span");
    let first_batch: i64 = row.get("first_batch");
    let batches: i64 = row.get("batches");
    let rows_per_sec = if span > 0.0 {
        (rows - first_batch) as f64 / span
    } else {
        0.0
    };

    let mut report = Report {
        scenario: "archiver",
        messages: args.messages,
        rooms: args.rooms,
        mode: if args.preload {
            "preload"
        } else if args.rate > 0 {
            "rate"
        } else {
            "full-speed"
        },
        target_rate: args.rate,
        replicas: args.replicas.max(1),
        archiver_args: arch_args.iter().skip(4).cloned().collect(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        publish_secs,
        publish_rate: if publish_secs > 0.0 {
            args.messages as f64 / publish_secs
        } else {
            0.0
        },
        rows,
        missing: (args.messages as i64 - distinct).max(0),
        duplicates: rows - distinct,
        archive_secs: span,
        rows_per_sec,
        lag: Latency::of(&lags),
        lag_resolution_ms: args.poll_ms,
        consumer_lag_max: lag_max,
        consumer_lag_end: lag_end,
        batches: batches as f64,
        mean_batch_rows: if batches > 0 {
            rows as f64 / batches as f64
        } else {
            0.0
        },
    };
    if report.rows_per_sec.is_nan() {
        report.rows_per_sec = 0.0;
    }

    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("encode report")?
        );
    } else {
        print_human(&report);
    }
    drop(svcs);
    db.close().await;
    // Dropping the handle kills the postmaster; its backends exit with it.
    drop(private_pg);
    if report.missing > 0 || report.duplicates > 0 {
        bail!(
            "archive incomplete or duplicated: {} missing, {} duplicates",
            report.missing,
            report.duplicates
        );
    }
    Ok(())
}

/// Create `natter_bench_<unix time>` on the server of `url`; the URL of that database.
async fn fresh_database(url: &str) -> anyhow::Result<String> {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .context("connect to --database-url")?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = format!("natter_bench_{secs}");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .context("create the benchmark database")?;
    admin.close().await;
    // Same server and credentials, other database: replace the path of the URL.
    let (base, _) = url
        .split_once('?')
        .map(|(b, q)| (b, Some(q)))
        .unwrap_or((url, None));
    let root = match base.rfind('/') {
        Some(i) if base[..i].contains("://") && !base[..i].ends_with('/') => &base[..i],
        _ => base,
    };
    Ok(format!("{root}/{name}"))
}

fn print_human(r: &Report) {
    let mode = match r.mode {
        "rate" => format!("paced at {} msg/s", thousands(r.target_rate as f64)),
        "preload" => "preloaded, then archived (catch-up)".to_string(),
        _ => "published at full speed".to_string(),
    };
    println!();
    println!("natter-bench archiver — {} messages over {} rooms, {mode}, {} archiver replica(s), {} CPUs", thousands(r.messages as f64), r.rooms, r.replicas, r.cpus);
    if !r.archiver_args.is_empty() {
        println!("  archiver args: {}", r.archiver_args.join(" "));
    }
    println!(
        "  published     {} msgs in {:.2} s ({} msg/s)",
        thousands(r.messages as f64),
        r.publish_secs,
        thousands(r.publish_rate)
    );
    println!(
        "  archived      {} rows ({} missing, {} duplicates) in {} batches (mean {:.0} rows)",
        thousands(r.rows as f64),
        r.missing,
        r.duplicates,
        thousands(r.batches),
        r.mean_batch_rows
    );
    println!(
        "  throughput    {} rows/s sustained (first → last commit: {:.2} s)",
        thousands(r.rows_per_sec),
        r.archive_secs
    );
    if r.lag.samples > 0 {
        println!(
            "  lag           publish-ack → row visible: {} [resolution {} ms]",
            r.lag.human(),
            r.lag_resolution_ms
        );
    }
    println!(
        "  consumer lag  max {} messages, {} at the end",
        thousands(r.consumer_lag_max),
        thousands(r.consumer_lag_end)
    );
}
