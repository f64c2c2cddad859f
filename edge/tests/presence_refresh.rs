//! The presence refresher against a real nats-server: a round works from a snapshot of the
//! edge's sessions and spreads its writes over time, so a name whose last session leaves
//! during the round must not be brought back by it (its leaver deleted the owner key; a
//! re-created one would keep the name "taken" for a whole TTL).

use std::sync::Arc;
use std::time::Duration;

use natter_bus::{subjects, StreamArgs, StreamReader};
use natter_edge::outbox::{Outbox, Signal};
use natter_edge::presence::{Presence, Released};
use natter_edge::transport::socket::Socket;
use natter_testkit::NatsServer;
use tokio::sync::watch;

/// A session's outbox over a loopback socket (the refresher never writes to it here).
async fn outbox() -> (Outbox, tokio::net::TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let (c, s) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
    let (tx, _rx) = watch::channel(Signal::default());
    (
        Outbox::new(Socket::new(s.expect("accept").0, 8), tx),
        c.expect("connect"),
    )
}

#[tokio::test]
async fn a_name_released_during_a_refresh_round_stays_free() {
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
    let presence = Arc::new(Presence::new(kv.clone(), reader, "edge-t".into()));

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
        tokio::spawn(async move { p.refresh_all(Duration::from_secs(2)).await })
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
        "{} of {NAMES} released names were re-created by the refresher: {:?}",
        back.len(),
        &back[..back.len().min(5)]
    );
}
