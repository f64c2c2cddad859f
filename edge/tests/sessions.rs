//! Several sessions of one user (PROTOCOL.md joinRoom): the same userId joined to a room
//! from several sockets, on one edge or on two, against real edges and nats-server. Every
//! socket gets every message, none is closed because another joined, `newUser` goes out
//! once when the name becomes held and `userLeft` once when the last session leaves or
//! drops; meanwhile no other userId can take the name.

mod common;

use std::collections::BTreeSet;

use common::*;
use futures_util::TryStreamExt;
use natter_testkit::{ChatClient, Event};
use serde_json::{json, Value};

const ROOM: &str = "Tests Room";

/// Room messages until `n` arrived (bounded by [`WAIT`]), and every other JSON frame seen
/// on the way (notifications the test may want to assert the absence of).
async fn messages_and_others(c: &mut ChatClient, n: usize) -> (Vec<Value>, Vec<Value>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let (mut msgs, mut others) = (Vec::new(), Vec::new());
    while msgs.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next_event(left).await {
            Some(Event::Json(v)) if v.get("_id").is_some() => msgs.push(v),
            Some(Event::Json(v)) => others.push(v),
            Some(Event::Text(_)) => {}
            other => panic!("socket ended or went quiet after {msgs:?}: {other:?}"),
        }
    }
    (msgs, others)
}

fn methods(vs: &[Value]) -> Vec<String> {
    vs.iter()
        .filter_map(|v| v["method"].as_str().map(str::to_owned))
        .collect()
}

async fn assert_alive(c: &mut ChatClient) {
    assert_eq!(c.call("ping", json!({})).await["result"], "pong");
}

/// Ann joins from two sockets (on edges `e1` and `e2`) while Bob watches from edge 0.
/// The first socket goes by `leaveRoom` or by a network drop (`first_drops`), the second
/// by the other way.
async fn two_sessions_of_one_user(s: &Stack, e1: usize, e2: usize, first_drops: bool) {
    let (mut bob, _) = joined(&s.edges[0], ROOM, "u-bob", "Bob").await;
    let (mut a1, _) = joined(&s.edges[e1], ROOM, "u-ann", "Ann").await;
    let nu = bob
        .next_matching(WAIT, |v| v["method"] == "newUser")
        .await
        .expect("newUser when the name becomes held");
    assert_eq!(nu["params"]["userName"], "Ann");
    let (mut a2, w) = joined(&s.edges[e2], ROOM, "u-ann", "Ann").await;
    let members = w["params"]["members"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        members.iter().filter(|m| *m == "Ann").count(),
        1,
        "the name is listed once: {members:?}"
    );

    // Another userId cannot take the held name.
    let mut eve = ChatClient::connect(&s.edges[e2].ws_url()).await.unwrap();
    let err = eve
        .join(ROOM, "u-eve", "Ann", None, false)
        .await
        .unwrap_err();
    assert_eq!(err["error"]["code"], -32001, "{err}");
    assert_alive(&mut eve).await;

    // Every socket gets every message; no second newUser; nobody is closed.
    bob.send_message(ROOM, "u-bob", "Bob", "b", "m-bob").await;
    a1.send_message(ROOM, "u-ann", "Ann", "1", "m-a1").await;
    a2.send_message(ROOM, "u-ann", "Ann", "2", "m-a2").await;
    let want: BTreeSet<String> = ["m-bob", "m-a1", "m-a2"].map(String::from).into();
    let mut last = 0;
    for (who, c) in [("bob", &mut bob), ("a1", &mut a1), ("a2", &mut a2)] {
        let (msgs, others) = messages_and_others(c, 3).await;
        assert_once_in_order(&msgs);
        assert_eq!(
            uuids(&msgs).into_iter().collect::<BTreeSet<_>>(),
            want,
            "{who}"
        );
        assert!(
            !methods(&others).iter().any(|m| m == "newUser"),
            "{who} heard a second newUser: {others:?}"
        );
        last = last.max(*ids(&msgs).last().unwrap_or(&0));
        assert_alive(c).await;
    }

    // A reconnect from a third socket (to the other edge) works and closes nobody.
    let mut a3 = ChatClient::connect(&s.edges[e1].ws_url()).await.unwrap();
    a3.join(ROOM, "u-ann", "Ann", Some(last), true)
        .await
        .expect("reconnect of the same user");
    assert_alive(&mut a1).await;
    assert_alive(&mut a2).await;
    a3.close().await;

    // The first socket goes: the name stays held, the room hears nothing.
    if first_drops {
        // A network drop (the socket closes when the next message reaches it, below).
        drop(a1);
    } else {
        let r = a1.call("leaveRoom", json!({"roomName": ROOM})).await;
        assert_eq!(r["result"], "OK", "{r}");
    }
    a2.send_message(ROOM, "u-ann", "Ann", "still here", "m-after")
        .await;
    let (msgs, others) = messages_and_others(&mut bob, 1).await;
    assert_eq!(uuids(&msgs), vec!["m-after"]);
    assert!(
        !methods(&others).iter().any(|m| m == "userLeft"),
        "userLeft while a session remains: {others:?}"
    );
    let err = eve
        .join(ROOM, "u-eve", "Ann", None, false)
        .await
        .unwrap_err();
    assert_eq!(err["error"]["code"], -32001, "still held: {err}");

    // The last socket goes: userLeft, once, and the name is free for another user.
    if first_drops {
        let r = a2.call("leaveRoom", json!({"roomName": ROOM})).await;
        assert_eq!(r["result"], "OK", "{r}");
    } else {
        // A network drop: the client goes without a close frame. (The testkit client's
        // socket closes once the next frame for it arrives: Bob's message.)
        drop(a2);
        bob.send_message(ROOM, "u-bob", "Bob", "anyone?", "m-poke")
            .await;
    }
    let left = bob
        .next_matching(WAIT, |v| v["method"] == "userLeft")
        .await
        .expect("userLeft after the last session");
    assert_eq!(left["params"]["userName"], "Ann");
    eve.join(ROOM, "u-eve", "Ann", None, false)
        .await
        .expect("the name is free once every session is gone");
    let nu = bob
        .next_matching(WAIT, |v| {
            v["method"] == "userLeft" || (v["method"] == "newUser")
        })
        .await
        .expect("newUser for the new holder");
    assert_eq!(nu["method"], "newUser", "a second userLeft: {nu}");
}

#[tokio::test]
async fn two_sessions_of_one_user_on_one_edge() {
    let s = stack(1, &[]).await;
    two_sessions_of_one_user(&s, 0, 0, false).await;
}

#[tokio::test]
async fn two_sessions_of_one_user_on_two_edges() {
    let s = stack(2, &[]).await;
    two_sessions_of_one_user(&s, 0, 1, true).await;
}

#[tokio::test]
async fn concurrent_joins_of_two_users_for_one_name_admit_exactly_one_user() {
    let s = stack(2, &[]).await;
    let (mut bob, _) = joined(&s.edges[0], ROOM, "u-bob", "Bob").await;
    let mut tasks = Vec::new();
    for i in 0..8usize {
        let url = s.edges[i % 2].ws_url();
        let uid = if i % 2 == 0 { "u-ann" } else { "u-eve" };
        tasks.push(tokio::spawn(async move {
            let mut c = ChatClient::connect(&url).await.expect("connect");
            let r = c.join(ROOM, uid, "Ann", None, false).await;
            (uid, r.map_err(|e| e["error"]["code"].clone()), c)
        }));
    }
    let mut winners = BTreeSet::new();
    let mut clients = Vec::new();
    for t in tasks {
        let (uid, r, c) = t.await.expect("join task");
        match r {
            Ok(_) => {
                winners.insert(uid);
                clients.push(c);
            }
            Err(code) => assert_eq!(code, -32001, "{uid}"),
        }
    }
    assert_eq!(winners.len(), 1, "one userId holds the name: {winners:?}");
    assert_eq!(clients.len(), 4, "every socket of the holder is admitted");
    let nu = bob
        .next_matching(WAIT, |v| v["method"] == "newUser")
        .await
        .expect("newUser");
    assert_eq!(nu["params"]["userName"], "Ann");
    for c in &clients {
        c.close().await;
    }
    let left = bob
        .next_matching(WAIT, |v| {
            v["method"] == "userLeft" || v["method"] == "newUser"
        })
        .await
        .expect("userLeft after the last session");
    assert_eq!(left["method"], "userLeft", "one newUser only: {left}");
    let loser = if winners.contains("u-ann") {
        "u-eve"
    } else {
        "u-ann"
    };
    let mut c = ChatClient::connect(&s.edges[1].ws_url()).await.unwrap();
    c.join(ROOM, loser, "Ann", None, false)
        .await
        .expect("the name is free again");
}

#[tokio::test]
async fn a_name_that_changed_hands_during_an_outage_closes_its_sessions_with_resync() {
    let s = stack(1, &["--presence-ttl-secs", "3"]).await;
    let (mut ann, _) = joined(&s.edges[0], ROOM, "u-ann", "Ann").await;
    // What an outage past the TTL allows: the edge's lease expired, its entries were swept
    // and another userId took the name. (Written directly: the edge cannot be cut off from
    // a single server without also losing the bucket.)
    let client = async_nats::connect(s.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let kv = js.get_key_value("presence").await.unwrap();
    let leases = js.get_key_value("presence-leases").await.unwrap();
    let mut lapsed = 0;
    for key in leases
        .keys()
        .await
        .unwrap()
        .try_collect::<Vec<String>>()
        .await
        .unwrap()
    {
        if key != "sweep" {
            leases.purge(&key).await.unwrap();
            lapsed += 1;
        }
    }
    assert_eq!(lapsed, 1, "one edge, one lease");
    let key = natter_bus::subjects::presence_owner_key(
        &natter_protocol::token::encode(ROOM),
        &natter_protocol::token::encode("Ann"),
    );
    let eve = serde_json::to_vec(&natter_bus::Owner {
        user_id: "u-eve".into(),
        user_name: "Ann".into(),
    })
    .unwrap();
    kv.put(&key, eve.into()).await.unwrap();
    // The edge's next renewal finds its lease gone and restores its entries, which shows
    // that the name moved on: the session is told to resync (1013), not kept
    // under a name that is no longer its user's.
    assert_eq!(close_code(&mut ann).await, Some(1013));
    let mut again = ChatClient::connect(&s.edges[0].ws_url()).await.unwrap();
    let err = again
        .join(ROOM, "u-ann", "Ann", None, true)
        .await
        .unwrap_err();
    assert_eq!(err["error"]["code"], -32001, "{err}");
    assert_alive(&mut again).await;
}

#[tokio::test]
async fn a_join_racing_the_last_leave_never_leaves_a_session_without_its_name() {
    let s = stack(2, &[]).await;
    let client = async_nats::connect(s.nats.url()).await.unwrap();
    let kv = async_nats::jetstream::new(client)
        .get_key_value("presence")
        .await
        .unwrap();
    let room_token = natter_protocol::token::encode(ROOM);
    let user_token = natter_protocol::token::encode("Ann");
    let (mut current, _) = joined(&s.edges[0], ROOM, "u-ann", "Ann").await;
    for round in 0..60usize {
        // The only session leaves while a new one of the same user joins on the other edge.
        let url = s.edges[(round + 1) % 2].ws_url();
        let joiner = tokio::spawn(async move {
            let mut c = ChatClient::connect(&url).await.expect("connect");
            let r = c.join(ROOM, "u-ann", "Ann", None, false).await;
            (c, r)
        });
        let r = current.call("leaveRoom", json!({"roomName": ROOM})).await;
        assert_eq!(r["result"], "OK", "{r}");
        let (next, joined) = joiner.await.expect("joiner");
        joined.unwrap_or_else(|e| panic!("round {round}: the same user was refused: {e}"));
        // Whatever the interleaving, a joined session means a held name.
        let holder = natter_bus::name_holder(&kv, &room_token, &user_token, WAIT)
            .await
            .unwrap();
        assert_eq!(holder.as_deref(), Some("u-ann"), "round {round}");
        current.close().await;
        current = next;
    }
    let mut eve = ChatClient::connect(&s.edges[0].ws_url()).await.unwrap();
    let err = eve
        .join(ROOM, "u-eve", "Ann", None, false)
        .await
        .unwrap_err();
    assert_eq!(err["error"]["code"], -32001, "{err}");
}

#[tokio::test]
async fn a_rejoin_that_is_refused_gives_the_old_hold_back() {
    let s = stack(1, &[]).await;
    let (mut ann, w) = joined(&s.edges[0], ROOM, "u-ann", "Ann").await;
    let client = async_nats::connect(s.nats.url()).await.unwrap();
    let kv = async_nats::jetstream::new(client)
        .get_key_value("presence")
        .await
        .unwrap();
    let (room_token, user_token) = (
        natter_protocol::token::encode(ROOM),
        natter_protocol::token::encode("Ann"),
    );
    let sid = w["params"]["sessionId"].as_str().unwrap_or_default();
    let session_key = natter_bus::subjects::presence_session_key(&room_token, &user_token, sid);
    assert!(
        kv.get(&session_key).await.unwrap().is_some(),
        "{session_key}"
    );
    // The name changed hands behind the edge's back (as after an outage)...
    let eve = serde_json::to_vec(&natter_bus::Owner {
        user_id: "u-eve".into(),
        user_name: "Ann".into(),
    })
    .unwrap();
    let owner_key = natter_bus::subjects::presence_owner_key(&room_token, &user_token);
    kv.put(&owner_key, eve.into()).await.unwrap();
    // ...and the socket rejoins its room: refused, out of the room, its old hold gone
    // (not kept alive by the edge until the socket closes).
    let err = ann
        .join(ROOM, "u-ann", "Ann", None, true)
        .await
        .unwrap_err();
    assert_eq!(err["error"]["code"], -32001, "{err}");
    assert_eq!(kv.get(&session_key).await.unwrap(), None);
    let r = ann
        .call(
            "textMessage",
            json!({"userId":"u-ann","userName":"Ann","roomName":ROOM,"text":"x","uuid":"q"}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32004, "{r}");
}
