//! The edge node: everything its sessions share — the NATS connection, the publisher, the
//! stream reader, presence, the token verifier, the room registry, the session registry,
//! metrics, and the drain state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use natter_bus::{subjects, DriftWatch, StreamReader};
use natter_protocol::Limits;
use thiserror::Error;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use natter_ops::{Probe, Readiness, Registry};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::presence::{NameChange, Presence};
use crate::publish::Publisher;
use crate::room::pressure::Pressure;
use crate::room::{RoomDeps, Rooms};

/// How often the CHAT stream is compared with this edge's settings.
const DRIFT_CHECK: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Layout(#[from] natter_bus::SetupError),
    #[error("authentication: {0}")]
    Auth(#[from] natter_auth::AuthConfigError),
    #[error("taking the presence lease: {0}")]
    Presence(String),
    #[error("subscribing to publish replies: {0}")]
    Replies(#[from] async_nats::SubscribeError),
}

/// Open sessions by id, for the drain.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Outbox>>,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Outbox>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, id: &str, outbox: Outbox) {
        self.lock().insert(id.to_owned(), outbox);
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn all(&self) -> Vec<Outbox> {
        self.lock().values().cloned().collect()
    }
}

/// Shared state of one edge process.
pub struct Node {
    pub config: Config,
    pub name: String,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    /// Publishes into the stream and settles their replies.
    pub publisher: Publisher,
    pub reader: StreamReader,
    pub presence: Arc<Presence>,
    pub rooms: Rooms,
    pub sessions: Sessions,
    pub metrics: Arc<Metrics>,
    /// Every series this edge exposes at `/metrics`.
    pub registry: Registry,
    pub limits: Limits,
    pub connections: Arc<Semaphore>,
    /// Checks the tokens clients join with (`--auth`).
    pub verifier: natter_auth::Verifier,
    /// Differences between the CHAT stream and this edge's settings (readiness fails).
    pub stream_drift: DriftWatch,
    draining: AtomicBool,
    next_member: AtomicU64,
    next_request: AtomicU64,
}

impl Node {
    /// Connect to NATS, ensure the stream and buckets, take this edge's presence lease and
    /// start the background task that renews it.
    pub async fn start(config: Config) -> Result<Arc<Node>, StartError> {
        let name = config.node();
        let verifier = natter_auth::Verifier::from_args(&config.auth, config.listen)?;
        let disruptions = natter_bus::Disruptions::default();
        let nats = natter_bus::connect_watched(
            &config.nats_url,
            &format!("natter-edge {name}"),
            Duration::from_secs(30),
            disruptions.clone(),
        )
        .await?;
        disruptions
            .watch_leader_elections(&nats, subjects::STREAM)
            .await?;
        let js = jetstream::new(nats.clone());
        let status = natter_bus::ensure_chat_stream(&js, &config.stream).await?;
        let stream_drift =
            DriftWatch::spawn(js.clone(), config.stream.clone(), &status, DRIFT_CHECK);
        let kv = natter_bus::ensure_presence(&js, &config.stream).await?;
        let timeout = config.nats_timeout();
        let reader = StreamReader::new(nats.clone(), subjects::STREAM, timeout);
        let kv_reader = StreamReader::new(
            nats.clone(),
            &format!("KV_{}", subjects::PRESENCE_BUCKET),
            timeout,
        );
        let leases = natter_bus::ensure_leases(&js, &config.stream).await?;
        let ttl = Duration::from_secs(config.stream.presence_ttl_secs.max(1));
        let presence = Arc::new(Presence::new(kv, leases, kv_reader, name.clone(), ttl));
        let lease = presence
            .take_lease()
            .await
            .map_err(|e| StartError::Presence(e.to_string()))?;
        let limits = Limits {
            max_text_bytes: config.max_text_bytes,
            max_history_page: 500,
        };
        let mut registry = Registry::new();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let publisher = Publisher::start(nats.clone(), timeout, metrics.clone()).await?;
        let rooms = Rooms::new(RoomDeps {
            nats: nats.clone(),
            reader: reader.clone(),
            metrics: metrics.clone(),
            buffer_cap: config.outbound_queue.max(1),
            tail_check: Duration::from_secs(config.tail_check_secs.max(1)),
            tail_check_quiet: Duration::from_secs(config.tail_check_quiet_secs.max(1)),
            disruptions,
            presence_check: Duration::from_secs(config.presence_check_secs.max(1)),
            coalesce: Duration::from_millis(config.coalesce_ms),
            pressure: if config.coalesce_ms > 0 && config.coalesce_lag_ms > 0 {
                Pressure::probe(
                    Duration::from_millis(config.coalesce_lag_ms),
                    metrics.sched_lag.clone(),
                    metrics.coalescing.clone(),
                )
            } else {
                if config.coalesce_ms > 0 {
                    metrics.coalescing.set(1);
                }
                Pressure::always()
            },
            presence: presence.clone(),
        });
        let node = Arc::new(Node {
            connections: Arc::new(Semaphore::new(config.max_connections)),
            verifier,
            stream_drift,
            limits,
            name,
            nats,
            js,
            publisher,
            reader,
            presence,
            rooms,
            sessions: Sessions::default(),
            metrics,
            registry,
            draining: AtomicBool::new(false),
            next_member: AtomicU64::new(1),
            next_request: AtomicU64::new(1),
            config,
        });
        node.presence.count_with(crate::presence::Counters {
            sweeps: node.metrics.presence_sweeps.clone(),
            swept_sessions: node.metrics.presence_swept_sessions.clone(),
            names_freed: node.metrics.presence_names_freed.clone(),
            lease_lapses: node.metrics.presence_lease_lapses.clone(),
            names_restored: node.metrics.presence_names_restored.clone(),
            release_retries: node.metrics.presence_release_retries.clone(),
            releases_pending: node.metrics.presence_releases_pending.clone(),
        });
        let (changes_tx, changes_rx) = tokio::sync::mpsc::unbounded_channel();
        node.presence.announce_to(changes_tx);
        tokio::spawn(announce_name_changes(node.nats.clone(), changes_rx));
        node.presence
            .spawn_lease(lease, (ttl / 3).max(Duration::from_secs(1)));
        info!(node = %node.name, "edge node started");
        Ok(node)
    }

    /// Publish an ephemeral room event (not stored) to every edge with members.
    pub async fn publish_event(
        &self,
        live_subject: &str,
        kind: &str,
        user_token: &str,
        frame: Bytes,
    ) {
        publish_event(&self.nats, live_subject, kind, user_token, frame).await;
    }

    pub fn next_member_id(&self) -> u64 {
        self.next_member.fetch_add(1, Ordering::Relaxed)
    }

    /// Id for a server-initiated request (`reconnect`).
    pub fn next_request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether this edge should get new clients.
    pub fn readiness(&self) -> Readiness {
        if self.is_draining() {
            Readiness::not_ready("draining")
        } else if self.nats.connection_state() != async_nats::connection::State::Connected {
            Readiness::not_ready("NATS not connected")
        } else if let Some(why) = self.stream_drift.not_ready_reason() {
            Readiness::not_ready(why)
        } else {
            Readiness::Ready
        }
    }

    /// Fail readiness and ask every client to move.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.metrics.draining.set(1);
        let all = self.sessions.all();
        self.metrics.drain_reconnects_sent.inc_by(all.len() as u64);
        for o in all {
            o.drain();
        }
    }
}

/// `/readyz` and `/metrics` of the ops router.
impl Probe for Node {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    async fn readiness(&self) -> Readiness {
        Node::readiness(self)
    }

    async fn before_scrape(&self) {
        self.metrics
            .stream_drift
            .set(self.stream_drift.drift().len() as i64);
    }
}

/// Publish an ephemeral room event (not stored) to every edge with members.
async fn publish_event(
    nats: &async_nats::Client,
    live_subject: &str,
    kind: &str,
    user_token: &str,
    frame: Bytes,
) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(subjects::HDR_EVENT, kind);
    headers.insert(subjects::HDR_USER, user_token);
    if let Err(e) = nats
        .publish_with_headers(live_subject.to_owned(), headers, frame)
        .await
    {
        warn!(error = %e, kind, "could not publish room event");
    }
}

/// Tell each room about names that changed hands with no joining or leaving session to
/// announce it: `userLeft` for a name freed by a sweep (a crashed edge's) or a retried
/// release, `newUser` for one re-created here after it was gone, as a leaving or joining
/// session would.
async fn announce_name_changes(
    nats: async_nats::Client,
    mut changes: tokio::sync::mpsc::UnboundedReceiver<NameChange>,
) {
    while let Some(change) = changes.recv().await {
        let (kind, owner_key, verb) = match &change {
            NameChange::Freed(key) => ("userLeft", key, "left"),
            NameChange::HeldAgain(key) => ("newUser", key, "joined"),
        };
        let Some((room_token, user_token)) = owner_key.split_once('.') else {
            continue;
        };
        let (Ok(room_name), Ok(user_name)) = (
            natter_protocol::token::decode(room_token),
            natter_protocol::token::decode(user_token),
        ) else {
            continue;
        };
        info!(room = %room_name, user = %user_name, kind, "presence changed with no client to say so; telling the room");
        let note = natter_protocol::frame::notification(
            kind,
            serde_json::json!({"type": "system", "text": format!("{user_name} has {verb} the room!"),
                   "roomName": room_name, "userName": user_name,
                   "uuid": uuid::Uuid::new_v4().to_string()}),
        );
        publish_event(&nats, &subjects::live(room_token), kind, user_token, note).await;
    }
}
