//! The edge under failure, with real processes: kill -9, SIGTERM drain, a client that
//! stops reading, and a NATS restart that loses live messages.

mod common;

use std::time::Duration;

use common::*;
use natter_testkit::{ChatClient, Event};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn kill_9_of_an_edge_loses_nothing_for_its_clients() {
    let mut s = stack(2, &["--rate-per-sec", "1000", "--rate-burst", "1000"]).await;
    let (mut ann, _) = joined(&s.edges[0], "r", "u1", "Ann").await;
    let (mut bob, _) = joined(&s.edges[1], "r", "u2", "Bob").await;
    for i in 0..20 {
        ann.send_message("r", "u1", "Ann", "x", &format!("m{i}"))
            .await;
    }
    let seen = bob.room_messages(20, WAIT).await;
    assert_eq!(seen.len(), 20);
    let last = *ids(&seen).last().unwrap();

    s.edges[1].proc().kill9();
    // A killed process sends no close frame: the client sees the connection end.
    let end = bob.next_event(WAIT).await;
    assert!(matches!(end, Some(Event::Gone(_))), "{end:?}");
    for i in 20..70 {
        ann.send_message("r", "u1", "Ann", "x", &format!("m{i}"))
            .await;
    }
    // Bob's client moves to the surviving edge and resumes; the dead edge's claim on
    // "Bob" is taken over by the same userId.
    let mut bob = ChatClient::connect(&s.edges[0].ws_url()).await.unwrap();
    bob.join("r", "u2", "Bob", Some(last), true).await.unwrap();
    for i in 70..80 {
        ann.send_message("r", "u1", "Ann", "x", &format!("m{i}"))
            .await;
    }
    let rest = bob.room_messages(60, WAIT).await;
    assert_once_in_order(&rest);
    assert_eq!(
        uuids(&rest),
        (20..80).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    assert!(bob
        .room_messages(1, Duration::from_millis(300))
        .await
        .is_empty());
}

#[tokio::test]
async fn sigterm_drains_clients_with_a_reconnect_request_and_exits_in_time() {
    let mut s = stack(2, &["--rate-per-sec", "1000", "--rate-burst", "1000"]).await;
    let (mut ann, _) = joined(&s.edges[0], "r", "u1", "Ann").await;
    let (mut bob, _) = joined(&s.edges[1], "r", "u2", "Bob").await;
    // A second client on the draining edge that never moves: the deadline closes it.
    let (mut stubborn, _) = joined(&s.edges[1], "r", "u3", "Cid").await;
    ann.send_message("r", "u1", "Ann", "x", "m0").await;
    let last = ids(&bob.room_messages(1, WAIT).await)[0];

    s.edges[1].proc().term();
    let req = bob
        .next_matching(WAIT, |v| v["method"] == "reconnect")
        .await
        .expect("reconnect request");
    assert!(req["id"].is_number(), "existing clients need an id: {req}");
    assert_eq!(req["params"]["reason"], "draining");
    assert_eq!(s.edges[1].status("/readyz").await, Some(503));
    assert!(stubborn
        .next_matching(WAIT, |v| v["method"] == "reconnect")
        .await
        .is_some());

    // Messages keep flowing while Bob moves.
    for i in 1..30 {
        ann.send_message("r", "u1", "Ann", "x", &format!("m{i}"))
            .await;
    }
    let mut moved = ChatClient::connect(&s.edges[0].ws_url()).await.unwrap();
    moved
        .join("r", "u2", "Bob", Some(last), true)
        .await
        .unwrap();
    bob.close().await;
    let rest = moved.room_messages(29, WAIT).await;
    assert_once_in_order(&rest);
    assert_eq!(
        uuids(&rest),
        (1..30).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );

    // The edge exits by itself once its drain deadline passed (it would hang here if the
    // deadline were not enforced); how fast is the machine's business, not this test's.
    let status = s.edges[1]
        .proc()
        .wait_exit(WAIT)
        .await
        .expect("edge exited on its own");
    assert!(status.success(), "{status:?}");
    // The stubborn client was closed by the deadline.
    let end = stubborn.drain(Duration::from_secs(2)).await;
    assert!(
        end.iter()
            .any(|e| matches!(e, Event::Close(1001, _) | Event::Gone(_))),
        "{end:?}"
    );
}

/// A WebSocket client that joins and then never reads again.
async fn stalled_client(addr: std::net::SocketAddr, room: &str) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /chat HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let join = json!({"jsonrpc":"2.0","method":"joinRoom","id":1,
        "params":{"userId":"slow","userName":"Slow","roomName":room}})
    .to_string();
    // Client frames are masked; a zero mask keeps the payload as is.
    let mut frame = vec![0x81u8];
    let len = join.len();
    assert!(len < 126);
    frame.push(0x80 | len as u8);
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(join.as_bytes());
    s.write_all(&frame).await.unwrap();
    // Read until the join's "OK" (the member is registered), then never again.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let ok = tokio::time::timeout(WAIT, async {
        while !seen.windows(13).any(|w| w == br#""result":"OK""#) && seen.len() < 1 << 16 {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the edge closed the stalled client during its join");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(ok.is_ok(), "no join response for the stalled client");
    s
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_and_the_room_keeps_flowing() {
    let s = stack(
        1,
        &[
            "--outbound-queue",
            "128",
            "--rate-per-sec",
            "100000",
            "--rate-burst",
            "100000",
            "--max-text-bytes",
            "16384",
        ],
    )
    .await;
    let (mut ann, _) = joined(&s.edges[0], "r", "u1", "Ann").await;
    let (mut bob, _) = joined(&s.edges[0], "r", "u2", "Bob").await;
    let _stalled = stalled_client(s.edges[0].addr, "r").await;
    let text = "z".repeat(8000);
    let n = 2500;
    // The sender waits for its own echoes every 32 messages, as a real client bounds
    // its unacknowledged messages; the stalled member gets nothing of that courtesy.
    let sender = tokio::spawn(async move {
        for w in 0..n / 32 + 1 {
            let batch: Vec<usize> = (w * 32..((w + 1) * 32).min(n)).collect();
            for i in &batch {
                ann.send_message("r", "u1", "Ann", &text, &format!("m{i}"))
                    .await;
            }
            let echoes = ann.room_messages(batch.len(), WAIT).await;
            assert_eq!(echoes.len(), batch.len(), "sender lost echoes");
        }
        ann
    });
    let got = bob.room_messages(n, Duration::from_secs(60)).await;
    let _ann = sender.await.unwrap();
    assert_eq!(got.len(), n, "a stalled member must not stall the room");
    assert_once_in_order(&got);
    // The stalled socket is closed (its writer may be stuck on a full socket: the edge
    // drops it after a grace period).
    let edge = &s.edges[0];
    let kicked = natter_testkit::eventually(WAIT, || async {
        edge.metric("natter_edge_slow_client_disconnects_total")
            .await
            == Some(1.0)
    })
    .await;
    assert!(
        kicked,
        "members now: {:?}",
        edge.metric("natter_edge_members").await
    );
    assert_eq!(edge.metric("natter_edge_members").await, Some(2.0));
}

#[tokio::test]
async fn messages_missed_on_the_live_subject_during_a_nats_restart_are_repaired() {
    // No quiet-period tail check in this test's lifetime: the disconnect itself must make
    // the room look.
    let mut s = stack(1, &["--tail-check-quiet-secs", "3600"]).await;
    let (mut bob, _) = joined(&s.edges[0], "r", "u2", "Bob").await;
    let (mut ann, _) = joined(&s.edges[0], "r", "u1", "Ann").await;
    ann.send_message("r", "u1", "Ann", "x", "before").await;
    assert_eq!(uuids(&bob.room_messages(1, WAIT).await), vec!["before"]);
    // The check that traffic calls for (at most two 1 s ticks later) is done before the
    // restart.
    tokio::time::sleep(Duration::from_millis(3500)).await;

    s.nats.kill();
    // Down long enough for the edge's reconnect attempts to back off, so that it is
    // usually still away when the messages below are stored.
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.nats.restart().await;
    // Publish straight into the stream before the edge has necessarily reconnected: those
    // live copies may never reach it, and no later message reveals the gap.
    let client = async_nats::connect(s.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let token = natter_protocol::token::encode("r");
    for i in 0..5 {
        let mut p = serde_json::Map::new();
        p.insert("roomName".into(), json!("r"));
        p.insert("userId".into(), json!("u9"));
        p.insert("userName".into(), json!("Direct"));
        p.insert("text".into(), json!("x"));
        p.insert("uuid".into(), json!(format!("d{i}")));
        let body =
            natter_protocol::frame::stored_message("textMessage", None, p, "2026-01-01T00:00:00Z");
        let msg = async_nats::jetstream::message::PublishMessage::build()
            .payload(body)
            .message_id(natter_bus::subjects::msg_id(&token, &format!("d{i}")));
        js.send_publish(natter_bus::subjects::room(&token), msg)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let got = bob.room_messages(5, WAIT).await;
    assert_eq!(
        uuids(&got),
        (0..5).map(|i| format!("d{i}")).collect::<Vec<_>>()
    );
    assert_once_in_order(&got);
    // And live traffic goes on afterwards, still without duplicates.
    ann.send_message("r", "u1", "Ann", "x", "after").await;
    let after = bob.room_messages(1, WAIT).await;
    assert_eq!(uuids(&after), vec!["after"]);
    assert!(bob
        .room_messages(1, Duration::from_millis(1500))
        .await
        .is_empty());
}

#[tokio::test]
async fn an_r3_stream_survives_the_loss_of_a_nats_node() {
    let mut cluster = natter_testkit::NatsCluster::start(3).await;
    let url = cluster.url();
    let mut edges = Vec::new();
    for i in 0..2 {
        let args: Vec<String> = vec![
            "--nats-url".into(),
            // Each edge prefers a different node but knows them all.
            format!("{},{}", cluster.nodes[i].url(), url),
            "--node-name".into(),
            format!("edge-{i}"),
            "--stream-replicas".into(),
            "3".into(),
            "--tail-check-secs".into(),
            "1".into(),
            "--rate-per-sec".into(),
            "1000".into(),
            "--rate-burst".into(),
            "1000".into(),
        ];
        edges.push(natter_testkit::Service::start("natter-edge", &args, &[]).await);
    }
    let (mut ann, _) = joined(&edges[0], "r", "u1", "Ann").await;
    let (mut bob, _) = joined(&edges[1], "r", "u2", "Bob").await;
    for i in 0..20 {
        ann.send_message("r", "u1", "Ann", "x", &format!("m{i}"))
            .await;
    }
    assert_eq!(bob.room_messages(20, WAIT).await.len(), 20);

    // Lose the stream's leader (possibly the node an edge is connected to): a new leader
    // is elected from the two that remain, and edges fail over their connections.
    let leader = {
        let client = async_nats::connect(cluster.nodes[0].url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("CHAT").await.unwrap();
        let info = stream.info().await.unwrap();
        info.cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .expect("stream has a leader")
    };
    let idx: usize = leader
        .trim_start_matches('n')
        .parse()
        .expect("leader is n0..n2");
    cluster.nodes[idx].kill();
    let mut got = Vec::new();
    let mut errors = 0;
    for i in 20..60 {
        ann.send_message("r", "u1", "Ann", "x", &format!("m{i}"))
            .await;
    }
    // A publish during the leader election may be refused (-32010); the client retries
    // with the same uuid, as the protocol asks.
    let mut pending: Vec<String> = (20..60).map(|i| format!("m{i}")).collect();
    for _round in 0..10 {
        let mut echoes = Vec::new();
        while let Some(ev) = ann.next_event(Duration::from_secs(3)).await {
            match ev {
                Event::Json(v) if v["error"]["code"] == -32010 => errors += 1,
                Event::Json(v) if v.get("_id").is_some() => echoes.push(v),
                _ => {}
            }
        }
        let acked: std::collections::HashSet<String> = uuids(&echoes).into_iter().collect();
        pending.retain(|u| !acked.contains(u));
        if pending.is_empty() {
            break;
        }
        for u in &pending {
            ann.send_message("r", "u1", "Ann", "x", u).await;
        }
    }
    assert!(
        pending.is_empty(),
        "never acknowledged: {pending:?} ({errors} refusals)"
    );
    got.extend(bob.room_messages(40, WAIT).await);
    assert_once_in_order(&got);
    let mut want: Vec<String> = (20..60).map(|i| format!("m{i}")).collect();
    let mut seen = uuids(&got);
    want.sort();
    seen.sort();
    assert_eq!(seen, want);
    assert!(bob
        .room_messages(1, Duration::from_millis(500))
        .await
        .is_empty());
}

#[tokio::test]
async fn a_message_refused_while_nats_is_down_is_delivered_once_after_a_retry() {
    let mut s = stack(1, &["--nats-timeout-ms", "2000"]).await;
    let (mut ann, _) = joined(&s.edges[0], "r", "u1", "Ann").await;
    let (mut bob, _) = joined(&s.edges[0], "r", "u2", "Bob").await;
    s.nats.kill();
    ann.send_message("r", "u1", "Ann", "x", "while-down").await;
    // The stream could not acknowledge it: the client is told to retry with the same uuid.
    let refused = ann
        .next_matching(Duration::from_secs(30), |v| v.get("error").is_some())
        .await
        .expect("an error response");
    assert_eq!(refused["error"]["code"], -32010, "{refused}");
    s.nats.restart().await;
    s.edges[0].wait_ready(WAIT).await;
    // The retry (a client would do this on -32010) is stored and delivered exactly once,
    // even if the first attempt reached the stream after all.
    let mut delivered = Vec::new();
    for _ in 0..10 {
        ann.send_message("r", "u1", "Ann", "x", "while-down").await;
        delivered = bob.room_messages(1, Duration::from_secs(3)).await;
        if !delivered.is_empty() {
            break;
        }
    }
    assert_eq!(uuids(&delivered), vec!["while-down"]);
    assert!(
        bob.room_messages(1, Duration::from_secs(1))
            .await
            .is_empty(),
        "delivered twice"
    );
    // The edge hears the stream's replies again after the restart: a new message is stored
    // and nobody is told to retry it once its reply would be overdue (2 s).
    // (Its own request id: a retry above may have been refused, and Ann's errors are unread.)
    ann.send_json(
        &json!({"jsonrpc":"2.0","method":"textMessage","id":9000,"params":{
        "userId":"u1","userName":"Ann","roomName":"r","text":"x","ack":false,"uuid":"after"}}),
    )
    .await
    .expect("send");
    assert_eq!(uuids(&bob.room_messages(1, WAIT).await), vec!["after"]);
    let refused = ann
        .next_matching(Duration::from_secs(4), |v| {
            v["id"] == 9000 && v.get("error").is_some()
        })
        .await;
    assert!(refused.is_none(), "refused after the restart: {refused:?}");
}

/// A client with more publishes awaiting the stream than its socket may have (256) waits
/// for a slot instead of being refused at once; while NATS is down every request still
/// gets exactly one answer (`-32010` once the stream's reply is overdue), and the retries
/// after it returns are delivered once each.
#[tokio::test]
async fn publishes_past_the_sockets_slots_wait_and_each_is_answered_once() {
    const N: usize = 300;
    let mut s = stack(
        1,
        &[
            "--nats-timeout-ms",
            "1000",
            "--rate-per-sec",
            "1000",
            "--rate-burst",
            "1000",
        ],
    )
    .await;
    let (mut ann, _) = joined(&s.edges[0], "r", "u1", "Ann").await;
    let (mut bob, _) = joined(&s.edges[0], "r", "u2", "Bob").await;
    s.nats.kill();
    let uuids_sent: Vec<String> = (0..N).map(|i| format!("w{i}")).collect();
    for u in &uuids_sent {
        ann.send_message("r", "u1", "Ann", "x", u).await;
    }
    // The first 256 wait for their reply and are refused after the timeout; the rest wait
    // for those slots, are then sent and refused in turn.
    let mut refused = std::collections::HashSet::new();
    while refused.len() < N {
        let Some(ev) = ann.next_event(Duration::from_secs(15)).await else {
            break;
        };
        if let Event::Json(v) = ev {
            if v.get("error").is_none() {
                continue; // notifications (Bob joined)
            }
            assert_eq!(v["error"]["code"], -32010, "{v}");
            assert!(refused.insert(v["id"].clone()), "answered twice: {v}");
        }
    }
    assert_eq!(refused.len(), N, "requests answered");
    // Each refusal is logged naming the session it was for (all of them Ann's).
    let log = s.edges[0].log();
    let sessions: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("publish not acknowledged"))
        .map(|l| {
            l.split("session=")
                .nth(1)
                .and_then(|rest| rest.get(..32))
                .unwrap_or("")
        })
        .collect();
    assert_eq!(sessions.len(), N, "refusals logged");
    assert!(
        sessions.iter().all(|id| id.len() == 32
            && id.bytes().all(|b| b.is_ascii_hexdigit())
            && *id == sessions[0]),
        "refusals without Ann's session: {:?} in {:?}",
        sessions.iter().collect::<std::collections::HashSet<_>>(),
        log.lines().find(|l| l.contains("publish not acknowledged"))
    );
    s.nats.restart().await;
    s.edges[0].wait_ready(WAIT).await;
    // Retry everything until each is delivered (bounded rounds).
    let mut got = Vec::new();
    for _round in 0..10 {
        let seen: std::collections::HashSet<String> = uuids(&got).into_iter().collect();
        let missing: Vec<&String> = uuids_sent.iter().filter(|u| !seen.contains(*u)).collect();
        if missing.is_empty() {
            break;
        }
        for u in missing {
            ann.send_message("r", "u1", "Ann", "x", u).await;
        }
        got.extend(
            bob.room_messages(N - got.len(), Duration::from_secs(3))
                .await,
        );
    }
    got.extend(bob.room_messages(1, Duration::from_millis(500)).await);
    let mut seen = uuids(&got);
    seen.sort();
    let mut want = uuids_sent.clone();
    want.sort();
    assert_eq!(seen, want, "each delivered exactly once");
}

#[tokio::test]
async fn a_user_whose_edge_crashed_is_announced_as_left_once_the_name_expires() {
    let mut s = stack(2, &["--presence-ttl-secs", "3"]).await;
    let (mut ann, welcome) = joined(&s.edges[0], "r", "u1", "Ann").await;
    assert_eq!(welcome["params"]["members"], json!(["Ann"]));
    let (_bob, _) = joined(&s.edges[1], "r", "u2", "Bob").await;
    let (mut dave, _) = joined(&s.edges[0], "r", "u4", "Dave").await;
    for name in ["Bob", "Dave"] {
        ann.next_matching(WAIT, |v| {
            v["method"] == "newUser" && v["params"]["userName"] == name
        })
        .await
        .expect("newUser");
    }

    // Dave leaves normally: his edge announces it, and only once.
    let r = dave.call("leaveRoom", json!({"roomName": "r"})).await;
    assert_eq!(r["result"], "OK");
    ann.next_matching(WAIT, |v| {
        v["method"] == "userLeft" && v["params"]["userName"] == "Dave"
    })
    .await
    .expect("userLeft for Dave");

    // Bob's edge dies: nothing announces him, until his name expires from presence.
    s.edges[1].proc().kill9();
    let left = ann
        .next_matching(WAIT, |v| v["method"] == "userLeft")
        .await
        .expect("userLeft for Bob");
    assert_eq!(left["params"]["userName"], "Bob", "{left}");
    assert_eq!(left["params"]["roomName"], "r");
    // A newcomer's member list agrees.
    let (_carol, welcome) = joined(&s.edges[0], "r", "u3", "Carol").await;
    let mut members: Vec<String> = welcome["params"]["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    members.sort();
    assert_eq!(members, vec!["Ann", "Carol"]);
    // And nobody is announced twice (several presence checks pass meanwhile).
    let more = ann.drain(Duration::from_secs(3)).await;
    let dup: Vec<_> = more
        .iter()
        .filter(|e| matches!(e, Event::Json(v) if v["method"] == "userLeft"))
        .collect();
    assert!(dup.is_empty(), "{dup:?}");
}

#[tokio::test]
async fn a_quiet_room_reads_the_streams_tail_only_after_traffic_or_a_disruption() {
    let mut s = stack(1, &["--tail-check-quiet-secs", "3600"]).await;
    let edge = &s.edges[0];
    let (mut ann, _) = joined(edge, "r", "u1", "Ann").await;
    let (mut bob, _) = joined(edge, "r", "u2", "Bob").await;
    // A new room checks at its first tick (1 s here), then not while nothing happens.
    let started = await_tail_checks(edge, |n| n >= 1.0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let quiet = tail_checks(edge).await;
    assert_eq!(quiet, started, "a quiet room checked its tail");
    // A message makes the room check once it is quiet again (the first tick with no
    // message since the previous one).
    ann.send_message("r", "u1", "Ann", "x", "m1").await;
    assert_eq!(uuids(&bob.room_messages(1, WAIT).await), vec!["m1"]);
    let after_traffic = await_tail_checks(edge, |n| n > quiet).await;
    // So does a disruption of the edge's NATS connection, with no traffic at all.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        tail_checks(edge).await,
        after_traffic,
        "checked while quiet"
    );
    s.nats.kill();
    s.nats.restart().await;
    let edge = &s.edges[0];
    edge.wait_ready(WAIT).await;
    await_tail_checks(edge, |n| n > after_traffic).await;
    assert_eq!(bob.call("ping", json!({})).await["result"], "pong");
}

async fn tail_checks(edge: &natter_testkit::Service) -> f64 {
    edge.metric("natter_edge_tail_checks_total")
        .await
        .expect("natter_edge_tail_checks_total")
}

/// Poll the edge's tail-check count until `ok` holds, for at most [`WAIT`].
async fn await_tail_checks(edge: &natter_testkit::Service, ok: impl Fn(f64) -> bool) -> f64 {
    let mut n = f64::NAN;
    for _ in 0..200 {
        n = tail_checks(edge).await;
        if ok(n) {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("tail checks stayed at {n}");
}
