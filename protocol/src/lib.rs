//! The natter wire protocol, v1 (see `shared/PROTOCOL.md`): JSON-RPC 2.0 over WebSocket text
//! frames, wire-compatible with clients of the older Vert.x "Elastic & Fault-Tolerant GroupChat".
//!
//! This crate is pure data: it parses and validates what clients send ([`request`]), encodes
//! what the server sends ([`frame`]), names the error codes ([`error`]) and turns arbitrary
//! UTF-8 room and user names into single NATS subject tokens ([`token`]).
//!
//! It deliberately does no I/O and knows nothing of tokio, NATS or sockets, so every rule of
//! the protocol is unit-testable with byte strings.

pub mod error;
mod fast_text;
pub mod frame;
pub mod request;
pub mod token;

pub use error::{ErrorCode, RpcError};
pub use request::{Call, GetHistory, Join, Limits, Request, TextMessage};
