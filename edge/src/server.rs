//! The public HTTP side of the edge: `/chat` (WebSocket upgrade) and 404 for anything
//! else; and the SIGTERM drain. The operations routes (`/healthz`, `/readyz`, `/metrics`)
//! are served on the separate operations port (`--ops-listen`, see `lib.rs`).
//!
//! The door of `/chat`, in order: a browser page from an origin not in `--allowed-origins`
//! gets 403; a draining edge answers 503; a client IP (the peer's, or the first address of
//! `--trusted-proxy-header` when set) already holding `--max-connections-per-ip` sockets
//! gets 429; an edge at `--max-connections` answers 503. The listener in front of it
//! (natter-ops) has already bounded how long the request's headers may take.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderName, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use fastwebsockets::upgrade::IncomingUpgrade;
use tracing::{debug, info, warn};

use crate::config::TransportConfigError;
use crate::node::Node;
use crate::outbox::CloseReason;
use crate::session;

/// The edge's public routes: `/chat`.
pub fn router(node: Arc<Node>) -> Result<Router, TransportConfigError> {
    let door = Door {
        origins: node.config.allowed_origins()?,
        proxy_header: node.config.trusted_proxy_header()?,
        per_ip: Arc::new(PerIp {
            max: node.config.max_connections_per_ip,
            open: Mutex::new(HashMap::new()),
        }),
        node,
    };
    Ok(Router::new()
        .route("/chat", get(chat))
        .with_state(Arc::new(door)))
}

/// What `/chat` checks an upgrade against.
struct Door {
    node: Arc<Node>,
    /// Lower-case origins; empty: any.
    origins: Vec<String>,
    proxy_header: Option<HeaderName>,
    per_ip: Arc<PerIp>,
}

impl Door {
    /// Whether a request with these headers may come from its origin: no `Origin` (not a
    /// browser), no allow-list, or a listed origin.
    fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        if self.origins.is_empty() {
            return true;
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        origin.to_str().is_ok_and(|o| {
            let o = o.trim().trim_end_matches('/');
            self.origins.iter().any(|a| a.eq_ignore_ascii_case(o))
        })
    }

    /// The client's IP: the first address of the trusted proxy header when it is set and
    /// parses, else the peer's.
    fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        self.proxy_header
            .as_ref()
            .and_then(|h| headers.get(h))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .and_then(|a| {
                a.parse::<IpAddr>()
                    .ok()
                    .or_else(|| a.parse::<SocketAddr>().ok().map(|s| s.ip()))
            })
            .unwrap_or_else(|| peer.ip())
    }
}

/// Open sockets per client IP.
struct PerIp {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open socket of a client IP, given back when dropped.
struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            per_ip: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.per_ip.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

async fn chat(
    State(door): State<Arc<Door>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: IncomingUpgrade,
) -> Response {
    let node = door.node.clone();
    if !door.origin_allowed(&headers) {
        debug!(%peer, origin = ?headers.get(header::ORIGIN), "upgrade from an origin not allowed");
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    if node.is_draining() {
        node.metrics.connections_rejected.inc();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: connect to another edge",
        )
            .into_response();
    }
    let ip = door.client_ip(peer, &headers);
    let Some(ip_slot) = door.per_ip.take(ip) else {
        debug!(%peer, client_ip = %ip, max = door.per_ip.max, "too many sockets from one client IP");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from this address",
        )
            .into_response();
    };
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
        drop(ip_slot);
    });
    response.into_response()
}

/// Drain: fail readiness, ask every client to reconnect elsewhere, wait for them to go
/// (up to most of `timeout`), close whoever is left, give the presence lease up. Returns
/// within `timeout`.
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
    // Whatever presence entries remain under this edge (a release that could not reach
    // NATS) are swept by the other edges at once, not a TTL after the lease stops.
    let _ = tokio::time::timeout(
        deadline.saturating_duration_since(tokio::time::Instant::now()),
        node.presence.drop_lease(),
    )
    .await;
    info!(remaining = node.metrics.connections.get(), "drained");
}
