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
