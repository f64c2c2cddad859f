//! The requests a client can make, one module each, and the dispatch that parses a
//! message, applies the rate limit and hands it to its command.
//!
//! Every command returns `false` only when the socket is gone; a refused request gets its
//! error response and the socket goes on.

mod history;
mod join;
mod leave;
mod text;
mod typing;

use natter_protocol::{Call, ErrorCode, Request, RpcError};
use serde_json::json;
use tracing::debug;

use super::Session;

impl Session {
    /// Handle one request; false when the socket is gone.
    pub(super) async fn handle(&mut self, data: &[u8]) -> bool {
        let req = match Request::parse(data, &self.node.limits) {
            Ok(r) => r,
            Err(rej) => {
                debug!(code = rej.error.code.code(), message = %rej.error.message, "bad request");
                return self.reply_error(rej.id.as_ref(), rej.error).await;
            }
        };
        if !self.rate.take() {
            self.node.metrics.rate_limited.inc();
            let err = RpcError::new(
                ErrorCode::RateLimited,
                "rate limited: slow down; nothing was published",
            );
            return self.reply_error(req.id.as_ref(), err).await;
        }
        let id = req.id;
        match req.call {
            Call::Ping => self.reply(id.as_ref(), json!("pong")).await,
            // The rarer, larger request futures are boxed so that the socket's long-lived
            // reader task stays small (it exists for every idle connection).
            Call::JoinRoom(j) => Box::pin(self.join(id, j, false)).await,
            Call::Reconnect(j) => Box::pin(self.join(id, j, true)).await,
            Call::TextMessage(t) => self.text(id, t).await,
            Call::LeaveRoom { room_name } => Box::pin(self.leave(id, &room_name)).await,
            Call::Typing { room_name } => self.typing(id, &room_name).await,
            Call::GetHistory(g) => Box::pin(self.history(id, g)).await,
        }
    }
}

/// The error for a request naming a room this socket has not joined.
fn not_joined(room: &str) -> RpcError {
    RpcError::new(
        ErrorCode::NotJoined,
        format!("room {room:?} is not joined on this socket"),
    )
}
