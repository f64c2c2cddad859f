//! `joinRoom` and `reconnect`: check the token, claim the name, join the room at a seam,
//! answer `OK`, send `welcome`, replay history up to the seam, go live, and (on a fresh join
//! that made the name held) tell the room.

use natter_auth::AuthMode;
use natter_protocol::request::Join;
use natter_protocol::{frame, token, ErrorCode, RpcError};
use serde_json::{json, Value};
use tracing::{debug, warn};

use crate::catchup;
use crate::outbox::CloseReason;
use crate::presence::{PresenceError, Released};
use crate::session::joined::Joined;
use crate::session::{announce_left, Session};

impl Session {
    pub(super) async fn join(&mut self, id: Option<Value>, j: Join, reconnect: bool) -> bool {
        let node = self.node.clone();
        let failed = if reconnect {
            ErrorCode::ReconnectFailed
        } else {
            ErrorCode::JoinFailed
        };
        let id = id.as_ref();
        if let Err(why) = self.authorize(&j) {
            debug!(room = %j.room_name, reason = %why, "join refused: unauthorized");
            return self
                .reply_error(id, RpcError::new(ErrorCode::Unauthorized, why))
                .await;
        }
        // Joining a room this socket is already in (same user) restarts its catch-up. Under
        // the same name the session's presence key is claimed again (`rejoined`: the old
        // entry, given back if the new join fails).
        let existing = self.joined.lock().remove(&j.room_name);
        let mut rejoined = None;
        if let Some(e) = existing {
            if e.user_id != j.user_id {
                self.joined.lock().insert(j.room_name.clone(), e);
                let err = RpcError::new(
                    ErrorCode::Unauthorized,
                    "this socket is in the room as another userId",
                );
                return self.reply_error(id, err).await;
            }
            node.rooms.leave(&e.membership);
            if e.user_name == j.user_name {
                rejoined = Some(e);
            } else if node.presence.release(&e.session_key).await == Released::Freed {
                announce_left(&node, &e).await;
            }
        }
        let max_rooms = node.config.max_rooms_per_socket;
        if self.joined.lock().len() >= max_rooms {
            let err =
                RpcError::invalid(format!("too many rooms on this socket (limit {max_rooms})"));
            return self.reply_error(id, err).await;
        }
        let room_token = token::encode(&j.room_name);
        let user_token = token::encode(&j.user_name);
        let claim = node
            .presence
            .claim(
                &room_token,
                &user_token,
                &j.user_id,
                &j.user_name,
                &self.id,
                &self.outbox,
            )
            .await;
        if let (Err(_), Some(old)) = (&claim, &rejoined) {
            // The socket is out of the room now: nothing may keep its old hold alive.
            if node.presence.release(&old.session_key).await == Released::Freed {
                announce_left(&node, old).await;
            }
        }
        let claimed = match claim {
            Ok(c) => c,
            Err(PresenceError::Taken) => {
                let msg = format!(
                    "user name {:?} is already taken in room {:?}",
                    j.user_name, j.room_name
                );
                return self
                    .reply_error(id, RpcError::new(ErrorCode::NameTaken, msg))
                    .await;
            }
            Err(e @ PresenceError::Unavailable(_)) => {
                warn!(error = %e, "join failed");
                return self
                    .reply_error(id, RpcError::new(failed, format!("{e}; retry")))
                    .await;
            }
        };
        if !claimed.first && rejoined.is_none() {
            // Another session of the same userId holds the name too (tabs, devices, a
            // reconnect racing a half-open socket): both stay.
            node.metrics.shared_names.inc();
        }
        let member_id = node.next_member_id();
        let joined = node
            .rooms
            .join(
                &j.room_name,
                member_id,
                self.outbox.clone(),
                user_token.clone(),
            )
            .await;
        let membership = match joined {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "join failed");
                if node.presence.release(&claimed.session_key).await == Released::Freed {
                    if let Some(old) = &rejoined {
                        announce_left(&node, old).await;
                    }
                }
                return self
                    .reply_error(id, RpcError::new(failed, format!("{e}; retry")))
                    .await;
            }
        };
        let room = membership.room.clone();
        let seam = membership.seam;
        self.joined.lock().insert(
            j.room_name.clone(),
            Joined {
                membership,
                user_id: j.user_id.clone(),
                user_name: j.user_name.clone(),
                user_token: user_token.clone(),
                session_key: claimed.session_key,
            },
        );
        if !self.reply(id, json!("OK")).await {
            return false;
        }
        let members = node.presence.members(&room_token).await;
        let welcome = frame::notification(
            "welcome",
            json!({"sessionId": self.id, "node": node.name, "roomName": j.room_name, "members": members,
                   "lastMessageId": (seam > 0).then(|| seam.to_string())}),
        );
        if !self.send(welcome).await {
            return false;
        }
        match catchup::replay(&node, &self.outbox, &room, j.last_message_id, seam).await {
            Ok(_) => {}
            Err(catchup::CatchupError::SocketGone) => return false,
            Err(e) => {
                warn!(error = %e, "history replay failed; asking the client to resume");
                self.outbox.close(CloseReason::Resync);
                return true;
            }
        }
        room.go_live(member_id, node.rooms.deps());
        if !reconnect && claimed.first {
            let note = frame::notification(
                "newUser",
                json!({"type": "system", "text": format!("{} has joined the room!", j.user_name),
                       "roomName": j.room_name, "userName": j.user_name,
                       "uuid": uuid::Uuid::new_v4().to_string()}),
            );
            node.publish_event(&room.live_subject, "newUser", &user_token, note)
                .await;
        }
        true
    }
}

impl Session {
    /// Whether the token for this join (its own, else the upgrade's) lets it through; the
    /// reason for the client when not.
    fn authorize(&self, j: &Join) -> Result<(), String> {
        let verifier = &self.node.verifier;
        if verifier.mode() == AuthMode::Off {
            return Ok(());
        }
        let (token, from) = match (&j.token, &self.upgrade_token) {
            (Some(t), _) => (t, "params.token"),
            (None, Some(t)) => (t, "the upgrade request's token"),
            (None, None) if verifier.mode() == AuthMode::Required => {
                return Err("a token is required: send params.token, or connect with \
                            Authorization: Bearer <jwt> or ?token=<jwt>"
                    .into())
            }
            (None, None) => return Ok(()),
        };
        let claims = verifier.verify(token).map_err(|e| format!("{from}: {e}"))?;
        if claims.sub != j.user_id {
            return Err(format!(
                "{from} is for userId {:?}, not {:?}",
                claims.sub, j.user_id
            ));
        }
        if !claims.allows_name(&j.user_name) {
            return Err(format!(
                "{from} allows only the user name {:?}, not {:?}",
                claims.name.as_deref().unwrap_or_default(),
                j.user_name
            ));
        }
        if !claims.allows_room(&j.room_name) {
            return Err(format!("{from} does not allow room {:?}", j.room_name));
        }
        Ok(())
    }
}
