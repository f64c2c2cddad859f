//! Encoding what the server sends: responses, notifications, server requests, and stored
//! room messages.
//!
//! A stored room message is the complete JSON-RPC object *without* its `_id`: the `_id` is the
//! stream sequence, known only once the message is stored. [`with_message_id`] splices it in
//! on delivery without re-parsing, so an edge encodes each delivered frame once.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{json, Map, Value};

use crate::error::RpcError;
use crate::request::TextMessage;

/// `{"jsonrpc":"2.0","result":R,"id":N}`
pub fn result(id: Option<&Value>, result: Value) -> Bytes {
    encode(&json!({"jsonrpc": "2.0", "result": result, "id": id}))
}

/// `{"jsonrpc":"2.0","error":{"code":C,"message":M},"id":N}`
pub fn error(id: Option<&Value>, err: &RpcError) -> Bytes {
    encode(&json!({
        "jsonrpc": "2.0",
        "error": {"code": err.code.code(), "message": err.message},
        "id": id,
    }))
}

/// A notification: a request object without `id`.
pub fn notification(method: &str, params: Value) -> Bytes {
    encode(&json!({"jsonrpc": "2.0", "method": method, "params": params}))
}

/// A request from the server that clients act on (e.g. `reconnect`): it carries an `id`,
/// which existing clients require.
pub fn server_request(method: &str, params: Value, id: u64) -> Bytes {
    encode(&json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id}))
}

/// The stored form of a room message: `{"jsonrpc":"2.0","method":M,"params":{..., "ack":true,
/// "ts":TS},"id":N}`, where `params` are the client's, `ack` and `ts` set by the server.
pub fn stored_message(
    method: &str,
    id: Option<&Value>,
    mut params: Map<String, Value>,
    ts: &str,
) -> Bytes {
    params.insert("ack".into(), Value::Bool(true));
    params.insert("ts".into(), Value::String(ts.to_owned()));
    let mut obj = Map::with_capacity(4);
    obj.insert("jsonrpc".into(), Value::String("2.0".into()));
    obj.insert("method".into(), Value::String(method.into()));
    obj.insert("params".into(), Value::Object(params));
    if let Some(id) = id {
        obj.insert("id".into(), id.clone());
    }
    encode(&Value::Object(obj))
}

/// The stored form of a `textMessage`, written straight to bytes: the same bytes as
/// [`stored_message`]`("textMessage", id, t.params(), ts)` (members in the same order, the
/// same escaping) without building a JSON tree.
pub fn stored_text(id: Option<&Value>, t: &TextMessage, ts: &str) -> Bytes {
    let mut out = Vec::with_capacity(160 + t.text.len() + t.user_name.len() + t.room_name.len());
    // serde_json writes keys in sorted order (its map is a BTreeMap); so does this.
    out.push(b'{');
    if let Some(id) = id {
        out.extend_from_slice(b"\"id\":");
        json_into(&mut out, id);
        out.push(b',');
    }
    out.extend_from_slice(br#""jsonrpc":"2.0","method":"textMessage","params":{"ack":true,"#);
    if let Some(d) = &t.date {
        out.extend_from_slice(b"\"date\":");
        json_into(&mut out, d);
        out.push(b',');
    }
    out.extend_from_slice(b"\"roomName\":");
    json_into(&mut out, t.room_name.as_str());
    out.extend_from_slice(b",\"text\":");
    json_into(&mut out, t.text.as_str());
    out.extend_from_slice(b",\"ts\":");
    json_into(&mut out, ts);
    out.extend_from_slice(b",\"userId\":");
    json_into(&mut out, &t.user_id_sent);
    out.extend_from_slice(b",\"userName\":");
    json_into(&mut out, t.user_name.as_str());
    out.extend_from_slice(b",\"uuid\":");
    json_into(&mut out, t.uuid.as_str());
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

fn json_into<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing a string or a `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// The delivered frame of a stored message: the stored object with `"_id":"<seq>"` appended
/// as its last member. `None` if `stored` is not a JSON object's text (not our payload).
pub fn with_message_id(stored: &[u8], seq: u64) -> Option<Bytes> {
    let body = trim_ascii(stored);
    if body.len() < 2 || body[0] != b'{' || body[body.len() - 1] != b'}' {
        return None;
    }
    let inner = trim_ascii(&body[1..body.len() - 1]);
    let mut out = BytesMut::with_capacity(body.len() + 32);
    out.put_slice(&body[..body.len() - 1]);
    // `{}` has no member to follow.
    if !inner.is_empty() {
        out.put_u8(b',');
    }
    out.put_slice(b"\"_id\":\"");
    let num = itoa_buf(seq);
    out.put_slice(num.as_slice());
    out.put_slice(b"\"}");
    Some(out.freeze())
}

/// Pull `_id` back out of a delivered frame (the last member); for clients and tests.
pub fn message_id_of(frame: &Value) -> Option<u64> {
    frame.get("_id").and_then(crate::request::message_id)
}

fn encode(v: &Value) -> Bytes {
    // Serialising a `Value` cannot fail: its keys are strings.
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

fn trim_ascii(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if first.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = b {
        if last.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    b
}

struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa_buf(mut n: u64) -> Digits {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    Digits { buf, start: i }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn splices_id_into_stored_message() {
        let mut p = Map::new();
        p.insert("text".into(), json!("hi \"there\" }"));
        p.insert("uuid".into(), json!("u-1"));
        p.insert("ack".into(), json!(false));
        let stored = stored_message("textMessage", Some(&json!(7)), p, "2026-01-01T00:00:00Z");
        let frame = with_message_id(&stored, 18446744073709551615).unwrap();
        let v: Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(v["_id"], json!("18446744073709551615"));
        assert_eq!(v["id"], json!(7));
        assert_eq!(v["params"]["ack"], json!(true));
        assert_eq!(v["params"]["text"], json!("hi \"there\" }"));
        assert_eq!(message_id_of(&v), Some(u64::MAX));
        let v0: Value = serde_json::from_slice(&with_message_id(b" {} ", 0).unwrap()).unwrap();
        assert_eq!(v0, json!({"_id": "0"}));
    }

    #[test]
    fn refuses_non_objects() {
        assert!(with_message_id(b"[1]", 1).is_none());
        assert!(with_message_id(b"", 1).is_none());
        assert!(with_message_id(b"{", 1).is_none());
    }

    #[test]
    fn responses_echo_ids() {
        let e = error(
            Some(&json!("abc")),
            &RpcError::new(ErrorCode::NotJoined, "nope"),
        );
        let v: Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(
            v,
            json!({"jsonrpc":"2.0","error":{"code":-32004,"message":"nope"},"id":"abc"})
        );
        let r: Value = serde_json::from_slice(&result(None, json!("OK"))).unwrap();
        assert_eq!(r, json!({"jsonrpc":"2.0","result":"OK","id":null}));
        let s: Value = serde_json::from_slice(&server_request(
            "reconnect",
            json!({"reason":"draining"}),
            3,
        ))
        .unwrap();
        assert_eq!(s["id"], json!(3));
    }
}
