//! Parsing and validating client requests.
//!
//! [`Request::parse`] turns one text frame into a typed [`Call`] or into the exact error the
//! client must get (with the request's `id` when one could be read). Every size and count a
//! client controls is bounded here, before anything else in the system sees the request.
//!
//! Why one file of ~500 lines: every method's validation is ~330 lines that read best
//! together (one table of bounds); the rest are its unit tests.

use serde_json::{Map, Value};

use crate::error::{ErrorCode, RpcError};

/// Longest room name, in bytes.
pub const ROOM_NAME_MAX: usize = 128;
/// Longest user name, in bytes.
pub const USER_NAME_MAX: usize = 64;
/// Longest userId, in bytes (after turning a numeric id into its decimal form).
pub const USER_ID_MAX: usize = 128;
/// Longest message uuid, in bytes.
pub const UUID_MAX: usize = 64;
/// Longest `date` string of a textMessage, in bytes.
pub const DATE_MAX: usize = 64;
/// Longest string request `id`, in bytes (it is echoed back and stored).
pub const ID_MAX: usize = 128;
/// Longest sessionId a client may send back.
pub const SESSION_ID_MAX: usize = 64;
/// Longest token accepted in `joinRoom`/`reconnect` params, in bytes.
pub const TOKEN_MAX: usize = 8 * 1024;
/// Longest method name echoed into an error message.
const METHOD_ECHO_MAX: usize = 32;

/// Limits that depend on configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest `text` of a textMessage, in bytes.
    pub max_text_bytes: usize,
    /// Largest page a `getHistory` may ask for.
    pub max_history_page: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_text_bytes: 8 * 1024,
            max_history_page: 500,
        }
    }
}

/// A parsed request: the client's `id` (echoed back untouched) and what it asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<Value>,
    pub call: Call,
}

/// What a client can ask for.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    JoinRoom(Join),
    Reconnect(Join),
    TextMessage(TextMessage),
    LeaveRoom { room_name: String },
    Typing { room_name: String },
    GetHistory(GetHistory),
    Ping,
}

/// `joinRoom` / `reconnect` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    pub user_id: String,
    pub user_name: String,
    pub room_name: String,
    /// Resume after this `_id`. `None` when absent, null or not a number (an id from an
    /// older system), as the protocol requires.
    pub last_message_id: Option<u64>,
    pub session_id: Option<String>,
    /// A signed token for this join (extension, v1.1); wins over the socket's own.
    pub token: Option<String>,
}

/// `textMessage` parameters, validated: exactly the documented ones that are stored and
/// delivered (`userId`, `roomName`, `userName`, `text`, `uuid`, `date`; the server sets `ack`
/// and `ts`). Anything else a client sends (a forged `type`, `_id`, `ts`, extra fields) is
/// dropped, so nothing rides along into the stream, the archive or other members' sockets.
#[derive(Debug, Clone, PartialEq)]
pub struct TextMessage {
    /// `userId` in its string form (a numeric id as its decimal text).
    pub user_id: String,
    pub user_name: String,
    pub room_name: String,
    pub uuid: String,
    pub text: String,
    /// `userId` as the client sent it (a string or a number): stored as sent.
    pub user_id_sent: Value,
    /// `date` as the client sent it (a number or a short string), when present.
    pub date: Option<Value>,
}

impl TextMessage {
    /// The params object that is stored and delivered, without the server's `ack` and `ts`
    /// ([`crate::frame::stored_text`] writes the same object straight to bytes).
    pub fn params(&self) -> Map<String, Value> {
        let mut out = Map::with_capacity(7);
        out.insert("userId".into(), self.user_id_sent.clone());
        out.insert("roomName".into(), Value::String(self.room_name.clone()));
        out.insert("userName".into(), Value::String(self.user_name.clone()));
        out.insert("text".into(), Value::String(self.text.clone()));
        out.insert("ack".into(), Value::Bool(false));
        out.insert("uuid".into(), Value::String(self.uuid.clone()));
        if let Some(d) = &self.date {
            out.insert("date".into(), d.clone());
        }
        out
    }
}

/// `getHistory` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetHistory {
    pub room_name: String,
    pub before: Option<u64>,
    pub limit: Option<u32>,
}

/// A request that must be answered with an error.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub id: Option<Value>,
    pub error: RpcError,
}

impl Request {
    /// Parse one text frame.
    pub fn parse(frame: &[u8], limits: &Limits) -> Result<Request, Rejection> {
        // The common request first, without a JSON tree; anything it does not take whole
        // (including every invalid request) goes the general way, which has the errors.
        if let Some(r) = crate::fast_text::parse(frame, limits) {
            return Ok(r);
        }
        let value: Value = serde_json::from_slice(frame).map_err(|e| Rejection {
            id: None,
            error: RpcError::new(ErrorCode::Parse, format!("parse error: {e}")),
        })?;
        let Value::Object(mut obj) = value else {
            return Err(Rejection {
                id: None,
                error: RpcError::invalid("request must be a JSON object"),
            });
        };
        let id = match obj.remove("id") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Number(_)) => Some(v),
            Some(Value::String(s)) if s.len() <= ID_MAX => Some(Value::String(s)),
            Some(_) => {
                return Err(Rejection {
                    id: None,
                    error: RpcError::invalid(format!(
                        "id must be a number or a string of at most {ID_MAX} bytes"
                    )),
                })
            }
        };
        let reject = |error: RpcError| Rejection {
            id: id.clone(),
            error,
        };
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(reject(RpcError::invalid("jsonrpc must be \"2.0\"")));
        }
        let method = match obj.get("method") {
            Some(Value::String(m)) => m.clone(),
            _ => return Err(reject(RpcError::invalid("method must be a string"))),
        };
        let params = match obj.remove("params") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(p)) => p,
            Some(_) => return Err(reject(RpcError::invalid("params must be an object"))),
        };
        let call = parse_call(&method, params, limits).map_err(reject)?;
        Ok(Request { id, call })
    }
}

fn parse_call(method: &str, p: Map<String, Value>, limits: &Limits) -> Result<Call, RpcError> {
    Ok(match method {
        "joinRoom" => Call::JoinRoom(parse_join(&p)?),
        "reconnect" => Call::Reconnect(parse_join(&p)?),
        "textMessage" => {
            let room_name = room_name(&p)?;
            let user_id = user_id(&p)?;
            let user_name = bounded_str(&p, "userName", USER_NAME_MAX)?;
            let uuid = bounded_str(&p, "uuid", UUID_MAX)?;
            let text = match p.get("text") {
                Some(Value::String(t)) => t,
                _ => return Err(RpcError::invalid("params.text must be a string")),
            };
            check_text(text, limits)?;
            let date = text_date(p.get("date"))?;
            Call::TextMessage(TextMessage {
                user_id,
                user_name,
                room_name,
                uuid,
                text: text.clone(),
                user_id_sent: p.get("userId").cloned().unwrap_or(Value::Null),
                date,
            })
        }
        "leaveRoom" => Call::LeaveRoom {
            room_name: room_name(&p)?,
        },
        "typing" => Call::Typing {
            room_name: room_name(&p)?,
        },
        "getHistory" => {
            let before = match p.get("before") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    message_id(v)
                        .ok_or_else(|| RpcError::invalid("params.before must be a message _id"))?,
                ),
            };
            let limit = match p.get("limit") {
                None | Some(Value::Null) => None,
                Some(v) => match v.as_u64() {
                    Some(n) if n >= 1 && n <= u64::from(limits.max_history_page) => Some(n as u32),
                    _ => {
                        return Err(RpcError::invalid(format!(
                            "params.limit must be an integer in 1..={}",
                            limits.max_history_page
                        )))
                    }
                },
            };
            Call::GetHistory(GetHistory {
                room_name: room_name(&p)?,
                before,
                limit,
            })
        }
        "ping" => Call::Ping,
        other => {
            let shown: String = other.chars().take(METHOD_ECHO_MAX).collect();
            return Err(RpcError::new(
                ErrorCode::MethodNotFound,
                format!("method not found: {shown}"),
            ));
        }
    })
}

fn parse_join(p: &Map<String, Value>) -> Result<Join, RpcError> {
    let session_id = match p.get("sessionId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= SESSION_ID_MAX => Some(s.clone()),
        Some(_) => {
            return Err(RpcError::invalid(format!(
                "params.sessionId must be a string of at most {SESSION_ID_MAX} bytes"
            )))
        }
    };
    let token = match p.get("token") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t.len() <= TOKEN_MAX => Some(t.clone()),
        Some(_) => {
            return Err(RpcError::invalid(format!(
                "params.token must be a string of at most {TOKEN_MAX} bytes"
            )))
        }
    };
    Ok(Join {
        user_id: user_id(p)?,
        user_name: bounded_str(p, "userName", USER_NAME_MAX)?,
        room_name: room_name(p)?,
        last_message_id: p.get("lastMessageId").and_then(message_id),
        session_id,
        token,
    })
}

/// A message `_id` as clients send it: a decimal string or a non-negative integer.
pub fn message_id(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s)
            if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

fn room_name(p: &Map<String, Value>) -> Result<String, RpcError> {
    bounded_str(p, "roomName", ROOM_NAME_MAX)
}

/// A `textMessage`'s `text`: not empty, within the configured limit.
pub(crate) fn check_text(text: &str, limits: &Limits) -> Result<(), RpcError> {
    if text.is_empty() {
        return Err(RpcError::invalid("params.text must not be empty"));
    }
    if text.len() > limits.max_text_bytes {
        return Err(RpcError::new(
            ErrorCode::TooLarge,
            format!(
                "params.text is {} bytes, the limit is {}",
                text.len(),
                limits.max_text_bytes
            ),
        ));
    }
    Ok(())
}

/// A `textMessage`'s optional `date`, kept as sent: absent or null, a number, or a string of
/// at most [`DATE_MAX`] bytes.
pub(crate) fn text_date(v: Option<&Value>) -> Result<Option<Value>, RpcError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Number(_)) => Ok(Some(v.clone())),
        Some(Value::String(d)) if d.len() <= DATE_MAX => Ok(Some(Value::String(d.clone()))),
        Some(_) => Err(RpcError::invalid(format!(
            "params.date must be a number or a string of at most {DATE_MAX} bytes"
        ))),
    }
}

fn user_id(p: &Map<String, Value>) -> Result<String, RpcError> {
    user_id_of(p.get("userId"))
}

/// A `userId` in its string form: a string, or a number as its decimal text; 1..=[`USER_ID_MAX`] bytes.
pub(crate) fn user_id_of(v: Option<&Value>) -> Result<String, RpcError> {
    let id = match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => {
            return Err(RpcError::invalid(
                "params.userId must be a string or a number",
            ))
        }
    };
    if id.is_empty() || id.len() > USER_ID_MAX {
        return Err(RpcError::invalid(format!(
            "params.userId must be 1..={USER_ID_MAX} bytes"
        )));
    }
    Ok(id)
}

fn bounded_str(p: &Map<String, Value>, key: &str, max: usize) -> Result<String, RpcError> {
    match p.get(key) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= max => Ok(s.clone()),
        Some(Value::String(_)) => Err(RpcError::invalid(format!(
            "params.{key} must be 1..={max} bytes"
        ))),
        _ => Err(RpcError::invalid(format!("params.{key} must be a string"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: &str) -> Result<Request, Rejection> {
        Request::parse(v.as_bytes(), &Limits::default())
    }

    fn code(r: Result<Request, Rejection>) -> (Option<Value>, i64) {
        let e = r.expect_err("should be rejected");
        (e.id, e.error.code.code())
    }

    #[test]
    fn join_with_and_without_last_id() {
        let r = parse(r#"{"jsonrpc":"2.0","method":"joinRoom","params":{"userId":"u1","userName":"Ann","roomName":"Tests Room"},"id":1}"#).unwrap();
        assert_eq!(r.id, Some(json!(1)));
        let Call::JoinRoom(j) = r.call else { panic!() };
        assert_eq!(j.room_name, "Tests Room");
        assert_eq!(j.last_message_id, None);

        for (last, want) in [
            (json!("42"), Some(42)),
            (json!(42), Some(42)),
            (json!("5f2a9c3e1b"), None), // an old Mongo ObjectId: treated as absent
            (json!(null), None),
            (json!(-1), None),
            (json!("99999999999999999999999"), None),
        ] {
            let f = json!({"jsonrpc":"2.0","method":"reconnect","params":{"userId":7,"userName":"Ann","roomName":"r","lastMessageId":last},"id":"x"});
            let r = parse(&f.to_string()).unwrap();
            let Call::Reconnect(j) = r.call else { panic!() };
            assert_eq!(j.last_message_id, want, "{last}");
            assert_eq!(j.user_id, "7");
        }
    }

    #[test]
    fn join_token_is_optional_and_bounded() {
        let r = parse(r#"{"jsonrpc":"2.0","method":"joinRoom","params":{"userId":"u1","userName":"Ann","roomName":"r","token":"a.b.c"},"id":1}"#).unwrap();
        let Call::JoinRoom(j) = r.call else { panic!() };
        assert_eq!(j.token.as_deref(), Some("a.b.c"));
        let r = parse(r#"{"jsonrpc":"2.0","method":"reconnect","params":{"userId":"u1","userName":"Ann","roomName":"r","token":null},"id":1}"#).unwrap();
        let Call::Reconnect(j) = r.call else { panic!() };
        assert_eq!(j.token, None);
        let f = json!({"jsonrpc":"2.0","method":"joinRoom","params":{"userId":"u1","userName":"Ann","roomName":"r","token":5},"id":1});
        assert_eq!(code(parse(&f.to_string())).1, -32600);
        let long = "t".repeat(TOKEN_MAX + 1);
        let f = json!({"jsonrpc":"2.0","method":"joinRoom","params":{"userId":"u1","userName":"Ann","roomName":"r","token":long},"id":1});
        assert_eq!(code(parse(&f.to_string())).1, -32600);
    }

    #[test]
    fn text_message_keeps_client_params_but_not_id() {
        let r = parse(r#"{"jsonrpc":"2.0","method":"textMessage","params":{"userId":"u","roomName":"r","userName":"n","text":"hi","ack":false,"uuid":"abc","date":1700000000000,"_id":"9"},"id":3}"#).unwrap();
        let Call::TextMessage(t) = r.call else {
            panic!()
        };
        assert_eq!(t.uuid, "abc");
        assert_eq!(t.params().get("date"), Some(&json!(1700000000000u64)));
        assert!(!t.params().contains_key("_id"));
    }

    #[test]
    fn rejects_with_precise_codes() {
        assert_eq!(code(parse("not json")), (None, -32700));
        assert_eq!(code(parse("[1,2]")), (None, -32600));
        assert_eq!(
            code(parse(r#"{"jsonrpc":"1.0","method":"ping","id":1}"#)),
            (Some(json!(1)), -32600)
        );
        assert_eq!(
            code(parse(r#"{"jsonrpc":"2.0","method":5,"id":1}"#)),
            (Some(json!(1)), -32600)
        );
        assert_eq!(
            code(parse(r#"{"jsonrpc":"2.0","method":"nope","id":"a"}"#)),
            (Some(json!("a")), -32002)
        );
        assert_eq!(
            code(parse(r#"{"jsonrpc":"2.0","method":"ping","id":{}}"#)),
            (None, -32600)
        );
        assert_eq!(
            code(parse(
                r#"{"jsonrpc":"2.0","method":"joinRoom","params":[],"id":1}"#
            ))
            .1,
            -32600
        );
        assert_eq!(code(parse(r#"{"jsonrpc":"2.0","method":"joinRoom","params":{"userId":"u","userName":"","roomName":"r"},"id":1}"#)).1, -32600);
        assert_eq!(code(parse(r#"{"jsonrpc":"2.0","method":"joinRoom","params":{"userId":"u","userName":1,"roomName":"r"},"id":1}"#)).1, -32600);
        let long_room = "r".repeat(ROOM_NAME_MAX + 1);
        let f = json!({"jsonrpc":"2.0","method":"joinRoom","params":{"userId":"u","userName":"n","roomName":long_room},"id":1});
        assert_eq!(code(parse(&f.to_string())).1, -32600);
        let big = "x".repeat(Limits::default().max_text_bytes + 1);
        let f = json!({"jsonrpc":"2.0","method":"textMessage","params":{"userId":"u","userName":"n","roomName":"r","text":big,"uuid":"1"},"id":1});
        assert_eq!(code(parse(&f.to_string())).1, -32006);
        let f = json!({"jsonrpc":"2.0","method":"textMessage","params":{"userId":"u","userName":"n","roomName":"r","text":"hi"},"id":1});
        assert_eq!(code(parse(&f.to_string())).1, -32600, "uuid is required");
        let f = json!({"jsonrpc":"2.0","method":"getHistory","params":{"roomName":"r","limit":0},"id":1});
        assert_eq!(code(parse(&f.to_string())).1, -32600);
        let f = json!({"jsonrpc":"2.0","method":"getHistory","params":{"roomName":"r","before":"abc"},"id":1});
        assert_eq!(code(parse(&f.to_string())).1, -32600);
    }

    #[test]
    fn method_name_in_error_is_bounded() {
        let m = "m".repeat(1000);
        let f = json!({"jsonrpc":"2.0","method":m,"id":1});
        let e = parse(&f.to_string()).unwrap_err();
        assert!(e.error.message.len() < 100);
    }

    #[test]
    fn ping_needs_no_params() {
        let r = parse(r#"{"jsonrpc":"2.0","method":"ping","id":9}"#).unwrap();
        assert_eq!(r.call, Call::Ping);
    }

    #[test]
    fn a_text_message_stores_only_the_documented_params() {
        let r = parse(
            r#"{"jsonrpc":"2.0","method":"textMessage","id":1,"params":{"userId":"u","roomName":"r","userName":"n","text":"hi","ack":true,"uuid":"x","date":"2026-01-01","type":"system","_id":"5","ts":"forged","extra":{"big":[1,2,3]}}}"#,
        )
        .unwrap();
        let Call::TextMessage(t) = r.call else {
            panic!("not a text message")
        };
        let params = t.params();
        let keys: Vec<&str> = params.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            vec!["ack", "date", "roomName", "text", "userId", "userName", "uuid"]
        );
        assert_eq!(params["ack"], json!(false), "the server sets ack");
        assert_eq!(params["date"], json!("2026-01-01"));
    }

    #[test]
    fn a_text_message_date_is_a_number_or_a_short_string() {
        let with_date = |d: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","method":"textMessage","id":1,"params":{{"userId":"u","roomName":"r","userName":"n","text":"hi","uuid":"x","date":{d}}}}}"#
            )
        };
        assert!(parse(&with_date("1700000000000")).is_ok());
        assert!(parse(&with_date("null")).is_ok());
        assert_eq!(code(parse(&with_date("{}"))).1, -32600);
        let long = format!("\"{}\"", "d".repeat(DATE_MAX + 1));
        assert_eq!(code(parse(&with_date(&long))).1, -32600);
    }

    #[test]
    fn a_string_id_is_bounded() {
        let long = "i".repeat(ID_MAX + 1);
        let f = format!(r#"{{"jsonrpc":"2.0","method":"ping","id":"{long}"}}"#);
        assert_eq!(code(parse(&f)), (None, -32600));
        let ok = format!(
            r#"{{"jsonrpc":"2.0","method":"ping","id":"{}"}}"#,
            &long[1..]
        );
        assert!(parse(&ok).is_ok());
    }
}
