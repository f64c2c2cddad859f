//! The `presence` KV bucket: which user holds which name in which room, cluster-wide, and
//! from which sessions; and the `presence-leases` bucket, whose keys say which edges are
//! alive to hold them.
//!
//! Two kinds of presence keys (tokens are `natter_protocol::token` encodings, see
//! [`subjects`]):
//!
//! | key | value | meaning |
//! |---|---|---|
//! | `<room>.<user>` | [`Owner`] `{userId, userName}` | the name is held by that userId |
//! | `<room>.<user>.<session>` | [`SessionEntry`] `{node, userId, lease}` | one socket joined under it |
//!
//! Presence keys do not expire: an idle session costs no writes. Each edge instead renews
//! one key of its own in `presence-leases` (whose keys expire after the presence TTL), and
//! every session entry names the lease it lives under. When a lease is gone, the live edges
//! remove that edge's entries (`edge/src/presence/lease.rs`). Keys are removed by deleting
//! their message by sequence (a compare-and-delete on the revision that leaves no marker),
//! so a bucket that sees millions of sessions come and go keeps nothing of them, and the
//! subjects under a prefix, as the stream's subject index lists them, are exactly the keys
//! that exist.
//!
//! How the edge keeps these consistent (claim, release, lease, sweep) is its business
//! (`edge/src/presence/`); this module creates and opens the buckets, defines the values,
//! and answers "who holds this name" ([`name_holder`]) for any service, e.g. the filestore
//! checking that an uploader holds a name in the room.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::stream::StreamArgs;
use crate::subjects::{self, LEASES_BUCKET, PRESENCE_BUCKET};
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
    /// The key in `presence-leases` of the edge process serving the session; the entry is
    /// removed once that lease is gone. `None` in entries of edges from before leases
    /// (they refreshed each entry instead, so a stale one is one not written for a TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

/// A presence lookup failed (NATS unreachable or too slow).
#[derive(Debug, Error)]
#[error("presence lookup failed: {0}")]
pub struct LookupError(pub String);

/// Open the presence bucket, creating it when absent. Its stream is made here rather than
/// by the KV API, which would deny deleting a message by sequence (how this version
/// removes keys) and cannot be changed afterwards. A bucket made by natter from before
/// edge leases (that kind: max age, deletes denied) is deleted and made again; edges of
/// that version put their entries back at their next refresh, within a third of the TTL.
pub async fn ensure_presence(
    js: &jetstream::Context,
    args: &StreamArgs,
) -> Result<kv::Store, SetupError> {
    let stream_name = format!("KV_{PRESENCE_BUCKET}");
    let mut last_err = String::new();
    for attempt in 0..5u32 {
        match js.get_stream(&stream_name).await {
            Ok(mut stream) => match stream.info().await {
                Ok(info) if info.config.deny_delete || !info.config.max_age.is_zero() => {
                    tracing::warn!(
                        "the presence bucket was made by natter from before edge leases; \
                         making it again (names held on older edges come back within a \
                         third of the presence TTL)"
                    );
                    if let Err(e) = js.delete_stream(&stream_name).await {
                        last_err = e.to_string();
                    }
                    continue;
                }
                Ok(_) => match js.get_key_value(PRESENCE_BUCKET).await {
                    Ok(store) => return Ok(store),
                    Err(e) => last_err = e.to_string(),
                },
                Err(e) => last_err = e.to_string(),
            },
            Err(_) => match js.create_stream(presence_stream(args)).await {
                Ok(_) => continue, // opened as a bucket on the next round
                Err(e) => last_err = e.to_string(),
            },
        }
        tracing::warn!(attempt, error = %last_err, "opening the presence bucket failed, retrying");
        tokio::time::sleep(Duration::from_millis(200 * (u64::from(attempt) + 1))).await;
    }
    Err(SetupError::Presence(last_err))
}

/// The presence bucket's stream: what the KV API would make for one key per subject (no
/// history), but with deletes by sequence allowed.
fn presence_stream(args: &StreamArgs) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: format!("KV_{PRESENCE_BUCKET}"),
        description: Some(
            "natter: user names held per room (<room>.<user> owner, <room>.<user>.<session> sessions)"
                .into(),
        ),
        subjects: vec![format!("$KV.{PRESENCE_BUCKET}.>")],
        max_messages_per_subject: 1,
        max_message_size: 1024,
        discard: jetstream::stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: false,
        deny_purge: false,
        allow_direct: true,
        duplicate_window: Duration::from_secs(120),
        storage: jetstream::stream::StorageType::File,
        num_replicas: args.stream_replicas.max(1),
        ..Default::default()
    }
}

/// Open the leases bucket, creating it when absent: one key per edge process, expiring
/// after the presence TTL unless renewed.
pub async fn ensure_leases(
    js: &jetstream::Context,
    args: &StreamArgs,
) -> Result<kv::Store, SetupError> {
    let cfg = kv::Config {
        bucket: LEASES_BUCKET.into(),
        description: "natter: one lease per live edge; presence entries live under them".into(),
        history: 1,
        max_age: Duration::from_secs(args.presence_ttl_secs.max(1)),
        max_value_size: 1024,
        storage: jetstream::stream::StorageType::File,
        num_replicas: args.stream_replicas.max(1),
        ..Default::default()
    };
    open_or_create(js, cfg).await
}

async fn open_or_create(js: &jetstream::Context, cfg: kv::Config) -> Result<kv::Store, SetupError> {
    let mut last_err = String::new();
    for attempt in 0..5u32 {
        if let Ok(store) = js.get_key_value(&cfg.bucket).await {
            return Ok(store);
        }
        match js.create_key_value(cfg.clone()).await {
            Ok(store) => return Ok(store),
            Err(e) => {
                last_err = e.to_string();
                tracing::warn!(attempt, bucket = %cfg.bucket, error = %e, "creating a bucket failed, retrying");
                tokio::time::sleep(Duration::from_millis(200 * (u64::from(attempt) + 1))).await;
            }
        }
    }
    Err(SetupError::Presence(last_err))
}

/// The userId holding the name `user_token` in room `room_token`, or `None` when the name
/// is free; an error when presence cannot be read `within` the bound. (A name whose
/// sessions all died with their edge stays held until a live edge sweeps that edge's
/// entries, about a TTL later.)
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
        // (Once in a clean-clone CI run this connect was refused right after the port
        // answered; the server's log says why if it happens again.)
        let client = async_nats::connect(nats.url())
            .await
            .unwrap_or_else(|e| panic!("connect: {e}\nnats-server log:\n{}", nats.log()));
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
            lease: Some("edge-0-1".into()),
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

    #[tokio::test]
    async fn a_bucket_from_before_leases_is_made_again() {
        let nats = natter_testkit::NatsServer::start().await;
        // (Once in a clean-clone CI run this connect was refused right after the port
        // answered; the server's log says why if it happens again.)
        let client = async_nats::connect(nats.url())
            .await
            .unwrap_or_else(|e| panic!("connect: {e}\nnats-server log:\n{}", nats.log()));
        let js = jetstream::new(client);
        // What edges from before leases created: entries expire by the bucket's max age.
        let old = js
            .create_key_value(kv::Config {
                bucket: PRESENCE_BUCKET.into(),
                history: 1,
                max_age: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .unwrap();
        let owner = serde_json::to_vec(&Owner {
            user_id: "u1".into(),
            user_name: "Ann".into(),
        })
        .unwrap();
        old.put("r.ann", owner.into()).await.unwrap();
        let args = StreamArgs::default();
        let kv = ensure_presence(&js, &args).await.unwrap();
        let mut stream = js.get_stream("KV_presence").await.unwrap();
        let config = stream.info().await.unwrap().config.clone();
        assert!(config.max_age.is_zero(), "{:?}", config.max_age);
        assert!(!config.deny_delete);
        assert_eq!(name_holder(&kv, "r", "ann", W).await.unwrap(), None);
        // An edge of the older version puts its names back through its old handle.
        let owner = serde_json::to_vec(&Owner {
            user_id: "u1".into(),
            user_name: "Ann".into(),
        })
        .unwrap();
        old.create("r.ann", owner.into()).await.unwrap();
        assert_eq!(
            name_holder(&kv, "r", "ann", W).await.unwrap().as_deref(),
            Some("u1")
        );
        // A second start finds nothing to change and keeps the entries.
        let kv = ensure_presence(&js, &args).await.unwrap();
        assert_eq!(
            name_holder(&kv, "r", "ann", W).await.unwrap().as_deref(),
            Some("u1")
        );
    }
}
