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
