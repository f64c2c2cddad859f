//! Putting this edge's presence entries back: all of them after its lease lapsed
//! ([`Presence::restore`]), or a room's names that a listing lacks
//! ([`Presence::repair_room`]); see the module doc of [`super`] for when and why.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
use bytes::Bytes;
use tracing::{info, warn};

use super::{Local, Presence, RoomNames, RESTORE_CHUNK};
use crate::outbox::CloseReason;

impl Presence {
    /// Re-create the owner keys of names that sessions here hold in a room but a complete
    /// listing (`held`) did not show. The release protocol never deletes such a key; this
    /// is the safety net for whatever else might (an edge of an older version, a hand on
    /// the bucket). A name another userId holds by now closes its sessions here with
    /// `resync`.
    pub async fn repair_room(&self, room_token: &str, held: &RoomNames) {
        if !held.complete {
            return;
        }
        let prefix = format!("{room_token}.");
        let missing: HashMap<String, (Bytes, String)> = self
            .local()
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, l)| !held.keys.contains(&l.owner_key))
            .map(|(_, l)| {
                (
                    l.owner_key.clone(),
                    (l.owner_value.clone(), l.user_id.clone()),
                )
            })
            .collect();
        for (key, (value, uid)) in missing {
            if !self.restore_owner(&key, value, &uid).await {
                self.close_sessions_under(&key).await;
            }
        }
    }

    /// Put back this edge's session keys and the owner keys it has sessions under, once,
    /// after its lease lapsed (other edges may have swept them meanwhile), spread over about
    /// `spread`: a round is thousands of writes to the bucket, and sent at once they stall
    /// room messages behind them on the same NATS connection and cores.
    pub async fn restore(&self, spread: Duration) {
        type Snapshot = (String, u64, Bytes);
        let (sessions, owners): (Vec<Snapshot>, HashMap<String, (Bytes, String)>) = {
            let local = self.local();
            let sessions = local
                .iter()
                .map(|(k, l)| (k.clone(), l.revision, l.session_value.clone()))
                .collect();
            let owners = local
                .values()
                .map(|l| {
                    (
                        l.owner_key.clone(),
                        (l.owner_value.clone(), l.user_id.clone()),
                    )
                })
                .collect();
            (sessions, owners)
        };
        let owners: Vec<_> = owners.into_iter().collect();
        let rounds = sessions.len().div_ceil(RESTORE_CHUNK) + owners.len().div_ceil(RESTORE_CHUNK);
        let pause = spread / u32::try_from(rounds.max(1)).unwrap_or(u32::MAX);
        let mut first = true;
        for chunk in sessions.chunks(RESTORE_CHUNK) {
            if !std::mem::take(&mut first) {
                tokio::time::sleep(pause).await;
            }
            let futs = chunk.iter().map(|(key, rev, value)| async move {
                (key, self.restore_session(key, *rev, value.clone()).await)
            });
            for (key, rev) in futures_util::future::join_all(futs).await {
                if let (Some(rev), Some(l)) = (rev, self.local().get_mut(key.as_str())) {
                    l.revision = rev;
                }
            }
        }
        for chunk in owners.chunks(RESTORE_CHUNK) {
            if !std::mem::take(&mut first) {
                tokio::time::sleep(pause).await;
            }
            let futs = chunk.iter().map(|(key, (value, uid))| async move {
                (key, self.restore_owner(key, value.clone(), uid).await)
            });
            for (key, still_ours) in futures_util::future::join_all(futs).await {
                if !still_ours {
                    self.close_sessions_under(key).await;
                }
            }
        }
    }

    /// Make sure a session key exists; its new revision, or `None` when unknown.
    async fn restore_session(&self, key: &str, revision: u64, value: Bytes) -> Option<u64> {
        match self.kv.update(key, value.clone(), revision).await {
            Ok(rev) => return Some(rev),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
            Err(e) => {
                warn!(key, error = %e, "presence restore failed; will retry");
                return None;
            }
        }
        // Swept while the lease had lapsed, or released meanwhile: put it back only while
        // the session is still here.
        if !self.local().contains_key(key) {
            return None;
        }
        match self.kv.put(key, value).await {
            Ok(rev) => Some(rev),
            Err(e) => {
                warn!(key, error = %e, "presence restore failed; will retry");
                None
            }
        }
    }

    /// Make sure an owner key exists while a session here holds the name: false when it
    /// now belongs to another userId.
    async fn restore_owner(&self, key: &str, value: Bytes, user_id: &str) -> bool {
        let restored = match self.owner(key).await {
            Ok(Some((uid, _))) => return uid == user_id,
            // Gone: re-created only while a session here still holds the name. The round
            // works from a snapshot taken up to half a period ago; a name whose last
            // session left since (its leaver deleted the key) must stay free.
            Ok(None) if !self.local().values().any(|l| l.owner_key == key) => return true,
            Ok(None) => match self.kv.create(key, value).await {
                Ok(_) => {
                    info!(key, "a name held here was gone from presence; re-created");
                    self.held_again(key);
                    Ok(())
                }
                // Someone created it first: the room's next presence check sees whose it is.
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(Some(e.to_string())),
            },
            Err(e) => Err(Some(e.to_string())),
        };
        if let Err(Some(e)) = restored {
            warn!(key, error = %e, "presence restore of a name failed");
        }
        true
    }

    /// The name under `owner_key` is another userId's now: close this edge's sessions under
    /// it with `resync`, so that their clients rejoin and learn it (`-32001`).
    async fn close_sessions_under(&self, owner_key: &str) {
        let lost: Vec<(String, Local)> = {
            let mut local = self.local();
            let keys: Vec<String> = local
                .iter()
                .filter(|(_, l)| l.owner_key == owner_key)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| local.remove(&k).map(|l| (k, l)))
                .collect()
        };
        for (key, local) in lost {
            info!(key = %key, "name now held by another userId; closing the session to resync");
            local.outbox.close(CloseReason::Resync);
            self.purge_session(key, local).await;
        }
    }
}
