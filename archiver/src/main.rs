//! `natter-archiver`: parses the configuration (`--check-config` validates it and exits),
//! sets up logging and runs the archiver until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use anyhow::Context as _;
use natter_archiver::Config;
use natter_ops::Start;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cfg = match natter_ops::start::<Config>() {
        Start::Run(cfg) => cfg,
        Start::Exit(code) => return Ok(code),
    };
    tracing::info!(listen = %cfg.listen, nats = %natter_ops::startup::redact(&cfg.nats_url), "natter-archiver starting");
    natter_archiver::run(cfg, natter_ops::shutdown_signal())
        .await
        .context("natter-archiver failed")?;
    Ok(ExitCode::SUCCESS)
}
