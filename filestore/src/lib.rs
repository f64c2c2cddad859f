//! natter filestore: images and files for chat rooms (see `shared/PROTOCOL.md`, "Filestore
//! REST API"), wire-compatible with clients of the older GroupChat system.
//!
//! - `POST /images` takes an `imageMessage` object with `params.base64ImgString`;
//!   `GET /images/{uuid}` returns it, image included.
//! - `POST /files` takes `multipart/form-data` with a `files[]` part and a `message` part (the
//!   `fileMessage` object); `GET /files/{uuid}` returns the bytes (`Range`, `ETag`).
//!
//! Uploads are streamed to a temporary file under limits, committed to the data directory
//! (a persistent volume several replicas share: [`store`]), and only then announced: the
//! stored message, payload emptied, is published to the room through JetStream with the
//! uuid as dedupe key ([`announce`]), so members get it with an `_id` through the edges and
//! the archiver keeps it. The same uuid uploaded again is stored and announced once.
//!
//! Who may upload and download is what a signed token says ([`access`]: `--auth` modes as
//! the edge has them, the room and name the uploader holds); every size and count a
//! client controls is bounded, and so are the uploads in progress and their duration.
//!
//! Modules: [`config`] (flags and env), [`server`] (routes, CORS), [`state`] (what the
//! handlers share, readiness), [`access`] (tokens), [`upload`] and [`download`] (the REST
//! handlers), [`json_splitter`] and [`base64_check`] (streaming parse of image bodies),
//! [`multipart`] (streaming parse of file bodies), [`message`]
//! (the message object), [`filename`] (client file names: extension, safe
//! `Content-Disposition`), [`store`], [`announce`], [`metrics`], [`error`]. The operations
//! endpoints, logging and the shutdown signal are natter-ops'.

pub mod access;
pub mod announce;
pub mod base64_check;
pub mod config;
pub mod download;
pub mod error;
pub mod filename;
pub mod json_splitter;
pub mod message;
pub mod metrics;
pub mod multipart;
pub mod server;
pub mod state;
pub mod store;
pub mod upload;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use natter_bus::StreamArgs;
use tokio::sync::watch;

pub use config::Config;

use crate::access::Access;
use crate::announce::Announcer;
use crate::metrics::Metrics;
use crate::state::{AppState, Shared};
use crate::store::Store;

/// Temporary files untouched for this long belong to crashed uploads.
const TMP_MAX_AGE: Duration = Duration::from_secs(3600);
/// Pause between attempts to reach NATS at start-up.
const NATS_RETRY: Duration = Duration::from_secs(2);
/// Period of the CHAT stream drift check.
const DRIFT_CHECK: Duration = Duration::from_secs(30);

/// Why the service could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Auth(#[from] natter_auth::AuthConfigError),
    #[error("data directory {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error(transparent)]
    Listen(#[from] natter_ops::ListenError),
}

/// Run the filestore until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> Result<(), RunError> {
    let limits = config.limits()?;
    let access = Access::new(natter_auth::Verifier::from_args(
        &config.auth,
        config.listen,
    )?);
    log_auth(&access);
    let store = Store::open(&config.data_dir)
        .await
        .map_err(|e| RunError::DataDir(config.data_dir.display().to_string(), e))?;
    let swept = store.sweep_tmp(TMP_MAX_AGE).await;
    if swept > 0 {
        tracing::info!(swept, "removed stale temporary files");
    }
    let mut registry = natter_ops::Registry::new();
    let metrics = Metrics::register(&mut registry);
    let state: Shared = Arc::new(AppState::new(store, limits, registry, metrics, access));
    let listeners = natter_ops::Listeners::bind(config.listen, &config.net).await?;
    tracing::info!(listen = %listeners.public.local_addr(), ops_listen = %listeners.ops.local_addr(),
        data_dir = %config.data_dir.display(), "filestore listening");

    tokio::spawn(connect_nats(
        state.clone(),
        config.nats_url.clone(),
        config.stream.clone(),
        config.publish_timeout(),
    ));
    tokio::spawn(sweep_periodically(state.clone()));

    let (stop_tx, stop_rx) = watch::channel(false);
    let st = state.clone();
    tokio::spawn(async move {
        natter_ops::shutdown_signal().await;
        tracing::info!("shutting down: readiness off, finishing in-flight requests");
        st.draining.store(true, Ordering::Relaxed);
        let _ = stop_tx.send(true);
    });
    // Stops accepting on SIGTERM; requests in flight get the grace period.
    listeners
        .serve(
            server::router(state.clone()),
            natter_ops::router(state.clone()),
            stopped(stop_rx),
            config.shutdown_grace(),
        )
        .await;
    if let Some(a) = state.announcer.get() {
        let _ = a.client().flush().await;
    }
    tracing::info!("filestore stopped");
    Ok(())
}

/// Say how requests are authenticated; loudly when they are not.
fn log_auth(access: &Access) {
    match access.mode() {
        natter_auth::AuthMode::Off => tracing::warn!(
            auth = "off",
            "authentication is OFF: anyone may upload to any room under any name and download \
             any upload. For local development only; never expose this filestore"
        ),
        mode => tracing::info!(
            auth = %mode,
            algorithms = ?access.verifier().algorithms(),
            "uploads and downloads are authenticated by signed tokens"
        ),
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Connect to NATS and ensure the CHAT stream, retrying until both work; then uploads can
/// be announced and `/readyz` turns green.
async fn connect_nats(state: Shared, url: String, stream: StreamArgs, publish_timeout: Duration) {
    let client = loop {
        match natter_bus::connect(&url, "natter-filestore", Duration::from_secs(10)).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, "NATS not reachable yet; retrying");
                tokio::time::sleep(NATS_RETRY).await;
            }
        }
    };
    let js = async_nats::jetstream::new(client.clone());
    let status = loop {
        match natter_bus::ensure_chat_stream(&js, &stream).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "could not check the CHAT stream; retrying");
                tokio::time::sleep(NATS_RETRY).await;
            }
        }
    };
    let drift = natter_bus::DriftWatch::spawn(js.clone(), stream.clone(), &status, DRIFT_CHECK);
    let _ = state.stream_drift.set(drift);
    if state.access.mode() != natter_auth::AuthMode::Off {
        let presence = loop {
            match natter_bus::ensure_presence(&js, &stream).await {
                Ok(kv) => break kv,
                Err(e) => {
                    tracing::warn!(error = %e, "could not open the presence bucket; retrying");
                    tokio::time::sleep(NATS_RETRY).await;
                }
            }
        };
        state.access.set_presence(presence);
    }
    let _ = state.announcer.set(Announcer::new(client, publish_timeout));
    tracing::info!(stream = ?status, "NATS connected and CHAT stream checked");
}

async fn sweep_periodically(state: Shared) {
    let mut tick = tokio::time::interval(TMP_MAX_AGE);
    tick.tick().await;
    loop {
        tick.tick().await;
        let swept = state.store.sweep_tmp(TMP_MAX_AGE).await;
        if swept > 0 {
            tracing::info!(swept, "removed stale temporary files");
        }
    }
}
