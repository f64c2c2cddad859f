//! The operations HTTP endpoints: `/healthz` (the process is alive), `/readyz` (set up,
//! not shutting down, NATS connected and Postgres answering) and `/metrics` (Prometheus
//! text format).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;
use crate::store::Store;

/// State shared by the endpoints and the rest of the archiver.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub store: Store,
    /// Set once the NATS connection exists.
    pub nats: OnceLock<async_nats::Client>,
    /// Set once migrations ran and the consumer loop and history service are running.
    pub ready: AtomicBool,
    pub shutting_down: AtomicBool,
}

impl Shared {
    pub fn nats_up(&self) -> bool {
        self.nats
            .get()
            .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected)
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<Arc<Shared>>) -> (StatusCode, String) {
    if s.shutting_down.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down".into());
    }
    if !s.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting".into());
    }
    if !s.nats_up() {
        return (StatusCode::SERVICE_UNAVAILABLE, "NATS unreachable".into());
    }
    if let Err(e) = s.store.ping(Duration::from_secs(1)).await {
        s.metrics.db_errors.inc();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Postgres unreachable: {e}"),
        );
    }
    (StatusCode::OK, "ready".into())
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(s.nats_up()),
    )
}
