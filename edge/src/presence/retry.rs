//! Releases that could not reach the presence bucket (NATS was unreachable when a session
//! left or was closed): kept here and retried each lease period; a name freed by a retry
//! is announced as a sweep's is (`userLeft`). `natter_edge_presence_releases_pending`
//! shows how many wait.

use std::sync::MutexGuard;

use tracing::debug;

use super::{Presence, Released};

/// A release that could not reach the store: retried each lease period.
#[derive(Debug, Clone)]
pub(super) struct Unreleased {
    pub(super) session_key: String,
    pub(super) revision: u64,
    pub(super) owner_key: String,
    pub(super) sessions_filter: String,
}

impl Presence {
    fn unreleased(&self) -> MutexGuard<'_, Vec<Unreleased>> {
        self.unreleased.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leave a release to the retries.
    pub(super) fn defer(&self, job: Unreleased) {
        let pending = {
            let mut jobs = self.unreleased();
            jobs.push(job);
            jobs.len()
        };
        self.set_pending(pending);
    }

    fn set_pending(&self, pending: usize) {
        if let Some(c) = self.counters.get() {
            c.releases_pending
                .set(i64::try_from(pending).unwrap_or(i64::MAX));
        }
    }

    /// Retry the releases that could not reach the store (a name freed this way is
    /// announced as a sweep's is: `userLeft`).
    pub(super) async fn retry_unreleased(&self) {
        let jobs = std::mem::take(&mut *self.unreleased());
        if jobs.is_empty() {
            return;
        }
        self.count(|c| &c.release_retries, jobs.len() as u64);
        for job in jobs {
            // A session joined again under the same key since is not ours to remove.
            if self.local().contains_key(&job.session_key) {
                continue;
            }
            if let Err(e) = self
                .remove_session_key(&job.session_key, job.revision)
                .await
            {
                debug!(key = %job.session_key, error = %e, "release retry failed");
                self.unreleased().push(job);
                continue;
            }
            match self
                .free_if_unheld(&job.owner_key, &job.sessions_filter, None)
                .await
            {
                Released::Freed => self.freed(&job.owner_key),
                Released::StillHeld => {}
                Released::Unknown => self.unreleased().push(job),
            }
        }
        let pending = self.unreleased().len();
        self.set_pending(pending);
    }
}
