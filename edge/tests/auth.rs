//! Authentication at join (PROTOCOL.md "Authentication (extension, v1.1)") against a real
//! edge and nats-server: what each mode accepts and refuses, the exact error code, where a
//! token may travel and which one wins, and that a refused join leaves nothing behind and
//! the socket usable.

mod common;

use std::time::Duration;

use common::*;
use natter_testkit::ChatClient;
use serde_json::{json, Value};

const ROOM: &str = "Tests Room";

fn required() -> Vec<&'static str> {
    vec!["--auth", "required", "--auth-hs256-secret", SECRET]
}

/// Assert a refused join: `-32007`, a message containing `why`, and a socket that still
/// answers.
async fn assert_unauthorized(c: &mut ChatClient, refused: Result<Value, Value>, why: &str) {
    let err = refused.expect_err("the join must be refused");
    assert_eq!(err["error"]["code"], -32007, "{err}");
    let msg = err["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains(why), "message {msg:?} should say {why:?}");
    assert_eq!(c.call("ping", json!({})).await["result"], "pong");
}

#[tokio::test]
async fn required_mode_refuses_every_bad_token_with_its_reason_and_leaves_no_trace() {
    let s = stack(1, &required()).await;
    let edge = &s.edges[0];
    // A watcher with a valid token sees whatever a refused join might leak.
    let mut watcher = ChatClient::connect(&edge.ws_url()).await.unwrap();
    let t = token("u-bob", None, None, 600);
    join_with_token(&mut watcher, ROOM, "u-bob", "Bob", Some(&t), false)
        .await
        .expect("a valid token joins");

    let mut c = ChatClient::connect(&edge.ws_url()).await.unwrap();
    // No token at all: the older system's flow is refused in required mode.
    let r = c.join(ROOM, "u-ann", "Ann", None, false).await;
    assert_unauthorized(&mut c, r, "a token is required").await;
    let r = c.join(ROOM, "u-ann", "Ann", None, true).await;
    assert_unauthorized(&mut c, r, "a token is required").await;

    let cases: Vec<(String, &str, &str, &str)> = vec![
        (token("u-ann", None, None, -120), "u-ann", "Ann", "expired"),
        (
            token_signed(
                "some-other-secret-some-other-secret-0000",
                "u-ann",
                None,
                None,
                600,
            ),
            "u-ann",
            "Ann",
            "signature",
        ),
        ("not.a.jwt".into(), "u-ann", "Ann", "malformed"),
        (
            token("u-ann", None, Some(&["Other Room", "team-*"]), 600),
            "u-ann",
            "Ann",
            "does not allow room",
        ),
        (
            token("u-eve", None, None, 600),
            "u-ann",
            "Ann",
            "is for userId",
        ),
        (
            token("u-ann", Some("Annie"), None, 600),
            "u-ann",
            "Ann",
            "allows only the user name",
        ),
    ];
    for (t, uid, name, why) in &cases {
        let r = join_with_token(&mut c, ROOM, uid, name, Some(t), false).await;
        assert_unauthorized(&mut c, r, why).await;
        let r = join_with_token(&mut c, ROOM, uid, name, Some(t), true).await;
        assert_unauthorized(&mut c, r, why).await;
    }
    // A refused socket sends nothing into the room.
    let r = c
        .call(
            "textMessage",
            json!({"userId":"u-ann","userName":"Ann","roomName":ROOM,"text":"sneak","uuid":"x1"}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32004, "{r}");

    // Nothing was published: the watcher heard no newUser, and the name is still free.
    let mut other = ChatClient::connect(&edge.ws_url()).await.unwrap();
    let t = token("u-other", None, Some(&["Tests *"]), 600);
    let w = join_with_token(&mut other, ROOM, "u-other", "Ann", Some(&t), false)
        .await
        .expect("the name Ann was never taken by a refused join");
    let members = w["params"]["members"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(members.len(), 2, "{members:?}");
    let first = watcher
        .next_matching(WAIT, |v| v["method"] == "newUser")
        .await
        .expect("newUser of the admitted join");
    assert_eq!(first["params"]["userName"], "Ann");
    assert_eq!(
        edge.metric("natter_edge_messages_in_total").await,
        Some(0.0)
    );

    // A held name joined by another user with a valid token: -32001, socket usable.
    let t = token("u-ann", None, None, 600);
    let err = join_with_token(&mut c, ROOM, "u-ann", "Ann", Some(&t), false)
        .await
        .expect_err("Ann is held by u-other");
    assert_eq!(err["error"]["code"], -32001, "{err}");
    assert_eq!(c.call("ping", json!({})).await["result"], "pong");

    // A valid token works end to end on the very socket that was refused: join, send, echo.
    let t = token("u-ann", Some("Anna"), Some(&[ROOM]), 600);
    join_with_token(&mut c, ROOM, "u-ann", "Anna", Some(&t), false)
        .await
        .expect("valid token");
    c.send_message(ROOM, "u-ann", "Anna", "hello", "m-1").await;
    let echo = c.room_messages(1, WAIT).await;
    assert_eq!(uuids(&echo), vec!["m-1"]);
    assert_eq!(echo[0]["params"]["ack"], true);
    let seen = watcher.room_messages(1, WAIT).await;
    assert_eq!(uuids(&seen), vec!["m-1"]);
    // The message was sent as the token's user only.
    let r = c
        .call(
            "textMessage",
            json!({"userId":"u-eve","userName":"Anna","roomName":ROOM,"text":"x","uuid":"m-2"}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32007, "{r}");
}

#[tokio::test]
async fn a_token_on_the_upgrade_serves_every_join_and_params_win() {
    let s = stack(1, &required()).await;
    let edge = &s.edges[0];
    let ann = token("u-ann", None, Some(&["a", "b"]), 600);

    // Authorization: Bearer on the upgrade: every join on the socket may use it.
    let bearer = format!("Bearer {ann}");
    let mut h = HeaderClient::connect(edge, &[("Authorization", &bearer)]).await;
    let r = h
        .call(
            "joinRoom",
            json!({"userId":"u-ann","userName":"Ann","roomName":"a"}),
        )
        .await;
    assert_eq!(r["result"], "OK", "{r}");
    h.next_matching(|v| v["method"] == "welcome").await;
    let r = h
        .call(
            "joinRoom",
            json!({"userId":"u-ann","userName":"Ann","roomName":"b"}),
        )
        .await;
    assert_eq!(r["result"], "OK", "{r}");
    h.next_matching(|v| v["method"] == "welcome").await;
    // ...but only within what it allows.
    let r = h
        .call(
            "joinRoom",
            json!({"userId":"u-ann","userName":"Ann","roomName":"c"}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32007, "{r}");
    // params.token wins over the upgrade's: a valid one lets the join into room c...
    let c_token = token("u-ann", None, Some(&["c"]), 600);
    let r = h
        .call(
            "joinRoom",
            json!({"userId":"u-ann","userName":"Ann","roomName":"c","token":c_token}),
        )
        .await;
    assert_eq!(r["result"], "OK", "{r}");
    h.next_matching(|v| v["method"] == "welcome").await;
    // ...and an expired one refuses a join the upgrade's token would have allowed.
    let expired = token("u-ann", None, None, -120);
    let r = h
        .call(
            "reconnect",
            json!({"userId":"u-ann","userName":"Ann","roomName":"a","token":expired}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32007, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("params.token") && m.contains("expired")),
        "{r}"
    );
    assert_eq!(h.call("ping", json!({})).await["result"], "pong");

    // A bad token on the upgrade still lets params.token through.
    let mut h = HeaderClient::connect(edge, &[("Authorization", "Bearer garbage")]).await;
    let r = h
        .call(
            "joinRoom",
            json!({"userId":"u-ann","userName":"Ann","roomName":"a"}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32007, "{r}");
    let r = h
        .call(
            "joinRoom",
            json!({"userId":"u-ann","userName":"Ann","roomName":"a","token":ann}),
        )
        .await;
    assert_eq!(r["result"], "OK", "{r}");

    // ?token= on the upgrade URL (browsers cannot set headers on a WebSocket).
    let url = format!("{}?token={ann}", edge.ws_url());
    let mut q = ChatClient::connect(&url).await.unwrap();
    q.join("b", "u-ann", "Ann", None, false)
        .await
        .expect("?token= admits the join");
    let r = q.join("a", "u-bob", "Bob", None, false).await;
    let err = r.expect_err("the socket's token is u-ann's");
    assert_eq!(err["error"]["code"], -32007, "{err}");
}

#[tokio::test]
async fn optional_mode_enforces_present_tokens_and_off_mode_ignores_them() {
    let s = stack(1, &["--auth", "optional", "--auth-hs256-secret", SECRET]).await;
    let mut c = ChatClient::connect(&s.edges[0].ws_url()).await.unwrap();
    c.join(ROOM, "u-ann", "Ann", None, false)
        .await
        .expect("no token is fine in optional mode");
    let bad = token("u-ann", None, None, -120);
    let r = join_with_token(&mut c, "r2", "u-ann", "Ann", Some(&bad), false).await;
    assert_unauthorized(&mut c, r, "expired").await;
    let good = token("u-ann", None, None, 600);
    join_with_token(&mut c, "r2", "u-ann", "Ann", Some(&good), false)
        .await
        .expect("a valid token");

    // --auth off: the older system's flow, unchanged; tokens, even garbage, are ignored.
    let s = stack(1, &["--auth", "off"]).await;
    let (mut ann, _) = joined(&s.edges[0], ROOM, "u-ann", "Ann").await;
    let (mut bob, _) = joined(&s.edges[0], ROOM, "u-bob", "Bob").await;
    join_with_token(&mut bob, "r2", "u-bob", "Bob", Some("garbage"), false)
        .await
        .expect("off ignores tokens");
    ann.send_message(ROOM, "u-ann", "Ann", "hi", "off-1").await;
    assert_eq!(uuids(&bob.room_messages(1, WAIT).await), vec!["off-1"]);
    assert_eq!(uuids(&ann.room_messages(1, WAIT).await), vec!["off-1"]);
    let log = s.edges[0].log();
    assert!(
        log.contains("authentication is OFF") && log.contains("local development only"),
        "the edge must warn that auth is off:\n{log}"
    );
    let quiet = bob.room_messages(1, Duration::from_millis(200)).await;
    assert!(quiet.is_empty(), "{quiet:?}");
}

#[tokio::test]
async fn a_token_that_expires_does_not_cut_an_open_socket_off() {
    let mut flags = required();
    flags.extend(["--auth-leeway-secs", "0"]);
    let s = stack(1, &flags).await;
    let edge = &s.edges[0];
    // Whole seconds: valid for 4 to 5 s, time enough to connect and join on a slow machine.
    let short = token("u-ann", None, None, 5);
    let url = format!("{}?token={short}", edge.ws_url());
    let mut ann = ChatClient::connect(&url).await.unwrap();
    ann.join(ROOM, "u-ann", "Ann", None, false)
        .await
        .expect("the token is valid for a few seconds");
    // Wait (bounded) until the server itself refuses the token as expired...
    let mut probe = ChatClient::connect(&url).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = probe.join("probe", "u-ann", "Ann", None, true).await;
        if let Err(e) = r {
            assert_eq!(e["error"]["code"], -32007, "{e}");
            assert!(
                e["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("expired"),
                "{e}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the token never expired"
        );
        tokio::time::sleep(Duration::from_millis(250)).await; // polling pace, not a sync
    }
    // ...and the socket that joined with it still sends and receives.
    ann.send_message(ROOM, "u-ann", "Ann", "still here", "late-1")
        .await;
    assert_eq!(uuids(&ann.room_messages(1, WAIT).await), vec!["late-1"]);
    // The next join on it needs a fresh token.
    let r = ann.join("another", "u-ann", "Ann", None, false).await;
    assert_eq!(r.unwrap_err()["error"]["code"], -32007);
    let fresh = token("u-ann", None, None, 600);
    join_with_token(&mut ann, "another", "u-ann", "Ann", Some(&fresh), false)
        .await
        .expect("a fresh token");
}
