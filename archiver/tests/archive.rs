//! The archiver against real nats-server and Postgres processes: exactly once across rooms,
//! kill -9 and restart, replicas, racing writers, Postgres outages, client retries after
//! the dedupe window, poison messages and graceful shutdown.

mod common;

use std::time::Duration;

use common::*;
use natter_bus::subjects;
use natter_protocol::token;
use sqlx::Row as _;

const ROOMS: [&str; 4] = ["Tests Room", "a.b.c", "ünïcødé 房间 🚀", "*>"];
const LAG: &str = "natter_archiver_consumer_lag";
const BOUND: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_archived_once_with_its_fields() {
    let stack = Stack::start().await;
    let arch = stack.archiver(&["--batch-size", "100"]).await;
    let sent = publish_many(&stack.js, &ROOMS, 1200).await;
    let db = stack.db().await;
    let n = wait_count(&db, sent.len() as i64, BOUND).await;
    assert_eq!(n, sent.len() as i64, "archived rows:\n{}", arch.log());
    assert_archived_exactly(&db, &sent).await;
    assert_eq!(
        wait_metric(&arch, LAG, 0.0, BOUND).await,
        Some(0.0),
        "lag back to 0"
    );
    assert_eq!(
        arch.metric("natter_archiver_rows_written_total").await,
        Some(sent.len() as f64)
    );
    assert_eq!(arch.metric("natter_archiver_poison_total").await, Some(0.0));
    // Nothing more arrives later (no duplicate trickling in).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&db).await, sent.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_batch_then_restart_loses_and_duplicates_nothing() {
    let stack = Stack::start().await;
    let mut arch = stack
        .archiver(&[
            "--batch-size",
            "50",
            "--writers",
            "2",
            "--ack-wait-secs",
            "3",
        ])
        .await;
    let db = stack.db().await;
    // Publish while the archiver works, and kill it mid-stream.
    let js = stack.js.clone();
    // Paced over ~2 s so the kill lands mid-stream on any machine.
    let publisher = tokio::spawn(async move {
        publish_paced(&js, &ROOMS, 4000, 100, Duration::from_millis(50)).await
    });
    let started = wait_count(&db, 300, BOUND).await;
    assert!(started >= 300, "archiver never got going:\n{}", arch.log());
    arch.proc().kill9();
    let at_kill = count(&db).await;
    let sent = publisher.await.expect("publisher");
    assert!(
        at_kill < sent.len() as i64,
        "the kill came after everything was archived; test proves nothing"
    );
    arch.restart().await;
    let n = wait_count(&db, sent.len() as i64, BOUND).await;
    assert_eq!(n, sent.len() as i64, "rows after restart:\n{}", arch.log());
    assert_archived_exactly(&db, &sent).await;
    assert_eq!(wait_metric(&arch, LAG, 0.0, BOUND).await, Some(0.0));
    // What the killed process had fetched but not acked came back (how much depends on
    // timing, so it is reported rather than asserted).
    let redelivered = arch.metric("natter_archiver_redeliveries_total").await;
    let duplicates = arch.metric("natter_archiver_duplicates_total").await;
    eprintln!("after kill -9: archived {at_kill} before, {redelivered:?} redelivered, {duplicates:?} already archived");
    tokio::time::sleep(Duration::from_secs(4)).await; // past ack_wait: no late duplicate
    assert_eq!(count(&db).await, sent.len() as i64);
}

/// Deterministically mid-batch: the test holds a lock on the table so the archiver's
/// INSERT is executing (blocked, uncommitted) when it is killed. Its messages come back
/// after ack_wait and are archived once, whether or not the orphaned statement committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_a_batch_insert_is_in_flight() {
    let stack = Stack::start().await;
    let mut arch = stack
        .archiver(&["--batch-size", "50", "--ack-wait-secs", "3"])
        .await;
    let db = stack.db().await;
    let first = publish_many(&stack.js, &ROOMS, 100).await;
    assert_eq!(wait_count(&db, 100, BOUND).await, 100);

    let mut lock = db.begin().await.expect("begin");
    sqlx::query("LOCK TABLE messages IN SHARE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock");
    let second = publish_many(&stack.js, &ROOMS, 200).await;
    let blocked = natter_testkit::eventually(Duration::from_secs(30), || async {
        sqlx::query(
            "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE application_name = 'natter-archiver' AND wait_event_type = 'Lock'",
        )
        .fetch_one(&db)
        .await
        .map(|r| r.get::<i64, _>("n") > 0)
        .unwrap_or(false)
    })
    .await;
    assert!(
        blocked,
        "the archiver's insert never blocked on the lock:\n{}",
        arch.log()
    );
    arch.proc().kill9();
    lock.rollback().await.expect("unlock");

    arch.restart().await;
    let all: Vec<Sent> = first.into_iter().chain(second).collect();
    assert_eq!(
        wait_count(&db, all.len() as i64, BOUND).await,
        all.len() as i64,
        "{}",
        arch.log()
    );
    assert_eq!(wait_metric(&arch, LAG, 0.0, BOUND).await, Some(0.0));
    assert_archived_exactly(&db, &all).await;
    let redelivered = arch
        .metric("natter_archiver_redeliveries_total")
        .await
        .unwrap_or(0.0);
    assert!(
        redelivered >= 1.0,
        "the in-flight batch was redelivered after the crash"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_consumer_exactly_once() {
    let stack = Stack::start().await;
    let a = stack.archiver(&["--batch-size", "64"]).await;
    let b = stack.archiver(&["--batch-size", "64"]).await;
    let sent = publish_many(&stack.js, &ROOMS, 3000).await;
    let db = stack.db().await;
    let n = wait_count(&db, sent.len() as i64, BOUND).await;
    assert_eq!(n, sent.len() as i64, "A:\n{}\nB:\n{}", a.log(), b.log());
    assert_archived_exactly(&db, &sent).await;
    assert_eq!(wait_metric(&a, LAG, 0.0, BOUND).await, Some(0.0));
    let wa = a
        .metric("natter_archiver_rows_written_total")
        .await
        .unwrap_or(-1.0);
    let wb = b
        .metric("natter_archiver_rows_written_total")
        .await
        .unwrap_or(-1.0);
    assert_eq!(
        wa + wb,
        sent.len() as f64,
        "rows written by A ({wa}) and B ({wb})"
    );
}

/// Two archivers on two different consumers both write every message into the same
/// database at once: the worst case of redelivery races. Still one row per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_of_the_same_messages_never_duplicate() {
    let stack = Stack::start().await;
    let sent = publish_many(&stack.js, &ROOMS, 2000).await;
    let a = stack
        .archiver(&["--consumer", "race-a", "--batch-size", "100"])
        .await;
    let b = stack
        .archiver(&["--consumer", "race-b", "--batch-size", "100"])
        .await;
    let db = stack.db().await;
    assert_eq!(
        wait_metric(&a, LAG, 0.0, BOUND).await,
        Some(0.0),
        "A:\n{}",
        a.log()
    );
    assert_eq!(
        wait_metric(&b, LAG, 0.0, BOUND).await,
        Some(0.0),
        "B:\n{}",
        b.log()
    );
    assert_archived_exactly(&db, &sent).await;
    let wa = a
        .metric("natter_archiver_rows_written_total")
        .await
        .unwrap_or(-1.0);
    let wb = b
        .metric("natter_archiver_rows_written_total")
        .await
        .unwrap_or(-1.0);
    let da = a
        .metric("natter_archiver_duplicates_total")
        .await
        .unwrap_or(-1.0);
    let db_ = b
        .metric("natter_archiver_duplicates_total")
        .await
        .unwrap_or(-1.0);
    assert_eq!(wa + wb, sent.len() as f64);
    assert_eq!(
        da + db_,
        sent.len() as f64,
        "every message was a duplicate for one of them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_loses_nothing_and_lag_returns_to_zero() {
    let mut stack = Stack::start().await;
    let arch = stack
        .archiver(&[
            "--batch-size",
            "100",
            "--ack-wait-secs",
            "4",
            "--retry-max-ms",
            "500",
            "--lag-interval-ms",
            "200",
        ])
        .await;
    let db = stack.db().await;
    let mut sent = publish_many(&stack.js, &ROOMS, 300).await;
    assert_eq!(wait_count(&db, 300, BOUND).await, 300);
    db.close().await;

    stack.pg.kill();
    sent.extend(publish_many(&stack.js, &ROOMS, 700).await);
    // The archiver holds what it fetched and the rest waits in the stream: lag shows it.
    let lagging = natter_testkit::eventually(Duration::from_secs(20), || async {
        arch.metric(LAG).await.is_some_and(|v| v > 0.0)
    })
    .await;
    assert!(lagging, "lag never rose during the outage:\n{}", arch.log());
    assert_eq!(
        arch.status("/readyz").await,
        Some(503),
        "not ready without Postgres"
    );
    // Stay down for more than two ack waits: in-progress acks must prevent redelivery.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(
        arch.metric("natter_archiver_db_errors_total")
            .await
            .unwrap_or(0.0)
            > 0.0
    );
    assert_eq!(
        arch.metric("natter_archiver_redeliveries_total").await,
        Some(0.0),
        "held batches were kept alive:\n{}",
        arch.log()
    );

    stack.pg.restart().await;
    let db = stack.db().await;
    let n = wait_count(&db, sent.len() as i64, BOUND).await;
    assert_eq!(
        n,
        sent.len() as i64,
        "rows after Postgres came back:\n{}",
        arch.log()
    );
    assert_archived_exactly(&db, &sent).await;
    assert_eq!(
        wait_metric(&arch, LAG, 0.0, BOUND).await,
        Some(0.0),
        "lag back to 0"
    );
    arch.wait_ready(BOUND).await;
}

/// A client retry after the stream's dedupe window is a new stream message with the same
/// room and uuid: archived once (the first), and a same uuid in another room is distinct.
/// Two such copies in flight at once: still one row (either copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_the_dedupe_window_is_archived_once() {
    let stack = Stack::start().await;
    let arch = stack.archiver(&[]).await;
    const ACKED: &str = "natter_archiver_messages_acked_total";
    let room = "Tests Room";
    let tok = token::encode(room);
    let uuid = "retry-1";
    let payload = stored("textMessage", room, uuid, "u1", "Ann", "hello", 1);
    let first = publish_raw(
        &stack.js,
        subjects::room(&tok),
        Some(subjects::msg_id(&tok, uuid)),
        payload.clone(),
    )
    .await;
    assert_eq!(wait_metric(&arch, ACKED, 1.0, BOUND).await, Some(1.0));
    // Later, past the stream's dedupe window, the client retries: the stream stores a new
    // message (modelled with a different Nats-Msg-Id).
    let late_id = format!("{}-late", subjects::msg_id(&tok, uuid));
    let second = publish_raw(
        &stack.js,
        subjects::room(&tok),
        Some(late_id),
        payload.clone(),
    )
    .await;
    assert_ne!(
        first, second,
        "the stream stored the retry as a new message"
    );
    let other_tok = token::encode("Other Room");
    let other = publish_raw(
        &stack.js,
        subjects::room(&other_tok),
        Some(subjects::msg_id(&other_tok, uuid)),
        stored("textMessage", "Other Room", uuid, "u1", "Ann", "hello", 1),
    )
    .await;
    assert_eq!(wait_metric(&arch, ACKED, 3.0, BOUND).await, Some(3.0));
    let db = stack.db().await;
    let rows = sqlx::query("SELECT _id, room FROM messages WHERE uuid = $1 ORDER BY _id")
        .bind(uuid)
        .fetch_all(&db)
        .await
        .expect("select");
    let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get("_id"), r.get("room"))).collect();
    assert_eq!(
        got,
        vec![
            (first as i64, room.to_string()),
            (other as i64, "Other Room".to_string())
        ]
    );
    assert_eq!(
        arch.metric("natter_archiver_duplicates_total").await,
        Some(1.0)
    );

    // Both copies in flight together (possibly in two concurrent batches): one row.
    let p2 = stored("textMessage", room, "retry-2", "u1", "Ann", "again", 2);
    let a = publish_raw(
        &stack.js,
        subjects::room(&tok),
        Some("a".into()),
        p2.clone(),
    )
    .await;
    let b = publish_raw(&stack.js, subjects::room(&tok), Some("b".into()), p2).await;
    assert_eq!(wait_metric(&arch, ACKED, 5.0, BOUND).await, Some(5.0));
    let ids: Vec<i64> =
        sqlx::query("SELECT _id FROM messages WHERE room = $1 AND uuid = 'retry-2'")
            .bind(room)
            .fetch_all(&db)
            .await
            .expect("select")
            .iter()
            .map(|r| r.get("_id"))
            .collect();
    assert!(
        ids == vec![a as i64] || ids == vec![b as i64],
        "one row for retry-2, got {ids:?}"
    );
    assert_eq!(
        arch.metric("natter_archiver_duplicates_total").await,
        Some(2.0)
    );
}

/// Poison messages never block the consumer: unparseable ones are skipped (counted), odd
/// but parseable ones are stored with what they have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_skipped_or_stored_and_never_block() {
    let stack = Stack::start().await;
    let arch = stack.archiver(&["--batch-size", "10"]).await;
    let tok = token::encode("Tests Room");
    let subj = subjects::room(&tok);
    let before = publish_many(&stack.js, &["Tests Room"], 5).await;
    publish_raw(&stack.js, subj.clone(), None, "not json {".into()).await;
    publish_raw(&stack.js, subj.clone(), None, "[1,2,3]".into()).await;
    publish_raw(
        &stack.js,
        "room.a.b".into(),
        None,
        stored("textMessage", "x", "p1", "u", "U", "t", 1),
    )
    .await;
    let bare = publish_raw(
        &stack.js,
        subj.clone(),
        None,
        r#"{"jsonrpc":"2.0","method":"newUser","params":{"text":"x"}}"#.into(),
    )
    .await;
    let long_uuid = "x".repeat(5000);
    let long = publish_raw(
        &stack.js,
        subj.clone(),
        None,
        stored("textMessage", "Tests Room", &long_uuid, "u", "U", "t", 2),
    )
    .await;
    let nul = publish_raw(&stack.js, subj.clone(), None, r#"{"method":"textMessage","params":{"uuid":"n\u0000l","userName":"a\u0000b","date":"today"}}"#.into()).await;
    let after = publish_many(&stack.js, &["Tests Room"], 5).await;

    assert_eq!(
        wait_metric(&arch, "natter_archiver_messages_acked_total", 16.0, BOUND).await,
        Some(16.0),
        "{}",
        arch.log()
    );
    assert_eq!(arch.metric("natter_archiver_poison_total").await, Some(3.0));
    assert_eq!(wait_metric(&arch, LAG, 0.0, BOUND).await, Some(0.0));
    let db = stack.db().await;
    assert_eq!(count(&db).await, 13);
    let r = sqlx::query("SELECT kind, uuid, user_id FROM messages WHERE _id = $1")
        .bind(bare as i64)
        .fetch_one(&db)
        .await
        .expect("bare row");
    assert_eq!(r.get::<String, _>("kind"), "system");
    assert_eq!(r.get::<Option<String>, _>("uuid"), None);
    assert_eq!(r.get::<Option<String>, _>("user_id"), None);
    let r = sqlx::query("SELECT uuid, kind FROM messages WHERE _id = $1")
        .bind(long as i64)
        .fetch_one(&db)
        .await
        .expect("long-uuid row");
    assert_eq!(
        r.get::<Option<String>, _>("uuid"),
        None,
        "an unindexable uuid is dropped, the message kept"
    );
    let r = sqlx::query(
        "SELECT uuid, user_name, client_date, msg::text AS msg FROM messages WHERE _id = $1",
    )
    .bind(nul as i64)
    .fetch_one(&db)
    .await
    .expect("nul row");
    assert_eq!(
        r.get::<Option<String>, _>("uuid").as_deref(),
        Some("n\u{FFFD}l")
    );
    assert_eq!(
        r.get::<Option<String>, _>("client_date").as_deref(),
        Some("today")
    );
    assert!(
        r.get::<String, _>("msg").contains("\\u0000"),
        "msg kept verbatim"
    );
    for s in before.iter().chain(&after) {
        let n: i64 = sqlx::query("SELECT count(*) AS n FROM messages WHERE _id = $1")
            .bind(s.seq as i64)
            .fetch_one(&db)
            .await
            .expect("count")
            .get("n");
        assert_eq!(n, 1);
    }
}

/// SIGTERM: readiness fails, the process exits promptly and cleanly, and what it had not
/// committed is archived after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_loses_nothing() {
    let stack = Stack::start().await;
    let mut arch = stack
        .archiver(&["--batch-size", "50", "--ack-wait-secs", "3"])
        .await;
    let db = stack.db().await;
    let js = stack.js.clone();
    let publisher = tokio::spawn(async move { publish_many(&js, &ROOMS, 2000).await });
    assert!(wait_count(&db, 100, BOUND).await >= 100);
    arch.proc().term();
    let status = arch.proc().wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}:\n{}",
        arch.log()
    );
    let sent = publisher.await.expect("publisher");
    arch.restart().await;
    assert_eq!(
        wait_count(&db, sent.len() as i64, BOUND).await,
        sent.len() as i64,
        "{}",
        arch.log()
    );
    assert_archived_exactly(&db, &sent).await;
}

/// SIGTERM while Postgres is down: the held (uncommitted) batches are returned, not acked,
/// the process exits promptly, and everything is archived once Postgres and an archiver
/// are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_an_outage_returns_held_batches() {
    let mut stack = Stack::start().await;
    let mut arch = stack
        .archiver(&[
            "--batch-size",
            "50",
            "--retry-max-ms",
            "300",
            "--lag-interval-ms",
            "200",
        ])
        .await;
    stack.pg.kill();
    let sent = publish_many(&stack.js, &ROOMS, 300).await;
    let holding = natter_testkit::eventually(Duration::from_secs(30), || async {
        arch.metric("natter_archiver_batches_retrying")
            .await
            .is_some_and(|v| v > 0.0)
    })
    .await;
    assert!(holding, "no batch held during the outage:\n{}", arch.log());
    arch.proc().term();
    let status = arch.proc().wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}:\n{}",
        arch.log()
    );
    assert!(
        arch.log().contains("returning it for redelivery"),
        "{}",
        arch.log()
    );

    stack.pg.restart().await;
    arch.restart().await;
    let db = stack.db().await;
    assert_eq!(
        wait_count(&db, sent.len() as i64, BOUND).await,
        sent.len() as i64,
        "{}",
        arch.log()
    );
    assert_archived_exactly(&db, &sent).await;
    assert_eq!(wait_metric(&arch, LAG, 0.0, BOUND).await, Some(0.0));
}
