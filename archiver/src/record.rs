//! From a stream message to an archive row, and what counts as a poison message.
//!
//! A stored room message is a JSON-RPC object (`{"jsonrpc","method","params":{...},"id"}`)
//! on subject `room.<token>`; its `_id` is its stream sequence. The row keeps the payload
//! verbatim (`msg`) plus the fields worth indexing or querying, extracted leniently.
//!
//! Poison policy (documented in the crate docs):
//! - the subject is not `room.<token>` with a token that decodes to a usable room name, or
//!   the payload is not a UTF-8 JSON object → the message cannot be archived: it is skipped
//!   with a warning and the `poison` metric, and acked with its batch;
//! - a JSON object with missing or ill-typed fields is archived with those columns `NULL`
//!   (`kind` defaults to `system`), so history stays complete. A `uuid` too long to index
//!   is stored as `NULL` (the row is kept, only its `(room, uuid)` dedupe is lost).

use serde_json::Value;

/// Longest `uuid` kept for the `(room, uuid)` constraint (btree entries must stay small).
pub const MAX_UUID_BYTES: usize = 512;
/// Longest room name archived (the edge allows 128 bytes; btree entries must stay small).
pub const MAX_ROOM_BYTES: usize = 1024;

/// One row of `messages`, ready to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Stream sequence, the message's `_id`.
    pub seq: i64,
    /// Room name (decoded from the subject token).
    pub room: String,
    pub uuid: Option<String>,
    /// `text`, `image`, `file` or `system`.
    pub kind: &'static str,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    /// The stored object, byte for byte (the delivered object is this plus `"_id"`).
    pub msg: String,
    /// `params.date` as the client sent it: a string's value, or a number's digits.
    pub client_date: Option<String>,
    /// When the stream stored the message, microseconds since the Unix epoch.
    pub server_time_us: i64,
}

/// Why a message cannot be archived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Poison {
    #[error("subject is not room.<token>")]
    BadSubject,
    #[error("room token does not decode to a usable room name")]
    BadRoom,
    #[error("payload is not UTF-8 JSON")]
    NotJson,
    #[error("payload is not a JSON object")]
    NotObject,
    #[error("stream sequence does not fit a bigint")]
    BadSequence,
    #[error("the database rejected the row")]
    Rejected,
}

impl Poison {
    /// A short label for logs.
    pub fn reason(self) -> &'static str {
        match self {
            Poison::BadSubject => "bad_subject",
            Poison::BadRoom => "bad_room",
            Poison::NotJson => "not_json",
            Poison::NotObject => "not_object",
            Poison::BadSequence => "bad_sequence",
            Poison::Rejected => "rejected",
        }
    }
}

/// `s` without NUL characters, which Postgres `text` cannot hold.
pub fn pg_text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_owned()
    }
}

/// The room name a subject token stands for, as stored in the `room` column.
pub fn room_from_token(token: &str) -> Option<String> {
    let name = natter_protocol::token::decode(token).ok()?;
    if name.is_empty() || name.len() > MAX_ROOM_BYTES {
        return None;
    }
    Some(pg_text(&name))
}

/// The archive kind of a JSON-RPC method.
pub fn kind_of(method: Option<&str>) -> &'static str {
    match method {
        Some("textMessage") => "text",
        Some("imageMessage") => "image",
        Some("fileMessage") => "file",
        _ => "system",
    }
}

/// A string field as text: strings as they are, numbers by their digits, anything else none.
fn text_field(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(pg_text(s)),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Turn one stream message into a row.
pub fn parse(seq: u64, subject: &str, payload: &[u8], server_time_us: i64) -> Result<Row, Poison> {
    let seq = i64::try_from(seq).map_err(|_| Poison::BadSequence)?;
    let token = subject.strip_prefix("room.").ok_or(Poison::BadSubject)?;
    if token.is_empty() || token.contains('.') {
        return Err(Poison::BadSubject);
    }
    let room = room_from_token(token).ok_or(Poison::BadRoom)?;
    let text = std::str::from_utf8(payload).map_err(|_| Poison::NotJson)?;
    let value: Value = serde_json::from_str(text).map_err(|_| Poison::NotJson)?;
    let obj = value.as_object().ok_or(Poison::NotObject)?;
    let params = obj.get("params").and_then(Value::as_object);
    let field = |name: &str| params.and_then(|p| p.get(name));
    let uuid = text_field(field("uuid")).filter(|u| u.len() <= MAX_UUID_BYTES);
    Ok(Row {
        seq,
        room,
        uuid,
        kind: kind_of(obj.get("method").and_then(Value::as_str)),
        user_id: text_field(field("userId")),
        user_name: text_field(field("userName")),
        msg: text.to_owned(),
        client_date: text_field(field("date")),
        server_time_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(room: &str) -> String {
        format!("room.{}", natter_protocol::token::encode(room))
    }

    #[test]
    fn parses_a_text_message() {
        let p = br#"{"jsonrpc":"2.0","method":"textMessage","params":{"userId":"u1","userName":"Ann","roomName":"Tests Room","text":"hi","ack":true,"uuid":"abc","date":1700000000000,"ts":"2026-11-25T02:00:00.123Z"},"id":3}"#;
        let r = parse(42, &subject("Tests Room"), p, 7).unwrap();
        assert_eq!(r.seq, 42);
        assert_eq!(r.room, "Tests Room");
        assert_eq!(r.uuid.as_deref(), Some("abc"));
        assert_eq!(r.kind, "text");
        assert_eq!(r.user_id.as_deref(), Some("u1"));
        assert_eq!(r.user_name.as_deref(), Some("Ann"));
        assert_eq!(r.client_date.as_deref(), Some("1700000000000"));
        assert_eq!(r.msg.as_bytes(), p);
        assert_eq!(r.server_time_us, 7);
    }

    #[test]
    fn kinds_and_lenient_fields() {
        let img =
            br#"{"method":"imageMessage","params":{"uuid":"x","date":"yesterday","userId":5}}"#;
        let r = parse(1, &subject("r"), img, 0).unwrap();
        assert_eq!(
            (r.kind, r.client_date.as_deref(), r.user_id.as_deref()),
            ("image", Some("yesterday"), Some("5"))
        );
        let file = br#"{"method":"fileMessage","params":{}}"#;
        assert_eq!(parse(1, &subject("r"), file, 0).unwrap().kind, "file");
        let other = br#"{"method":"newUser","params":{"type":"system"}}"#;
        let r = parse(1, &subject("r"), other, 0).unwrap();
        assert_eq!(
            (r.kind, r.uuid.clone(), r.user_id.clone()),
            ("system", None, None)
        );
        let bare = br#"{}"#;
        assert_eq!(parse(1, &subject("r"), bare, 0).unwrap().kind, "system");
        let nul = br#"{"params":{"uuid":"a\u0000b"}}"#;
        assert_eq!(
            parse(1, &subject("r"), nul, 0).unwrap().uuid.as_deref(),
            Some("a\u{FFFD}b")
        );
        let long = format!(
            r#"{{"params":{{"uuid":"{}"}}}}"#,
            "u".repeat(MAX_UUID_BYTES + 1)
        );
        assert_eq!(
            parse(1, &subject("r"), long.as_bytes(), 0).unwrap().uuid,
            None
        );
    }

    #[test]
    fn poison() {
        let ok = br#"{"method":"textMessage"}"#;
        assert_eq!(parse(1, "room", ok, 0), Err(Poison::BadSubject));
        assert_eq!(parse(1, "room.a.b", ok, 0), Err(Poison::BadSubject));
        assert_eq!(parse(1, "other.x", ok, 0), Err(Poison::BadSubject));
        assert_eq!(parse(1, "room.!!", ok, 0), Err(Poison::BadRoom));
        assert_eq!(
            parse(1, &subject("r"), b"not json", 0),
            Err(Poison::NotJson)
        );
        assert_eq!(
            parse(1, &subject("r"), b"\xff\xfe", 0),
            Err(Poison::NotJson)
        );
        assert_eq!(parse(1, &subject("r"), b"[1,2]", 0), Err(Poison::NotObject));
        assert_eq!(parse(1, &subject("r"), b"\"s\"", 0), Err(Poison::NotObject));
        assert_eq!(
            parse(u64::MAX, &subject("r"), ok, 0),
            Err(Poison::BadSequence)
        );
    }
}
