//! Protocol behaviour of the edge against real nats-server processes: delivery across
//! edges, names, dedupe, resume, history, bad input, awkward room names.

mod common;

use std::time::Duration;

use common::*;
use natter_testkit::{ChatClient, Event};
use serde_json::{json, Value};

#[tokio::test]
async fn two_users_on_two_edges_see_every_message_once_in_the_same_order() {
    let s = stack(2, &[]).await;
    let (mut ann, w) = joined(&s.edges[0], "Tests Room", "u-ann", "Ann").await;
    assert_eq!(w["params"]["node"], "edge-0");
    assert_eq!(w["params"]["roomName"], "Tests Room");
    let (mut bob, w) = joined(&s.edges[1], "Tests Room", "u-bob", "Bob").await;
    assert_eq!(w["params"]["node"], "edge-1");
    let members = w["params"]["members"].as_array().unwrap().clone();
    assert!(
        members.contains(&json!("Ann")) && members.contains(&json!("Bob")),
        "{members:?}"
    );
    // Ann hears that Bob joined.
    let nu = ann
        .next_matching(WAIT, |v| v["method"] == "newUser")
        .await
        .expect("newUser");
    assert_eq!(nu["params"]["userName"], "Bob");
    assert_eq!(nu["params"]["text"], "Bob has joined the room!");

    for i in 0..20 {
        ann.send_message(
            "Tests Room",
            "u-ann",
            "Ann",
            &format!("a{i}"),
            &format!("ann-{i}"),
        )
        .await;
        bob.send_message(
            "Tests Room",
            "u-bob",
            "Bob",
            &format!("b{i}"),
            &format!("bob-{i}"),
        )
        .await;
    }
    let a = ann.room_messages(40, WAIT).await;
    let b = bob.room_messages(40, WAIT).await;
    assert_eq!(a.len(), 40);
    assert_eq!(b.len(), 40);
    assert_once_in_order(&a);
    assert_eq!(uuids(&a), uuids(&b), "both members see the same order");
    assert_eq!(ids(&a), ids(&b));
    // The sender's echo is its ack.
    let echo = a.iter().find(|m| m["params"]["uuid"] == "ann-0").unwrap();
    assert_eq!(echo["params"]["ack"], true);
    assert_eq!(echo["method"], "textMessage");
    assert!(echo["params"]["ts"].is_string());
    assert_eq!(echo["params"]["date"], 1_700_000_000_000u64);
    // Nothing more arrives.
    let extra: Vec<_> = ann
        .drain(Duration::from_millis(300))
        .await
        .into_iter()
        .filter(|e| matches!(e, Event::Json(v) if v.get("_id").is_some()))
        .collect();
    assert!(extra.is_empty(), "{extra:?}");
}

#[tokio::test]
async fn names_are_unique_per_room_across_edges_and_the_same_user_may_hold_one_twice() {
    let s = stack(2, &[]).await;
    let (mut old, _) = joined(&s.edges[0], "r", "u1", "Ann").await;
    // Another userId on the other edge: refused.
    let mut other = ChatClient::connect(&s.edges[1].ws_url()).await.unwrap();
    let err = other.join("r", "u2", "Ann", None, false).await.unwrap_err();
    assert_eq!(err["error"]["code"], -32001, "{err}");
    // The socket stays usable.
    assert_eq!(other.call("ping", json!({})).await["result"], "pong");
    // The same name in another room is fine.
    other.join("r2", "u2", "Ann", None, false).await.unwrap();
    // The same userId joins again from another edge; both sessions stay.
    let mut new = ChatClient::connect(&s.edges[1].ws_url()).await.unwrap();
    new.join("r", "u1", "Ann", None, true).await.unwrap();
    assert_eq!(old.call("ping", json!({})).await["result"], "pong");
    // And still nobody else can take it.
    let mut third = ChatClient::connect(&s.edges[0].ws_url()).await.unwrap();
    let err = third.join("r", "u3", "Ann", None, false).await.unwrap_err();
    assert_eq!(err["error"]["code"], -32001);
}

#[tokio::test]
async fn an_older_session_is_never_closed_by_a_newer_one() {
    let s = stack(2, &[]).await;
    let (mut old, _) = joined(&s.edges[0], "r", "u1", "Ann").await;
    let mut new = ChatClient::connect(&s.edges[1].ws_url()).await.unwrap();
    new.join("r", "u1", "Ann", None, false).await.unwrap();
    // The old socket still gets the room's messages (the newer one's included) and answers;
    // no close frame came before them.
    new.send_message("r", "u1", "Ann", "from the new tab", "n-1")
        .await;
    let mut got = Vec::new();
    while got.is_empty() {
        match old.next_event(WAIT).await {
            Some(Event::Json(v)) if v.get("_id").is_some() => got.push(v),
            Some(Event::Json(_)) => {}
            other => panic!("the older session must stay open, got {other:?}"),
        }
    }
    assert_eq!(uuids(&got), vec!["n-1"]);
    assert_eq!(old.call("ping", json!({})).await["result"], "pong");
    assert_eq!(uuids(&new.room_messages(1, WAIT).await), vec!["n-1"]);
}

#[tokio::test]
async fn a_retried_uuid_is_stored_and_delivered_once() {
    let s = stack(1, &[]).await;
    let (mut ann, _) = joined(&s.edges[0], "r", "u1", "Ann").await;
    let (mut bob, _) = joined(&s.edges[0], "r", "u2", "Bob").await;
    ann.send_message("r", "u1", "Ann", "hello", "same-uuid")
        .await;
    ann.send_message("r", "u1", "Ann", "hello", "same-uuid")
        .await;
    // A retry from another socket of the same user, too.
    let mut ann2 = ChatClient::connect(&s.edges[0].ws_url()).await.unwrap();
    ann2.join("r", "u1", "Ann", None, true).await.unwrap();
    ann2.send_message("r", "u1", "Ann", "hello", "same-uuid")
        .await;
    ann2.send_message("r", "u1", "Ann", "after", "next").await;
    let got = bob.room_messages(2, WAIT).await;
    assert_eq!(uuids(&got), vec!["same-uuid", "next"]);
    let more = bob.room_messages(1, Duration::from_millis(500)).await;
    assert!(more.is_empty(), "duplicate delivered: {more:?}");
    // A fresh joiner's history holds it once.
    let mut carol = ChatClient::connect(&s.edges[0].ws_url()).await.unwrap();
    carol.join("r", "u3", "Carol", None, false).await.unwrap();
    let mut hist = carol.room_messages(2, WAIT).await;
    hist.extend(carol.room_messages(1, Duration::from_millis(500)).await);
    assert_eq!(uuids(&hist), vec!["same-uuid", "next"]);
}

#[tokio::test]
async fn resume_after_a_drop_delivers_exactly_the_missed_messages_while_traffic_flows() {
    resume_while_traffic_flows(&[]).await;
}

/// The same with write coalescing: a resuming member goes live while the room holds a
/// window's messages staged, and must get each exactly once, in order.
#[tokio::test]
async fn resume_while_traffic_flows_loses_and_repeats_nothing_with_coalesced_writes() {
    resume_while_traffic_flows(&["--coalesce-ms", "20"]).await;
}

async fn resume_while_traffic_flows(extra: &[&str]) {
    let mut args = vec!["--rate-per-sec", "1000", "--rate-burst", "1000"];
    args.extend_from_slice(extra);
    let s = stack(2, &args).await;
    let (mut ann, _) = joined(&s.edges[0], "r", "u1", "Ann").await;
    let (mut bob, _) = joined(&s.edges[1], "r", "u2", "Bob").await;
    for i in 0..10 {
        ann.send_message("r", "u1", "Ann", "x", &format!("m{i}"))
            .await;
    }
    let first = bob.room_messages(10, WAIT).await;
    assert_eq!(first.len(), 10);
    let last = *ids(&first).last().unwrap();
    drop(bob); // network drop: no close frame

    // Keep sending while Bob is away and while he resumes.
    let (away_tx, away_rx) = tokio::sync::oneshot::channel();
    let sender = tokio::spawn(async move {
        let mut away_tx = Some(away_tx);
        for i in 10..310 {
            ann.send_message("r", "u1", "Ann", "x", &format!("m{i}"))
                .await;
            if i == 60 {
                // Fifty messages went out while Bob was away: let him come back.
                away_tx.take().map(|tx| tx.send(()));
            }
            if i % 10 == 0 {
                // Pacing (not synchronisation): spread the traffic over Bob's resume.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let echoes = ann.room_messages(310, WAIT).await;
        (ann, echoes)
    });
    tokio::time::timeout(WAIT, away_rx)
        .await
        .expect("sender under way")
        .expect("sender alive");
    let mut bob = ChatClient::connect(&s.edges[1].ws_url()).await.unwrap();
    bob.join("r", "u2", "Bob", Some(last), true).await.unwrap();
    let rest = bob.room_messages(300, WAIT).await;
    let (_ann, echoes) = sender.await.unwrap();
    assert_eq!(echoes.len(), 310, "sender saw all its echoes");
    assert_once_in_order(&rest);
    let want: Vec<String> = (10..310).map(|i| format!("m{i}")).collect();
    assert_eq!(uuids(&rest), want);
    assert!(ids(&rest)[0] > last);
    let more = bob.room_messages(1, Duration::from_millis(300)).await;
    assert!(more.is_empty());
}

#[tokio::test]
async fn join_sends_the_newest_history_and_get_history_pages_back() {
    let s = stack(
        1,
        &[
            "--max-messages-history",
            "5",
            "--rate-per-sec",
            "1000",
            "--rate-burst",
            "1000",
        ],
    )
    .await;
    let (mut ann, _) = joined(&s.edges[0], "r", "u1", "Ann").await;
    for i in 0..12 {
        ann.send_message("r", "u1", "Ann", "x", &format!("m{i}"))
            .await;
    }
    let mine = ann.room_messages(12, WAIT).await;
    assert_eq!(mine.len(), 12);
    let (mut bob, w) = joined(&s.edges[0], "r", "u2", "Bob").await;
    assert_eq!(
        w["params"]["lastMessageId"],
        json!(ids(&mine)[11].to_string())
    );
    let hist = bob.room_messages(5, WAIT).await;
    assert_eq!(uuids(&hist), vec!["m7", "m8", "m9", "m10", "m11"]);
    // Scroll back in pages of 4 from the oldest message shown.
    let mut before = ids(&hist)[0];
    let mut older = Vec::new();
    for _ in 0..5 {
        let r = bob
            .call(
                "getHistory",
                json!({"roomName": "r", "before": before.to_string(), "limit": 4}),
            )
            .await;
        let page = r["result"]["messages"].as_array().unwrap().clone();
        older.splice(0..0, page.clone());
        if r["result"]["more"] == false {
            break;
        }
        before = ids(&page)[0];
    }
    assert_eq!(
        uuids(&older),
        (0..7).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    let r = bob.call("getHistory", json!({"roomName": "nope"})).await;
    assert_eq!(r["error"]["code"], -32004);
}

#[tokio::test]
async fn bad_input_gets_the_documented_error_and_nothing_else() {
    let s = stack(1, &["--max-text-bytes", "100"]).await;
    let (mut c, _) = joined(&s.edges[0], "r", "u1", "Ann").await;
    let (mut watcher, _) = joined(&s.edges[0], "r", "u2", "Bob").await;
    let _ = c.drain(Duration::from_millis(200)).await;

    let cases: Vec<(&str, Value, i64)> = vec![
        ("not json", Value::Null, -32700),
        ("[1,2,3]", Value::Null, -32600),
        (
            r#"{"jsonrpc":"2.0","method":"textMessage","params":{"roomName":5},"id":1}"#,
            json!(1),
            -32600,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"joinRoom","params":"x","id":2}"#,
            json!(2),
            -32600,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"fly","params":{},"id":"q"}"#,
            json!("q"),
            -32002,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"textMessage","params":{"userId":"u1","userName":"Ann","roomName":"other","text":"hi","uuid":"z1"},"id":4}"#,
            json!(4),
            -32004,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"textMessage","params":{"userId":"u9","userName":"Ann","roomName":"r","text":"hi","uuid":"z2"},"id":5}"#,
            json!(5),
            -32007,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"leaveRoom","params":{"roomName":"other"},"id":6}"#,
            json!(6),
            -32004,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"typing","params":{"roomName":"other"},"id":7}"#,
            json!(7),
            -32004,
        ),
    ];
    for (frame, id, code) in &cases {
        c.send_text(frame).await.unwrap();
        let v = c.next_json().await;
        assert_eq!(v["error"]["code"], *code, "{frame} -> {v}");
        assert_eq!(&v["id"], id, "{frame} -> {v}");
    }
    let big = "x".repeat(101);
    c.send_json(&json!({"jsonrpc":"2.0","method":"textMessage","id":8,"params":{"userId":"u1","userName":"Ann","roomName":"r","text":big,"uuid":"z3"}}))
        .await
        .unwrap();
    assert_eq!(c.next_json().await["error"]["code"], -32006);
    c.send_binary(b"\x00\x01").await.unwrap();
    let v = c.next_json().await;
    assert_eq!(
        (v["error"]["code"].as_i64(), v["id"].is_null()),
        (Some(-32700), true)
    );
    // The socket still works, and nothing was published.
    assert_eq!(c.call("ping", json!({})).await["result"], "pong");
    let leaked = watcher.room_messages(1, Duration::from_millis(500)).await;
    assert!(leaked.is_empty(), "{leaked:?}");
    let stored = s.edges[0].metric("natter_edge_messages_in_total").await;
    assert_eq!(stored, Some(0.0));

    // A frame over the limit closes the socket with 1009; others are unaffected.
    let huge = format!(
        r#"{{"jsonrpc":"2.0","method":"ping","id":1,"pad":"{}"}}"#,
        "p".repeat(70 * 1024)
    );
    c.send_text(&huge).await.unwrap();
    assert_eq!(close_code(&mut c).await, Some(1009));
    assert_eq!(watcher.call("ping", json!({})).await["result"], "pong");
}

#[tokio::test]
async fn rate_limit_refuses_without_publishing() {
    let s = stack(1, &["--rate-per-sec", "1", "--rate-burst", "3"]).await;
    let (mut c, _) = joined(&s.edges[0], "r", "u1", "Ann").await;
    for i in 0..6 {
        c.send_message("r", "u1", "Ann", "x", &format!("m{i}"))
            .await;
    }
    let mut limited = 0;
    let mut delivered = 0;
    for _ in 0..6 {
        match c.next_event(WAIT).await {
            Some(Event::Json(v)) if v["error"]["code"] == -32005 => limited += 1,
            Some(Event::Json(v)) if v.get("_id").is_some() => delivered += 1,
            other => panic!("{other:?}"),
        }
    }
    // The join used one token; a refill during the test may add one.
    assert!(
        limited >= 2 && delivered + limited == 6,
        "limited {limited}, delivered {delivered}"
    );
}

#[tokio::test]
async fn awkward_room_names_are_separate_rooms_and_never_raw_subjects() {
    let s = stack(2, &[]).await;
    let names = ["Tests Room", "a.b", "a", "*", ">", "room.>", "ünï 房间 🚀"];
    let mut clients = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let (a, _) = joined(&s.edges[0], n, "u1", "Ann").await;
        let (b, _) = joined(&s.edges[1], n, "u2", "Bob").await;
        clients.push((i, *n, a, b));
    }
    for (i, n, a, _) in clients.iter_mut() {
        a.send_message(n, "u1", "Ann", "hi", &format!("in-{i}"))
            .await;
    }
    for (i, n, _, b) in clients.iter_mut() {
        let got = b.room_messages(1, WAIT).await;
        assert_eq!(uuids(&got), vec![format!("in-{i}")], "room {n:?}");
        assert_eq!(got[0]["params"]["roomName"], json!(n));
        let more = b.room_messages(1, Duration::from_millis(200)).await;
        assert!(more.is_empty(), "cross-talk into {n:?}: {more:?}");
    }
    // Every stored subject is room.<base64url token>.
    let client = async_nats::connect(s.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("CHAT").await.unwrap();
    let mut subjects = stream.info_with_subjects("room.>").await.unwrap();
    use futures_util::StreamExt;
    let mut seen = 0;
    while let Some(Ok((subject, _))) = subjects.next().await {
        let tok = subject.strip_prefix("room.").unwrap();
        assert!(
            tok.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{subject}"
        );
        let name = natter_protocol::token::decode(tok).unwrap();
        assert!(names.contains(&name.as_str()), "{name}");
        seen += 1;
    }
    assert_eq!(seen, names.len());
}

#[tokio::test]
async fn leave_typing_and_departure_notifications() {
    let s = stack(2, &[]).await;
    let (mut ann, _) = joined(&s.edges[0], "r", "u1", "Ann").await;
    let (mut bob, _) = joined(&s.edges[1], "r", "u2", "Bob").await;
    ann.next_matching(WAIT, |v| v["method"] == "newUser")
        .await
        .unwrap();
    assert_eq!(
        bob.call("typing", json!({"roomName": "r"})).await["result"],
        "OK"
    );
    let t = ann
        .next_matching(WAIT, |v| v["method"] == "typing")
        .await
        .unwrap();
    assert_eq!(t["params"]["userName"], "Bob");
    // The typist does not hear itself.
    let echo = bob
        .next_matching(Duration::from_millis(300), |v| v["method"] == "typing")
        .await;
    assert!(echo.is_none());
    assert_eq!(
        bob.call("leaveRoom", json!({"roomName": "r"})).await["result"],
        "OK"
    );
    let left = ann
        .next_matching(WAIT, |v| v["method"] == "userLeft")
        .await
        .unwrap();
    assert_eq!(left["params"]["userName"], "Bob");
    // After leaving, the name is free for someone else.
    let mut carol = ChatClient::connect(&s.edges[0].ws_url()).await.unwrap();
    carol.join("r", "u3", "Bob", None, false).await.unwrap();
    // A client that closes its socket also leaves.
    carol.close().await;
    let left = ann
        .next_matching(WAIT, |v| v["method"] == "userLeft")
        .await
        .unwrap();
    assert_eq!(left["params"]["userName"], "Bob");
    // Unknown paths are 404.
    assert_eq!(s.edges[0].status("/nope").await, Some(404));
}
