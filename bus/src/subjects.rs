//! Subject names and header names. Room and user parts are always subject tokens
//! (`natter_protocol::token`), never raw names.

/// The stream that holds every stored room message.
pub const STREAM: &str = "CHAT";
/// The KV bucket of user names held per room.
pub const PRESENCE_BUCKET: &str = "presence";
/// The KV bucket of edge leases: one key per running edge, which holds its presence entries.
pub const LEASES_BUCKET: &str = "presence-leases";

/// Header naming an ephemeral room event (`typing`, `newUser`, `userLeft`) on a live subject.
pub const HDR_EVENT: &str = "Natter-Event";
/// Header with the user token an ephemeral event is about (its sender does not get it back).
pub const HDR_USER: &str = "Natter-User";
/// Headers JetStream puts on republished and direct-get messages.
pub const HDR_SEQUENCE: &str = "Nats-Sequence";
pub const HDR_LAST_SEQUENCE: &str = "Nats-Last-Sequence";
pub const HDR_TIME_STAMP: &str = "Nats-Time-Stamp";
pub const HDR_SUBJECT: &str = "Nats-Subject";

/// Where a room's stored messages are published (captured by `CHAT`).
pub fn room(token: &str) -> String {
    format!("room.{token}")
}

/// Where `CHAT` republishes a room's stored messages, and where ephemeral room events
/// travel, so that one subscription per (edge, room) carries everything a member sees.
pub fn live(token: &str) -> String {
    format!("live.room.{token}")
}

/// Request/reply subject of the archiver's history service for a room.
pub fn history(token: &str) -> String {
    format!("history.{token}")
}

/// Queue group shared by history responders.
pub const HISTORY_QUEUE: &str = "natter-history";

/// The `Nats-Msg-Id` of a room message: deduplication is per room, like the archive's
/// `(room, uuid)` constraint, so one room's uuid can never shadow another's.
pub fn msg_id(room_token: &str, uuid: &str) -> String {
    format!("{room_token}:{uuid}")
}

/// The KV key of a user name in a room (its owner: which userId holds it).
pub fn presence_owner_key(room_token: &str, user_token: &str) -> String {
    format!("{room_token}.{user_token}")
}

/// The KV key of one session joined under a user name in a room. Session ids are made
/// subject-safe, so the key always has exactly one more token than the owner key.
pub fn presence_session_key(room_token: &str, user_token: &str, session_id: &str) -> String {
    format!("{room_token}.{user_token}.{}", subject_safe(session_id))
}

/// The KV subject filter matching every name held in a room (owner keys only: `*` is
/// exactly one token, so session keys do not match).
pub fn presence_room_filter(room_token: &str) -> String {
    format!("$KV.{PRESENCE_BUCKET}.{room_token}.*")
}

/// The KV subject filter matching every session joined under one name in a room.
pub fn presence_sessions_filter(room_token: &str, user_token: &str) -> String {
    format!("$KV.{PRESENCE_BUCKET}.{room_token}.{user_token}.*")
}

/// The KV key a `$KV.<bucket>.` subject stands for.
pub fn presence_key_of_subject(subject: &str) -> Option<&str> {
    subject
        .strip_prefix("$KV.")?
        .strip_prefix(PRESENCE_BUCKET)?
        .strip_prefix('.')
}

/// `s` with every character that is not `[A-Za-z0-9_-]` replaced by `_`.
pub fn subject_safe(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() {
        "_".into()
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(room("abc"), "room.abc");
        assert_eq!(live("abc"), "live.room.abc");
        assert_eq!(presence_owner_key("r", "u"), "r.u");
        assert_eq!(presence_session_key("r", "u", "ab12"), "r.u.ab12");
        assert_eq!(presence_session_key("r", "u", "a.b*"), "r.u.a_b_");
        assert_eq!(presence_session_key("r", "u", ""), "r.u._");
        assert_eq!(presence_room_filter("r"), "$KV.presence.r.*");
        assert_eq!(presence_sessions_filter("r", "u"), "$KV.presence.r.u.*");
        assert_eq!(presence_key_of_subject("$KV.presence.r.u.s"), Some("r.u.s"));
        assert_eq!(presence_key_of_subject("$KV.other.r.u"), None);
    }
}
