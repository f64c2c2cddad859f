//! Shared helpers for the filestore's integration tests: a nats-server and filestore
//! replicas as real processes on a shared data directory, hand-built request bodies, and a
//! listener on the room's live subject to see what was announced.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use futures_util::StreamExt;
use natter_testkit::http::{self, Response};
use natter_testkit::{NatsServer, Service};
use serde_json::{json, Value};

pub const WAIT: Duration = Duration::from_secs(20);

/// A data directory shared by the replicas of one test.
pub struct DataDir {
    pub dir: tempfile::TempDir,
}

impl DataDir {
    pub fn new() -> DataDir {
        DataDir {
            dir: tempfile::Builder::new()
                .prefix("natter-filestore-data-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Every regular file under `sub` (recursively), e.g. `tmp`, `files`, `images`.
    pub fn files_under(&self, sub: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.path().join(sub), &mut out);
        out.retain(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".probe-"))
        });
        out
    }

    /// Nothing stored and nothing left half-written.
    pub fn assert_empty(&self) {
        for sub in ["tmp", "files", "images"] {
            let f = self.files_under(sub);
            assert!(f.is_empty(), "{sub}/ should be empty: {f:?}");
        }
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Start a filestore on `nats` storing into `data`, with extra flags.
pub async fn filestore(nats: &NatsServer, data: &DataDir, extra: &[&str]) -> Service {
    let mut args: Vec<String> = vec![
        "--nats-url".into(),
        nats.url(),
        "--data-dir".into(),
        data.path().display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Service::start("natter-filestore", &args, &[]).await
}

/// A PNG-looking image of `len` bytes (valid signature, deterministic filler).
pub fn png(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    v.extend(bytes(len.saturating_sub(8), seed));
    v.truncate(len);
    v
}

/// `len` deterministic pseudo-random bytes.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// FNV-1a 64 of `b`: a checksum to compare uploads and downloads by.
pub fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The params every message needs.
pub fn params(room: &str, uuid: &str) -> Value {
    json!({"userId": "u-1", "userName": "Ann", "roomName": room, "uuid": uuid,
           "date": 1_700_000_000_000u64, "ack": false})
}

/// An `imageMessage` request object.
pub fn image_message(room: &str, uuid: &str, base64: &str) -> Value {
    let mut p = params(room, uuid);
    p["base64ImgString"] = json!(base64);
    json!({"jsonrpc": "2.0", "method": "imageMessage", "params": p, "id": 11})
}

/// A `fileMessage` request object.
pub fn file_message(room: &str, uuid: &str, file_name: &str, size: usize) -> Value {
    let mut p = params(room, uuid);
    p["fileName"] = json!(file_name);
    p["fileSize"] = json!(size);
    p["fileType"] = json!("application/octet-stream");
    json!({"jsonrpc": "2.0", "method": "fileMessage", "params": p, "id": 12})
}

pub const BOUNDARY: &str = "----natterTestBoundary7MA4YWxkTrZu0gW";

/// A `multipart/form-data` body with an optional `message` part and an optional file part
/// (`files[]`, with the given part file name).
pub fn multipart(message: Option<&str>, file: Option<(&str, &[u8])>) -> Vec<u8> {
    multipart_ordered(message, file, false)
}

/// Like [`multipart`], with the `message` part first when `message_first`.
pub fn multipart_ordered(
    message: Option<&str>,
    file: Option<(&str, &[u8])>,
    message_first: bool,
) -> Vec<u8> {
    let mut b = Vec::new();
    let message_part = |b: &mut Vec<u8>| {
        if let Some(m) = message {
            b.extend_from_slice(
                format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\n")
                    .as_bytes(),
            );
            b.extend_from_slice(m.as_bytes());
            b.extend_from_slice(b"\r\n");
        }
    };
    if message_first {
        message_part(&mut b);
    }
    if let Some((name, data)) = file {
        b.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files[]\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
    }
    if !message_first {
        message_part(&mut b);
    }
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    b
}

pub fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

pub async fn post_image(addr: SocketAddr, msg: &Value) -> Response {
    http::request(
        addr,
        "POST",
        "/images",
        &[("Content-Type", "application/json")],
        msg.to_string().as_bytes(),
    )
    .await
    .expect("POST /images")
}

pub async fn post_file(addr: SocketAddr, msg: &Value, name: &str, data: &[u8]) -> Response {
    let body = multipart(Some(&msg.to_string()), Some((name, data)));
    post_multipart(addr, &body).await
}

pub async fn post_multipart(addr: SocketAddr, body: &[u8]) -> Response {
    http::request(
        addr,
        "POST",
        "/files",
        &[("Content-Type", &multipart_type())],
        body,
    )
    .await
    .expect("POST /files")
}

pub fn json_of(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

/// A subscriber to what the CHAT stream republishes for a room.
pub struct Live {
    pub client: async_nats::Client,
    sub: async_nats::Subscriber,
}

impl Live {
    pub async fn room(nats_url: &str, room: &str) -> Live {
        let client = async_nats::connect(nats_url)
            .await
            .expect("connect to NATS");
        let subject = natter_bus::subjects::live(&natter_protocol::token::encode(room));
        let sub = client.subscribe(subject).await.expect("subscribe");
        client.flush().await.expect("flush");
        Live { client, sub }
    }

    /// The next announcement: its `Nats-Sequence` and stored JSON, within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<(u64, Value)> {
        let msg = tokio::time::timeout(timeout, self.sub.next())
            .await
            .ok()??;
        let seq = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(natter_bus::subjects::HDR_SEQUENCE))
            .and_then(|v| v.as_str().parse().ok())
            .expect("Nats-Sequence header");
        let v: Value = serde_json::from_slice(&msg.payload).expect("stored message is JSON");
        Some((seq, v))
    }
}

/// Messages in the CHAT stream.
pub async fn stream_messages(nats_url: &str) -> u64 {
    let client = async_nats::connect(nats_url)
        .await
        .expect("connect to NATS");
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(natter_bus::subjects::STREAM)
        .await
        .expect("CHAT stream");
    stream.get_info().await.expect("stream info").state.messages
}

/// The HS256 secret the authenticated filestores of the tests trust.
pub const SECRET: &str = "filestore-tests-secret-at-least-32-bytes-long";

/// Start a filestore with `--auth required` (HS256 with [`SECRET`]) and extra flags.
pub async fn filestore_auth(nats: &NatsServer, data: &DataDir, extra: &[&str]) -> Service {
    let mut args = vec!["--auth", "required", "--auth-hs256-secret", SECRET];
    args.extend_from_slice(extra);
    filestore(nats, data, &args).await
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A token for `sub`, expiring `exp_in_secs` from now (negative: expired), limited to
/// `rooms` when given.
pub fn token(sub: &str, rooms: Option<&[&str]>, exp_in_secs: i64) -> String {
    let claims = natter_auth::Claims {
        sub: sub.to_owned(),
        exp: (unix_now() + exp_in_secs).max(0) as u64,
        nbf: None,
        name: None,
        rooms: rooms.map(|r| r.iter().map(|s| s.to_string()).collect()),
    };
    natter_auth::mint_hs256(SECRET.as_bytes(), &claims).expect("mint a token")
}

/// `Authorization: Bearer <token>`.
pub fn bearer(token: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {token}"))
}

/// The presence bucket, as the edges hold it, with a long TTL so that names held by a test
/// outlive it.
pub async fn presence(nats_url: &str) -> async_nats::jetstream::kv::Store {
    let client = async_nats::connect(nats_url)
        .await
        .expect("connect to NATS");
    let js = async_nats::jetstream::new(client);
    let args = natter_bus::StreamArgs {
        presence_ttl_secs: 3600,
        ..natter_bus::StreamArgs::default()
    };
    natter_bus::ensure_presence(&js, &args)
        .await
        .expect("presence bucket")
}

/// Make `user_id` hold `user_name` in `room`, as an edge does when it joins.
pub async fn hold_name(
    kv: &async_nats::jetstream::kv::Store,
    room: &str,
    user_name: &str,
    user_id: &str,
) {
    let key = natter_bus::subjects::presence_owner_key(
        &natter_protocol::token::encode(room),
        &natter_protocol::token::encode(user_name),
    );
    let owner = serde_json::to_vec(&natter_bus::Owner {
        user_id: user_id.to_owned(),
        user_name: user_name.to_owned(),
    })
    .expect("owner JSON");
    kv.put(key, owner.into()).await.expect("hold the name");
}

/// `POST /images` with extra headers.
pub async fn post_image_with(addr: SocketAddr, msg: &Value, headers: &[(&str, &str)]) -> Response {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    http::request(addr, "POST", "/images", &h, msg.to_string().as_bytes())
        .await
        .expect("POST /images")
}

/// `POST /files` of a multipart `body` with extra headers.
pub async fn post_multipart_with(
    addr: SocketAddr,
    body: &[u8],
    headers: &[(&str, &str)],
) -> Response {
    let ct = multipart_type();
    let mut h = vec![("Content-Type", ct.as_str())];
    h.extend_from_slice(headers);
    http::request(addr, "POST", "/files", &h, body)
        .await
        .expect("POST /files")
}

impl DataDir {
    /// Whether a record or blob of `uuid` is stored.
    pub fn stored(&self, uuid: &str) -> bool {
        let key: String = uuid.bytes().map(|b| format!("{b:02x}")).collect();
        ["files", "images"].iter().any(|sub| {
            self.files_under(sub).iter().any(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{key}.")))
            })
        })
    }

    /// Whether anything of `uuid` is stored, or any upload left a temporary file.
    pub fn holds(&self, uuid: &str) -> bool {
        self.stored(uuid) || !self.files_under("tmp").is_empty()
    }
}

impl Live {
    /// Nothing announced within `quiet`.
    pub async fn assert_silent(&mut self, quiet: Duration) {
        if let Some((seq, v)) = self.next(quiet).await {
            panic!("unexpected announcement {seq}: {v}");
        }
    }
}
