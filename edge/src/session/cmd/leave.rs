//! `leaveRoom {roomName}`: leave a room on this socket; when it was the user's last session
//! under that name, the name is free and the room is told (`userLeft`).

use serde_json::{json, Value};

use super::not_joined;
use crate::presence::Released;
use crate::session::{announce_left, Session};

impl Session {
    pub(super) async fn leave(&mut self, id: Option<Value>, room: &str) -> bool {
        let Some(j) = self.joined.lock().remove(room) else {
            return self.reply_error(id.as_ref(), not_joined(room)).await;
        };
        self.node.rooms.leave(&j.membership);
        if self.node.presence.release(&j.session_key).await == Released::Freed {
            announce_left(&self.node, &j).await;
        }
        self.reply(id.as_ref(), json!("OK")).await
    }
}
