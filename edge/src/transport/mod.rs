//! One WebSocket on the wire, below the protocol. After the upgrade handshake
//! (fastwebsockets) the edge takes the TCP socket back from hyper and drives it itself:
//!
//! - [`frame`]: frames as bytes, both directions, no I/O;
//! - [`read`]: client frames in, whole messages out, with no buffer while the socket is idle;
//! - [`socket`]: frames out, written straight into the kernel when the socket is free and
//!   queued (flushed by a task that exists only while it has work) when it is busy.
//!
//! It knows nothing of JSON-RPC, rooms or users; the session ([`crate::session`]) gives
//! meaning to the messages and runs the socket's one long-lived task.

pub mod frame;
pub mod read;
pub mod socket;

use bytes::Bytes;
use fastwebsockets::WebSocket;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The upgraded connection as fastwebsockets hands it over.
pub type Upgrade = WebSocket<TokioIo<Upgraded>>;

/// The TCP socket under an upgraded WebSocket, and the bytes the client sent right behind
/// its upgrade request. `None` when the connection did not come through natter's listener
/// (it always does: the edge serves `/chat` only through it).
pub fn take_socket(ws: Upgrade) -> Option<(TcpStream, Bytes)> {
    natter_ops::listener::upgraded_tcp(ws.into_inner().into_inner()).ok()
}
