//! Stream safety with real processes (nats-server, Postgres, archiver, edge): an
//! acknowledged message never leaves the `CHAT` stream before the archiver stored it.
//!
//! With the archiver down long enough for the stream to fill up, new sends are refused with
//! `-32010` (the client retries with the same uuid) and nothing acknowledged is lost; once
//! the archiver is back, every acknowledged message is in Postgres exactly once, the
//! trimmer frees the stream and the refused message goes through on its retry.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use natter_bus::history::{HistoryReply, HistoryRequest};
use natter_testkit::{ChatClient, Event, NatsServer, Postgres, Service};
use serde_json::{json, Value};

/// Small enough to fill in a few dozen messages.
const MAX_BYTES: &str = "32768";

/// What became of one sent message.
#[derive(Debug, PartialEq)]
enum Outcome {
    Acked(u64),
    Refused(i64),
}

/// Send one textMessage and wait for its echo (acknowledged) or its error response.
async fn send(c: &mut ChatClient, id: u64, uuid: &str, text: &str) -> Outcome {
    c.send_json(
        &json!({"jsonrpc":"2.0","method":"textMessage","id":id,"params":{
        "userId":"u1","userName":"Ann","roomName":"r","text":text,"ack":false,"uuid":uuid}}),
    )
    .await
    .expect("send");
    for _ in 0..10_000 {
        match c.next_event(WAIT).await {
            Some(Event::Json(v)) if v["params"]["uuid"] == uuid && v.get("_id").is_some() => {
                return Outcome::Acked(natter_testkit::client::msg_id(&v));
            }
            Some(Event::Json(v)) if v["id"] == id && v.get("error").is_some() => {
                return Outcome::Refused(v["error"]["code"].as_i64().unwrap_or(0));
            }
            Some(Event::Json(_)) | Some(Event::Text(_)) => continue,
            other => panic!("socket ended while waiting for {uuid}: {other:?}"),
        }
    }
    panic!("no outcome for {uuid}");
}

/// Every archived uuid of room `r`, in `_id` order.
async fn archived_uuids(nats: &NatsServer) -> Vec<String> {
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let subject = natter_bus::subjects::history(&natter_protocol::token::encode("r"));
    let req = serde_json::to_vec(&HistoryRequest {
        after: Some(0),
        before: None,
        limit: 1000,
    })
    .expect("encode");
    let Ok(m) = client.request(subject, req.into()).await else {
        return Vec::new();
    };
    let reply: HistoryReply = serde_json::from_slice(&m.payload).expect("history reply");
    reply
        .messages
        .iter()
        .filter_map(|i| serde_json::from_str::<Value>(i.msg.get()).ok())
        .map(|v| v["params"]["uuid"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn a_full_stream_refuses_new_sends_and_loses_nothing_acknowledged() {
    let nats = NatsServer::start().await;
    let pg = Postgres::start().await;
    let stream = ["--stream-max-bytes", MAX_BYTES];
    let archiver_args: Vec<String> = [
        "--nats-url",
        &nats.url(),
        "--database-url",
        &pg.url(),
        "--trim-interval-ms",
        "200",
        "--stream-max-age-secs",
        "3600",
        // A message the server hands to the killed archiver's last pull request (it can,
        // before it notices the connection is gone) comes back after the ack wait: keep
        // that well inside the test's patience (the default 30 s is not).
        "--ack-wait-secs",
        "3",
    ]
    .iter()
    .chain(stream.iter())
    .map(|s| s.to_string())
    .collect();
    let mut archiver = Service::start("natter-archiver", &archiver_args, &[]).await;
    let mut extra = vec!["--rate-per-sec", "1000", "--rate-burst", "1000"];
    extra.extend(stream);
    let edge = Service::start("natter-edge", &edge_args(&nats, 0, &extra), &[]).await;
    let (mut ann, _) = joined(&edge, "r", "u1", "Ann").await;
    let (mut bob, _) = joined(&edge, "r", "u2", "Bob").await;

    // The archiver goes away; the stream can only fill up now.
    archiver.proc().kill9();
    let text = "t".repeat(512);
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..1000u64 {
        let uuid = format!("m{i}");
        match send(&mut ann, i + 10, &uuid, &text).await {
            Outcome::Acked(_) => acked.push(uuid),
            Outcome::Refused(code) => {
                assert_eq!(code, -32010, "a full stream is 'temporarily unavailable'");
                refused = Some((i, uuid));
                break;
            }
        }
    }
    let (refused_id, refused_uuid) = refused.expect("the stream filled up and refused a send");
    assert!(acked.len() > 5, "only {} messages fit", acked.len());
    // Every acknowledged message reached the other member, once; the refused one did not.
    let seen = bob.room_messages(acked.len(), WAIT).await;
    assert_once_in_order(&seen);
    assert_eq!(uuids(&seen), acked);
    assert!(bob
        .room_messages(1, Duration::from_millis(300))
        .await
        .is_empty());
    // While the archiver is away, retries are refused too: nothing was dropped to make room.
    assert_eq!(
        send(&mut ann, 5000, &refused_uuid, &text).await,
        Outcome::Refused(-32010)
    );

    // The archiver returns: it stores everything acknowledged, then trims the stream.
    archiver.restart().await;
    let all_archived = natter_testkit::eventually(WAIT, || {
        let nats = &nats;
        let acked = &acked;
        async move { archived_uuids(nats).await == *acked }
    })
    .await;
    assert!(
        all_archived,
        "archive holds {:?}, acknowledged were {acked:?}",
        archived_uuids(&nats).await
    );
    // The client's retry (same uuid) goes through once the trimmer made room.
    let mut outcome = Outcome::Refused(0);
    for attempt in 0..100u64 {
        outcome = send(&mut ann, 6000 + attempt, &refused_uuid, &text).await;
        if matches!(outcome, Outcome::Acked(_)) {
            break;
        }
        // A client's retry backoff, not synchronisation: the trimmer runs every 200 ms.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(outcome, Outcome::Acked(_)), "{outcome:?}");
    let last = bob.room_messages(1, WAIT).await;
    assert_eq!(uuids(&last), vec![refused_uuid.clone()]);
    let mut expected = acked.clone();
    expected.push(refused_uuid);
    let done = natter_testkit::eventually(WAIT, || {
        let nats = &nats;
        let expected = &expected;
        async move { archived_uuids(nats).await == *expected }
    })
    .await;
    assert!(done, "archive holds {:?}", archived_uuids(&nats).await);
    let unique: HashSet<_> = expected.iter().collect();
    assert_eq!(unique.len(), expected.len());
    let _ = refused_id;
}

#[tokio::test]
async fn a_service_with_other_stream_settings_reports_drift_and_changes_nothing() {
    let nats = NatsServer::start().await;
    let first = Service::start("natter-edge", &edge_args(&nats, 0, &[]), &[]).await;
    assert_eq!(first.status("/readyz").await, Some(200));
    // A second edge with a mistyped limit: it starts, but is not ready and says why.
    let args = edge_args(&nats, 1, &["--stream-max-bytes", "1048576"]);
    let second = Service::spawn("natter-edge", &args, &[]).await;
    let ready = natter_testkit::eventually(WAIT, || async {
        second.status("/readyz").await == Some(503)
    })
    .await;
    assert!(ready, "the drifted edge must not be ready");
    let drift = second.metric("natter_edge_stream_drift").await;
    assert_eq!(drift, Some(1.0), "one setting differs: max_bytes");
    // The stream itself kept the first edge's settings, and the first edge stays ready.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    let mut s = js.get_stream("CHAT").await.expect("stream");
    let info = s.info().await.expect("info");
    assert_eq!(info.config.max_bytes, 10 * 1024 * 1024 * 1024);
    assert_eq!(first.status("/readyz").await, Some(200));
    assert_eq!(first.metric("natter_edge_stream_drift").await, Some(0.0));
}
