//! Shared helpers of the bots scenario tests: a natter-bots process (REST port and
//! operations port), its REST calls and metrics, and a client's view of room messages.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use natter_testkit::{
    eventually, free_port, http, ChatClient, Event, NatsServer, Proc, Service, WAIT,
};
use serde_json::Value;

/// A running natter-bots.
pub struct Bots {
    pub addr: SocketAddr,
    pub ops: SocketAddr,
    pub proc: Proc,
    _dir: tempfile::TempDir,
}

impl Bots {
    /// Start natter-bots against `nats` with `extra` flags; waits until ready.
    pub async fn start(nats: &NatsServer, extra: &[&str]) -> Bots {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let ops = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = tempfile::Builder::new()
            .prefix("natter-bots-")
            .tempdir()
            .expect("temp dir");
        let mut args = vec![
            "--listen".to_string(),
            addr.to_string(),
            "--ops-listen".into(),
            ops.to_string(),
            "--nats-url".into(),
            nats.url(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::spawn(
            &format!("natter-bots-{}", addr.port()),
            &natter_testkit::bin_path("natter-bots"),
            &args,
            &[("RUST_LOG".to_string(), "info,natter_bots=debug".to_string())],
            &dir.path().join("service.log"),
        )
        .expect("spawn natter-bots");
        let b = Bots {
            addr,
            ops,
            proc,
            _dir: dir,
        };
        let ready = eventually(WAIT, || async move {
            matches!(http::get(ops, "/readyz", &[]).await, Ok(r) if r.status == 200)
        })
        .await;
        assert!(ready, "natter-bots not ready:\n{}", b.proc.log());
        b
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Value) {
        let r = http::request(self.addr, method, path, headers, body)
            .await
            .expect("bots API answers");
        let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r.status, v)
    }

    /// `PUT /rooms/{room}/bots/{name}` with `script`; the status and body.
    pub async fn install(&self, room: &str, name: &str, script: &str) -> (u16, Value) {
        self.call("PUT", &bot_path(room, name), &[], script.as_bytes())
            .await
    }

    /// Install, asserting 201.
    pub async fn installed(&self, room: &str, name: &str, script: &str) {
        let (status, body) = self.install(room, name, script).await;
        assert_eq!(status, 201, "install {name}: {body}");
    }

    /// `GET /rooms/{room}/bots`: the `bots` array.
    pub async fn list(&self, room: &str) -> Vec<Value> {
        let (status, body) = self
            .call("GET", &format!("/rooms/{}/bots", enc(room)), &[], b"")
            .await;
        assert_eq!(status, 200, "{body}");
        body["bots"].as_array().cloned().unwrap_or_default()
    }

    /// The value of the sample `line_start` (`name` or `name{labels}`) at `/metrics`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let r = http::get(self.ops, "/metrics", &[]).await.ok()?;
        r.text().lines().find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == sample).then(|| v.parse().ok()).flatten()
        })
    }

    /// Wait until the metric reaches `want` (bounded); returns the last value.
    pub async fn metric_reaches(&self, sample: &str, want: f64) -> f64 {
        let mut last = 0.0;
        for _ in 0..1000 {
            last = self.metric(sample).await.unwrap_or(0.0);
            if last >= want {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        last
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }
}

/// Percent-encode a path segment.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub fn bot_path(room: &str, name: &str) -> String {
    format!("/rooms/{}/bots/{}", enc(room), name)
}

/// An edge on `nats` (authentication off: loopback without a key).
pub async fn edge(nats: &NatsServer) -> Service {
    Service::start("natter-edge", &["--nats-url".into(), nats.url()], &[]).await
}

/// Connect to `edge` and join `room`.
pub async fn joined(edge: &Service, room: &str, user_id: &str, name: &str) -> ChatClient {
    let mut c = ChatClient::connect(&edge.ws_url()).await.expect("connect");
    c.join(room, user_id, name, None, false)
        .await
        .expect("join");
    c
}

/// Whether a delivered room message was posted by a bot.
pub fn is_bot(v: &Value) -> bool {
    v["params"]["userId"]
        .as_str()
        .is_some_and(|u| u.starts_with("bot:"))
}

pub fn text(v: &Value) -> &str {
    v["params"]["text"].as_str().unwrap_or_default()
}

/// Room messages until one satisfies `done` (all of them, that one included); panics after
/// [`WAIT`].
pub async fn messages_until(c: &mut ChatClient, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next_event(left).await {
            Some(Event::Json(v)) if v.get("_id").is_some() => {
                let stop = done(&v);
                out.push(v);
                if stop {
                    return out;
                }
            }
            Some(Event::Json(_)) | Some(Event::Text(_)) => {}
            other => panic!(
                "expected room messages, got {other:?} after {:?}",
                out.iter().map(|v| text(v).to_owned()).collect::<Vec<_>>()
            ),
        }
    }
}

/// Send `text` as user Ann (u-ann) with `uuid`.
pub async fn say(c: &mut ChatClient, room: &str, text: &str, uuid: &str) {
    c.send_message(room, "u-ann", "Ann", text, uuid).await;
}

/// Room messages until every one of `texts` has arrived.
pub async fn messages_until_all(c: &mut ChatClient, texts: &[&str]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut missing: Vec<&str> = texts.to_vec();
    while !missing.is_empty() {
        let got = messages_until(c, |v| missing.contains(&text(v))).await;
        let last = text(got.last().unwrap()).to_owned();
        missing.retain(|t| *t != last);
        out.extend(got);
    }
    out
}
