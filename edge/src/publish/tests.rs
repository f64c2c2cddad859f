use std::time::{Duration, Instant};

use async_nats::{Message, StatusCode};
use bytes::Bytes;

use super::{number, verdict, Slots, Verdict};

fn reply(payload: &str, status: Option<StatusCode>) -> Message {
    Message {
        subject: "_INBOX.abc.7".into(),
        reply: None,
        payload: Bytes::from(payload.to_owned()),
        headers: None,
        status,
        description: None,
        length: payload.len(),
    }
}

#[test]
fn waiters_are_numbered_in_order_and_taken_once() {
    let mut s = Slots::default();
    let a = s.push("a");
    let b = s.push("b");
    let c = s.push("c");
    assert_eq!((a, b, c), (0, 1, 2));
    assert!(s.waits(b));
    assert_eq!(s.take(b), Some("b"));
    assert_eq!(s.take(b), None, "taken twice");
    assert!(!s.waits(b) && s.waits(a) && s.waits(c) && !s.waits(3));
    // The front still waits, so nothing leaves yet.
    assert_eq!(s.slots.len(), 3);
    assert_eq!(s.take(a), Some("a"));
    // a and b are gone from the front; c is the oldest.
    assert_eq!((s.first, s.slots.len(), s.waiting()), (2, 1, 1));
    assert_eq!(s.push("d"), 3, "numbers never repeat");
    assert_eq!(s.take(99), None, "a number never given");
    assert_eq!(s.take(0), None, "a number already gone");
    assert_eq!(s.take(c), Some("c"));
    assert_eq!(s.take(3), Some("d"));
    assert_eq!((s.first, s.slots.len()), (4, 0));
}

#[test]
fn only_the_oldest_waiters_expire_and_settled_ones_are_skipped() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let mut s = Slots::default();
    for ms in [0, 10, 20, 30, 40] {
        s.push(at(ms));
    }
    assert_eq!(s.take(1), Some(at(10)));
    // Expire everything sent at or before 25 ms: 0 and 20 (10 was settled).
    let gone = s.expired(|sent| *sent <= at(25));
    assert_eq!(gone, vec![at(0), at(20)]);
    assert_eq!((s.first, s.waiting()), (3, 2));
    // A reply for an expired waiter finds nothing.
    assert_eq!(s.take(2), None);
    assert!(s.expired(|sent| *sent <= at(25)).is_empty());
    assert_eq!(s.expired(|_| true), vec![at(30), at(40)]);
    assert_eq!(s.slots.len(), 0);
}

#[test]
fn replies_settle_as_stored_duplicate_or_refused() {
    assert_eq!(
        verdict(&reply(r#"{"stream":"CHAT","seq":12}"#, None)),
        Verdict::Stored { duplicate: false }
    );
    assert_eq!(
        verdict(&reply(
            r#"{"stream":"CHAT","seq":12,"duplicate":true}"#,
            None
        )),
        Verdict::Stored { duplicate: true }
    );
    assert_eq!(
        verdict(&reply(
            r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#,
            None
        )),
        Verdict::Refused("maximum messages exceeded".into())
    );
    assert!(matches!(
        verdict(&reply("", Some(StatusCode::NO_RESPONDERS))),
        Verdict::Refused(_)
    ));
    assert!(matches!(
        verdict(&reply("not json", None)),
        Verdict::Refused(_)
    ));
}

#[test]
fn a_reply_subject_names_its_publish() {
    assert_eq!(number("_INBOX.Zx9.41"), Some(41));
    assert_eq!(number("_INBOX.Zx9.x"), None);
    assert_eq!(number("nodots"), None);
}
