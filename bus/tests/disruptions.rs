//! [`natter_bus::Disruptions`] against real nats-servers: a restart of the server counts as
//! connection disruptions, and a leader election of the stream on a 3-node cluster counts
//! though the client's own connection never dropped.

use std::time::Duration;

use async_nats::jetstream;
use natter_bus::{connect_watched, ensure_chat_stream, subjects, Disruptions, StreamArgs};
use natter_testkit::{NatsCluster, NatsServer};

/// Poll `ok` every 100 ms for at most 30 s.
async fn eventually(what: &str, ok: impl Fn() -> bool) {
    for _ in 0..300 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never: {what}");
}

#[tokio::test]
async fn a_server_restart_counts_as_connection_disruptions() {
    let mut nats = NatsServer::start().await;
    let d = Disruptions::default();
    let _client = connect_watched(&nats.url(), "test", Duration::from_secs(10), d.clone())
        .await
        .expect("connect");
    let before = d.connection_epoch();
    nats.kill();
    nats.restart().await;
    // Disconnected, then connected again.
    eventually("two connection disruptions", || {
        d.connection_epoch() >= before + 2
    })
    .await;
    assert_eq!(d.epoch(), d.connection_epoch(), "no leader elections here");
}

#[tokio::test]
async fn a_leader_election_counts_without_a_connection_disruption() {
    let mut cluster = NatsCluster::start(3).await;
    let args = StreamArgs {
        stream_replicas: 3,
        ..StreamArgs::default()
    };
    let admin = natter_bus::connect(&cluster.url(), "admin", Duration::from_secs(10))
        .await
        .expect("connect");
    let js = jetstream::new(admin);
    ensure_chat_stream(&js, &args).await.expect("stream");
    let leader = {
        let mut stream = js.get_stream(subjects::STREAM).await.expect("stream");
        let info = stream.info().await.expect("info");
        info.cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .expect("a leader")
    };
    let idx: usize = leader
        .trim_start_matches('n')
        .parse()
        .expect("leader is n0..n2");
    // A client on a node that stays up.
    let other = (idx + 1) % 3;
    let d = Disruptions::default();
    let client = connect_watched(
        &cluster.nodes[other].url(),
        "test",
        Duration::from_secs(10),
        d.clone(),
    )
    .await
    .expect("connect");
    d.watch_leader_elections(&client, subjects::STREAM)
        .await
        .expect("watch");
    client.flush().await.expect("flush");
    let (connections, all) = (d.connection_epoch(), d.epoch());
    cluster.nodes[idx].kill();
    eventually("a leader election counted", || d.epoch() > all).await;
    assert_eq!(
        d.connection_epoch(),
        connections,
        "the client's own connection was never disrupted"
    );
}
