//! The bots worker serves every metric `METRICS.md` documents for it, with its documented
//! type, and nothing undocumented.

mod common;

use common::*;
use natter_ops::exposition;
use natter_testkit::{http, NatsServer};

const DOC: &str = include_str!("../../METRICS.md");

#[tokio::test]
async fn every_documented_metric_is_served() {
    let nats = NatsServer::start().await;
    let bots = Bots::start(&nats, &[]).await;
    let r = http::get(bots.ops, "/metrics", &[])
        .await
        .expect("GET /metrics");
    let exp = exposition::scraped(r.status, r.header("content-type"), &r.text())
        .unwrap_or_else(|e| panic!("{e}"));
    let diff = exposition::contract_differences(&exp, DOC, "natter_bots_", 14);
    assert!(diff.is_empty(), "{diff:#?}");
    assert_eq!(exp.value("natter_bots_nats_connected", &[]), Some(1.0));
    assert_eq!(
        exp.value("natter_bots_failures_total", &[("reason", "timeout")]),
        Some(0.0)
    );
    // The public port does not serve operations routes.
    let r = http::get(bots.addr, "/metrics", &[]).await.unwrap();
    assert_eq!(r.status, 404);
}
