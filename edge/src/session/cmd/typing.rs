//! `typing {roomName}`: an ephemeral notice to the room's other members, never stored.

use natter_protocol::frame;
use serde_json::{json, Value};

use super::not_joined;
use crate::session::Session;

impl Session {
    pub(super) async fn typing(&mut self, id: Option<Value>, room: &str) -> bool {
        let target = self.joined.lock().get(room).map(|j| {
            (
                j.membership.room.live_subject.clone(),
                j.user_token.clone(),
                j.user_name.clone(),
            )
        });
        let Some((live, user_token, user_name)) = target else {
            return self.reply_error(id.as_ref(), not_joined(room)).await;
        };
        let note = frame::notification("typing", json!({"roomName": room, "userName": user_name}));
        self.node
            .publish_event(&live, "typing", &user_token, note)
            .await;
        match id {
            Some(id) => self.reply(Some(&id), json!("OK")).await,
            None => true,
        }
    }
}
