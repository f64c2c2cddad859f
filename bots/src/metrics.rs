//! The bots worker's metrics, registered at start-up and served at `/metrics` by natter-ops.
//! Names, labels and meanings are the contract in `METRICS.md` ("natter-bots").

use natter_ops::{buckets, Counter, Gauge, Histogram, Registry};

/// Labels of `natter_bots_failures_total` (the sandbox's outcomes and the host's checks).
pub const FAILURE_REASONS: [&str; 8] = [
    "operations",
    "timeout",
    "recursion",
    "too_large",
    "error",
    "bad_return",
    "reply_too_large",
    "not_compiled",
];

/// Everything the bots worker measures.
#[derive(Debug)]
pub struct Metrics {
    pub triggers: Counter,
    pub events: Counter,
    pub skipped_bot: Counter,
    pub redeliveries: Counter,
    pub runs: Counter,
    pub replies: Counter,
    pub dropped_rate: Counter,
    failures: Vec<(&'static str, Counter)>,
    pub disabled: Counter,
    pub publish_errors: Counter,
    pub run_seconds: Histogram,
    pub installed: Gauge,
    pub nats_connected: Gauge,
    pub stream_drift: Gauge,
}

impl Metrics {
    pub fn register(r: &mut Registry) -> Metrics {
        let failures_family = r.counter_family(
            "natter_bots_failures_total",
            "Script runs that failed, by reason (label reason)",
        );
        let failures = FAILURE_REASONS
            .iter()
            .map(|&reason| (reason, failures_family.series(&[("reason", reason)])))
            .collect();
        let dropped = r.counter_family(
            "natter_bots_replies_dropped_total",
            "Replies a script returned that were not posted, by reason (label reason)",
        );
        Metrics {
            triggers: r.counter(
                "natter_bots_triggers_total",
                "Stored room messages handled in rooms that have bots",
            ),
            events: r.counter(
                "natter_bots_events_total",
                "newUser events handled in rooms that have bots",
            ),
            skipped_bot: r.counter(
                "natter_bots_bot_messages_skipped_total",
                "Room messages not handed to bots because a bot posted them",
            ),
            redeliveries: r.counter(
                "natter_bots_redeliveries_total",
                "Triggers delivered again (a replica died or was slow before acknowledging)",
            ),
            runs: r.counter("natter_bots_runs_total", "Script runs"),
            replies: r.counter(
                "natter_bots_replies_total",
                "Replies posted (acknowledged by the stream, duplicates included)",
            ),
            dropped_rate: dropped.series(&[("reason", "rate")]),
            failures,
            disabled: r.counter(
                "natter_bots_disabled_total",
                "Bots disabled after repeated failures",
            ),
            publish_errors: r.counter(
                "natter_bots_publish_errors_total",
                "Replies whose publish failed or was not acknowledged (the trigger is retried)",
            ),
            run_seconds: r.histogram(
                "natter_bots_run_seconds",
                "Wall-clock time of one script run",
                buckets::FAST_SECONDS,
            ),
            installed: r.gauge(
                "natter_bots_installed",
                "Bots known to this replica (sampled)",
            ),
            nats_connected: r.gauge(
                "natter_bots_nats_connected",
                "1 while the NATS connection is up (sampled)",
            ),
            stream_drift: r.gauge(
                "natter_bots_stream_drift",
                "1 while the CHAT stream's settings differ from this service's (not ready)",
            ),
        }
    }

    /// Count one failed run.
    pub fn failure(&self, reason: &str) {
        if let Some((_, c)) = self.failures.iter().find(|(r, _)| *r == reason) {
            c.inc();
        }
    }
}
