//! What the filestore's handlers share ([`AppState`]), and readiness as `/readyz` reports it
//! (the operations endpoints themselves are natter-ops'): NATS connected and the `CHAT`
//! stream ensured, the data directory writable, not shutting down.
//!
//! It holds no handler and no route: handlers depend on it, never on the router.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use natter_ops::{Probe, Readiness, Registry};

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
}

pub type Shared = Arc<AppState>;

impl AppState {
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
        let ready = self.readiness().await.is_ready();
        self.metrics.ready.set(i64::from(ready));
    }
}
