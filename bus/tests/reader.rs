//! The stream reader against a real nats-server: ranges, tails, the keys under a
//! prefix and deletes by sequence.

use std::time::Duration;

use async_nats::jetstream;
use natter_bus::{ensure_chat_stream, subjects, StreamArgs, StreamReader};
use natter_testkit::NatsServer;

async fn setup() -> (NatsServer, async_nats::Client, jetstream::Context) {
    let nats = NatsServer::start().await;
    let client = natter_bus::connect(&nats.url(), "test", Duration::from_secs(10))
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    ensure_chat_stream(&js, &StreamArgs::default())
        .await
        .unwrap();
    (nats, client, js)
}

#[tokio::test]
async fn ranges_and_tails_follow_one_subject() {
    let (_nats, client, js) = setup().await;
    // Interleave two rooms so that sequences of room a are not contiguous.
    let mut a_seqs = Vec::new();
    for i in 0..1500u32 {
        let subject = if i % 3 == 0 { "room.a" } else { "room.b" };
        let ack = js
            .publish(subject, format!("{{\"i\":{i}}}").into())
            .await
            .unwrap()
            .await
            .unwrap();
        if subject == "room.a" {
            a_seqs.push(ack.sequence);
        }
    }
    let reader = StreamReader::new(client, subjects::STREAM, Duration::from_secs(5));
    assert_eq!(
        reader.last_seq("room.a").await.unwrap(),
        *a_seqs.last().unwrap()
    );
    assert_eq!(reader.last_seq("room.none").await.unwrap(), 0);

    // Everything, across several batches.
    let all = reader.range("room.a", 1, None, usize::MAX).await.unwrap();
    assert_eq!(all.iter().map(|m| m.seq).collect::<Vec<_>>(), a_seqs);
    assert!(all.iter().all(|m| m.subject == "room.a"));

    // A bounded middle range.
    let mid = reader
        .range("room.a", a_seqs[10], Some(a_seqs[20]), usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        mid.iter().map(|m| m.seq).collect::<Vec<_>>(),
        a_seqs[10..=20].to_vec()
    );
    let capped = reader.range("room.a", a_seqs[10], None, 3).await.unwrap();
    assert_eq!(capped.len(), 3);

    // Tails: the newest n up to a point, and whether older ones exist.
    let (tail, more) = reader.tail("room.a", 100, u64::MAX).await.unwrap();
    assert_eq!(
        tail.iter().map(|m| m.seq).collect::<Vec<_>>(),
        a_seqs[a_seqs.len() - 100..].to_vec()
    );
    assert!(more);
    let (tail, more) = reader.tail("room.a", 10, a_seqs[5]).await.unwrap();
    assert_eq!(
        tail.iter().map(|m| m.seq).collect::<Vec<_>>(),
        a_seqs[..=5].to_vec()
    );
    assert!(!more);
    let (tail, more) = reader.tail("room.none", 10, u64::MAX).await.unwrap();
    assert!(tail.is_empty() && !more);
}

#[tokio::test]
async fn subjects_list_a_prefix_and_delete_seq_is_compare_and_delete() {
    let (_nats, client, js) = setup().await;
    let kv = natter_bus::ensure_presence(&js, &StreamArgs::default())
        .await
        .unwrap();
    let alice = kv.put("r1.alice", "1".into()).await.unwrap();
    let bob = kv.put("r1.bob", "1".into()).await.unwrap();
    kv.put("r1.bob", "2".into()).await.unwrap();
    kv.put("r1.bob.s1", "1".into()).await.unwrap();
    kv.put("r2.carol", "1".into()).await.unwrap();
    let reader = StreamReader::new(client, "KV_presence", Duration::from_secs(5));
    let filter = subjects::presence_room_filter("r1");
    let mut got: Vec<_> = reader
        .subjects(&filter, 100)
        .await
        .unwrap()
        .into_keys()
        .collect();
    got.sort();
    assert_eq!(got, vec!["$KV.presence.r1.alice", "$KV.presence.r1.bob"]);

    // The current revision goes; a stale one (bob was rewritten) does not.
    assert!(reader.delete_seq(alice).await.unwrap());
    assert!(!reader.delete_seq(bob).await.unwrap());
    assert!(!reader.delete_seq(alice).await.unwrap(), "already gone");
    let got: Vec<_> = reader
        .subjects(&filter, 100)
        .await
        .unwrap()
        .into_keys()
        .collect();
    assert_eq!(got, vec!["$KV.presence.r1.bob"]);
    // No marker is left: the key can be created again, and reads as absent meanwhile.
    assert!(kv.get("r1.alice").await.unwrap().is_none());
    kv.create("r1.alice", "3".into()).await.unwrap();
    assert!(reader
        .subjects("$KV.presence.none.*", 100)
        .await
        .unwrap()
        .is_empty());
}
