//! The archiver's `/metrics` against a real process, nats-server and Postgres: every metric
//! of `METRICS.md` is served with its documented type (and nothing undocumented), as
//! OpenMetrics, and the counters move with what they count.

mod common;

use std::time::Duration;

use common::*;
use natter_ops::exposition::{self, Exposition};
use natter_testkit::{http, Service};

const DOC: &str = include_str!("../../METRICS.md");
const PREFIX: &str = "natter_archiver_";

async fn scrape(svc: &Service) -> Exposition {
    let r = http::get(svc.addr, "/metrics", &[])
        .await
        .expect("GET /metrics");
    exposition::scraped(r.status, r.header("content-type"), &r.text())
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn every_documented_metric_is_served_and_counters_move() {
    let stack = Stack::start().await;
    let arch = stack.archiver(&["--lag-interval-ms", "100"]).await;

    let before = scrape(&arch).await;
    let diff = exposition::contract_differences(&before, DOC, PREFIX, 20);
    assert!(diff.is_empty(), "{diff:#?}");
    assert_eq!(before.value("natter_archiver_nats_up", &[]), Some(1.0));
    assert_eq!(before.value("natter_archiver_db_up", &[]), Some(1.0));

    let sent = publish_many(&stack.js, &["Metrics Room"], 25).await;
    assert_eq!(
        wait_metric(
            &arch,
            "natter_archiver_messages_acked_total",
            25.0,
            Duration::from_secs(30)
        )
        .await,
        Some(25.0)
    );
    let reply = history(&stack.client, "Metrics Room", None, None, 10).await;
    assert!(reply.error.is_none(), "{reply:?}");

    let after = scrape(&arch).await;
    let delta = |name: &str| {
        after.value(name, &[]).unwrap_or(f64::NAN) - before.value(name, &[]).unwrap_or(0.0)
    };
    assert_eq!(delta("natter_archiver_rows_written_total"), 25.0);
    assert!(delta("natter_archiver_batches_total") >= 1.0);
    assert_eq!(
        delta("natter_archiver_batch_size_sum"),
        25.0,
        "every row in one committed batch or another"
    );
    assert_eq!(delta("natter_archiver_history_requests_total"), 1.0);
    assert_eq!(delta("natter_archiver_history_latency_seconds_count"), 1.0);
    assert_eq!(delta("natter_archiver_poison_total"), 0.0);
    let last = sent.iter().map(|s| s.seq).max().unwrap_or(0) as f64;
    assert_eq!(
        after.value("natter_archiver_last_archived_seq", &[]),
        Some(last)
    );
}
