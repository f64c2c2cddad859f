//! A protocol-v1 chat client over a real WebSocket, for tests and the load generator.
//!
//! Frames are read by a background task (fastwebsockets' `read_frame` is not cancel-safe,
//! so it is never raced against a timeout); the test pulls [`Event`]s from a channel with
//! bounded waits.
//!
//! Why ~400 lines: the handshake, the reader task and the protocol helpers tests call
//! belong to one client.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket, WebSocketWrite};
use http_body_util::Empty;
use hyper::header::{CONNECTION, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::WriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};

/// What the server sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A text frame holding JSON.
    Json(Value),
    /// A text frame that is not JSON.
    Text(String),
    /// A close frame: code and reason.
    Close(u16, String),
    /// The connection ended without a close frame (or failed).
    Gone(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad URL {0}")]
    Url(String),
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(String),
}

type Writer = WebSocketWrite<WriteHalf<TokioIo<Upgraded>>>;

struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::task::spawn(fut);
    }
}

/// Open a WebSocket to `ws://ip:port/path`, optionally from a given local address (e.g.
/// 127.0.0.2, to get past one source address's ephemeral ports in large runs).
pub async fn ws_connect(
    url: &str,
    local: Option<std::net::IpAddr>,
) -> Result<WebSocket<TokioIo<Upgraded>>, ClientError> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| ClientError::Url(url.into()))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: std::net::SocketAddr = host.parse().map_err(|_| ClientError::Url(url.into()))?;
    let stream = match local {
        Some(ip) => {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(std::net::SocketAddr::new(ip, 0))?;
            sock.connect(addr).await?
        }
        None => TcpStream::connect(addr).await?,
    };
    stream.set_nodelay(true)?;
    let req = Request::builder()
        .method("GET")
        .uri(path)
        .header("Host", host)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header(
            "Sec-WebSocket-Key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::Handshake(e.to_string()))?;
    let (ws, _resp) = fastwebsockets::handshake::client(&SpawnExecutor, req, stream)
        .await
        .map_err(|e| ClientError::Handshake(e.to_string()))?;
    Ok(ws)
}

/// One WebSocket connection to an edge.
pub struct ChatClient {
    writer: Arc<Mutex<Writer>>,
    events: mpsc::UnboundedReceiver<Event>,
    pending: VecDeque<Event>,
    next_id: u64,
    /// Default wait for one expected frame.
    pub wait: Duration,
}

impl ChatClient {
    /// Connect to `ws://host:port/path`.
    pub async fn connect(url: &str) -> Result<ChatClient, ClientError> {
        Self::connect_from(url, None).await
    }

    /// Connect from a given local address (e.g. 127.0.0.2) to get past one source address's
    /// ephemeral ports in large tests.
    pub async fn connect_from(
        url: &str,
        local: Option<std::net::IpAddr>,
    ) -> Result<ChatClient, ClientError> {
        let ws = ws_connect(url, local).await?;
        let (mut rd, wr) = ws.split(tokio::io::split);
        let writer = Arc::new(Mutex::new(wr));
        let (tx, events) = mpsc::unbounded_channel();
        let wr2 = writer.clone();
        tokio::spawn(async move {
            let mut send_fn = |f: Frame<'_>| {
                let owned = Frame::new(f.fin, f.opcode, None, Payload::Owned(f.payload.to_vec()));
                let w = wr2.clone();
                async move { w.lock().await.write_frame(owned).await }
            };
            loop {
                let ev = match rd
                    .read_frame::<_, fastwebsockets::WebSocketError>(&mut send_fn)
                    .await
                {
                    Ok(frame) => match frame.opcode {
                        OpCode::Text => match serde_json::from_slice::<Value>(&frame.payload) {
                            Ok(v) => Event::Json(v),
                            Err(_) => {
                                Event::Text(String::from_utf8_lossy(&frame.payload).into_owned())
                            }
                        },
                        OpCode::Close => {
                            let p = &frame.payload[..];
                            let code = if p.len() >= 2 {
                                u16::from_be_bytes([p[0], p[1]])
                            } else {
                                1005
                            };
                            let reason = String::from_utf8_lossy(p.get(2..).unwrap_or_default())
                                .into_owned();
                            let _ = tx.send(Event::Close(code, reason));
                            return;
                        }
                        _ => continue,
                    },
                    Err(e) => {
                        let _ = tx.send(Event::Gone(e.to_string()));
                        return;
                    }
                };
                if tx.send(ev).is_err() {
                    return;
                }
            }
        });
        Ok(ChatClient {
            writer,
            events,
            pending: VecDeque::new(),
            next_id: 1,
            wait: crate::WAIT,
        })
    }

    /// Send raw text as one frame.
    pub async fn send_text(&self, text: &str) -> Result<(), String> {
        let mut w = self.writer.lock().await;
        w.write_frame(Frame::text(Payload::Borrowed(text.as_bytes())))
            .await
            .map_err(|e| e.to_string())
    }

    /// Send raw bytes as a text message split into frames of at most `chunk` bytes
    /// (fragmentation), whether or not they are UTF-8.
    pub async fn send_fragmented_text(&self, data: &[u8], chunk: usize) -> Result<(), String> {
        let mut w = self.writer.lock().await;
        let chunks: Vec<&[u8]> = data.chunks(chunk.max(1)).collect();
        let last = chunks.len().saturating_sub(1);
        for (i, c) in chunks.iter().enumerate() {
            let opcode = if i == 0 {
                OpCode::Text
            } else {
                OpCode::Continuation
            };
            w.write_frame(Frame::new(i == last, opcode, None, Payload::Borrowed(c)))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Send raw bytes as one text frame, whether or not they are UTF-8.
    pub async fn send_raw_text(&self, data: &[u8]) -> Result<(), String> {
        let mut w = self.writer.lock().await;
        w.write_frame(Frame::new(
            true,
            OpCode::Text,
            None,
            Payload::Borrowed(data),
        ))
        .await
        .map_err(|e| e.to_string())
    }

    /// Send a binary frame.
    pub async fn send_binary(&self, data: &[u8]) -> Result<(), String> {
        let mut w = self.writer.lock().await;
        w.write_frame(Frame::binary(Payload::Borrowed(data)))
            .await
            .map_err(|e| e.to_string())
    }

    /// Send a JSON value as one text frame.
    pub async fn send_json(&self, v: &Value) -> Result<(), String> {
        self.send_text(&v.to_string()).await
    }

    /// Send a close frame.
    pub async fn close(&self) {
        let mut w = self.writer.lock().await;
        let _ = w.write_frame(Frame::close(1000, b"bye")).await;
    }

    /// The next event, waiting up to `timeout`; `None` if nothing came.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<Event> {
        if let Some(e) = self.pending.pop_front() {
            return Some(e);
        }
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next JSON frame; panics on timeout or close.
    pub async fn next_json(&mut self) -> Value {
        match self.next_event(self.wait).await {
            Some(Event::Json(v)) => v,
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }

    /// Skip frames until one satisfies `pred` (up to `timeout`); the skipped ones are dropped.
    pub async fn next_matching(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await? {
                Event::Json(v) if pred(&v) => return Some(v),
                Event::Close(..) | Event::Gone(_) => return None,
                _ => {}
            }
        }
    }

    /// Send a request with a fresh numeric id and return its response (a frame with that
    /// id and a `result` or `error`). Other frames that arrive meanwhile stay queued.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send_json(&json!({"jsonrpc":"2.0","method":method,"params":params,"id":id}))
            .await
            .expect("send request");
        self.response_to(json!(id)).await
    }

    /// Wait for the response to request `id`, keeping other frames queued.
    pub async fn response_to(&mut self, id: Value) -> Value {
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut held = VecDeque::new();
        // Look at what is already queued first.
        while let Some(e) = self.pending.pop_front() {
            if let Event::Json(v) = &e {
                if is_response(v, &id) {
                    let v = v.clone();
                    held.extend(self.pending.drain(..));
                    self.pending = held;
                    return v;
                }
            }
            held.push_back(e);
        }
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(Event::Json(v))) if is_response(&v, &id) => {
                    self.pending = held;
                    return v;
                }
                Ok(Some(e @ (Event::Close(..) | Event::Gone(_)))) => {
                    panic!("connection ended waiting for response {id}: {e:?}")
                }
                Ok(Some(e)) => held.push_back(e),
                _ => panic!(
                    "no response to request {id} within {:?}; got {held:?}",
                    self.wait
                ),
            }
        }
    }

    /// `joinRoom` (or `reconnect` when `reconnect`): returns the response and, on success,
    /// the `welcome` notification.
    pub async fn join(
        &mut self,
        room: &str,
        user_id: &str,
        user_name: &str,
        last_message_id: Option<u64>,
        reconnect: bool,
    ) -> Result<Value, Value> {
        let mut params = json!({"userId": user_id, "userName": user_name, "roomName": room});
        if let Some(l) = last_message_id {
            params["lastMessageId"] = json!(l.to_string());
        }
        let resp = self
            .call(if reconnect { "reconnect" } else { "joinRoom" }, params)
            .await;
        if resp.get("error").is_some() {
            return Err(resp);
        }
        assert_eq!(resp["result"], json!("OK"), "join answered {resp}");
        let welcome = self
            .next_matching(self.wait, |v| v["method"] == "welcome")
            .await
            .expect("welcome after join");
        Ok(welcome)
    }

    /// Send a `textMessage` (no response is expected on success).
    pub async fn send_message(
        &mut self,
        room: &str,
        user_id: &str,
        user_name: &str,
        text: &str,
        uuid: &str,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        let v = json!({"jsonrpc":"2.0","method":"textMessage","id":id,"params":{
            "userId":user_id,"userName":user_name,"roomName":room,"text":text,"ack":false,"uuid":uuid,
            "date": 1_700_000_000_000u64}});
        self.send_json(&v).await.expect("send textMessage");
    }

    /// Collect room messages (frames with an `_id`) until `n` arrived or `timeout` passed.
    /// Other frames are dropped.
    pub async fn room_messages(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(Event::Json(v)) if v.get("_id").is_some() => out.push(v),
                Some(Event::Json(_)) | Some(Event::Text(_)) => {}
                _ => break,
            }
        }
        out
    }

    /// Everything that arrives within `quiet` of silence (for "nothing more came" checks).
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = self.next_event(quiet).await {
            let end = matches!(e, Event::Close(..) | Event::Gone(_));
            out.push(e);
            if end {
                break;
            }
        }
        out
    }
}

fn is_response(v: &Value, id: &Value) -> bool {
    v.get("id") == Some(id) && (v.get("result").is_some() || v.get("error").is_some())
}

/// The `_id` of a delivered room message as a number.
pub fn msg_id(v: &Value) -> u64 {
    v["_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("message has a numeric _id")
}
