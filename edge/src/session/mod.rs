//! One client connection's protocol state: the rooms it joined and under which identity, its
//! rate limit and its publish acknowledgements, and the life of the socket from upgrade to
//! cleanup.
//!
//! - this file: [`serve`] runs a socket (a reader task speaking the protocol, a writer task
//!   fed by the outbox), enforces closes, and gives everything back when it ends.
//! - [`cmd`]: one module per request (`join`, `text`, `leave`, `typing`, `history`), and
//!   the dispatch.
//! - [`joined`]: the rooms joined on this socket; [`limits`]: the rate limit; [`acks`]: the
//!   publish acknowledgement pipeline.
//!
//! The bytes on the wire are the transport's ([`crate::transport`]); rooms and presence
//! are shared by the whole edge ([`crate::node`]).

pub mod acks;
pub mod cmd;
pub mod joined;
pub mod limits;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::WebSocket;
use natter_protocol::{frame, ErrorCode, RpcError};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tracing::{debug, Instrument};

use crate::node::Node;
use crate::outbox::{CloseReason, Outbox, Signal};
use crate::presence::Released;
use crate::transport::read::{Message, MessageReader, ReadEnd};
use crate::transport::write::{write_loop, WriteInputs, WriteSettings};
use crate::transport::{self, Io};
use joined::{Joined, JoinedRooms};
use limits::RateLimit;

/// How long a side waits for the other to finish once one has ended.
const GRACE: Duration = Duration::from_secs(2);

/// Serve one upgraded WebSocket until it closes. `upgrade_token` is the token the upgrade
/// request carried (`Authorization: Bearer` or `?token=`), for every join on the socket.
pub async fn serve(
    node: Arc<Node>,
    ws: WebSocket<Io>,
    permit: OwnedSemaphorePermit,
    upgrade_token: Option<String>,
) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let span = tracing::info_span!("session", session = %id);
    run(node, ws, id, permit, upgrade_token)
        .instrument(span)
        .await;
}

async fn run(
    node: Arc<Node>,
    ws: WebSocket<Io>,
    id: String,
    _permit: OwnedSemaphorePermit,
    upgrade_token: Option<String>,
) {
    node.metrics.connections.inc();
    node.metrics.connections_accepted.inc();
    let (frames_tx, frames_rx) = mpsc::channel(node.config.outbound_queue.max(1));
    let (signal_tx, signal_rx) = watch::channel(Signal::default());
    let outbox = Outbox::new(frames_tx, signal_tx);
    node.sessions.insert(&id, outbox.clone());
    if node.is_draining() {
        outbox.drain();
    }
    let joined = Arc::new(JoinedRooms::default());
    let halves = transport::split(ws, node.config.max_frame_bytes);
    let mut raw_read = halves.raw_read;
    debug!("connected");

    let mut close_watch = outbox.watch();
    let session = Session::new(
        node.clone(),
        id.clone(),
        outbox.clone(),
        joined.clone(),
        upgrade_token,
    );
    let mut reader = tokio::spawn(session.read_loop(halves.reader).in_current_span());
    let settings = WriteSettings {
        ping_every: Duration::from_secs(node.config.ping_interval_secs),
        idle_after: Duration::from_secs(node.config.idle_timeout_secs),
    };
    let inputs = WriteInputs {
        frames: frames_rx,
        control: halves.control,
        signal: signal_rx,
    };
    let ids = node.clone();
    let mut writer = tokio::spawn(
        write_loop(
            halves.writer,
            inputs,
            settings,
            halves.liveness,
            move || ids.next_request_id(),
        )
        .in_current_span(),
    );

    let _read_end = tokio::select! {
        end = &mut reader => {
            let end = end.ok();
            let too_large = end == Some(ReadEnd::TooLarge);
            outbox.close(match end {
                Some(ReadEnd::TooLarge) => CloseReason::TooLarge,
                Some(ReadEnd::InvalidUtf8) => CloseReason::InvalidUtf8,
                _ => CloseReason::Done,
            });
            if tokio::time::timeout(GRACE, &mut writer).await.is_err() {
                writer.abort();
            }
            if too_large {
                if let Some(r) = raw_read.take() {
                    r.discard(4 * node.config.max_frame_bytes.max(64 * 1024), GRACE).await;
                }
            }
            end
        }
        _ = &mut writer => {
            // The writer sent a close frame (or the socket failed): give the client a moment
            // to answer it, then stop reading.
            finish(&mut reader).await
        }
        () = no_room_by(&joined, node.config.join_timeout()) => {
            // Holding a socket costs the edge; one that joins nothing is closed.
            debug!(join_timeout = ?node.config.join_timeout(), "no room joined in time; closing");
            outbox.close(CloseReason::NoJoin);
            if tokio::time::timeout(GRACE, &mut writer).await.is_err() {
                writer.abort();
            }
            finish(&mut reader).await
        }
        _ = close_requested(&mut close_watch) => {
            // Slow, resync, shutdown...: the writer sends the close frame, unless it is stuck
            // on a socket the client stopped reading, in which case the socket is dropped.
            if tokio::time::timeout(GRACE, &mut writer).await.is_err() {
                writer.abort();
            }
            finish(&mut reader).await
        }
    };
    if outbox.closing() == Some(CloseReason::Slow) {
        node.metrics.slow_client_disconnects.inc();
    }
    Box::pin(cleanup(&node, &id, &joined)).await;
    debug!(reason = ?outbox.closing(), "disconnected");
}

/// Wait a moment for the reader to end on its own, else stop it.
async fn finish(reader: &mut tokio::task::JoinHandle<ReadEnd>) -> Option<ReadEnd> {
    match tokio::time::timeout(GRACE, &mut *reader).await {
        Ok(end) => end.ok(),
        Err(_) => {
            reader.abort();
            None
        }
    }
}

/// Resolves when `timeout` has passed and no room is joined on the socket (a join still in
/// progress then does not count); never resolves once one is.
async fn no_room_by(joined: &JoinedRooms, timeout: Duration) {
    tokio::time::sleep(timeout).await;
    if !joined.lock().is_empty() {
        std::future::pending::<()>().await;
    }
}

/// Resolves once a close reason has been signalled for the socket.
async fn close_requested(rx: &mut watch::Receiver<Signal>) {
    loop {
        if rx.borrow_and_update().close.is_some() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Leave every room and give the names back; tell a room a user left when this was the
/// user's last session under that name (closed or dropped: the same to the room).
async fn cleanup(node: &Arc<Node>, id: &str, joined: &JoinedRooms) {
    node.sessions.remove(id);
    for j in joined.take_all() {
        node.rooms.leave(&j.membership);
        if node.presence.release(&j.session_key).await == Released::Freed {
            announce_left(node, &j).await;
        }
    }
    node.metrics.connections.dec();
}

/// Tell the room a member left.
async fn announce_left(node: &Node, j: &Joined) {
    let room = &j.membership.room;
    let note = frame::notification(
        "userLeft",
        json!({"type": "system", "text": format!("{} has left the room!", j.user_name),
               "roomName": room.name, "userName": j.user_name,
               "uuid": uuid::Uuid::new_v4().to_string()}),
    );
    node.publish_event(&room.live_subject, "userLeft", &j.user_token, note)
        .await;
}

/// The reader side of one socket: parses requests and runs them, in order.
pub struct Session {
    node: Arc<Node>,
    id: String,
    outbox: Outbox,
    joined: Arc<JoinedRooms>,
    /// The token of the upgrade request, for joins that carry none.
    upgrade_token: Option<String>,
    rate: RateLimit,
    /// Created on the first publish: idle sockets cost no ack task.
    acks: Option<mpsc::Sender<acks::PendingAck>>,
}

impl Session {
    fn new(
        node: Arc<Node>,
        id: String,
        outbox: Outbox,
        joined: Arc<JoinedRooms>,
        upgrade_token: Option<String>,
    ) -> Self {
        let rate = RateLimit::new(node.config.rate_per_sec, node.config.rate_burst);
        Session {
            node,
            id,
            outbox,
            joined,
            upgrade_token,
            rate,
            acks: None,
        }
    }

    async fn read_loop(mut self, mut reader: MessageReader) -> ReadEnd {
        // Bounded by the socket: every round consumes a message or ends.
        loop {
            let ok = match reader.next().await {
                Ok(Message::Text(data)) => self.handle(&data).await,
                Ok(Message::Binary(_)) => {
                    let err = RpcError::new(
                        ErrorCode::Parse,
                        "binary frames are not accepted; send JSON text",
                    );
                    self.reply_error(None, err).await
                }
                Err(end) => return end,
            };
            if !ok {
                return ReadEnd::Failed;
            }
        }
    }

    /// Send a result; false when the socket is gone.
    async fn reply(&self, id: Option<&Value>, result: Value) -> bool {
        self.outbox.send(frame::result(id, result)).await
    }

    /// Send an error response; false when the socket is gone.
    async fn reply_error(&self, id: Option<&Value>, err: RpcError) -> bool {
        self.node.metrics.client_errors.inc();
        self.outbox.send(frame::error(id, &err)).await
    }

    /// Send an already encoded frame; false when the socket is gone.
    async fn send(&self, frame: Bytes) -> bool {
        self.outbox.send(frame).await
    }
}
