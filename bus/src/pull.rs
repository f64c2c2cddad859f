//! One pull request on a durable consumer, as every natter worker makes it (the archiver's
//! and the bots' consumers on `CHAT`).

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures_util::StreamExt;

/// Up to `max` messages, returning as soon as the server has delivered what is available,
/// or after `wait` when nothing is. A status ending the request early (e.g. max ack
/// pending) keeps what already came; it is an error only when nothing did.
pub async fn fetch_batch(
    consumer: &PullConsumer,
    max: usize,
    wait: Duration,
) -> Result<Vec<jetstream::Message>, String> {
    let mut batch = consumer
        .fetch()
        .max_messages(max)
        .expires(wait)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(max.min(1024));
    while let Some(m) = batch.next().await {
        match m {
            Ok(m) => out.push(m),
            Err(e) => {
                if out.is_empty() {
                    return Err(e.to_string());
                }
                tracing::debug!(error = %e, "pull request ended early");
                break;
            }
        }
    }
    Ok(out)
}
