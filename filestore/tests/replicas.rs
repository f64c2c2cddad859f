//! Several filestore replicas on one shared data directory: what one stores, the others
//! serve, and replicas racing on one uuid store and announce it once.

mod common;

use std::collections::HashMap;

use common::*;
use natter_testkit::http;
use natter_testkit::NatsServer;
use serde_json::json;

const ROOM: &str = "shared volume";

#[tokio::test]
async fn replicas_share_the_volume_and_announce_each_uuid_once() {
    let nats = NatsServer::start().await;
    let data = DataDir::new();
    let a = filestore(&nats, &data, &[]).await;
    let b = filestore(&nats, &data, &[]).await;
    let mut live = Live::room(&nats.url(), ROOM).await;

    // Upload through one, download through the other.
    // Over 2 MiB: no default body limit of the framework gets in the way.
    let file = bytes(3_000_000, 7);
    let r = post_file(
        a.addr,
        &file_message(ROOM, "via-a", "report.bin", file.len()),
        "report.bin",
        &file,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = json_of(&r)["_id"].clone();
    let ra = http::get(a.addr, "/files/via-a", &[]).await.unwrap();
    let rb = http::get(b.addr, "/files/via-a", &[]).await.unwrap();
    assert_eq!(rb.status, 200);
    assert_eq!(checksum(&rb.body), checksum(&file));
    assert_eq!(rb.header("etag"), ra.header("etag"));
    assert_eq!(
        rb.header("content-disposition"),
        Some("attachment; filename=\"report.bin\"; filename*=UTF-8''report.bin")
    );
    let r = http::get(b.addr, "/files/via-a", &[("Range", "bytes=1000-1999")])
        .await
        .unwrap();
    assert_eq!((r.status, r.body.clone()), (206, file[1000..2000].to_vec()));

    let image = png(20_000, 8);
    let r = post_image(b.addr, &image_message(ROOM, "img-via-b", &b64(&image))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http::get(a.addr, "/images/img-via-b", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(json_of(&r)["params"]["base64ImgString"], json!(b64(&image)));

    // The same uuid through the other replica: answered, not stored or announced again.
    let r = post_file(
        b.addr,
        &file_message(ROOM, "via-a", "report.bin", file.len()),
        "report.bin",
        &file,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json_of(&r)["_id"], id);
    assert_eq!(json_of(&r)["duplicate"], json!(true));

    // Both replicas get the same uuid at the same moment, several times.
    let races = 6;
    for i in 0..races {
        let uuid = format!("race-{i}");
        let content = bytes(50_000, 100 + i);
        let msg = file_message(ROOM, &uuid, "race.bin", content.len());
        let (ra, rb) = tokio::join!(
            post_file(a.addr, &msg, "race.bin", &content),
            post_file(b.addr, &msg, "race.bin", &content)
        );
        assert_eq!(
            (ra.status, rb.status),
            (200, 200),
            "{} / {}",
            ra.text(),
            rb.text()
        );
        assert_eq!(
            json_of(&ra)["_id"],
            json_of(&rb)["_id"],
            "{uuid}: one message, one _id"
        );
        let r = http::get(b.addr, &format!("/files/{uuid}"), &[])
            .await
            .unwrap();
        assert_eq!(checksum(&r.body), checksum(&content));
    }

    // Exactly one stored copy and one announcement per uuid.
    assert_eq!(data.files_under("files").len(), 2 * (1 + races as usize));
    assert!(data.files_under("tmp").is_empty());
    let expected = 2 + races as usize;
    assert_eq!(stream_messages(&nats.url()).await, expected as u64);
    let mut seen: HashMap<String, u64> = HashMap::new();
    for _ in 0..expected {
        let (seq, note) = live.next(WAIT).await.expect("announcement");
        let uuid = note["params"]["uuid"].as_str().unwrap().to_owned();
        assert!(
            seen.insert(uuid.clone(), seq).is_none(),
            "{uuid} announced twice"
        );
    }
    assert_eq!(seen.len(), expected);
}
