//! The message object that comes with an upload (`imageMessage` / `fileMessage`), its
//! validation, and the stored form announced to the room.
//!
//! The object is the JSON-RPC request an older GroupChat client would have sent over its
//! socket: `{"jsonrpc":"2.0","method":M,"params":{userId, userName, roomName, uuid, ...},"id":N}`.
//! The client's params are kept as they are, except for the payload field (emptied: the
//! content lives in the filestore), `_id` (assigned by the stream), and `ack`/`ts` (set by
//! the server in [`UploadMessage::stored`]).

use natter_protocol::request::{ROOM_NAME_MAX, USER_ID_MAX, USER_NAME_MAX, UUID_MAX};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Which upload a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Image,
    File,
}

impl MessageKind {
    pub fn method(self) -> &'static str {
        match self {
            MessageKind::Image => "imageMessage",
            MessageKind::File => "fileMessage",
        }
    }

    /// The params field that carries the content in the older protocol.
    pub fn payload_field(self) -> &'static str {
        match self {
            MessageKind::Image => "base64ImgString",
            MessageKind::File => "fileContents",
        }
    }
}

/// A validated upload message.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadMessage {
    pub kind: MessageKind,
    /// The client's request id, echoed in the stored message.
    pub id: Option<Value>,
    pub uuid: String,
    pub room: String,
    /// The client's params with the payload emptied and `_id` removed.
    pub params: Map<String, Value>,
}

/// Whether `uuid` is acceptable: 1..=64 bytes of visible ASCII. (It names the upload in
/// URLs and in the `Nats-Msg-Id` header; on disk it is always hex-encoded.)
pub fn valid_uuid(uuid: &str) -> bool {
    !uuid.is_empty() && uuid.len() <= UUID_MAX && uuid.bytes().all(|b| b.is_ascii_graphic())
}

impl UploadMessage {
    /// Validate a parsed message object. The payload field is taken out of the params
    /// (emptied) and returned separately when it is present.
    pub fn from_value(
        kind: MessageKind,
        value: Value,
    ) -> Result<(UploadMessage, Option<Value>), ApiError> {
        let Value::Object(mut obj) = value else {
            return Err(ApiError::invalid("the message must be a JSON object"));
        };
        if let Some(v) = obj.get("jsonrpc") {
            if v != "2.0" {
                return Err(ApiError::invalid("jsonrpc must be \"2.0\""));
            }
        }
        match obj.get("method") {
            None | Some(Value::Null) => {}
            Some(Value::String(m)) if m == kind.method() => {}
            Some(_) => {
                return Err(ApiError::invalid(format!(
                    "method must be \"{}\"",
                    kind.method()
                )));
            }
        }
        let id = match obj.remove("id") {
            None | Some(Value::Null) => None,
            Some(v @ (Value::Number(_) | Value::String(_))) => Some(v),
            Some(_) => return Err(ApiError::invalid("id must be a number or a string")),
        };
        let mut params = match obj.remove("params") {
            Some(Value::Object(p)) => p,
            _ => return Err(ApiError::invalid("params must be an object")),
        };
        let room = bounded_str(&params, "roomName", ROOM_NAME_MAX)?;
        bounded_str(&params, "userName", USER_NAME_MAX)?;
        match params.get("userId") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= USER_ID_MAX => {}
            Some(Value::Number(n)) if n.to_string().len() <= USER_ID_MAX => {}
            _ => {
                return Err(ApiError::invalid(format!(
                    "params.userId must be a string of 1..={USER_ID_MAX} bytes or a number"
                )))
            }
        }
        let uuid = match params.get("uuid") {
            Some(Value::String(u)) if valid_uuid(u) => u.clone(),
            _ => {
                return Err(ApiError::invalid(format!(
                    "params.uuid must be 1..={UUID_MAX} bytes of visible ASCII"
                )))
            }
        };
        params.remove("_id");
        let payload = params.insert(
            kind.payload_field().to_owned(),
            Value::String(String::new()),
        );
        Ok((
            UploadMessage {
                kind,
                id,
                uuid,
                room,
                params,
            },
            payload,
        ))
    }

    /// Parse and validate message JSON text.
    pub fn parse(
        kind: MessageKind,
        text: &[u8],
    ) -> Result<(UploadMessage, Option<Value>), ApiError> {
        let value: Value =
            serde_json::from_slice(text).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
        UploadMessage::from_value(kind, value)
    }

    /// A string param, if present; `None` when absent or null.
    pub fn str_param(&self, key: &str) -> Result<Option<&str>, ApiError> {
        match self.params.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::invalid(format!("params.{key} must be a string"))),
        }
    }

    /// The stored message published to the room (without `_id`), stamped at `ts`.
    pub fn stored(&self, ts: &str) -> String {
        let bytes = natter_protocol::frame::stored_message(
            self.kind.method(),
            self.id.as_ref(),
            self.params.clone(),
            ts,
        );
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

fn bounded_str(p: &Map<String, Value>, key: &str, max: usize) -> Result<String, ApiError> {
    match p.get(key) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= max => Ok(s.clone()),
        _ => Err(ApiError::invalid(format!(
            "params.{key} must be a string of 1..={max} bytes"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(params: Value) -> Value {
        json!({"jsonrpc":"2.0","method":"fileMessage","params":params,"id":3})
    }

    #[test]
    fn keeps_client_params_and_empties_payload() {
        let v = msg(
            json!({"userId":7,"userName":"Ann","roomName":"Tests Room","uuid":"u-1",
            "fileName":"a.txt","fileContents":"xyz","_id":"99","ack":false}),
        );
        let (m, payload) = UploadMessage::from_value(MessageKind::File, v).unwrap();
        assert_eq!(payload, Some(json!("xyz")));
        assert_eq!(m.uuid, "u-1");
        assert_eq!(m.room, "Tests Room");
        assert_eq!(m.str_param("fileName").unwrap(), Some("a.txt"));
        let stored: Value = serde_json::from_str(&m.stored("2026-01-01T00:00:00Z")).unwrap();
        assert_eq!(stored["method"], json!("fileMessage"));
        assert_eq!(stored["id"], json!(3));
        assert_eq!(stored["params"]["fileContents"], json!(""));
        assert_eq!(stored["params"]["ack"], json!(true));
        assert_eq!(stored["params"]["ts"], json!("2026-01-01T00:00:00Z"));
        assert_eq!(stored["params"]["userId"], json!(7));
        assert!(stored.get("_id").is_none() && stored["params"].get("_id").is_none());
    }

    #[test]
    fn rejects_what_cannot_be_stored() {
        let ok = json!({"userId":"u","userName":"n","roomName":"r","uuid":"x"});
        assert!(UploadMessage::from_value(MessageKind::File, msg(ok.clone())).is_ok());
        for (key, bad) in [
            ("uuid", json!(null)),
            ("uuid", json!("")),
            ("uuid", json!("a b")),
            ("uuid", json!("x\n")),
            ("uuid", json!("u".repeat(65))),
            ("uuid", json!(5)),
            ("roomName", json!(null)),
            ("roomName", json!("r".repeat(129))),
            ("userName", json!("")),
            ("userId", json!([])),
        ] {
            let mut p = ok.clone();
            if bad.is_null() {
                p.as_object_mut().unwrap().remove(key);
            } else {
                p[key] = bad.clone();
            }
            let e = UploadMessage::from_value(MessageKind::File, msg(p)).unwrap_err();
            assert_eq!(e.reason(), "invalid_message", "{key}={bad}");
        }
        let wrong_method = json!({"method":"imageMessage","params":ok});
        assert!(UploadMessage::from_value(MessageKind::File, wrong_method).is_err());
        assert!(UploadMessage::from_value(MessageKind::File, json!([1])).is_err());
        assert_eq!(
            UploadMessage::parse(MessageKind::File, b"{")
                .unwrap_err()
                .reason(),
            "malformed_json"
        );
    }
}
