//! Edge configuration: every setting is a flag with an environment variable twin, and what
//! `--check-config` validates beyond the flags' types.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use natter_auth::{AuthArgs, Claims, Verifier};
use natter_bus::StreamArgs;

/// natter edge: chat WebSockets in, JetStream out and back.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "natter-edge",
    version,
    about,
    mut_arg("ops_listen", |a| a.default_value("127.0.0.1:9080").required(false))
)]
pub struct Config {
    /// Public address: WebSockets (/chat) only.
    #[arg(long, env = "NATTER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// `--ops-listen` (/healthz, /readyz, /metrics) and the limits of both listeners.
    #[command(flatten)]
    pub net: natter_ops::ListenArgs,

    /// Origins whose pages may open a WebSocket, comma-separated (e.g.
    /// `https://chat.example.com`); an upgrade with another `Origin` gets 403. Empty: any
    /// origin. An upgrade without `Origin` (not from a browser) is always allowed.
    #[arg(long, env = "NATTER_ALLOWED_ORIGINS", default_value = "")]
    pub allowed_origins: String,

    /// Open WebSockets per client IP; further upgrades from that IP get 429.
    #[arg(long, env = "NATTER_MAX_CONNECTIONS_PER_IP", default_value_t = 200)]
    pub max_connections_per_ip: usize,

    /// Request header whose first address is the client IP (e.g. `X-Forwarded-For`), when
    /// every connection comes through a proxy that sets it. Without it the client IP is the
    /// peer address and such headers are ignored.
    #[arg(long, env = "NATTER_TRUSTED_PROXY_HEADER")]
    pub trusted_proxy_header: Option<String>,

    /// Seconds a WebSocket may stay open without a room joined; then it is closed with
    /// 1008.
    #[arg(long, env = "NATTER_JOIN_TIMEOUT_SECS", default_value_t = 30)]
    pub join_timeout_secs: u64,

    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Name of this edge instance (sent to clients in `welcome.node`); defaults to the
    /// host name (the pod name in Kubernetes).
    #[arg(long, env = "NATTER_NODE_NAME")]
    pub node_name: Option<String>,

    /// Largest WebSocket message accepted, in bytes; larger ones close the socket with 1009.
    #[arg(long, env = "NATTER_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Longest `text` of a textMessage, in bytes (error -32006 beyond).
    #[arg(long, env = "NATTER_MAX_TEXT_BYTES", default_value_t = 8 * 1024)]
    pub max_text_bytes: usize,

    /// Rooms one socket may be joined to at once.
    #[arg(long, env = "NATTER_MAX_ROOMS_PER_SOCKET", default_value_t = 16)]
    pub max_rooms_per_socket: usize,

    /// Open WebSockets accepted by this edge; further upgrades get 503.
    #[arg(long, env = "NATTER_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Frames queued to one socket before it counts as too slow and is disconnected with a
    /// reconnect hint.
    #[arg(long, env = "NATTER_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,

    /// Write coalescing, in milliseconds (0 = off): a room writes to its sockets at most
    /// once per this window. A quiet room's message goes out at once; messages that arrive
    /// within the window after a write wait for its end and go out together, one write per
    /// socket. Trades up to this much latency in busy rooms for far fewer socket writes
    /// (each costs the edge a system call and the client a wake-up). At most 1000.
    #[arg(long, env = "NATTER_COALESCE_MS", default_value_t = 0)]
    pub coalesce_ms: u64,

    /// With `--coalesce-ms`: coalesce only while the edge is behind, i.e. once its
    /// scheduling lag (how long a task that yields waits to be run again, sampled every
    /// 10 ms; the median of the last 10 samples) reaches this many milliseconds, until it
    /// has stayed under half of it for two seconds. While the edge keeps up, every message
    /// goes out at once. 0: coalesce always. At most 1000.
    #[arg(long, env = "NATTER_COALESCE_LAG_MS", default_value_t = 0)]
    pub coalesce_lag_ms: u64,

    /// Requests per second one socket may send (token bucket refill rate).
    #[arg(long, env = "NATTER_RATE_PER_SEC", default_value_t = 50.0)]
    pub rate_per_sec: f64,

    /// Burst of requests one socket may send above the rate.
    #[arg(long, env = "NATTER_RATE_BURST", default_value_t = 100.0)]
    pub rate_burst: f64,

    /// Messages sent on join when no `lastMessageId` is given.
    #[arg(long, env = "NATTER_MAX_MESSAGES_HISTORY", default_value_t = 100)]
    pub max_messages_history: usize,

    /// Most messages replayed on one resume; beyond it the newest are sent with a
    /// `historyTruncated` notification.
    #[arg(long, env = "NATTER_MAX_CATCHUP", default_value_t = 10_000)]
    pub max_catchup: usize,

    /// Most bytes of messages replayed on one resume; beyond it the newest are sent with a
    /// `historyTruncated` notification, as for `--max-catchup`.
    #[arg(long, env = "NATTER_MAX_CATCHUP_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_catchup_bytes: usize,

    /// Largest stored message (the whole JSON object the stream keeps and members get),
    /// in bytes; a textMessage that would be larger gets -32006.
    #[arg(long, env = "NATTER_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024)]
    pub max_message_bytes: usize,

    /// Default page of `getHistory` when the client gives no limit.
    #[arg(long, env = "NATTER_HISTORY_PAGE", default_value_t = 50)]
    pub history_page: u32,

    /// Seconds a draining edge waits for its clients to move before it exits. Keep it
    /// below the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "NATTER_DRAIN_TIMEOUT_SECS", default_value_t = 20)]
    pub drain_timeout_secs: u64,

    /// Seconds between WebSocket pings to each client.
    #[arg(long, env = "NATTER_PING_INTERVAL_SECS", default_value_t = 25)]
    pub ping_interval_secs: u64,

    /// Seconds without any frame from a client before its socket is closed.
    #[arg(long, env = "NATTER_IDLE_TIMEOUT_SECS", default_value_t = 90)]
    pub idle_timeout_secs: u64,

    /// Seconds between the ticks of a room's check that its tail matches the stream
    /// (repairs a message lost on the live subject when no later one reveals the gap): a
    /// room checks at the first tick that finds it quiet after traffic, and every room at
    /// the next tick after a disruption of the edge's NATS connection.
    #[arg(long, env = "NATTER_TAIL_CHECK_SECS", default_value_t = 5)]
    pub tail_check_secs: u64,

    /// Seconds between tail checks of a room otherwise (a safety net for a loss the edge
    /// cannot see).
    #[arg(long, env = "NATTER_TAIL_CHECK_QUIET_SECS", default_value_t = 60)]
    pub tail_check_quiet_secs: u64,

    /// Seconds between a room's check of its names against presence: announces names that
    /// left without a `userLeft` (none normally: the sweep of a crashed edge announces its
    /// names) and puts back a name deleted under a session here. A name is announced gone
    /// when two listings in a row miss it; the second comes at the next tail-check tick. After
    /// a disruption of the edge's NATS connection every room checks at its next two
    /// tail-check ticks as well.
    #[arg(long, env = "NATTER_PRESENCE_CHECK_SECS", default_value_t = 120)]
    pub presence_check_secs: u64,

    /// Timeout of one request to NATS (direct get, history, KV) and of the stream's reply to
    /// a publish (none in time: the client gets -32010), in milliseconds.
    #[arg(long, env = "NATTER_NATS_TIMEOUT_MS", default_value_t = 5000)]
    pub nats_timeout_ms: u64,

    #[command(flatten)]
    pub stream: StreamArgs,

    /// `--auth`, its keys and leeway (the filestore takes the same flags).
    #[command(flatten)]
    pub auth: AuthArgs,

    /// `--log-format`, `--check-config`.
    #[command(flatten)]
    pub ops: natter_ops::OpsArgs,

    /// Without a subcommand the edge runs.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `natter-edge` can do besides running the edge.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Print a development token (JWT, HS256, signed with the configured
    /// --auth-hs256-secret(-file)) and exit.
    Token(TokenArgs),
}

/// `natter-edge token --user u1 --room "Tests Room" [--name Ann] [--ttl-secs 3600]`
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The userId the token is for (`sub`).
    #[arg(long)]
    pub user: String,
    /// A room the token allows: an exact name, or a prefix ending in `*`. Repeat for
    /// several; none means every room.
    #[arg(long)]
    pub room: Vec<String>,
    /// The only userName the token allows; none means any.
    #[arg(long)]
    pub name: Option<String>,
    /// Seconds until the token expires.
    #[arg(long, default_value_t = 3600)]
    pub ttl_secs: u64,
}

impl TokenArgs {
    /// Sign the token these arguments describe with the HS256 secret of `auth`.
    pub fn mint(&self, auth: &AuthArgs) -> Result<String, String> {
        let secret = auth
            .hs256_secret()
            .map_err(|e| e.to_string())?
            .ok_or("no HS256 secret: give --auth-hs256-secret or --auth-hs256-secret-file")?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let claims = Claims {
            sub: self.user.clone(),
            exp: now.saturating_add(self.ttl_secs),
            nbf: None,
            name: self.name.clone(),
            rooms: (!self.room.is_empty()).then(|| self.room.clone()),
        };
        natter_auth::mint_hs256(&secret, &claims).map_err(|e| e.to_string())
    }
}

impl natter_ops::ServiceConfig for Config {
    fn ops(&self) -> &natter_ops::OpsArgs {
        &self.ops
    }

    fn secret_args() -> &'static [&'static str] {
        AuthArgs::SECRET_ARGS
    }

    /// What the flags' types cannot say.
    fn validate(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let positive = [
            ("--max-frame-bytes", self.max_frame_bytes as f64),
            ("--max-text-bytes", self.max_text_bytes as f64),
            ("--max-rooms-per-socket", self.max_rooms_per_socket as f64),
            ("--max-connections", self.max_connections as f64),
            ("--outbound-queue", self.outbound_queue as f64),
            ("--rate-per-sec", self.rate_per_sec),
            ("--rate-burst", self.rate_burst),
            ("--ping-interval-secs", self.ping_interval_secs as f64),
            ("--idle-timeout-secs", self.idle_timeout_secs as f64),
            ("--tail-check-secs", self.tail_check_secs as f64),
            ("--tail-check-quiet-secs", self.tail_check_quiet_secs as f64),
            ("--presence-check-secs", self.presence_check_secs as f64),
            (
                "--max-connections-per-ip",
                self.max_connections_per_ip as f64,
            ),
            ("--join-timeout-secs", self.join_timeout_secs as f64),
        ];
        for (flag, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{flag} must be greater than 0").into());
            }
        }
        if self.coalesce_ms > 1000 {
            return Err(
                "--coalesce-ms must be at most 1000 (it delays busy rooms' messages)".into(),
            );
        }
        if self.coalesce_lag_ms > 1000 {
            return Err("--coalesce-lag-ms must be at most 1000".into());
        }
        if self.idle_timeout_secs <= self.ping_interval_secs {
            return Err(
                "--idle-timeout-secs must exceed --ping-interval-secs (pings keep a quiet client alive)"
                    .into(),
            );
        }
        self.allowed_origins()?;
        self.trusted_proxy_header()?;
        Verifier::from_args(&self.auth, self.listen)?;
        Ok(())
    }
}

/// A transport setting that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum TransportConfigError {
    #[error("--allowed-origins: {0:?} is not an origin (scheme://host[:port], e.g. https://chat.example.com)")]
    Origin(String),
    #[error("--trusted-proxy-header: {0:?} is not a header name")]
    ProxyHeader(String),
}

impl Config {
    /// `--allowed-origins`, lower-cased, without a trailing `/`; empty allows any origin.
    pub fn allowed_origins(&self) -> Result<Vec<String>, TransportConfigError> {
        self.allowed_origins
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .map(|o| {
                let host = o
                    .strip_prefix("https://")
                    .or_else(|| o.strip_prefix("http://"));
                match host {
                    Some(h) if !h.is_empty() && !h.contains(['/', '?', '#', ' ']) => Ok(o),
                    _ => Err(TransportConfigError::Origin(o)),
                }
            })
            .collect()
    }

    /// `--trusted-proxy-header`, parsed.
    pub fn trusted_proxy_header(
        &self,
    ) -> Result<Option<axum::http::HeaderName>, TransportConfigError> {
        self.trusted_proxy_header
            .as_deref()
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| {
                axum::http::HeaderName::try_from(h)
                    .map_err(|_| TransportConfigError::ProxyHeader(h.to_owned()))
            })
            .transpose()
    }

    pub fn join_timeout(&self) -> Duration {
        Duration::from_secs(self.join_timeout_secs)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }

    pub fn nats_timeout(&self) -> Duration {
        Duration::from_millis(self.nats_timeout_ms.max(1))
    }

    /// The node name: the flag, else the host name, else `edge`.
    pub fn node(&self) -> String {
        if let Some(n) = &self.node_name {
            return n.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .map(|h| format!("{h}-{}", std::process::id()))
            .unwrap_or_else(|| format!("edge-{}", std::process::id()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_ops::ServiceConfig as _;

    #[test]
    fn defaults_are_valid_and_nonsense_is_not() {
        let c = Config::try_parse_from(["natter-edge"]).unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(c.ops.log_format, natter_ops::LogFormat::Text);
        assert_eq!(c.coalesce_ms, 0, "no write is delayed unless asked for");
        assert_eq!(
            c.coalesce_lag_ms, 0,
            "a window, once asked for, applies always"
        );
        let c = Config::try_parse_from(["natter-edge", "--coalesce-ms", "1000"]).unwrap();
        assert!(c.validate().is_ok());
        for bad in [
            ["--rate-per-sec", "0"],
            ["--outbound-queue", "0"],
            ["--idle-timeout-secs", "10"],
            ["--coalesce-ms", "1001"],
            ["--coalesce-lag-ms", "1001"],
        ] {
            let c = Config::try_parse_from(["natter-edge", bad[0], bad[1]]).unwrap();
            assert!(c.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn transport_flags() {
        let c = Config::try_parse_from(["natter-edge"]).unwrap();
        assert_eq!(c.net.ops_listen, SocketAddr::from(([127, 0, 0, 1], 9080)));
        assert!(c.allowed_origins().unwrap().is_empty());
        assert_eq!(c.trusted_proxy_header().unwrap(), None);
        assert_eq!((c.max_connections_per_ip, c.join_timeout_secs), (200, 30));
        let c = Config::try_parse_from([
            "natter-edge",
            "--allowed-origins",
            "https://Chat.example.com/, http://localhost:8079",
            "--trusted-proxy-header",
            "X-Forwarded-For",
        ])
        .unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(
            c.allowed_origins().unwrap(),
            ["https://chat.example.com", "http://localhost:8079"]
        );
        assert_eq!(
            c.trusted_proxy_header().unwrap().map(|h| h.to_string()),
            Some("x-forwarded-for".to_owned())
        );
        for bad in [
            ["--allowed-origins", "chat.example.com"],
            ["--allowed-origins", "https://a/b"],
            ["--trusted-proxy-header", "X Forwarded"],
            ["--join-timeout-secs", "0"],
            ["--max-connections-per-ip", "0"],
        ] {
            let c = Config::try_parse_from(["natter-edge", bad[0], bad[1]]).unwrap();
            assert!(c.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn auth_flags_are_validated() {
        let secret = "s".repeat(32);
        let ok = Config::try_parse_from([
            "natter-edge",
            "--auth",
            "required",
            "--auth-hs256-secret",
            &secret,
        ])
        .unwrap();
        assert!(ok.validate().is_ok());
        let no_key = Config::try_parse_from(["natter-edge", "--auth", "required"]).unwrap();
        assert!(no_key.validate().is_err());
        let public = Config::try_parse_from(["natter-edge", "--listen", "0.0.0.0:8080"]).unwrap();
        assert!(
            public.validate().is_err(),
            "a public listener needs a key (or --auth off)"
        );
        let off =
            Config::try_parse_from(["natter-edge", "--listen", "0.0.0.0:8080", "--auth", "off"])
                .unwrap();
        assert!(off.validate().is_ok());
    }

    #[test]
    fn token_subcommand_mints_what_the_edge_accepts() {
        let secret = "a-development-secret-of-32-bytes!";
        let c = Config::try_parse_from([
            "natter-edge",
            "token",
            "--user",
            "u1",
            "--room",
            "Tests Room",
            "--name",
            "Ann",
            "--auth-hs256-secret",
            secret,
        ])
        .unwrap();
        let Some(Command::Token(t)) = &c.command else {
            panic!("{c:?}")
        };
        let jwt = t.mint(&c.auth).unwrap();
        let v = Verifier::from_args(&c.auth, c.listen).unwrap();
        let claims = v.verify(&jwt).unwrap();
        assert_eq!(claims.sub, "u1");
        assert!(claims.allows_room("Tests Room") && !claims.allows_room("other"));
        assert!(claims.allows_name("Ann") && !claims.allows_name("Bob"));
        let none = Config::try_parse_from(["natter-edge", "token", "--user", "u1"]).unwrap();
        let Some(Command::Token(t)) = &none.command else {
            panic!()
        };
        assert!(t.mint(&none.auth).is_err(), "no secret, no token");
        assert!(Config::try_parse_from(["natter-edge"])
            .unwrap()
            .command
            .is_none());
    }
}
