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

use natter_protocol::request::{GetHistory, Join};
use natter_protocol::{Call, ErrorCode, Request, RpcError};
use serde_json::{json, Value};
use tracing::debug;

use super::Session;
use crate::publish::Outgoing;

/// What is left of a request once the part that needs no waiting has run.
pub(super) enum Later {
    /// Answer with this error.
    Reply(Option<Value>, RpcError),
    /// A message that must wait for a publish slot (of its socket or of the edge).
    Publish(Outgoing),
    Ping(Option<Value>),
    Join(Option<Value>, Box<Join>, bool),
    Leave(Option<Value>, String),
    Typing(Option<Value>, String),
    History(Option<Value>, Box<GetHistory>),
}

impl Session {
    /// Run what of one request needs no waiting: parse it, apply the rate limit and, for a
    /// `textMessage`, publish it when nothing has to wait (the common case, which then costs
    /// no future). `Err` is the rest, for [`Session::handle_later`].
    pub(super) fn handle_now(&mut self, data: &[u8]) -> Result<bool, Later> {
        let req = match Request::parse(data, &self.node.limits) {
            Ok(r) => r,
            Err(rej) => {
                debug!(code = rej.error.code.code(), message = %rej.error.message, "bad request");
                return Err(Later::Reply(rej.id, rej.error));
            }
        };
        if !self.rate.take() {
            self.node.metrics.rate_limited.inc();
            let err = RpcError::new(
                ErrorCode::RateLimited,
                "rate limited: slow down; nothing was published",
            );
            return Err(Later::Reply(req.id, err));
        }
        let id = req.id;
        Err(match req.call {
            Call::TextMessage(t) => return self.text_now(id, t),
            Call::Ping => Later::Ping(id),
            Call::JoinRoom(j) => Later::Join(id, Box::new(j), false),
            Call::Reconnect(j) => Later::Join(id, Box::new(j), true),
            Call::LeaveRoom { room_name } => Later::Leave(id, room_name),
            Call::Typing { room_name } => Later::Typing(id, room_name),
            Call::GetHistory(g) => Later::History(id, Box::new(g)),
        })
    }

    /// The rest of a request; false when the socket is gone. The caller boxes this future
    /// so that the socket's long-lived task stays small (it exists for every idle
    /// connection), and the rarer, larger commands box their own.
    pub(super) async fn handle_later(&mut self, later: Later) -> bool {
        match later {
            Later::Reply(id, err) => self.reply_error(id.as_ref(), err).await,
            Later::Publish(msg) => self.publish_waiting(msg).await,
            Later::Ping(id) => self.reply(id.as_ref(), json!("pong")).await,
            Later::Join(id, j, reconnect) => Box::pin(self.join(id, *j, reconnect)).await,
            Later::Leave(id, room) => Box::pin(self.leave(id, &room)).await,
            Later::Typing(id, room) => self.typing(id, &room).await,
            Later::History(id, g) => Box::pin(self.history(id, *g)).await,
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
