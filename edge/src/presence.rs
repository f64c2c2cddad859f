//! Who holds which name in which room, cluster-wide, in the `presence` KV bucket.
//!
//! A name is claimed with create-if-absent; the same userId takes an existing claim over
//! (compare-and-set on the revision) and the old session is told to close, wherever it is.
//! The edge refreshes its claims well within the bucket's TTL, so the names of a crashed
//! edge free themselves. A refresh that finds its revision gone means another session took
//! the name: that session's socket is closed as replaced.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use natter_bus::{subjects, StreamReader};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::outbox::{CloseReason, Outbox};

/// Most names listed in a `welcome`.
const MEMBERS_MAX: usize = 1000;

#[derive(Debug, Error)]
pub enum PresenceError {
    #[error("the name is held by another user")]
    Taken,
    #[error("presence store unavailable: {0}")]
    Unavailable(String),
}

/// The value stored under a name's key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Holder {
    pub user_id: String,
    pub user_name: String,
    pub session_id: String,
    pub node: String,
}

/// A successful claim.
#[derive(Debug)]
pub struct Claimed {
    pub key: String,
    pub revision: u64,
    /// The session that held the name before (same userId), to be closed.
    pub replaced: Option<Holder>,
}

struct Claim {
    revision: u64,
    value: Bytes,
    session_id: String,
    outbox: Outbox,
}

/// The presence bucket as one edge uses it.
pub struct Presence {
    kv: kv::Store,
    reader: StreamReader,
    claims: Mutex<HashMap<String, Claim>>,
}

impl Presence {
    pub fn new(kv: kv::Store, reader: StreamReader) -> Self {
        Presence {
            kv,
            reader,
            claims: Mutex::new(HashMap::new()),
        }
    }

    /// Claim `user_name` in a room for a session.
    pub async fn claim(
        &self,
        room_token: &str,
        user_token: &str,
        holder: Holder,
        outbox: &Outbox,
    ) -> Result<Claimed, PresenceError> {
        let key = subjects::presence_key(room_token, user_token);
        let value: Bytes = serde_json::to_vec(&holder)
            .map_err(|e| PresenceError::Unavailable(e.to_string()))?
            .into();
        let unavailable = |e: &dyn std::fmt::Display| PresenceError::Unavailable(e.to_string());
        for _ in 0..5 {
            match self.kv.create(&key, value.clone()).await {
                Ok(revision) => {
                    self.remember(&key, revision, value, &holder.session_id, outbox);
                    return Ok(Claimed {
                        key,
                        revision,
                        replaced: None,
                    });
                }
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(unavailable(&e)),
            }
            let entry = match self.kv.entry(&key).await {
                Ok(Some(entry)) => entry,
                Ok(None) => continue, // expired between the two calls
                Err(e) => return Err(unavailable(&e)),
            };
            let previous = match entry.operation {
                Operation::Put => match serde_json::from_slice::<Holder>(&entry.value) {
                    Ok(h) if h.user_id != holder.user_id => return Err(PresenceError::Taken),
                    Ok(h) => Some(h),
                    Err(_) => None, // unreadable value: treat as free
                },
                Operation::Delete | Operation::Purge => None,
            };
            match self.kv.update(&key, value.clone(), entry.revision).await {
                Ok(revision) => {
                    self.remember(&key, revision, value, &holder.session_id, outbox);
                    let replaced = previous.filter(|p| p.session_id != holder.session_id);
                    return Ok(Claimed {
                        key,
                        revision,
                        replaced,
                    });
                }
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(unavailable(&e)),
            }
        }
        Err(PresenceError::Unavailable(
            "the name is changing hands too fast; retry".into(),
        ))
    }

    fn remember(&self, key: &str, revision: u64, value: Bytes, session_id: &str, outbox: &Outbox) {
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        // A claim of this key by another local session is superseded: close it.
        if let Some(old) = claims.insert(
            key.to_owned(),
            Claim {
                revision,
                value,
                session_id: session_id.to_owned(),
                outbox: outbox.clone(),
            },
        ) {
            if old.session_id != session_id {
                old.outbox.close(CloseReason::Replaced);
            }
        }
    }

    /// Give a name up, unless another session has taken it meanwhile. True when this
    /// session still held it (and it is now free).
    pub async fn release(&self, key: &str, session_id: &str) -> bool {
        let revision = {
            let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
            match claims.get(key) {
                Some(c) if c.session_id == session_id => claims.remove(key).map(|c| c.revision),
                _ => None,
            }
        };
        let Some(rev) = revision else { return false };
        match self.kv.delete_expect_revision(key, Some(rev)).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(key, error = %e, "presence release skipped (name moved on or store down)");
                false
            }
        }
    }

    /// Names currently held in a room.
    pub async fn members(&self, room_token: &str) -> Vec<String> {
        let filter = subjects::presence_room_filter(room_token);
        match self.reader.multi_last(&filter, MEMBERS_MAX).await {
            Ok(msgs) => msgs
                .into_iter()
                .filter(|m| m.headers.get("KV-Operation").is_none())
                .filter_map(|m| serde_json::from_slice::<Holder>(&m.payload).ok())
                .map(|h| h.user_name)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "listing room members failed");
                Vec::new()
            }
        }
    }

    /// Refresh every claim of this edge once; close sessions whose names were taken over.
    pub async fn refresh_all(&self) {
        let snapshot: Vec<(String, u64, Bytes, String)> = {
            let claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
            claims
                .iter()
                .map(|(k, c)| (k.clone(), c.revision, c.value.clone(), c.session_id.clone()))
                .collect()
        };
        for chunk in snapshot.chunks(256) {
            let futs = chunk.iter().map(|(key, rev, value, sid)| async move {
                (
                    key,
                    sid,
                    self.refresh_one(key, *rev, value.clone(), sid).await,
                )
            });
            for (key, sid, outcome) in futures_util::future::join_all(futs).await {
                let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
                let Some(c) = claims.get_mut(key.as_str()) else {
                    continue;
                };
                if c.session_id != *sid {
                    continue;
                }
                match outcome {
                    Refresh::Kept(rev) => c.revision = rev,
                    Refresh::Lost => {
                        tracing::info!(key = %key, session = %sid, "name taken over elsewhere; closing session");
                        c.outbox.close(CloseReason::Replaced);
                        claims.remove(key.as_str());
                    }
                    Refresh::Unknown => {}
                }
            }
        }
    }

    async fn refresh_one(
        &self,
        key: &str,
        revision: u64,
        value: Bytes,
        session_id: &str,
    ) -> Refresh {
        match self.kv.update(key, value.clone(), revision).await {
            Ok(rev) => return Refresh::Kept(rev),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
            Err(e) => {
                tracing::warn!(key, error = %e, "presence refresh failed; will retry");
                return Refresh::Unknown;
            }
        }
        // Our revision is gone: expired (e.g. NATS was unreachable past the TTL), or taken.
        match self.kv.entry(key).await {
            Ok(Some(entry)) if entry.operation == Operation::Put => {
                match serde_json::from_slice::<Holder>(&entry.value) {
                    Ok(h) if h.session_id == session_id => Refresh::Kept(entry.revision),
                    _ => Refresh::Lost,
                }
            }
            Ok(_) => match self.kv.create(key, value).await {
                Ok(rev) => Refresh::Kept(rev),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Refresh::Lost,
                Err(_) => Refresh::Unknown,
            },
            Err(_) => Refresh::Unknown,
        }
    }

    /// Refresh claims every `period` until the edge stops.
    pub fn spawn_refresher(self: &Arc<Self>, period: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.refresh_all().await;
            }
        })
    }
}

enum Refresh {
    Kept(u64),
    Lost,
    Unknown,
}
