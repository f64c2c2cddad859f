//! The filestore's REST API against a real nats-server: round trips, announcements,
//! conditional and ranged downloads, CORS, idempotency, bad input and hostile names.

mod common;

use common::*;
use natter_testkit::http;
use natter_testkit::NatsServer;
use serde_json::{json, Value};

const ROOM: &str = "Tests Room";

#[tokio::test]
async fn image_and_file_round_trip_and_are_announced_once() {
    let nats = NatsServer::start().await;
    let data = DataDir::new();
    let fs = filestore(&nats, &data, &[]).await;
    let mut live = Live::room(&nats.url(), ROOM).await;

    // An image as a browser's FileReader sends it: a data URL.
    let image = png(50_000, 1);
    let data_url = format!("data:image/png;base64,{}", b64(&image));
    let r = post_image(fs.addr, &image_message(ROOM, "img-1", &data_url)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let img_id = json_of(&r)["_id"].as_str().expect("_id").to_owned();
    assert_eq!(json_of(&r)["duplicate"], json!(false));

    let (seq, note) = live.next(WAIT).await.expect("image announcement");
    assert_eq!(seq.to_string(), img_id);
    assert_eq!(note["method"], json!("imageMessage"));
    assert_eq!(note["id"], json!(11));
    assert_eq!(note["params"]["uuid"], json!("img-1"));
    assert_eq!(note["params"]["roomName"], json!(ROOM));
    assert_eq!(note["params"]["base64ImgString"], json!(""));
    assert_eq!(note["params"]["ack"], json!(true));
    assert!(note["params"]["ts"].is_string());
    assert!(
        note.get("_id").is_none(),
        "the stream assigns _id, the edge adds it"
    );

    let r = http::get(fs.addr, "/images/img-1", &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let got = json_of(&r);
    assert_eq!(got["_id"], json!(img_id));
    assert_eq!(got["params"]["uuid"], json!("img-1"));
    assert_eq!(got["params"]["ack"], json!(true));
    let text = got["params"]["base64ImgString"].as_str().unwrap();
    assert_eq!(text, data_url);
    let decoded = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        text.split_once(',').unwrap().1,
    )
    .unwrap();
    assert_eq!(checksum(&decoded), checksum(&image));
    let img_etag = r.header("etag").expect("etag").to_owned();
    let r = http::get(fs.addr, "/images/img-1", &[("If-None-Match", &img_etag)])
        .await
        .unwrap();
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());

    // A file, the message part after the file part.
    let file = bytes(300_000, 2);
    let name = "résumé final.pdf";
    let r = post_file(
        fs.addr,
        &file_message(ROOM, "file-1", name, file.len()),
        "ignored.bin",
        &file,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let file_id = json_of(&r)["_id"].as_str().expect("_id").to_owned();
    let (seq, note) = live.next(WAIT).await.expect("file announcement");
    assert_eq!(seq.to_string(), file_id);
    assert_eq!(note["method"], json!("fileMessage"));
    assert_eq!(note["params"]["fileName"], json!(name));
    assert_eq!(note["params"]["fileContents"], json!(""));
    assert_eq!(note["params"]["fileSize"], json!(300_000));

    let r = http::get(fs.addr, "/files/file-1", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), file.len());
    assert_eq!(checksum(&r.body), checksum(&file));
    assert_eq!(r.header("content-length"), Some("300000"));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename=\"r_sum_ final.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20final.pdf")
    );
    let etag = r.header("etag").expect("etag").to_owned();

    // Ranges.
    for (range, from, to) in [
        ("bytes=100-199", 100usize, 200usize),
        ("bytes=0-0", 0, 1),
        ("bytes=-10", 299_990, 300_000),
        ("bytes=299990-", 299_990, 300_000),
        ("bytes=299000-999999", 299_000, 300_000),
    ] {
        let r = http::get(fs.addr, "/files/file-1", &[("Range", range)])
            .await
            .unwrap();
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.body, file[from..to].to_vec(), "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {from}-{}/300000", to - 1).as_str())
        );
        assert_eq!(
            r.header("content-length"),
            Some((to - from).to_string().as_str())
        );
    }
    let r = http::get(fs.addr, "/files/file-1", &[("Range", "bytes=300000-")])
        .await
        .unwrap();
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */300000"));
    // A Range for another version (If-Range) gets the whole file.
    let r = http::get(
        fs.addr,
        "/files/file-1",
        &[("Range", "bytes=0-9"), ("If-Range", "\"other\"")],
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.body.len()), (200, 300_000));
    let r = http::get(
        fs.addr,
        "/files/file-1",
        &[("Range", "bytes=0-9"), ("If-Range", &etag)],
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.body.len()), (206, 10));
    // Conditional.
    let r = http::get(fs.addr, "/files/file-1", &[("If-None-Match", &etag)])
        .await
        .unwrap();
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert!(r.body.is_empty());
    let r = http::get(fs.addr, "/files/file-1", &[("If-None-Match", "\"stale\"")])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    // HEAD: headers only.
    let r = http::request(fs.addr, "HEAD", "/files/file-1", &[], &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("300000"));
    assert!(r.body.is_empty());

    // The same uuids again: 200, same _id, nothing stored or announced again.
    let r = post_file(
        fs.addr,
        &file_message(ROOM, "file-1", name, file.len()),
        "x",
        &file,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json_of(&r)["_id"], json!(file_id));
    assert_eq!(json_of(&r)["duplicate"], json!(true));
    let r = post_image(fs.addr, &image_message(ROOM, "img-1", &data_url)).await;
    assert_eq!(r.status, 200);
    assert_eq!(json_of(&r)["_id"], json!(img_id));
    assert_eq!(stream_messages(&nats.url()).await, 2);
    // The next announcement is the next upload: no duplicate came in between.
    let r = post_file(
        fs.addr,
        &file_message(ROOM, "file-2", "b.txt", 3),
        "b.txt",
        b"abc",
    )
    .await;
    assert_eq!(r.status, 200);
    let (_, note) = live.next(WAIT).await.expect("announcement");
    assert_eq!(note["params"]["uuid"], json!("file-2"));
    assert_eq!(
        data.files_under("files").len(),
        4,
        "one blob and one record per file"
    );
    assert_eq!(data.files_under("images").len(), 2);
    assert!(data.files_under("tmp").is_empty());

    // CORS preflight.
    let r = http::request(
        fs.addr,
        "OPTIONS",
        "/files",
        &[
            ("Origin", "http://elsewhere.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("content-type")
    );
    let r = http::request(
        fs.addr,
        "OPTIONS",
        "/images/img-1",
        &[("Origin", "http://x.example")],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(
        r.header("access-control-allow-headers")
            .is_some_and(|h| h.contains("Authorization")),
        "a browser may send its token"
    );
    // Every answer, a 404 included, lets a browser read WWW-Authenticate.
    let r = http::get(fs.addr, "/files/no-such-uuid", &[])
        .await
        .unwrap();
    assert!(r
        .header("access-control-expose-headers")
        .is_some_and(|h| h.contains("WWW-Authenticate")));

    // Metrics.
    assert_eq!(
        fs.metric("natter_filestore_uploads_total{kind=\"file\",result=\"stored\"}")
            .await,
        Some(2.0)
    );
    assert_eq!(
        fs.metric("natter_filestore_uploads_total{kind=\"file\",result=\"duplicate\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        fs.metric("natter_filestore_uploads_total{kind=\"image\",result=\"duplicate\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        fs.metric("natter_filestore_announcements_total{result=\"published\"}")
            .await,
        Some(3.0)
    );
    assert_eq!(
        fs.metric("natter_filestore_upload_bytes_total{kind=\"file\"}")
            .await,
        Some(300_003.0)
    );
    assert_eq!(
        fs.metric("natter_filestore_upload_duration_seconds_count")
            .await,
        Some(5.0)
    );
    assert_eq!(
        fs.metric("natter_filestore_not_modified_total{kind=\"file\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(fs.status("/healthz").await, Some(200));
}

/// Post `req` and check the answer's status and reason, and that nothing was kept.
async fn refused(data: &DataDir, r: http::Response, status: u16, reason: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    let v: Value =
        serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("{what}: {}", r.text()));
    assert_eq!(v["error"]["reason"], json!(reason), "{what}: {v}");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{what}");
    data.assert_empty();
}

#[tokio::test]
async fn bad_input_is_refused_with_nothing_stored_or_announced() {
    let nats = NatsServer::start().await;
    let data = DataDir::new();
    let fs = filestore(
        &nats,
        &data,
        &[
            "--max-file-bytes",
            "1048576",
            "--max-image-bytes",
            "262144",
            "--max-file-name-bytes",
            "100",
        ],
    )
    .await;
    let mut live = Live::room(&nats.url(), ROOM).await;
    let a = fs.addr;
    let good = file_message(ROOM, "f-bad", "a.txt", 3).to_string();

    // POST /files
    let body = multipart(Some(&good), None);
    refused(
        &data,
        post_multipart(a, &body).await,
        400,
        "no_file",
        "no file part",
    )
    .await;
    let body = multipart(Some("{\"params\": {"), Some(("a.txt", b"abc")));
    refused(
        &data,
        post_multipart(a, &body).await,
        400,
        "malformed_json",
        "malformed message",
    )
    .await;
    let body = multipart(None, Some(("a.txt", b"abc")));
    refused(
        &data,
        post_multipart(a, &body).await,
        400,
        "invalid_message",
        "no message part",
    )
    .await;
    for missing in ["uuid", "roomName", "userName"] {
        let mut m = file_message(ROOM, "f-bad", "a.txt", 3);
        m["params"].as_object_mut().unwrap().remove(missing);
        let body = multipart(Some(&m.to_string()), Some(("a.txt", b"abc")));
        refused(
            &data,
            post_multipart(a, &body).await,
            400,
            "invalid_message",
            missing,
        )
        .await;
    }
    let mut m = file_message(ROOM, "f-bad", "a.txt", 3);
    m["params"]["uuid"] = json!("has space");
    let body = multipart(Some(&m.to_string()), Some(("a.txt", b"abc")));
    refused(
        &data,
        post_multipart(a, &body).await,
        400,
        "invalid_message",
        "uuid charset",
    )
    .await;
    let body = multipart(Some(&good), Some(("a.txt", b"abc")));
    let r = http::request(
        a,
        "POST",
        "/files",
        &[("Content-Type", "application/json")],
        &body,
    )
    .await
    .unwrap();
    refused(&data, r, 400, "bad_multipart", "not multipart").await;
    let long = file_message(ROOM, "f-bad", &"n".repeat(101), 3).to_string();
    let body = multipart(Some(&long), Some(("a.txt", b"abc")));
    refused(
        &data,
        post_multipart(a, &body).await,
        400,
        "file_name",
        "long name",
    )
    .await;
    // Over the limit by a little: streamed, stopped at the limit, partial upload deleted.
    let big = bytes(1_048_577 + 200_000, 3);
    let body = multipart(Some(&good), Some(("big.bin", &big)));
    refused(
        &data,
        post_multipart(a, &body).await,
        413,
        "too_large",
        "oversize file",
    )
    .await;
    // The message part first this time, then an oversize file.
    let body = multipart_ordered(Some(&good), Some(("big.bin", &big)), true);
    refused(
        &data,
        post_multipart(a, &body).await,
        413,
        "too_large",
        "oversize file after message",
    )
    .await;

    // POST /images
    let r = http::request(
        a,
        "POST",
        "/images",
        &[("Content-Type", "application/json")],
        b"{\"params\":",
    )
    .await
    .unwrap();
    refused(&data, r, 400, "malformed_json", "malformed image JSON").await;
    let r = http::request(a, "POST", "/images", &[], b"not json at all")
        .await
        .unwrap();
    refused(&data, r, 400, "malformed_json", "not JSON").await;
    let ok_b64 = b64(&png(100, 4));
    for missing in ["uuid", "roomName"] {
        let mut m = image_message(ROOM, "i-bad", &ok_b64);
        m["params"].as_object_mut().unwrap().remove(missing);
        refused(
            &data,
            post_image(a, &m).await,
            400,
            "invalid_message",
            missing,
        )
        .await;
    }
    let m = json!({"jsonrpc":"2.0","method":"imageMessage","params":params(ROOM, "i-bad")});
    refused(
        &data,
        post_image(a, &m).await,
        400,
        "invalid_message",
        "no image",
    )
    .await;
    for bad in ["not base64!", "QUJD=A", "Q", "data:image/png;base64,@@@@"] {
        let m = image_message(ROOM, "i-bad", bad);
        refused(&data, post_image(a, &m).await, 400, "bad_base64", bad).await;
    }
    let m = image_message(ROOM, "i-bad", &b64(b"<svg onload=alert(1)>"));
    refused(
        &data,
        post_image(a, &m).await,
        415,
        "unsupported_content",
        "not an image",
    )
    .await;
    let m = image_message(ROOM, "i-bad", &format!("data:text/html;base64,{ok_b64}"));
    refused(
        &data,
        post_image(a, &m).await,
        415,
        "unsupported_content",
        "data URL not image",
    )
    .await;
    let m = image_message(ROOM, "i-bad", &b64(&png(300_000, 5)));
    refused(
        &data,
        post_image(a, &m).await,
        413,
        "too_large",
        "oversize image",
    )
    .await;
    // Oversize and broken after the limit: the size is what counts.
    let m = image_message(ROOM, "i-bad", &format!("{}@@", b64(&png(300_000, 6))));
    refused(
        &data,
        post_image(a, &m).await,
        413,
        "too_large",
        "oversize image",
    )
    .await;

    // Unknown uuids.
    for path in [
        "/files/nope",
        "/images/nope",
        "/files/..%2F..%2Fetc%2Fpasswd",
        "/files/%00",
    ] {
        let r = http::get(a, path, &[]).await.unwrap();
        assert_eq!(r.status, 404, "{path}");
    }

    // Nothing was announced: the first announcement is this upload.
    let r = post_file(
        a,
        &file_message(ROOM, "f-good", "a.txt", 3),
        "a.txt",
        b"abc",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, note) = live.next(WAIT).await.expect("announcement");
    assert_eq!(note["params"]["uuid"], json!("f-good"));
    assert_eq!(stream_messages(&nats.url()).await, 1);
    assert_eq!(
        fs.metric("natter_filestore_rejects_total{reason=\"too_large\"}")
            .await,
        Some(4.0)
    );
    assert_eq!(
        fs.metric("natter_filestore_rejects_total{reason=\"bad_base64\"}")
            .await,
        Some(4.0)
    );
    assert_eq!(
        fs.metric("natter_filestore_not_found_total{kind=\"file\"}")
            .await,
        Some(3.0)
    );
}

#[tokio::test]
async fn hostile_file_names_are_stored_safely_and_served_with_safe_headers() {
    let nats = NatsServer::start().await;
    let data = DataDir::new();
    let fs = filestore(&nats, &data, &[]).await;
    let mut live = Live::room(&nats.url(), ROOM).await;
    let cases = [
        ("n-1", "../../etc/passwd", "attachment; filename=\"passwd\"; filename*=UTF-8''passwd"),
        ("n-2", "a\u{0}b\r\nc.txt", "attachment; filename=\"abc.txt\"; filename*=UTF-8''abc.txt"),
        (
            "n-3",
            "x\r\nSet-Cookie: evil=1\r\n.txt",
            "attachment; filename=\"xSet-Cookie_ evil=1.txt\"; filename*=UTF-8''xSet-Cookie%3A%20evil%3D1.txt",
        ),
        ("n-4", "..\\..\\boot.ini", "attachment; filename=\"boot.ini\"; filename*=UTF-8''boot.ini"),
        ("n-5", "..", "attachment; filename=\"file\"; filename*=UTF-8''file"),
    ];
    for (i, (uuid, name, _)) in cases.iter().enumerate() {
        let content = bytes(1000 + i, 10 + i as u64);
        let msg = file_message(ROOM, uuid, name, content.len()).to_string();
        let body = multipart_ordered(Some(&msg), Some(("part.bin", &content)), i % 2 == 0);
        let r = post_multipart(fs.addr, &body).await;
        assert_eq!(r.status, 200, "{name:?}: {}", r.text());
        // The room sees the name as the client gave it.
        let (_, note) = live.next(WAIT).await.expect("announcement");
        assert_eq!(note["params"]["fileName"], json!(name));
    }
    // Only the part's file name given: it is used, sanitised the same way.
    let mut msg = file_message(ROOM, "n-6", "", 3);
    msg["params"].as_object_mut().unwrap().remove("fileName");
    let body = multipart(Some(&msg.to_string()), Some(("../../../x.sh", b"abc")));
    assert_eq!(post_multipart(fs.addr, &body).await.status, 200);

    for (i, (uuid, name, disposition)) in cases.iter().enumerate() {
        let r = http::get(fs.addr, &format!("/files/{uuid}"), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-disposition"),
            Some(*disposition),
            "{name:?}"
        );
        assert!(
            r.header("set-cookie").is_none(),
            "header injection via {name:?}"
        );
        assert_eq!(checksum(&r.body), checksum(&bytes(1000 + i, 10 + i as u64)));
    }
    let r = http::get(fs.addr, "/files/n-6", &[]).await.unwrap();
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename=\"x.sh\"; filename*=UTF-8''x.sh")
    );

    // On disk: only hex-named records and blobs under files/, nothing else anywhere.
    let stored = data.files_under("files");
    assert_eq!(stored.len(), 12);
    for p in &stored {
        let n = p.file_name().unwrap().to_str().unwrap();
        let stem = n
            .strip_suffix(".meta")
            .or_else(|| n.strip_suffix(".blob"))
            .unwrap_or("!");
        assert!(
            stem.bytes().all(|b| b.is_ascii_hexdigit() || b == b'.'),
            "{n}"
        );
        assert!(p.starts_with(data.path().join("files")));
    }
    assert!(data.files_under("tmp").is_empty());
    assert!(data.files_under("images").is_empty());
}

#[tokio::test]
async fn same_uuid_in_another_room_is_a_conflict() {
    let nats = NatsServer::start().await;
    let data = DataDir::new();
    let fs = filestore(&nats, &data, &[]).await;
    let r = post_file(
        fs.addr,
        &file_message("room A", "shared", "a.txt", 3),
        "a.txt",
        b"abc",
    )
    .await;
    assert_eq!(r.status, 200);
    let r = post_file(
        fs.addr,
        &file_message("room B", "shared", "a.txt", 3),
        "a.txt",
        b"abc",
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(stream_messages(&nats.url()).await, 1);
    assert_eq!(data.files_under("files").len(), 2);
    assert!(data.files_under("tmp").is_empty());
}

/// Read one HTTP/1.1 response with a `Content-Length` from `s`: its status and body.
async fn read_response(s: &mut tokio::net::TcpStream) -> (u16, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).await.expect("read");
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let status = head[9..12].parse().expect("status");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    while raw.len() < head_end + len {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "connection closed");
        raw.extend_from_slice(&buf[..n]);
    }
    (status, raw[head_end..head_end + len].to_vec())
}

#[tokio::test]
async fn a_keep_alive_connection_serves_upload_after_upload() {
    use tokio::io::AsyncWriteExt;
    let nats = NatsServer::start().await;
    let data = DataDir::new();
    let fs = filestore(&nats, &data, &[]).await;
    let mut s = tokio::net::TcpStream::connect(fs.addr).await.unwrap();
    for i in 0..3 {
        let uuid = format!("ka-{i}");
        let body = multipart(
            Some(&file_message(ROOM, &uuid, "k.txt", 3).to_string()),
            Some(("k.txt", b"abc")),
        );
        let head = format!(
            "POST /files HTTP/1.1\r\nHost: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
            fs.addr,
            multipart_type(),
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
        let (status, body) = tokio::time::timeout(WAIT, read_response(&mut s))
            .await
            .expect("an answer on the same connection");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    assert_eq!(stream_messages(&nats.url()).await, 3);
}
