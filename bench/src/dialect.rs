//! The protocol seam of the load engine: the same clients drive natter (protocol v1,
//! JSON-RPC over WebSocket) or a Socket.IO v4 server (engine.io v4 framing over the
//! websocket transport; `bench/peer/server.js` gives its rooms natter's semantics).
//!
//! A dialect says how to open a session, join a room, send a message that will be
//! acknowledged, and what an incoming text frame is — found with [`crate::scan`], never a
//! JSON tree; only rare frames (errors) go through serde.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::scan::{field, leading_u64, str_field};
use crate::wsclient::{Conn, Event};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dialect {
    /// natter protocol v1: `joinRoom`/`reconnect` by `lastMessageId`, `textMessage`; the
    /// sender's own echo (with `_id`) is its acknowledgement.
    Natter,
    /// Socket.IO v4: `40` connects the default namespace, `42<id>["join",…]` and
    /// `42<id>["message",…]` are acknowledged with `43<id>[…]`, deliveries are
    /// `42["message",{…}]`, engine.io pings (`2`) are answered with `3`.
    SocketIo,
}

/// What one incoming text frame means to a member.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A room message: the server's message id (natter's `_id`, for resuming), the sender's
    /// message number (from its uuid) and the sender's clock in its text.
    Delivery {
        msg_id: Option<&'a [u8]>,
        n: Option<u64>,
        sent_ns: Option<u64>,
    },
    /// The server acknowledged message `n` (Socket.IO; natter acknowledges by the echo).
    Ack(u64),
    /// The answer to the join (or resume).
    JoinResult(bool),
    /// natter's `welcome`, sent after a join's answer once the member is in the room (its
    /// history and live messages follow).
    Welcome,
    /// The message was refused for now (rate limited, not stored): send it again later.
    Refused,
    /// The server asks the client to move (drain) and resume.
    Reconnect,
    /// A protocol-level ping that must be answered with [`Dialect::pong`].
    Ping,
    Other,
}

/// The id of the join request in both dialects (messages use their number, from 1).
const JOIN_ID: u64 = 0;

#[derive(Deserialize)]
struct RpcError {
    error: ErrorBody,
    #[serde(default)]
    id: serde_json::Value,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: i64,
}

impl Dialect {
    /// The WebSocket URL to connect to for a server given as `ws://host:port[/path]`.
    pub fn url(self, base: &str) -> String {
        match self {
            Dialect::Natter => base.to_string(),
            Dialect::SocketIo => {
                let root = base
                    .strip_prefix("ws://")
                    .and_then(|r| r.split('/').next())
                    .unwrap_or(base);
                format!("ws://{root}/socket.io/?EIO=4&transport=websocket")
            }
        }
    }

    /// Open the session on a fresh connection (Socket.IO: the engine.io open packet, then
    /// connect the default namespace). False when the server did not play along.
    pub async fn open(self, conn: &mut Conn) -> bool {
        if self == Dialect::Natter {
            return true;
        }
        let mut sent_connect = false;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let ev = match tokio::time::timeout_at(deadline, conn.next()).await {
                Ok(ev) => ev,
                Err(_) => return false,
            };
            if ev != Event::Text {
                return false;
            }
            let t = conn.text();
            if t.first() == Some(&b'0') && !sent_connect {
                sent_connect = true;
                if !conn.send(b"40").await {
                    return false;
                }
            } else if t.starts_with(b"40") && sent_connect {
                return true;
            } else if t.starts_with(b"44") {
                return false; // namespace connect error
            }
        }
    }

    /// The join (or, with the last message seen, the resume) request.
    pub fn join(self, room: &str, user_id: &str, user_name: &str, last: Option<&str>) -> String {
        match self {
            Dialect::Natter => {
                let mut params =
                    json!({"userId": user_id, "userName": user_name, "roomName": room});
                let method = if let Some(l) = last {
                    params["lastMessageId"] = json!(l);
                    "reconnect"
                } else {
                    "joinRoom"
                };
                json!({"jsonrpc":"2.0","method":method,"params":params,"id":"join"}).to_string()
            }
            // Socket.IO rooms keep no history: a resume is a plain join.
            Dialect::SocketIo => format!(
                "42{JOIN_ID}{}",
                json!(["join", {"room": room, "userId": user_id, "name": user_name}])
            ),
        }
    }

    /// Message `n` (uuid `uuid`, text starting with the sender's clock).
    pub fn message(
        self,
        n: u64,
        room: &str,
        user_id: &str,
        user_name: &str,
        text: &str,
        uuid: &str,
    ) -> String {
        match self {
            Dialect::Natter => json!({"jsonrpc":"2.0","method":"textMessage","id":n,"params":{
                "userId": user_id, "userName": user_name, "roomName": room, "text": text,
                "ack": false, "uuid": uuid, "date": 0}})
            .to_string(),
            Dialect::SocketIo => format!(
                "42{n}{}",
                json!(["message", {"room": room, "userId": user_id, "userName": user_name,
                    "text": text, "uuid": uuid}])
            ),
        }
    }

    /// Whether a join is complete only with [`Incoming::Welcome`] after its answer.
    pub fn welcomes(self) -> bool {
        self == Dialect::Natter
    }

    /// Whether a sender's own delivery is its acknowledgement.
    pub fn echo_acks(self) -> bool {
        self == Dialect::Natter
    }

    /// The answer to [`Incoming::Ping`].
    pub fn pong(self) -> &'static [u8] {
        b"3"
    }

    /// What `frame` is; `prefix` is the run's uuid prefix (`<run>-`).
    pub fn classify<'a>(self, frame: &'a [u8], prefix: &[u8]) -> Incoming<'a> {
        match self {
            Dialect::Natter => natter(frame, prefix),
            Dialect::SocketIo => socketio(frame, prefix),
        }
    }
}

fn message_fields(frame: &[u8], prefix: &[u8]) -> (Option<u64>, Option<u64>) {
    let n = str_field(frame, b"uuid")
        .and_then(|u| u.strip_prefix(prefix))
        .and_then(|n| {
            let v = leading_u64(n)?;
            (n.iter().all(u8::is_ascii_digit)).then_some(v)
        });
    let sent = str_field(frame, b"text").and_then(leading_u64);
    (n, sent)
}

fn natter<'a>(frame: &'a [u8], prefix: &[u8]) -> Incoming<'a> {
    if let Some(id) = str_field(frame, b"_id") {
        let (n, sent_ns) = message_fields(frame, prefix);
        return Incoming::Delivery {
            msg_id: Some(id),
            n,
            sent_ns,
        };
    }
    match str_field(frame, b"method") {
        Some(b"reconnect") => return Incoming::Reconnect,
        Some(b"welcome") => return Incoming::Welcome,
        _ => {}
    }
    if field(frame, b"error").is_some() {
        // Rare: the whole frame through serde.
        let Ok(e) = serde_json::from_slice::<RpcError>(frame) else {
            return Incoming::Other;
        };
        if e.id == "join" {
            return Incoming::JoinResult(false);
        }
        if e.error.code == -32010 || e.error.code == -32005 {
            return Incoming::Refused;
        }
        return Incoming::Other;
    }
    if field(frame, b"result").is_some() && str_field(frame, b"id") == Some(b"join") {
        return Incoming::JoinResult(true);
    }
    Incoming::Other
}

fn socketio<'a>(frame: &'a [u8], prefix: &[u8]) -> Incoming<'a> {
    match frame {
        b"2" => Incoming::Ping,
        [b'4', b'2', b'[', rest @ ..] if rest.starts_with(b"\"message\"") => {
            let (n, sent_ns) = message_fields(frame, prefix);
            Incoming::Delivery {
                msg_id: None,
                n,
                sent_ns,
            }
        }
        [b'4', b'3', rest @ ..] => {
            let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
            let Some(id) = leading_u64(&rest[..digits]) else {
                return Incoming::Other;
            };
            let args = &rest[digits..];
            if id == JOIN_ID {
                Incoming::JoinResult(memchr::memmem::find(args, b"\"OK\"").is_some())
            } else if memchr::memmem::find(args, b"\"OK\"").is_some() {
                Incoming::Ack(id)
            } else {
                Incoming::Refused
            }
        }
        // The server disconnected the namespace: move and join again.
        [b'4', b'1', ..] | [b'1', ..] => Incoming::Reconnect,
        _ => Incoming::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natter_frames() {
        let d = Dialect::Natter;
        let f = br#"{"jsonrpc":"2.0","method":"textMessage","params":{"userId":"u","roomName":"r","userName":"n","text":"5000 xx","ack":true,"uuid":"run-7","date":0,"ts":"t"},"id":7,"_id":"12"}"#;
        assert_eq!(
            d.classify(f, b"run-"),
            Incoming::Delivery {
                msg_id: Some(&b"12"[..]),
                n: Some(7),
                sent_ns: Some(5000)
            }
        );
        let other_run = br#"{"params":{"uuid":"other-7","text":"1"},"_id":"3"}"#;
        assert!(matches!(
            d.classify(other_run, b"run-"),
            Incoming::Delivery { n: None, .. }
        ));
        assert_eq!(
            d.classify(br#"{"jsonrpc":"2.0","result":"OK","id":"join"}"#, b"run-"),
            Incoming::JoinResult(true)
        );
        assert_eq!(
            d.classify(
                br#"{"jsonrpc":"2.0","error":{"code":-32001,"message":"taken"},"id":"join"}"#,
                b"run-"
            ),
            Incoming::JoinResult(false)
        );
        assert_eq!(
            d.classify(
                br#"{"jsonrpc":"2.0","error":{"code":-32010,"message":"retry"},"id":9}"#,
                b"run-"
            ),
            Incoming::Refused
        );
        assert_eq!(
            d.classify(
                br#"{"jsonrpc":"2.0","method":"reconnect","params":{"reason":"draining"},"id":1}"#,
                b"run-"
            ),
            Incoming::Reconnect
        );
        assert_eq!(
            d.classify(
                br#"{"jsonrpc":"2.0","method":"welcome","params":{"members":["a"]}}"#,
                b"run-"
            ),
            Incoming::Welcome
        );
        assert_eq!(
            d.classify(
                br#"{"jsonrpc":"2.0","method":"newUser","params":{"text":"reconnect"}}"#,
                b"run-"
            ),
            Incoming::Other
        );
    }

    #[test]
    fn socketio_frames() {
        let d = Dialect::SocketIo;
        assert_eq!(d.classify(b"2", b"r-"), Incoming::Ping);
        assert_eq!(
            d.classify(
                br#"42["message",{"room":"x","text":"99 \"pad","uuid":"r-4"}]"#,
                b"r-"
            ),
            Incoming::Delivery {
                msg_id: None,
                n: Some(4),
                sent_ns: Some(99)
            }
        );
        assert_eq!(
            d.classify(br#"430["OK"]"#, b"r-"),
            Incoming::JoinResult(true)
        );
        assert_eq!(d.classify(br#"4317["OK"]"#, b"r-"), Incoming::Ack(17));
        assert_eq!(d.classify(br#"41"#, b"r-"), Incoming::Reconnect);
        assert_eq!(
            d.classify(br#"42["newUser",{"name":"x"}]"#, b"r-"),
            Incoming::Other
        );
        assert!(d.join("room", "u", "n", None).starts_with(r#"420["join","#));
        assert!(d
            .message(5, "room", "u", "n", "1 x", "r-5")
            .starts_with(r#"425["message",{"#));
        assert_eq!(
            d.url("ws://127.0.0.1:3000"),
            "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket"
        );
    }
}
