//! The edge's metrics, declared once and registered in the process's Prometheus registry
//! (served at `/metrics` by the ops router). Names and meanings are the documented contract
//! in `METRICS.md`; counters are plain atomics, so the delivery path pays one atomic add.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency bucket upper bounds, in seconds (100 µs .. 2.5 s).
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram observed in [`Duration`]s, exposed in seconds.
#[derive(Debug, Clone)]
pub struct Latency(Histogram);

impl Default for Latency {
    fn default() -> Self {
        Latency(Histogram::new(LATENCY_BUCKETS))
    }
}

impl Latency {
    pub fn observe(&self, d: Duration) {
        self.0.observe(d.as_secs_f64());
    }
}

/// Everything the edge counts. Cloning shares the same series.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub connections: Gauge,
    pub rooms: Gauge,
    pub members: Gauge,
    pub draining: Gauge,
    pub connections_accepted: Counter,
    pub connections_rejected: Counter,
    pub messages_in: Counter,
    pub messages_duplicate: Counter,
    pub publish_errors: Counter,
    pub frames_out: Counter,
    pub room_messages_fanned_out: Counter,
    pub client_errors: Counter,
    pub rate_limited: Counter,
    pub slow_client_disconnects: Counter,
    pub gap_repairs: Counter,
    pub gap_messages_repaired: Counter,
    pub catchups: Counter,
    pub catchup_messages: Counter,
    pub history_truncated: Counter,
    pub archive_requests: Counter,
    pub archive_errors: Counter,
    pub takeovers: Counter,
    pub drain_reconnects_sent: Counter,
    pub publish_latency: Latency,
    pub fanout_latency: Latency,
    pub delivery_lag: Latency,
    pub catchup_latency: Latency,
}

impl Metrics {
    /// Register every series under its documented name (counters get `_total` appended).
    pub fn register(&self, r: &mut Registry) {
        let gauges = [
            ("natter_edge_connections", "Open WebSockets.", &self.connections),
            (
                "natter_edge_rooms",
                "Rooms with local members (one NATS subscription each).",
                &self.rooms,
            ),
            ("natter_edge_members", "Room memberships on this edge.", &self.members),
            ("natter_edge_draining", "1 while the edge is draining.", &self.draining),
        ];
        for (name, help, g) in gauges {
            r.register(name, help, g.clone());
        }
        let counters = [
            ("natter_edge_connections_accepted", "WebSockets accepted.", &self.connections_accepted),
            (
                "natter_edge_connections_rejected",
                "Upgrades refused (connection limit or draining).",
                &self.connections_rejected,
            ),
            ("natter_edge_messages_in", "Room messages published to the stream.", &self.messages_in),
            (
                "natter_edge_messages_duplicate",
                "Publishes the stream recognised as retries (same uuid).",
                &self.messages_duplicate,
            ),
            (
                "natter_edge_publish_errors",
                "Publishes that failed (client told -32010).",
                &self.publish_errors,
            ),
            ("natter_edge_frames_out", "Frames queued to sockets.", &self.frames_out),
            (
                "natter_edge_room_messages",
                "Stored room messages fanned out (once per room per edge).",
                &self.room_messages_fanned_out,
            ),
            ("natter_edge_client_errors", "Error responses sent to clients.", &self.client_errors),
            (
                "natter_edge_rate_limited",
                "Requests refused by the per-socket rate limit.",
                &self.rate_limited,
            ),
            (
                "natter_edge_slow_client_disconnects",
                "Sockets disconnected because their outbound queue was full.",
                &self.slow_client_disconnects,
            ),
            (
                "natter_edge_gap_repairs",
                "Gaps in a room's live sequence repaired from the stream.",
                &self.gap_repairs,
            ),
            (
                "natter_edge_gap_messages_repaired",
                "Messages recovered by gap repair.",
                &self.gap_messages_repaired,
            ),
            ("natter_edge_catchups", "Joins and reconnects that replayed history.", &self.catchups),
            (
                "natter_edge_catchup_messages",
                "Messages replayed on join or reconnect.",
                &self.catchup_messages,
            ),
            (
                "natter_edge_history_truncated",
                "Resumes that hit the replay limit.",
                &self.history_truncated,
            ),
            (
                "natter_edge_archive_requests",
                "History requests sent to the archiver.",
                &self.archive_requests,
            ),
            (
                "natter_edge_archive_errors",
                "History requests to the archiver that failed.",
                &self.archive_errors,
            ),
            (
                "natter_edge_takeovers",
                "Names taken over by a new session of the same userId.",
                &self.takeovers,
            ),
            (
                "natter_edge_drain_reconnects",
                "Reconnect requests sent while draining.",
                &self.drain_reconnects_sent,
            ),
        ];
        for (name, help, c) in counters {
            r.register(name, help, c.clone());
        }
        let histograms = [
            ("natter_edge_publish_seconds", "Time from publish to the stream's ack.", &self.publish_latency),
            (
                "natter_edge_fanout_seconds",
                "Time to queue one room message to every local member.",
                &self.fanout_latency,
            ),
            (
                "natter_edge_delivery_lag_seconds",
                "Time from storage in the stream to queued on this edge.",
                &self.delivery_lag,
            ),
            (
                "natter_edge_catchup_seconds",
                "Time to replay history on join or reconnect.",
                &self.catchup_latency,
            ),
        ];
        for (name, help, h) in histograms {
            r.register(name, help, h.0.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_documented_names_with_cumulative_buckets() {
        let m = Metrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        m.publish_latency.observe(Duration::from_micros(50));
        m.publish_latency.observe(Duration::from_millis(3));
        m.publish_latency.observe(Duration::from_secs(10));
        m.messages_in.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).expect("encode");
        assert!(text.contains("natter_edge_publish_seconds_bucket{le=\"0.0001\"} 1"), "{text}");
        assert!(text.contains("natter_edge_publish_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("natter_edge_publish_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("natter_edge_messages_in_total 1"));
        assert!(text.contains("natter_edge_draining 0"));
        assert!(text.contains("natter_edge_connections_accepted_total 0"));
    }
}
