//! `textMessage`: store the message in the stream (dedupe by uuid); the room's echo is the
//! sender's acknowledgement, a failed store a `-32010` (see [`crate::publish`]).

use natter_bus::subjects;
use natter_protocol::request::TextMessage;
use natter_protocol::{frame, ErrorCode, RpcError};
use serde_json::Value;
use tracing::warn;

use super::not_joined;
use super::Later;
use crate::publish::{unavailable, Outgoing, SocketSlots};
use crate::session::Session;

impl Session {
    /// Check and publish a message; `Err` when its answer or its publish has to wait.
    pub(super) fn text_now(&mut self, id: Option<Value>, t: TextMessage) -> Result<bool, Later> {
        let target = match self.joined.lock().get(&t.room_name) {
            None => Err(not_joined(&t.room_name)),
            Some(j) if j.user_id != t.user_id || j.user_name != t.user_name => Err(RpcError::new(
                ErrorCode::Unauthorized,
                "userId/userName do not match the ones this socket joined with",
            )),
            Some(j) => Ok((
                j.membership.room.subject.clone(),
                subjects::msg_id(&j.membership.room.token, &t.uuid),
            )),
        };
        let (subject, msg_id) = match target {
            Ok(t) => t,
            Err(e) => return Err(Later::Reply(id, e)),
        };
        let stored = frame::stored_text(id.as_ref(), &t, &now_rfc3339());
        let max = self.node.config.max_message_bytes;
        if stored.len() > max {
            let err = RpcError::new(
                ErrorCode::TooLarge,
                format!(
                    "the message would be stored as {} bytes, the limit is {max}; nothing was published",
                    stored.len()
                ),
            );
            return Err(Later::Reply(id, err));
        }
        let msg = Outgoing {
            subject,
            payload: stored,
            msg_id,
            request_id: id,
        };
        let slots = self.slots.get_or_insert_with(SocketSlots::default);
        match self.node.publisher.try_publish(slots, &self.outbox, msg) {
            Ok(()) => Ok(true),
            Err(msg) => Err(Later::Publish(msg)),
        }
    }

    /// Publish a message that had to wait (backpressure: a client with too many publishes
    /// awaiting the stream waits here).
    pub(super) async fn publish_waiting(&mut self, msg: Outgoing) -> bool {
        let node = self.node.clone();
        let slots = self.slots.get_or_insert_with(SocketSlots::default);
        match node.publisher.publish(slots, &self.outbox, msg).await {
            Ok(()) => true,
            Err(id) => {
                warn!("publish failed: the publisher is closed");
                node.metrics.publish_errors.inc();
                self.reply_error(id.as_ref(), unavailable()).await
            }
        }
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
