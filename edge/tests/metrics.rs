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
    let diff = exposition::contract_differences(&before, DOC, PREFIX, 31);
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

/// A retry with the same uuid (what a client told `-32010` does) is absorbed by the
/// stream's dedupe: the edge counts the stream's reply as a duplicate, and the message is
/// delivered once.
#[tokio::test]
async fn a_retried_publish_is_counted_as_a_duplicate_and_delivered_once() {
    let s = stack(1, &[]).await;
    let edge = &s.edges[0];
    let (mut c, _) = joined(edge, "Dup Room", "u-1", "Ann").await;
    let before = scrape(edge).await;
    for _ in 0..2 {
        c.send_message("Dup Room", "u-1", "Ann", "hello", "m-1")
            .await;
    }
    let got = c.room_messages(1, WAIT).await;
    assert_eq!(uuids(&got), vec!["m-1".to_owned()]);
    // The second publish's reply brings no echo: scrape until both replies are settled.
    let replies = |e: &Exposition| e.value("natter_edge_publish_seconds_count", &[]);
    let want = before
        .value("natter_edge_publish_seconds_count", &[])
        .unwrap_or(0.0)
        + 2.0;
    let mut after = scrape(edge).await;
    for _ in 0..50 {
        if replies(&after) >= Some(want) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        after = scrape(edge).await;
    }
    let delta = |name: &str| {
        after.value(name, &[]).unwrap_or(f64::NAN) - before.value(name, &[]).unwrap_or(0.0)
    };
    assert_eq!(delta("natter_edge_publish_seconds_count"), 2.0);
    assert_eq!(delta("natter_edge_messages_in_total"), 2.0);
    assert_eq!(delta("natter_edge_messages_duplicate_total"), 1.0);
    assert_eq!(delta("natter_edge_publish_errors_total"), 0.0);
    assert!(
        c.room_messages(1, std::time::Duration::from_millis(500))
            .await
            .is_empty(),
        "delivered twice"
    );
}

/// `--coalesce-ms`: a room that gets a message while its window is open writes it with the
/// others at the window's end, one write per socket; a quiet room's message goes out at
/// once. Nothing is lost, repeated or reordered by the wait, and the delivery lag is
/// observed when a message is written.
#[tokio::test]
async fn a_coalescing_room_writes_once_per_window_and_loses_nothing() {
    let (writes, coalescing, lag_samples) =
        six_messages_50_ms_apart(&["--coalesce-ms", "1000"]).await;
    // Without coalescing each message, 50 ms after the last, is a write of its own (6).
    // With it: the first at once, the other five together at the window's end (2; 3 if a
    // stalled machine let the window close between two of them).
    assert!((2.0..=3.0).contains(&writes), "room writes: {writes}");
    assert_eq!(coalescing, 1.0, "a window alone applies always");
    assert_eq!(lag_samples, 0.0, "and needs no lag probe");
}

/// `--coalesce-lag-ms`: the window applies only while the edge is behind; an edge that
/// keeps up (its scheduling lag is far under the 1 s threshold) writes every message at
/// once, and says it does not coalesce.
#[tokio::test]
async fn an_edge_that_keeps_up_does_not_coalesce_with_a_lag_threshold() {
    let (writes, coalescing, lag_samples) =
        six_messages_50_ms_apart(&["--coalesce-ms", "1000", "--coalesce-lag-ms", "1000"]).await;
    // Each message written at once: 6, or 5 if a stall of the machine (over the 50 ms
    // between two sends) lets two reach the room together; a window would give 2 or 3.
    assert!((4.0..=6.0).contains(&writes), "room writes: {writes}");
    assert_eq!(coalescing, 0.0);
    // 300 ms of messages at a sample every 10 ms, at the very least a few.
    assert!(
        lag_samples >= 5.0,
        "the probe samples the lag: {lag_samples}"
    );
}

/// Six messages 50 ms apart in one room of two, on an edge started with `flags`: each
/// member gets all six once and in order, each counted and its lag observed once. Returns
/// the room writes they took, the `natter_edge_coalescing` gauge and the scheduling-lag
/// samples taken meanwhile.
async fn six_messages_50_ms_apart(flags: &[&str]) -> (f64, f64, f64) {
    let s = stack(1, flags).await;
    let edge = &s.edges[0];
    let room = "Busy Room";
    let (mut sender, _) = joined(edge, room, "u-1", "Ann").await;
    let (mut reader, _) = joined(edge, room, "u-2", "Bob").await;
    let before = scrape(edge).await;

    // With a 1 s window the first opens it and the other five fall inside it.
    for i in 0..6 {
        sender
            .send_message(room, "u-1", "Ann", "hi", &format!("c-{i}"))
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let want: Vec<String> = (0..6).map(|i| format!("c-{i}")).collect();
    for c in [&mut reader, &mut sender] {
        let got = c.room_messages(6, WAIT).await;
        assert_eq!(uuids(&got), want, "every message, in order");
        assert_once_in_order(&got);
    }

    let after = scrape(edge).await;
    let delta = |name: &str| {
        after.value(name, &[]).unwrap_or(f64::NAN) - before.value(name, &[]).unwrap_or(0.0)
    };
    assert_eq!(delta("natter_edge_room_messages_total"), 6.0);
    assert_eq!(delta("natter_edge_delivery_lag_seconds_count"), 6.0);
    (
        delta("natter_edge_fanout_seconds_count"),
        after
            .value("natter_edge_coalescing", &[])
            .unwrap_or(f64::NAN),
        delta("natter_edge_sched_lag_seconds_count"),
    )
}
