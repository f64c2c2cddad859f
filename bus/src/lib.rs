//! natter's message bus: everything the services agree on about NATS.
//!
//! - [`subjects`]: the subject names and headers of `shared/DESIGN.md` ("NATS layout").
//! - [`stream`]: the `CHAT` stream (defined in `nats/streams/CHAT.json`) and its operator
//!   settings ([`StreamArgs`]), ensured by each service at start-up.
//! - [`presence_bucket`]: the `presence` KV bucket of held user names (owner and session
//!   keys) and [`name_holder`], "who holds this name in this room".
//! - [`connect`]: how a service connects (URL list, reconnects, logged events), and
//!   [`Disruptions`], the events after which core NATS messages may have been lost.
//! - [`reader`]: ranged reads of one room's messages from the stream (batched direct get,
//!   ADR-31), for history, catch-up and gap repair without creating consumers.
//! - [`pull`]: one pull request on a durable consumer (the archiver's and the bots').
//! - [`history`]: the archiver's `history.<token>` request/reply contract.
//!
//! It holds no chat logic: what a message means is the edge's and the archiver's business.
//! The NATS server configurations themselves live beside it in `nats/conf/`.

pub mod connect;
pub mod history;
pub mod presence_bucket;
pub mod pull;
pub mod reader;
pub mod stream;
pub mod subjects;

pub use connect::{connect, connect_watched, Disruptions};
pub use presence_bucket::{
    ensure_leases, ensure_presence, name_holder, LookupError, Owner, SessionEntry,
};
pub use reader::{ReadError, StoredMessage, StreamReader};
pub use stream::{ensure_chat_stream, DriftWatch, StreamArgs, StreamStatus};

use thiserror::Error;

/// Setting a service up on NATS failed.
#[derive(Debug, Error)]
pub enum SetupError {
    #[error("the embedded CHAT stream definition is invalid: {0}")]
    Definition(#[from] serde_json::Error),
    #[error("could not create or update the CHAT stream: {0}")]
    Stream(String),
    #[error("could not create or open the presence bucket: {0}")]
    Presence(String),
    #[error("could not connect to NATS: {0}")]
    Connect(String),
}
