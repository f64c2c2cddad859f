//! Who may manage a room's bots: a member of the room.
//!
//! - `--auth off` (local development, what `just up` runs): anyone, no token read.
//! - `--auth optional`: a request without a token is let through; one with a token is held
//!   to it as below.
//! - `--auth required` (the default off loopback): `Authorization: Bearer <jwt>`, verified
//!   as the edge verifies it (401 otherwise). The token must allow the room (`rooms`
//!   claim), and its user must hold a name in the room right now, i.e. be joined through an
//!   edge (the `presence` bucket): the name is the token's `name` claim, or the
//!   `userName` query parameter (which the token must allow). 403 otherwise.

use std::sync::OnceLock;
use std::time::Duration;

use async_nats::jetstream::kv;
use axum::http::HeaderMap;
use natter_auth::{AuthMode, Verifier};
use natter_protocol::token;

use crate::api::ApiError;

const PRESENCE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Access {
    verifier: Verifier,
    presence: OnceLock<kv::Store>,
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

    pub fn set_presence(&self, kv: kv::Store) {
        let _ = self.presence.set(kv);
    }

    /// Whether this request may manage the bots of `room`.
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        room: &str,
    ) -> Result<(), ApiError> {
        let token = natter_auth::bearer_token(headers);
        let claims = match self.verifier.authenticate(token.as_deref()) {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(()),
            Err(e) => return Err(ApiError::Unauthorized(e.to_string())),
        };
        if !claims.allows_room(room) {
            return Err(ApiError::Forbidden(
                "the token does not allow this room".into(),
            ));
        }
        let name = natter_auth::query_param(query, "userName")
            .or_else(|| claims.name.clone())
            .ok_or_else(|| {
                ApiError::Forbidden(
                    "say which name you hold in the room: ?userName=, or a token with a name"
                        .into(),
                )
            })?;
        if !claims.allows_name(&name) {
            return Err(ApiError::Forbidden(
                "the token does not allow this userName".into(),
            ));
        }
        let Some(kv) = self.presence.get() else {
            return Err(ApiError::Unavailable(
                "presence is not reachable yet".into(),
            ));
        };
        let (room_token, user_token) = (token::encode(room), token::encode(&name));
        let holder = natter_bus::name_holder(kv, &room_token, &user_token, PRESENCE_TIMEOUT)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        if holder.as_deref() != Some(claims.sub.as_str()) {
            return Err(ApiError::Forbidden(
                "only a member of the room may manage its bots: join it first".into(),
            ));
        }
        Ok(())
    }
}
