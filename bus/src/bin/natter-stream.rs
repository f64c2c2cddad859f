//! `natter-stream`: show or change the `CHAT` stream's settings.
//!
//! Services never rewrite an existing stream (they report drift instead); this command is
//! the operator's explicit way to change it, with the same flags and environment variables
//! the services take (`NATTER_STREAM_*`), so it is run with the same ConfigMap:
//!
//! - `natter-stream show`: print the stream's settings next to the expected ones; exit 0
//!   when they match, 1 when they differ, 2 when the stream does not exist.
//! - `natter-stream apply`: print what would change and exit 1; with `--yes`, change it.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use natter_bus::stream::{apply_chat_stream, chat_stream_config, current, differences};
use natter_bus::StreamArgs;

/// Show or change the CHAT stream's settings.
#[derive(Debug, Parser)]
#[command(name = "natter-stream", version, about)]
struct Cli {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,

    #[command(flatten)]
    stream: StreamArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compare the stream with these settings.
    Show,
    /// Create or update the stream to these settings.
    Apply {
        /// Really change it (without: only say what would change).
        #[arg(long)]
        yes: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let client = natter_bus::connect(&cli.nats_url, "natter-stream", Duration::from_secs(10))
        .await
        .context("connecting to NATS")?;
    let js = async_nats::jetstream::new(client);
    let expected = chat_stream_config(&cli.stream)?;
    let actual = current(&js)
        .await
        .map_err(anyhow::Error::msg)
        .context("reading the CHAT stream")?;
    let drift = match &actual {
        Some(a) => differences(&expected, a),
        None => Vec::new(),
    };
    match cli.command {
        Command::Show => {
            let Some(_) = actual else {
                println!("the CHAT stream does not exist (any natter service creates it)");
                return Ok(ExitCode::from(2));
            };
            if drift.is_empty() {
                println!("the CHAT stream matches these settings");
                return Ok(ExitCode::SUCCESS);
            }
            for d in &drift {
                println!("{d}");
            }
            Ok(ExitCode::from(1))
        }
        Command::Apply { yes } => {
            if actual.is_some() && drift.is_empty() {
                println!("the CHAT stream already matches these settings; nothing to do");
                return Ok(ExitCode::SUCCESS);
            }
            for d in &drift {
                println!("will change {d}");
            }
            if !yes {
                println!("not changed: run again with --yes to apply");
                return Ok(ExitCode::from(1));
            }
            apply_chat_stream(&js, &cli.stream).await?;
            println!("the CHAT stream now has these settings");
            Ok(ExitCode::SUCCESS)
        }
    }
}
