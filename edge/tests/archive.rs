//! The edge with the archiver: ranges the stream no longer holds come from Postgres, joined
//! to the stream's range with no gap and no duplicate. Real nats-server, Postgres, archiver.

mod common;

use std::time::Duration;

use common::*;
use natter_bus::history::{HistoryReply, HistoryRequest};
use natter_testkit::{ChatClient, NatsServer, Postgres, Service};
use serde_json::json;

/// Per-room retention of the stream in these tests: most of each room is archive-only.
const KEEP: &str = "10";

struct ArchivedStack {
    nats: NatsServer,
    _pg: Postgres,
    archiver: Service,
    edge: Service,
}

async fn archived_stack() -> ArchivedStack {
    let nats = NatsServer::start().await;
    let pg = Postgres::start().await;
    // Every service is given the same stream settings (they all ensure the stream).
    let archiver = Service::start(
        "natter-archiver",
        &[
            "--nats-url".into(),
            nats.url(),
            "--database-url".into(),
            pg.url(),
            "--stream-max-msgs-per-room".into(),
            KEEP.into(),
        ],
        &[],
    )
    .await;
    let edge = Service::start(
        "natter-edge",
        &edge_args(
            &nats,
            0,
            &[
                "--stream-max-msgs-per-room",
                KEEP,
                "--rate-per-sec",
                "1000",
                "--rate-burst",
                "1000",
                "--max-messages-history",
                "25",
            ],
        ),
        &[],
    )
    .await;
    ArchivedStack {
        nats,
        _pg: pg,
        archiver,
        edge,
    }
}

/// Wait until the archive holds `n` messages of `room` after `after`.
async fn archived(nats: &NatsServer, room: &str, after: u64, n: usize) {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let subject = natter_bus::subjects::history(&natter_protocol::token::encode(room));
    let ok = natter_testkit::eventually(WAIT, || {
        let client = client.clone();
        let subject = subject.clone();
        async move {
            let req = serde_json::to_vec(&HistoryRequest {
                after: Some(after),
                before: None,
                limit: 1000,
            })
            .unwrap();
            match client.request(subject, req.into()).await {
                Ok(m) => serde_json::from_slice::<HistoryReply>(&m.payload)
                    .map(|r| r.messages.len() >= n)
                    .unwrap_or(false),
                Err(_) => false,
            }
        }
    })
    .await;
    if !ok {
        let req = serde_json::to_vec(&HistoryRequest {
            after: Some(after),
            before: None,
            limit: 1000,
        })
        .unwrap();
        let r = client.request(subject, req.into()).await;
        panic!(
            "archive did not catch up: {:?}",
            r.map(|m| String::from_utf8_lossy(&m.payload)
                .chars()
                .take(400)
                .collect::<String>())
        );
    }
}

#[tokio::test]
async fn resume_and_history_span_the_archive_and_the_stream() {
    let mut s = archived_stack().await;
    let (mut ann, _) = joined(&s.edge, "r", "u1", "Ann").await;
    let (mut bob, _) = joined(&s.edge, "r", "u2", "Bob").await;
    for i in 0..5 {
        ann.send_message("r", "u1", "Ann", "x", &format!("m{i}"))
            .await;
    }
    let first = bob.room_messages(5, WAIT).await;
    let last = *ids(&first).last().unwrap();
    drop(bob);
    // Retention (10 per room) must exceed the archiver's lag: send in steps of 5 and let
    // the archive catch up after each, as a stream sized for its archiver would.
    for step in 1..12 {
        for i in step * 5..step * 5 + 5 {
            ann.send_message("r", "u1", "Ann", "x", &format!("m{i}"))
                .await;
        }
        archived(&s.nats, "r", last, step * 5).await;
    }
    assert_eq!(ann.room_messages(60, WAIT).await.len(), 60);

    // The stream holds only the last 10 of the 55 Bob missed.
    let mut bob = ChatClient::connect(&s.edge.ws_url()).await.unwrap();
    bob.join("r", "u2", "Bob", Some(last), true).await.unwrap();
    let rest = bob.room_messages(55, WAIT).await;
    assert_once_in_order(&rest);
    assert_eq!(
        uuids(&rest),
        (5..60).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    assert!(bob
        .room_messages(1, Duration::from_millis(300))
        .await
        .is_empty());

    // A fresh join gets the newest 25: 15 from the archive, 10 from the stream.
    let (mut carol, _) = joined(&s.edge, "r", "u3", "Carol").await;
    let hist = carol.room_messages(25, WAIT).await;
    assert_eq!(
        uuids(&hist),
        (35..60).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );

    // getHistory pages backwards through the whole room, across the boundary.
    let mut before = ids(&hist)[0];
    let mut older: Vec<serde_json::Value> = Vec::new();
    for _ in 0..20 {
        let r = carol
            .call(
                "getHistory",
                json!({"roomName": "r", "before": before, "limit": 7}),
            )
            .await;
        let page = r["result"]["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(!page.is_empty() || r["result"]["more"] == false, "{r}");
        older.splice(0..0, page.clone());
        if r["result"]["more"] == false {
            break;
        }
        before = ids(&page)[0];
    }
    assert_once_in_order(&older);
    assert_eq!(
        uuids(&older),
        (0..35).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );

    // Without the archive, a resume that needs it says so instead of leaving a silent gap.
    s.archiver.proc().kill9();
    let mut dave = ChatClient::connect(&s.edge.ws_url()).await.unwrap();
    dave.join("r", "u2", "Bob", Some(last), true).await.unwrap();
    let note = dave
        .next_matching(WAIT, |v| v["method"] == "historyTruncated")
        .await
        .expect("historyTruncated");
    assert_eq!(note["params"]["roomName"], "r");
    let from: u64 = note["params"]["fromId"].as_str().unwrap().parse().unwrap();
    let got = dave.room_messages(10, WAIT).await;
    assert_eq!(ids(&got)[0], from);
    assert_eq!(
        uuids(&got),
        (50..60).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_resume_beyond_the_replay_limit_gets_the_newest_and_a_truncation_notice() {
    let nats = NatsServer::start().await;
    let edge = Service::start(
        "natter-edge",
        &edge_args(
            &nats,
            0,
            &[
                "--max-catchup",
                "20",
                "--rate-per-sec",
                "1000",
                "--rate-burst",
                "1000",
            ],
        ),
        &[],
    )
    .await;
    let (mut ann, _) = joined(&edge, "r", "u1", "Ann").await;
    let (mut bob, _) = joined(&edge, "r", "u2", "Bob").await;
    ann.send_message("r", "u1", "Ann", "x", "m0").await;
    let last = ids(&bob.room_messages(1, WAIT).await)[0];
    drop(bob);
    for i in 1..51 {
        ann.send_message("r", "u1", "Ann", "x", &format!("m{i}"))
            .await;
    }
    assert_eq!(ann.room_messages(51, WAIT).await.len(), 51);
    let mut bob = ChatClient::connect(&edge.ws_url()).await.unwrap();
    bob.join("r", "u2", "Bob", Some(last), true).await.unwrap();
    let note = bob
        .next_matching(WAIT, |v| v["method"] == "historyTruncated")
        .await
        .expect("notice");
    let got = bob.room_messages(20, WAIT).await;
    assert_eq!(
        uuids(&got),
        (31..51).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    assert_eq!(note["params"]["fromId"], json!(ids(&got)[0].to_string()));
}
