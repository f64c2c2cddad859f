//! The edge with the archiver: ranges the stream no longer holds come from Postgres, joined
//! to the stream's range with no gap and no duplicate. Real nats-server, Postgres, archiver.

mod common;

use std::time::Duration;

use common::*;
use natter_bus::history::{HistoryReply, HistoryRequest};
use natter_testkit::{ChatClient, NatsServer, Postgres, Service};
use serde_json::json;

struct ArchivedStack {
    nats: NatsServer,
    pg: Postgres,
    archiver: Service,
    edge: Service,
}

/// An archiver whose trimmer keeps `max_age_secs` of archived messages in the stream.
async fn archiver(nats: &NatsServer, pg: &Postgres, max_age_secs: &str) -> Service {
    Service::start(
        "natter-archiver",
        &[
            "--nats-url".into(),
            nats.url(),
            "--database-url".into(),
            pg.url(),
            "--stream-max-age-secs".into(),
            max_age_secs.into(),
            "--trim-interval-ms".into(),
            "200".into(),
        ],
        &[],
    )
    .await
}

/// nats-server, Postgres, an edge, and an archiver that trims archived messages older
/// than a second from the stream.
async fn archived_stack() -> ArchivedStack {
    let nats = NatsServer::start().await;
    let pg = Postgres::start().await;
    let archiver = archiver(&nats, &pg, "1").await;
    let edge = Service::start(
        "natter-edge",
        &edge_args(
            &nats,
            0,
            &[
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
        pg,
        archiver,
        edge,
    }
}

/// Wait until the stream no longer holds message `seq` (the archiver trimmed it).
async fn trimmed_through(nats: &NatsServer, seq: u64) {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let ok = natter_testkit::eventually(WAIT, || {
        let js = js.clone();
        async move {
            match js.get_stream("CHAT").await {
                Ok(mut s) => s
                    .info()
                    .await
                    .map(|i| i.state.first_sequence > seq)
                    .unwrap_or(false),
                Err(_) => false,
            }
        }
    })
    .await;
    assert!(ok, "the stream still holds message {seq}");
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
    for i in 5..50 {
        ann.send_message("r", "u1", "Ann", "x", &format!("m{i}"))
            .await;
    }
    let echoes = ann.room_messages(50, WAIT).await;
    assert_eq!(echoes.len(), 50);
    // m0..m49 are archived, then trimmed from the stream (older than a second).
    archived(&s.nats, "r", 0, 50).await;
    trimmed_through(&s.nats, *ids(&echoes).last().unwrap()).await;
    // From now on the archive keeps an hour in the stream: m50..m59 stay there.
    s.archiver.proc().kill9();
    s.archiver = archiver(&s.nats, &s.pg, "3600").await;
    for i in 50..60 {
        ann.send_message("r", "u1", "Ann", "x", &format!("m{i}"))
            .await;
    }
    assert_eq!(ann.room_messages(10, WAIT).await.len(), 10);

    // The stream holds only the last 10 of the 55 Bob missed; the archive has the rest.
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
