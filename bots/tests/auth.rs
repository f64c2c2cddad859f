//! Who may manage a room's bots when tokens are required: a member of the room (a user
//! holding a name in it, i.e. joined through an edge) whose token allows the room.

mod common;

use common::*;
use natter_auth::Claims;
use natter_testkit::{ChatClient, NatsServer, Service};
use serde_json::json;

const SECRET: &str = "a-bots-test-secret-of-at-least-32-bytes";

fn token(sub: &str, name: Option<&str>, rooms: Option<&[&str]>) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
    let claims = Claims {
        sub: sub.into(),
        exp: now + 600,
        nbf: None,
        name: name.map(Into::into),
        rooms: rooms.map(|r| r.iter().map(|s| s.to_string()).collect()),
    };
    natter_auth::mint_hs256(SECRET.as_bytes(), &claims).unwrap()
}

#[tokio::test]
async fn only_members_of_the_room_manage_its_bots() {
    let nats = NatsServer::start().await;
    let auth = ["--auth", "required", "--auth-hs256-secret", SECRET];
    let mut edge_args = vec!["--nats-url".to_string(), nats.url()];
    edge_args.extend(auth.iter().map(|s| s.to_string()));
    let edge = Service::start("natter-edge", &edge_args, &[]).await;
    let bots = Bots::start(&nats, &auth).await;
    let room = "Members Room";
    let path = bot_path(room, "echo");
    let script = br#""hi""#;
    let put = |t: Option<String>, query: &'static str| {
        let path = format!("{path}{query}");
        let bots = &bots;
        async move {
            let h = t.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> =
                h.iter().map(|h| ("Authorization", h.as_str())).collect();
            bots.call("PUT", &path, &headers, script).await
        }
    };

    let (status, body) = put(None, "").await;
    assert_eq!(status, 401, "no token: {body}");
    let (status, _) = put(Some("not.a.jwt".into()), "").await;
    assert_eq!(status, 401, "a bad token");
    let ann = token("u-ann", Some("Ann"), None);
    let (status, body) = put(Some(ann.clone()), "").await;
    assert_eq!(status, 403, "not joined yet: {body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("join it first"));

    // Ann joins through the edge with her token: now she holds a name in the room.
    let mut c = ChatClient::connect(&edge.ws_url()).await.unwrap();
    let r = c
        .call(
            "joinRoom",
            json!({"userId": "u-ann", "userName": "Ann", "roomName": room, "token": ann}),
        )
        .await;
    assert_eq!(r["result"], "OK", "{r}");

    let (status, body) = put(Some(ann.clone()), "").await;
    assert_eq!(status, 201, "a member installs: {body}");
    // Without a name claim, the name held is named in the query.
    let unnamed = token("u-ann", None, None);
    let (status, body) = put(Some(unnamed.clone()), "").await;
    assert_eq!(status, 403, "which name? {body}");
    let (status, body) = put(Some(unnamed.clone()), "?userName=").await;
    assert_eq!(status, 403, "an empty name is no name: {body}");
    let (status, body) = put(Some(unnamed), "?userName=An%6E").await;
    assert_eq!(
        status, 200,
        "a member replaces (the name percent-encoded): {body}"
    );
    let (status, body) = put(Some(ann.clone()), "?userName=").await;
    assert_eq!(
        status, 200,
        "an empty userName falls back to the token's name: {body}"
    );
    // Someone else claiming Ann's name, a token for other rooms: refused.
    let (status, _) = put(Some(token("u-eve", None, None)), "?userName=Ann").await;
    assert_eq!(status, 403);
    let (status, _) = put(Some(token("u-ann", Some("Ann"), Some(&["Other Room"]))), "").await;
    assert_eq!(status, 403);
    // Listing and removing follow the same rule.
    let (status, _) = bots
        .call("GET", &format!("/rooms/{}/bots", enc(room)), &[], b"")
        .await;
    assert_eq!(status, 401);
    let h = format!("Bearer {ann}");
    let (status, body) = bots
        .call(
            "GET",
            &format!("/rooms/{}/bots", enc(room)),
            &[("Authorization", &h)],
            b"",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["bots"].as_array().unwrap().len(), 1);
    let (status, _) = bots
        .call("DELETE", &path, &[("Authorization", &h)], b"")
        .await;
    assert_eq!(status, 204);
}
