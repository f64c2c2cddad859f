//! The edge's door against a real process and nats-server: operations only on the ops
//! port, the Origin allow-list (403), sockets per client IP (429, with and without a trusted
//! proxy header), sockets that never join (close 1008), and a client trickling its upgrade
//! headers (dropped, others unaffected).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_testkit::{eventually, http, ChatClient, Event, NatsServer, Service};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every wait here ends within this.
const BOUND: Duration = Duration::from_secs(15);

async fn edge(nats: &NatsServer, extra: &[&str]) -> Service {
    let mut args: Vec<String> = vec![
        "--nats-url".into(),
        nats.url(),
        "--node-name".into(),
        "edge-transport".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Service::start("natter-edge", &args, &[]).await
}

/// An upgrade request to `/chat` with `headers`; the status of the answer, and the
/// connection (kept open, holding the socket when the status is 101).
async fn upgrade(addr: SocketAddr, headers: &[(&str, &str)]) -> (u16, TcpStream) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "GET /chat HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("send upgrade");
    let head = tokio::time::timeout(BOUND, async {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            match s.read_u8().await {
                Ok(b) => head.push(b),
                Err(_) => break,
            }
        }
        head
    })
    .await
    .expect("an answer to the upgrade in time");
    let head = String::from_utf8_lossy(&head);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {head:?}"));
    (status, s)
}

async fn status(addr: SocketAddr, path: &str) -> Option<u16> {
    http::get(addr, path, &[]).await.ok().map(|r| r.status)
}

#[tokio::test]
async fn operations_are_on_the_ops_port_only() {
    let nats = NatsServer::start().await;
    let e = edge(&nats, &[]).await;
    assert_ne!(e.addr, e.ops_addr);
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(status(e.addr, path).await, Some(404), "public {path}");
        assert_eq!(status(e.ops_addr, path).await, Some(200), "ops {path}");
    }
    assert_eq!(
        status(e.ops_addr, "/chat").await,
        Some(404),
        "no /chat on ops"
    );
    // Without an allow-list any origin may upgrade.
    let (code, _s) = upgrade(e.addr, &[("Origin", "https://anywhere.example")]).await;
    assert_eq!(code, 101);
}

#[tokio::test]
async fn origins_outside_the_allow_list_get_403() {
    let nats = NatsServer::start().await;
    let e = edge(
        &nats,
        &[
            "--allowed-origins",
            "https://chat.example.com,http://localhost:8079",
        ],
    )
    .await;
    let (code, _) = upgrade(e.addr, &[("Origin", "https://evil.example.com")]).await;
    assert_eq!(code, 403, "an origin not listed");
    let (code, _) = upgrade(e.addr, &[("Origin", "null")]).await;
    assert_eq!(code, 403, "an opaque origin");
    let (code, _a) = upgrade(e.addr, &[("Origin", "https://chat.example.com")]).await;
    assert_eq!(code, 101, "a listed origin");
    let (code, _b) = upgrade(e.addr, &[("Origin", "http://localhost:8079")]).await;
    assert_eq!(code, 101, "another listed origin");
    let (code, _c) = upgrade(e.addr, &[]).await;
    assert_eq!(code, 101, "no Origin: not a browser");
}

#[tokio::test]
async fn sockets_beyond_the_per_ip_cap_get_429_and_a_closed_one_frees_its_place() {
    let nats = NatsServer::start().await;
    let e = edge(&nats, &["--max-connections-per-ip", "2"]).await;
    let (c1, s1) = upgrade(e.addr, &[]).await;
    let (c2, _s2) = upgrade(e.addr, &[]).await;
    assert_eq!((c1, c2), (101, 101));
    let (c3, _) = upgrade(e.addr, &[]).await;
    assert_eq!(c3, 429, "a third socket from one IP");
    // Without --trusted-proxy-header a forwarded address changes nothing.
    let (c4, _) = upgrade(e.addr, &[("X-Forwarded-For", "203.0.113.7")]).await;
    assert_eq!(c4, 429, "X-Forwarded-For must be ignored when not trusted");

    drop(s1);
    let addr = e.addr;
    let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let freed = eventually(BOUND, || {
        let kept = kept.clone();
        async move {
            let (code, s) = upgrade(addr, &[]).await;
            assert!(code == 101 || code == 429, "{code}");
            // Keep a socket that got in: the cap is full again.
            kept.lock().unwrap().push(s);
            code == 101
        }
    })
    .await;
    assert!(
        freed,
        "a closed socket did not free its place:\n{}",
        e.log()
    );
    let (c5, _) = upgrade(e.addr, &[]).await;
    assert_eq!(c5, 429);
}

#[tokio::test]
async fn with_a_trusted_proxy_header_forwarded_ips_are_counted_apart() {
    let nats = NatsServer::start().await;
    let e = edge(
        &nats,
        &[
            "--max-connections-per-ip",
            "1",
            "--trusted-proxy-header",
            "X-Forwarded-For",
        ],
    )
    .await;
    let xff = |v| [("X-Forwarded-For", v)];
    let (a, _a) = upgrade(e.addr, &xff("198.51.100.1")).await;
    let (b, _b) = upgrade(e.addr, &xff("198.51.100.2")).await;
    assert_eq!((a, b), (101, 101), "two forwarded IPs, one socket each");
    let (again, _) = upgrade(e.addr, &xff("198.51.100.1, 10.0.0.9")).await;
    assert_eq!(again, 429, "the first address is the client");
    // No header: the peer's address (127.0.0.1) is the client.
    let (peer, _p) = upgrade(e.addr, &[]).await;
    assert_eq!(peer, 101);
    let (peer2, _) = upgrade(e.addr, &[]).await;
    assert_eq!(peer2, 429);
}

#[tokio::test]
async fn a_socket_that_joins_no_room_is_closed_with_1008() {
    let nats = NatsServer::start().await;
    let e = edge(&nats, &["--join-timeout-secs", "1"]).await;
    let started = Instant::now();
    let mut idle = ChatClient::connect(&e.ws_url()).await.expect("connect");
    let mut member = ChatClient::connect(&e.ws_url()).await.expect("connect");
    member
        .join("transport room", "u-ann", "Ann", None, false)
        .await
        .expect("join");

    let close = loop {
        match idle.next_event(BOUND).await {
            Some(Event::Close(code, reason)) => break (code, reason),
            Some(Event::Json(_)) | Some(Event::Text(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let elapsed = started.elapsed();
    assert_eq!(close.0, 1008, "{close:?}");
    assert!(close.1.contains("no room joined"), "{close:?}");
    assert!(
        elapsed >= Duration::from_secs(1),
        "closed after {elapsed:?}"
    );

    // The member that joined is still served, well past the timeout.
    let pong = member.call("ping", json!({})).await;
    assert_eq!(pong["result"], json!("pong"), "{pong}");
}

#[tokio::test]
async fn a_client_trickling_its_upgrade_is_dropped_and_others_are_served() {
    let nats = NatsServer::start().await;
    let timeout = Duration::from_millis(1000);
    let e = edge(&nats, &["--header-read-timeout-ms", "1000"]).await;

    let slow = TcpStream::connect(e.addr).await.expect("connect");
    let started = Instant::now();
    let (mut rd, mut wr) = slow.into_split();
    // One byte a second: the upgrade would be complete only after about two minutes.
    let trickle = tokio::spawn(async move {
        let head = "GET /chat HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        for b in head.bytes() {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    // Meanwhile others connect and chat.
    let mut c = ChatClient::connect(&e.ws_url()).await.expect("connect");
    c.join("trickle room", "u-bob", "Bob", None, false)
        .await
        .expect("join");
    assert_eq!(status(e.ops_addr, "/readyz").await, Some(200));

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
    let pong = c.call("ping", json!({})).await;
    assert_eq!(pong["result"], json!("pong"), "{pong}");
}
