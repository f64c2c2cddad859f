//! Hostile scripts against a real worker: an endless loop, a huge string, deep recursion and
//! a script that throws are each stopped with their documented outcome, counted, recorded on
//! the bot and, after repeated failures, disabled; a good bot in the same room keeps answering.

mod common;

use common::*;
use natter_testkit::NatsServer;

#[tokio::test]
async fn each_hostile_script_is_stopped_and_disabled_and_the_room_goes_on() {
    let nats = NatsServer::start().await;
    let edge = edge(&nats).await;
    let mut bots = Bots::start(
        &nats,
        &["--failures-to-disable", "2", "--script-timeout-ms", "5000"],
    )
    .await;
    let room = "Hostile Room";
    let hostile = [
        ("looper", "loop { }", "operations"),
        ("hoarder", r#"let s = "x"; loop { s += s; }"#, "too_large"),
        ("diver", "fn down(n) { down(n + 1) } down(0)", "recursion"),
        ("thrower", r#"throw "no thanks""#, "error"),
    ];
    // Ann joins first: her newUser event comes before the bots exist.
    let mut ann = joined(&edge, room, "u-ann", "Ann").await;
    for (name, script, _) in hostile {
        bots.installed(room, name, script).await;
    }
    bots.installed(room, "zgood", r#"`ok: ${message.text}`"#)
        .await;

    for (i, round) in ["one", "two", "three"].into_iter().enumerate() {
        say(&mut ann, room, round, &format!("m{i}")).await;
        let want = format!("ok: {round}");
        let seen = messages_until(&mut ann, |v| text(v) == want).await;
        let from_bots: Vec<&str> = seen.iter().filter(|v| is_bot(v)).map(text).collect();
        assert_eq!(from_bots, vec![want.as_str()], "only the good bot answers");
    }
    // Two failures each (the third message found them disabled), with their reasons.
    for (_, _, reason) in hostile {
        let sample = format!("natter_bots_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(
            bots.metric(&sample).await,
            Some(2.0),
            "{sample}\n{}",
            bots.log()
        );
    }
    assert_eq!(bots.metric("natter_bots_disabled_total").await, Some(4.0));
    assert_eq!(bots.metric("natter_bots_replies_total").await, Some(3.0));
    let listed = bots.list(room).await;
    assert_eq!(listed.len(), 5);
    for b in &listed {
        let name = b["name"].as_str().unwrap();
        if name == "zgood" {
            assert_eq!(b["enabled"], true);
            assert_eq!(b["failures"], 0);
            continue;
        }
        let (_, _, reason) = hostile.iter().find(|(n, _, _)| *n == name).unwrap();
        assert_eq!(b["enabled"], false, "{b}");
        assert_eq!(b["failures"], 2, "{b}");
        let last = b["lastFailure"].as_str().unwrap();
        assert!(last.starts_with(&format!("{reason}: ")), "{last}");
    }
    let thrower = listed.iter().find(|b| b["name"] == "thrower").unwrap();
    assert!(thrower["lastFailure"]
        .as_str()
        .unwrap()
        .contains("no thanks"));

    // Replacing a disabled bot enables it again.
    let (status, body) = bots
        .install(room, "thrower", r#"`fixed: ${message.text}`"#)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["enabled"], true);
    say(&mut ann, room, "four", "m4").await;
    let seen = messages_until(&mut ann, |v| text(v) == "ok: four").await;
    let seen_more = if seen.iter().any(|v| text(v) == "fixed: four") {
        Vec::new()
    } else {
        messages_until(&mut ann, |v| text(v) == "fixed: four").await
    };
    assert!(seen
        .iter()
        .chain(&seen_more)
        .any(|v| text(v) == "fixed: four"));
    assert!(bots.proc.is_running(), "the worker is still up");
}
