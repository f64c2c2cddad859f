//! Test support for natter: real processes, real sockets, no mocks.
//!
//! - [`NatsServer`] / [`NatsCluster`]: `nats-server` with JetStream, each on free 127.0.0.1
//!   ports with its own store directory; kill -9, SIGTERM and restart on the same ports.
//! - [`Postgres`]: a private Postgres cluster (initdb into a temp dir, run as the `postgres`
//!   user when the tests run as root).
//! - [`Service`]: a natter binary (edge, archiver, filestore) with its flags, health-checked.
//! - [`ChatClient`]: a WebSocket JSON-RPC client that speaks protocol v1 like a browser would.
//!
//! - [`free_port`]: loopback ports reserved without races (see [`ports`]).
//!
//! Every wait is bounded in time; every spawned process dies with its handle.

pub mod client;
pub mod http;
pub mod nats;
pub mod ports;
pub mod postgres;
pub mod proc;
pub mod service;

pub use client::{ChatClient, Event};
pub use nats::{NatsCluster, NatsServer};
pub use ports::free_port;
pub use postgres::Postgres;
pub use proc::Proc;
pub use service::{bin_path, Service};

use std::path::PathBuf;
use std::time::Duration;

/// Default bound for one wait in a test (a process becoming ready, a frame arriving).
pub const WAIT: Duration = Duration::from_secs(20);

/// The workspace root (the directory holding `nats/`, `edge/`, ...).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Wait until `addr` accepts TCP connections, up to `timeout`.
pub async fn wait_for_port(addr: std::net::SocketAddr, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Poll `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
