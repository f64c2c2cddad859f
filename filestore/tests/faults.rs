//! The filestore when NATS goes away: uploads get 503 (kept on disk, not announced), and a
//! retry with the same uuid once NATS is back is announced exactly once.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use natter_testkit::{eventually, NatsServer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROOM: &str = "outage";

#[tokio::test]
async fn nats_down_gives_503_and_a_retry_after_it_returns_is_announced_once() {
    let mut nats = NatsServer::start().await;
    let data = DataDir::new();
    let fs = filestore(&nats, &data, &["--publish-timeout-ms", "2000"]).await;

    let before = post_file(
        fs.addr,
        &file_message(ROOM, "before", "a.txt", 1),
        "a.txt",
        b"a",
    )
    .await;
    assert_eq!(before.status, 200, "{}", before.text());

    nats.kill();
    let addr = fs.ops_addr;
    let not_ready = eventually(WAIT, || async move {
        matches!(natter_testkit::http::get(addr, "/readyz", &[]).await, Ok(r) if r.status == 503)
    })
    .await;
    assert!(not_ready, "readiness must fail without NATS");

    let file = bytes(100_000, 9);
    let msg = file_message(ROOM, "during", "d.bin", file.len());
    let r = post_file(fs.addr, &msg, "d.bin", &file).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(json_of(&r)["error"]["reason"], json!("unavailable"));
    assert!(r.header("retry-after").is_some());
    let image = png(5_000, 10);
    let img = image_message(ROOM, "img-during", &b64(&image));
    let r = post_image(fs.addr, &img).await;
    assert_eq!(r.status, 503, "{}", r.text());
    // Kept on disk, ready to be announced on retry.
    assert_eq!(data.files_under("files").len(), 4);
    assert_eq!(data.files_under("images").len(), 2);

    nats.restart().await;
    let ready = eventually(WAIT, || async move {
        matches!(natter_testkit::http::get(addr, "/readyz", &[]).await, Ok(r) if r.status == 200)
    })
    .await;
    assert!(ready, "ready again once NATS is back:\n{}", fs.log());
    let mut live = Live::room(&nats.url(), ROOM).await;

    let r = post_file(fs.addr, &msg, "d.bin", &file).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = json_of(&r)["_id"].clone();
    assert!(id.is_string());
    let r = post_image(fs.addr, &img).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Again: the same answers, nothing new.
    let r = post_file(fs.addr, &msg, "d.bin", &file).await;
    assert_eq!((r.status, json_of(&r)["_id"].clone()), (200, id.clone()));
    assert_eq!(json_of(&r)["duplicate"], json!(true));
    let r = post_image(fs.addr, &img).await;
    assert_eq!(r.status, 200);

    // "before" and one message per retried uuid.
    assert_eq!(stream_messages(&nats.url()).await, 3);
    let mut uuids = Vec::new();
    for _ in 0..2 {
        let (_, note) = live.next(WAIT).await.expect("announcement");
        uuids.push(note["params"]["uuid"].as_str().unwrap().to_owned());
    }
    uuids.sort();
    assert_eq!(uuids, vec!["during".to_string(), "img-during".to_string()]);

    let r = natter_testkit::http::get(fs.addr, "/files/during", &[])
        .await
        .unwrap();
    assert_eq!(checksum(&r.body), checksum(&file));
    assert_eq!(
        fs.metric("natter_filestore_announce_failures_total").await,
        Some(2.0)
    );
}

async fn wait_ready(addr: SocketAddr, status: u16) -> bool {
    eventually(WAIT, || async move {
        matches!(natter_testkit::http::get(addr, "/readyz", &[]).await, Ok(r) if r.status == status)
    })
    .await
}

#[tokio::test]
async fn nats_dying_in_the_middle_of_an_upload_gives_503_then_the_retry_succeeds_once() {
    let mut nats = NatsServer::start().await;
    let data = DataDir::new();
    let fs = filestore(&nats, &data, &["--publish-timeout-ms", "2000"]).await;
    let file = bytes(400_000, 30);
    let msg = file_message(ROOM, "mid", "m.bin", file.len());
    let body = multipart_ordered(Some(&msg.to_string()), Some(("m.bin", &file)), true);

    // Send the head and half the body, take NATS down, then send the rest.
    let mut s = tokio::net::TcpStream::connect(fs.addr).await.unwrap();
    let head = format!(
        "POST /files HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
        fs.addr,
        multipart_type(),
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let half = body.len() / 2;
    s.write_all(&body[..half]).await.unwrap();
    s.flush().await.unwrap();
    nats.kill();
    assert!(
        wait_ready(fs.ops_addr, 503).await,
        "readiness must fail without NATS"
    );
    s.write_all(&body[half..]).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("unavailable"), "{text}");

    nats.restart().await;
    assert!(
        wait_ready(fs.ops_addr, 200).await,
        "ready again once NATS is back:\n{}",
        fs.log()
    );
    let r = post_file(fs.addr, &msg, "m.bin", &file).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        json_of(&r)["duplicate"],
        json!(true),
        "stored during the outage, announced now"
    );
    let r = post_file(fs.addr, &msg, "m.bin", &file).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(stream_messages(&nats.url()).await, 1);
    let r = natter_testkit::http::get(fs.addr, "/files/mid", &[])
        .await
        .unwrap();
    assert_eq!(checksum(&r.body), checksum(&file));
}

#[tokio::test]
async fn a_full_stream_gives_503_and_the_retry_once_there_is_room_is_announced_once() {
    let nats = NatsServer::start().await;
    let data = DataDir::new();
    let fs = filestore(
        &nats,
        &data,
        &[
            "--stream-max-bytes",
            "20000",
            "--publish-timeout-ms",
            "2000",
        ],
    )
    .await;
    // Fill the stream with another room's messages until it refuses one (discard: new).
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let filler = natter_bus::subjects::room(&natter_protocol::token::encode("filler"));
    let mut stored = 0u64;
    loop {
        let ack = js
            .publish(filler.clone(), vec![b'f'; 1000].into())
            .await
            .unwrap()
            .await;
        match ack {
            Ok(_) => stored += 1,
            Err(e) => {
                assert!(e.to_string().contains("maximum bytes"), "{e}");
                break;
            }
        }
        assert!(stored < 100, "the stream never filled up");
    }

    let file = bytes(5_000, 40);
    let msg = file_message(ROOM, "when-full", "f.bin", file.len());
    for _ in 0..2 {
        let r = post_file(fs.addr, &msg, "f.bin", &file).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(json_of(&r)["error"]["reason"], json!("unavailable"));
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    assert_eq!(stream_messages(&nats.url()).await, stored);

    // Room is made (as the archiver's trimmer would), and the client retries.
    let mut live = Live::room(&nats.url(), ROOM).await;
    let stream = js.get_stream(natter_bus::subjects::STREAM).await.unwrap();
    for seq in 1..=5 {
        stream.delete_message(seq).await.unwrap();
    }
    let r = post_file(fs.addr, &msg, "f.bin", &file).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = json_of(&r)["_id"].clone();
    assert!(id.is_string(), "{}", r.text());
    let r = post_file(fs.addr, &msg, "f.bin", &file).await;
    assert_eq!((r.status, json_of(&r)["_id"].clone()), (200, id.clone()));
    let (seq, note) = live.next(WAIT).await.expect("announcement");
    assert_eq!(note["params"]["uuid"], json!("when-full"));
    assert_eq!(json!(seq.to_string()), id);
    live.assert_silent(Duration::from_millis(500)).await;
    assert_eq!(stream_messages(&nats.url()).await, stored - 5 + 1);
    let r = natter_testkit::http::get(fs.addr, "/files/when-full", &[])
        .await
        .unwrap();
    assert_eq!(checksum(&r.body), checksum(&file));
}

#[tokio::test]
async fn a_filestore_with_other_stream_settings_reports_drift_and_changes_nothing() {
    let nats = NatsServer::start().await;
    let data = DataDir::new();
    let first = filestore(&nats, &data, &[]).await;
    let args: Vec<String> = [
        "--nats-url",
        &nats.url(),
        "--data-dir",
        &data.path().display().to_string(),
        "--stream-max-bytes",
        "1048576",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let second = natter_testkit::Service::spawn("natter-filestore", &args, &[]).await;
    // Not ready, and for that reason (not merely before NATS is reached).
    let drifted = eventually(WAIT, || async {
        matches!(natter_testkit::http::get(second.ops_addr, "/readyz", &[]).await,
            Ok(r) if r.status == 503 && r.text().contains("max_bytes"))
    })
    .await;
    assert!(
        drifted,
        "the drifted filestore must not be ready:\n{}",
        second.log()
    );
    assert_eq!(
        second.metric("natter_filestore_stream_drift").await,
        Some(1.0)
    );
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut s = js.get_stream("CHAT").await.unwrap();
    let info = s.info().await.unwrap();
    assert_eq!(info.config.max_bytes, 10 * 1024 * 1024 * 1024);
    assert_eq!(first.status("/readyz").await, Some(200));
    assert_eq!(
        first.metric("natter_filestore_stream_drift").await,
        Some(0.0)
    );
}
