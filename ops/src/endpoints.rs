//! The operations routes every service serves beside its own: `/healthz` (the process is
//! alive and answering), `/readyz` (the service's [`Probe`] says it should get traffic:
//! 200 `ready`, or 503 with the short reason) and `/metrics` (the service's [`Registry`] in
//! the OpenMetrics text format).
//!
//! It decides nothing: readiness and the metrics' values are the service's.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::metrics::{Registry, CONTENT_TYPE};

/// Whether a service should receive traffic now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Not ready, and why (the `/readyz` body: short, for a person reading a probe log).
    NotReady(Cow<'static, str>),
}

impl Readiness {
    pub fn not_ready(reason: impl Into<Cow<'static, str>>) -> Readiness {
        Readiness::NotReady(reason.into())
    }

    pub fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready)
    }
}

/// What the operations routes ask of a service.
pub trait Probe: Send + Sync + 'static {
    /// The service's metrics.
    fn registry(&self) -> &Registry;

    /// Whether the service should receive traffic.
    fn readiness(&self) -> impl Future<Output = Readiness> + Send;

    /// Called before each scrape, to set gauges that are sampled rather than tracked (a
    /// connection state, readiness itself). Nothing by default.
    fn before_scrape(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// `/healthz`, `/readyz` and `/metrics`, answered through `probe`. The router's state is
/// already provided, so it merges into a service's router of any state type.
pub fn router<P: Probe, S: Clone + Send + Sync + 'static>(probe: Arc<P>) -> Router<S> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<P>))
        .route("/metrics", get(metrics::<P>))
        .with_state(probe)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz<P: Probe>(State(probe): State<Arc<P>>) -> Response {
    match probe.readiness().await {
        Readiness::Ready => (StatusCode::OK, "ready").into_response(),
        Readiness::NotReady(why) => {
            (StatusCode::SERVICE_UNAVAILABLE, why.into_owned()).into_response()
        }
    }
}

async fn metrics<P: Probe>(State(probe): State<Arc<P>>) -> Response {
    probe.before_scrape().await;
    match probe.registry().encode() {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding the metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;
    use crate::metrics::Gauge;

    struct Svc {
        registry: Registry,
        up: Gauge,
        ready: AtomicBool,
    }

    impl Probe for Svc {
        fn registry(&self) -> &Registry {
            &self.registry
        }
        async fn readiness(&self) -> Readiness {
            if self.ready.load(Ordering::Relaxed) {
                Readiness::Ready
            } else {
                Readiness::not_ready("NATS not connected")
            }
        }
        async fn before_scrape(&self) {
            self.up.set(7);
        }
    }

    async fn get(app: &Router, path: &str) -> (StatusCode, Option<String>, String) {
        let r = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let ct = r
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let status = r.status();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, ct, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let mut registry = Registry::new();
        let up = registry.gauge("natter_test_up", "Up.");
        let svc = Arc::new(Svc {
            registry,
            up,
            ready: AtomicBool::new(false),
        });
        let app: Router = router(svc.clone());
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
        let (status, _, body) = get(&app, "/readyz").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "NATS not connected")
        );
        svc.ready.store(true, Ordering::Relaxed);
        assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);
        let (status, ct, body) = get(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ct.as_deref(), Some(CONTENT_TYPE));
        assert!(body.contains("natter_test_up 7\n"), "{body}");
    }
}
