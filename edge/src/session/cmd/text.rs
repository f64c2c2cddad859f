//! `textMessage`: store the message in the stream (dedupe by uuid); the room's echo is the
//! sender's acknowledgement, a failed store a `-32010` (see [`crate::session::acks`]).

use std::time::Instant;

use async_nats::jetstream::message::PublishMessage;
use natter_bus::subjects;
use natter_protocol::request::TextMessage;
use natter_protocol::{frame, ErrorCode, RpcError};
use serde_json::Value;
use tracing::warn;

use super::not_joined;
use crate::session::acks::{self, PendingAck};
use crate::session::Session;

impl Session {
    pub(super) async fn text(&mut self, id: Option<Value>, t: TextMessage) -> bool {
        let target = match self.joined.lock().get(&t.room_name) {
            None => Err(not_joined(&t.room_name)),
            Some(j) if j.user_id != t.user_id || j.user_name != t.user_name => Err(RpcError::new(
                ErrorCode::Unauthorized,
                "userId/userName do not match the ones this socket joined with",
            )),
            Some(j) => Ok((
                j.membership.room.subject.clone(),
                j.membership.room.token.clone(),
            )),
        };
        let (subject, room_token) = match target {
            Ok(t) => t,
            Err(e) => return self.reply_error(id.as_ref(), e).await,
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
            return self.reply_error(id.as_ref(), err).await;
        }
        let publish = PublishMessage::build()
            .payload(stored)
            .message_id(subjects::msg_id(&room_token, &t.uuid));
        let sent = Instant::now();
        let node = self.node.clone();
        match node.js.send_publish(subject, publish).await {
            Ok(ack) => {
                node.metrics.messages_in.inc();
                let acks = self
                    .acks
                    .get_or_insert_with(|| acks::spawn(node.clone(), self.outbox.clone()));
                // Backpressure: a client with too many unacknowledged publishes waits here.
                acks.send(PendingAck { ack, id, sent }).await.is_ok()
            }
            Err(e) => {
                warn!(error = %e, "publish failed");
                node.metrics.publish_errors.inc();
                self.reply_error(id.as_ref(), acks::unavailable()).await
            }
        }
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
