//! One client connection's protocol state: the rooms it joined and under which identity, its
//! rate limit and its share of the edge's publishes, and the life of the socket from upgrade
//! to cleanup.
//!
//! - this file: [`serve`] runs a socket with **one task**: it reads and runs the client's
//!   requests, pings, enforces closes and the join timeout, and gives everything back when
//!   the socket ends. Frames to the client are written by whoever has them (rooms write
//!   straight to the socket, see [`crate::transport::socket`]).
//! - [`cmd`]: one module per request (`join`, `text`, `leave`, `typing`, `history`), and
//!   the dispatch.
//! - [`joined`]: the rooms joined on this socket; [`limits`]: the rate limit. Publishes and
//!   their replies are the edge's ([`crate::publish`]).
//!
//! The bytes on the wire are the transport's ([`crate::transport`]); rooms and presence
//! are shared by the whole edge ([`crate::node`]).

pub mod cmd;
pub mod joined;
pub mod limits;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use natter_protocol::{frame, ErrorCode, RpcError};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tracing::{debug, warn, Instrument};

use crate::node::Node;
use crate::outbox::{CloseReason, Outbox, Signal};
use crate::presence::Released;
use crate::publish::SocketSlots;
use crate::transport;
use crate::transport::frame as wire;
use crate::transport::read::{Incoming, Message, MessageReader, ReadEnd};
use crate::transport::socket::Socket;
use joined::{Joined, JoinedRooms};
use limits::RateLimit;

/// How long the closing handshake may take, each way.
const GRACE: Duration = Duration::from_secs(2);

/// Serve one upgraded WebSocket until it closes. `upgrade_token` is the token the upgrade
/// request carried (`Authorization: Bearer` or `?token=`), for every join on the socket.
pub async fn serve(
    node: Arc<Node>,
    ws: transport::Upgrade,
    permit: OwnedSemaphorePermit,
    upgrade_token: Option<String>,
) {
    let id = uuid::Uuid::new_v4();
    let span = tracing::info_span!("session", session = %id.simple());
    let Some((tcp, leftover)) = transport::take_socket(ws) else {
        warn!(parent: &span, "upgraded connection without its TCP socket; dropped");
        return;
    };
    Box::pin(run(node, tcp, leftover, id, permit, upgrade_token))
        .instrument(span)
        .await;
}

/// How the socket's life ended, as far as the closing handshake cares.
enum End {
    /// The server closes (slow, drain deadline, idle, resync, no join...).
    Close(CloseReason),
    /// The client sent a close frame (its payload is echoed).
    ClientClosed(Vec<u8>),
    /// Reading stopped (too large, bad UTF-8, protocol error, socket gone).
    Read(ReadEnd),
}

/// The socket's one long-lived task: it reads and runs the client's requests, answers pings,
/// pings an idle client and closes a silent one, sends the drain request, enforces the join
/// timeout and every close asked of it, then gives everything back. Frames *to* the client
/// do not pass through it: rooms write them straight to the socket.
async fn run(
    node: Arc<Node>,
    tcp: TcpStream,
    leftover: Bytes,
    uuid: uuid::Uuid,
    _permit: OwnedSemaphorePermit,
    upgrade_token: Option<String>,
) {
    node.metrics.connections.inc();
    node.metrics.connections_accepted.inc();
    let socket = Socket::new(tcp, node.config.outbound_queue.max(1));
    let (signal_tx, signal_rx) = watch::channel(Signal::default());
    let outbox = Outbox::new(socket.clone(), signal_tx, uuid);
    // The key of the session in the edge's registry and in presence.
    let id = uuid.simple().to_string();
    node.sessions.insert(&id, outbox.clone());
    if node.is_draining() {
        outbox.drain();
    }
    let joined = Arc::new(JoinedRooms::default());
    let mut reader = MessageReader::new(leftover, node.config.max_frame_bytes);
    debug!("connected");

    let mut session = Session::new(
        node.clone(),
        id.clone(),
        outbox.clone(),
        joined.clone(),
        upgrade_token,
    );
    let end = session.run(&mut reader, signal_rx).await;
    close_handshake(&node, &outbox, &mut reader, end).await;
    socket.shutdown();
    if outbox.closing() == Some(CloseReason::Slow) {
        node.metrics.slow_client_disconnects.inc();
    }
    Box::pin(cleanup(&node, &id, &joined)).await;
    debug!(reason = ?outbox.closing(), "disconnected");
}

/// Send what the client is owed on the way out, then give it a moment to answer.
async fn close_handshake(node: &Node, outbox: &Outbox, reader: &mut MessageReader, end: End) {
    let socket = outbox.socket();
    let tcp = socket.tcp();
    match end {
        End::Close(reason) => {
            outbox.close(reason);
            let (code, text) = reason.close_frame();
            outbox.send_control(wire::close(code, text));
            // The client answers with its close frame; a client that stopped reading never
            // gets the frame and is dropped after the grace period.
            if socket.flushed(GRACE).await {
                reader.await_close(tcp, GRACE).await;
            }
        }
        End::ClientClosed(payload) => {
            outbox.close(CloseReason::Done);
            outbox.send_control(wire::encode(wire::OpCode::Close, &payload));
            socket.flushed(GRACE).await;
        }
        End::Read(end) => {
            let reason = match end {
                ReadEnd::TooLarge => CloseReason::TooLarge,
                ReadEnd::InvalidUtf8 => CloseReason::InvalidUtf8,
                ReadEnd::ClientClosed | ReadEnd::Failed => CloseReason::Done,
            };
            outbox.close(reason);
            let (code, text) = reason.close_frame();
            outbox.send_control(wire::close(code, text));
            socket.flushed(GRACE).await;
            if matches!(end, ReadEnd::TooLarge | ReadEnd::InvalidUtf8) {
                // Unread input would make the kernel reset the connection, which can destroy
                // the close frame before the client reads it.
                let limit = 4 * node.config.max_frame_bytes.max(64 * 1024);
                reader.discard(tcp, limit, GRACE).await;
            }
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
    /// This socket's bound on publishes awaiting the stream's reply, created on the first
    /// publish (idle sockets cost nothing).
    slots: Option<SocketSlots>,
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
            slots: None,
        }
    }

    /// Serve the socket until it ends; see [`run`].
    async fn run(
        &mut self,
        reader: &mut MessageReader,
        mut signal: watch::Receiver<Signal>,
    ) -> End {
        let node = self.node.clone();
        let config = &node.config;
        let ping_every = Duration::from_secs(config.ping_interval_secs).max(Duration::from_secs(1));
        let idle_after = Duration::from_secs(config.idle_timeout_secs).max(Duration::from_secs(1));
        let start = tokio::time::Instant::now();
        // One timer for both the next ping and the join deadline (a socket pays for one).
        let mut next_ping = start + ping_every;
        let join_by = start + config.join_timeout();
        let timer = tokio::time::sleep_until(next_ping.min(join_by));
        tokio::pin!(timer);
        let mut join_checked = false;
        let mut drain_sent = false;
        let mut last_heard = start;
        let socket = self.outbox.socket().clone();
        // Bounded by the socket: every round handles one event or ends.
        loop {
            tokio::select! {
                biased;
                changed = signal.changed() => {
                    if changed.is_err() {
                        return End::Close(CloseReason::Done);
                    }
                    let s = *signal.borrow_and_update();
                    if s.drain && !drain_sent {
                        drain_sent = true;
                        self.send_reconnect("draining");
                    }
                    if let Some(reason) = s.close {
                        if let Some(hint) = reason.hints_reconnect() {
                            if !(drain_sent && hint == "draining") {
                                self.send_reconnect(hint);
                            }
                        }
                        return End::Close(reason);
                    }
                }
                r = reader.next(socket.tcp()) => {
                    last_heard = tokio::time::Instant::now();
                    let ok = match r {
                        Ok(Incoming::Message(Message::Text(data))) => {
                            match self.handle_now(&data) {
                                Ok(ok) => ok,
                                Err(later) => Box::pin(self.handle_later(later)).await,
                            }
                        }
                        Ok(Incoming::Message(Message::Binary(_))) => {
                            let err = RpcError::new(
                                ErrorCode::Parse,
                                "binary frames are not accepted; send JSON text",
                            );
                            self.reply_error(None, err).await
                        }
                        Ok(Incoming::Ping(payload)) => {
                            self.outbox.send_control(wire::encode(wire::OpCode::Pong, &payload))
                        }
                        Ok(Incoming::Pong) => true,
                        Ok(Incoming::Close(payload)) => return End::ClientClosed(payload),
                        Err(end) => return End::Read(end),
                    };
                    if !ok {
                        // The socket is gone or closing: the signal says why, if anyone did.
                        return End::Close(self.outbox.closing().unwrap_or(CloseReason::Done));
                    }
                }
                () = &mut timer => {
                    let now = tokio::time::Instant::now();
                    if !join_checked && now >= join_by {
                        join_checked = true;
                        // Holding a socket costs the edge; one that joins nothing is closed.
                        if self.joined.lock().is_empty() {
                            debug!(join_timeout = ?config.join_timeout(), "no room joined in time; closing");
                            return End::Close(CloseReason::NoJoin);
                        }
                    }
                    if now >= next_ping {
                        if last_heard.elapsed() > idle_after {
                            return End::Close(CloseReason::Idle);
                        }
                        self.outbox.send_control(wire::encode(wire::OpCode::Ping, b"natter"));
                        next_ping = now + ping_every;
                    }
                    let next = if join_checked { next_ping } else { next_ping.min(join_by) };
                    timer.as_mut().reset(next);
                }
            }
        }
    }

    /// Ask the client to reconnect (and resume) elsewhere, for `reason`.
    fn send_reconnect(&self, reason: &str) {
        let json = frame::server_request(
            "reconnect",
            json!({"reason": reason}),
            self.node.next_request_id(),
        );
        self.outbox.send_control(wire::text(&json));
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
