//! natter archiver: every stored room message of the `CHAT` stream into Postgres, exactly
//! once, and the history service for ranges the stream no longer holds.
//!
//! - [`worker`]: one durable pull consumer (`archiver`) shared by every replica; batches are
//!   fetched, written with one idempotent `INSERT ... SELECT FROM UNNEST ... ON CONFLICT DO
//!   NOTHING` (one statement, one transaction), and each message is acked only after the
//!   commit. Postgres down: the batch is kept in memory, retried with capped exponential
//!   backoff and kept alive with in-progress acks; nothing is lost.
//! - [`consumer`]: the durable consumer's definition, its creation, and its lag gauges.
//! - [`store`]: the pool, the embedded migrations (`archiver/migrations`, run at start-up),
//!   the insert and the range queries.
//! - [`record`]: a stream message → a row; the poison policy (malformed subjects and non-JSON
//!   or non-object payloads are skipped with a warning and the `poison` metric, then acked;
//!   objects with missing fields are stored with those columns `NULL`).
//! - [`history`]: `history.<token>` request/reply in queue group `natter-history`.
//! - [`trim`]: the only remover of messages from the `CHAT` stream, and only below what
//!   the archiver has stored (retention by age and bytes).
//! - [`state`]: what the parts share, and readiness as `/readyz` reports it; the
//!   operations endpoints themselves (`/healthz`, `/readyz`, `/metrics`) are natter-ops'.
//! - [`metrics`]: the archiver's metrics (`METRICS.md`).
//! - [`config`]: flags and environment variables, and what `--check-config` validates.
//!
//! Start order does not matter: the HTTP endpoints come up first (not ready), then the
//! archiver waits for Postgres (migrations) and NATS (the `CHAT` stream is ensured, the
//! consumer created or updated), retrying each until it succeeds or SIGTERM arrives.

pub mod config;
pub mod consumer;
pub mod history;
pub mod metrics;
pub mod record;
pub mod state;
pub mod store;
pub mod trim;
pub mod worker;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::watch;

pub use config::Config;

use crate::metrics::Metrics;
use crate::state::Shared;
use crate::store::{Store, StoreError};
use crate::worker::WorkerConfig;

/// How often the CHAT stream is compared with this archiver's settings.
const DRIFT_CHECK: Duration = Duration::from_secs(30);
/// How long the operations listener gives a scrape in flight when the archiver stops.
const HTTP_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Listen(#[from] natter_ops::ListenError),
    #[error(transparent)]
    History(#[from] history::HistoryError),
}

/// Retry `op` with capped exponential backoff until it succeeds (`Some`) or shutdown is
/// asked for (`None`).
async fn until_ok<T, E, F, Fut>(
    what: &str,
    shutdown: &mut watch::Receiver<bool>,
    mut op: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            return None;
        }
        match op().await {
            Ok(v) => return Some(v),
            Err(e) => tracing::warn!(error = %e, retry_in = ?delay, "{what} failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Run the archiver until `stop` resolves (SIGTERM in the binary), then shut down
/// gracefully: readiness fails at once, no new batch is fetched, in-flight batches are
/// committed and acked or, if they cannot be committed, returned for redelivery.
pub async fn run(
    cfg: Config,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let mut registry = natter_ops::Registry::new();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let store = Store::new(
        &cfg.database_url,
        cfg.db_pool_size,
        cfg.db_connect_timeout(),
        cfg.db_timeout(),
    )?;
    let shared = Arc::new(Shared {
        registry,
        metrics: metrics.clone(),
        store: store.clone(),
        nats: std::sync::OnceLock::new(),
        ready: std::sync::atomic::AtomicBool::new(false),
        shutting_down: std::sync::atomic::AtomicBool::new(false),
        stream_drift: std::sync::OnceLock::new(),
    });

    let listener = natter_ops::listener::bind("ops", cfg.listen).await?;
    tracing::info!(listen = %listener.local_addr(), "operations endpoints listening");
    let app: axum::Router = natter_ops::router(shared.clone());
    // The endpoints answer until the archiver has stopped (`/readyz` fails meanwhile).
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(listener.serve(
        app,
        cfg.http.limits(),
        async move {
            let _ = http_stopped.await;
        },
        HTTP_GRACE,
    ));
    let result = run_archiver(&cfg, shared, stop).await;
    let _ = http_stop.send(());
    if tokio::time::timeout(HTTP_GRACE * 2, http).await.is_err() {
        tracing::warn!("the operations listener did not stop in time");
    }
    result
}

/// The archiver proper, once its operations endpoints are up.
async fn run_archiver(
    cfg: &Config,
    shared: Arc<Shared>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let metrics = shared.metrics.clone();
    let store = shared.store.clone();

    let (stop_tx, mut shutdown) = watch::channel(false);
    {
        let shared = shared.clone();
        tokio::spawn(async move {
            stop.await;
            tracing::info!("shutdown requested");
            shared.shutting_down.store(true, Ordering::Relaxed);
            let _ = stop_tx.send(true);
        });
    }

    // Postgres: the schema first.
    let migrated = until_ok("running the database migrations", &mut shutdown, || {
        store.migrate()
    })
    .await;
    if migrated.is_none() {
        return Ok(());
    }
    metrics.db_up.set(1);
    tracing::info!("database schema up to date");

    // NATS: connection, stream, consumer.
    let Some(client) = until_ok("connecting to NATS", &mut shutdown, || {
        natter_bus::connect(&cfg.nats_url, "natter-archiver", Duration::from_secs(10))
    })
    .await
    else {
        return Ok(());
    };
    let _ = shared.nats.set(client.clone());
    let js = async_nats::jetstream::new(client.clone());
    let Some(status) = until_ok("checking the CHAT stream", &mut shutdown, || {
        natter_bus::ensure_chat_stream(&js, &cfg.stream)
    })
    .await
    else {
        return Ok(());
    };
    let _ = shared.stream_drift.set(natter_bus::DriftWatch::spawn(
        js.clone(),
        cfg.stream.clone(),
        &status,
        DRIFT_CHECK,
    ));
    let wcfg = WorkerConfig {
        consumer: cfg.consumer.clone(),
        batch_size: cfg.batch_size as usize,
        fetch_wait: cfg.fetch_wait(),
        writers: cfg.writers as usize,
        ack_wait: cfg.ack_wait(),
        max_ack_pending: cfg.max_ack_pending,
        retry_max: cfg.retry_max(),
    };
    let Some(consumer) = until_ok("creating the archiver consumer", &mut shutdown, || {
        consumer::ensure_consumer(&js, &wcfg)
    })
    .await
    else {
        return Ok(());
    };
    tracing::info!(consumer = %cfg.consumer, batch_size = cfg.batch_size, writers = cfg.writers, "archiver consumer ready");

    let history_task = tokio::spawn(history::serve(
        client.clone(),
        store.clone(),
        metrics.clone(),
        cfg.history_timeout(),
        cfg.history_concurrency as usize,
        shutdown.clone(),
    ));
    tokio::spawn(consumer::monitor_lag(
        consumer.clone(),
        metrics.clone(),
        cfg.lag_interval(),
        shutdown.clone(),
    ));
    let trimmed = metrics.stream_trimmed.clone();
    tokio::spawn(trim::run(
        js.clone(),
        consumer.clone(),
        natter_bus::StreamReader::new(
            client.clone(),
            natter_bus::subjects::STREAM,
            Duration::from_secs(5),
        ),
        trim::Retention {
            max_age: Duration::from_secs(cfg.stream.stream_max_age_secs),
            max_bytes: cfg.stream.stream_max_bytes,
        },
        cfg.trim_interval(),
        move |n| {
            trimmed.inc_by(n);
        },
        shutdown.clone(),
    ));
    shared.ready.store(true, Ordering::Relaxed);
    tracing::info!("archiver ready");

    worker::run(
        js.clone(),
        consumer,
        store.clone(),
        metrics.clone(),
        wcfg,
        shutdown.clone(),
        cfg.shutdown_timeout(),
    )
    .await;

    // Stop answering history (peers in the queue group take over), then make sure every
    // ack and nak sent so far reaches the server before the process exits.
    let history_result = match tokio::time::timeout(Duration::from_secs(5), history_task).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "history task ended abnormally");
            Ok(())
        }
        Err(_) => Ok(()),
    };
    if tokio::time::timeout(Duration::from_secs(5), client.flush())
        .await
        .is_err()
    {
        tracing::warn!("flushing NATS at shutdown timed out");
    }
    if tokio::time::timeout(Duration::from_secs(5), store.pool().close())
        .await
        .is_err()
    {
        tracing::warn!("closing the database pool at shutdown timed out");
    }
    tracing::info!("archiver stopped");
    history_result.map_err(Error::from)
}
