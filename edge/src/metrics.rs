//! The edge's metrics, declared once and registered in the edge's registry (served at
//! `/metrics` by the ops router). Names and meanings are the documented contract in
//! `METRICS.md`; counters are plain atomics, so the delivery path pays one atomic add.

use natter_ops::{buckets, Counter, Gauge, Histogram, Registry};

/// Everything the edge counts. Cloning shares the same series.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub connections: Gauge,
    pub rooms: Gauge,
    pub members: Gauge,
    pub draining: Gauge,
    pub stream_drift: Gauge,
    pub coalescing: Gauge,
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
    pub tail_checks: Counter,
    pub name_checks: Counter,
    pub catchups: Counter,
    pub catchup_messages: Counter,
    pub history_truncated: Counter,
    pub archive_requests: Counter,
    pub archive_errors: Counter,
    pub shared_names: Counter,
    pub presence_sweeps: Counter,
    pub presence_swept_sessions: Counter,
    pub presence_names_freed: Counter,
    pub presence_lease_lapses: Counter,
    pub presence_names_restored: Counter,
    pub presence_release_retries: Counter,
    pub presence_releases_pending: Gauge,
    pub drain_reconnects_sent: Counter,
    pub publish_latency: Histogram,
    pub fanout_latency: Histogram,
    pub delivery_lag: Histogram,
    pub catchup_latency: Histogram,
    pub sched_lag: Histogram,
}

impl Metrics {
    /// Register every series in `r` under its documented name.
    pub fn new(r: &mut Registry) -> Metrics {
        let fast = buckets::FAST_SECONDS;
        Metrics {
            connections: r.gauge("natter_edge_connections", "Open WebSockets."),
            rooms: r.gauge(
                "natter_edge_rooms",
                "Rooms with local members (one NATS subscription each).",
            ),
            members: r.gauge("natter_edge_members", "Room memberships on this edge."),
            draining: r.gauge("natter_edge_draining", "1 while the edge is draining."),
            stream_drift: r.gauge(
                "natter_edge_stream_drift",
                "Settings of the CHAT stream that differ from this edge's (0: none; not ready otherwise).",
            ),
            coalescing: r.gauge(
                "natter_edge_coalescing",
                "1 while rooms coalesce their writes (--coalesce-ms; with --coalesce-lag-ms only while the edge is behind).",
            ),
            connections_accepted: r.counter(
                "natter_edge_connections_accepted_total",
                "WebSockets accepted.",
            ),
            connections_rejected: r.counter(
                "natter_edge_connections_rejected_total",
                "Upgrades refused (connection limit or draining).",
            ),
            messages_in: r.counter(
                "natter_edge_messages_in_total",
                "Room messages published to the stream.",
            ),
            messages_duplicate: r.counter(
                "natter_edge_messages_duplicate_total",
                "Publishes the stream recognised as retries (same uuid).",
            ),
            publish_errors: r.counter(
                "natter_edge_publish_errors_total",
                "Publishes that failed (client told -32010).",
            ),
            frames_out: r.counter("natter_edge_frames_out_total", "Frames queued to sockets."),
            room_messages_fanned_out: r.counter(
                "natter_edge_room_messages_total",
                "Stored room messages fanned out (once per room per edge).",
            ),
            client_errors: r.counter(
                "natter_edge_client_errors_total",
                "Error responses sent to clients.",
            ),
            rate_limited: r.counter(
                "natter_edge_rate_limited_total",
                "Requests refused by the per-socket rate limit.",
            ),
            slow_client_disconnects: r.counter(
                "natter_edge_slow_client_disconnects_total",
                "Sockets disconnected because their outbound queue was full.",
            ),
            gap_repairs: r.counter(
                "natter_edge_gap_repairs_total",
                "Gaps in a room's live sequence repaired from the stream.",
            ),
            gap_messages_repaired: r.counter(
                "natter_edge_gap_messages_repaired_total",
                "Messages recovered by gap repair.",
            ),
            tail_checks: r.counter(
                "natter_edge_tail_checks_total",
                "Rooms' reads of the stream's tail for a message missed on the live subject.",
            ),
            name_checks: r.counter(
                "natter_edge_name_checks_total",
                "Rooms' listings of their names in presence (every --presence-check-secs, and twice after a disruption of the NATS connection).",
            ),
            catchups: r.counter(
                "natter_edge_catchups_total",
                "Joins and reconnects that replayed history.",
            ),
            catchup_messages: r.counter(
                "natter_edge_catchup_messages_total",
                "Messages replayed on join or reconnect.",
            ),
            history_truncated: r.counter(
                "natter_edge_history_truncated_total",
                "Resumes that hit the replay limit.",
            ),
            archive_requests: r.counter(
                "natter_edge_archive_requests_total",
                "History requests sent to the archiver.",
            ),
            archive_errors: r.counter(
                "natter_edge_archive_errors_total",
                "History requests to the archiver that failed.",
            ),
            shared_names: r.counter(
                "natter_edge_shared_names_total",
                "Joins under a name the same userId already held from another session.",
            ),
            presence_sweeps: r.counter(
                "natter_edge_presence_sweeps_total",
                "Sweeps of dead edges' presence entries this edge ran.",
            ),
            presence_swept_sessions: r.counter(
                "natter_edge_presence_swept_sessions_total",
                "Session keys of dead edges this edge's sweeps removed.",
            ),
            presence_names_freed: r.counter(
                "natter_edge_presence_names_freed_total",
                "Names freed with no leaving session to announce them (by a sweep or a retried release); each is announced as userLeft.",
            ),
            presence_lease_lapses: r.counter(
                "natter_edge_presence_lease_lapses_total",
                "Times this edge found its presence lease gone and restored its entries.",
            ),
            presence_names_restored: r.counter(
                "natter_edge_presence_names_restored_total",
                "Names of sessions here that were gone from presence and were re-created (after a lease lapse, or by a room's check); each is announced as newUser.",
            ),
            presence_release_retries: r.counter(
                "natter_edge_presence_release_retries_total",
                "Retries of releases that could not reach the presence bucket.",
            ),
            presence_releases_pending: r.gauge(
                "natter_edge_presence_releases_pending",
                "Releases waiting to be retried (NATS was unreachable when their session left).",
            ),
            drain_reconnects_sent: r.counter(
                "natter_edge_drain_reconnects_total",
                "Reconnect requests sent while draining.",
            ),
            publish_latency: r.histogram(
                "natter_edge_publish_seconds",
                "Time from publish to the stream's ack.",
                fast,
            ),
            fanout_latency: r.histogram(
                "natter_edge_fanout_seconds",
                "Time to hand one batch of room messages to every local member (the socket writes included).",
                fast,
            ),
            delivery_lag: r.histogram(
                "natter_edge_delivery_lag_seconds",
                "Time from storage in the stream to queued on this edge.",
                fast,
            ),
            catchup_latency: r.histogram(
                "natter_edge_catchup_seconds",
                "Time to replay history on join or reconnect.",
                fast,
            ),
            sched_lag: r.histogram(
                "natter_edge_sched_lag_seconds",
                "Scheduling lag samples, every 10 ms with --coalesce-lag-ms: how long a task that yielded waited to be run again.",
                fast,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn exposes_documented_names_with_cumulative_buckets() {
        let mut r = Registry::new();
        let m = Metrics::new(&mut r);
        m.publish_latency.observe(Duration::from_micros(50));
        m.publish_latency.observe(Duration::from_millis(3));
        m.publish_latency.observe(Duration::from_secs(10));
        m.messages_in.inc();
        let text = r.encode().expect("encode");
        assert!(
            text.contains("natter_edge_publish_seconds_bucket{le=\"0.0001\"} 1"),
            "{text}"
        );
        assert!(text.contains("natter_edge_publish_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("natter_edge_publish_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("natter_edge_messages_in_total 1"));
        assert!(text.contains("natter_edge_draining 0"));
        assert!(text.contains("natter_edge_connections_accepted_total 0"));
    }
}
