//! The HTTP listener every natter service serves through, hardened against clients that
//! hold connections without using them.
//!
//! - **Header-read timeout** (`--header-read-timeout-ms`, default 10 s): a client must send a
//!   request's complete headers within it, counted from the moment the connection is
//!   accepted, and again from the end of each response on a kept-alive connection. A
//!   slowloris client (headers trickled byte by byte) is disconnected when it runs out, and
//!   so is a kept-alive connection that sends no further request.
//! - **Connection permits** (`--max-http-connections`, default 8192): the accept loop takes
//!   a permit *before* it accepts, so at most that many connections are read or served as
//!   HTTP at once. When every permit is taken the loop **waits** (it does not accept and
//!   close): further clients stay in the kernel's accept backlog and are served, in order, as
//!   connections close. Closing them at once would turn a short burst (a reconnect storm
//!   after an edge dies) into refused clients; waiting costs them only latency, and the
//!   header-read timeout guarantees that permits held by idle clients come back. A permit is
//!   released when the connection's HTTP life ends: it closes, or it is handed over as an
//!   upgraded connection (a WebSocket), which the service bounds itself.
//! - **Idle bound** (`--http-idle-timeout-secs`, default 60): a connection on which no byte
//!   moves in either direction for that long (a stalled request body, a client that stopped
//!   reading a response) is closed, request in flight or not.
//! - **Graceful shutdown**: when the service's shutdown future resolves, the listening
//!   socket closes (new connections are refused), kept-alive connections close after their
//!   current response, and requests in flight get up to a grace period to finish.
//!   Upgraded connections are not waited for: draining WebSockets is the service's business.
//! - Each request carries the peer address as [`ConnectInfo<SocketAddr>`], so handlers take
//!   `ConnectInfo(peer): ConnectInfo<SocketAddr>`.
//!
//! [`ListenArgs`] are the flags of a service with a public port (its own `--listen`) and a
//! separate operations port (`--ops-listen`, plus [`HttpArgs`]); [`serve_with_ops`] serves
//! a public router and the ops router (see [`crate::router`]) on them in one call, so the
//! public port never answers `/metrics`. A service with only an operations port (the archiver) flattens
//! [`HttpArgs`] and calls [`bind`] and [`Bound::serve`].
//!
//! HTTP/1.1 only (WebSockets need it; nothing natter serves gains from HTTP/2 behind an
//! ingress). TLS is the ingress's.
//!
//! Why ~500 lines: the accept loop, its permits and timeouts and the two-port serving are
//! one mechanism; ~40 lines are unit tests.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower_service::Service as _;

/// Least time between two "connection limit reached" warnings of one listener.
const LIMIT_LOG_EVERY: Duration = Duration::from_secs(10);

/// The listener's limits as flags, for every service's clap `Config` to flatten.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// Milliseconds a client has to send a request's complete headers, from connecting or
    /// from the end of the previous response on a kept-alive connection; slower clients are
    /// disconnected.
    #[arg(long, env = "NATTER_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub header_read_timeout_ms: u64,

    /// HTTP connections served at once per port (a WebSocket stops counting once upgraded).
    /// Beyond it the listener accepts nothing until one closes.
    #[arg(long, env = "NATTER_MAX_HTTP_CONNECTIONS", default_value_t = 8192,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_http_connections: u32,

    /// Seconds an HTTP connection may go without a byte moving either way (a stalled body,
    /// a client that stopped reading) before it is closed.
    #[arg(long, env = "NATTER_HTTP_IDLE_TIMEOUT_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_idle_timeout_secs: u64,
}

impl HttpArgs {
    pub fn limits(&self) -> HttpLimits {
        HttpLimits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            max_connections: self.max_http_connections as usize,
            idle_timeout: Duration::from_secs(self.http_idle_timeout_secs),
        }
    }
}

impl Default for HttpArgs {
    fn default() -> HttpArgs {
        HttpArgs {
            header_read_timeout_ms: 10_000,
            max_http_connections: 8192,
            http_idle_timeout_secs: 60,
        }
    }
}

/// The operations port of a service that also has a public port (its `--listen`, which
/// stays in the service's own `Config`: its default and meaning are the service's), and the
/// limits both ports are served with.
///
/// `--ops-listen` has no default here: each service sets its own with
/// `#[command(mut_arg("ops_listen", |a| a.default_value("127.0.0.1:9090").required(false)))]`
/// on its `Config`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListenArgs {
    /// Operations address: /healthz, /readyz and /metrics, for probes and scrapes (keep it
    /// off the public network; the public port does not serve them).
    #[arg(long, env = "NATTER_OPS_LISTEN")]
    pub ops_listen: SocketAddr,

    #[command(flatten)]
    pub http: HttpArgs,
}

/// What the listener enforces on every connection (see the module documentation).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpArgs::default().limits()
    }
}

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// A bound listening socket, not yet serving.
#[derive(Debug)]
pub struct Bound {
    what: &'static str,
    listener: TcpListener,
    addr: SocketAddr,
}

/// Bind `addr`; `what` names the port in logs and errors (`public`, `ops`).
pub async fn bind(what: &'static str, addr: SocketAddr) -> Result<Bound, ListenError> {
    let bind_err = |source| ListenError::Bind { what, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    Ok(Bound {
        what,
        listener,
        addr,
    })
}

impl Bound {
    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve `app` until `shutdown` resolves, then stop accepting and give requests in
    /// flight up to `grace` to finish. Returns when they have, or when `grace` ran out.
    pub async fn serve(
        self,
        app: Router,
        limits: HttpLimits,
        shutdown: impl Future<Output = ()> + Send,
        grace: Duration,
    ) {
        let Bound {
            what,
            listener,
            addr,
        } = self;
        let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        let permits = Arc::new(Semaphore::new(max));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut shutdown = pin!(shutdown);
        tracing::info!(port = what, %addr, max_connections = max,
            header_read_timeout = ?limits.header_read_timeout, idle_timeout = ?limits.idle_timeout,
            "HTTP listener serving");
        // Saturation is logged at most once per LIMIT_LOG_EVERY, not once per connection.
        let mut last_warned: Option<tokio::time::Instant> = None;
        loop {
            let permit = match permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    if last_warned.is_none_or(|t| t.elapsed() >= LIMIT_LOG_EVERY) {
                        last_warned = Some(tokio::time::Instant::now());
                        tracing::warn!(
                            port = what,
                            %addr,
                            max_connections = max,
                            "HTTP connection limit reached: accepting again when one closes"
                        );
                    }
                    tokio::select! {
                        () = &mut shutdown => break,
                        p = permits.clone().acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => break,
                        },
                    }
                }
            };
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) if is_per_connection(&e) => {
                        tracing::debug!(port = what, error = %e, "accept failed for one connection");
                        continue;
                    }
                    Err(e) => {
                        // Out of file descriptors or memory: back off instead of spinning.
                        tracing::error!(port = what, %addr, error = %e, "accept failed; retrying in 100 ms");
                        tokio::select! {
                            () = &mut shutdown => break,
                            () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        }
                    }
                }
            };
            tokio::spawn(connection(
                stream,
                peer,
                app.clone(),
                limits.clone(),
                stop_rx.clone(),
                permit,
            ));
        }
        drop(listener);
        let _ = stop_tx.send(true);
        let in_flight = max - permits.available_permits();
        tracing::info!(
            port = what,
            %addr,
            in_flight,
            ?grace,
            "HTTP listener closed; finishing requests in flight"
        );
        let all_back = u32::try_from(max).unwrap_or(u32::MAX);
        if tokio::time::timeout(grace, permits.acquire_many(all_back))
            .await
            .is_err()
        {
            tracing::warn!(
                port = what,
                left = max - permits.available_permits(),
                ?grace,
                "HTTP connections still open after the grace period; leaving them"
            );
        }
    }
}

/// Accept errors that concern one connection only (it was reset before we took it).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One connection's HTTP life: served by hyper under the header-read timeout, watched for
/// idleness, shut down gracefully on `stop`. The permit is released when this returns.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) {
    let progress = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Watched {
        inner: stream,
        progress: progress.clone(),
    });
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        app.call(req)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let mut conn = pin!(builder.serve_connection(io, service).with_upgrades());
    let mut idle = tokio::time::interval(limits.idle_timeout);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    idle.tick().await;
    let mut seen = 0;
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                match r {
                    Ok(()) => {}
                    Err(e) if e.is_timeout() => {
                        tracing::debug!(%peer, "request headers not received in time; connection closed");
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "HTTP connection ended with an error"),
                }
                break;
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = idle.tick() => {
                let now = progress.load(Ordering::Relaxed);
                if now == seen {
                    tracing::debug!(%peer, idle_timeout = ?limits.idle_timeout, "HTTP connection idle; closed");
                    break;
                }
                seen = now;
            }
        }
    }
    drop(permit);
}

/// A socket that counts the reads and writes that moved bytes, for the idle bound.
struct Watched {
    inner: TcpStream,
    progress: Arc<AtomicU64>,
}

impl Watched {
    fn moved(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.moved();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The TCP socket under a connection this listener served and hyper then upgraded (a
/// WebSocket), with the bytes hyper had already read past the upgrade request. A service
/// that drives the socket itself (the edge reads and writes WebSocket frames with
/// non-blocking calls on the `TcpStream`) takes it back here; `Err` gives back an upgrade
/// that did not come from this listener.
pub fn upgraded_tcp(
    upgraded: hyper::upgrade::Upgraded,
) -> Result<(TcpStream, bytes::Bytes), hyper::upgrade::Upgraded> {
    let parts = upgraded.downcast::<TokioIo<Watched>>()?;
    Ok((parts.io.into_inner().inner, parts.read_buf))
}

/// Both listening sockets of a service with a public and an operations port.
#[derive(Debug)]
pub struct Listeners {
    pub public: Bound,
    pub ops: Bound,
    pub limits: HttpLimits,
}

impl Listeners {
    /// Bind the public address `listen` and `--ops-listen` (before the service connects to
    /// anything, so a port in use fails the start at once).
    pub async fn bind(listen: SocketAddr, args: &ListenArgs) -> Result<Listeners, ListenError> {
        Ok(Listeners {
            public: bind("public", listen).await?,
            ops: bind("ops", args.ops_listen).await?,
            limits: args.http.limits(),
        })
    }

    /// Serve `public` on the public port and `ops` (the operations routes) on the ops port
    /// until `shutdown` resolves; then both stop as [`Bound::serve`] describes.
    pub async fn serve(
        self,
        public: Router,
        ops: Router,
        shutdown: impl Future<Output = ()> + Send,
        grace: Duration,
    ) {
        let (tx, rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let signal = async move {
            shutdown.await;
            let _ = tx.send(true);
        };
        tokio::join!(
            signal,
            self.public
                .serve(public, self.limits.clone(), stopped(rx.clone()), grace),
            self.ops.serve(ops, self.limits, stopped(rx), grace),
        );
    }
}

/// Bind `listen` and `--ops-listen` and serve `public` and `ops` on them until `shutdown`,
/// then stop gracefully within `grace` ([`Listeners::bind`] + [`Listeners::serve`]).
pub async fn serve_with_ops(
    public: Router,
    ops: Router,
    listen: SocketAddr,
    args: &ListenArgs,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> Result<(), ListenError> {
    Listeners::bind(listen, args)
        .await?
        .serve(public, ops, shutdown, grace)
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    #[command(
        name = "natter-test",
        mut_arg("ops_listen", |a| a.default_value("127.0.0.1:9090").required(false))
    )]
    struct Config {
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        #[command(flatten)]
        net: ListenArgs,
    }

    #[test]
    fn each_service_sets_its_own_default_ops_port() {
        let c = Config::try_parse_from(["natter-test"]).unwrap();
        assert_eq!(c.net.ops_listen, SocketAddr::from(([127, 0, 0, 1], 9090)));
        let l = c.net.http.limits();
        assert_eq!(l.header_read_timeout, Duration::from_secs(10));
        assert_eq!(l.max_connections, 8192);
        assert_eq!(l.idle_timeout, Duration::from_secs(60));
        let c = Config::try_parse_from([
            "natter-test",
            "--ops-listen",
            "0.0.0.0:9999",
            "--max-http-connections",
            "3",
        ])
        .unwrap();
        assert_eq!(c.net.ops_listen, SocketAddr::from(([0, 0, 0, 0], 9999)));
        assert_eq!(c.net.http.max_http_connections, 3);
        assert!(Config::try_parse_from(["natter-test", "--header-read-timeout-ms", "5"]).is_err());
    }
}
