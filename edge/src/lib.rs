//! natter edge: terminates chat WebSockets and connects them to rooms through NATS.
//!
//! - [`server`]: `/chat` and its door (origins, sockets per IP), and the SIGTERM drain;
//!   the health and metrics routes are natter-ops', on the separate `--ops-listen` port.
//! - [`transport`]: one WebSocket on the wire: frames to messages, the write task, pings,
//!   idle and close.
//! - [`session`]: one client's protocol state (joined rooms, rate limit, publish slots), one
//!   module per command in [`session::cmd`].
//! - [`room`]: one live subscription per room with local members, fanout of each message
//!   encoded once; the seam/gap bookkeeping is the sans-IO [`room::delivery`] state machine.
//! - [`catchup`]: history on join, resume after `lastMessageId`, `getHistory`.
//! - [`presence`]: user names per room in the `presence` KV bucket, held by one userId from
//!   any number of sessions (its doc argues why concurrent joins and leaves stay consistent),
//!   and the edge's lease, under which its sessions live ([`presence::lease`]).
//! - [`publish`]: the edge's publishes into the stream, their replies settled by one task.
//! - [`outbox`]: the handle through which rooms reach a socket without waiting on it.
//! - [`node`]: what all of the above share; [`config`], [`metrics`].
//!
//! The edge holds no state that matters when it dies: messages live in the stream (and the
//! archive), its names are swept from presence once its lease expires, and clients
//! resume by `_id` on another edge.

pub mod catchup;
pub mod config;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod presence;
pub mod publish;
pub mod room;
pub mod server;
pub mod session;
pub mod transport;

use std::sync::Arc;

pub use config::{Command, Config};
pub use node::Node;

/// How long HTTP requests in flight (probes, scrapes) get once the drain is over.
const HTTP_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Run an edge until SIGTERM/SIGINT, then drain and return (or run a subcommand).
pub async fn run(config: Config) -> anyhow::Result<()> {
    if let Some(Command::Token(t)) = &config.command {
        let jwt = t.mint(&config.auth).map_err(anyhow::Error::msg)?;
        println!("{jwt}");
        return Ok(());
    }
    let listeners = natter_ops::Listeners::bind(config.listen, &config.net).await?;
    let drain_timeout = config.drain_timeout();
    let node = Node::start(config).await?;
    tracing::info!(addr = %listeners.public.local_addr(), ops_addr = %listeners.ops.local_addr(),
        node = %node.name, "edge listening");
    log_auth(&node.verifier);
    let app = server::router(node.clone())?;
    let ops = natter_ops::router(node.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let drainer = {
        let node: Arc<Node> = node.clone();
        tokio::spawn(async move {
            natter_ops::shutdown_signal().await;
            server::drain(&node, drain_timeout).await;
            let _ = stop_tx.send(());
        })
    };
    // Both ports serve through the drain (`/chat` answers 503, `/readyz` fails), then
    // close; sockets are the drain's business, not the listener's.
    let stopped = async move {
        let _ = stop_rx.await;
    };
    listeners.serve(app, ops, stopped, HTTP_GRACE).await;
    drainer.await?;
    Ok(())
}

/// Say how clients are authenticated; loudly when they are not.
fn log_auth(verifier: &natter_auth::Verifier) {
    match verifier.mode() {
        natter_auth::AuthMode::Off => tracing::warn!(
            auth = "off",
            "authentication is OFF: tokens are ignored and any client may claim any userId. \
             For local development only; never expose this edge"
        ),
        mode => tracing::info!(
            auth = %mode,
            algorithms = ?verifier.algorithms(),
            "clients are authenticated by signed tokens"
        ),
    }
}
