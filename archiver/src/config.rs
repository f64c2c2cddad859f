//! Command-line flags and environment variables of `natter-archiver`, and what
//! `--check-config` validates beyond them.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// natter archiver: writes every stored room message of the CHAT stream to Postgres exactly
/// once, and answers history requests (`history.<room token>`) from Postgres.
#[derive(Debug, Clone, Parser)]
#[command(name = "natter-archiver", version, about)]
pub struct Config {
    /// Address of the operations HTTP endpoints (/healthz, /readyz, /metrics).
    #[arg(long, env = "NATTER_LISTEN", default_value = "127.0.0.1:8091")]
    pub listen: SocketAddr,

    /// NATS server URL(s), comma separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Postgres URL of the archive, e.g. postgres://natter@127.0.0.1:5432/natter.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,

    /// Name of the durable pull consumer on CHAT shared by every archiver replica.
    #[arg(long, env = "NATTER_ARCHIVER_CONSUMER", default_value = "archiver")]
    pub consumer: String,

    /// Most messages fetched and written in one batch (one INSERT, one transaction).
    #[arg(long, env = "NATTER_ARCHIVER_BATCH_SIZE", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,

    /// Longest a fetch waits for the first message when the consumer has nothing pending, in
    /// milliseconds (a fetch returns as soon as it has delivered what is available).
    #[arg(long, env = "NATTER_ARCHIVER_FETCH_WAIT_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub fetch_wait_ms: u64,

    /// Batches written concurrently by this replica (each on its own connection).
    #[arg(long, env = "NATTER_ARCHIVER_WRITERS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub writers: u32,

    /// Seconds the server waits for an ack before redelivering a message. While Postgres is
    /// down, held batches are kept alive with in-progress acks every third of this.
    #[arg(long, env = "NATTER_ARCHIVER_ACK_WAIT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ack_wait_secs: u64,

    /// Most messages delivered and not yet acked across all replicas (at least
    /// writers x batch size x replicas, or replicas starve).
    #[arg(long, env = "NATTER_ARCHIVER_MAX_ACK_PENDING", default_value_t = 20_000,
          value_parser = clap::value_parser!(i64).range(1..))]
    pub max_ack_pending: i64,

    /// Postgres connections of this replica (writers + history queries).
    #[arg(long, env = "NATTER_ARCHIVER_DB_POOL_SIZE", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_pool_size: u32,

    /// Bound on one database operation (insert, query, connection), in milliseconds.
    #[arg(long, env = "NATTER_ARCHIVER_DB_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub db_timeout_ms: u64,

    /// Longest wait for a database connection (from the pool, or a new one), in
    /// milliseconds; a down database is noticed this fast.
    #[arg(long, env = "NATTER_ARCHIVER_DB_CONNECT_TIMEOUT_MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub db_connect_timeout_ms: u64,

    /// Cap of the exponential backoff between retries of a failed insert, in milliseconds.
    #[arg(long, env = "NATTER_ARCHIVER_RETRY_MAX_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub retry_max_ms: u64,

    /// Bound on answering one history request, in milliseconds (an error reply after it).
    #[arg(long, env = "NATTER_ARCHIVER_HISTORY_TIMEOUT_MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub history_timeout_ms: u64,

    /// History requests answered concurrently by this replica.
    #[arg(long, env = "NATTER_ARCHIVER_HISTORY_CONCURRENCY", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub history_concurrency: u32,

    /// How often the consumer lag is read from the server, in milliseconds.
    #[arg(long, env = "NATTER_ARCHIVER_LAG_INTERVAL_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub lag_interval_ms: u64,

    /// Longest a SIGTERM waits for in-flight batches before exiting, in seconds.
    #[arg(long, env = "NATTER_ARCHIVER_SHUTDOWN_SECS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub shutdown_secs: u64,

    /// How often the trimmer removes archived messages past retention from the stream, in
    /// milliseconds (see `--stream-max-age-secs`, `--stream-max-bytes`).
    #[arg(long, env = "NATTER_ARCHIVER_TRIM_INTERVAL_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(50..=3_600_000))]
    pub trim_interval_ms: u64,

    /// Limits of the operations listener (header-read timeout, connections, idle bound).
    #[command(flatten)]
    pub http: natter_ops::HttpArgs,

    #[command(flatten)]
    pub stream: natter_bus::StreamArgs,

    #[command(flatten)]
    pub ops: natter_ops::OpsArgs,
}

impl natter_ops::ServiceConfig for Config {
    fn ops(&self) -> &natter_ops::OpsArgs {
        &self.ops
    }

    /// Clap checks the ranges; the database URL is checked here.
    fn validate(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        crate::store::parse_url(&self.database_url)?;
        Ok(())
    }
}

impl Config {
    pub fn fetch_wait(&self) -> Duration {
        Duration::from_millis(self.fetch_wait_ms)
    }
    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.ack_wait_secs)
    }
    pub fn db_timeout(&self) -> Duration {
        Duration::from_millis(self.db_timeout_ms)
    }
    pub fn db_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.db_connect_timeout_ms)
    }
    pub fn retry_max(&self) -> Duration {
        Duration::from_millis(self.retry_max_ms)
    }
    pub fn history_timeout(&self) -> Duration {
        Duration::from_millis(self.history_timeout_ms)
    }
    pub fn trim_interval(&self) -> Duration {
        Duration::from_millis(self.trim_interval_ms)
    }

    pub fn lag_interval(&self) -> Duration {
        Duration::from_millis(self.lag_interval_ms)
    }
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_ops::ServiceConfig as _;

    #[test]
    fn defaults_and_bounds() {
        let c = Config::try_parse_from([
            "natter-archiver",
            "--database-url",
            "postgres://x@127.0.0.1/db",
        ])
        .unwrap();
        assert_eq!(
            (c.batch_size, c.writers, c.consumer.as_str()),
            (1000, 2, "archiver")
        );
        assert!(c.validate().is_ok());
        let bad = Config::try_parse_from(["natter-archiver", "--database-url", "mysql:x"]).unwrap();
        assert!(bad.validate().is_err());
        assert!(Config::try_parse_from([
            "natter-archiver",
            "--database-url",
            "x",
            "--batch-size",
            "0"
        ])
        .is_err());
    }
}
