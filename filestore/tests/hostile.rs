//! Hostile clients against a filestore with `--auth required`: each case gets its exact
//! status, and nothing is stored (no record, blob or temporary file for its uuid) and
//! nothing announced (the room's live subject stays silent, the stream empty).
//!
//! Names are held in the `presence` bucket the way an edge holds them (`hold_name`), so
//! these tests need no edge; `edge.rs` runs the whole path with one.

mod common;

use std::time::{Duration, Instant};

use common::*;
use natter_testkit::{eventually, http, NatsServer, Service};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROOM: &str = "Hostile Room";
const QUIET: Duration = Duration::from_millis(500);

/// A refusal: status, reason, and nothing of `uuid` kept.
fn assert_refused(data: &DataDir, r: &http::Response, status: u16, reason: &str, uuid: &str) {
    assert_eq!(r.status, status, "{uuid}: {}", r.text());
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("{}", r.text()));
    assert_eq!(v["error"]["reason"], json!(reason), "{uuid}: {v}");
    if status == 401 {
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{uuid}");
    }
    assert!(!data.holds(uuid), "{uuid}: something was kept");
}

/// (case, token, userName, userId, status, reason)
type UploadCase<'a> = (&'a str, Option<String>, &'a str, &'a str, u16, &'a str);

/// (Range, status, the file's bytes sent when 206)
type RangeCase<'a> = (&'a str, u16, Option<(usize, usize)>);

fn file_body(msg: &Value, content: &[u8]) -> Vec<u8> {
    multipart_ordered(Some(&msg.to_string()), Some(("a.bin", content)), true)
}

#[tokio::test]
async fn uploads_the_token_does_not_allow_are_refused_with_nothing_stored_or_announced() {
    let nats = NatsServer::start().await;
    let kv = presence(&nats.url()).await;
    let data = DataDir::new();
    let fs = filestore_auth(&nats, &data, &[]).await;
    let mut live = Live::room(&nats.url(), ROOM).await;
    hold_name(&kv, ROOM, "Ann", "u-1").await;
    hold_name(&kv, ROOM, "Eve", "u-9").await;

    let good = token("u-1", None, 600);
    let forged = natter_auth::mint_hs256(
        b"not-the-filestore-secret-not-the-filestore-secret",
        &natter_auth::Claims {
            sub: "u-1".into(),
            exp: u64::MAX / 2,
            nbf: None,
            name: None,
            rooms: None,
        },
    )
    .unwrap();
    let cases: Vec<UploadCase> = vec![
        ("no-token", None, "Ann", "u-1", 401, "unauthorized"),
        (
            "expired",
            Some(token("u-1", None, -3600)),
            "Ann",
            "u-1",
            401,
            "unauthorized",
        ),
        ("forged", Some(forged), "Ann", "u-1", 401, "unauthorized"),
        (
            "garbage",
            Some("not.a.jwt".into()),
            "Ann",
            "u-1",
            401,
            "unauthorized",
        ),
        (
            "other-room",
            Some(token("u-1", Some(&["Other Room", "Hostile*x"]), 600)),
            "Ann",
            "u-1",
            403,
            "forbidden",
        ),
        (
            "no-name-held",
            Some(good.clone()),
            "Nobody",
            "u-1",
            403,
            "forbidden",
        ),
        (
            "userid-not-sub",
            Some(token("u-2", None, 600)),
            "Ann",
            "u-1",
            403,
            "forbidden",
        ),
        (
            "name-held-by-another",
            Some(good.clone()),
            "Eve",
            "u-1",
            403,
            "forbidden",
        ),
    ];
    let image = b64(&png(2_000, 1));
    for (case, tok, user_name, user_id, status, reason) in &cases {
        let auth = tok.as_ref().map(|t| bearer(t));
        let headers: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();

        let uuid = format!("img-{case}");
        let mut msg = image_message(ROOM, &uuid, &image);
        msg["params"]["userName"] = json!(user_name);
        msg["params"]["userId"] = json!(user_id);
        let r = post_image_with(fs.addr, &msg, &headers).await;
        assert_refused(&data, &r, *status, reason, &uuid);

        let uuid = format!("file-{case}");
        let mut msg = file_message(ROOM, &uuid, "a.bin", 3000);
        msg["params"]["userName"] = json!(user_name);
        msg["params"]["userId"] = json!(user_id);
        let r = post_multipart_with(fs.addr, &file_body(&msg, &bytes(3000, 2)), &headers).await;
        assert_refused(&data, &r, *status, reason, &uuid);
    }
    live.assert_silent(QUIET).await;
    assert_eq!(stream_messages(&nats.url()).await, 0);
    data.assert_empty();

    // The same uploads with a token that allows them go through, as the message says.
    let h = bearer(&good);
    let headers = [(h.0, h.1.as_str())];
    let r = post_image_with(fs.addr, &image_message(ROOM, "img-ok", &image), &headers).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let msg = file_message(ROOM, "file-ok", "a.bin", 3000);
    let r = post_multipart_with(fs.addr, &file_body(&msg, &bytes(3000, 2)), &headers).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for uuid in ["img-ok", "file-ok"] {
        let (_, note) = live.next(WAIT).await.expect("announcement");
        assert_eq!(note["params"]["uuid"], json!(uuid));
        assert_eq!(note["params"]["userName"], json!("Ann"));
        assert_eq!(note["params"]["userId"], json!("u-1"));
        assert_eq!(note["params"]["roomName"], json!(ROOM));
    }
    assert_eq!(
        fs.metric("natter_filestore_rejects_total{reason=\"unauthorized\"}")
            .await,
        Some(8.0)
    );
    assert_eq!(
        fs.metric("natter_filestore_rejects_total{reason=\"forbidden\"}")
            .await,
        Some(8.0)
    );

    // Optional mode: no token is let through, a bad one is not.
    let data2 = DataDir::new();
    let optional = filestore(
        &nats,
        &data2,
        &["--auth", "optional", "--auth-hs256-secret", SECRET],
    )
    .await;
    let r = post_image(optional.addr, &image_message(ROOM, "opt-none", &image)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let bad = bearer(&token("u-1", None, -3600));
    let r = post_image_with(
        optional.addr,
        &image_message(ROOM, "opt-expired", &image),
        &[(bad.0, bad.1.as_str())],
    )
    .await;
    assert_refused(&data2, &r, 401, "unauthorized", "opt-expired");
}

#[tokio::test]
async fn downloads_need_a_token_for_the_uploads_room() {
    let nats = NatsServer::start().await;
    let kv = presence(&nats.url()).await;
    let data = DataDir::new();
    let fs = filestore_auth(&nats, &data, &[]).await;
    hold_name(&kv, ROOM, "Ann", "u-1").await;
    let ann = token("u-1", Some(&[ROOM]), 600);
    let h = bearer(&ann);
    let r = post_multipart_with(
        fs.addr,
        &file_body(&file_message(ROOM, "dl-file", "a.bin", 100), &bytes(100, 3)),
        &[(h.0, h.1.as_str())],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_image_with(
        fs.addr,
        &image_message(ROOM, "dl-img", &b64(&png(100, 4))),
        &[(h.0, h.1.as_str())],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Bob may read other rooms only; Cy may read everything.
    let bob = token("u-2", Some(&["Another Room"]), 600);
    let cy = token("u-3", None, 600);
    let expired = token("u-3", None, -3600);
    for path in ["/files/dl-file", "/images/dl-img"] {
        let get = |extra: String, header: Option<String>| async move {
            let h = header.map(|t| bearer(&t));
            let headers: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http::get(fs.addr, &format!("{path}{extra}"), &headers)
                .await
                .expect("GET")
        };
        let r = get(String::new(), None).await;
        assert_eq!(
            (r.status, r.header("www-authenticate")),
            (401, Some("Bearer"))
        );
        let r = get(String::new(), Some(expired.clone())).await;
        assert_eq!(r.status, 401, "{path}: expired");
        let r = get(String::new(), Some(bob.clone())).await;
        assert_eq!(r.status, 403, "{path}: another room's token");
        assert_eq!(json_of(&r)["error"]["reason"], json!("forbidden"));
        let r = get(format!("?token={bob}"), None).await;
        assert_eq!(r.status, 403, "{path}: another room's token in the query");
        let r = get(format!("?token={cy}"), None).await;
        assert_eq!(r.status, 200, "{path}: ?token= as <img src> sends it");
        let r = get(String::new(), Some(ann.clone())).await;
        assert_eq!(r.status, 200, "{path}: the room's token");
        let r = get("-unknown".into(), Some(cy.clone())).await;
        assert_eq!(r.status, 404, "{path}: unknown stays 404");
    }
}

#[tokio::test]
async fn range_abuse_gets_416_200_or_206_and_never_more_than_the_file() {
    let nats = NatsServer::start().await;
    let data = DataDir::new();
    let fs = filestore_auth(&nats, &data, &[]).await;
    let kv = presence(&nats.url()).await;
    hold_name(&kv, ROOM, "Ann", "u-1").await;
    let t = token("u-1", None, 600);
    let h = bearer(&t);
    let content = bytes(1000, 5);
    let r = post_multipart_with(
        fs.addr,
        &file_body(&file_message(ROOM, "ranged", "r.bin", 1000), &content),
        &[(h.0, h.1.as_str())],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let many: Vec<String> = (0..500).map(|i| format!("{i}-{i}")).collect();
    let many = format!("bytes={}", many.join(","));
    let long = format!("bytes=0-1{}", ",0-1".repeat(1000));
    let cases: Vec<RangeCase> = vec![
        (&many, 200, None),
        (&long, 200, None),
        ("bytes=0-10,5-15", 200, None),
        ("bytes=10-5", 200, None),
        ("bytes=1000-", 416, None),
        ("bytes=5000-6000", 416, None),
        ("bytes=-0", 416, None),
        ("bytes=99999999999999999999999-", 200, None),
        ("bytes=-99999999999999999999999", 200, None),
        ("bytes=0-99999999999999999999999", 200, None),
        ("bytes=0-18446744073709551615", 206, Some((0, 999))),
        ("bytes=-18446744073709551615", 206, Some((0, 999))),
        ("bytes=990-2000", 206, Some((990, 999))),
        ("bytes=-5", 206, Some((995, 999))),
        ("bytes=0-0", 206, Some((0, 0))),
        ("bytes=", 200, None),
        ("bytes=--1", 200, None),
        ("bytes=1-2-3", 200, None),
        ("pages=0-1", 200, None),
    ];
    for (range, status, part) in cases {
        let r = http::get(
            fs.addr,
            "/files/ranged",
            &[(h.0, h.1.as_str()), ("Range", range)],
        )
        .await
        .expect("GET");
        let shown = &range[..range.len().min(40)];
        assert_eq!(r.status, status, "{shown}: {}", r.text());
        match status {
            200 => assert_eq!(r.body, content, "{shown}"),
            206 => {
                let (a, b) = part.expect("range");
                assert_eq!(r.body, content[a..=b], "{shown}");
                let expected = format!("bytes {a}-{b}/1000");
                assert_eq!(r.header("content-range"), Some(expected.as_str()));
            }
            _ => {
                assert_eq!(r.header("content-range"), Some("bytes */1000"), "{shown}");
            }
        }
        if status != 416 {
            assert_eq!(
                r.header("content-length"),
                Some(r.body.len().to_string().as_str()),
                "{shown}"
            );
        }
    }
    assert_eq!(fs.status("/healthz").await, Some(200));
}

/// What a raw client got: the status line's code (if any) and how long it took.
struct Outcome {
    status: Option<u16>,
    took: Duration,
}

/// POST `path` with a chunked body: `first`, then `chunk` bytes every `pause`, forever,
/// until the server answers (or `limit` passes).
async fn endless(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    first: &[u8],
    chunk: usize,
    pause: Duration,
    limit: Duration,
) -> Outcome {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let mut head =
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let first = first.to_vec();
    let writer = tokio::spawn(async move {
        let filler = vec![b'A'; chunk];
        let send = |data: Vec<u8>| {
            let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
            framed.extend_from_slice(&data);
            framed.extend_from_slice(b"\r\n");
            framed
        };
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        if !first.is_empty() && wr.write_all(&send(first)).await.is_err() {
            return;
        }
        loop {
            if wr.write_all(&send(filler.clone())).await.is_err() {
                return;
            }
            tokio::time::sleep(pause).await;
        }
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    let read = tokio::time::timeout(limit, async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    let status = if read.is_ok() {
        String::from_utf8_lossy(&got)
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
    } else {
        None
    };
    Outcome {
        status,
        took: started.elapsed(),
    }
}

/// The start of a multipart body: the message part, then the head of the file part.
fn file_head(msg: &Value) -> Vec<u8> {
    let mut b = multipart_ordered(Some(&msg.to_string()), None, true);
    // Without its closing boundary.
    b.truncate(b.len() - format!("--{BOUNDARY}--\r\n").len());
    b.extend_from_slice(
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files[]\"; filename=\"x.bin\"\r\n\r\n")
            .as_bytes(),
    );
    b
}

#[tokio::test]
async fn endless_and_bomb_bodies_end_quickly_with_nothing_kept() {
    let nats = NatsServer::start().await;
    let data = DataDir::new();
    let mut fs = filestore_auth(
        &nats,
        &data,
        &[
            "--max-file-bytes",
            "1048576",
            "--max-image-bytes",
            "262144",
            "--upload-deadline-secs",
            "2",
        ],
    )
    .await;
    let kv = presence(&nats.url()).await;
    hold_name(&kv, ROOM, "Ann", "u-1").await;
    let mut live = Live::room(&nats.url(), ROOM).await;
    let t = token("u-1", None, 600);
    let (hk, hv) = bearer(&t);
    let ct = multipart_type();
    let file_headers = [(hk, hv.as_str()), ("Content-Type", ct.as_str())];
    let image_headers = [(hk, hv.as_str()), ("Content-Type", "application/json")];

    // A body that trickles forever: the deadline answers it.
    let msg = file_message(ROOM, "drip-file", "x.bin", 1);
    let o = endless(
        fs.addr,
        "/files",
        &file_headers,
        &file_head(&msg),
        16,
        Duration::from_millis(50),
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(o.status, Some(408), "a trickling file upload");
    assert!(o.took < Duration::from_secs(6), "{:?}", o.took);
    let img_head = format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":\"imageMessage\",\"params\":{{\"userId\":\"u-1\",\"userName\":\"Ann\",\"roomName\":\"{ROOM}\",\"uuid\":\"drip-img\",\"base64ImgString\":\""
    );
    let o = endless(
        fs.addr,
        "/images",
        &image_headers,
        img_head.as_bytes(),
        16,
        Duration::from_millis(50),
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(o.status, Some(408), "a trickling image upload");
    assert!(o.took < Duration::from_secs(6), "{:?}", o.took);

    // A body that floods forever: the size limit answers it first.
    let msg = file_message(ROOM, "flood-file", "x.bin", 1);
    let o = endless(
        fs.addr,
        "/files",
        &file_headers,
        &file_head(&msg),
        64 * 1024,
        Duration::ZERO,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(o.status, Some(413), "a flooding file upload");
    assert!(o.took < Duration::from_secs(10), "{:?}", o.took);
    let o = endless(
        fs.addr,
        "/images",
        &image_headers,
        img_head.as_bytes(),
        64 * 1024,
        Duration::ZERO,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(o.status, Some(413), "a flooding image upload");

    // Multipart bombs: huge part headers, thousands of parts, a huge preamble.
    let huge_headers = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files[]\"\r\nX-Bomb: {}\r\n\r\nx\r\n--{BOUNDARY}--\r\n",
        "h".repeat(1_000_000)
    );
    let mut many_parts = String::new();
    for i in 0..5000 {
        many_parts.push_str(&format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"p{i}\"\r\n\r\ny\r\n"
        ));
    }
    many_parts.push_str(&format!("--{BOUNDARY}--\r\n"));
    let preamble = format!(
        "{}\r\n{}",
        "p".repeat(1_000_000),
        String::from_utf8_lossy(&multipart(
            Some(&file_message(ROOM, "bomb", "x.bin", 1).to_string()),
            Some(("x.bin", b"x"))
        ))
    );
    let lines = "a: b\r\n".repeat(2000);
    let many_lines = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files[]\"\r\n{lines}\r\nx\r\n--{BOUNDARY}--\r\n"
    );
    for (what, body) in [
        ("huge part headers", huge_headers),
        ("thousands of parts", many_parts),
        ("a huge preamble", preamble),
        ("thousands of header lines", many_lines),
    ] {
        let started = Instant::now();
        let r = post_multipart_with(fs.addr, body.as_bytes(), &[(hk, hv.as_str())]).await;
        assert_eq!(r.status, 413, "{what}: {}", r.text());
        assert_eq!(json_of(&r)["error"]["reason"], json!("too_large"), "{what}");
        assert!(started.elapsed() < Duration::from_secs(5), "{what}");
    }
    let r = post_multipart_with(
        fs.addr,
        format!("--{BOUNDARY}\r\nno colon here\r\n\r\nx\r\n--{BOUNDARY}--\r\n").as_bytes(),
        &[(hk, hv.as_str())],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());

    // Nothing kept, nothing announced, and the service is fine.
    let clean = eventually(WAIT, || async { data.files_under("tmp").is_empty() }).await;
    assert!(clean, "temporary files left: {:?}", data.files_under("tmp"));
    data.assert_empty();
    live.assert_silent(QUIET).await;
    assert_eq!(stream_messages(&nats.url()).await, 0);
    assert_eq!(fs.status("/readyz").await, Some(200));
    assert_eq!(
        fs.metric("natter_filestore_rejects_total{reason=\"deadline\"}")
            .await,
        Some(2.0)
    );
    // Megabytes of headers, preamble and floods never made the process grow with them.
    let pid = fs.proc().pid().expect("filestore pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(peak_kib < 64 * 1024, "peak resident set {peak_kib} KiB");
}

/// Open an upload and leave it hanging after its message part and a little of its file.
async fn hanging_upload(fs: &Service, auth: &str, uuid: &str) -> TcpStream {
    let mut s = TcpStream::connect(fs.addr).await.expect("connect");
    let head = format!(
        "POST /files HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\nContent-Type: {}\r\nContent-Length: 10000000\r\n\r\n",
        fs.addr,
        multipart_type()
    );
    let mut body = head.into_bytes();
    body.extend_from_slice(&file_head(&file_message(ROOM, uuid, "x.bin", 1)));
    body.extend_from_slice(&[b'z'; 1000]);
    s.write_all(&body).await.expect("write");
    s.flush().await.expect("flush");
    s
}

#[tokio::test]
async fn uploads_beyond_the_concurrency_cap_get_503_with_retry_after() {
    let nats = NatsServer::start().await;
    let data = DataDir::new();
    let fs = filestore_auth(&nats, &data, &["--max-concurrent-uploads", "2"]).await;
    let kv = presence(&nats.url()).await;
    hold_name(&kv, ROOM, "Ann", "u-1").await;
    let mut live = Live::room(&nats.url(), ROOM).await;
    let t = token("u-1", None, 600);
    let (hk, hv) = bearer(&t);
    let auth = [(hk, hv.as_str())];

    let held = [
        hanging_upload(&fs, &hv, "hang-1").await,
        hanging_upload(&fs, &hv, "hang-2").await,
    ];
    // Both are being received once a third is turned away (a third that would be refused
    // anyway if it got in: its body is not multipart).
    let busy = eventually(WAIT, || async {
        let r = post_multipart_with(fs.addr, b"not multipart", &auth).await;
        r.status == 503
    })
    .await;
    assert!(busy, "a third concurrent upload must be refused");
    assert_eq!(
        fs.metric("natter_filestore_uploads_in_progress").await,
        Some(2.0)
    );
    let msg = file_message(ROOM, "third", "a.bin", 10);
    let r = post_multipart_with(fs.addr, &file_body(&msg, &bytes(10, 1)), &auth).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(json_of(&r)["error"]["reason"], json!("busy"));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(!data.stored("third"));
    let r = post_image_with(
        fs.addr,
        &image_message(ROOM, "third-img", &b64(&png(100, 1))),
        &auth,
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    // Without a token it is still a 401: strangers learn nothing about the load.
    let r = post_multipart_with(fs.addr, &file_body(&msg, &bytes(10, 1)), &[]).await;
    assert_eq!(r.status, 401);

    // The hanging uploads go away; their permits and temporary files with them.
    drop(held);
    let clean = eventually(WAIT, || async { data.files_under("tmp").is_empty() }).await;
    assert!(clean, "temporary files left: {:?}", data.files_under("tmp"));
    data.assert_empty();
    live.assert_silent(QUIET).await;
    let idle = eventually(WAIT, || async {
        fs.metric("natter_filestore_uploads_in_progress").await == Some(0.0)
    })
    .await;
    assert!(idle, "the permits come back");
    let r = post_multipart_with(fs.addr, &file_body(&msg, &bytes(10, 1)), &auth).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, note) = live.next(WAIT).await.expect("announcement");
    assert_eq!(note["params"]["uuid"], json!("third"));
    assert_eq!(stream_messages(&nats.url()).await, 1);
}
