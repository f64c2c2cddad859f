//! Logging: the tracing subscriber every service installs at start-up.
//!
//! The format is chosen by `--log-format` / `NATTER_LOG_FORMAT` (`text` for people, `json`
//! for a log pipeline: one object per line with the event's fields); what is logged by
//! `RUST_LOG` (an `EnvFilter` directive such as `info,natter_edge=debug`; `info` when unset).
//! Text is coloured only on a terminal (and not when `NO_COLOR` is set), so that log files
//! and collected container output hold no escape codes. It does not decide what services log.

use std::io::IsTerminal;

use thiserror::Error;
use tracing_subscriber::EnvFilter;

/// How log lines are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, Error)]
pub enum LoggingError {
    #[error("RUST_LOG is not a valid filter ({value:?}): {reason}")]
    Filter { value: String, reason: String },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// The filter from `RUST_LOG`, `info` when it is unset or empty. An invalid `RUST_LOG` is an
/// error rather than silently ignored, so that `--check-config` can report it.
pub fn filter_from_env() -> Result<EnvFilter, LoggingError> {
    let value = std::env::var("RUST_LOG").unwrap_or_default();
    filter_from(&value)
}

fn filter_from(value: &str) -> Result<EnvFilter, LoggingError> {
    let value = value.trim();
    let directives = if value.is_empty() { "info" } else { value };
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| LoggingError::Filter {
            value: value.to_owned(),
            reason: e.to_string(),
        })
}

/// Install the global tracing subscriber: `format` on stdout, filtered by `RUST_LOG`.
pub fn init_tracing(format: LogFormat) -> Result<(), LoggingError> {
    let builder = tracing_subscriber::fmt().with_env_filter(filter_from_env()?);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(colour(
                std::io::stdout().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|_| LoggingError::AlreadyInstalled)
}

/// Whether text lines are coloured: on a terminal, unless `NO_COLOR` is set to anything
/// but the empty string (<https://no-color.org>).
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
    }

    #[test]
    fn filters() {
        assert!(filter_from("").is_ok());
        assert!(filter_from("info,natter_edge=debug").is_ok());
        assert!(matches!(
            filter_from("info,natter_edge=loud"),
            Err(LoggingError::Filter { .. })
        ));
    }
}
