//! Two workers share the durable consumer; one is killed with -9 while triggers flow. Every
//! trigger still gets exactly one stored reply: what the dead worker held unacknowledged is
//! redelivered to the other, which publishes the same reply ids, and the stream keeps one.

mod common;

use std::collections::HashMap;

use common::*;
use natter_testkit::{eventually, ChatClient, NatsServer, WAIT};

#[tokio::test]
async fn a_worker_killed_mid_stream_loses_no_reply_and_duplicates_none() {
    let nats = NatsServer::start().await;
    let edge = edge(&nats).await;
    let flags = [
        "--ack-wait-secs",
        "2",
        "--batch-size",
        "8",
        "--replies-per-minute",
        "10000",
        // The busy script must never time out on a loaded machine: a timed-out trigger has
        // no reply, which this test would count as lost.
        "--script-timeout-ms",
        "5000",
    ];
    let mut a = Bots::start(&nats, &flags).await;
    let b = Bots::start(&nats, &flags).await;
    let room = "Crash Room";
    // A little work per message, so that triggers are in flight when the worker dies.
    let busy = r#"if message.event != "textMessage" { return; }
        let n = 0; for i in 0..5000 { n += i; } `re: ${message.text}`"#;
    a.installed(room, "busy", busy).await;
    let mut ann = joined(&edge, room, "u-ann", "Ann").await;
    // Both workers know the bot before the first trigger (b caught up through its watch).
    assert!(
        eventually(WAIT, || async { b.list(room).await.len() == 1 }).await,
        "b never saw the bot"
    );

    const N: usize = 40;
    for i in 0..N {
        say(&mut ann, room, &format!("n{i}"), &format!("t{i}")).await;
    }
    let first = messages_until(&mut ann, is_bot).await;
    a.proc.kill9();

    // Every trigger answered (some by the survivor, after the ack wait).
    let mut seen: Vec<serde_json::Value> = first;
    let all_replied = |seen: &[serde_json::Value]| {
        (0..N).all(|i| {
            let want = format!("re: n{i}");
            seen.iter().any(|v| is_bot(v) && text(v) == want)
        })
    };
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    while !all_replied(&seen) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every trigger was answered:\n{}",
            b.log()
        );
        match ann.next_matching(WAIT, is_bot).await {
            Some(v) => seen.push(v),
            None => panic!(
                "replies stopped; answered: {:?}\n{}",
                seen.iter()
                    .filter(|v| is_bot(v))
                    .map(text)
                    .collect::<Vec<_>>(),
                b.log()
            ),
        }
    }

    // Wait until the consumer has nothing pending or unacknowledged: every redelivery done.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let settled = eventually(WAIT, || {
        let js = js.clone();
        async move {
            let Ok(stream) = js.get_stream("CHAT").await else {
                return false;
            };
            let Ok(mut c) = stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>("bots")
                .await
            else {
                return false;
            };
            matches!(c.info().await, Ok(i) if i.num_ack_pending == 0 && i.num_pending == 0)
        }
    })
    .await;
    assert!(settled, "the bots consumer did not settle:\n{}", b.log());

    // The room as stored: each trigger once, each reply once.
    let mut reader = ChatClient::connect(&edge.ws_url()).await.unwrap();
    reader
        .join(room, "u-reader", "Reader", Some(0), false)
        .await
        .unwrap();
    let stored = reader.room_messages(2 * N, WAIT).await;
    let mut replies: HashMap<String, usize> = HashMap::new();
    for v in stored.iter().filter(|v| is_bot(v)) {
        *replies.entry(text(v).to_owned()).or_default() += 1;
    }
    assert_eq!(replies.len(), N, "{replies:?}");
    assert!(
        replies.values().all(|&n| n == 1),
        "a reply stored twice: {replies:?}"
    );
    // Nothing beyond the 2N messages: the stream holds exactly that many for the room.
    let stream = js.get_stream("CHAT").await.unwrap();
    let subject = natter_bus::subjects::room(&natter_protocol::token::encode(room));
    let info = stream.info_with_subjects(subject.clone()).await.unwrap();
    let counts: HashMap<String, usize> = futures_util::StreamExt::collect::<Vec<_>>(info)
        .await
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    assert_eq!(counts.get(&subject), Some(&(2 * N)), "{counts:?}");
    eprintln!(
        "survivor redeliveries: {:?}, replies posted by the survivor: {:?}",
        b.metric("natter_bots_redeliveries_total").await,
        b.metric("natter_bots_replies_total").await
    );
}
