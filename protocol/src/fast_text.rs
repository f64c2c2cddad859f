//! The one request that comes at the rate of the room traffic, `textMessage`, parsed
//! without building a JSON tree: the frame is read straight into its fields.
//!
//! It only ever *accepts*: a frame it does not take whole (another method, a missing or
//! mistyped field, a duplicate key, anything out of bounds, invalid JSON) returns `None`,
//! and [`crate::Request::parse`] goes the general way, which gives the precise error. What it
//! accepts, it turns into exactly what the general way would have (the property tests in
//! `tests/parser_props.rs` hold the two side by side).

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::request::{
    check_text, text_date, user_id_of, Call, Limits, Request, TextMessage, ID_MAX, ROOM_NAME_MAX,
    USER_NAME_MAX, UUID_MAX,
};

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    jsonrpc: &'a str,
    #[serde(borrow)]
    method: &'a str,
    #[serde(default)]
    id: Option<Value>,
    /// Raw, to check that it is an object: serde also reads a struct from an array.
    #[serde(borrow)]
    params: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Params {
    user_id: Value,
    user_name: String,
    room_name: String,
    text: String,
    uuid: String,
    #[serde(default)]
    date: Option<Value>,
}

/// `frame` as a valid `textMessage`, or `None` to leave it to the general parser.
pub(crate) fn parse(frame: &[u8], limits: &Limits) -> Option<Request> {
    // Cheap guard: other methods never pay for a failed attempt.
    if memchr::memmem::find(frame, b"\"textMessage\"").is_none() || !is_object(frame) {
        return None;
    }
    let e: Envelope<'_> = serde_json::from_slice(frame).ok()?;
    if e.jsonrpc != "2.0" || e.method != "textMessage" || !is_object(e.params.get().as_bytes()) {
        return None;
    }
    let p: Params = serde_json::from_str(e.params.get()).ok()?;
    let id = match e.id {
        None => None,
        Some(v @ Value::Number(_)) => Some(v),
        Some(Value::String(s)) if s.len() <= ID_MAX => Some(Value::String(s)),
        Some(_) => return None,
    };
    let bounded = |s: &str, max: usize| !s.is_empty() && s.len() <= max;
    if !bounded(&p.room_name, ROOM_NAME_MAX)
        || !bounded(&p.user_name, USER_NAME_MAX)
        || !bounded(&p.uuid, UUID_MAX)
    {
        return None;
    }
    let user_id = user_id_of(Some(&p.user_id)).ok()?;
    check_text(&p.text, limits).ok()?;
    let date = text_date(p.date.as_ref()).ok()?;
    Some(Request {
        id,
        call: Call::TextMessage(TextMessage {
            user_id,
            user_name: p.user_name,
            room_name: p.room_name,
            uuid: p.uuid,
            text: p.text,
            user_id_sent: p.user_id,
            date,
        }),
    })
}

/// JSON text whose value is an object (serde would read a struct from an array too).
fn is_object(json: &[u8]) -> bool {
    json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(frame: &str) -> (Option<Request>, Result<Request, crate::request::Rejection>) {
        let l = Limits::default();
        (
            parse(frame.as_bytes(), &l),
            Request::parse(frame.as_bytes(), &l),
        )
    }

    #[test]
    fn takes_the_common_message_as_the_general_parser_does() {
        let f = r#"{"jsonrpc":"2.0","method":"textMessage","params":{"userId":7,"userName":"Ann","roomName":"r","text":"hi \"x\" \u00e9","uuid":"u-1","date":1700000000000,"ack":true,"type":"system","_id":"9","extra":{"a":[1,2]}},"id":"c1"}"#;
        let (fast, general) = both(f);
        let fast = fast.expect("fast path takes it");
        assert_eq!(Ok(fast), general);
    }

    #[test]
    fn leaves_everything_else_to_the_general_parser() {
        for f in [
            // another method, or textMessage only inside a string
            r#"{"jsonrpc":"2.0","method":"ping","params":{"text":"textMessage"},"id":1}"#,
            r#"{"jsonrpc":"2.0","method":"\"textMessage\"","id":1}"#,
            // duplicate keys: the general parser keeps the last one
            r#"{"jsonrpc":"2.0","method":"textMessage","params":{"userId":"u","userName":"n","roomName":"r","text":"a","text":"b","uuid":"x"},"id":1}"#,
            // missing uuid, empty text, bad date, bad id, bad jsonrpc
            r#"{"jsonrpc":"2.0","method":"textMessage","params":{"userId":"u","userName":"n","roomName":"r","text":"a"},"id":1}"#,
            r#"{"jsonrpc":"2.0","method":"textMessage","params":{"userId":"u","userName":"n","roomName":"r","text":"","uuid":"x"},"id":1}"#,
            r#"{"jsonrpc":"2.0","method":"textMessage","params":{"userId":"u","userName":"n","roomName":"r","text":"a","uuid":"x","date":{}},"id":1}"#,
            r#"{"jsonrpc":"2.0","method":"textMessage","params":{"userId":"u","userName":"n","roomName":"r","text":"a","uuid":"x"},"id":[1]}"#,
            r#"{"jsonrpc":"1.0","method":"textMessage","params":{"userId":"u","userName":"n","roomName":"r","text":"a","uuid":"x"},"id":1}"#,
            r#"{"jsonrpc":"2.0","method":"textMessage","params":{"userId":true,"userName":"n","roomName":"r","text":"a","uuid":"x"},"id":1}"#,
            // arrays where objects belong (serde reads a struct from either)
            r#"["2.0","textMessage",1,{"userId":"u","userName":"n","roomName":"r","text":"a","uuid":"x"}]"#,
            r#"{"jsonrpc":"2.0","method":"textMessage","params":["u","n","r","a","x"],"id":1}"#,
        ] {
            let (fast, _) = both(f);
            assert!(fast.is_none(), "fast path must not take {f}");
        }
        // The duplicate-key frame still parses, the general way, with the last text.
        let f = r#"{"jsonrpc":"2.0","method":"textMessage","params":{"userId":"u","userName":"n","roomName":"r","text":"a","text":"b","uuid":"x"},"id":1}"#;
        let Ok(Request {
            call: Call::TextMessage(t),
            ..
        }) = both(f).1
        else {
            panic!("general parser takes it")
        };
        assert_eq!(t.text, "b");
    }
}
