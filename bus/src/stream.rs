//! The `CHAT` stream: the log every stored room message lives in, and the rules that keep
//! it safe.
//!
//! It is defined once, in `nats/streams/CHAT.json` (NATS API form, usable with
//! `nats stream add --config`), embedded here, with the operator's limits from
//! [`StreamArgs`].
//!
//! Two rules:
//! - **One owner, no silent rewrites.** Every service calls [`ensure_chat_stream`] at
//!   start-up: it creates the stream when absent and otherwise only *compares* it with its
//!   own expectation, returning the differences ([`Drift`]); services log them, export them
//!   as a metric and fail readiness, and a [`DriftWatch`] keeps checking. Changing the
//!   stream is an explicit operator action: `natter-stream apply` ([`apply_chat_stream`]).
//! - **Nothing acknowledged leaves before it is archived.** The stream discards *new*
//!   messages when full (`discard: new`; the publisher gets an error, clients get -32010
//!   and retry) and has no age or per-room limit of its own: old messages are removed only
//!   by the archiver's trimmer, and only below the archiver's acknowledgement floor (see
//!   `archiver/src/trim.rs`). A stalled archiver therefore means back-pressure, never loss.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::subjects::STREAM;
use crate::SetupError;

/// The embedded stream definition.
pub const CHAT_JSON: &str = include_str!("../../nats/streams/CHAT.json");

/// Stream and bucket settings an operator may change (env or flags).
#[derive(Debug, Clone, clap::Args)]
pub struct StreamArgs {
    /// Replicas of the CHAT stream and presence bucket (1 for dev, 3 in production).
    #[arg(long, env = "NATTER_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
    /// How long the stream keeps a message once it is archived, in seconds (the archiver
    /// trims; older messages are served from the archive).
    #[arg(long, env = "NATTER_STREAM_MAX_AGE_SECS", default_value_t = 7 * 24 * 3600)]
    pub stream_max_age_secs: u64,
    /// Bytes the stream may hold. When full, new messages are refused (clients retry) until
    /// the archiver has stored and trimmed older ones; the archiver starts trimming archived
    /// messages early, from 80% of this.
    #[arg(long, env = "NATTER_STREAM_MAX_BYTES", default_value_t = 10 * 1024 * 1024 * 1024)]
    pub stream_max_bytes: i64,
    /// Seconds a held user name survives without being refreshed by its edge.
    #[arg(long, env = "NATTER_PRESENCE_TTL_SECS", default_value_t = 30)]
    pub presence_ttl_secs: u64,
}

impl Default for StreamArgs {
    fn default() -> Self {
        StreamArgs {
            stream_replicas: 1,
            stream_max_age_secs: 7 * 24 * 3600,
            stream_max_bytes: 10 * 1024 * 1024 * 1024,
            presence_ttl_secs: 30,
        }
    }
}

/// The CHAT stream configuration: the embedded definition with the operator's limits.
pub fn chat_stream_config(args: &StreamArgs) -> Result<stream::Config, SetupError> {
    let mut cfg: stream::Config = serde_json::from_str(CHAT_JSON)?;
    cfg.num_replicas = args.stream_replicas.max(1);
    cfg.max_bytes = args.stream_max_bytes;
    Ok(cfg)
}

/// One setting of the existing stream that differs from what this service expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub field: &'static str,
    pub expected: String,
    pub actual: String,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: expected {}, the stream has {}",
            self.field, self.expected, self.actual
        )
    }
}

/// The settings natter manages, compared field by field ("unlimited" spelled either way —
/// 0 or -1 — counts as the same).
pub fn differences(expected: &stream::Config, actual: &stream::Config) -> Vec<Drift> {
    fn limit(v: i64) -> i64 {
        if v <= 0 {
            -1
        } else {
            v
        }
    }
    let republish = |c: &stream::Config| {
        c.republish.as_ref().map(|r| {
            format!(
                "{} -> {} (headers only: {})",
                r.source, r.destination, r.headers_only
            )
        })
    };
    let mut out = Vec::new();
    let mut check = |field: &'static str, e: String, a: String| {
        if e != a {
            out.push(Drift {
                field,
                expected: e,
                actual: a,
            });
        }
    };
    check(
        "subjects",
        format!("{:?}", expected.subjects),
        format!("{:?}", actual.subjects),
    );
    check(
        "retention",
        format!("{:?}", expected.retention),
        format!("{:?}", actual.retention),
    );
    check(
        "storage",
        format!("{:?}", expected.storage),
        format!("{:?}", actual.storage),
    );
    check(
        "num_replicas",
        expected.num_replicas.to_string(),
        actual.num_replicas.to_string(),
    );
    check(
        "discard",
        format!("{:?}", expected.discard),
        format!("{:?}", actual.discard),
    );
    check(
        "max_age",
        format!("{:?}", expected.max_age),
        format!("{:?}", actual.max_age),
    );
    check(
        "max_bytes",
        limit(expected.max_bytes).to_string(),
        limit(actual.max_bytes).to_string(),
    );
    check(
        "max_msgs",
        limit(expected.max_messages).to_string(),
        limit(actual.max_messages).to_string(),
    );
    check(
        "max_msgs_per_subject",
        limit(expected.max_messages_per_subject).to_string(),
        limit(actual.max_messages_per_subject).to_string(),
    );
    check(
        "max_msg_size",
        limit(i64::from(expected.max_message_size)).to_string(),
        limit(i64::from(actual.max_message_size)).to_string(),
    );
    check(
        "duplicate_window",
        format!("{:?}", expected.duplicate_window),
        format!("{:?}", actual.duplicate_window),
    );
    check(
        "allow_direct",
        expected.allow_direct.to_string(),
        actual.allow_direct.to_string(),
    );
    check(
        "deny_purge",
        expected.deny_purge.to_string(),
        actual.deny_purge.to_string(),
    );
    check(
        "republish",
        format!("{:?}", republish(expected)),
        format!("{:?}", republish(actual)),
    );
    out
}

/// What [`ensure_chat_stream`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamStatus {
    /// The stream was absent and this service created it.
    Created,
    /// The stream exists with the expected settings.
    Matches,
    /// The stream exists with other settings; it was left as it is.
    Drifted(Vec<Drift>),
}

impl StreamStatus {
    pub fn drift(&self) -> &[Drift] {
        match self {
            StreamStatus::Drifted(d) => d,
            _ => &[],
        }
    }
}

/// Create the CHAT stream when absent; otherwise compare it with this service's settings and
/// report the differences without changing anything. Retries a few times so services
/// racing at start-up converge instead of failing.
pub async fn ensure_chat_stream(
    js: &jetstream::Context,
    args: &StreamArgs,
) -> Result<StreamStatus, SetupError> {
    let expected = chat_stream_config(args)?;
    let mut last_err = String::new();
    for attempt in 0..5u32 {
        match current(js).await {
            Ok(Some(actual)) => {
                let drift = differences(&expected, &actual);
                return Ok(if drift.is_empty() {
                    StreamStatus::Matches
                } else {
                    StreamStatus::Drifted(drift)
                });
            }
            Ok(None) => match js.create_stream(expected.clone()).await {
                Ok(_) => return Ok(StreamStatus::Created),
                // Another service created it meanwhile: compare on the next round.
                Err(e) => last_err = e.to_string(),
            },
            Err(e) => last_err = e,
        }
        tracing::warn!(attempt, error = %last_err, "checking the CHAT stream failed, retrying");
        tokio::time::sleep(Duration::from_millis(200 * (u64::from(attempt) + 1))).await;
    }
    Err(SetupError::Stream(last_err))
}

/// The operator's explicit change: create or update the stream to these settings. Returns
/// what was different before.
pub async fn apply_chat_stream(
    js: &jetstream::Context,
    args: &StreamArgs,
) -> Result<Vec<Drift>, SetupError> {
    let expected = chat_stream_config(args)?;
    let before = match current(js).await.map_err(SetupError::Stream)? {
        Some(actual) => differences(&expected, &actual),
        None => Vec::new(),
    };
    js.create_or_update_stream(expected)
        .await
        .map_err(|e| SetupError::Stream(e.to_string()))?;
    Ok(before)
}

/// The stream's current configuration, `None` when it does not exist.
pub async fn current(js: &jetstream::Context) -> Result<Option<stream::Config>, String> {
    match js.get_stream(STREAM).await {
        Ok(mut s) => s
            .info()
            .await
            .map(|i| Some(i.config.clone()))
            .map_err(|e| e.to_string()),
        Err(e) => match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(e.to_string()),
        },
    }
}

/// Keeps comparing the stream with this service's settings, so a change made while the
/// service runs (or a drift found at start-up) stays visible in readiness and metrics.
#[derive(Clone, Default)]
pub struct DriftWatch {
    drift: Arc<Mutex<Vec<Drift>>>,
}

impl DriftWatch {
    /// Start from what [`ensure_chat_stream`] found and re-check every `period`.
    pub fn spawn(
        js: jetstream::Context,
        args: StreamArgs,
        initial: &StreamStatus,
        period: Duration,
    ) -> DriftWatch {
        let watch = DriftWatch::default();
        watch.set(initial.drift().to_vec());
        let me = watch.clone();
        tokio::spawn(async move {
            let Ok(expected) = chat_stream_config(&args) else {
                return;
            };
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                match current(&js).await {
                    Ok(Some(actual)) => me.set(differences(&expected, &actual)),
                    Ok(None) => tracing::warn!("the CHAT stream is gone"),
                    Err(e) => tracing::debug!(error = %e, "stream check failed"),
                }
            }
        });
        watch
    }

    fn set(&self, drift: Vec<Drift>) {
        let mut cur = self.drift.lock().unwrap_or_else(|p| p.into_inner());
        if *cur != drift {
            for d in &drift {
                tracing::warn!(drift = %d, "the CHAT stream differs from this service's settings; not changing it (run `natter-stream apply` to change it)");
            }
            *cur = drift;
        }
    }

    /// The differences found by the last check (empty: the stream matches).
    pub fn drift(&self) -> Vec<Drift> {
        self.drift.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A one-line reason for readiness, when the stream differs.
    pub fn not_ready_reason(&self) -> Option<String> {
        let d = self.drift();
        (!d.is_empty()).then(|| {
            let fields: Vec<&str> = d.iter().map(|d| d.field).collect();
            format!("CHAT stream settings differ: {}", fields.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_definition_parses_and_takes_overrides() {
        let args = StreamArgs {
            stream_replicas: 3,
            stream_max_bytes: 1 << 20,
            ..Default::default()
        };
        let cfg = chat_stream_config(&args).unwrap();
        assert_eq!(cfg.name, STREAM);
        assert_eq!(cfg.subjects, vec!["room.>".to_string()]);
        assert!(cfg.allow_direct);
        assert_eq!(cfg.num_replicas, 3);
        assert_eq!(cfg.max_bytes, 1 << 20);
        assert!(cfg.duplicate_window >= Duration::from_secs(120));
        let rp = cfg.republish.unwrap();
        assert_eq!(
            (rp.source.as_str(), rp.destination.as_str()),
            ("room.>", "live.room.>")
        );
    }

    #[test]
    fn nothing_leaves_the_stream_on_its_own() {
        let cfg = chat_stream_config(&StreamArgs::default()).unwrap();
        assert_eq!(
            cfg.discard,
            stream::DiscardPolicy::New,
            "full means refuse, not drop"
        );
        assert_eq!(
            cfg.max_age,
            Duration::ZERO,
            "no age limit: the archiver trims"
        );
        assert!(cfg.max_messages_per_subject <= 0, "no per-room limit");
        assert!(cfg.max_messages <= 0, "no message-count limit");
        assert!(!cfg.deny_purge, "the archiver's trimmer purges");
    }

    #[test]
    fn differences_name_each_changed_setting() {
        let a = chat_stream_config(&StreamArgs::default()).unwrap();
        assert!(differences(&a, &a).is_empty());
        let mut b = a.clone();
        b.max_bytes = 5;
        b.discard = stream::DiscardPolicy::Old;
        b.max_age = Duration::from_secs(60);
        let fields: Vec<&str> = differences(&a, &b).iter().map(|d| d.field).collect();
        assert_eq!(fields, vec!["discard", "max_age", "max_bytes"]);
        // 0 and -1 both mean unlimited.
        let mut c = a.clone();
        c.max_messages = if a.max_messages == 0 { -1 } else { 0 };
        assert!(differences(&a, &c).is_empty());
    }
}
