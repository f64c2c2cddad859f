//! The stream and bucket every service relies on, and how services connect.
//!
//! `CHAT` is defined once, in `nats/streams/CHAT.json` (NATS API form, usable with
//! `nats stream add --config`), embedded here; operators tune its limits through
//! [`StreamArgs`]. Every service calls [`ensure_chat_stream`] at start-up: creating it when
//! absent and updating it when its managed settings differ, so starting services in any
//! order, or many at once, converges on one definition.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use thiserror::Error;

use crate::subjects::PRESENCE_BUCKET;
#[cfg(test)]
use crate::subjects::STREAM;

/// The embedded stream definition.
pub const CHAT_JSON: &str = include_str!("../streams/CHAT.json");

#[derive(Debug, Error)]
pub enum LayoutError {
    #[error("the embedded CHAT stream definition is invalid: {0}")]
    Definition(#[from] serde_json::Error),
    #[error("could not create or update the CHAT stream: {0}")]
    Stream(String),
    #[error("could not create or open the presence bucket: {0}")]
    Presence(String),
    #[error("could not connect to NATS: {0}")]
    Connect(String),
}

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
pub fn chat_stream_config(args: &StreamArgs) -> Result<stream::Config, LayoutError> {
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
) -> Result<(), LayoutError> {
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
    Err(LayoutError::Stream(last_err))
}

/// Open the presence bucket, creating it when absent.
pub async fn ensure_presence(
    js: &jetstream::Context,
    args: &StreamArgs,
) -> Result<kv::Store, LayoutError> {
    let cfg = kv::Config {
        bucket: PRESENCE_BUCKET.into(),
        description: "natter: user names held per room (<room token>.<user token>)".into(),
        history: 1,
        max_age: Duration::from_secs(args.presence_ttl_secs.max(1)),
        max_value_size: 1024,
        storage: jetstream::stream::StorageType::File,
        num_replicas: args.stream_replicas.max(1),
        ..Default::default()
    };
    let mut last_err = String::new();
    for attempt in 0..5u32 {
        if let Ok(store) = js.get_key_value(PRESENCE_BUCKET).await {
            return Ok(store);
        }
        match js.create_key_value(cfg.clone()).await {
            Ok(store) => return Ok(store),
            Err(e) => {
                last_err = e.to_string();
                tracing::warn!(attempt, error = %e, "creating the presence bucket failed, retrying");
                tokio::time::sleep(Duration::from_millis(200 * (u64::from(attempt) + 1))).await;
            }
        }
    }
    Err(LayoutError::Presence(last_err))
}

/// Connect to NATS as `name`: keeps reconnecting forever, logs connection events, and
/// waits for the first connection up to `first_connect` (services start before NATS is
/// ready in Kubernetes; the wait keeps a misconfigured URL from hanging silently).
pub async fn connect(
    url: &str,
    name: &str,
    first_connect: Duration,
) -> Result<async_nats::Client, LayoutError> {
    let name_owned = name.to_owned();
    let opts = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .subscription_capacity(64 * 1024)
        .request_timeout(Some(Duration::from_secs(5)))
        .event_callback(move |event| {
            let name = name_owned.clone();
            async move {
                match event {
                    async_nats::Event::Connected => tracing::info!(client = %name, "NATS connected"),
                    async_nats::Event::Disconnected => tracing::warn!(client = %name, "NATS disconnected"),
                    async_nats::Event::SlowConsumer(sid) => {
                        tracing::warn!(client = %name, sid, "NATS slow consumer: messages dropped (repaired from the stream)")
                    }
                    other => tracing::info!(client = %name, event = %other, "NATS event"),
                }
            }
        });
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LayoutError::Connect(format!("bad NATS URL {url:?}: {e}")))?;
    let client = opts
        .connect(servers)
        .await
        .map_err(|e| LayoutError::Connect(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + first_connect;
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() >= deadline {
            return Err(LayoutError::Connect(format!(
                "no connection to {url} within {first_connect:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(client)
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
