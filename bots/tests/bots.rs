//! Bots against real processes: nats-server, Postgres, an edge, the archiver and natter-bots.
//! A bot answers once, only what came after its install, never another bot; its replies
//! are archived and come back on resume; a script that does not compile is refused.

mod common;

use std::collections::HashMap;

use common::*;
use natter_bus::history::{HistoryReply, HistoryRequest};
use natter_protocol::token;
use natter_testkit::{eventually, NatsServer, Postgres, Service, WAIT};
use serde_json::Value;

const ECHO: &str = include_str!("../examples/echo.rhai");
const GREETER: &str = include_str!("../examples/greeter.rhai");
const ROLL: &str = include_str!("../examples/roll.rhai");

async fn archiver(nats: &NatsServer, pg: &Postgres) -> Service {
    Service::start(
        "natter-archiver",
        &[
            "--nats-url".into(),
            nats.url(),
            "--database-url".into(),
            pg.url(),
        ],
        &[],
    )
    .await
}

/// The archived messages of `room` (a history request to the archiver).
async fn archived(nats: &NatsServer, room: &str) -> Vec<Value> {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let req = serde_json::to_vec(&HistoryRequest {
        after: Some(0),
        before: None,
        limit: 1000,
    })
    .unwrap();
    let Ok(reply) = client
        .request(
            natter_bus::subjects::history(&token::encode(room)),
            req.into(),
        )
        .await
    else {
        return Vec::new();
    };
    let reply: HistoryReply = serde_json::from_slice(&reply.payload).unwrap();
    reply
        .messages
        .iter()
        .map(|m| serde_json::from_str(m.msg.get()).unwrap())
        .collect()
}

#[tokio::test]
async fn a_bot_answers_once_only_what_follows_its_install_and_its_replies_are_archived_and_resumed()
{
    let nats = NatsServer::start().await;
    let pg = Postgres::start().await;
    let _archiver = archiver(&nats, &pg).await;
    let edge = edge(&nats).await;
    let bots = Bots::start(&nats, &[]).await;
    let room = "Bots Room";
    let mut ann = joined(&edge, room, "u-ann", "Ann").await;

    // Before the install: never answered.
    say(&mut ann, room, "!echo early", "t0").await;
    messages_until(&mut ann, |v| v["params"]["uuid"] == "t0").await;

    // A script that does not compile is refused, with where and why.
    let (status, body) = bots.install(room, "broken", "let x = ;").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["reason"], "compile");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("does not compile") && msg.contains("line 1"),
        "{msg}"
    );
    let (status, body) = bots.install(room, "bad name!", ECHO).await;
    assert_eq!(status, 400, "{body}");
    assert!(bots.list(room).await.is_empty(), "nothing was installed");

    bots.installed(room, "echo", ECHO).await;
    let (status, body) = bots.install(room, "echo", ECHO).await;
    assert_eq!(status, 200, "replacing answers 200: {body}");
    let listed = bots.list(room).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "echo");
    assert_eq!(listed[0]["enabled"], true);

    say(&mut ann, room, "!echo hi", "t1").await;
    say(&mut ann, room, "no keyword here", "t2").await;
    say(&mut ann, room, "!echo barrier", "t3").await;
    let seen = messages_until(&mut ann, |v| is_bot(v) && text(v) == "Ann said: barrier").await;
    let replies: Vec<&str> = seen.iter().filter(|v| is_bot(v)).map(text).collect();
    assert_eq!(
        replies,
        vec!["Ann said: hi", "Ann said: barrier"],
        "{seen:?}"
    );
    let reply = seen.iter().find(|v| is_bot(v)).unwrap();
    assert_eq!(reply["params"]["userId"], "bot:echo");
    assert_eq!(reply["params"]["userName"], "echo (bot)");
    assert_eq!(reply["params"]["replyTo"], "t1");
    assert_eq!(reply["params"]["ack"], true);

    // Resume: a client joining after all this gets the replies in the room's history, in order.
    let mut bob = ChatClientExt::joined_from(&edge, room, "u-bob", "Bob", 0).await;
    let history = messages_until(&mut bob, |v| text(v) == "Ann said: barrier").await;
    let texts: Vec<&str> = history.iter().map(text).collect();
    let at = |t: &str| {
        texts
            .iter()
            .position(|x| *x == t)
            .unwrap_or_else(|| panic!("{t:?} not in {texts:?}"))
    };
    assert_eq!(texts.len(), 6, "{texts:?}");
    assert!(at("!echo early") < at("!echo hi") && at("!echo hi") < at("no keyword here"));
    assert!(at("no keyword here") < at("!echo barrier"));
    assert!(at("!echo hi") < at("Ann said: hi") && at("Ann said: hi") < at("Ann said: barrier"));
    assert!(at("!echo barrier") < at("Ann said: barrier"));

    // Archived like any message.
    let reply_uuid = reply["params"]["uuid"].as_str().unwrap().to_owned();
    let ok = eventually(WAIT, || {
        let (nats, reply_uuid) = (&nats, &reply_uuid);
        async move {
            archived(nats, room)
                .await
                .iter()
                .any(|m| m["params"]["uuid"] == reply_uuid.as_str())
        }
    })
    .await;
    assert!(ok, "the bot's reply was not archived");
    let archived = archived(&nats, room).await;
    let bot_rows: Vec<&Value> = archived.iter().filter(|v| is_bot(v)).collect();
    assert_eq!(bot_rows.len(), 2, "{archived:?}");

    // Removed: no more answers.
    let (status, _) = bots.call("DELETE", &bot_path(room, "echo"), &[], b"").await;
    assert_eq!(status, 204);
    let (status, _) = bots.call("DELETE", &bot_path(room, "echo"), &[], b"").await;
    assert_eq!(status, 404);
    assert!(bots.list(room).await.is_empty());
    assert_eq!(bots.metric("natter_bots_replies_total").await, Some(2.0));
}

/// Joining with `lastMessageId`.
struct ChatClientExt;

impl ChatClientExt {
    async fn joined_from(
        edge: &Service,
        room: &str,
        user_id: &str,
        name: &str,
        last: u64,
    ) -> natter_testkit::ChatClient {
        let mut c = natter_testkit::ChatClient::connect(&edge.ws_url())
            .await
            .unwrap();
        c.join(room, user_id, name, Some(last), false)
            .await
            .unwrap();
        c
    }
}

#[tokio::test]
async fn bots_never_answer_bots_and_the_greeter_and_dice_answer() {
    let nats = NatsServer::start().await;
    let edge = edge(&nats).await;
    let bots = Bots::start(&nats, &[]).await;
    let room = "Loud Room";
    // Two bots that answer every message they are given: if bots answered bots, each reply
    // would trigger the other forever.
    let parrot = r#"if message.event == "textMessage" { `parrot heard: ${message.text}` }"#;
    let mimic = r#"if message.event == "textMessage" { `mimic heard: ${message.text}` }"#;
    bots.installed(room, "parrot", parrot).await;
    bots.installed(room, "mimic", mimic).await;
    bots.installed(room, "greeter", GREETER).await;
    bots.installed(room, "roll", ROLL).await;

    let mut ann = joined(&edge, room, "u-ann", "Ann").await;
    let welcome = messages_until(&mut ann, |v| text(v) == "Welcome to Loud Room, Ann!").await;
    say(&mut ann, room, "hello", "h1").await;
    say(&mut ann, room, "/roll 2d6", "h2").await;

    // The greeter answers a newUser event.
    let _cy = joined(&edge, room, "u-cy", "Cy").await;

    let seen = messages_until(&mut ann, |v| text(v) == "Welcome to Loud Room, Cy!").await;
    // A barrier: Ann's next message and both bots' answers to it; anything a bot said in
    // answer to a bot would be stored before them (one worker handles the room in order).
    say(&mut ann, room, "barrier", "h3").await;
    let rest =
        messages_until_all(&mut ann, &["parrot heard: barrier", "mimic heard: barrier"]).await;
    let all: Vec<Value> = welcome.into_iter().chain(seen).chain(rest).collect();
    let bot_texts: Vec<&str> = all.iter().filter(|v| is_bot(v)).map(text).collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &bot_texts {
        *counts.entry(*t).or_default() += 1;
    }
    assert!(
        counts.values().all(|&n| n == 1),
        "a reply twice: {bot_texts:?}"
    );
    assert!(
        bot_texts.iter().all(|t| !t.contains("heard: parrot")
            && !t.contains("heard: mimic")
            && !t.contains("heard: Ann rolled")),
        "a bot answered a bot: {bot_texts:?}"
    );
    for want in [
        "Welcome to Loud Room, Ann!",
        "parrot heard: hello",
        "mimic heard: hello",
        "parrot heard: /roll 2d6",
        "mimic heard: /roll 2d6",
        "Welcome to Loud Room, Cy!",
    ] {
        assert!(
            bot_texts.contains(&want),
            "missing {want:?} in {bot_texts:?}"
        );
    }
    let rolled: Vec<&&str> = bot_texts
        .iter()
        .filter(|t| t.starts_with("Ann rolled 2d6: ["))
        .collect();
    assert_eq!(rolled.len(), 1, "{bot_texts:?}");
    // Ann's 3 messages × 2 bots, one roll, two welcomes (Ann's join and Cy's).
    assert_eq!(bot_texts.len(), 9, "{bot_texts:?}");
    // Every one of the 9 bot messages reaches the worker's consumer and is skipped there.
    // The consumer may still be behind when Ann has seen them all (a reply it published is
    // stored after the message it answered, and later in the stream than what Ann waited
    // for), so wait for the count, bounded.
    let skipped = bots
        .metric_reaches("natter_bots_bot_messages_skipped_total", 9.0)
        .await;
    assert!(skipped >= 9.0, "bot messages skipped: {skipped}");
}
