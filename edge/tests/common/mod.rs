//! Shared scenario helpers for the edge's integration tests: a nats-server and N edges as
//! real processes, and clients that join rooms.
#![allow(dead_code)]

use std::collections::HashSet;
use std::time::Duration;

use natter_testkit::{ChatClient, Event, NatsServer, Service};
use serde_json::Value;

pub const WAIT: Duration = Duration::from_secs(20);

pub struct Stack {
    pub nats: NatsServer,
    pub edges: Vec<Service>,
}

/// The flags every test edge gets, plus `extra`.
pub fn edge_args(nats: &NatsServer, i: usize, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--nats-url".into(),
        nats.url(),
        "--node-name".into(),
        format!("edge-{i}"),
        "--tail-check-secs".into(),
        "1".into(),
        "--drain-timeout-secs".into(),
        "4".into(),
    ];
    // Rooms check presence every second, unless the test says otherwise.
    if !extra.contains(&"--presence-check-secs") {
        args.extend(["--presence-check-secs".to_string(), "1".to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

pub async fn stack(edges: usize, extra: &[&str]) -> Stack {
    let nats = NatsServer::start().await;
    let mut es = Vec::new();
    for i in 0..edges {
        es.push(Service::start("natter-edge", &edge_args(&nats, i, extra), &[]).await);
    }
    Stack { nats, edges: es }
}

/// Connect to `edge` and join `room`; returns the client and its welcome.
pub async fn joined(edge: &Service, room: &str, user_id: &str, name: &str) -> (ChatClient, Value) {
    let mut c = ChatClient::connect(&edge.ws_url()).await.expect("connect");
    let w = c
        .join(room, user_id, name, None, false)
        .await
        .expect("join");
    (c, w)
}

/// The uuids of room messages, in order.
pub fn uuids(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["params"]["uuid"].as_str().unwrap_or_default().to_owned())
        .collect()
}

pub fn ids(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(natter_testkit::client::msg_id).collect()
}

/// Assert: no uuid twice, and `_id`s strictly ascending.
pub fn assert_once_in_order(msgs: &[Value]) {
    let us = uuids(msgs);
    let set: HashSet<_> = us.iter().collect();
    assert_eq!(set.len(), us.len(), "a message was delivered twice: {us:?}");
    let is = ids(msgs);
    assert!(
        is.windows(2).all(|w| w[0] < w[1]),
        "_ids not ascending: {is:?}"
    );
}

/// The close code the server sends next, skipping other frames; `None` when the connection
/// ended without a close frame or nothing came within [`WAIT`] (so a test asserting a code
/// fails on either).
pub async fn close_code(c: &mut ChatClient) -> Option<u16> {
    for _ in 0..10_000 {
        match c.next_event(WAIT).await? {
            Event::Close(code, _) => return Some(code),
            Event::Gone(_) => return None,
            Event::Json(_) | Event::Text(_) => continue,
        }
    }
    None
}

/// An HS256 secret for edges started with `--auth-hs256-secret` (at least 32 bytes).
pub const SECRET: &str = "natter-edge-tests-hs256-secret-0123456789";

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A token signed with [`SECRET`] for `sub`, expiring `ttl_secs` from now (negative:
/// already expired), restricted to `name` and `rooms` when given.
pub fn token(sub: &str, name: Option<&str>, rooms: Option<&[&str]>, ttl_secs: i64) -> String {
    token_signed(SECRET, sub, name, rooms, ttl_secs)
}

/// [`token`] signed with another secret.
pub fn token_signed(
    secret: &str,
    sub: &str,
    name: Option<&str>,
    rooms: Option<&[&str]>,
    ttl_secs: i64,
) -> String {
    let claims = natter_auth::Claims {
        sub: sub.into(),
        exp: now_secs().saturating_add_signed(ttl_secs),
        nbf: None,
        name: name.map(Into::into),
        rooms: rooms.map(|r| r.iter().map(|s| s.to_string()).collect()),
    };
    natter_auth::mint_hs256(secret.as_bytes(), &claims).expect("mint token")
}

/// `joinRoom` (or `reconnect`) with `params.token`; the response, and on success the
/// `welcome` that follows it.
pub async fn join_with_token(
    c: &mut ChatClient,
    room: &str,
    user_id: &str,
    name: &str,
    token: Option<&str>,
    reconnect: bool,
) -> Result<Value, Value> {
    let mut params = serde_json::json!({"userId": user_id, "userName": name, "roomName": room});
    if let Some(t) = token {
        params["token"] = Value::from(t);
    }
    let resp = c
        .call(if reconnect { "reconnect" } else { "joinRoom" }, params)
        .await;
    if resp.get("error").is_some() {
        return Err(resp);
    }
    assert_eq!(resp["result"], "OK", "join answered {resp}");
    let welcome = c
        .next_matching(WAIT, |v| v["method"] == "welcome")
        .await
        .expect("welcome after join");
    Ok(welcome)
}

/// A WebSocket whose upgrade request carries extra headers (the testkit client sends
/// none), e.g. `Authorization: Bearer`: enough to make calls and read what comes back.
pub struct HeaderClient {
    ws: fastwebsockets::FragmentCollector<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>,
    next_id: u64,
}

struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::task::spawn(fut);
    }
}

impl HeaderClient {
    /// Connect to an edge's `/chat` with `headers` on the upgrade request.
    pub async fn connect(edge: &Service, headers: &[(&str, &str)]) -> HeaderClient {
        let stream = tokio::net::TcpStream::connect(edge.addr)
            .await
            .expect("connect");
        let mut req = hyper::Request::builder()
            .method("GET")
            .uri("/chat")
            .header("Host", edge.addr.to_string())
            .header(hyper::header::UPGRADE, "websocket")
            .header(hyper::header::CONNECTION, "upgrade")
            .header(
                "Sec-WebSocket-Key",
                fastwebsockets::handshake::generate_key(),
            )
            .header("Sec-WebSocket-Version", "13");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(axum::body::Body::empty()).expect("request");
        let (ws, _) = fastwebsockets::handshake::client(&SpawnExecutor, req, stream)
            .await
            .expect("handshake");
        HeaderClient {
            ws: fastwebsockets::FragmentCollector::new(ws),
            next_id: 1,
        }
    }

    /// The next JSON frame; panics on close or after [`WAIT`]. (The read is never resumed
    /// after a timeout: the test fails there.)
    pub async fn next_json(&mut self) -> Value {
        let frame = tokio::time::timeout(WAIT, self.ws.read_frame())
            .await
            .expect("a frame within WAIT")
            .expect("socket open");
        match frame.opcode {
            fastwebsockets::OpCode::Text => {
                serde_json::from_slice(&frame.payload).expect("a JSON frame")
            }
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Send a request and return its response; other frames before it are dropped.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let req = serde_json::json!({"jsonrpc":"2.0","method":method,"params":params,"id":id});
        self.ws
            .write_frame(fastwebsockets::Frame::text(fastwebsockets::Payload::Owned(
                req.to_string().into_bytes(),
            )))
            .await
            .expect("send");
        loop {
            let v = self.next_json().await;
            if v["id"] == id && (v.get("result").is_some() || v.get("error").is_some()) {
                return v;
            }
        }
    }

    /// Skip frames until one satisfies `pred`.
    pub async fn next_matching(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.next_json().await;
            if pred(&v) {
                return v;
            }
        }
    }
}
