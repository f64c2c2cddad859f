//! The hostile-client suite for the edge's protocol surface (real nats-server and edge):
//! each case sends what a broken or malicious client would, and asserts the exact error
//! response or close code, that the socket stays usable when it should, and that nothing
//! was published, stored or shown to anyone else. Authentication cases live in `auth.rs`,
//! transport cases (slow headers, per-IP caps, Origin, idle sockets) in `transport.rs`;
//! SECURITY.md lists them all.

mod common;

use std::time::Duration;

use common::*;
use natter_testkit::{ChatClient, Event, NatsServer, Service};
use serde_json::{json, Value};

/// What a hostile case must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// An error response with this code; the socket stays usable.
    Error(i64),
    /// The socket is closed with this code.
    Close(u16),
}

/// What a hostile client sends after joining room `r` as `u-<n>`/`M<n>`.
enum Send {
    Json(Value),
    RawText(Vec<u8>),
    Fragmented(Vec<u8>, usize),
    Binary(Vec<u8>),
}

struct Case {
    name: &'static str,
    send: Send,
    expect: Expect,
}

fn text_params(n: usize, text: &str) -> Value {
    json!({"userId": format!("u-{n}"), "userName": format!("M{n}"), "roomName": "r",
           "text": text, "ack": false, "uuid": format!("hostile-{n}")})
}

fn cases() -> Vec<Case> {
    // 1,000 control characters: 1,000 bytes of text, 6,000 once JSON-escaped for storage.
    let escapes: String = "\u{1}".repeat(1000);
    vec![
        Case {
            name: "text as another userId on this socket",
            send: Send::Json(json!({"jsonrpc":"2.0","method":"textMessage","id":1,
                "params": {"userId":"someone-else","userName":"M0","roomName":"r","text":"x","uuid":"h0"}})),
            expect: Expect::Error(-32007),
        },
        Case {
            name: "text to a room not joined",
            send: Send::Json(json!({"jsonrpc":"2.0","method":"textMessage","id":1,
                "params": {"userId":"u-1","userName":"M1","roomName":"elsewhere","text":"x","uuid":"h1"}})),
            expect: Expect::Error(-32004),
        },
        Case {
            name: "history of a room not joined",
            send: Send::Json(json!({"jsonrpc":"2.0","method":"getHistory","id":1,
                "params": {"roomName":"elsewhere"}})),
            expect: Expect::Error(-32004),
        },
        Case {
            name: "stored message over --max-message-bytes",
            send: Send::Json(json!({"jsonrpc":"2.0","method":"textMessage","id":1,
                "params": text_params(3, &escapes)})),
            expect: Expect::Error(-32006),
        },
        Case {
            name: "text over --max-text-bytes",
            send: Send::Json(json!({"jsonrpc":"2.0","method":"textMessage","id":1,
                "params": text_params(4, &"y".repeat(9000))})),
            expect: Expect::Error(-32006),
        },
        Case {
            name: "not JSON",
            send: Send::RawText(b"{\"jsonrpc\":\"2.0\",".to_vec()),
            expect: Expect::Error(-32700),
        },
        Case {
            name: "unknown method",
            send: Send::Json(json!({"jsonrpc":"2.0","method":"dropTables","id":1,"params":{}})),
            expect: Expect::Error(-32002),
        },
        Case {
            name: "params of the wrong type",
            send: Send::Json(json!({"jsonrpc":"2.0","method":"textMessage","id":1,
                "params": {"userId":"u-7","userName":"M7","roomName":"r","text":["x"],"uuid":"h7"}})),
            expect: Expect::Error(-32600),
        },
        Case {
            name: "an object as request id",
            send: Send::Json(json!({"jsonrpc":"2.0","method":"ping","id":{"a":1}})),
            expect: Expect::Error(-32600),
        },
        Case {
            name: "binary frame",
            send: Send::Binary(br#"{"jsonrpc":"2.0","method":"ping","id":1}"#.to_vec()),
            expect: Expect::Error(-32700),
        },
        Case {
            name: "invalid UTF-8 in one frame",
            send: Send::RawText(
                b"{\"jsonrpc\":\"2.0\",\"method\":\"ping\",\"id\":\"\xff\"}".to_vec(),
            ),
            expect: Expect::Close(1007),
        },
        Case {
            name: "invalid UTF-8 across fragments",
            send: Send::Fragmented(
                b"{\"jsonrpc\":\"2.0\",\"method\":\"ping\",\"id\":\"\xc3(\"}".to_vec(),
                7,
            ),
            expect: Expect::Close(1007),
        },
        Case {
            name: "a message over the frame limit, fragmented",
            send: Send::Fragmented(vec![b' '; 70 * 1024], 4096),
            expect: Expect::Close(1009),
        },
    ]
}

/// Messages stored in the stream.
async fn stored(nats: &NatsServer) -> u64 {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    let mut s = js.get_stream("CHAT").await.expect("stream");
    s.info().await.expect("info").state.messages
}

/// The response to request id 1, or the close code, whichever comes first.
async fn outcome(c: &mut ChatClient) -> Option<Result<Value, u16>> {
    for _ in 0..1000 {
        match c.next_event(WAIT).await? {
            Event::Json(v)
                if v["id"] == json!(1) || (v["id"].is_null() && v.get("error").is_some()) =>
            {
                return Some(Ok(v))
            }
            Event::Close(code, _) => return Some(Err(code)),
            Event::Gone(_) => return None,
            _ => continue,
        }
    }
    None
}

#[tokio::test]
async fn every_hostile_frame_gets_its_documented_answer_and_nothing_else_happens() {
    let nats = NatsServer::start().await;
    let edge = Service::start(
        "natter-edge",
        &edge_args(
            &nats,
            0,
            &[
                "--max-message-bytes",
                "2048",
                "--rate-per-sec",
                "1000",
                "--rate-burst",
                "1000",
            ],
        ),
        &[],
    )
    .await;
    let (mut watcher, _) = joined(&edge, "r", "w", "Watcher").await;
    let before = stored(&nats).await;
    let published = edge.metric("natter_edge_messages_in_total").await;
    let mut failures = Vec::new();
    let cases = cases();
    for (n, case) in cases.iter().enumerate() {
        let (mut c, _) = joined(&edge, "r", &format!("u-{n}"), &format!("M{n}")).await;
        let sent = match &case.send {
            Send::Json(v) => c.send_json(v).await,
            Send::RawText(b) => c.send_raw_text(b).await,
            Send::Fragmented(b, chunk) => c.send_fragmented_text(b, *chunk).await,
            Send::Binary(b) => c.send_binary(b).await,
        };
        sent.expect("send");
        let got = outcome(&mut c).await;
        let ok = match (case.expect, &got) {
            (Expect::Error(code), Some(Ok(v))) => {
                v["error"]["code"] == json!(code)
                    // The socket is still usable.
                    && c.call("ping", json!({})).await["result"] == "pong"
            }
            (Expect::Close(code), Some(Err(got))) => *got == code,
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "{}: expected {:?}, got {got:?}",
                case.name, case.expect
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Nothing was published or stored, and the room saw only its members come and go.
    assert_eq!(stored(&nats).await, before, "a hostile frame was stored");
    assert_eq!(
        edge.metric("natter_edge_messages_in_total").await,
        published,
        "a hostile frame was published"
    );
    let seen: Vec<Event> = watcher.drain(Duration::from_millis(300)).await;
    let leaked: Vec<&Event> = seen
        .iter()
        .filter(|e| match e {
            Event::Json(v) => !matches!(v["method"].as_str(), Some("newUser" | "userLeft")),
            _ => true,
        })
        .collect();
    assert!(leaked.is_empty(), "the room saw {leaked:?}");
    println!("{} hostile cases passed", cases.len());
}

#[tokio::test]
async fn a_forged_type_and_extra_fields_never_reach_the_room() {
    let nats = NatsServer::start().await;
    let edge = Service::start("natter-edge", &edge_args(&nats, 0, &[]), &[]).await;
    let (ann, _) = joined(&edge, "r", "u1", "Ann").await;
    let (mut bob, _) = joined(&edge, "r", "u2", "Bob").await;
    ann.send_json(
        &json!({"jsonrpc":"2.0","method":"textMessage","id":5,"params":{
        "userId":"u1","userName":"Ann","roomName":"r","text":"hi","ack":false,"uuid":"f1",
        "date":1700000000000u64,"type":"system","_id":"999999","ts":"1970","admin":true,
        "html":"<script>alert(1)</script>"}}),
    )
    .await
    .expect("send");
    let got = bob.room_messages(1, WAIT).await;
    assert_eq!(got.len(), 1);
    let params = got[0]["params"].as_object().expect("params");
    let mut keys: Vec<&str> = params.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec!["ack", "date", "roomName", "text", "ts", "userId", "userName", "uuid"]
    );
    assert_ne!(params["ts"], "1970", "ts is the server's");
    assert_ne!(got[0]["_id"], "999999", "_id is the server's");
    // A new member's history holds the same clean object.
    let (mut carol, _) = joined(&edge, "r", "u3", "Carol").await;
    let hist = carol.room_messages(1, WAIT).await;
    assert_eq!(hist[0]["params"], got[0]["params"]);
}

#[tokio::test]
async fn ten_thousand_joins_on_one_socket_hold_at_most_the_room_limit() {
    let nats = NatsServer::start().await;
    let edge = Service::start(
        "natter-edge",
        &edge_args(
            &nats,
            0,
            &["--rate-per-sec", "100000", "--rate-burst", "100000"],
        ),
        &[],
    )
    .await;
    let mut c = ChatClient::connect(&edge.ws_url()).await.expect("connect");
    let n = 10_000u64;
    for i in 0..n {
        c.send_json(&json!({"jsonrpc":"2.0","method":"joinRoom","id":i,
            "params":{"userId":"u","userName":"Ann","roomName":format!("room-{i}")}}))
            .await
            .expect("send");
    }
    let (mut ok, mut refused, mut other) = (0u64, 0u64, Vec::new());
    while ok + refused + (other.len() as u64) < n {
        match c.next_event(WAIT).await {
            Some(Event::Json(v)) if v.get("result").is_some() => ok += 1,
            Some(Event::Json(v)) if v["error"]["code"] == -32600 => refused += 1,
            Some(Event::Json(v)) if v.get("error").is_some() => other.push(v),
            Some(Event::Json(_)) => {} // welcome, history
            e => panic!("socket ended after {ok} joins and {refused} refusals: {e:?}"),
        }
    }
    assert!(other.is_empty(), "{:?}", &other[..other.len().min(3)]);
    assert_eq!(ok, 16, "the default --max-rooms-per-socket");
    assert_eq!(refused, n - 16);
    assert_eq!(edge.metric("natter_edge_rooms").await, Some(16.0));
    assert_eq!(c.call("ping", json!({})).await["result"], "pong");
}
