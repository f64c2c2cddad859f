//! The acknowledgement pipeline: a socket's publishes are awaited in order by one task, so
//! the reader never waits for the stream; a publish the stream does not acknowledge becomes
//! a `-32010` for its request (the client retries with the same uuid and the stream's dedupe
//! keeps it once). The sender's real acknowledgement is its own echo, delivered by the room.

use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::context::PublishAckFuture;
use natter_protocol::{frame, ErrorCode, RpcError};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, warn, Instrument};

use crate::node::Node;
use crate::outbox::Outbox;

/// Publishes awaiting their ack, per socket; a client with more waits (backpressure).
const IN_FLIGHT: usize = 256;

/// A publish awaiting the stream's ack.
pub struct PendingAck {
    pub ack: PublishAckFuture,
    pub id: Option<Value>,
    pub sent: Instant,
}

/// The error a client gets when its message was not stored.
pub fn unavailable() -> RpcError {
    RpcError::new(
        ErrorCode::Unavailable,
        "temporarily unavailable: the message was not stored; retry with the same uuid",
    )
}

/// Start the ack task of a socket (done on its first publish: idle sockets cost no task).
pub fn spawn(node: Arc<Node>, outbox: Outbox) -> mpsc::Sender<PendingAck> {
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    tokio::spawn(await_acks(node, outbox, rx).in_current_span());
    tx
}

/// Await publish acks in order; a failed one becomes a -32010 for its request.
async fn await_acks(node: Arc<Node>, outbox: Outbox, mut rx: mpsc::Receiver<PendingAck>) {
    let m = &node.metrics;
    while let Some(p) = rx.recv().await {
        match p.ack.await {
            Ok(ack) => {
                m.publish_latency.observe(p.sent.elapsed());
                if ack.duplicate {
                    m.messages_duplicate.inc();
                    debug!(
                        seq = ack.sequence,
                        "duplicate publish (retry) absorbed by the stream"
                    );
                }
            }
            Err(e) => {
                warn!(error = %e, "publish not acknowledged");
                m.publish_errors.inc();
                m.client_errors.inc();
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
