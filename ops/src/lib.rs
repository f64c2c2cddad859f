//! natter-ops: the operations surface every natter service (edge, archiver, filestore)
//! shares, so that all three are run, probed, scraped and checked the same way.
//!
//! - [`logging`]: `--log-format text|json` (`NATTER_LOG_FORMAT`), the filter from
//!   `RUST_LOG` (default `info`), and the tracing subscriber set up from them.
//! - [`startup`]: the [`OpsArgs`] each service's clap `Config` flattens, `--check-config`
//!   (validate, print the effective configuration with secrets redacted, exit), and
//!   [`run_main`], a service's whole `main` ([`start`] when `main` wants to do more).
//! - [`shutdown`]: the SIGTERM/SIGINT future a service stops on.
//! - [`metrics`]: a per-service [`Registry`] over `prometheus-client` and the metric types
//!   services declare their metrics with ([`Counter`], [`Gauge`], [`Histogram`],
//!   [`CounterFamily`]), plus the standard latency bucket sets.
//! - [`endpoints`]: the `/healthz`, `/readyz` and `/metrics` routes a service merges into
//!   its own router, answering through the service's [`Probe`].
//! - [`listener`]: the hardened HTTP listener every service serves through (header-read
//!   timeout, connection permits, idle bound, graceful stop, the peer address for
//!   handlers), and [`serve_with_ops`] for a public port beside an operations port.
//! - [`exposition`]: reading an exposition and `METRICS.md` back, for tests that hold a
//!   running service to the documented contract.
//!
//! What it is not: it holds no service logic and no state of its own. It knows nothing of
//! NATS, Postgres or chat; readiness means whatever the service's [`Probe`] says, and the
//! metrics are whatever the service registers. There is no global registry: each service
//! instance owns its [`Registry`], so several instances in one test process stay separate.

pub mod endpoints;
pub mod exposition;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod shutdown;
pub mod startup;

pub use endpoints::{router, Probe, Readiness};
pub use listener::{serve_with_ops, HttpArgs, HttpLimits, ListenArgs, ListenError, Listeners};
pub use logging::{init_tracing, LogFormat, LoggingError};
pub use metrics::{buckets, Counter, CounterFamily, Gauge, Histogram, Registry};
pub use shutdown::shutdown_signal;
pub use startup::{
    effective_config, run_main, start, start_from, OpsArgs, ServiceConfig, Setting, Start,
};
