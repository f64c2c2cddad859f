//! What the filestore's handlers share ([`AppState`]), and readiness as `/readyz` reports it
//! (the operations endpoints themselves are natter-ops'): NATS connected, the `CHAT`
//! stream as this service expects it (a drifted stream is reported, never rewritten), the
//! data directory writable, not shutting down.
//!
//! It holds no handler and no route: handlers depend on it, never on the router.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use natter_bus::DriftWatch;
use natter_ops::{Probe, Readiness, Registry};
use tokio::sync::Semaphore;

use crate::access::Access;
use crate::announce::Announcer;
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::store::Store;

/// Everything the handlers share.
pub struct AppState {
    pub store: Store,
    pub limits: Limits,
    pub registry: Registry,
    pub metrics: Metrics,
    /// Set once NATS is connected and the CHAT stream ensured.
    pub announcer: OnceLock<Announcer>,
    /// Set on SIGTERM: readiness fails so the load balancer moves traffic away.
    pub draining: AtomicBool,
    /// Tokens and what they allow.
    pub access: Access,
    /// One permit per upload being received (`--max-concurrent-uploads`).
    pub uploads: Arc<Semaphore>,
    /// Set once the CHAT stream was checked: its differences from this service's settings.
    pub stream_drift: OnceLock<DriftWatch>,
}

pub type Shared = Arc<AppState>;

impl AppState {
    pub fn new(
        store: Store,
        limits: Limits,
        registry: Registry,
        metrics: Metrics,
        access: Access,
    ) -> AppState {
        let uploads = Arc::new(Semaphore::new(limits.max_concurrent_uploads));
        AppState {
            store,
            limits,
            registry,
            metrics,
            announcer: OnceLock::new(),
            draining: AtomicBool::new(false),
            access,
            uploads,
            stream_drift: OnceLock::new(),
        }
    }

    pub fn nats_connected(&self) -> bool {
        self.announcer.get().is_some_and(Announcer::connected)
    }
}

impl Probe for AppState {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    async fn readiness(&self) -> Readiness {
        if self.draining.load(Ordering::Relaxed) {
            Readiness::not_ready("shutting down")
        } else if !self.nats_connected() {
            Readiness::not_ready("NATS not connected")
        } else if let Some(why) = self
            .stream_drift
            .get()
            .and_then(DriftWatch::not_ready_reason)
        {
            Readiness::not_ready(why)
        } else if !self.store.writable().await {
            Readiness::not_ready("data directory not writable")
        } else {
            Readiness::Ready
        }
    }

    async fn before_scrape(&self) {
        self.metrics
            .nats_connected
            .set(i64::from(self.nats_connected()));
        let free = self.uploads.available_permits();
        let busy = self.limits.max_concurrent_uploads.saturating_sub(free);
        self.metrics.uploads_in_progress.set(busy as i64);
        if let Some(d) = self.stream_drift.get() {
            self.metrics.stream_drift.set(d.drift().len() as i64);
        }
        let ready = self.readiness().await.is_ready();
        self.metrics.ready.set(i64::from(ready));
    }
}
