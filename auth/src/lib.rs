//! natter authentication: who a client is, as a signed token (JWT) says.
//!
//! - [`args`]: the `--auth*` flags ([`AuthArgs`], [`AuthMode`]) that the edge and the
//!   filestore flatten into their configurations, so both trust the same keys.
//! - [`claims`]: what a token grants ([`Claims`]: `sub` = userId, `exp`, `nbf`, and the
//!   optional `name` and `rooms` restrictions).
//! - [`verify`]: checking a token ([`Verifier`]: HS256 with a shared secret, RS256 or EdDSA
//!   with a public key; `exp` required, `nbf` checked, a small clock leeway) and minting
//!   development tokens ([`mint_hs256`]).
//! - [`carry`]: where a token travels on an HTTP request (`Authorization: Bearer`, or
//!   `?token=` for browsers, whose WebSocket API and `<img src>` cannot set headers).
//!
//! It decides nothing about rooms, names or sockets: what a verified token allows is the
//! services' business (the edge at join, the filestore per request). No async runtime and
//! no web framework here: the request types are the `http` crate's, which axum re-exports.

pub mod args;
pub mod carry;
pub mod claims;
pub mod verify;

pub use args::{AuthArgs, AuthMode};
pub use carry::{bearer_token, query_param, query_token};
pub use claims::Claims;
pub use verify::{mint_hs256, AuthConfigError, AuthError, Verifier};
