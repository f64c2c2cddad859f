//! `natter-filestore`: parse the configuration (`--check-config` validates it and exits),
//! set up logging, run the service until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use natter_filestore::Config;
use natter_ops::Start;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let config = match natter_ops::start::<Config>() {
        Start::Run(config) => config,
        Start::Exit(code) => return Ok(code),
    };
    natter_filestore::run(config).await?;
    Ok(ExitCode::SUCCESS)
}
