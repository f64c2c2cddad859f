//! The short chaos run of `just test`: steady traffic in several rooms while an edge is
//! killed (-9) and restarted, another is drained (SIGTERM) and restarted, and the archiver is
//! killed and restarted. Every acknowledged message must reach every member exactly once
//! and be in Postgres exactly once. The long version is `just bench chaos`.

use natter_bench::scenarios::{chaos, ChaosArgs};
use natter_bench::topology::TopologyArgs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_loses_and_duplicates_nothing() {
    let args = ChaosArgs {
        rooms: 4,
        users: 4,
        rate: 8.0,
        seconds: 12,
        archive: true,
        topology: TopologyArgs {
            edges: 2,
            cluster: false,
            target: Vec::new(),
            edge_args: Vec::new(),
            edge_workers: None,
            service_log: "warn".into(),
            keep_logs: None,
        },
        json: false,
    };
    let out = chaos(&args).await;
    out.report.print(false);
    let acked = out.report.figures["messages_acked"].as_u64().unwrap_or(0);
    assert!(
        acked > 100,
        "too little traffic to mean anything: {acked} acked"
    );
    let actions = out.report.figures["actions"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    assert_eq!(actions, 6, "every chaos action ran");
    assert_eq!(out.lost, 0, "lost deliveries");
    assert_eq!(out.duplicated, 0, "duplicated deliveries");
    assert_eq!(
        out.rows_missing, 0,
        "acknowledged messages missing from Postgres"
    );
    assert_eq!(out.rows_extra, 0, "rows no client saw acknowledged");
}
