//! natter's NATS layout, shared by every service.
//!
//! - [`subjects`]: the subject names and headers of `shared/DESIGN.md` ("NATS layout").
//! - [`layout`]: the `CHAT` stream (defined in `nats/streams/CHAT.json`) and the `presence`
//!   KV bucket, ensured idempotently by each service at start-up, and the connection options.
//! - [`reader`]: ranged reads of one room's messages from the stream (batched direct get,
//!   ADR-31), for history, catch-up and gap repair without creating consumers.
//!
//! It holds no chat logic: what a message means is the edge's and the archiver's business.

pub mod history;
pub mod layout;
pub mod reader;
pub mod subjects;

pub use layout::{connect, ensure_chat_stream, ensure_presence, LayoutError, StreamArgs};
pub use reader::{ReadError, StoredMessage, StreamReader};
