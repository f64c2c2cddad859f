//! End to end through an edge: a member joined on `natter-edge` receives the filestore's
//! notifications like any room message, with an `_id`.

mod common;

use std::time::Duration;

use common::*;
use natter_testkit::{ChatClient, NatsServer, Service};
use serde_json::json;

const ROOM: &str = "Tests Room";

#[tokio::test]
async fn members_on_an_edge_receive_upload_notifications_with_an_id() {
    let nats = NatsServer::start().await;
    let data = DataDir::new();
    let fs = filestore(&nats, &data, &[]).await;
    let edge = Service::start("natter-edge", &["--nats-url".into(), nats.url()], &[]).await;
    let mut member = ChatClient::connect(&edge.ws_url())
        .await
        .expect("connect to the edge");
    member
        .join(ROOM, "uid-bob", "Bob", None, false)
        .await
        .expect("join");

    let image = png(10_000, 20);
    let r = post_image(fs.addr, &image_message(ROOM, "edge-img", &b64(&image))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let img_id = json_of(&r)["_id"].clone();
    let file = bytes(10_000, 21);
    let r = post_file(
        fs.addr,
        &file_message(ROOM, "edge-file", "notes.txt", file.len()),
        "notes.txt",
        &file,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let file_id = json_of(&r)["_id"].clone();

    let msgs = member.room_messages(2, Duration::from_secs(10)).await;
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(msgs[0]["method"], json!("imageMessage"));
    assert_eq!(msgs[0]["_id"], img_id);
    assert_eq!(msgs[0]["params"]["uuid"], json!("edge-img"));
    assert_eq!(msgs[0]["params"]["base64ImgString"], json!(""));
    assert_eq!(msgs[0]["params"]["ack"], json!(true));
    assert_eq!(msgs[1]["method"], json!("fileMessage"));
    assert_eq!(msgs[1]["_id"], file_id);
    assert_eq!(msgs[1]["params"]["fileName"], json!("notes.txt"));
    assert_eq!(msgs[1]["params"]["fileContents"], json!(""));

    // What the notification points at is there, identical.
    let r = natter_testkit::http::get(fs.addr, "/files/edge-file", &[])
        .await
        .unwrap();
    assert_eq!(checksum(&r.body), checksum(&file));
}

#[tokio::test]
async fn one_secret_serves_edge_and_filestore_and_only_joined_users_may_upload() {
    let nats = NatsServer::start().await;
    let data = DataDir::new();
    let fs = filestore_auth(&nats, &data, &[]).await;
    let edge_args: Vec<String> = [
        "--nats-url",
        &nats.url(),
        "--auth",
        "required",
        "--auth-hs256-secret",
        SECRET,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let edge = Service::start("natter-edge", &edge_args, &[]).await;
    let ann_token = token("uid-ann", Some(&[ROOM]), 600);
    let bob_token = token("uid-bob", Some(&[ROOM]), 600);
    let mut bob = ChatClient::connect(&format!("{}?token={bob_token}", edge.ws_url()))
        .await
        .expect("connect to the edge");
    bob.join(ROOM, "uid-bob", "Bob", None, false)
        .await
        .expect("join");

    // Ann has a valid token but has not joined: she holds no name in the room.
    let (hk, hv) = bearer(&ann_token);
    let mut msg = file_message(ROOM, "ann-file", "a.txt", 3);
    msg["params"]["userId"] = json!("uid-ann");
    msg["params"]["userName"] = json!("Ann");
    let body = multipart(Some(&msg.to_string()), Some(("a.txt", b"abc")));
    let r = post_multipart_with(fs.addr, &body, &[(hk, hv.as_str())]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(!data.stored("ann-file"));

    // Once she joins through the edge, the same upload goes through and Bob gets it.
    let mut ann = ChatClient::connect(&format!("{}?token={ann_token}", edge.ws_url()))
        .await
        .expect("connect to the edge");
    ann.join(ROOM, "uid-ann", "Ann", None, false)
        .await
        .expect("join");
    let r = post_multipart_with(fs.addr, &body, &[(hk, hv.as_str())]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let msgs = bob
        .room_messages(1, Duration::from_secs(10))
        .await
        .into_iter()
        .filter(|m| m["method"] == json!("fileMessage"))
        .collect::<Vec<_>>();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["params"]["uuid"], json!("ann-file"));
    assert_eq!(msgs[0]["params"]["userName"], json!("Ann"));

    // Bob may download it with his token; without one, nobody may.
    let r = natter_testkit::http::get(fs.addr, &format!("/files/ann-file?token={bob_token}"), &[])
        .await
        .unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"abc"[..]));
    let r = natter_testkit::http::get(fs.addr, "/files/ann-file", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 401);
}
