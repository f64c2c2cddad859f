//! The edge's Prometheus metrics: counters, gauges and fixed-bucket histograms on atomics,
//! rendered as Prometheus text at `/metrics`. No registry crate, no locks on the hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Bucket upper bounds in seconds, shared by every histogram.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    inf: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        match BUCKETS.iter().position(|b| s <= *b) {
            Some(i) => self.counts[i].fetch_add(1, Relaxed),
            None => self.inf.fetch_add(1, Relaxed),
        };
        self.sum_nanos
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0u64;
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            cum += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.inf.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_nanos.load(Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count {cum}");
    }
}

/// Everything the edge counts.
#[derive(Default)]
pub struct Metrics {
    pub connections: AtomicI64,
    pub connections_total: AtomicU64,
    pub connections_rejected: AtomicU64,
    pub rooms: AtomicI64,
    pub members: AtomicI64,
    pub messages_in: AtomicU64,
    pub messages_duplicate: AtomicU64,
    pub publish_errors: AtomicU64,
    pub frames_out: AtomicU64,
    pub room_messages_fanned_out: AtomicU64,
    pub client_errors: AtomicU64,
    pub rate_limited: AtomicU64,
    pub slow_client_disconnects: AtomicU64,
    pub gap_repairs: AtomicU64,
    pub gap_messages_repaired: AtomicU64,
    pub catchups: AtomicU64,
    pub catchup_messages: AtomicU64,
    pub history_truncated: AtomicU64,
    pub archive_requests: AtomicU64,
    pub archive_errors: AtomicU64,
    pub takeovers: AtomicU64,
    pub drain_reconnects_sent: AtomicU64,
    pub publish_latency: Histogram,
    pub fanout_latency: Histogram,
    pub delivery_lag: Histogram,
    pub catchup_latency: Histogram,
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    /// Prometheus text exposition.
    pub fn render(&self, draining: bool) -> String {
        let mut o = String::with_capacity(8192);
        let gauge = |o: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            &mut o,
            "natter_edge_connections",
            "Open WebSockets.",
            self.connections.load(Relaxed),
        );
        gauge(
            &mut o,
            "natter_edge_rooms",
            "Rooms with local members (one NATS subscription each).",
            self.rooms.load(Relaxed),
        );
        gauge(
            &mut o,
            "natter_edge_members",
            "Room memberships on this edge.",
            self.members.load(Relaxed),
        );
        gauge(
            &mut o,
            "natter_edge_draining",
            "1 while the edge is draining.",
            i64::from(draining),
        );
        let counters: [(&str, &str, &AtomicU64); 19] = [
            (
                "natter_edge_connections_total",
                "WebSockets accepted.",
                &self.connections_total,
            ),
            (
                "natter_edge_connections_rejected_total",
                "Upgrades refused (connection limit or draining).",
                &self.connections_rejected,
            ),
            (
                "natter_edge_messages_in_total",
                "Room messages published to the stream.",
                &self.messages_in,
            ),
            (
                "natter_edge_messages_duplicate_total",
                "Publishes the stream recognised as retries (same uuid).",
                &self.messages_duplicate,
            ),
            (
                "natter_edge_publish_errors_total",
                "Publishes that failed (client told -32010).",
                &self.publish_errors,
            ),
            (
                "natter_edge_frames_out_total",
                "Frames queued to sockets.",
                &self.frames_out,
            ),
            (
                "natter_edge_room_messages_total",
                "Stored room messages fanned out (once per room per edge).",
                &self.room_messages_fanned_out,
            ),
            (
                "natter_edge_client_errors_total",
                "Error responses sent to clients.",
                &self.client_errors,
            ),
            (
                "natter_edge_rate_limited_total",
                "Requests refused by the per-socket rate limit.",
                &self.rate_limited,
            ),
            (
                "natter_edge_slow_client_disconnects_total",
                "Sockets disconnected because their outbound queue was full.",
                &self.slow_client_disconnects,
            ),
            (
                "natter_edge_gap_repairs_total",
                "Gaps in a room's live sequence repaired from the stream.",
                &self.gap_repairs,
            ),
            (
                "natter_edge_gap_messages_repaired_total",
                "Messages recovered by gap repair.",
                &self.gap_messages_repaired,
            ),
            (
                "natter_edge_catchups_total",
                "Joins and reconnects that replayed history.",
                &self.catchups,
            ),
            (
                "natter_edge_catchup_messages_total",
                "Messages replayed on join or reconnect.",
                &self.catchup_messages,
            ),
            (
                "natter_edge_history_truncated_total",
                "Resumes that hit the replay limit.",
                &self.history_truncated,
            ),
            (
                "natter_edge_archive_requests_total",
                "History requests sent to the archiver.",
                &self.archive_requests,
            ),
            (
                "natter_edge_archive_errors_total",
                "History requests to the archiver that failed.",
                &self.archive_errors,
            ),
            (
                "natter_edge_takeovers_total",
                "Names taken over by a new session of the same userId.",
                &self.takeovers,
            ),
            (
                "natter_edge_drain_reconnects_total",
                "Reconnect requests sent while draining.",
                &self.drain_reconnects_sent,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.load(Relaxed)
            );
        }
        self.publish_latency.render(
            &mut o,
            "natter_edge_publish_seconds",
            "Time from publish to the stream's ack.",
        );
        self.fanout_latency.render(
            &mut o,
            "natter_edge_fanout_seconds",
            "Time to queue one room message to every local member.",
        );
        self.delivery_lag.render(
            &mut o,
            "natter_edge_delivery_lag_seconds",
            "Time from storage in the stream to queued on this edge.",
        );
        self.catchup_latency.render(
            &mut o,
            "natter_edge_catchup_seconds",
            "Time to replay history on join or reconnect.",
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets() {
        let m = Metrics::default();
        m.publish_latency.observe(Duration::from_micros(50));
        m.publish_latency.observe(Duration::from_millis(3));
        m.publish_latency.observe(Duration::from_secs(10));
        Metrics::inc(&m.messages_in);
        let text = m.render(false);
        assert!(text.contains("natter_edge_publish_seconds_bucket{le=\"0.0001\"} 1"));
        assert!(text.contains("natter_edge_publish_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("natter_edge_publish_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("natter_edge_messages_in_total 1"));
        assert!(text.contains("natter_edge_draining 0"));
    }
}
