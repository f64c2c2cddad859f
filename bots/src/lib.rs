//! natter bots: user-written scripts that answer room messages, run in a sandbox, as one
//! more consumer of the room subjects (see `shared/DESIGN.md`, "Clients and bots"). Their
//! replies are ordinary stored messages: archived, replayed on resume, deduplicated.
//!
//! - [`sandbox`]: the Rhai engine and its limits; what a script sees and returns, and every
//!   way a run can fail.
//! - [`registry`]: the bots, stored in the NATS KV bucket `bots` and mirrored (compiled) in
//!   every replica.
//! - [`worker`]: the durable consumer `bots` on `CHAT` (shared by all replicas), the
//!   `newUser` subscription, running bots and posting replies exactly once per trigger.
//! - [`api`]: the REST API (list, show, install or replace, remove), [`access`] who may
//!   call it.
//! - [`config`], [`metrics`], [`state`] (what the handlers share, readiness).
//!
//! The built-in examples are files in `bots/examples/` ([`EXAMPLES`]).

pub mod access;
pub mod api;
pub mod config;
pub mod metrics;
pub mod registry;
pub mod sandbox;
pub mod state;
pub mod worker;

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

pub use config::Config;

use crate::access::Access;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::sandbox::Sandbox;
use crate::state::AppState;
use crate::worker::{Worker, WorkerConfig};

/// The example bots shipped with natter: (file name, script).
pub const EXAMPLES: [(&str, &str); 3] = [
    ("greeter.rhai", include_str!("../examples/greeter.rhai")),
    ("echo.rhai", include_str!("../examples/echo.rhai")),
    ("roll.rhai", include_str!("../examples/roll.rhai")),
];

const NATS_RETRY: Duration = Duration::from_secs(2);
const DRIFT_CHECK: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Auth(#[from] natter_auth::AuthConfigError),
    #[error(transparent)]
    Listen(#[from] natter_ops::ListenError),
}

/// Run the bots worker and its REST API until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> Result<(), RunError> {
    let access = Access::new(natter_auth::Verifier::from_args(
        &config.auth,
        config.listen,
    )?);
    match access.mode() {
        natter_auth::AuthMode::Off => tracing::warn!(
            auth = "off",
            "authentication is OFF: anyone may list, install and remove any room's bots. \
             For local development only; never expose this service"
        ),
        mode => tracing::info!(auth = %mode, algorithms = ?access.verifier().algorithms(),
            "the bots API is authenticated by signed tokens; callers must be members of the room"),
    }
    let sandbox = Arc::new(Sandbox::new(config.limits()));
    let mut metrics_registry = natter_ops::Registry::new();
    let metrics = Arc::new(Metrics::register(&mut metrics_registry));
    let state = Arc::new(AppState {
        access,
        sandbox: sandbox.clone(),
        metrics: metrics.clone(),
        metrics_registry,
        max_script_bytes: config.max_script_bytes,
        max_bots_per_room: config.max_bots_per_room.max(1),
        registry: OnceLock::new(),
        client: OnceLock::new(),
        stream_drift: OnceLock::new(),
        draining: Default::default(),
    });
    let listeners = natter_ops::Listeners::bind(config.listen, &config.net).await?;
    tracing::info!(listen = %listeners.public.local_addr(), ops_listen = %listeners.ops.local_addr(), "bots listening");

    let (stop_tx, stop_rx) = watch::channel(false);
    let worker_cfg = WorkerConfig {
        consumer: config.consumer.clone(),
        batch_size: config.batch_size as usize,
        ack_wait: config.ack_wait(),
        script_threads: config.script_threads as usize,
        replies_per_minute: config.replies_per_minute.max(1),
        max_reply_bytes: config.max_reply_bytes.max(1),
        failures_to_disable: config.failures_to_disable,
        publish_timeout: config.publish_timeout(),
    };
    let tasks = tokio::spawn(start_nats(
        state.clone(),
        config.clone(),
        worker_cfg,
        stop_rx.clone(),
    ));

    let st = state.clone();
    tokio::spawn(async move {
        natter_ops::shutdown_signal().await;
        tracing::info!("shutting down: readiness off, finishing the trigger in hand");
        st.draining.store(true, Ordering::Relaxed);
        let _ = stop_tx.send(true);
    });
    let mut stopped = stop_rx.clone();
    listeners
        .serve(
            api::router(state.clone()),
            natter_ops::router(state.clone()),
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
            config.shutdown_grace(),
        )
        .await;
    // The worker loops stop between triggers; what they hold unacknowledged is redelivered.
    let _ = tokio::time::timeout(config.shutdown_grace(), tasks).await;
    if let Some(c) = state.client.get() {
        let _ = c.flush().await;
    }
    tracing::info!("bots stopped");
    Ok(())
}

/// Connect, check the stream, open the buckets, then run the worker loops until shutdown.
async fn start_nats(
    state: Arc<AppState>,
    config: Config,
    worker_cfg: WorkerConfig,
    shutdown: watch::Receiver<bool>,
) {
    let client = loop {
        match natter_bus::connect(&config.nats_url, "natter-bots", Duration::from_secs(10)).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, "NATS not reachable yet; retrying");
                tokio::time::sleep(NATS_RETRY).await;
            }
        }
    };
    let _ = state.client.set(client.clone());
    let js = async_nats::jetstream::new(client.clone());
    let status = loop {
        match natter_bus::ensure_chat_stream(&js, &config.stream).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "could not check the CHAT stream; retrying");
                tokio::time::sleep(NATS_RETRY).await;
            }
        }
    };
    let drift =
        natter_bus::DriftWatch::spawn(js.clone(), config.stream.clone(), &status, DRIFT_CHECK);
    let _ = state.stream_drift.set(drift);
    if state.access.mode() != natter_auth::AuthMode::Off {
        let presence = loop {
            match natter_bus::ensure_presence(&js, &config.stream).await {
                Ok(kv) => break kv,
                Err(e) => {
                    tracing::warn!(error = %e, "could not open the presence bucket; retrying");
                    tokio::time::sleep(NATS_RETRY).await;
                }
            }
        };
        state.access.set_presence(presence);
    }
    let registry = loop {
        match Registry::open(&js, config.stream.stream_replicas, state.sandbox.clone()).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = %e, "could not open the bots bucket; retrying");
                tokio::time::sleep(NATS_RETRY).await;
            }
        }
    };
    let _ = state.registry.set(registry.clone());
    tracing::info!(stream = ?status, "NATS connected, CHAT stream checked, bots bucket open");
    let worker = Arc::new(Worker::new(
        js,
        registry,
        state.sandbox.clone(),
        state.metrics.clone(),
        worker_cfg,
    ));
    let events = tokio::spawn(worker.clone().run_events(client, shutdown.clone()));
    worker.run_consumer(shutdown).await;
    events.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_compile() {
        let s = Sandbox::new(sandbox::Limits::default());
        for (file, script) in EXAMPLES {
            s.compile(script)
                .unwrap_or_else(|e| panic!("{file} does not compile: {e}"));
        }
    }

    fn run(file: &str, event: &str, text: &str) -> Vec<String> {
        let s = Sandbox::new(sandbox::Limits::default());
        let script = EXAMPLES.iter().find(|(f, _)| *f == file).unwrap().1;
        let ast = s.compile(script).unwrap();
        let t = sandbox::Trigger {
            event: event.into(),
            text: text.into(),
            user_name: "Ann".into(),
            room_name: "Tests Room".into(),
            seed: 7,
            ..Default::default()
        };
        s.run(&ast, "b", "Tests Room", &t).unwrap()
    }

    #[test]
    fn examples_answer_what_they_should() {
        assert_eq!(
            run("greeter.rhai", "newUser", "Ann has joined the room!"),
            vec!["Welcome to Tests Room, Ann!".to_string()]
        );
        assert!(run("greeter.rhai", "textMessage", "hello").is_empty());
        assert_eq!(
            run("echo.rhai", "textMessage", "!echo hi there"),
            vec!["Ann said: hi there".to_string()]
        );
        assert!(run("echo.rhai", "textMessage", "hi").is_empty());
        let one = run("roll.rhai", "textMessage", "/roll");
        assert_eq!(one.len(), 1);
        assert!(one[0].starts_with("Ann rolled 1d6: ["), "{one:?}");
        let three = run("roll.rhai", "textMessage", "/roll 3d20");
        assert!(three[0].starts_with("Ann rolled 3d20: ["), "{three:?}");
        assert_eq!(
            three,
            run("roll.rhai", "textMessage", "/roll 3d20"),
            "seeded by the trigger"
        );
        assert!(run("roll.rhai", "textMessage", "/roll 0d6")[0].starts_with("roll 1 to 20"));
        assert!(run("roll.rhai", "textMessage", "/rollx").is_empty());
        assert!(run("roll.rhai", "textMessage", "hello").is_empty());
    }
}
