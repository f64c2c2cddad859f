//! natter-bots configuration: every setting is a flag with an environment variable twin.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use natter_auth::AuthArgs;
use natter_bus::StreamArgs;

use crate::sandbox::Limits;

/// natter bots: sandboxed room bots answering through the CHAT stream, and their REST API.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "natter-bots",
    version,
    about,
    mut_arg("ops_listen", |a| a.default_value("127.0.0.1:9092").required(false))
)]
pub struct Config {
    /// Public address: the bots REST API (/rooms/{room}/bots) only.
    #[arg(long, env = "NATTER_LISTEN", default_value = "127.0.0.1:8092")]
    pub listen: SocketAddr,

    /// `--ops-listen` (/healthz, /readyz, /metrics) and the limits of both listeners.
    #[command(flatten)]
    pub net: natter_ops::ListenArgs,

    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Durable consumer on CHAT shared by every bots replica (each message handled once).
    #[arg(long, env = "NATTER_BOTS_CONSUMER", default_value = "bots")]
    pub consumer: String,

    /// Seconds before a trigger fetched by a replica that did not finish it (it died) is
    /// handed to another. Must stay well under the stream's 120 s dedupe window, which is
    /// what stores a redelivered trigger's replies once.
    #[arg(long, env = "NATTER_BOTS_ACK_WAIT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=90))]
    pub ack_wait_secs: u64,

    /// Most triggers fetched at once by one replica.
    #[arg(long, env = "NATTER_BOTS_BATCH_SIZE", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub batch_size: u64,

    /// Scripts run at once by one replica (on blocking threads).
    #[arg(long, env = "NATTER_BOTS_SCRIPT_THREADS", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub script_threads: u64,

    /// Rhai operations one run may take (an endless loop stops here).
    #[arg(long, env = "NATTER_BOTS_MAX_OPERATIONS", default_value_t = 200_000)]
    pub max_operations: u64,

    /// Wall-clock milliseconds one run may take.
    #[arg(long, env = "NATTER_BOTS_SCRIPT_TIMEOUT_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub script_timeout_ms: u64,

    /// Nested function calls a script may make (deep recursion stops here).
    #[arg(long, env = "NATTER_BOTS_MAX_CALL_LEVELS", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..=256))]
    pub max_call_levels: u64,

    /// Longest string a script may build, in bytes.
    #[arg(long, env = "NATTER_BOTS_MAX_STRING_BYTES", default_value_t = 16 * 1024)]
    pub max_string_bytes: usize,

    /// Largest array or map a script may build.
    #[arg(long, env = "NATTER_BOTS_MAX_COLLECTION", default_value_t = 1024)]
    pub max_collection: usize,

    /// Replies one run may return (more are dropped).
    #[arg(long, env = "NATTER_BOTS_MAX_REPLIES_PER_MESSAGE", default_value_t = 5)]
    pub max_replies_per_message: usize,

    /// Replies one bot may post per minute, per replica (more are dropped and counted).
    #[arg(long, env = "NATTER_BOTS_REPLIES_PER_MINUTE", default_value_t = 30)]
    pub replies_per_minute: u32,

    /// Longest reply text, in bytes (a longer one fails the run).
    #[arg(long, env = "NATTER_BOTS_MAX_REPLY_BYTES", default_value_t = 4096)]
    pub max_reply_bytes: usize,

    /// Longest script accepted on upload, in bytes (413 beyond).
    #[arg(long, env = "NATTER_BOTS_MAX_SCRIPT_BYTES", default_value_t = 64 * 1024)]
    pub max_script_bytes: usize,

    /// Bots one room may have (409 beyond).
    #[arg(long, env = "NATTER_BOTS_MAX_BOTS_PER_ROOM", default_value_t = 16)]
    pub max_bots_per_room: usize,

    /// Consecutive failed runs after which a bot is disabled (until it is replaced).
    #[arg(long, env = "NATTER_BOTS_FAILURES_TO_DISABLE", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub failures_to_disable: u32,

    /// How long one publish of a reply may take, acknowledgement included, in ms.
    #[arg(long, env = "NATTER_PUBLISH_TIMEOUT_MS", default_value_t = 5000)]
    pub publish_timeout_ms: u64,

    /// Seconds requests and the trigger in hand get to finish after SIGTERM.
    #[arg(long, env = "NATTER_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    #[command(flatten)]
    pub stream: StreamArgs,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub ops: natter_ops::OpsArgs,
}

impl natter_ops::ServiceConfig for Config {
    fn ops(&self) -> &natter_ops::OpsArgs {
        &self.ops
    }

    /// The token keys resolve.
    fn validate(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        natter_auth::Verifier::from_args(&self.auth, self.listen)?;
        if self.consumer.is_empty()
            || !self
                .consumer
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err("--consumer must be letters, digits, - and _".into());
        }
        Ok(())
    }

    fn secret_args() -> &'static [&'static str] {
        AuthArgs::SECRET_ARGS
    }
}

impl Config {
    pub fn limits(&self) -> Limits {
        Limits {
            max_operations: self.max_operations.max(1),
            max_call_levels: self.max_call_levels as usize,
            max_string_bytes: self.max_string_bytes.max(1),
            max_collection: self.max_collection.max(1),
            timeout: Duration::from_millis(self.script_timeout_ms),
            max_replies: self.max_replies_per_message.max(1),
        }
    }

    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.ack_wait_secs)
    }

    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms.max(1))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let c = Config::try_parse_from(["natter-bots"]).unwrap();
        assert_eq!(c.listen.port(), 8092);
        assert_eq!(c.net.ops_listen.port(), 9092);
        assert_eq!(c.consumer, "bots");
        assert!(
            c.ack_wait() < Duration::from_secs(120),
            "under the dedupe window"
        );
        assert!(Config::try_parse_from(["natter-bots", "--ack-wait-secs", "300"]).is_err());
    }
}
