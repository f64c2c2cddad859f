//! `getHistory {roomName, before?, limit?}`: a page of older messages, for scroll-back.

use natter_protocol::request::GetHistory;
use natter_protocol::{ErrorCode, RpcError};
use serde_json::Value;
use tracing::warn;

use super::not_joined;
use crate::catchup;
use crate::session::Session;

impl Session {
    pub(super) async fn history(&mut self, id: Option<Value>, g: GetHistory) -> bool {
        let room = self
            .joined
            .lock()
            .get(&g.room_name)
            .map(|j| j.membership.room.clone());
        let Some(room) = room else {
            return self
                .reply_error(id.as_ref(), not_joined(&g.room_name))
                .await;
        };
        let limit = g.limit.unwrap_or(self.node.config.history_page).max(1) as usize;
        match catchup::history_page(&self.node, &room, id.as_ref(), g.before, limit).await {
            Ok(f) => self.send(f).await,
            Err(e) => {
                warn!(error = %e, "getHistory failed");
                let err = RpcError::new(
                    ErrorCode::Unavailable,
                    "history temporarily unavailable; retry",
                );
                self.reply_error(id.as_ref(), err).await
            }
        }
    }
}
