//! Who holds which name in which room, cluster-wide, and from which sessions, in the
//! `presence` KV bucket (values and key helpers in `natter_bus::presence_bucket`).
//!
//! A name may be held by one userId, from any number of sessions (sockets) at once, on any
//! edges. No session ever closes another.
//!
//! - **owner key** `<room>.<user>` = `{userId, userName}`: created if absent; an existing
//!   one with another userId means the name is taken (`-32001`).
//! - **session key** `<room>.<user>.<session>` = `{node, userId, lease}`: one per joined
//!   socket, under this edge's lease (see [`lease`]).
//!
//! **Claim** (join): (1) create the owner key, or read it and accept it when it is ours
//! (created → this is the first session: `newUser`); (2) put the session key; (3) *touch*
//! the owner key with compare-and-set on the revision read in (1). If (3) finds the owner
//! key deleted (a concurrent last leaver removed it), it is created again (the name became
//! held again: `newUser`); if another userId holds it now, the session key is removed and
//! the join gets `-32001`.
//!
//! **Release** (leave, socket gone): delete the session key, read the owner key's revision,
//! *then* list the remaining session keys (the subjects `$KV.presence.<room>.<user>.*` as the
//! stream's leader lists them); when none remain, delete the owner key *expecting that
//! revision* (→ `userLeft`). A wrong revision means someone touched it meanwhile: read and
//! list again (bounded retries).
//!
//! Every deletion is of the key's message by its sequence, i.e. its revision: a
//! compare-and-delete that leaves no marker, so a listing of subjects is a listing of keys.
//! (Listing subjects comes from the stream's subject index and costs what it returns;
//! reading the keys' messages under a wildcard, by multi-last or next-by-subject, walks the
//! stream's blocks: with 20k keys that was three quarters of an idle nats-server's CPU.)
//!
//! **Why a joined session is never left without its owner key (the race that matters)**:
//! JetStream orders every write to the bucket, and reads see every write acknowledged
//! before them. A joiner writes its session key *before* it touches the owner key; the
//! touch changes the owner's revision. A leaver reads the owner's revision *before* it
//! lists the sessions, and deletes only with that revision. Take the joiner's touch:
//! - after the leaver's read of the revision: the leaver's delete fails on the revision;
//!   it reads and lists again and now sees the joiner's session key;
//! - before that read: the joiner's session key was written earlier still, so the
//!   leaver's listing (after its read) sees it and the leaver keeps the name;
//! - and if the leaver's delete lands first, the joiner's touch fails and it re-creates
//!   the owner key (and says `newUser`, after the leaver's `userLeft`).
//!
//! Two joiners of different userIds are ordered by create-if-absent on the owner key, and a
//! joiner that lost it between (1) and (3) finds out in (3) and withdraws.
//! (`edge/tests/sessions.rs` races a join against the last leave and checks the name; with
//! the read and the listing the other way round, one run in three failed at 25 rounds.)
//!
//! **Keys do not expire** (an idle session costs no writes). What a crashed edge
//! left behind is removed by the live edges once its lease is gone; a release that could
//! not reach the store is retried by this edge each lease period (`retry.rs`); and when this edge's own
//! lease lapsed (NATS unreachable for a TTL), it restores its entries ([`Presence::restore`]):
//! see [`lease`].
//!
//! **Restore** (after a lapse): each session key still served here is compare-and-set, or
//! put back if it was removed meanwhile; each owner key it has sessions under is read and
//! re-created if it is gone (only while a session here still holds the name; the room hears
//! `newUser`, as whoever freed it announced `userLeft`). If an owner
//! key now belongs to another userId (ours was freed during the outage and someone took the
//! name), the sessions under it are closed with 1013 "resync": the client rejoins and gets
//! a clear `-32001`.
//!
//! **Repair**: listings come from the stream's leader and deletions compare the revision,
//! so no stale read can delete an owner key under a live session. As a safety net for
//! whatever else might (an edge of an older version, a hand on the bucket), each room's
//! periodic presence check re-creates a name that sessions here hold but the listing lacks
//! ([`Presence::repair_room`], in `restore.rs`).
//!
//! **Crashes**: a dead edge's session keys, and the owner keys left without sessions, are
//! removed by a sweep of a live edge about a TTL after the crash. No `userLeft` is sent at
//! that moment; each edge's room notices the name gone at its next member check and says
//! `userLeft` then. A name whose other sessions live on stays held throughout.

pub mod lease;
mod restore;
mod retry;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use natter_bus::{subjects, Owner, SessionEntry, StreamReader};
use natter_ops::{Counter, Gauge};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use retry::Unreleased;

use crate::outbox::Outbox;

/// Most names listed in a `welcome`.
const MEMBERS_MAX: usize = 1000;
/// Most names of a room one presence listing asks for (one reply of the stream's leader,
/// ~50 bytes per name: 20,000 fill NATS's default 1 MiB `max_payload`, which bounds a
/// listable room; the k8s config allows 2 MiB).
const LISTING_MAX: usize = 20_000;
/// Most sessions of one user in one room looked at when deciding whether one remains.
const SESSIONS_MAX: usize = 1000;
/// Rounds of a claim or release against concurrent writers before giving up.
const ROUNDS: usize = 8;
/// Keys restored concurrently; a round's chunks are spread over half the lease period.
const RESTORE_CHUNK: usize = 64;

#[derive(Debug, Error)]
pub enum PresenceError {
    #[error("the name is held by another user")]
    Taken,
    #[error("presence store unavailable: {0}")]
    Unavailable(String),
}

fn unavailable(e: impl std::fmt::Display) -> PresenceError {
    PresenceError::Unavailable(e.to_string())
}

/// A successful claim.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub owner_key: String,
    pub session_key: String,
    /// The name was not held before this session (tell the room: `newUser`).
    pub first: bool,
}

/// What releasing a session did to its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// That was the last session: the name is free (tell the room: `userLeft`).
    Freed,
    /// Other sessions still hold the name (or it had already moved on).
    StillHeld,
    /// The store could not be reached; this edge retries the release each lease period.
    Unknown,
}

/// One session joined on this edge.
struct Local {
    owner_key: String,
    owner_value: Bytes,
    user_id: String,
    sessions_filter: String,
    session_value: Bytes,
    revision: u64,
    outbox: Outbox,
}

/// The names held in a room, as one listing of presence saw them.
#[derive(Debug, Default, Clone)]
pub struct RoomNames {
    pub names: Vec<String>,
    /// Their owner keys.
    pub keys: HashSet<String>,
    /// False when the room has more names than one listing returns.
    pub complete: bool,
}

/// A name (its owner key, `<room>.<user>`) that changed hands with no joining or leaving
/// client to announce it: what its room should be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameChange {
    /// Freed by a sweep of a dead edge's sessions or a retried release: `userLeft`.
    Freed(String),
    /// Re-created under a session here after it was gone: `newUser`.
    HeldAgain(String),
}

/// The presence bucket as one edge uses it.
pub struct Presence {
    kv: kv::Store,
    leases: kv::Store,
    reader: StreamReader,
    node: String,
    /// This edge process's key in the leases bucket, named in each of its session keys.
    lease: String,
    /// The presence TTL: how long a lease lives unrenewed.
    ttl: Duration,
    /// This edge's sessions, by session key (ordered: a room's are one range).
    local: Mutex<BTreeMap<String, Local>>,
    unreleased: Mutex<Vec<Unreleased>>,
    /// Where names that changed hands with no client's edge to announce them go: freed by a
    /// sweep of a dead edge's sessions or a release retried later, or held again by a
    /// restore or repair here.
    announce: OnceLock<mpsc::UnboundedSender<NameChange>>,
    counters: OnceLock<Counters>,
}

/// The edge's metrics this module moves (`METRICS.md`: `natter_edge_presence_*`).
#[derive(Debug, Clone)]
pub struct Counters {
    pub sweeps: Counter,
    pub swept_sessions: Counter,
    pub names_freed: Counter,
    pub names_restored: Counter,
    pub release_retries: Counter,
    pub releases_pending: Gauge,
    pub lease_lapses: Counter,
}

impl Presence {
    /// `kv` is the presence bucket, `leases` the leases bucket, `reader` reads the
    /// presence bucket's stream; `ttl` is the presence TTL. The lease is not taken yet:
    /// [`Presence::take_lease`] before the first claim.
    pub fn new(
        kv: kv::Store,
        leases: kv::Store,
        reader: StreamReader,
        node: String,
        ttl: Duration,
    ) -> Self {
        let lease = format!(
            "{}-{}",
            subjects::subject_safe(&node),
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        );
        Presence {
            kv,
            leases,
            reader,
            node,
            lease,
            ttl: ttl.max(Duration::from_secs(1)),
            local: Mutex::new(BTreeMap::new()),
            unreleased: Mutex::new(Vec::new()),
            announce: OnceLock::new(),
            counters: OnceLock::new(),
        }
    }

    /// Send names that changed hands with no joining or leaving client to announce them to
    /// `tx`, so that their rooms can be told (`userLeft`, `newUser`). Set once; later calls
    /// are ignored.
    pub fn announce_to(&self, tx: mpsc::UnboundedSender<NameChange>) {
        let _ = self.announce.set(tx);
    }

    /// Count into these metrics. Set once; later calls are ignored.
    pub fn count_with(&self, counters: Counters) {
        let _ = self.counters.set(counters);
    }

    /// Count one event, when counters are set.
    fn count(&self, pick: impl FnOnce(&Counters) -> &Counter, n: u64) {
        if let Some(c) = self.counters.get() {
            pick(c).inc_by(n);
        }
    }

    /// A name was freed with no leaving session here to announce it.
    fn freed(&self, owner_key: &str) {
        self.count(|c| &c.names_freed, 1);
        self.announce(NameChange::Freed(owner_key.to_owned()));
    }

    /// A name held here was gone from presence and is held again (a restore after a lapse,
    /// or a repair): whoever freed it announced `userLeft`, so the room hears `newUser`.
    fn held_again(&self, owner_key: &str) {
        self.count(|c| &c.names_restored, 1);
        self.announce(NameChange::HeldAgain(owner_key.to_owned()));
    }

    fn announce(&self, change: NameChange) {
        if let Some(tx) = self.announce.get() {
            let _ = tx.send(change);
        }
    }

    /// This edge process's lease key.
    pub fn lease_key(&self) -> &str {
        &self.lease
    }

    fn local(&self) -> MutexGuard<'_, BTreeMap<String, Local>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hold `user_name` in a room for session `session_id` of `user_id`.
    #[tracing::instrument(skip_all, fields(room = room_token, user = user_token))]
    pub async fn claim(
        &self,
        room_token: &str,
        user_token: &str,
        user_id: &str,
        user_name: &str,
        session_id: &str,
        outbox: &Outbox,
    ) -> Result<Claimed, PresenceError> {
        let owner_key = subjects::presence_owner_key(room_token, user_token);
        let session_key = subjects::presence_session_key(room_token, user_token, session_id);
        let owner_value: Bytes = serde_json::to_vec(&Owner {
            user_id: user_id.to_owned(),
            user_name: user_name.to_owned(),
        })
        .map_err(unavailable)?
        .into();
        let session_value: Bytes = serde_json::to_vec(&SessionEntry {
            node: self.node.clone(),
            user_id: user_id.to_owned(),
            lease: Some(self.lease.clone()),
        })
        .map_err(unavailable)?
        .into();

        // (1) The owner key: ours already, or created now.
        let (mut owner_rev, mut first) = self.hold_owner(&owner_key, &owner_value, user_id).await?;
        // (2) This session's key, remembered at once so that a restore keeps it.
        let revision = self
            .kv
            .put(&session_key, session_value.clone())
            .await
            .map_err(unavailable)?;
        self.local().insert(
            session_key.clone(),
            Local {
                owner_key: owner_key.clone(),
                owner_value: owner_value.clone(),
                user_id: user_id.to_owned(),
                sessions_filter: subjects::presence_sessions_filter(room_token, user_token),
                session_value,
                revision,
                outbox: outbox.clone(),
            },
        );
        // (3) Touch the owner key, so that a concurrent last leaver cannot delete it.
        let outcome = async {
            for _ in 0..ROUNDS {
                match self
                    .kv
                    .update(&owner_key, owner_value.clone(), owner_rev)
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
                    Err(e) => return Err(unavailable(e)),
                }
                match self.owner(&owner_key).await? {
                    Some((uid, rev)) if uid == user_id => owner_rev = rev,
                    Some(_) => return Err(PresenceError::Taken),
                    None => match self.kv.create(&owner_key, owner_value.clone()).await {
                        Ok(_) => {
                            debug!("the name was freed meanwhile; held again");
                            first = true;
                            return Ok(());
                        }
                        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                        Err(e) => return Err(unavailable(e)),
                    },
                }
            }
            Err(PresenceError::Unavailable(
                "the name is changing hands too fast; retry".into(),
            ))
        }
        .await;
        match outcome {
            Ok(()) => Ok(Claimed {
                owner_key,
                session_key,
                first,
            }),
            Err(e) => {
                self.forget(&session_key).await;
                Err(e)
            }
        }
    }

    /// Create the owner key, or accept an existing one of `user_id`. Returns its revision
    /// and whether it was created.
    async fn hold_owner(
        &self,
        key: &str,
        value: &Bytes,
        user_id: &str,
    ) -> Result<(u64, bool), PresenceError> {
        for _ in 0..ROUNDS {
            match self.kv.create(key, value.clone()).await {
                Ok(rev) => return Ok((rev, true)),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(unavailable(e)),
            }
            match self.owner(key).await? {
                Some((uid, rev)) if uid == user_id => return Ok((rev, false)),
                Some(_) => return Err(PresenceError::Taken),
                None => continue, // deleted or expired between the two calls
            }
        }
        Err(PresenceError::Unavailable(
            "the name is changing hands too fast; retry".into(),
        ))
    }

    /// The userId holding an owner key and the key's revision; `None` when it is free.
    /// An unreadable value counts as someone else's.
    async fn owner(&self, key: &str) -> Result<Option<(String, u64)>, PresenceError> {
        match self.kv.entry(key).await.map_err(unavailable)? {
            Some(e) if e.operation == Operation::Put => {
                let uid = serde_json::from_slice::<Owner>(&e.value)
                    .map(|o| o.user_id)
                    .unwrap_or_default();
                Ok(Some((uid, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Drop a session this edge no longer serves, without touching its owner key.
    async fn forget(&self, session_key: &str) {
        let local = self.local().remove(session_key);
        if let Some(local) = local {
            self.purge_session(session_key.to_owned(), local).await;
        }
    }

    /// Remove the key of a session that is gone from `local`, or leave it to the retries.
    async fn purge_session(&self, session_key: String, local: Local) {
        if let Err(e) = self.remove_session_key(&session_key, local.revision).await {
            debug!(key = %session_key, error = %e, "removing a session key failed; will retry");
            self.defer(Unreleased {
                session_key,
                revision: local.revision,
                owner_key: local.owner_key,
                sessions_filter: local.sessions_filter,
            });
        }
    }

    /// Remove a session key of this edge, last written at `revision` as far as this edge
    /// knows (a restore may have rewritten it meanwhile: then the current one).
    async fn remove_session_key(&self, key: &str, revision: u64) -> Result<(), PresenceError> {
        let mut revision = revision;
        for _ in 0..ROUNDS {
            if self
                .reader
                .delete_seq(revision)
                .await
                .map_err(unavailable)?
            {
                return Ok(());
            }
            match self.kv.entry(key).await.map_err(unavailable)? {
                Some(e) if e.operation == Operation::Put => revision = e.revision,
                _ => return Ok(()), // already removed (swept while the lease had lapsed)
            }
        }
        Err(PresenceError::Unavailable(
            "the session key keeps changing".into(),
        ))
    }

    /// Give a session's hold on a name back; frees the name when it was the last session.
    #[tracing::instrument(skip(self))]
    pub async fn release(&self, session_key: &str) -> Released {
        let Some(local) = self.local().remove(session_key) else {
            return Released::StillHeld; // never held, or closed by a restore
        };
        let job = Unreleased {
            session_key: session_key.to_owned(),
            revision: local.revision,
            owner_key: local.owner_key,
            sessions_filter: local.sessions_filter,
        };
        if let Err(e) = self.remove_session_key(session_key, job.revision).await {
            warn!(error = %e, "presence release failed; retried each lease period");
            self.defer(job);
            return Released::Unknown;
        }
        let released = self
            .free_if_unheld(&job.owner_key, &job.sessions_filter, Some(&local.user_id))
            .await;
        if released == Released::Unknown {
            self.defer(job);
        }
        released
    }

    /// Free the name under `owner_key` when no session key under it remains (and, with
    /// `user_id`, only while that userId holds it).
    async fn free_if_unheld(
        &self,
        owner_key: &str,
        sessions_filter: &str,
        user_id: Option<&str>,
    ) -> Released {
        for _ in 0..ROUNDS {
            // The owner's revision is read *before* the sessions are listed: a joiner that
            // writes its session key after the listing touches the owner after this read,
            // so the purge below fails on the revision instead of orphaning that session.
            let rev = match self.owner(owner_key).await {
                Ok(Some((uid, rev))) if user_id.is_none_or(|u| u == uid) => rev,
                Ok(_) => return Released::StillHeld, // already freed (or taken) meanwhile
                Err(e) => {
                    warn!(error = %e, "reading the name failed; will retry");
                    return Released::Unknown;
                }
            };
            match self.live_sessions(sessions_filter).await {
                Ok(0) => {}
                Ok(_) => return Released::StillHeld,
                Err(e) => {
                    warn!(error = %e, "listing sessions failed; will retry");
                    return Released::Unknown;
                }
            }
            // Deleting the owner's message by its sequence: only while nobody wrote it since.
            match self.reader.delete_seq(rev).await {
                Ok(true) => return Released::Freed,
                Ok(false) => continue,
                Err(e) => {
                    warn!(error = %e, "freeing the name failed; will retry");
                    return Released::Unknown;
                }
            }
        }
        Released::Unknown
    }

    /// How many session keys under a name are live.
    /// (The stream's leader lists them from its subject index; keys leave no marker when
    /// removed, so every subject listed is a key that exists.)
    async fn live_sessions(&self, filter: &str) -> Result<usize, natter_bus::ReadError> {
        Ok(self.reader.subjects(filter, SESSIONS_MAX).await?.len())
    }

    /// Names currently held in a room (owner keys only).
    pub async fn members(&self, room_token: &str) -> Vec<String> {
        match self.members_checked(room_token).await {
            Ok(mut held) => {
                held.names.truncate(MEMBERS_MAX);
                held.names
            }
            Err(e) => {
                warn!(error = %e, "listing room members failed");
                Vec::new()
            }
        }
    }

    /// Names currently held in a room (sorted), their owner keys, and whether the list is
    /// complete (a room with more than `LISTING_MAX` (20,000) names is listed in part).
    pub async fn members_checked(&self, room_token: &str) -> Result<RoomNames, String> {
        let filter = subjects::presence_room_filter(room_token);
        let listed = self
            .reader
            .subjects(&filter, LISTING_MAX)
            .await
            .map_err(|e| e.to_string())?;
        let mut held = RoomNames {
            complete: listed.len() < LISTING_MAX,
            ..RoomNames::default()
        };
        for subject in listed.into_keys() {
            // `<room>.<user>`: the name is the user token's decoding.
            let Some(key) = subjects::presence_key_of_subject(&subject) else {
                continue;
            };
            let Some(name) = key
                .split_once('.')
                .and_then(|(_, user)| natter_protocol::token::decode(user).ok())
            else {
                continue;
            };
            held.names.push(name);
            held.keys.insert(key.to_owned());
        }
        held.names.sort_unstable();
        Ok(held)
    }
}
