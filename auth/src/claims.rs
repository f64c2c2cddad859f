//! What a token grants.

use serde::{Deserialize, Serialize};

/// The claims natter reads from a token. Unknown claims are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The userId.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch (required).
    pub exp: u64,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// When present, the only userName the user may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When present, the rooms the user may join: exact names, or prefixes ending in `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
}

impl Claims {
    /// Whether the token lets its user into `room`.
    pub fn allows_room(&self, room: &str) -> bool {
        let Some(rooms) = &self.rooms else {
            return true;
        };
        rooms.iter().any(|r| match r.strip_suffix('*') {
            Some(prefix) => room.starts_with(prefix),
            None => r == room,
        })
    }

    /// Whether the token lets its user appear as `user_name`.
    pub fn allows_name(&self, user_name: &str) -> bool {
        self.name.as_deref().is_none_or(|n| n == user_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(name: Option<&str>, rooms: Option<&[&str]>) -> Claims {
        Claims {
            sub: "u1".into(),
            exp: 1,
            nbf: None,
            name: name.map(Into::into),
            rooms: rooms.map(|r| r.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn rooms_exact_and_prefix() {
        assert!(claims(None, None).allows_room("anything"));
        let c = claims(None, Some(&["Tests Room", "team-*"]));
        assert!(c.allows_room("Tests Room"));
        assert!(!c.allows_room("Tests Room 2"), "exact names are exact");
        assert!(!c.allows_room("tests room"));
        assert!(c.allows_room("team-a"));
        assert!(c.allows_room("team-"));
        assert!(!c.allows_room("team"));
        assert!(!c.allows_room("other"));
        assert!(claims(None, Some(&["*"])).allows_room("any room"));
        assert!(
            !claims(None, Some(&[])).allows_room("r"),
            "an empty list allows nothing"
        );
    }

    #[test]
    fn name_is_the_only_one_when_present() {
        assert!(claims(None, None).allows_name("Ann"));
        let c = claims(Some("Ann"), None);
        assert!(c.allows_name("Ann"));
        assert!(!c.allows_name("ann"));
        assert!(!c.allows_name("Bob"));
    }
}
