//! The HTTP surface: the routes and CORS.
//!
//! REST routes (CORS for any origin, preflight included):
//! `POST /images`, `GET /images/{uuid}`, `POST /files`, `GET /files/{uuid}`.
//! The operations routes (`/healthz`, `/readyz`, `/metrics`) are not here: they are served
//! on the separate operations port (`--ops-listen`, see `lib.rs`), never on this public one.
//!
//! CORS is a dozen lines of middleware rather than tower-http: the policy is fixed ("any
//! origin, no credentials"), and one more crate tree is not worth it.

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::state::Shared;
use crate::{download, upload};

/// The public router: the REST routes only.
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
    rest.with_state(state)
}

/// Headers a browser may read from our responses besides the safelisted ones.
const EXPOSED: &str = concat!(
    "Content-Disposition, Content-Length, Content-Range, Accept-Ranges, ETag, Retry-After, ",
    "WWW-Authenticate"
);

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
            HeaderValue::from_static("Authorization, Content-Type, Range, If-None-Match, If-Range")
        });
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    resp
}
