//! The archiver's metrics: plain atomics, rendered by hand in the Prometheus text format
//! (version 0.0.4) for `GET /metrics`.
//!
//! Counters only grow; gauges are set by whoever knows the value (the lag monitor, the
//! workers). Histograms use fixed buckets chosen for this workload.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A cumulative histogram with fixed upper bounds. The sum is kept in micro-units so that it
/// can live in an atomic integer.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        for (b, bucket) in self.bounds.iter().zip(&self.buckets) {
            if v <= *b {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        // Negative or NaN observations do not occur here; clamp them to 0 all the same.
        let micros = if v.is_finite() && v > 0.0 {
            (v * 1e6) as u64
        } else {
            0
        };
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (b, bucket) in self.bounds.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0];
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Everything the archiver measures.
#[derive(Debug)]
pub struct Metrics {
    /// Rows inserted (duplicates not counted).
    pub rows_written: Counter,
    /// Messages acknowledged after their batch committed (inserted, duplicate or poison).
    pub messages_acked: Counter,
    /// Messages that were already archived (same `_id`, or same room and uuid).
    pub duplicates: Counter,
    /// Messages that could not be archived and were skipped (logged, then acked).
    pub poison: Counter,
    /// Messages delivered more than once by the consumer.
    pub redeliveries: Counter,
    /// Batches committed.
    pub batches: Counter,
    /// Failed database operations (inserts retried, history queries failed, pings failed).
    pub db_errors: Counter,
    /// Failed NATS operations (fetches, acks, consumer info).
    pub nats_errors: Counter,
    /// Rows per committed batch.
    pub batch_size: Histogram,
    /// Seconds from the start of a batch's first insert attempt to its commit (successful attempt).
    pub batch_latency: Histogram,
    /// Consumer messages not yet delivered (`num_pending`).
    pub consumer_pending: Gauge,
    /// Consumer messages delivered and not yet acknowledged (`num_ack_pending`).
    pub consumer_ack_pending: Gauge,
    /// Batches held in memory while their insert is being retried.
    pub batches_retrying: Gauge,
    /// Highest stream sequence committed by this process.
    pub last_archived_seq: Gauge,
    /// 1 while the last database operation succeeded, 0 after a failure.
    pub db_up: Gauge,
    pub history_requests: Counter,
    pub history_errors: Counter,
    pub history_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            rows_written: Counter::default(),
            messages_acked: Counter::default(),
            duplicates: Counter::default(),
            poison: Counter::default(),
            redeliveries: Counter::default(),
            batches: Counter::default(),
            db_errors: Counter::default(),
            nats_errors: Counter::default(),
            batch_size: Histogram::new(BATCH_SIZE_BUCKETS),
            batch_latency: Histogram::new(SECONDS_BUCKETS),
            consumer_pending: Gauge::default(),
            consumer_ack_pending: Gauge::default(),
            batches_retrying: Gauge::default(),
            last_archived_seq: Gauge::default(),
            db_up: Gauge::default(),
            history_requests: Counter::default(),
            history_errors: Counter::default(),
            history_latency: Histogram::new(SECONDS_BUCKETS),
        }
    }
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    let _ = writeln!(out, "{name} {v}");
}

fn gauge(out: &mut String, name: &str, help: &str, v: i64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {v}");
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self, nats_up: bool) -> String {
        let mut o = String::with_capacity(4096);
        let p = "natter_archiver";
        counter(
            &mut o,
            &format!("{p}_rows_written_total"),
            "Rows inserted into Postgres (duplicates not counted).",
            self.rows_written.get(),
        );
        counter(
            &mut o,
            &format!("{p}_messages_acked_total"),
            "Messages acknowledged after their batch committed.",
            self.messages_acked.get(),
        );
        counter(
            &mut o,
            &format!("{p}_duplicates_total"),
            "Messages already archived (same _id, or same room and uuid).",
            self.duplicates.get(),
        );
        counter(
            &mut o,
            &format!("{p}_poison_total"),
            "Messages that could not be archived, logged and skipped.",
            self.poison.get(),
        );
        counter(
            &mut o,
            &format!("{p}_redeliveries_total"),
            "Messages the consumer delivered more than once.",
            self.redeliveries.get(),
        );
        counter(
            &mut o,
            &format!("{p}_batches_total"),
            "Batches committed.",
            self.batches.get(),
        );
        counter(
            &mut o,
            &format!("{p}_db_errors_total"),
            "Failed database operations.",
            self.db_errors.get(),
        );
        counter(
            &mut o,
            &format!("{p}_nats_errors_total"),
            "Failed NATS operations.",
            self.nats_errors.get(),
        );
        self.batch_size.render(
            &mut o,
            &format!("{p}_batch_size"),
            "Rows per committed batch.",
        );
        self.batch_latency.render(
            &mut o,
            &format!("{p}_batch_latency_seconds"),
            "Seconds to write and commit one batch.",
        );
        let pending = self.consumer_pending.get();
        let ack_pending = self.consumer_ack_pending.get();
        gauge(
            &mut o,
            &format!("{p}_consumer_lag"),
            "Messages of the archiver consumer not yet archived (num_pending + num_ack_pending).",
            pending + ack_pending,
        );
        gauge(
            &mut o,
            &format!("{p}_consumer_pending"),
            "Messages of the archiver consumer not yet delivered (num_pending).",
            pending,
        );
        gauge(
            &mut o,
            &format!("{p}_consumer_ack_pending"),
            "Messages delivered and not yet acknowledged (num_ack_pending).",
            ack_pending,
        );
        gauge(
            &mut o,
            &format!("{p}_batches_retrying"),
            "Batches held in memory while the database is unavailable.",
            self.batches_retrying.get(),
        );
        gauge(
            &mut o,
            &format!("{p}_last_archived_seq"),
            "Highest stream sequence committed by this process.",
            self.last_archived_seq.get(),
        );
        gauge(
            &mut o,
            &format!("{p}_db_up"),
            "1 while the last database operation succeeded.",
            self.db_up.get(),
        );
        gauge(
            &mut o,
            &format!("{p}_nats_up"),
            "1 while connected to NATS.",
            i64::from(nats_up),
        );
        counter(
            &mut o,
            &format!("{p}_history_requests_total"),
            "History requests answered.",
            self.history_requests.get(),
        );
        counter(
            &mut o,
            &format!("{p}_history_errors_total"),
            "History requests answered with an error.",
            self.history_errors.get(),
        );
        self.history_latency.render(
            &mut o,
            &format!("{p}_history_latency_seconds"),
            "Seconds to answer one history request.",
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let m = Metrics::default();
        m.rows_written.add(5);
        m.consumer_pending.set(3);
        m.consumer_ack_pending.set(2);
        m.batch_size.observe(100.0);
        m.batch_size.observe(3000.0);
        let text = m.render(true);
        assert!(text.contains("natter_archiver_rows_written_total 5\n"));
        assert!(text.contains("natter_archiver_consumer_lag 5\n"));
        assert!(text.contains("natter_archiver_batch_size_bucket{le=\"100\"} 1\n"));
        assert!(text.contains("natter_archiver_batch_size_bucket{le=\"5000\"} 2\n"));
        assert!(text.contains("natter_archiver_batch_size_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("natter_archiver_batch_size_sum 3100\n"));
        assert!(text.contains("natter_archiver_nats_up 1\n"));
    }
}
