//! The filestore's listeners against a real process: the public port serves the REST API
//! and nothing of operations, the operations port serves `/healthz`, `/readyz` and
//! `/metrics`, and a client trickling its headers is dropped while others are served.

use std::time::{Duration, Instant};

use natter_testkit::{http, NatsServer, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every wait here ends within this.
const BOUND: Duration = Duration::from_secs(15);

async fn filestore(nats: &NatsServer, extra: &[&str]) -> (Service, tempfile::TempDir) {
    let data = tempfile::Builder::new()
        .prefix("natter-filestore-transport-")
        .tempdir()
        .expect("temp dir");
    let mut args: Vec<String> = vec![
        "--nats-url".into(),
        nats.url(),
        "--data-dir".into(),
        data.path().display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    (Service::start("natter-filestore", &args, &[]).await, data)
}

async fn status(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    http::get(addr, path, &[]).await.ok().map(|r| r.status)
}

#[tokio::test]
async fn operations_are_on_the_ops_port_only() {
    let nats = NatsServer::start().await;
    let (fs, _data) = filestore(&nats, &[]).await;
    assert_ne!(fs.addr, fs.ops_addr);
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(status(fs.addr, path).await, Some(404), "public {path}");
        assert_eq!(status(fs.ops_addr, path).await, Some(200), "ops {path}");
    }
    // The REST API is on the public port and not on the ops port.
    assert_eq!(status(fs.addr, "/files/no-such-upload").await, Some(404));
    let r = http::request(fs.ops_addr, "POST", "/files", &[], b"")
        .await
        .expect("POST on the ops port");
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_dropped_and_others_are_served() {
    let nats = NatsServer::start().await;
    let timeout = Duration::from_millis(1000);
    let (fs, _data) = filestore(&nats, &["--header-read-timeout-ms", "1000"]).await;

    let slow = tokio::net::TcpStream::connect(fs.addr).await.unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = slow.into_split();
    // One byte a second: the headers would be complete only after about a minute.
    let trickle = tokio::spawn(async move {
        let head = format!(
            "GET /files/x HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(30)
        );
        for b in head.bytes() {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    // Other clients are served meanwhile, on both ports.
    assert_eq!(status(fs.addr, "/files/no-such-upload").await, Some(404));
    assert_eq!(status(fs.ops_addr, "/readyz").await, Some(200));

    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(BOUND, rd.read(&mut buf)).await;
    let elapsed = started.elapsed();
    trickle.abort();
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the trickling client was not disconnected: {closed:?}"
    );
    assert!(
        elapsed >= timeout && elapsed < Duration::from_secs(8),
        "disconnected after {elapsed:?} with a {timeout:?} header-read timeout"
    );
    assert_eq!(status(fs.addr, "/files/no-such-upload").await, Some(404));
}
