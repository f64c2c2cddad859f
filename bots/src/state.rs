//! What the handlers and the operations routes share, and readiness.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use natter_bus::DriftWatch;
use natter_ops::{Probe, Readiness, Registry as MetricsRegistry};

use crate::access::Access;
use crate::api::ApiError;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::sandbox::Sandbox;

pub struct AppState {
    pub access: Access,
    pub sandbox: Arc<Sandbox>,
    pub metrics: Arc<Metrics>,
    pub metrics_registry: MetricsRegistry,
    pub max_script_bytes: usize,
    pub max_bots_per_room: usize,
    /// Set once NATS is connected and the bucket is open.
    pub registry: OnceLock<Registry>,
    pub client: OnceLock<async_nats::Client>,
    pub stream_drift: OnceLock<DriftWatch>,
    pub draining: AtomicBool,
}

impl AppState {
    /// The bots registry, or 503 while NATS is not reached yet.
    pub fn bots(&self) -> Result<&Registry, ApiError> {
        self.registry
            .get()
            .filter(|r| r.loaded())
            .ok_or_else(|| ApiError::Unavailable("the bots bucket is not loaded yet".into()))
    }

    pub fn metrics_rejected_compile(&self) {
        tracing::debug!("a script was rejected at upload: it does not compile");
    }

    fn nats_connected(&self) -> bool {
        self.client
            .get()
            .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected)
    }
}

impl Probe for AppState {
    fn registry(&self) -> &MetricsRegistry {
        &self.metrics_registry
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
        } else if !self.registry.get().is_some_and(Registry::loaded) {
            Readiness::not_ready("the bots bucket is not loaded yet")
        } else {
            Readiness::Ready
        }
    }

    async fn before_scrape(&self) {
        self.metrics
            .nats_connected
            .set(i64::from(self.nats_connected()));
        if let Some(r) = self.registry.get() {
            self.metrics.installed.set(r.count() as i64);
        }
        if let Some(d) = self.stream_drift.get() {
            self.metrics
                .stream_drift
                .set(i64::from(!d.drift().is_empty()));
        }
    }
}
