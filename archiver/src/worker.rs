//! The consumer loop: fetch a batch from the `archiver` durable pull consumer, write it to
//! Postgres in one statement (one transaction), and ack each message only after the commit.
//!
//! One fetcher per replica hands batches to `writers` concurrent writer tasks. It fetches
//! only when a writer is free, so every fetched message is owned by a writer that keeps it
//! alive: while Postgres is down a writer holds its batch in memory, retries with capped
//! exponential backoff, and sends in-progress acks (`+WPI`) every third of `ack_wait` so
//! the server does not redeliver it meanwhile. Nothing is acked before it is committed, so
//! a crash at any point only causes redelivery, which the idempotent insert absorbs.
//!
//! A batch the database rejects as data (not as unavailability) is split in halves until
//! the offending rows are isolated; those are skipped as poison (logged, counted, acked),
//! so one bad message never blocks the consumer.
//!
//! The consumer itself (its definition, creation and lag) is [`crate::consumer`]'s.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::consumer::ensure_consumer;
use crate::metrics::Metrics;
use crate::record::{self, Poison, Row};
use crate::store::Store;

/// What the consumer loop needs.
#[derive(Clone)]
pub struct WorkerConfig {
    pub consumer: String,
    pub batch_size: usize,
    pub fetch_wait: Duration,
    pub writers: usize,
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
    pub retry_max: Duration,
}

/// How a batch ended.
enum Outcome {
    /// Committed: rows inserted, and the sequences rejected as poison by the database.
    Committed { inserted: u64, rejected: Vec<i64> },
    /// Shutdown came while the batch was still uncommitted.
    Abandoned,
}

/// Fetch and archive until `shutdown` turns true, then let the writers finish.
pub async fn run(
    js: jetstream::Context,
    mut consumer: PullConsumer,
    store: Store,
    metrics: Arc<Metrics>,
    cfg: WorkerConfig,
    shutdown: watch::Receiver<bool>,
    drain_timeout: Duration,
) {
    let permits = Arc::new(Semaphore::new(cfg.writers.max(1)));
    let mut writers = JoinSet::new();
    let mut fetch_errors: u32 = 0;
    let mut shutdown_rx = shutdown.clone();
    loop {
        if *shutdown_rx.borrow() {
            break;
        }
        // Only fetch when a writer is free to own the batch.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown_rx.changed() => break,
        };
        // Reap finished writers so the set does not grow.
        while writers.try_join_next().is_some() {}
        let started = Instant::now();
        let batch = tokio::select! {
            b = natter_bus::pull::fetch_batch(&consumer, cfg.batch_size, cfg.fetch_wait) => b,
            _ = shutdown_rx.changed() => break,
        };
        match batch {
            Ok(msgs) if msgs.is_empty() => {
                fetch_errors = 0;
                drop(permit);
                // The server answers at once when other replicas' requests already cover
                // what is pending: poll again shortly rather than spin.
                if started.elapsed() < cfg.fetch_wait / 2 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Ok(msgs) => {
                fetch_errors = 0;
                let store = store.clone();
                let metrics = metrics.clone();
                let cfg = cfg.clone();
                let shutdown = shutdown.clone();
                writers.spawn(async move {
                    write_batch(msgs, &store, &metrics, &cfg, shutdown).await;
                    drop(permit);
                });
            }
            Err(e) => {
                drop(permit);
                metrics.nats_errors.inc();
                fetch_errors = fetch_errors.saturating_add(1);
                let delay = backoff(fetch_errors, Duration::from_millis(100), cfg.retry_max);
                tracing::warn!(error = %e, retry_in = ?delay, "fetching from the archiver consumer failed");
                // The consumer may have been deleted (or the stream recreated): every few
                // failures, create it again.
                if fetch_errors.is_multiple_of(5) {
                    match ensure_consumer(&js, &cfg).await {
                        Ok(c) => consumer = c,
                        Err(e) => {
                            tracing::warn!(error = %e, "re-creating the archiver consumer failed")
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown_rx.changed() => break,
                }
            }
        }
    }
    tracing::info!(
        in_flight = writers.len(),
        "consumer loop stopping; waiting for in-flight batches"
    );
    let drained = tokio::time::timeout(drain_timeout, async {
        while writers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("in-flight batches did not finish in time; they will be redelivered");
        writers.abort_all();
    }
}

fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(max)
}

/// Parse, write, then ack (or, on shutdown before commit, nak) one fetched batch.
async fn write_batch(
    msgs: Vec<jetstream::Message>,
    store: &Store,
    metrics: &Metrics,
    cfg: &WorkerConfig,
    shutdown: watch::Receiver<bool>,
) {
    let mut rows = Vec::with_capacity(msgs.len());
    let mut poisoned = 0u64;
    for m in &msgs {
        let (seq, published_us, delivered) = match m.info() {
            Ok(info) => (
                info.stream_sequence,
                (info.published.unix_timestamp_nanos() / 1_000) as i64,
                info.delivered,
            ),
            Err(e) => {
                // Not a JetStream delivery (no ack subject): nothing to archive or ack.
                tracing::warn!(error = %e, subject = %m.subject, "message without JetStream metadata skipped");
                poisoned += 1;
                continue;
            }
        };
        if delivered > 1 {
            metrics.redeliveries.inc();
        }
        match record::parse(seq, &m.subject, &m.payload, published_us) {
            Ok(row) => rows.push(row),
            Err(p) => {
                poisoned += 1;
                log_poison(seq, &m.subject, p, m.payload.len());
            }
        }
    }
    // Ascending _id: within a batch the oldest of two same-uuid messages wins (across
    // concurrent batches, whichever commits first), and concurrent writers take
    // row locks in the same order.
    rows.sort_unstable_by_key(|r| r.seq);

    let started = Instant::now();
    let outcome = {
        let keepalive = keep_alive(&msgs, cfg.ack_wait / 3, metrics);
        tokio::pin!(keepalive);
        let write = write_rows(&rows, store, metrics, cfg.retry_max, shutdown);
        tokio::pin!(write);
        tokio::select! {
            o = &mut write => o,
            _ = &mut keepalive => Outcome::Abandoned, // never completes
        }
    };
    match outcome {
        Outcome::Committed { inserted, rejected } => {
            let elapsed = started.elapsed();
            metrics.batches.inc();
            metrics.batch_size.observe_value(rows.len() as f64);
            metrics.batch_latency.observe(elapsed);
            metrics.rows_written.inc_by(inserted);
            let poison_total = poisoned + rejected.len() as u64;
            metrics.poison.inc_by(poison_total);
            let archived = rows.len() as u64 - rejected.len() as u64;
            metrics.duplicates.inc_by(archived.saturating_sub(inserted));
            if let Some(last) = rows.last() {
                metrics
                    .last_archived_seq
                    .inner()
                    .fetch_max(last.seq, Ordering::Relaxed);
            }
            let mut ack_errors = 0u64;
            for m in &msgs {
                if m.ack().await.is_err() {
                    ack_errors += 1;
                }
            }
            if ack_errors > 0 {
                metrics.nats_errors.inc_by(ack_errors);
                tracing::warn!(ack_errors, "acks failed after commit; those messages will be redelivered and skipped as duplicates");
            }
            metrics
                .messages_acked
                .inc_by(msgs.len() as u64 - ack_errors);
            tracing::debug!(
                messages = msgs.len(),
                inserted,
                duplicates = archived.saturating_sub(inserted),
                poison = poison_total,
                ms = elapsed.as_millis() as u64,
                "batch committed"
            );
        }
        Outcome::Abandoned => {
            tracing::info!(
                messages = msgs.len(),
                "shutting down with an uncommitted batch; returning it for redelivery"
            );
            for m in &msgs {
                let _ = m.ack_with(AckKind::Nak(None)).await;
            }
        }
    }
}

fn log_poison(seq: u64, subject: &str, p: Poison, len: usize) {
    tracing::warn!(
        seq,
        subject,
        reason = p.reason(),
        bytes = len,
        "poison message skipped: {p}"
    );
}

/// Send in-progress acks for `msgs` every `every`, forever.
async fn keep_alive(msgs: &[jetstream::Message], every: Duration, metrics: &Metrics) {
    let every = every.max(Duration::from_millis(100));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let mut failed = 0u64;
        for m in msgs {
            if m.ack_with(AckKind::Progress).await.is_err() {
                failed += 1;
            }
        }
        if failed > 0 {
            metrics.nats_errors.inc_by(failed);
        }
        tracing::debug!(
            messages = msgs.len(),
            "batch kept alive while its insert is retried"
        );
    }
}

/// Write `rows`, retrying while the database is unavailable and isolating rows it rejects.
/// Each piece written is one statement, hence one transaction.
async fn write_rows(
    rows: &[Row],
    store: &Store,
    metrics: &Metrics,
    retry_max: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Outcome {
    let mut inserted = 0u64;
    let mut rejected = Vec::new();
    let mut work: Vec<&[Row]> = vec![rows];
    let mut retrying = false;
    let mut attempt: u32 = 0;
    while let Some(piece) = work.pop() {
        loop {
            match store.insert(piece).await {
                Ok(n) => {
                    inserted += n;
                    attempt = 0;
                    metrics.db_up.set(1);
                    break;
                }
                Err(e) if e.is_rejection() => {
                    metrics.db_errors.inc();
                    if piece.len() == 1 {
                        let r = &piece[0];
                        tracing::warn!(seq = r.seq, room = %r.room, error = %e, reason = Poison::Rejected.reason(), "poison message skipped: the database rejected it");
                        rejected.push(r.seq);
                    } else {
                        let (a, b) = piece.split_at(piece.len() / 2);
                        work.push(b);
                        work.push(a);
                    }
                    break;
                }
                Err(e) => {
                    metrics.db_errors.inc();
                    metrics.db_up.set(0);
                    attempt = attempt.saturating_add(1);
                    if !retrying {
                        retrying = true;
                        metrics.batches_retrying.inc();
                    }
                    let delay = backoff(attempt, Duration::from_millis(100), retry_max);
                    tracing::warn!(error = %e, rows = piece.len(), attempt, retry_in = ?delay, "writing a batch failed; keeping it and retrying");
                    if *shutdown.borrow() {
                        return abandon(metrics, retrying);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return abandon(metrics, retrying),
                    }
                }
            }
        }
    }
    if retrying {
        metrics.batches_retrying.dec();
        tracing::info!(rows = rows.len(), "batch written after retries");
    }
    Outcome::Committed { inserted, rejected }
}

fn abandon(metrics: &Metrics, retrying: bool) -> Outcome {
    if retrying {
        metrics.batches_retrying.dec();
    }
    Outcome::Abandoned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_exponential() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        assert_eq!(backoff(1, base, max), Duration::from_millis(100));
        assert_eq!(backoff(2, base, max), Duration::from_millis(200));
        assert_eq!(backoff(4, base, max), Duration::from_millis(800));
        assert_eq!(backoff(10, base, max), max);
        assert_eq!(backoff(u32::MAX, base, max), max);
    }
}
