//! The edge's `/metrics` against a real process and nats-server: every metric of
//! `METRICS.md` is served with its documented type (and nothing undocumented), as
//! OpenMetrics, and the counters move with what they count.

mod common;

use common::*;
use natter_ops::exposition::{self, Exposition};
use natter_testkit::{http, Service};

const DOC: &str = include_str!("../../METRICS.md");
const PREFIX: &str = "natter_edge_";

async fn scrape(edge: &Service) -> Exposition {
    let r = http::get(edge.ops_addr, "/metrics", &[])
        .await
        .expect("GET /metrics");
    exposition::scraped(r.status, r.header("content-type"), &r.text())
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn every_documented_metric_is_served_and_counters_move() {
    let s = stack(1, &[]).await;
    let edge = &s.edges[0];

    let before = scrape(edge).await;
    let diff = exposition::contract_differences(&before, DOC, PREFIX, 27);
    assert!(diff.is_empty(), "{diff:#?}");
    assert_eq!(before.value("natter_edge_connections", &[]), Some(0.0));
    assert_eq!(before.value("natter_edge_draining", &[]), Some(0.0));

    let (mut c, _) = joined(edge, "Metrics Room", "u-1", "Ann").await;
    c.send_message("Metrics Room", "u-1", "Ann", "hello", "m-1")
        .await;
    let got = c.room_messages(1, WAIT).await;
    assert_eq!(uuids(&got), vec!["m-1".to_owned()], "the sender's echo");

    let after = scrape(edge).await;
    let delta = |name: &str| {
        after.value(name, &[]).unwrap_or(f64::NAN) - before.value(name, &[]).unwrap_or(0.0)
    };
    assert_eq!(delta("natter_edge_connections_accepted_total"), 1.0);
    assert_eq!(after.value("natter_edge_connections", &[]), Some(1.0));
    assert_eq!(after.value("natter_edge_rooms", &[]), Some(1.0));
    assert_eq!(after.value("natter_edge_members", &[]), Some(1.0));
    assert_eq!(delta("natter_edge_messages_in_total"), 1.0);
    assert_eq!(delta("natter_edge_room_messages_total"), 1.0);
    assert!(
        delta("natter_edge_frames_out_total") >= 1.0,
        "the echo was queued to the socket"
    );
    assert_eq!(delta("natter_edge_publish_seconds_count"), 1.0);
    assert_eq!(delta("natter_edge_publish_errors_total"), 0.0);
}
