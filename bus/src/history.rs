//! The history service contract: request/reply on `history.<room token>` (queue group
//! [`crate::subjects::HISTORY_QUEUE`]), answered by the archiver from Postgres, asked by
//! edges for ranges the stream no longer holds.
//!
//! Messages travel as the stored object (the JSON-RPC message without `_id`) plus its `seq`,
//! so the edge delivers them exactly like live ones, splicing `_id` in once.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Largest page a responder returns, whatever `limit` asks.
pub const MAX_PAGE: u32 = 1000;

/// What an edge asks for. `_id`s are stream sequences.
///
/// - `after` only: messages with `_id > after`, oldest first (catch-up).
/// - `before` only: the newest messages with `_id < before` (paging back).
/// - both: messages with `after < _id < before`, oldest first.
/// - neither: the newest messages of the room.
///
/// At most `min(limit, MAX_PAGE)` messages; replies are always in ascending `_id` order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistoryRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    pub limit: u32,
}

/// One archived message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryItem {
    pub seq: u64,
    /// The stored message object, without `_id`.
    pub msg: Box<RawValue>,
}

/// The answer. `more` says whether messages exist beyond the page in the direction read
/// (newer ones for `after` reads, older ones for `before`/newest reads). `error` is set
/// (and `messages` empty) when the responder could not answer, e.g. the database is down.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct HistoryReply {
    pub messages: Vec<HistoryItem>,
    pub more: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let req = HistoryRequest {
            after: Some(5),
            before: None,
            limit: 10,
        };
        let s = serde_json::to_string(&req).unwrap();
        assert_eq!(s, r#"{"after":5,"limit":10}"#);
        let reply: HistoryReply = serde_json::from_str(
            r#"{"messages":[{"seq":6,"msg":{"jsonrpc":"2.0","params":{"text":"x"}}}],"more":true}"#,
        )
        .unwrap();
        assert_eq!(reply.messages[0].seq, 6);
        assert_eq!(
            reply.messages[0].msg.get(),
            r#"{"jsonrpc":"2.0","params":{"text":"x"}}"#
        );
        assert!(reply.more && reply.error.is_none());
    }
}
