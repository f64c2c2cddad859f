//! The HTTP surface: routes, CORS, health, readiness and metrics.
//!
//! REST routes (CORS for any origin, preflight included):
//! `POST /images`, `GET /images/{uuid}`, `POST /files`, `GET /files/{uuid}`.
//! Operations: `GET /healthz` (the process is up), `GET /readyz` (NATS connected, the CHAT
//! stream ensured, the data directory writable, not shutting down), `GET /metrics`.
//!
//! CORS is a dozen lines of middleware rather than tower-http: the policy is fixed ("any
//! origin, no credentials"), and one more crate tree is not worth it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::announce::Announcer;
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::{download, upload};

/// Everything the handlers share.
pub struct AppState {
    pub store: Store,
    pub limits: Limits,
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

    pub async fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
            && self.nats_connected()
            && self.store.writable().await
    }
}

/// The application's router.
pub fn router(state: Shared) -> Router {
    let rest = Router::new()
        .route(
            "/images",
            post(upload::post_image)
                .options(preflight)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/images/{uuid}",
            get(download::get_image).options(preflight),
        )
        .route(
            "/files",
            post(upload::post_file)
                .options(preflight)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/files/{uuid}", get(download::get_file).options(preflight))
        .layer(middleware::from_fn(cors));
    let ops = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    rest.merge(ops).with_state(state)
}

/// Headers a browser may read from our responses besides the safelisted ones.
const EXPOSED: &str =
    "Content-Disposition, Content-Length, Content-Range, Accept-Ranges, ETag, Retry-After";

async fn cors(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
    resp
}

async fn preflight(req: Request) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, OPTIONS"),
    );
    // Echo the requested headers (a header value already, so it stays one), else a safe list.
    let allow = req
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .filter(|v| v.len() <= 1024)
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_static("Content-Type, Range, If-None-Match, If-Range")
        });
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    resp
}

async fn readyz(State(st): State<Shared>) -> Response {
    if st.ready().await {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics(State(st): State<Shared>) -> Response {
    let body = st.metrics.render(st.nats_connected(), st.ready().await);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
