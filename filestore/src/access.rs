//! Who may upload and download: the token a request carries, checked as the mode says, and
//! what it allows (see `shared/PROTOCOL.md`, "Authentication").
//!
//! - Mode `off` (local development): tokens are ignored and everything is allowed, as
//!   before tokens existed. Mode `optional`: a request without a token is let through, one
//!   with a token is held to it. Mode `required`: no token, no request (401).
//! - A token travels as `Authorization: Bearer <jwt>`; downloads may put it in `?token=`
//!   instead (an `<img src>` cannot set headers). It must verify (signature, `exp`, `nbf`):
//!   401 otherwise, with `WWW-Authenticate: Bearer`.
//! - An upload is allowed when the token allows its room, its `params.userId` is the
//!   token's `sub`, the token allows its `userName`, and that name is held in the room by
//!   that userId right now (the `presence` bucket the edges maintain): 403 otherwise.
//! - A download is allowed when the token allows the room the upload was posted to.
//!
//! It decides, it does not log or count: the handlers do.

use std::sync::OnceLock;
use std::time::Duration;

use async_nats::jetstream::kv;
use axum::http::HeaderMap;
use natter_auth::{AuthMode, Claims, Verifier};
use natter_protocol::token;
use serde_json::Value;

use crate::error::ApiError;
use crate::message::UploadMessage;

/// Longest wait for the presence bucket's answer (503 beyond; the client retries).
const PRESENCE_TIMEOUT: Duration = Duration::from_secs(5);

/// The verifier and the presence bucket (set once NATS is connected).
pub struct Access {
    verifier: Verifier,
    presence: OnceLock<kv::Store>,
}

/// Where a request may carry its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// `Authorization: Bearer` only (uploads).
    Header,
    /// The header, or `?token=` (downloads).
    HeaderOrQuery,
}

impl Access {
    pub fn new(verifier: Verifier) -> Access {
        Access {
            verifier,
            presence: OnceLock::new(),
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.verifier.mode()
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Hand over the presence bucket, once it is open.
    pub fn set_presence(&self, kv: kv::Store) {
        let _ = self.presence.set(kv);
    }

    /// The claims of the request's token: `None` when the request goes unchecked (mode off,
    /// or optional without a token); 401 when a token is required and missing, or present
    /// and not valid.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        carrier: Carrier,
    ) -> Result<Option<Claims>, ApiError> {
        let token = natter_auth::bearer_token(headers).or_else(|| match carrier {
            Carrier::HeaderOrQuery => natter_auth::query_token(query),
            Carrier::Header => None,
        });
        self.verifier
            .authenticate(token.as_deref())
            .map_err(|e| ApiError::Unauthorized(e.to_string()))
    }

    /// Whether the holder of `claims` may post `msg` (see the module documentation).
    pub async fn authorize_upload(
        &self,
        claims: Option<&Claims>,
        msg: &UploadMessage,
    ) -> Result<(), ApiError> {
        let Some(claims) = claims else {
            return Ok(());
        };
        if !claims.allows_room(&msg.room) {
            return Err(ApiError::Forbidden(
                "the token does not allow this room".into(),
            ));
        }
        let user_id = match msg.params.get("userId") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        if user_id != claims.sub {
            return Err(ApiError::Forbidden(
                "params.userId is not the token's user".into(),
            ));
        }
        let user_name = msg.str_param("userName")?.unwrap_or_default();
        if !claims.allows_name(user_name) {
            return Err(ApiError::Forbidden(
                "the token does not allow this userName".into(),
            ));
        }
        let Some(kv) = self.presence.get() else {
            return Err(ApiError::Unavailable(
                "presence is not reachable yet".into(),
            ));
        };
        let (room_token, user_token) = (token::encode(&msg.room), token::encode(user_name));
        let holder = natter_bus::name_holder(kv, &room_token, &user_token, PRESENCE_TIMEOUT)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        if holder.as_deref() != Some(claims.sub.as_str()) {
            return Err(ApiError::Forbidden(
                "the user does not hold this userName in this room: join it first".into(),
            ));
        }
        Ok(())
    }

    /// Whether the holder of `claims` may read an upload posted to `room`.
    pub fn authorize_download(&self, claims: Option<&Claims>, room: &str) -> Result<(), ApiError> {
        match claims {
            Some(c) if !c.allows_room(room) => Err(ApiError::Forbidden(
                "the token does not allow this room".into(),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use natter_auth::AuthArgs;

    const SECRET: &str = "a-filestore-test-secret-of-32-bytes-at-least";

    fn access(mode: AuthMode) -> Access {
        let args = AuthArgs {
            auth: Some(mode),
            auth_hs256_secret: (mode != AuthMode::Off).then(|| SECRET.to_owned()),
            auth_hs256_secret_file: None,
            auth_public_key_file: None,
            auth_leeway_secs: 0,
        };
        Access::new(Verifier::from_args(&args, "127.0.0.1:1".parse().unwrap()).unwrap())
    }

    fn token(exp_offset: i64, rooms: Option<Vec<String>>) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = Claims {
            sub: "u1".into(),
            exp: u64::try_from(now + exp_offset).unwrap(),
            nbf: None,
            name: None,
            rooms,
        };
        natter_auth::mint_hs256(SECRET.as_bytes(), &claims).unwrap()
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
        h
    }

    fn status(r: Result<Option<Claims>, ApiError>) -> Result<bool, u16> {
        r.map(|c| c.is_some()).map_err(|e| e.status().as_u16())
    }

    #[test]
    fn modes() {
        let none = HeaderMap::new();
        let good = token(600, None);
        let expired = token(-600, None);
        let off = access(AuthMode::Off);
        assert_eq!(
            status(off.authenticate(&bearer("junk"), None, Carrier::Header)),
            Ok(false)
        );
        let opt = access(AuthMode::Optional);
        assert_eq!(
            status(opt.authenticate(&none, None, Carrier::Header)),
            Ok(false)
        );
        assert_eq!(
            status(opt.authenticate(&bearer(&good), None, Carrier::Header)),
            Ok(true)
        );
        assert_eq!(
            status(opt.authenticate(&bearer(&expired), None, Carrier::Header)),
            Err(401)
        );
        let req = access(AuthMode::Required);
        assert_eq!(
            status(req.authenticate(&none, None, Carrier::Header)),
            Err(401)
        );
        assert_eq!(
            status(req.authenticate(&bearer("a.b.c"), None, Carrier::Header)),
            Err(401)
        );
        let q = format!("token={good}");
        assert_eq!(
            status(req.authenticate(&none, Some(&q), Carrier::Header)),
            Err(401),
            "uploads take the header only"
        );
        assert_eq!(
            status(req.authenticate(&none, Some(&q), Carrier::HeaderOrQuery)),
            Ok(true)
        );
    }

    #[test]
    fn downloads_follow_the_rooms_claim() {
        let a = access(AuthMode::Required);
        let t = token(600, Some(vec!["team-*".into()]));
        let claims = a
            .authenticate(&bearer(&t), None, Carrier::HeaderOrQuery)
            .unwrap();
        assert!(a.authorize_download(claims.as_ref(), "team-a").is_ok());
        let e = a.authorize_download(claims.as_ref(), "other").unwrap_err();
        assert_eq!(e.status().as_u16(), 403);
        assert!(a.authorize_download(None, "other").is_ok());
    }
}
