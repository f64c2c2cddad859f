//! The `presence` KV bucket: which user holds which name in which room, cluster-wide, and
//! from which sessions, with a TTL so a dead edge's entries free themselves.
//!
//! Two kinds of keys (tokens are `natter_protocol::token` encodings, see [`subjects`]):
//!
//! | key | value | meaning |
//! |---|---|---|
//! | `<room>.<user>` | [`Owner`] `{userId, userName}` | the name is held by that userId |
//! | `<room>.<user>.<session>` | [`SessionEntry`] `{node, userId}` | one socket joined under it |
//!
//! How the edge keeps these consistent (claim, release, refresh) is its business
//! (`edge/src/presence.rs`); this module creates and opens the bucket, defines the values,
//! and answers "who holds this name" ([`name_holder`]) for any service, e.g. the filestore
//! checking that an uploader holds a name in the room.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::stream::StreamArgs;
use crate::subjects::{self, PRESENCE_BUCKET};
use crate::SetupError;

/// The value of an owner key `<room>.<user>`: who holds the name. Unknown fields are
/// ignored, so values written by older edges (which added `sessionId` and `node`) read too.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    pub user_id: String,
    pub user_name: String,
}

/// The value of a session key `<room>.<user>.<session>`: where that session is served.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionEntry {
    pub node: String,
    pub user_id: String,
}

/// A presence lookup failed (NATS unreachable or too slow).
#[derive(Debug, Error)]
#[error("presence lookup failed: {0}")]
pub struct LookupError(pub String);

/// Open the presence bucket, creating it when absent.
pub async fn ensure_presence(
    js: &jetstream::Context,
    args: &StreamArgs,
) -> Result<kv::Store, SetupError> {
    let cfg = kv::Config {
        bucket: PRESENCE_BUCKET.into(),
        description:
            "natter: user names held per room (<room>.<user> owner, <room>.<user>.<session> sessions)"
                .into(),
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

/// The userId holding the name `user_token` in room `room_token`, or `None` when the name
/// is free; an error when presence cannot be read `within` the bound. (A name whose
/// sessions all died with their edge stays held until the TTL.)
pub async fn name_holder(
    kv: &kv::Store,
    room_token: &str,
    user_token: &str,
    within: std::time::Duration,
) -> Result<Option<String>, LookupError> {
    let key = subjects::presence_owner_key(room_token, user_token);
    let entry = tokio::time::timeout(within, kv.entry(&key))
        .await
        .map_err(|_| LookupError(format!("presence did not answer within {within:?}")))?
        .map_err(|e| LookupError(e.to_string()))?;
    Ok(entry
        .filter(|e| e.operation == kv::Operation::Put)
        .and_then(|e| serde_json::from_slice::<Owner>(&e.value).ok())
        .map(|o| o.user_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: std::time::Duration = std::time::Duration::from_secs(5);

    #[test]
    fn owner_values_of_older_edges_still_read() {
        let old = br#"{"userId":"u1","userName":"Ann","sessionId":"s","node":"edge-0"}"#;
        let o: Owner = serde_json::from_slice(old).unwrap();
        assert_eq!(o.user_id, "u1");
        assert_eq!(o.user_name, "Ann");
    }

    #[tokio::test]
    async fn name_holder_reads_owner_keys_only() {
        let nats = natter_testkit::NatsServer::start().await;
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client);
        let args = StreamArgs {
            presence_ttl_secs: 30,
            ..StreamArgs::default()
        };
        let kv = ensure_presence(&js, &args).await.unwrap();
        assert_eq!(name_holder(&kv, "r", "ann", W).await.unwrap(), None);
        let session = serde_json::to_vec(&SessionEntry {
            node: "edge-0".into(),
            user_id: "u1".into(),
        })
        .unwrap();
        kv.put("r.ann.s1", session.into()).await.unwrap();
        assert_eq!(name_holder(&kv, "r", "ann", W).await.unwrap(), None);
        let owner = serde_json::to_vec(&Owner {
            user_id: "u1".into(),
            user_name: "Ann".into(),
        })
        .unwrap();
        kv.create("r.ann", owner.into()).await.unwrap();
        assert_eq!(
            name_holder(&kv, "r", "ann", W).await.unwrap().as_deref(),
            Some("u1")
        );
        assert_eq!(name_holder(&kv, "r2", "ann", W).await.unwrap(), None);
        kv.delete("r.ann").await.unwrap();
        assert_eq!(name_holder(&kv, "r", "ann", W).await.unwrap(), None);
    }
}
