//! The archiver's metrics: one typed field per metric, registered in the service's
//! [`Registry`] at start-up and served at `/metrics` by natter-ops. Names, types and
//! meanings are the contract in `METRICS.md`.
//!
//! Counters only grow; gauges are set by whoever knows the value (the lag monitor, the
//! workers, and `nats_up` sampled at each scrape).

use natter_ops::{buckets, Counter, Gauge, Histogram, Registry};

/// Bucket upper bounds of `natter_archiver_batch_size`, in rows.
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0];

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
    /// Seconds from the start of a batch's first insert attempt to its commit.
    pub batch_latency: Histogram,
    /// `consumer_pending + consumer_ack_pending`, set by the lag monitor.
    pub consumer_lag: Gauge,
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
    /// 1 while connected to NATS (sampled at each scrape).
    pub nats_up: Gauge,
    pub history_requests: Counter,
    pub history_errors: Counter,
    pub history_latency: Histogram,
    /// Archived messages the trimmer removed from the stream.
    pub stream_trimmed: Counter,
    /// Settings of the CHAT stream that differ from this archiver's.
    pub stream_drift: Gauge,
}

impl Metrics {
    /// Declare every metric in `r`.
    pub fn register(r: &mut Registry) -> Metrics {
        Metrics {
            rows_written: r.counter(
                "natter_archiver_rows_written_total",
                "Rows inserted into Postgres (duplicates not counted).",
            ),
            messages_acked: r.counter(
                "natter_archiver_messages_acked_total",
                "Messages acknowledged after their batch committed.",
            ),
            duplicates: r.counter(
                "natter_archiver_duplicates_total",
                "Messages already archived (same _id, or same room and uuid).",
            ),
            poison: r.counter(
                "natter_archiver_poison_total",
                "Messages that could not be archived, logged and skipped.",
            ),
            redeliveries: r.counter(
                "natter_archiver_redeliveries_total",
                "Messages the consumer delivered more than once.",
            ),
            batches: r.counter("natter_archiver_batches_total", "Batches committed."),
            db_errors: r.counter(
                "natter_archiver_db_errors_total",
                "Failed database operations.",
            ),
            nats_errors: r.counter("natter_archiver_nats_errors_total", "Failed NATS operations."),
            batch_size: r.histogram(
                "natter_archiver_batch_size",
                "Rows per committed batch.",
                BATCH_SIZE_BUCKETS,
            ),
            batch_latency: r.histogram(
                "natter_archiver_batch_latency_seconds",
                "Seconds to write and commit one batch.",
                buckets::SLOW_SECONDS,
            ),
            consumer_lag: r.gauge(
                "natter_archiver_consumer_lag",
                "Messages of the archiver consumer not yet archived (num_pending + num_ack_pending).",
            ),
            consumer_pending: r.gauge(
                "natter_archiver_consumer_pending",
                "Messages of the archiver consumer not yet delivered (num_pending).",
            ),
            consumer_ack_pending: r.gauge(
                "natter_archiver_consumer_ack_pending",
                "Messages delivered and not yet acknowledged (num_ack_pending).",
            ),
            batches_retrying: r.gauge(
                "natter_archiver_batches_retrying",
                "Batches held in memory while the database is unavailable.",
            ),
            last_archived_seq: r.gauge(
                "natter_archiver_last_archived_seq",
                "Highest stream sequence committed by this process.",
            ),
            db_up: r.gauge(
                "natter_archiver_db_up",
                "1 while the last database operation succeeded.",
            ),
            nats_up: r.gauge("natter_archiver_nats_up", "1 while connected to NATS."),
            history_requests: r.counter(
                "natter_archiver_history_requests_total",
                "History requests answered.",
            ),
            history_errors: r.counter(
                "natter_archiver_history_errors_total",
                "History requests answered with an error.",
            ),
            history_latency: r.histogram(
                "natter_archiver_history_latency_seconds",
                "Seconds to answer one history request.",
                buckets::SLOW_SECONDS,
            ),
            stream_trimmed: r.counter(
                "natter_archiver_stream_trimmed_total",
                "Archived messages removed from the CHAT stream by the trimmer.",
            ),
            stream_drift: r.gauge(
                "natter_archiver_stream_drift",
                "Settings of the CHAT stream that differ from this archiver's (0: none; not ready otherwise).",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed() {
        let mut r = Registry::new();
        let m = Metrics::register(&mut r);
        m.rows_written.inc_by(5);
        m.batch_size.observe_value(100.0);
        m.batch_size.observe_value(3000.0);
        let text = r.encode().unwrap();
        assert!(
            text.contains("natter_archiver_rows_written_total 5\n"),
            "{text}"
        );
        assert!(
            text.contains("natter_archiver_batch_size_bucket{le=\"100.0\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("natter_archiver_batch_size_bucket{le=\"5000.0\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("natter_archiver_batch_size_sum 3100.0\n"),
            "{text}"
        );
        assert!(text.contains("natter_archiver_nats_up 0\n"), "{text}");
    }
}
