//! The `archiver` durable pull consumer on `CHAT`, seen from outside the consumer loop: its
//! definition, its creation at start-up, and its lag (read from the server into the
//! consumer gauges). The loop that fetches from it is [`crate::worker`].

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use thiserror::Error;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::worker::WorkerConfig;

#[derive(Debug, Error)]
pub enum ConsumerError {
    #[error("could not create the {0} consumer: {1}")]
    Consumer(String, String),
}

/// The durable consumer's configuration: explicit acks (never AckAll: replicas share the
/// consumer, and AckAll would ack another replica's uncommitted messages), unlimited
/// deliveries (a message is only ever given up on by the archiver itself, as poison).
pub fn consumer_config(cfg: &WorkerConfig) -> pull::Config {
    pull::Config {
        durable_name: Some(cfg.consumer.clone()),
        description: Some("natter archiver: every CHAT message into Postgres".into()),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: cfg.ack_wait,
        max_deliver: -1,
        max_ack_pending: cfg.max_ack_pending,
        max_waiting: 512,
        ..Default::default()
    }
}

/// Create the durable consumer, or update it to `consumer_config` when it exists.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    cfg: &WorkerConfig,
) -> Result<PullConsumer, ConsumerError> {
    let err =
        |e: &dyn std::fmt::Display| ConsumerError::Consumer(cfg.consumer.clone(), e.to_string());
    let stream = js
        .get_stream(natter_bus::subjects::STREAM)
        .await
        .map_err(|e| err(&e))?;
    match stream.create_consumer(consumer_config(cfg)).await {
        Ok(c) => Ok(c),
        Err(e) => {
            // An existing consumer whose settings cannot be updated in place: use it as it is.
            tracing::warn!(error = %e, consumer = %cfg.consumer, "could not create or update the consumer; using the existing one");
            stream
                .get_consumer(&cfg.consumer)
                .await
                .map_err(|e| err(&e))
        }
    }
}

/// Read the consumer's pending counts into the lag gauges every `every`, until shutdown.
pub async fn monitor_lag(
    consumer: PullConsumer,
    metrics: Arc<Metrics>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        match tokio::time::timeout(Duration::from_secs(5), consumer.get_info()).await {
            Ok(Ok(info)) => {
                let pending = i64::try_from(info.num_pending).unwrap_or(i64::MAX);
                let ack_pending = i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX);
                metrics.consumer_pending.set(pending);
                metrics.consumer_ack_pending.set(ack_pending);
                metrics
                    .consumer_lag
                    .set(pending.saturating_add(ack_pending));
            }
            Ok(Err(e)) => {
                metrics.nats_errors.inc();
                tracing::debug!(error = %e, "reading consumer info failed");
            }
            Err(_) => {
                metrics.nats_errors.inc();
                tracing::debug!("reading consumer info timed out");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_is_explicit_ack() {
        let cfg = WorkerConfig {
            consumer: "archiver".into(),
            batch_size: 10,
            fetch_wait: Duration::from_millis(100),
            writers: 2,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 100,
            retry_max: Duration::from_secs(1),
        };
        let c = consumer_config(&cfg);
        assert_eq!(c.ack_policy, AckPolicy::Explicit);
        assert_eq!(c.durable_name.as_deref(), Some("archiver"));
        assert_eq!(c.max_deliver, -1);
    }
}
