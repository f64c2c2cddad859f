//! The HTTP side of the edge: `/chat` (WebSocket upgrade), the ops routes of `natter_ops`
//! (`/healthz`, `/readyz`, `/metrics`), 404 for anything else; and the SIGTERM drain.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use fastwebsockets::upgrade::IncomingUpgrade;
use tracing::{info, warn};

use crate::node::Node;
use crate::outbox::CloseReason;
use crate::session;

/// The edge's routes: `/chat` and the ops routes (`/healthz`, `/readyz`, `/metrics`).
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/chat", get(chat))
        .with_state(node.clone())
        .merge(natter_ops::router(node))
}

async fn chat(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: IncomingUpgrade,
) -> Response {
    if node.is_draining() {
        node.metrics.connections_rejected.inc();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: connect to another edge",
        )
            .into_response();
    }
    let Ok(permit) = node.connections.clone().try_acquire_owned() else {
        node.metrics.connections_rejected.inc();
        return (StatusCode::SERVICE_UNAVAILABLE, "connection limit reached").into_response();
    };
    // A token on the upgrade applies to every join on the socket (checked at each join,
    // so that a refused token gets a precise JSON-RPC error, not a bare HTTP status).
    let token =
        natter_auth::bearer_token(&headers).or_else(|| natter_auth::query_token(uri.query()));
    let (response, fut) = match upgrade.upgrade() {
        Ok(x) => x,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    tokio::spawn(async move {
        match fut.await {
            Ok(ws) => session::serve(node, ws, permit, token).await,
            Err(e) => warn!(error = %e, "WebSocket upgrade failed"),
        }
    });
    response.into_response()
}

/// Drain: fail readiness, ask every client to reconnect elsewhere, wait for them to go
/// (up to most of `timeout`), close whoever is left. Returns within `timeout`.
pub async fn drain(node: &Node, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    let close_at = deadline - timeout.min(Duration::from_secs(1)) / 2;
    info!(sessions = node.sessions.len(), ?timeout, "draining");
    node.start_draining();
    while !node.sessions.is_empty() && tokio::time::Instant::now() < close_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = node.sessions.all();
    if !left.is_empty() {
        info!(
            sessions = left.len(),
            "closing sessions still open at the drain deadline"
        );
        for o in left {
            o.close(CloseReason::Shutdown);
        }
        while !node.sessions.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    info!(remaining = node.metrics.connections.get(), "drained");
}
