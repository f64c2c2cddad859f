//! The history service: answers `history.<room token>` requests (queue group
//! `natter-history`, so replicas share the load) from Postgres, per the contract in
//! `natter_bus::history`.
//!
//! - `after` only: the oldest `limit` messages with `_id > after`; `more` = newer ones exist.
//! - `before` only: the newest `limit` messages with `_id < before`, returned oldest first;
//!   `more` = older ones exist.
//! - both: the oldest `limit` messages with `after < _id < before`; `more` = newer ones
//!   exist inside the range.
//! - neither: the newest `limit` messages of the room, oldest first; `more` = older exist.
//!
//! `limit` is capped at [`MAX_PAGE`]. Every request gets exactly one reply within the
//! configured timeout: on a bad request, an unknown token, a database failure or a timeout
//! the reply has `error` set and no messages. Only committed rows are visible, so the
//! archive answers for what the archiver has written so far.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::Client;
use bytes::Bytes;
use futures_util::StreamExt;
use natter_bus::history::{HistoryItem, HistoryReply, HistoryRequest, MAX_PAGE};
use serde_json::value::RawValue;
use tokio::sync::{watch, Semaphore};

use crate::metrics::Metrics;
use crate::record::room_from_token;
use crate::store::{Range, Store};

/// The subscription subject matching every room's history subject.
pub const SUBJECT_ALL: &str = "history.*";

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("could not subscribe to {SUBJECT_ALL}: {0}")]
    Subscribe(String),
}

/// The store range a request asks for, with `_id`s clamped into Postgres' bigint.
pub fn range_of(req: &HistoryRequest) -> Range {
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    match (req.after, req.before) {
        (Some(a), None) => Range::After(clamp(a)),
        (None, Some(b)) => Range::Before(clamp(b)),
        (Some(a), Some(b)) => Range::Between(clamp(a), clamp(b)),
        (None, None) => Range::Newest,
    }
}

fn error_reply(msg: impl Into<String>) -> HistoryReply {
    HistoryReply {
        messages: Vec::new(),
        more: false,
        error: Some(msg.into()),
    }
}

/// Answer one request (without the time bound, which the caller applies).
pub async fn answer(store: &Store, subject: &str, payload: &[u8]) -> HistoryReply {
    let Some(token) = subject.strip_prefix("history.") else {
        return error_reply("bad subject");
    };
    let Some(room) = room_from_token(token) else {
        return error_reply("the subject token is not a valid room token");
    };
    let req: HistoryRequest = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => return error_reply(format!("bad request: {e}")),
    };
    let limit = req.limit.min(MAX_PAGE);
    let page = match store.page(&room, range_of(&req), limit).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(room = %room, error = %e, "history query failed");
            return error_reply(format!("archive unavailable: {e}"));
        }
    };
    let mut messages = Vec::with_capacity(page.messages.len());
    for (seq, msg) in page.messages {
        match RawValue::from_string(msg) {
            Ok(raw) => messages.push(HistoryItem { seq, msg: raw }),
            // Postgres validated it as JSON on insert; should it not parse, skip it loudly.
            Err(e) => {
                tracing::error!(seq, error = %e, "archived message is not valid JSON; left out of the reply")
            }
        }
    }
    HistoryReply {
        messages,
        more: page.more,
        error: None,
    }
}

fn encode(reply: &HistoryReply) -> Bytes {
    match serde_json::to_vec(reply) {
        Ok(v) => Bytes::from(v),
        // Serialising owned strings and raw JSON cannot fail; answer with a fixed error.
        Err(_) => Bytes::from_static(
            br#"{"messages":[],"more":false,"error":"could not encode the reply"}"#,
        ),
    }
}

/// Subscribe to every room's history subject in the queue group; returns when shutdown
/// turns true (after unsubscribing, so peers take over) or the subscription ends.
pub async fn serve(
    client: Client,
    store: Store,
    metrics: Arc<Metrics>,
    timeout: Duration,
    concurrency: usize,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), HistoryError> {
    let mut sub = client
        .queue_subscribe(SUBJECT_ALL, natter_bus::subjects::HISTORY_QUEUE.to_string())
        .await
        .map_err(|e| HistoryError::Subscribe(e.to_string()))?;
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    tracing::info!(
        subject = SUBJECT_ALL,
        queue = natter_bus::subjects::HISTORY_QUEUE,
        "history service listening"
    );
    loop {
        let msg = tokio::select! {
            m = sub.next() => match m {
                Some(m) => m,
                None => break,
            },
            _ = shutdown.changed() => break,
        };
        let Some(reply_to) = msg.reply.clone() else {
            tracing::debug!(subject = %msg.subject, "history request without a reply subject ignored");
            continue;
        };
        let permit = match permits.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => break,
        };
        let client = client.clone();
        let store = store.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let reply =
                match tokio::time::timeout(timeout, answer(&store, &msg.subject, &msg.payload))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => error_reply(format!("archive did not answer within {timeout:?}")),
                };
            metrics.history_requests.inc();
            if reply.error.is_some() {
                metrics.history_errors.inc();
            }
            metrics.history_latency.observe(started.elapsed());
            if let Err(e) = client.publish(reply_to, encode(&reply)).await {
                metrics.nats_errors.inc();
                tracing::warn!(error = %e, "could not send a history reply");
            }
            drop(permit);
        });
    }
    let _ = sub.unsubscribe().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |after, before| {
            range_of(&HistoryRequest {
                after,
                before,
                limit: 10,
            })
        };
        assert_eq!(r(Some(5), None), Range::After(5));
        assert_eq!(r(None, Some(9)), Range::Before(9));
        assert_eq!(r(Some(5), Some(9)), Range::Between(5, 9));
        assert_eq!(r(None, None), Range::Newest);
        assert_eq!(r(Some(u64::MAX), None), Range::After(i64::MAX));
    }

    #[test]
    fn error_replies_encode() {
        let b = encode(&error_reply("x"));
        let back: HistoryReply = serde_json::from_slice(&b).unwrap();
        assert_eq!(back.error.as_deref(), Some("x"));
        assert!(back.messages.is_empty());
    }
}
