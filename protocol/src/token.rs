//! Room and user names as NATS subject tokens.
//!
//! A name may be any UTF-8 string — spaces, `.`, `*`, `>` included — none of which may appear
//! raw in a subject token. A token is the unpadded base64url encoding of the name's bytes: its
//! alphabet (`A-Z a-z 0-9 - _`) is valid in subjects and in KV keys, and it is reversible.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use thiserror::Error;

/// Why a token could not be turned back into a name.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is not unpadded base64url")]
    NotBase64,
    #[error("token does not decode to UTF-8")]
    NotUtf8,
}

/// The subject token of a name.
pub fn encode(name: &str) -> String {
    URL_SAFE_NO_PAD.encode(name.as_bytes())
}

/// The name a token stands for.
pub fn decode(token: &str) -> Result<String, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(token.as_bytes())
        .map_err(|_| TokenError::NotBase64)?;
    String::from_utf8(bytes).map_err(|_| TokenError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_subject_safe(t: &str) -> bool {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    #[test]
    fn round_trips_awkward_names() {
        for name in [
            "Tests Room",
            "a.b.c",
            "*",
            ">",
            "room.*.>",
            "ünïcødé 房间 🚀",
            " ",
            "x",
            "$JS.API",
            "tab\tnew\nline",
        ] {
            let t = encode(name);
            assert!(is_subject_safe(&t), "{name:?} -> {t:?}");
            assert_eq!(decode(&t).as_deref(), Ok(name));
        }
    }

    #[test]
    fn distinct_names_give_distinct_tokens() {
        assert_ne!(encode("a b"), encode("a.b"));
        assert_ne!(encode("A"), encode("a"));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(decode("a.b"), Err(TokenError::NotBase64));
        assert_eq!(decode("a=="), Err(TokenError::NotBase64));
        // 0xff is not UTF-8.
        assert_eq!(
            decode(&URL_SAFE_NO_PAD.encode([0xff])),
            Err(TokenError::NotUtf8)
        );
    }
}
