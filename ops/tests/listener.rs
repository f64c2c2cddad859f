//! The hardened listener against real sockets: slowloris clients are dropped, connections
//! beyond the permits wait, upgrades and the peer address work, stalled connections are
//! closed, and shutdown lets requests in flight finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use natter_ops::listener::{bind, HttpLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

/// Every wait in these tests ends within this.
const BOUND: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Slow {
    entered: Notify,
    release: Notify,
}

fn app(slow: Arc<Slow>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        )
        .route(
            "/body",
            post(|body: Body| async move {
                match body.collect().await {
                    Ok(b) => (StatusCode::OK, b.to_bytes().len().to_string()),
                    Err(_) => (StatusCode::BAD_REQUEST, "body failed".to_owned()),
                }
            }),
        )
        .route("/up", get(upgrade_echo))
        .route(
            "/slow",
            get(|State(slow): State<Arc<Slow>>| async move {
                slow.entered.notify_one();
                slow.release.notified().await;
                "done"
            }),
        )
        .with_state(slow)
}

/// Answers 101 and then echoes what the client sends, after a `hello`.
async fn upgrade_echo(mut req: Request) -> Response {
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(up) = on.await else { return };
        let mut io = TokioIo::new(up);
        if io.write_all(b"hello").await.is_err() {
            return;
        }
        let mut buf = [0u8; 64];
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(Body::empty())
        .map(IntoResponse::into_response)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

struct Server {
    addr: SocketAddr,
    slow: Arc<Slow>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

async fn serve(limits: HttpLimits) -> Server {
    let slow = Arc::new(Slow::default());
    let bound = bind("public", SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = bound.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(bound.serve(
        app(slow.clone()),
        limits,
        async move {
            let _ = stopped.await;
        },
        BOUND,
    ));
    Server {
        addr,
        slow,
        stop: Some(stop),
        task,
    }
}

fn limits(header_read_timeout: Duration, max_connections: usize) -> HttpLimits {
    HttpLimits {
        header_read_timeout,
        max_connections,
        idle_timeout: Duration::from_secs(60),
    }
}

/// Read one response (headers and a `Content-Length` body, nothing beyond); `None` when
/// the connection closes first.
async fn read_response(s: &mut TcpStream) -> Option<(u16, String)> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.ok()?);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.ok()?;
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn get_on(s: &mut TcpStream, path: &str) -> Option<(u16, String)> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .ok()?;
    tokio::time::timeout(BOUND, read_response(s))
        .await
        .ok()
        .flatten()
}

async fn fetch(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    get_on(&mut s, path).await
}

/// Wait (bounded) until the peer closes `s`: true when it did, false when it stayed open.
async fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn a_slowloris_client_is_disconnected_and_others_are_served() {
    let timeout = Duration::from_millis(800);
    let srv = serve(limits(timeout, 64)).await;
    let slow = TcpStream::connect(srv.addr).await.unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = slow.into_split();
    // Headers trickled one byte at a time, 100 ms apart: complete only after 6 s.
    let trickle = tokio::spawn(async move {
        let head = format!(
            "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(30)
        );
        for b in head.bytes() {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // Meanwhile a normal client is served.
    assert_eq!(fetch(srv.addr, "/healthz").await, Some((200, "ok".into())));
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(BOUND, rd.read(&mut buf)).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the slow client was not disconnected: {closed:?}"
    );
    assert!(
        elapsed >= timeout && elapsed < Duration::from_secs(5),
        "disconnected after {elapsed:?}, timeout {timeout:?}"
    );
    trickle.abort();
    assert_eq!(fetch(srv.addr, "/healthz").await, Some((200, "ok".into())));
}

#[tokio::test]
async fn connections_beyond_the_permits_wait_until_one_closes() {
    let srv = serve(limits(Duration::from_secs(30), 2)).await;
    // Two kept-alive connections, each served once: they hold both permits.
    let mut c1 = TcpStream::connect(srv.addr).await.unwrap();
    let mut c2 = TcpStream::connect(srv.addr).await.unwrap();
    assert_eq!(get_on(&mut c1, "/healthz").await.map(|r| r.0), Some(200));
    assert_eq!(get_on(&mut c2, "/healthz").await.map(|r| r.0), Some(200));
    // A third connects (the kernel's backlog takes it) but is not served...
    let mut c3 = TcpStream::connect(srv.addr).await.unwrap();
    c3.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(700), read_response(&mut c3)).await;
    assert!(early.is_err(), "served beyond the permits: {early:?}");
    // ...until one of the first two closes.
    drop(c1);
    let late = tokio::time::timeout(BOUND, read_response(&mut c3)).await;
    assert_eq!(late.ok().flatten(), Some((200, "ok".into())));
    // The second is still served on its connection.
    assert_eq!(get_on(&mut c2, "/healthz").await.map(|r| r.0), Some(200));
}

#[tokio::test]
async fn handlers_see_the_peer_and_an_upgraded_connection_leaves_its_permit() {
    let srv = serve(limits(Duration::from_secs(30), 1)).await;
    let mut up = TcpStream::connect(srv.addr).await.unwrap();
    up.write_all(b"GET /up HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let r = tokio::time::timeout(BOUND, read_response(&mut up)).await;
    assert_eq!(r.ok().flatten().map(|r| r.0), Some(101));
    let mut hello = [0u8; 5];
    tokio::time::timeout(BOUND, up.read_exact(&mut hello))
        .await
        .expect("hello in time")
        .unwrap();
    assert_eq!(&hello, b"hello");

    // With one permit, a plain request is served while the upgraded connection is open.
    let mut plain = TcpStream::connect(srv.addr).await.unwrap();
    let local = plain.local_addr().unwrap();
    assert_eq!(
        get_on(&mut plain, "/peer").await,
        Some((200, local.to_string()))
    );
    drop(plain);

    up.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(BOUND, up.read_exact(&mut echo))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&echo, b"ping");
}

#[tokio::test]
async fn a_stalled_body_and_an_idle_kept_alive_connection_are_closed() {
    let srv = serve(HttpLimits {
        header_read_timeout: Duration::from_millis(600),
        max_connections: 8,
        idle_timeout: Duration::from_millis(600),
    })
    .await;
    // A body that stops after 10 of its 100 bytes.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    assert!(closed_by_peer(&mut s).await, "stalled body kept open");

    // A whole body is answered.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789")
        .await
        .unwrap();
    let r = tokio::time::timeout(BOUND, read_response(&mut s)).await;
    assert_eq!(r.ok().flatten(), Some((200, "10".into())));
    // Then, kept alive without a next request, the connection is closed.
    assert!(closed_by_peer(&mut s).await, "idle keep-alive kept open");
}

#[tokio::test]
async fn shutdown_refuses_new_connections_and_lets_requests_in_flight_finish() {
    let mut srv = serve(limits(Duration::from_secs(30), 8)).await;
    let mut busy = TcpStream::connect(srv.addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(BOUND, srv.slow.entered.notified())
        .await
        .expect("the slow handler runs");
    // An idle kept-alive connection is closed by the shutdown.
    let mut idle = TcpStream::connect(srv.addr).await.unwrap();
    assert_eq!(get_on(&mut idle, "/healthz").await.map(|r| r.0), Some(200));

    let _ = srv.stop.take().map(|s| s.send(()));
    assert!(closed_by_peer(&mut idle).await, "idle connection kept open");
    let refused = async {
        while TcpStream::connect(srv.addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert!(
        tokio::time::timeout(BOUND, refused).await.is_ok(),
        "still accepting after shutdown"
    );
    assert!(!srv.task.is_finished(), "returned with a request in flight");

    srv.slow.release.notify_one();
    let r = tokio::time::timeout(BOUND, read_response(&mut busy)).await;
    assert_eq!(r.ok().flatten(), Some((200, "done".into())));
    assert!(
        tokio::time::timeout(BOUND, &mut srv.task).await.is_ok(),
        "serve did not return after the last request"
    );
}
