//! The shutdown signal: a future that resolves on SIGTERM (Kubernetes stopping the pod) or
//! SIGINT (Ctrl-C). What a service does then (drain, finish batches, grace periods) is its
//! own business.

/// Resolves on the first SIGTERM or SIGINT, logging which one arrived. If a signal handler
/// cannot be installed, that is logged and the other signal still works.
pub async fn shutdown_signal() {
    let term = async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                    return;
                }
                Err(e) => tracing::error!(error = %e, "cannot listen for SIGTERM"),
            }
        }
        std::future::pending::<()>().await
    };
    let int = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await
        }
    };
    tokio::select! {
        () = term => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        () = int => tracing::info!(signal = "SIGINT", "shutdown requested"),
    }
}
