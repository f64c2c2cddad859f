//! The filestore's `/metrics` against a real process and nats-server: every metric of
//! `METRICS.md` is served with its documented type (and nothing undocumented), as
//! OpenMetrics, and the counters move with what they count.

mod common;

use common::*;
use natter_ops::exposition::{self, Exposition};
use natter_testkit::{http, NatsServer, Service};

const DOC: &str = include_str!("../../METRICS.md");
const PREFIX: &str = "natter_filestore_";

async fn scrape(fs: &Service) -> Exposition {
    let r = http::get(fs.ops_addr, "/metrics", &[])
        .await
        .expect("GET /metrics");
    exposition::scraped(r.status, r.header("content-type"), &r.text())
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn every_documented_metric_is_served_and_counters_move() {
    let nats = NatsServer::start().await;
    let data = DataDir::new();
    let fs = filestore(&nats, &data, &[]).await;

    let before = scrape(&fs).await;
    let diff = exposition::contract_differences(&before, DOC, PREFIX, 12);
    assert!(diff.is_empty(), "{diff:#?}");
    let stored = [("kind", "image"), ("result", "stored")];
    assert_eq!(
        before.value("natter_filestore_uploads_total", &stored),
        Some(0.0)
    );
    assert_eq!(before.value("natter_filestore_ready", &[]), Some(1.0));
    assert_eq!(
        before.value("natter_filestore_nats_connected", &[]),
        Some(1.0)
    );

    let r = post_image(
        fs.addr,
        &image_message("Metrics Room", "m-1", &b64(&png(1000, 3))),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_image(
        fs.addr,
        &image_message("Metrics Room", "m-2", "not base64!"),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = http::get(fs.addr, "/images/m-1", &[])
        .await
        .expect("GET image");
    assert_eq!(r.status, 200);

    let after = scrape(&fs).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels).unwrap_or(f64::NAN) - before.value(name, labels).unwrap_or(0.0)
    };
    assert_eq!(delta("natter_filestore_uploads_total", &stored), 1.0);
    assert_eq!(
        delta("natter_filestore_upload_bytes_total", &[("kind", "image")]),
        b64(&png(1000, 3)).len() as f64
    );
    assert_eq!(
        delta(
            "natter_filestore_rejects_total",
            &[("reason", "bad_base64")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "natter_filestore_announcements_total",
            &[("result", "published")]
        ),
        1.0
    );
    assert_eq!(
        delta("natter_filestore_downloads_total", &[("kind", "image")]),
        1.0
    );
    assert_eq!(
        delta("natter_filestore_upload_duration_seconds_count", &[]),
        2.0
    );
    assert_eq!(delta("natter_filestore_announce_failures_total", &[]), 0.0);
}
