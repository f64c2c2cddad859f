//! `natter-edge`: parse the configuration (`--check-config` validates it and exits), set up
//! logging, run the edge until SIGTERM/SIGINT; see the crate docs and `natter-edge --help`.

use std::process::ExitCode;

use natter_edge::Config;
use natter_ops::Start;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let config = match natter_ops::start::<Config>() {
        Start::Run(config) => config,
        Start::Exit(code) => return Ok(code),
    };
    natter_edge::run(config).await?;
    Ok(ExitCode::SUCCESS)
}
