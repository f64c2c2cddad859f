//! What the archiver's parts share ([`Shared`]), and how the operations endpoints (served
//! by natter-ops: `/healthz`, `/readyz`, `/metrics`) see it: ready once set up, not
//! shutting down, NATS connected and Postgres answering.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use natter_ops::{Probe, Readiness, Registry};

use crate::metrics::Metrics;
use crate::store::Store;

/// State shared by the endpoints and the rest of the archiver.
pub struct Shared {
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    pub store: Store,
    /// Set once the NATS connection exists.
    pub nats: OnceLock<async_nats::Client>,
    /// Set once migrations ran and the consumer loop and history service are running.
    pub ready: AtomicBool,
    pub shutting_down: AtomicBool,
    /// Set once the CHAT stream was checked: its differences from this archiver's settings.
    pub stream_drift: OnceLock<natter_bus::DriftWatch>,
}

impl Shared {
    pub fn nats_up(&self) -> bool {
        self.nats
            .get()
            .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected)
    }
}

impl Probe for Shared {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    async fn readiness(&self) -> Readiness {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Readiness::not_ready("shutting down");
        }
        if !self.ready.load(Ordering::Relaxed) {
            return Readiness::not_ready("starting");
        }
        if !self.nats_up() {
            return Readiness::not_ready("NATS unreachable");
        }
        if let Some(why) = self.stream_drift.get().and_then(|d| d.not_ready_reason()) {
            return Readiness::not_ready(why);
        }
        if let Err(e) = self.store.ping(Duration::from_secs(1)).await {
            self.metrics.db_errors.inc();
            return Readiness::not_ready(format!("Postgres unreachable: {e}"));
        }
        Readiness::Ready
    }

    async fn before_scrape(&self) {
        self.metrics.nats_up.set(i64::from(self.nats_up()));
        if let Some(d) = self.stream_drift.get() {
            self.metrics.stream_drift.set(d.drift().len() as i64);
        }
    }
}
