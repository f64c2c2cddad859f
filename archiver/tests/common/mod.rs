//! Helpers shared by the archiver's integration tests: a real nats-server and Postgres, the
//! archiver binary, publishing stored-shape room messages, and reading the archive back.
#![allow(dead_code)]

use std::time::Duration;

use async_nats::jetstream;
use natter_bus::subjects;
use natter_protocol::token;
use natter_testkit::{NatsServer, Postgres, Service};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row as _;

/// One message as a test published it.
#[derive(Debug, Clone)]
pub struct Sent {
    pub seq: u64,
    pub room: String,
    pub uuid: String,
    pub method: &'static str,
    pub user_id: String,
    pub user_name: String,
    pub payload: String,
}

pub struct Stack {
    pub nats: NatsServer,
    pub pg: Postgres,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
}

impl Stack {
    pub async fn start() -> Stack {
        Self::start_with(natter_bus::StreamArgs::default()).await
    }

    pub async fn start_with(args: natter_bus::StreamArgs) -> Stack {
        let nats = NatsServer::start().await;
        let pg = Postgres::start().await;
        let client = async_nats::connect(nats.url())
            .await
            .expect("connect to nats");
        let js = jetstream::new(client.clone());
        natter_bus::ensure_chat_stream(&js, &args)
            .await
            .expect("ensure CHAT");
        Stack {
            nats,
            pg,
            client,
            js,
        }
    }

    /// The archiver's command line for this stack, plus `extra`.
    pub fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut a = vec![
            "--nats-url".to_string(),
            self.nats.url(),
            "--database-url".to_string(),
            self.pg.url(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    pub async fn archiver(&self, extra: &[&str]) -> Service {
        Service::start("natter-archiver", &self.args(extra), &[]).await
    }

    pub async fn db(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&self.pg.url())
            .await
            .expect("connect to postgres")
    }
}

/// The stored shape of a room message (no `_id`).
pub fn stored(
    method: &str,
    room: &str,
    uuid: &str,
    user_id: &str,
    user_name: &str,
    text: &str,
    id: u64,
) -> String {
    serde_json::json!({
        "jsonrpc": "2.0",
        "method": method,
        "params": {
            "userId": user_id,
            "userName": user_name,
            "roomName": room,
            "text": text,
            "ack": true,
            "uuid": uuid,
            "date": 1_700_000_000_000u64 + id,
            "ts": "2026-11-25T02:00:00.123Z"
        },
        "id": id
    })
    .to_string()
}

/// Publish raw `payload` on `subject` with `msg_id` (if any); the stream sequence.
pub async fn publish_raw(
    js: &jetstream::Context,
    subject: String,
    msg_id: Option<String>,
    payload: String,
) -> u64 {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(id) = msg_id {
        headers.insert("Nats-Msg-Id", id.as_str());
    }
    let ack = js
        .publish_with_headers(subject, headers, payload.into())
        .await
        .expect("publish")
        .await
        .expect("publish ack");
    ack.sequence
}

/// Publish `count` messages round-robin over `rooms`, pipelined, in the stored shape with
/// `Nats-Msg-Id = msg_id(token, uuid)`. Returns them with their stream sequences.
pub async fn publish_many(js: &jetstream::Context, rooms: &[&str], count: usize) -> Vec<Sent> {
    const METHODS: [&str; 3] = ["textMessage", "imageMessage", "fileMessage"];
    let mut sent = Vec::with_capacity(count);
    let mut pending = Vec::new();
    for i in 0..count {
        let room = rooms[i % rooms.len()];
        let uuid = uuid::Uuid::new_v4().to_string();
        let method = METHODS[i % METHODS.len()];
        let user_id = format!("u{}", i % 7);
        let user_name = format!("User {}", i % 7);
        let payload = stored(
            method,
            room,
            &uuid,
            &user_id,
            &user_name,
            &format!("message {i}"),
            i as u64,
        );
        let tok = token::encode(room);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", subjects::msg_id(&tok, &uuid).as_str());
        let fut = js
            .publish_with_headers(subjects::room(&tok), headers, payload.clone().into())
            .await
            .expect("publish");
        pending.push(fut);
        sent.push(Sent {
            seq: 0,
            room: room.to_string(),
            uuid,
            method,
            user_id,
            user_name,
            payload,
        });
        if pending.len() >= 256 || i + 1 == count {
            let base = sent.len() - pending.len();
            for (k, f) in pending.drain(..).enumerate() {
                sent[base + k].seq = f.await.expect("publish ack").sequence;
            }
        }
    }
    sent
}

/// `publish_many` in chunks of `chunk` with `pause` between them, so that publishing lasts
/// about `count / chunk * pause` whatever the machine's speed.
pub async fn publish_paced(
    js: &jetstream::Context,
    rooms: &[&str],
    count: usize,
    chunk: usize,
    pause: Duration,
) -> Vec<Sent> {
    let mut sent = Vec::with_capacity(count);
    while sent.len() < count {
        let n = chunk.min(count - sent.len());
        sent.extend(publish_many(js, rooms, n).await);
        tokio::time::sleep(pause).await;
    }
    sent
}

pub async fn count(db: &PgPool) -> i64 {
    sqlx::query("SELECT count(*) AS n FROM messages")
        .fetch_one(db)
        .await
        .map(|r| r.get::<i64, _>("n"))
        .unwrap_or(-1)
}

/// Every archived `_id`, ascending.
pub async fn ids(db: &PgPool) -> Vec<u64> {
    sqlx::query("SELECT _id FROM messages ORDER BY _id")
        .fetch_all(db)
        .await
        .expect("select ids")
        .into_iter()
        .map(|r| r.get::<i64, _>("_id") as u64)
        .collect()
}

/// Wait until the archive holds `n` rows (bounded), returning the count seen last.
pub async fn wait_count(db: &PgPool, n: i64, timeout: Duration) -> i64 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let c = count(db).await;
        if c >= n || tokio::time::Instant::now() >= deadline {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until `metric` of `svc` equals `want` (bounded); the last value seen.
pub async fn wait_metric(svc: &Service, metric: &str, want: f64, timeout: Duration) -> Option<f64> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let v = svc.metric(metric).await;
        if v == Some(want) || tokio::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Assert the archive holds exactly the messages of `sent`, once each, with the right fields.
pub async fn assert_archived_exactly(db: &PgPool, sent: &[Sent]) {
    let mut want: Vec<u64> = sent.iter().map(|s| s.seq).collect();
    want.sort_unstable();
    let got = ids(db).await;
    assert_eq!(got.len(), want.len(), "row count");
    assert_eq!(got, want, "archived _ids");
    let rows = sqlx::query(
        "SELECT _id, room, uuid, kind, user_id, user_name, msg::text AS msg, client_date, \
         server_time IS NOT NULL AS has_time FROM messages",
    )
    .fetch_all(db)
    .await
    .expect("select rows");
    let by_seq: std::collections::HashMap<u64, &Sent> = sent.iter().map(|s| (s.seq, s)).collect();
    for r in rows {
        let seq = r.get::<i64, _>("_id") as u64;
        let s = by_seq[&seq];
        assert_eq!(r.get::<String, _>("room"), s.room, "room of {seq}");
        assert_eq!(
            r.get::<Option<String>, _>("uuid").as_deref(),
            Some(s.uuid.as_str())
        );
        let kind = match s.method {
            "textMessage" => "text",
            "imageMessage" => "image",
            "fileMessage" => "file",
            _ => "system",
        };
        assert_eq!(r.get::<String, _>("kind"), kind);
        assert_eq!(
            r.get::<Option<String>, _>("user_id").as_deref(),
            Some(s.user_id.as_str())
        );
        assert_eq!(
            r.get::<Option<String>, _>("user_name").as_deref(),
            Some(s.user_name.as_str())
        );
        assert_eq!(
            r.get::<String, _>("msg"),
            s.payload,
            "msg of {seq} is the stored object verbatim"
        );
        assert!(r.get::<Option<String>, _>("client_date").is_some());
        assert!(r.get::<bool, _>("has_time"));
    }
}

/// Ask the history service; the reply, within 10 s.
pub async fn history(
    client: &async_nats::Client,
    room: &str,
    after: Option<u64>,
    before: Option<u64>,
    limit: u32,
) -> natter_bus::history::HistoryReply {
    let req = natter_bus::history::HistoryRequest {
        after,
        before,
        limit,
    };
    let body = serde_json::to_vec(&req).expect("encode request");
    history_raw(client, &token::encode(room), body).await
}

pub async fn history_raw(
    client: &async_nats::Client,
    tok: &str,
    body: Vec<u8>,
) -> natter_bus::history::HistoryReply {
    let msg = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(subjects::history(tok), body.into()),
    )
    .await
    .expect("history reply within 10 s")
    .expect("history request");
    serde_json::from_slice(&msg.payload).expect("history reply is JSON")
}
