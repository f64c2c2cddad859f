//! The history service (`history.<token>`, queue group `natter-history`) against real
//! nats-server and Postgres processes: after / before / both / neither, page caps, ordering,
//! bad requests, and an error reply (never a hang) when Postgres is down.

mod common;

use std::time::{Duration, Instant};

use common::*;
use natter_bus::history::MAX_PAGE;
use natter_protocol::token;

const BOUND: Duration = Duration::from_secs(90);

fn seqs(reply: &natter_bus::history::HistoryReply) -> Vec<u64> {
    reply.messages.iter().map(|m| m.seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_by_id_in_every_direction() {
    let mut stack = Stack::start().await;
    // Two replicas: the queue group shares requests, every request gets one answer.
    let a = stack.archiver(&["--history-timeout-ms", "1500"]).await;
    let _b = stack.archiver(&["--history-timeout-ms", "1500"]).await;
    // Room A interleaved with room B, so A's _ids are not contiguous.
    let sent = publish_many(&stack.js, &["Room A", "Room B"], 60).await;
    let big = publish_many(&stack.js, &["Big Room"], MAX_PAGE as usize + 50).await;
    let db = stack.db().await;
    let total = (sent.len() + big.len()) as i64;
    assert_eq!(wait_count(&db, total, BOUND).await, total, "{}", a.log());

    let room_a: Vec<&Sent> = sent.iter().filter(|s| s.room == "Room A").collect();
    let ids: Vec<u64> = room_a.iter().map(|s| s.seq).collect();
    assert_eq!(ids.len(), 30);
    let c = &stack.client;

    // after only: oldest first from after+1; more = newer exist.
    let r = history(c, "Room A", Some(0), None, 10).await;
    assert_eq!(
        (seqs(&r), r.more, r.error.clone()),
        (ids[..10].to_vec(), true, None)
    );
    let r = history(c, "Room A", Some(ids[25]), None, 10).await;
    assert_eq!((seqs(&r), r.more), (ids[26..].to_vec(), false));
    let r = history(c, "Room A", Some(ids[29]), None, 10).await;
    assert_eq!((seqs(&r), r.more), (vec![], false));
    // An `after` between two of A's ids (one of B's) starts at the next of A's.
    let r = history(c, "Room A", Some(ids[3] + 1), None, 2).await;
    assert_eq!(seqs(&r), ids[4..6].to_vec());

    // before only: the newest `limit` below before, ascending; more = older exist.
    let r = history(c, "Room A", None, Some(ids[20]), 5).await;
    assert_eq!((seqs(&r), r.more), (ids[15..20].to_vec(), true));
    let r = history(c, "Room A", None, Some(ids[3]), 10).await;
    assert_eq!((seqs(&r), r.more), (ids[..3].to_vec(), false));
    let r = history(c, "Room A", None, Some(ids[0]), 10).await;
    assert_eq!((seqs(&r), r.more), (vec![], false));

    // both: the range between, oldest first; more = newer exist inside the range.
    let r = history(c, "Room A", Some(ids[5]), Some(ids[12]), 100).await;
    assert_eq!((seqs(&r), r.more), (ids[6..12].to_vec(), false));
    let r = history(c, "Room A", Some(ids[5]), Some(ids[12]), 3).await;
    assert_eq!((seqs(&r), r.more), (ids[6..9].to_vec(), true));

    // neither: the newest, ascending; more = older exist.
    let r = history(c, "Room A", None, None, 5).await;
    assert_eq!((seqs(&r), r.more), (ids[25..].to_vec(), true));
    let r = history(c, "Room A", None, None, 100).await;
    assert_eq!((seqs(&r), r.more), (ids.clone(), false));

    // Paging backwards through the whole room with `before` visits every message once.
    let mut seen = Vec::new();
    let mut before = None;
    for _ in 0..20 {
        let r = history(c, "Room A", None, before, 7).await;
        let page = seqs(&r);
        seen.splice(0..0, page.iter().copied());
        if !r.more {
            break;
        }
        before = page.first().copied();
    }
    assert_eq!(seen, ids);

    // The stored object comes back verbatim, without `_id`.
    let r = history(c, "Room A", Some(0), None, 1).await;
    assert_eq!(r.messages[0].msg.get(), room_a[0].payload);
    assert!(!r.messages[0].msg.get().contains("\"_id\""));

    // limit 0: nothing, but `more` tells whether anything exists.
    let r = history(c, "Room A", None, None, 0).await;
    assert_eq!((seqs(&r), r.more), (vec![], true));

    // Pages are capped at MAX_PAGE whatever the limit.
    let big_ids: Vec<u64> = big.iter().map(|s| s.seq).collect();
    let r = history(c, "Big Room", None, None, 5000).await;
    assert_eq!(r.messages.len(), MAX_PAGE as usize);
    assert_eq!(seqs(&r), big_ids[50..].to_vec());
    assert!(r.more);
    let r = history(c, "Big Room", Some(0), None, u32::MAX).await;
    assert_eq!(
        (seqs(&r), r.more),
        (big_ids[..MAX_PAGE as usize].to_vec(), true)
    );

    // Unknown room: empty, no error. Bad request / bad token: an error reply.
    let r = history(c, "Nobody Here", None, None, 10).await;
    assert_eq!((seqs(&r), r.more, r.error), (vec![], false, None));
    let r = history_raw(c, &token::encode("Room A"), b"{not json".to_vec()).await;
    assert!(r.error.is_some() && r.messages.is_empty());
    let r = history_raw(c, "%%%", br#"{"limit":5}"#.to_vec()).await;
    assert!(r.error.is_some());

    // Postgres down: an error reply within the bound, never a hang.
    db.close().await;
    stack.pg.kill();
    let t = Instant::now();
    let r = history(c, "Room A", None, None, 10).await;
    assert!(
        r.error.is_some(),
        "expected an error reply, got {:?}",
        seqs(&r)
    );
    assert!(r.messages.is_empty());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "error reply took {:?}",
        t.elapsed()
    );
    assert!(
        a.metric("natter_archiver_history_requests_total")
            .await
            .unwrap_or(0.0)
            > 0.0
    );

    // And answers again once it is back.
    stack.pg.restart().await;
    let ok = natter_testkit::eventually(Duration::from_secs(30), || async {
        let r = history(c, "Room A", None, None, 5).await;
        r.error.is_none() && seqs(&r) == ids[25..].to_vec()
    })
    .await;
    assert!(ok, "history did not recover after Postgres came back");
}
