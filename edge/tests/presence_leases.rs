//! Presence under edge leases, against a real nats-server and real edges: idle sessions
//! write nothing, a dead lease's names are freed by a live edge (`userLeft`), a lapsed
//! lease is taken again without losing a name (`newUser` for those put back), a release
//! made while NATS was down is retried and announced, a name gone without an announcement
//! is announced after a reconnect (and, found by the periodic listing, one tick after it
//! is first missed), and a restore round (spread over time, working from a
//! snapshot) never brings back a name whose last session left during it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use common::*;
use futures_util::TryStreamExt;

use natter_bus::{subjects, StreamArgs, StreamReader};
use natter_edge::outbox::{Outbox, Signal};
use natter_edge::presence::{Presence, Released};
use natter_edge::transport::socket::Socket;
use natter_testkit::{ChatClient, NatsServer, Service};
use tokio::sync::watch;

/// A session's outbox over a loopback socket (the restore never writes to it here).
async fn outbox() -> (Outbox, tokio::net::TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let (c, s) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
    let (tx, _rx) = watch::channel(Signal::default());
    (
        Outbox::new(Socket::new(s.expect("accept").0, 8), tx, uuid::Uuid::nil()),
        c.expect("connect"),
    )
}

#[tokio::test]
async fn a_name_released_during_a_restore_round_stays_free() {
    let nats = NatsServer::start().await;
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    let kv = natter_bus::ensure_presence(&js, &StreamArgs::default())
        .await
        .expect("presence bucket");
    let reader = StreamReader::new(
        client.clone(),
        &format!("KV_{}", subjects::PRESENCE_BUCKET),
        Duration::from_secs(5),
    );
    let leases = natter_bus::ensure_leases(&js, &StreamArgs::default())
        .await
        .expect("leases bucket");
    let presence = Arc::new(Presence::new(
        kv.clone(),
        leases,
        reader,
        "edge-t".into(),
        Duration::from_secs(30),
    ));

    // Enough names for several chunks, so the round's owner writes come well after its
    // snapshot.
    const NAMES: usize = 200;
    let mut held = Vec::new();
    for i in 0..NAMES {
        let (out, peer) = outbox().await;
        let c = presence
            .claim(
                "room",
                &format!("u{i}"),
                &format!("id{i}"),
                &format!("user{i}"),
                &format!("s{i}"),
                &out,
            )
            .await
            .expect("claim");
        assert!(c.first);
        held.push((c, out, peer));
    }

    // A round spread over 2 s; every session leaves at its start.
    let round = {
        let p = presence.clone();
        tokio::spawn(async move { p.restore(Duration::from_secs(2)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    for (c, _, _) in &held {
        assert_eq!(presence.release(&c.session_key).await, Released::Freed);
    }
    tokio::time::timeout(Duration::from_secs(30), round)
        .await
        .expect("the round ends")
        .expect("the round does not panic");

    // Every name is free: no owner key was brought back.
    let mut back = Vec::new();
    for (c, _, _) in &held {
        if kv.get(&c.owner_key).await.expect("get").is_some() {
            back.push(c.owner_key.clone());
        }
    }
    assert!(
        back.is_empty(),
        "{} of {NAMES} released names were re-created by the restore: {:?}",
        back.len(),
        &back[..back.len().min(5)]
    );
}

const ROOM: &str = "Lease Room";

fn room_token() -> String {
    natter_protocol::token::encode(ROOM)
}

fn user_token(name: &str) -> String {
    natter_protocol::token::encode(name)
}

async fn buckets(nats: &NatsServer) -> (jetstream::Context, kv::Store, kv::Store) {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = jetstream::new(client);
    let presence = js.get_key_value("presence").await.expect("presence");
    let leases = js.get_key_value("presence-leases").await.expect("leases");
    (js, presence, leases)
}

/// Every key of a bucket.
async fn keys(bucket: &kv::Store) -> Vec<String> {
    bucket
        .keys()
        .await
        .expect("keys")
        .try_collect()
        .await
        .expect("keys")
}

/// The leases bucket's keys but the sweep key.
async fn lease_keys(leases: &kv::Store) -> Vec<String> {
    let mut keys = keys(leases).await;
    keys.retain(|k| k != "sweep");
    keys
}

/// Remove a presence key the way natter does: delete its message by sequence, no marker.
async fn remove(nats: &NatsServer, presence: &kv::Store, key: &str) {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let reader = StreamReader::new(client, "KV_presence", Duration::from_secs(5));
    let entry = presence
        .entry(key)
        .await
        .expect("entry")
        .expect("the key exists");
    assert!(
        reader.delete_seq(entry.revision).await.expect("delete"),
        "{key}"
    );
}

/// A client of another userId that tried the name Ann and got `-32001`.
async fn refused_ann(s: &Stack) -> ChatClient {
    let mut eve = ChatClient::connect(&s.edges[0].ws_url())
        .await
        .expect("connect");
    let err = eve
        .join(ROOM, "u-eve", "Ann", None, false)
        .await
        .expect_err("taken");
    assert_eq!(err["error"]["code"], -32001, "{err}");
    eve
}

/// Poll the edge's counter `name` until it reads `want`, for at most [`WAIT`].
async fn await_counter(edge: &Service, name: &str, want: f64) {
    let mut got = f64::NAN;
    for _ in 0..200 {
        let r = natter_testkit::http::get(edge.ops_addr, "/metrics", &[])
            .await
            .expect("GET /metrics");
        got = natter_ops::exposition::scraped(r.status, r.header("content-type"), &r.text())
            .unwrap_or_else(|e| panic!("{e}"))
            .value(name, &[])
            .unwrap_or(f64::NAN);
        if got == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} is {got}, not {want}");
}

/// Poll `holder` of the name until it is `want`, for at most [`WAIT`].
async fn await_holder(presence: &kv::Store, name: &str, want: Option<&str>) {
    let mut got = None;
    for _ in 0..200 {
        got = natter_bus::name_holder(presence, &room_token(), &user_token(name), WAIT)
            .await
            .expect("lookup");
        if got.as_deref() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} is held by {got:?}, not {want:?}");
}

#[tokio::test]
async fn idle_sessions_write_nothing_to_presence() {
    // A TTL of 5 s is renewed every 1.7 s: the edge would have to stall for over 3 s on a
    // busy machine before its own lease lapsed and its restore wrote to the bucket.
    let s = stack(1, &["--presence-ttl-secs", "5"]).await;
    let mut clients = Vec::new();
    for name in ["Ann", "Bob", "Cid"] {
        clients.push(
            joined(&s.edges[0], ROOM, &format!("u-{name}"), name)
                .await
                .0,
        );
    }
    let (js, presence, leases) = buckets(&s.nats).await;
    let mut stream = js.get_stream("KV_presence").await.expect("stream");
    let before = stream.info().await.expect("info").state.last_sequence;
    let lease_before = lease_keys(&leases).await;
    assert_eq!(lease_before.len(), 1, "{lease_before:?}");
    let renewed_before = leases
        .entry(&lease_before[0])
        .await
        .expect("entry")
        .expect("lease")
        .revision;
    // Two TTLs: under per-session refreshes that was six writes per key.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = stream.info().await.expect("info").state.last_sequence;
    assert_eq!(before, after, "idle sessions wrote to the presence bucket");
    for name in ["Ann", "Bob", "Cid"] {
        let uid = format!("u-{name}");
        await_holder(&presence, name, Some(uid.as_str())).await;
    }
    // The lease is what is renewed instead.
    let renewed_after = leases
        .entry(&lease_before[0])
        .await
        .expect("entry")
        .expect("lease is live")
        .revision;
    assert!(
        renewed_after > renewed_before,
        "{renewed_before} -> {renewed_after}"
    );
    for c in &mut clients {
        assert_eq!(
            c.call("ping", serde_json::json!({})).await["result"],
            "pong"
        );
    }
}

#[tokio::test]
async fn a_dead_leases_names_are_freed_by_a_live_edge_and_announced() {
    // No periodic presence check in this test's lifetime: the sweep itself must announce.
    let s = stack(
        1,
        // TTL 5 s, renewed every 1.7 s: the live edge's own lease survives a 3 s stall.
        &["--presence-ttl-secs", "5", "--presence-check-secs", "3600"],
    )
    .await;
    let (_js, presence, leases) = buckets(&s.nats).await;
    // Another edge's lease, and a name held under it from one of its sessions.
    leases
        .put("edge-ghost-0123456789abcdef", "edge-ghost".into())
        .await
        .expect("lease");
    // Until it dies, the ghost edge renews its lease as an edge does (every third of the
    // TTL): the lease must not lapse on its own while the test checks that it holds.
    let renewing = {
        let leases = leases.clone();
        tokio::spawn(async move {
            for _ in 0..120 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = leases
                    .put("edge-ghost-0123456789abcdef", "edge-ghost".into())
                    .await;
            }
        })
    };
    let owner = serde_json::to_vec(&natter_bus::Owner {
        user_id: "u-ann".into(),
        user_name: "Ann".into(),
    })
    .expect("json");
    let session = serde_json::to_vec(&natter_bus::SessionEntry {
        node: "edge-ghost".into(),
        user_id: "u-ann".into(),
        lease: Some("edge-ghost-0123456789abcdef".into()),
    })
    .expect("json");
    let owner_key = subjects::presence_owner_key(&room_token(), &user_token("Ann"));
    presence.put(&owner_key, owner.into()).await.expect("owner");
    presence
        .put(format!("{owner_key}.s1"), session.into())
        .await
        .expect("session");
    let (mut bob, w) = joined(&s.edges[0], ROOM, "u-bob", "Bob").await;
    assert_eq!(
        w["params"]["members"],
        serde_json::json!(["Ann", "Bob"]),
        "{w}"
    );
    // While the lease lives, the name stays held through several periods.
    tokio::time::sleep(Duration::from_secs(2)).await;
    await_holder(&presence, "Ann", Some("u-ann")).await;
    let mut eve = refused_ann(&s).await;
    // The ghost edge dies (its lease is gone): the live edge sweeps its entries and tells
    // the room.
    renewing.abort();
    let _ = renewing.await;
    leases
        .purge("edge-ghost-0123456789abcdef")
        .await
        .expect("purge");
    let left = bob
        .next_matching(WAIT, |v| v["method"] == "userLeft")
        .await
        .expect("userLeft for Ann");
    assert_eq!(left["params"]["userName"], "Ann", "{left}");
    assert_eq!(left["params"]["roomName"], ROOM, "{left}");
    await_holder(&presence, "Ann", None).await;
    await_counter(
        &s.edges[0],
        "natter_edge_presence_swept_sessions_total",
        1.0,
    )
    .await;
    await_counter(&s.edges[0], "natter_edge_presence_names_freed_total", 1.0).await;
    await_counter(&s.edges[0], "natter_edge_presence_lease_lapses_total", 0.0).await;
    let w = eve
        .join(ROOM, "u-eve", "Ann", None, false)
        .await
        .expect("the name is free again");
    assert_eq!(
        w["params"]["members"],
        serde_json::json!(["Ann", "Bob"]),
        "{w}"
    );
    assert!(
        presence
            .get(format!("{owner_key}.s1"))
            .await
            .expect("get")
            .is_none(),
        "the dead session key was removed"
    );
}

#[tokio::test]
async fn a_lapsed_lease_is_taken_again_and_keeps_its_names() {
    let s = stack(1, &["--presence-ttl-secs", "3"]).await;
    let (mut ann, _) = joined(&s.edges[0], ROOM, "u-ann", "Ann").await;
    let (mut bob, _) = joined(&s.edges[0], ROOM, "u-bob", "Bob").await;
    let (_js, presence, leases) = buckets(&s.nats).await;
    let owner_key = subjects::presence_owner_key(&room_token(), &user_token("Ann"));
    // What a lapse allows: another edge swept Ann's entries, then the lease expired (in
    // this order here, so that the edge cannot restore between the two).
    for key in keys(&presence)
        .await
        .iter()
        .filter(|k| k.starts_with(&format!("{owner_key}.")))
    {
        remove(&s.nats, &presence, key).await;
    }
    remove(&s.nats, &presence, &owner_key).await;
    let lease = lease_keys(&leases).await;
    assert_eq!(lease.len(), 1, "{lease:?}");
    leases.purge(&lease[0]).await.expect("purge lease");
    // The edge takes its lease again and puts Ann's entries back; she never notices.
    await_holder(&presence, "Ann", Some("u-ann")).await;
    let mut back = Vec::new();
    for _ in 0..200 {
        back = lease_keys(&leases).await;
        if !back.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(back, lease, "the same lease, taken again");
    await_counter(&s.edges[0], "natter_edge_presence_lease_lapses_total", 1.0).await;
    // The sweeper told the room Ann left; the restore tells it she is back (Bob's name
    // was never gone, so it is not announced).
    await_put_back(&s.edges[0], &mut bob, "Ann").await;
    assert_eq!(
        ann.call("ping", serde_json::json!({})).await["result"],
        "pong"
    );
    refused_ann(&s).await;
}

/// The edge put `name` back once: `newUser` for it reaches `client` (no other `newUser`
/// before it), and the edge counts one name restored.
async fn await_put_back(edge: &Service, client: &mut ChatClient, name: &str) {
    let note = client
        .next_matching(WAIT, |v| v["method"] == "newUser")
        .await
        .unwrap_or_else(|| panic!("newUser for {name}"));
    assert_eq!(note["params"]["userName"], name, "{note}");
    assert_eq!(note["params"]["roomName"], ROOM, "{note}");
    await_counter(edge, "natter_edge_presence_names_restored_total", 1.0).await;
}

#[tokio::test]
async fn a_name_deleted_under_a_joined_session_is_put_back() {
    let s = stack(1, &["--presence-ttl-secs", "3"]).await;
    let (mut ann, _) = joined(&s.edges[0], ROOM, "u-ann", "Ann").await;
    let (mut bob, _) = joined(&s.edges[0], ROOM, "u-bob", "Bob").await;
    let (_js, presence, _leases) = buckets(&s.nats).await;
    // What a leaver's listing answered by a lagging replica could do: delete the owner key
    // while a session still holds the name.
    let owner_key = subjects::presence_owner_key(&room_token(), &user_token("Ann"));
    remove(&s.nats, &presence, &owner_key).await;
    // The room's presence check notices and puts it back; nobody else can take the name.
    await_holder(&presence, "Ann", Some("u-ann")).await;
    await_put_back(&s.edges[0], &mut bob, "Ann").await;
    refused_ann(&s).await;
    assert_eq!(
        ann.call("ping", serde_json::json!({})).await["result"],
        "pong"
    );
}

#[tokio::test]
async fn a_release_while_nats_is_down_is_retried_and_announced() {
    // No periodic presence check in this test's lifetime: the retry itself must announce.
    let mut s = stack(
        1,
        &[
            "--presence-ttl-secs",
            "3",
            "--presence-check-secs",
            "3600",
            "--nats-timeout-ms",
            "1000",
        ],
    )
    .await;
    let (mut ann, _) = joined(&s.edges[0], ROOM, "u-ann", "Ann").await;
    let (mut bob, _) = joined(&s.edges[0], ROOM, "u-bob", "Bob").await;
    ann.next_matching(WAIT, |v| v["method"] == "newUser")
        .await
        .expect("newUser for Bob");
    s.nats.kill();
    // Ann leaves while the store is unreachable: the release waits for a retry.
    let r = ann
        .call("leaveRoom", serde_json::json!({"roomName": ROOM}))
        .await;
    assert_eq!(r["result"], "OK", "{r}");
    await_counter(&s.edges[0], "natter_edge_presence_releases_pending", 1.0).await;
    s.nats.restart().await;
    let left = bob
        .next_matching(WAIT, |v| v["method"] == "userLeft")
        .await
        .expect("userLeft for Ann, once the release went through");
    assert_eq!(left["params"]["userName"], "Ann", "{left}");
    await_counter(&s.edges[0], "natter_edge_presence_releases_pending", 0.0).await;
    let retries = s.edges[0]
        .metric("natter_edge_presence_release_retries_total")
        .await
        .expect("natter_edge_presence_release_retries_total");
    assert!(retries >= 1.0, "{retries} retries");
    let (_presence_js, presence, _leases) = buckets(&s.nats).await;
    await_holder(&presence, "Ann", None).await;
    // The name is free for anyone, and Bob's session went on throughout.
    let mut eve = ChatClient::connect(&s.edges[0].ws_url())
        .await
        .expect("connect");
    eve.join(ROOM, "u-eve", "Ann", None, false)
        .await
        .expect("the name is free again");
    assert_eq!(
        bob.call("ping", serde_json::json!({})).await["result"],
        "pong"
    );
}

/// Zed holds a name when Ann joins (her room starts then and knows Zed); then the name
/// goes with no `userLeft` (as when its announcement was lost) and no session or lease is
/// left to sweep: only the room's listings can find out. Returns Ann.
async fn ann_sees_zed_go_silently(s: &Stack) -> ChatClient {
    let (_js, presence, _leases) = buckets(&s.nats).await;
    let owner = serde_json::to_vec(&natter_bus::Owner {
        user_id: "u-zed".into(),
        user_name: "Zed".into(),
    })
    .expect("json");
    let owner_key = subjects::presence_owner_key(&room_token(), &user_token("Zed"));
    presence.put(&owner_key, owner.into()).await.expect("owner");
    let (ann, w) = joined(&s.edges[0], ROOM, "u-ann", "Ann").await;
    assert_eq!(
        w["params"]["members"],
        serde_json::json!(["Ann", "Zed"]),
        "{w}"
    );
    remove(&s.nats, &presence, &owner_key).await;
    ann
}

#[tokio::test]
async fn a_name_gone_without_an_announcement_is_announced_after_a_reconnect() {
    // No periodic presence check in this test's lifetime: the reconnect must make the room
    // list its names.
    let mut s = stack(1, &["--presence-check-secs", "3600"]).await;
    let mut ann = ann_sees_zed_go_silently(&s).await;
    let before = s.edges[0]
        .metric("natter_edge_name_checks_total")
        .await
        .expect("natter_edge_name_checks_total");
    s.nats.kill();
    s.nats.restart().await;
    let left = ann
        .next_matching(WAIT, |v| v["method"] == "userLeft")
        .await
        .expect("userLeft for Zed after the reconnect");
    assert_eq!(left["params"]["userName"], "Zed", "{left}");
    let after = s.edges[0]
        .metric("natter_edge_name_checks_total")
        .await
        .expect("natter_edge_name_checks_total");
    assert!(after >= before + 2.0, "{before} -> {after}");
    assert_eq!(
        ann.call("ping", serde_json::json!({})).await["result"],
        "pong"
    );
}

#[tokio::test]
async fn a_name_first_missed_by_the_periodic_check_is_confirmed_at_the_next_tick() {
    // Names listed every 8 s, ticks every second (the tests' `--tail-check-secs`).
    const PERIOD: Duration = Duration::from_secs(8);
    let s = stack(1, &["--presence-check-secs", "8"]).await;
    let started = std::time::Instant::now();
    let mut ann = ann_sees_zed_go_silently(&s).await;
    let left = ann
        .next_matching(PERIOD * 4, |v| v["method"] == "userLeft")
        .await
        .expect("userLeft for Zed");
    assert_eq!(left["params"]["userName"], "Zed", "{left}");
    // The room started after `started`, and its periodic listings come PERIOD apart: with
    // two of them needed, the announcement could not come before 2 × PERIOD. The
    // confirmation at the next tick brings it about one second after the first.
    let took = started.elapsed();
    assert!(
        took < PERIOD * 2,
        "announced after {took:?}: the miss was confirmed by a second periodic listing, not at the next tick"
    );
}
