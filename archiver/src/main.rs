//! `natter-archiver`: parses the configuration (`--check-config` validates it and exits),
//! sets up logging and runs the archiver until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use natter_archiver::Config;
use natter_ops::startup::redact;

fn main() -> ExitCode {
    natter_ops::run_main(|cfg: Config| async move {
        tracing::info!(listen = %cfg.listen, nats = %redact(&cfg.nats_url), "natter-archiver starting");
        natter_archiver::run(cfg, natter_ops::shutdown_signal()).await
    })
}
