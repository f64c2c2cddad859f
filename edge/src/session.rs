//! One WebSocket's life: a reader task that parses and answers requests, a writer task fed
//! by the socket's bounded outbound queue, and the cleanup when either ends.
//!
//! fastwebsockets' `read_frame` is not cancel-safe, so the reader is never raced against
//! anything: it runs alone in its task and is only aborted once the socket is being
//! abandoned. Frames the reader must send (pong, close echo) go to the writer through a
//! small control channel.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use fastwebsockets::{
    Frame, OpCode, Payload, WebSocket, WebSocketError, WebSocketRead, WebSocketWrite,
};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use natter_nats::subjects;
use natter_protocol::request::{GetHistory, Join, TextMessage};
use natter_protocol::{frame, token, Call, ErrorCode, Request, RpcError};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tracing::{debug, info, warn, Instrument};

use crate::catchup;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::outbox::{CloseReason, Outbox, Signal};
use crate::presence::{Holder, PresenceError};
use crate::rooms::Membership;
use crate::wbuf::LazyBufWriter;

type Io = TokioIo<Upgraded>;
type Reader = WebSocketRead<SharedRead>;
type Writer = WebSocketWrite<LazyBufWriter<WriteHalf<Io>>>;

/// The socket's read half, shared so that the session can still drain it after the reader
/// gave up (e.g. on an oversized frame): closing a socket with unread input makes the kernel
/// send a reset, which can destroy the close frame before the client reads it.
#[derive(Clone)]
struct SharedRead(Arc<Mutex<ReadHalf<Io>>>);

impl AsyncRead for SharedRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        // Never contended: only one task reads at a time; the lock is not held across polls.
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Pin::new(&mut *inner).poll_read(cx, buf)
    }
}

impl SharedRead {
    /// Read and discard until the peer closes, `limit` bytes were read, or `within` passed.
    async fn discard(mut self, limit: usize, within: Duration) {
        let mut buf = vec![0u8; 8192];
        let mut total = 0usize;
        let _ = tokio::time::timeout(within, async {
            while total < limit {
                match self.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        })
        .await;
    }
}

/// How long a side waits for the other to finish once one has ended.
const GRACE: Duration = Duration::from_secs(2);
/// Publishes awaiting their ack, per socket.
const ACKS_IN_FLIGHT: usize = 256;

/// A room joined on this socket.
struct Joined {
    membership: Membership,
    user_id: String,
    user_name: String,
    user_token: String,
    presence_key: String,
}

/// What the supervisor needs after the reader is gone.
struct Shared {
    joined: Mutex<HashMap<String, Joined>>,
    /// Milliseconds since `born` when the client was last heard.
    last_heard_ms: AtomicU64,
    client_closed: AtomicBool,
    born: Instant,
}

impl Shared {
    fn joined(&self) -> MutexGuard<'_, HashMap<String, Joined>> {
        self.joined.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn touch(&self) {
        self.last_heard_ms
            .store(self.born.elapsed().as_millis() as u64, Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let now = self.born.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_heard_ms.load(Relaxed)))
    }
}

/// Serve one upgraded WebSocket until it closes.
pub async fn serve(node: Arc<Node>, ws: WebSocket<Io>, permit: OwnedSemaphorePermit) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let span = tracing::info_span!("session", session = %id);
    run(node, ws, id, permit).instrument(span).await;
}

async fn run(node: Arc<Node>, ws: WebSocket<Io>, id: String, _permit: OwnedSemaphorePermit) {
    let m = &node.metrics;
    m.connections.fetch_add(1, Relaxed);
    Metrics::inc(&m.connections_total);
    let (frames_tx, frames_rx) = mpsc::channel(node.config.outbound_queue.max(1));
    let (signal_tx, signal_rx) = watch::channel(Signal::default());
    let outbox = Outbox::new(frames_tx, signal_tx);
    node.sessions.insert(&id, outbox.clone());
    if node.is_draining() {
        outbox.drain();
    }
    let shared = Arc::new(Shared {
        joined: Mutex::new(HashMap::new()),
        last_heard_ms: AtomicU64::new(0),
        client_closed: AtomicBool::new(false),
        born: Instant::now(),
    });
    let (ctl_tx, ctl_rx) = mpsc::channel::<Box<Frame<'static>>>(8);
    let raw_read: Mutex<Option<SharedRead>> = Mutex::new(None);
    let (mut rd, mut wr) = ws.split(|s| {
        let (r, w) = tokio::io::split(s);
        let r = SharedRead(Arc::new(Mutex::new(r)));
        *raw_read.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.clone());
        (r, LazyBufWriter::new(w))
    });
    let mut raw_read = raw_read.into_inner().unwrap_or_else(|p| p.into_inner());
    rd.set_max_message_size(node.config.max_frame_bytes.saturating_add(1));
    wr.set_writev(false);
    debug!("connected");

    let mut close_watch = outbox.watch();
    let session = Session::new(node.clone(), id.clone(), outbox.clone(), shared.clone());
    let mut reader = tokio::spawn(session.read_loop(rd, ctl_tx).in_current_span());
    let mut writer = tokio::spawn(
        write_loop(
            node.clone(),
            wr,
            frames_rx,
            ctl_rx,
            signal_rx,
            shared.clone(),
        )
        .in_current_span(),
    );

    tokio::select! {
        end = &mut reader => {
            let too_large = matches!(end, Ok(ReadEnd::TooLarge));
            outbox.close(if too_large { CloseReason::TooLarge } else { CloseReason::Done });
            if tokio::time::timeout(GRACE, &mut writer).await.is_err() {
                writer.abort();
            }
            if too_large {
                if let Some(r) = raw_read.take() {
                    r.discard(4 * node.config.max_frame_bytes.max(64 * 1024), GRACE).await;
                }
            }
        }
        _ = &mut writer => {
            // The writer sent a close frame (or the socket failed): give the client a moment
            // to answer it, then stop reading.
            if tokio::time::timeout(GRACE, &mut reader).await.is_err() {
                reader.abort();
            }
        }
        _ = close_requested(&mut close_watch) => {
            // Slow, replaced, shutdown...: the writer sends the close frame, unless it is stuck
            // on a socket the client stopped reading, in which case the socket is dropped.
            if tokio::time::timeout(GRACE, &mut writer).await.is_err() {
                writer.abort();
            }
            if tokio::time::timeout(GRACE, &mut reader).await.is_err() {
                reader.abort();
            }
        }
    }
    if outbox.closing() == Some(CloseReason::Slow) {
        Metrics::inc(&node.metrics.slow_client_disconnects);
    }
    Box::pin(cleanup(&node, &id, &shared)).await;
    debug!(reason = ?outbox.closing(), "disconnected");
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

/// Leave every room, give names back, and say goodbye to the room when the client left on
/// purpose (and still held its name: a client that moved to another edge did not leave).
async fn cleanup(node: &Arc<Node>, id: &str, shared: &Shared) {
    node.sessions.remove(id);
    let joined: Vec<Joined> = shared.joined().drain().map(|(_, j)| j).collect();
    let said_goodbye = shared.client_closed.load(Relaxed);
    for j in joined {
        node.rooms.leave(&j.membership, &node.metrics);
        let held = node.presence.release(&j.presence_key, id).await;
        if said_goodbye && held {
            announce_left(node, &j).await;
        }
    }
    node.metrics.connections.fetch_sub(1, Relaxed);
}

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

/// Why the reader stopped.
enum ReadEnd {
    ClientClosed,
    TooLarge,
    Failed,
}

async fn write_loop(
    node: Arc<Node>,
    mut wr: Writer,
    mut frames: mpsc::Receiver<Bytes>,
    mut ctl: mpsc::Receiver<Box<Frame<'static>>>,
    mut signal: watch::Receiver<Signal>,
    shared: Arc<Shared>,
) {
    let ping_every = Duration::from_secs(node.config.ping_interval_secs.max(1));
    let idle_after = Duration::from_secs(node.config.idle_timeout_secs.max(1));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut drain_sent = false;
    let mut ctl_open = true;
    let result: Result<(), WebSocketError> = async {
        loop {
            tokio::select! {
                biased;
                changed = signal.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let s = *signal.borrow_and_update();
                    if s.drain && !drain_sent {
                        drain_sent = true;
                        write_reconnect(&node, &mut wr, "draining").await?;
                        wr.flush().await?;
                    }
                    if let Some(reason) = s.close {
                        if let Some(hint) = reason.hints_reconnect() {
                            if !(drain_sent && hint == "draining") {
                                write_reconnect(&node, &mut wr, hint).await?;
                            }
                        }
                        let (code, text) = reason.close_frame();
                        wr.write_frame(Frame::close(code, text.as_bytes())).await?;
                        wr.flush().await?;
                        return Ok(());
                    }
                }
                f = ctl.recv(), if ctl_open => match f {
                    Some(f) => {
                        let closing = f.opcode == OpCode::Close;
                        wr.write_frame(*f).await?;
                        wr.flush().await?;
                        if closing {
                            return Ok(());
                        }
                    }
                    None => ctl_open = false,
                },
                f = frames.recv() => match f {
                    Some(b) => {
                        wr.write_frame(Frame::text(Payload::Borrowed(&b))).await?;
                        // Batch what is already queued into one flush.
                        for _ in 0..256 {
                            match frames.try_recv() {
                                Ok(b) => wr.write_frame(Frame::text(Payload::Borrowed(&b))).await?,
                                Err(_) => break,
                            }
                        }
                        wr.flush().await?;
                    }
                    None => return Ok(()),
                },
                _ = ping.tick() => {
                    if shared.silent_for() > idle_after {
                        let (code, text) = CloseReason::Idle.close_frame();
                        wr.write_frame(Frame::close(code, text.as_bytes())).await?;
                        wr.flush().await?;
                        return Ok(());
                    }
                    wr.write_frame(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b"natter"))).await?;
                    wr.flush().await?;
                }
            }
        }
    }
    .await;
    if let Err(e) = result {
        debug!(error = %e, "socket write failed");
    }
}

async fn write_reconnect(node: &Node, wr: &mut Writer, reason: &str) -> Result<(), WebSocketError> {
    let f = frame::server_request(
        "reconnect",
        json!({"reason": reason}),
        node.next_request_id(),
    );
    wr.write_frame(Frame::text(Payload::Borrowed(&f))).await
}

/// A token bucket: `rate` per second, up to `burst`.
struct RateLimit {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl RateLimit {
    fn new(rate: f64, burst: f64) -> Self {
        RateLimit {
            tokens: burst.max(1.0),
            rate: rate.max(0.0),
            burst: burst.max(1.0),
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct PendingAck {
    ack: PublishAckFuture,
    id: Option<Value>,
    sent: Instant,
}

/// The reader side: one socket's protocol state machine.
struct Session {
    node: Arc<Node>,
    id: String,
    outbox: Outbox,
    shared: Arc<Shared>,
    rate: RateLimit,
    /// Created on the first publish: idle sockets cost no ack task.
    acks: Option<mpsc::Sender<PendingAck>>,
}

impl Session {
    fn new(node: Arc<Node>, id: String, outbox: Outbox, shared: Arc<Shared>) -> Self {
        let rate = RateLimit::new(node.config.rate_per_sec, node.config.rate_burst);
        Session {
            node,
            id,
            outbox,
            shared,
            rate,
            acks: None,
        }
    }

    fn acks(&mut self) -> &mpsc::Sender<PendingAck> {
        self.acks.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(ACKS_IN_FLIGHT);
            tokio::spawn(await_acks(self.node.clone(), self.outbox.clone(), rx).in_current_span());
            tx
        })
    }

    async fn read_loop(
        mut self,
        mut rd: Reader,
        ctl: mpsc::Sender<Box<Frame<'static>>>,
    ) -> ReadEnd {
        let max = self.node.config.max_frame_bytes;
        let mut send_fn = |f: Frame<'_>| {
            let owned = Box::new(Frame::new(
                true,
                f.opcode,
                None,
                Payload::Owned(f.payload.to_vec()),
            ));
            let ctl = ctl.clone();
            async move { ctl.send(owned).await.map_err(|_| "socket writer is gone") }
        };
        // A fragmented message being assembled (bounded by the frame limit).
        let mut partial: Option<(OpCode, Vec<u8>)> = None;
        loop {
            let frame = match rd.read_frame(&mut send_fn).await {
                Ok(f) => f,
                Err(WebSocketError::FrameTooLarge) => return ReadEnd::TooLarge,
                Err(e) => {
                    debug!(error = %e, "socket read ended");
                    return ReadEnd::Failed;
                }
            };
            self.shared.touch();
            let (opcode, data) = match frame.opcode {
                OpCode::Close => {
                    self.shared.client_closed.store(true, Relaxed);
                    return ReadEnd::ClientClosed;
                }
                OpCode::Text | OpCode::Binary if frame.fin => {
                    if partial.is_some() {
                        return ReadEnd::Failed;
                    }
                    (frame.opcode, frame.payload.to_vec())
                }
                OpCode::Text | OpCode::Binary => {
                    if partial.is_some() {
                        return ReadEnd::Failed;
                    }
                    partial = Some((frame.opcode, frame.payload.to_vec()));
                    continue;
                }
                OpCode::Continuation => {
                    let Some((op, mut buf)) = partial.take() else {
                        return ReadEnd::Failed;
                    };
                    if buf.len() + frame.payload.len() > max {
                        return ReadEnd::TooLarge;
                    }
                    buf.extend_from_slice(&frame.payload);
                    if !frame.fin {
                        partial = Some((op, buf));
                        continue;
                    }
                    (op, buf)
                }
                OpCode::Ping | OpCode::Pong => continue,
            };
            if opcode == OpCode::Binary {
                self.reply_error(
                    None,
                    RpcError::new(
                        ErrorCode::Parse,
                        "binary frames are not accepted; send JSON text",
                    ),
                )
                .await;
                continue;
            }
            if !self.handle(&data).await {
                return ReadEnd::Failed;
            }
        }
    }

    /// Handle one request; false when the socket is gone.
    async fn handle(&mut self, data: &[u8]) -> bool {
        let req = match Request::parse(data, &self.node.limits) {
            Ok(r) => r,
            Err(rej) => {
                debug!(code = rej.error.code.code(), message = %rej.error.message, "bad request");
                return self.reply_error(rej.id.as_ref(), rej.error).await;
            }
        };
        if !self.rate.take() {
            Metrics::inc(&self.node.metrics.rate_limited);
            return self
                .reply_error(
                    req.id.as_ref(),
                    RpcError::new(
                        ErrorCode::RateLimited,
                        "rate limited: slow down; nothing was published",
                    ),
                )
                .await;
        }
        let id = req.id;
        match req.call {
            Call::Ping => self.reply(id.as_ref(), json!("pong")).await,
            // The rarer, larger request futures are boxed so that the socket's long-lived
            // reader task stays small (it exists for every idle connection).
            Call::JoinRoom(j) => Box::pin(self.join(id, j, false)).await,
            Call::Reconnect(j) => Box::pin(self.join(id, j, true)).await,
            Call::TextMessage(t) => self.text(id, t).await,
            Call::LeaveRoom { room_name } => Box::pin(self.leave(id, &room_name)).await,
            Call::Typing { room_name } => self.typing(id, &room_name).await,
            Call::GetHistory(g) => Box::pin(self.history(id, g)).await,
        }
    }

    async fn reply(&self, id: Option<&Value>, result: Value) -> bool {
        self.outbox.send(frame::result(id, result)).await
    }

    async fn reply_error(&self, id: Option<&Value>, err: RpcError) -> bool {
        Metrics::inc(&self.node.metrics.client_errors);
        self.outbox.send(frame::error(id, &err)).await
    }

    fn not_joined(room: &str) -> RpcError {
        RpcError::new(
            ErrorCode::NotJoined,
            format!("room {room:?} is not joined on this socket"),
        )
    }

    async fn join(&mut self, id: Option<Value>, j: Join, reconnect: bool) -> bool {
        let node = self.node.clone();
        let failed = if reconnect {
            ErrorCode::ReconnectFailed
        } else {
            ErrorCode::Unavailable
        };
        let id = id.as_ref();
        // Joining a room this socket is already in (same user) restarts its catch-up.
        let existing = self.shared.joined().remove(&j.room_name);
        if let Some(e) = existing {
            if e.user_id != j.user_id {
                self.shared.joined().insert(j.room_name.clone(), e);
                return self
                    .reply_error(
                        id,
                        RpcError::new(
                            ErrorCode::Unauthorized,
                            "this socket is in the room as another userId",
                        ),
                    )
                    .await;
            }
            node.rooms.leave(&e.membership, &node.metrics);
            if e.user_name != j.user_name {
                node.presence.release(&e.presence_key, &self.id).await;
            }
        }
        if self.shared.joined().len() >= node.config.max_rooms_per_socket {
            return self
                .reply_error(
                    id,
                    RpcError::invalid(format!(
                        "too many rooms on this socket (limit {})",
                        node.config.max_rooms_per_socket
                    )),
                )
                .await;
        }
        let room_token = token::encode(&j.room_name);
        let user_token = token::encode(&j.user_name);
        let holder = Holder {
            user_id: j.user_id.clone(),
            user_name: j.user_name.clone(),
            session_id: self.id.clone(),
            node: node.name.clone(),
        };
        let claimed = match node
            .presence
            .claim(&room_token, &user_token, holder, &self.outbox)
            .await
        {
            Ok(c) => c,
            Err(PresenceError::Taken) => {
                let msg = format!(
                    "user name {:?} is already taken in room {:?}",
                    j.user_name, j.room_name
                );
                return self
                    .reply_error(id, RpcError::new(ErrorCode::NameTaken, msg))
                    .await;
            }
            Err(e @ PresenceError::Unavailable(_)) => {
                warn!(error = %e, "join failed");
                return self
                    .reply_error(id, RpcError::new(failed, format!("{e}; retry")))
                    .await;
            }
        };
        if let Some(old) = &claimed.replaced {
            info!(room = %j.room_name, user = %j.user_name, old_session = %old.session_id, "name taken over by the same userId");
            node.kick(&old.node, &old.session_id).await;
        }
        let member_id = node.next_member_id();
        let membership = match node
            .rooms
            .join(
                &node,
                &j.room_name,
                member_id,
                self.outbox.clone(),
                user_token.clone(),
            )
            .await
        {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "join failed");
                node.presence.release(&claimed.key, &self.id).await;
                return self
                    .reply_error(id, RpcError::new(failed, format!("{e}; retry")))
                    .await;
            }
        };
        let room = membership.room.clone();
        let seam = membership.seam;
        self.shared.joined().insert(
            j.room_name.clone(),
            Joined {
                membership,
                user_id: j.user_id.clone(),
                user_name: j.user_name.clone(),
                user_token: user_token.clone(),
                presence_key: claimed.key,
            },
        );
        if !self.reply(id, json!("OK")).await {
            return false;
        }
        let members = node.presence.members(&room_token).await;
        let welcome = frame::notification(
            "welcome",
            json!({"sessionId": self.id, "node": node.name, "roomName": j.room_name, "members": members,
                   "lastMessageId": (seam > 0).then(|| seam.to_string())}),
        );
        if !self.outbox.send(welcome).await {
            return false;
        }
        match catchup::replay(&node, &self.outbox, &room, j.last_message_id, seam).await {
            Ok(_) => {}
            Err(catchup::CatchupError::SocketGone) => return false,
            Err(e) => {
                warn!(error = %e, "history replay failed; asking the client to resume");
                self.outbox.close(CloseReason::Resync);
                return true;
            }
        }
        room.go_live(member_id, &node.metrics);
        if !reconnect {
            let note = frame::notification(
                "newUser",
                json!({"type": "system", "text": format!("{} has joined the room!", j.user_name),
                       "roomName": j.room_name, "userName": j.user_name,
                       "uuid": uuid::Uuid::new_v4().to_string()}),
            );
            node.publish_event(&room.live_subject, "newUser", &user_token, note)
                .await;
        }
        true
    }

    async fn text(&mut self, id: Option<Value>, t: TextMessage) -> bool {
        let node = self.node.clone();
        let target = {
            let joined = self.shared.joined();
            match joined.get(&t.room_name) {
                None => Err(Self::not_joined(&t.room_name)),
                Some(j) if j.user_id != t.user_id || j.user_name != t.user_name => {
                    Err(RpcError::new(
                        ErrorCode::Unauthorized,
                        "userId/userName do not match the ones this socket joined with",
                    ))
                }
                Some(j) => Ok((
                    j.membership.room.subject.clone(),
                    j.membership.room.token.clone(),
                )),
            }
        };
        let (subject, room_token) = match target {
            Ok(t) => t,
            Err(e) => return self.reply_error(id.as_ref(), e).await,
        };
        let stored = frame::stored_message("textMessage", id.as_ref(), t.params, &now_rfc3339());
        let publish = PublishMessage::build()
            .payload(stored)
            .message_id(subjects::msg_id(&room_token, &t.uuid));
        let sent = Instant::now();
        match node.js.send_publish(subject, publish).await {
            Ok(ack) => {
                Metrics::inc(&node.metrics.messages_in);
                // Backpressure: a client with too many unacknowledged publishes waits here.
                self.acks().send(PendingAck { ack, id, sent }).await.is_ok()
            }
            Err(e) => {
                warn!(error = %e, "publish failed");
                Metrics::inc(&node.metrics.publish_errors);
                self.reply_error(id.as_ref(), unavailable()).await
            }
        }
    }

    async fn leave(&mut self, id: Option<Value>, room: &str) -> bool {
        let Some(j) = self.shared.joined().remove(room) else {
            return self.reply_error(id.as_ref(), Self::not_joined(room)).await;
        };
        self.node.rooms.leave(&j.membership, &self.node.metrics);
        if self.node.presence.release(&j.presence_key, &self.id).await {
            announce_left(&self.node, &j).await;
        }
        self.reply(id.as_ref(), json!("OK")).await
    }

    async fn typing(&mut self, id: Option<Value>, room: &str) -> bool {
        let target = {
            let joined = self.shared.joined();
            joined.get(room).map(|j| {
                (
                    j.membership.room.live_subject.clone(),
                    j.user_token.clone(),
                    j.user_name.clone(),
                )
            })
        };
        let Some((live, user_token, user_name)) = target else {
            return self.reply_error(id.as_ref(), Self::not_joined(room)).await;
        };
        let note = frame::notification("typing", json!({"roomName": room, "userName": user_name}));
        self.node
            .publish_event(&live, "typing", &user_token, note)
            .await;
        match id {
            Some(id) => self.reply(Some(&id), json!("OK")).await,
            None => true,
        }
    }

    async fn history(&mut self, id: Option<Value>, g: GetHistory) -> bool {
        let room = self
            .shared
            .joined()
            .get(&g.room_name)
            .map(|j| j.membership.room.clone());
        let Some(room) = room else {
            return self
                .reply_error(id.as_ref(), Self::not_joined(&g.room_name))
                .await;
        };
        let limit = g.limit.unwrap_or(self.node.config.history_page).max(1) as usize;
        match catchup::history_page(&self.node, &room, id.as_ref(), g.before, limit).await {
            Ok(f) => self.outbox.send(f).await,
            Err(e) => {
                warn!(error = %e, "getHistory failed");
                self.reply_error(
                    id.as_ref(),
                    RpcError::new(
                        ErrorCode::Unavailable,
                        "history temporarily unavailable; retry",
                    ),
                )
                .await
            }
        }
    }
}

fn unavailable() -> RpcError {
    RpcError::new(
        ErrorCode::Unavailable,
        "temporarily unavailable: the message was not stored; retry with the same uuid",
    )
}

/// Await publish acks in order; a failed one becomes a -32010 for its request.
async fn await_acks(node: Arc<Node>, outbox: Outbox, mut rx: mpsc::Receiver<PendingAck>) {
    while let Some(p) = rx.recv().await {
        match p.ack.await {
            Ok(ack) => {
                node.metrics.publish_latency.observe(p.sent.elapsed());
                if ack.duplicate {
                    Metrics::inc(&node.metrics.messages_duplicate);
                    debug!(
                        seq = ack.sequence,
                        "duplicate publish (retry) absorbed by the stream"
                    );
                }
            }
            Err(e) => {
                warn!(error = %e, "publish not acknowledged");
                Metrics::inc(&node.metrics.publish_errors);
                Metrics::inc(&node.metrics.client_errors);
                if !outbox
                    .send(frame::error(p.id.as_ref(), &unavailable()))
                    .await
                {
                    return;
                }
            }
        }
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
