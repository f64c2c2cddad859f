//! The `presence` KV bucket: which user holds which name in which room, cluster-wide
//! (`<room token>.<user token>` → holder), with a TTL so a dead edge's names free themselves.
//! What a holder means is the edge's business; this only creates and opens the bucket.

use std::time::Duration;

use async_nats::jetstream::{self, kv};

use crate::stream::StreamArgs;
use crate::subjects::PRESENCE_BUCKET;
use crate::SetupError;

/// Open the presence bucket, creating it when absent.
pub async fn ensure_presence(
    js: &jetstream::Context,
    args: &StreamArgs,
) -> Result<kv::Store, SetupError> {
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
    Err(SetupError::Presence(last_err))
}
