//! The `CHAT` stream: the log every stored room message lives in.
//!
//! It is defined once, in `nats/streams/CHAT.json` (NATS API form, usable with
//! `nats stream add --config`), embedded here; operators tune its limits through
//! [`StreamArgs`]. Every service calls [`ensure_chat_stream`] at start-up: creating it when
//! absent and updating it when its managed settings differ, so starting services in any
//! order, or many at once, converges on one definition.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::SetupError;
#[cfg(test)]
use crate::subjects::STREAM;

/// The embedded stream definition.
pub const CHAT_JSON: &str = include_str!("../../nats/streams/CHAT.json");

/// Stream and bucket settings an operator may change (env or flags).
#[derive(Debug, Clone, clap::Args)]
pub struct StreamArgs {
    /// Replicas of the CHAT stream and presence bucket (1 for dev, 3 in production).
    #[arg(long, env = "NATTER_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
    /// How long the stream keeps a message, in seconds (older ones are served by the archive).
    #[arg(long, env = "NATTER_STREAM_MAX_AGE_SECS", default_value_t = 7 * 24 * 3600)]
    pub stream_max_age_secs: u64,
    /// Messages kept per room in the stream (older ones are served by the archive).
    #[arg(
        long,
        env = "NATTER_STREAM_MAX_MSGS_PER_ROOM",
        default_value_t = 100_000
    )]
    pub stream_max_msgs_per_room: i64,
    /// Bytes kept by the stream in total.
    #[arg(long, env = "NATTER_STREAM_MAX_BYTES", default_value_t = 10 * 1024 * 1024 * 1024)]
    pub stream_max_bytes: i64,
    /// Seconds a held user name survives without being refreshed by its edge.
    #[arg(long, env = "NATTER_PRESENCE_TTL_SECS", default_value_t = 30)]
    pub presence_ttl_secs: u64,
}

impl Default for StreamArgs {
    fn default() -> Self {
        StreamArgs {
            stream_replicas: 1,
            stream_max_age_secs: 7 * 24 * 3600,
            stream_max_msgs_per_room: 100_000,
            stream_max_bytes: 10 * 1024 * 1024 * 1024,
            presence_ttl_secs: 30,
        }
    }
}

/// The CHAT stream configuration: the embedded definition with the operator's limits.
pub fn chat_stream_config(args: &StreamArgs) -> Result<stream::Config, SetupError> {
    let mut cfg: stream::Config = serde_json::from_str(CHAT_JSON)?;
    cfg.num_replicas = args.stream_replicas.max(1);
    cfg.max_age = Duration::from_secs(args.stream_max_age_secs);
    cfg.max_messages_per_subject = args.stream_max_msgs_per_room;
    cfg.max_bytes = args.stream_max_bytes;
    Ok(cfg)
}

/// Create or update the CHAT stream. Retries a few times so services racing at start-up
/// converge instead of failing.
pub async fn ensure_chat_stream(
    js: &jetstream::Context,
    args: &StreamArgs,
) -> Result<(), SetupError> {
    let cfg = chat_stream_config(args)?;
    let mut last_err = String::new();
    for attempt in 0..5u32 {
        match js.create_or_update_stream(cfg.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) => {
                last_err = e.to_string();
                tracing::warn!(attempt, error = %e, "ensuring the CHAT stream failed, retrying");
                tokio::time::sleep(Duration::from_millis(200 * (u64::from(attempt) + 1))).await;
            }
        }
    }
    Err(SetupError::Stream(last_err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_definition_parses_and_takes_overrides() {
        let args = StreamArgs {
            stream_replicas: 3,
            stream_max_msgs_per_room: 10,
            ..Default::default()
        };
        let cfg = chat_stream_config(&args).unwrap();
        assert_eq!(cfg.name, STREAM);
        assert_eq!(cfg.subjects, vec!["room.>".to_string()]);
        assert!(cfg.allow_direct);
        assert_eq!(cfg.num_replicas, 3);
        assert_eq!(cfg.max_messages_per_subject, 10);
        assert!(cfg.duplicate_window >= Duration::from_secs(120));
        let rp = cfg.republish.unwrap();
        assert_eq!(
            (rp.source.as_str(), rp.destination.as_str()),
            ("room.>", "live.room.>")
        );
    }
}
