//! The socket's write half: one task that writes the socket's queued frames (batched into
//! one flush), the reader's control frames, pings, the drain `reconnect` request and the
//! close frame, and closes a socket the client has left silent for too long.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError, WebSocketWrite};
use natter_protocol::frame;
use serde_json::json;
use tokio::io::WriteHalf;
use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::read::Control;
use super::write_buffer::LazyBufWriter;
use super::{Io, Liveness};
use crate::outbox::{CloseReason, Signal};

pub type Writer = WebSocketWrite<LazyBufWriter<WriteHalf<Io>>>;

/// Most queued frames written before one flush.
const BATCH: usize = 256;

/// The writer's settings.
#[derive(Debug, Clone, Copy)]
pub struct WriteSettings {
    pub ping_every: Duration,
    pub idle_after: Duration,
}

/// What the write task reads from.
pub struct WriteInputs {
    pub frames: mpsc::Receiver<Bytes>,
    pub control: mpsc::Receiver<Control>,
    pub signal: watch::Receiver<Signal>,
}

/// Write until the socket closes, fails, or is told to close. `next_request_id` numbers the
/// server's `reconnect` requests (clients only honour one that carries an id).
pub async fn write_loop(
    mut wr: Writer,
    inputs: WriteInputs,
    settings: WriteSettings,
    liveness: Arc<Liveness>,
    next_request_id: impl Fn() -> u64,
) {
    let WriteInputs {
        mut frames,
        mut control,
        mut signal,
    } = inputs;
    let ping_every = settings.ping_every.max(Duration::from_secs(1));
    let idle_after = settings.idle_after.max(Duration::from_secs(1));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut drain_sent = false;
    let mut control_open = true;
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
                        write_reconnect(&mut wr, "draining", next_request_id()).await?;
                        wr.flush().await?;
                    }
                    if let Some(reason) = s.close {
                        if let Some(hint) = reason.hints_reconnect() {
                            if !(drain_sent && hint == "draining") {
                                write_reconnect(&mut wr, hint, next_request_id()).await?;
                            }
                        }
                        let (code, text) = reason.close_frame();
                        wr.write_frame(Frame::close(code, text.as_bytes())).await?;
                        wr.flush().await?;
                        return Ok(());
                    }
                }
                f = control.recv(), if control_open => match f {
                    Some(f) => {
                        let closing = f.opcode == OpCode::Close;
                        wr.write_frame(*f).await?;
                        wr.flush().await?;
                        if closing {
                            return Ok(());
                        }
                    }
                    None => control_open = false,
                },
                f = frames.recv() => match f {
                    Some(b) => {
                        wr.write_frame(Frame::text(Payload::Borrowed(&b))).await?;
                        // Batch what is already queued into one flush.
                        for _ in 0..BATCH {
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
                    if liveness.silent_for() > idle_after {
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

async fn write_reconnect(wr: &mut Writer, reason: &str, id: u64) -> Result<(), WebSocketError> {
    let f = frame::server_request("reconnect", json!({"reason": reason}), id);
    wr.write_frame(Frame::text(Payload::Borrowed(&f))).await
}
