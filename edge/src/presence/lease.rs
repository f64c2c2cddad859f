//! This edge's lease, and the sweep that removes what dead edges left in presence.
//!
//! Presence keys do not expire. Each edge process holds one key in the `presence-leases`
//! bucket instead, whose keys expire after the presence TTL unless renewed; the edge renews
//! it every third of the TTL (one write per edge per period, however many sessions it
//! serves) and names it in each of its session keys.
//!
//! **Lapse**: when a renewal finds the lease gone (NATS unreachable, or this process
//! stalled, for a TTL), the edge takes it again and then restores its entries
//! ([`Presence::restore`]): other edges may have swept them meanwhile.
//!
//! **Sweep**: a session key is dead when the lease it names is not among the live leases,
//! or, written by an edge from before leases (no lease named), when it was not written for
//! a TTL. The sweep reads every entry of the bucket *first* and lists the live leases
//! *after*: a session key written under a lease that is still live at the listing cannot
//! be taken for dead (a lapsed edge takes its lease again before it restores its keys).
//! Each dead key is deleted at the revision the scan saw, so one rewritten since stays.
//! Then every name left without sessions (those of the deleted keys, and any owner
//! key that has had none for a TTL, e.g. a claim that failed half-way) is freed by the
//! release protocol of [`super`], so a concurrent joiner never loses its owner key, and
//! announced to their rooms (`userLeft`, through [`Presence::announce_to`]). This
//! edge's own lease is never swept: what it failed to remove, it retries itself. Deletion
//! markers a TTL old (only edges from before leases wrote them) are removed too.
//!
//! **When**: at start (leases that died while no edge ran), when a lease live at the
//! previous period is gone, and every [`CATCH_ALL`] periods. A sweep reads the whole bucket,
//! so the live edges take turns: a sweep first creates the [`SWEEP_KEY`] key in the leases
//! bucket (it expires with the TTL), and an edge that finds it taken leaves the sweep to
//! its holder, unless that sweep had started before this edge's reason to sweep arose.
//!
//! The live leases are listed through a consumer, which the stream leader serves, not by
//! direct get: a lagging replica could answer without a lease just taken.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use futures_util::TryStreamExt;
use natter_bus::{subjects, SessionEntry, StoredMessage};
use time::OffsetDateTime;
use tracing::{debug, info, warn};

use super::{unavailable, Presence, PresenceError, Released};

/// The key in the leases bucket that an edge holds while it sweeps.
pub const SWEEP_KEY: &str = "sweep";
/// Lease periods between sweeps that no dead lease asked for (names left without sessions,
/// entries of edges from before leases).
pub const CATCH_ALL: u32 = 10;

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Session keys of dead edges removed.
    pub sessions: usize,
    /// Names freed because no session held them any more.
    pub names: usize,
}

/// A session key as the sweep's scan saw it.
struct Seen {
    key: String,
    owner_key: String,
    revision: u64,
    lease: Option<String>,
    stale: bool,
}

impl Presence {
    /// Take this edge's lease; its revision. Called before the first claim, and again when
    /// the lease lapsed.
    pub async fn take_lease(&self) -> Result<u64, PresenceError> {
        self.leases
            .put(&self.lease, Bytes::from(self.node.clone()))
            .await
            .map_err(unavailable)
    }

    /// Give the lease up (a drained edge holds no sessions): the other edges sweep whatever
    /// is left under it at once instead of a TTL later.
    pub async fn drop_lease(&self) {
        if let Err(e) = self.leases.purge(&self.lease).await {
            debug!(error = %e, "giving the lease up failed; it expires");
        }
    }

    /// Every `period` until the edge stops: renew the lease (restoring this edge's entries
    /// after a lapse), retry failed releases, and sweep when a reason arose.
    pub fn spawn_lease(
        self: &Arc<Self>,
        revision: u64,
        period: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut keeper = Keeper {
                revision: Some(revision),
                seen: HashSet::new(),
                due: true,
                blocked_by: None,
                ticks: 0,
            };
            let start = tokio::time::Instant::now() + period;
            let mut tick = tokio::time::interval_at(start, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                keeper.tick(&me, period).await;
            }
        })
    }

    /// The live leases: the keys of the leases bucket but [`SWEEP_KEY`].
    pub async fn live_leases(&self) -> Result<HashSet<String>, String> {
        let list = async {
            let keys = self.leases.keys().await.map_err(|e| e.to_string())?;
            keys.try_filter(|k| futures_util::future::ready(k != SWEEP_KEY))
                .try_collect::<HashSet<String>>()
                .await
                .map_err(|e| e.to_string())
        };
        tokio::time::timeout(self.ttl, list)
            .await
            .map_err(|_| "listing the leases timed out".to_owned())?
    }

    /// Remove the entries of dead edges, then free the names left without sessions.
    #[tracing::instrument(skip(self), fields(lease = %self.lease))]
    pub async fn sweep(&self) -> Result<Swept, String> {
        let now = OffsetDateTime::now_utc();
        let ttl = self.ttl;
        let stale = |m: &StoredMessage| {
            m.time
                .as_deref()
                .and_then(|t| {
                    OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
                })
                .is_some_and(|t| now - t > ttl)
        };
        let mut sessions = Vec::new();
        // Owner keys, and whether each was last written more than a TTL ago.
        let mut owners: HashMap<String, bool> = HashMap::new();
        let mut held: HashSet<String> = HashSet::new();
        let mut markers: Vec<u64> = Vec::new();
        let all = format!("$KV.{}.>", subjects::PRESENCE_BUCKET);
        self.reader
            .scan(&all, 1, None, |m| {
                if m.headers.get("KV-Operation").is_some() {
                    if stale(&m) {
                        markers.push(m.seq);
                    }
                    return true;
                }
                let Some(key) = subjects::presence_key_of_subject(&m.subject) else {
                    return true;
                };
                let mut tokens = key.splitn(3, '.');
                match (tokens.next(), tokens.next(), tokens.next()) {
                    (Some(_), Some(_), None) => {
                        owners.insert(key.to_owned(), stale(&m));
                    }
                    (Some(room), Some(user), Some(_)) => {
                        let owner_key = subjects::presence_owner_key(room, user);
                        held.insert(owner_key.clone());
                        sessions.push(Seen {
                            key: key.to_owned(),
                            owner_key,
                            revision: m.seq,
                            lease: serde_json::from_slice::<SessionEntry>(&m.payload)
                                .ok()
                                .and_then(|e| e.lease),
                            stale: stale(&m),
                        });
                    }
                    _ => {}
                }
                true
            })
            .await
            .map_err(|e| e.to_string())?;
        let live = self.live_leases().await?;

        let mut swept = Swept::default();
        let mut names: HashSet<String> = owners
            .into_iter()
            .filter(|(k, stale)| *stale && !held.contains(k))
            .map(|(k, _)| k)
            .collect();
        for s in sessions {
            let dead = match &s.lease {
                Some(l) => *l != self.lease && !live.contains(l),
                None => s.stale,
            };
            if !dead {
                continue;
            }
            // Deleted only at the revision scanned: one rewritten since is alive.
            if self
                .reader
                .delete_seq(s.revision)
                .await
                .map_err(|e| e.to_string())?
            {
                debug!(key = %s.key, lease = ?s.lease, "dead session removed");
                swept.sessions += 1;
                names.insert(s.owner_key);
            }
        }
        // Deletion markers, which edges from before leases left (this version leaves
        // none): gone once they are a TTL old.
        for seq in markers {
            self.reader
                .delete_seq(seq)
                .await
                .map_err(|e| e.to_string())?;
        }
        for owner_key in names {
            let Some((room, user)) = owner_key.split_once('.') else {
                continue;
            };
            let filter = subjects::presence_sessions_filter(room, user);
            if self.free_if_unheld(&owner_key, &filter, None).await == Released::Freed {
                swept.names += 1;
                self.freed(&owner_key);
            }
        }
        Ok(swept)
    }
}

/// The lease task's state between periods.
struct Keeper {
    /// The lease's revision after this edge's last write; `None` when not held.
    revision: Option<u64>,
    /// The live leases at the previous period.
    seen: HashSet<String>,
    /// A reason to sweep arose and no sweep has run since.
    due: bool,
    /// The revision of another edge's sweep key found when this edge wanted to sweep: that
    /// sweep may have started before the reason arose, a later one (another revision) not.
    blocked_by: Option<u64>,
    ticks: u32,
}

impl Keeper {
    async fn tick(&mut self, p: &Presence, period: Duration) {
        self.ticks = self.ticks.wrapping_add(1);
        if !self.renew(p, period).await {
            return;
        }
        p.retry_unreleased().await;
        match p.live_leases().await {
            Ok(live) => {
                if self.seen.iter().any(|l| !live.contains(l)) {
                    self.wake();
                }
                self.seen = live;
            }
            Err(e) => debug!(error = %e, "listing the leases failed"),
        }
        if self.ticks.is_multiple_of(CATCH_ALL) {
            self.wake();
        }
        if self.due {
            self.sweep_if_free(p).await;
        }
    }

    fn wake(&mut self) {
        self.due = true;
        self.blocked_by = None;
    }

    /// Renew the lease, or take it again after a lapse and restore this edge's entries.
    /// False when the store cannot be reached (nothing else is tried this period).
    async fn renew(&mut self, p: &Presence, period: Duration) -> bool {
        let value = Bytes::from(p.node.clone());
        if let Some(rev) = self.revision {
            match p.leases.update(&p.lease, value, rev).await {
                Ok(rev) => {
                    self.revision = Some(rev);
                    return true;
                }
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
                Err(e) => {
                    warn!(error = %e, "renewing the presence lease failed; will retry");
                    return false;
                }
            }
            // Written by a renewal whose reply was lost, or gone.
            match p.leases.entry(&p.lease).await {
                Ok(Some(e)) if e.operation == Operation::Put => {
                    self.revision = Some(e.revision);
                    return true;
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "reading the presence lease failed; will retry");
                    return false;
                }
            }
        }
        warn!("this edge's presence lease lapsed; taking it again and restoring its entries");
        p.count(|c| &c.lease_lapses, 1);
        match p.take_lease().await {
            Ok(rev) => self.revision = Some(rev),
            Err(e) => {
                self.revision = None;
                warn!(error = %e, "taking the presence lease failed; will retry");
                return false;
            }
        }
        p.restore(period / 2).await;
        true
    }

    async fn sweep_if_free(&mut self, p: &Presence) {
        match p
            .leases
            .create(SWEEP_KEY, Bytes::from(p.lease.clone()))
            .await
        {
            Ok(_) => match p.sweep().await {
                Ok(swept) => {
                    p.count(|c| &c.sweeps, 1);
                    p.count(|c| &c.swept_sessions, swept.sessions as u64);
                    if swept != Swept::default() {
                        info!(
                            sessions = swept.sessions,
                            names = swept.names,
                            "swept dead edges' presence entries"
                        );
                    }
                    self.due = false;
                    self.blocked_by = None;
                }
                Err(e) => warn!(error = %e, "presence sweep failed; will retry"),
            },
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                if let Ok(Some(lock)) = p.leases.entry(SWEEP_KEY).await {
                    if lock.value == p.lease.as_bytes() {
                        // This edge's own sweep failed earlier: try again under it.
                        match p.sweep().await {
                            Ok(swept) => {
                                p.count(|c| &c.sweeps, 1);
                                p.count(|c| &c.swept_sessions, swept.sessions as u64);
                                self.due = false;
                            }
                            Err(e) => warn!(error = %e, "presence sweep failed; will retry"),
                        }
                        return;
                    }
                    match self.blocked_by {
                        None => self.blocked_by = Some(lock.revision),
                        Some(rev) if rev != lock.revision => {
                            self.due = false; // a sweep started since the reason arose
                            self.blocked_by = None;
                        }
                        Some(_) => {}
                    }
                }
            }
            Err(e) => debug!(error = %e, "taking the sweep key failed"),
        }
    }
}
