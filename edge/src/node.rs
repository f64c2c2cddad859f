//! The edge node: everything its sessions share — the NATS connection, the stream reader,
//! presence, the room registry, the session registry, metrics, and the drain state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use natter_bus::{subjects, DriftWatch, StreamReader};
use natter_protocol::Limits;
use thiserror::Error;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use natter_ops::{Probe, Readiness, Registry};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::outbox::{CloseReason, Outbox};
use crate::presence::Presence;
use crate::room::{RoomDeps, Rooms};

/// How often the CHAT stream is compared with this edge's settings.
const DRIFT_CHECK: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Layout(#[from] natter_bus::SetupError),
    #[error("could not subscribe to {0}: {1}")]
    Subscribe(String, String),
}

/// Open sessions by id, for takeovers and the drain.
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

    pub fn get(&self, id: &str) -> Option<Outbox> {
        self.lock().get(id).cloned()
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
    pub reader: StreamReader,
    pub presence: Arc<Presence>,
    pub rooms: Rooms,
    pub sessions: Sessions,
    pub metrics: Arc<Metrics>,
    /// Every series this edge exposes at `/metrics`.
    pub registry: Registry,
    pub limits: Limits,
    pub connections: Arc<Semaphore>,
    /// Differences between the CHAT stream and this edge's settings (readiness fails).
    pub stream_drift: DriftWatch,
    draining: AtomicBool,
    next_member: AtomicU64,
    next_request: AtomicU64,
}

impl Node {
    /// Connect to NATS, ensure the stream and bucket, and start the background tasks
    /// (presence refresh, takeover notices).
    pub async fn start(config: Config) -> Result<Arc<Node>, StartError> {
        let name = config.node();
        let nats = natter_bus::connect(
            &config.nats_url,
            &format!("natter-edge {name}"),
            Duration::from_secs(30),
        )
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
        let presence = Arc::new(Presence::new(kv, kv_reader));
        let limits = Limits {
            max_text_bytes: config.max_text_bytes,
            max_history_page: 500,
        };
        let mut registry = Registry::new();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let rooms = Rooms::new(RoomDeps {
            nats: nats.clone(),
            reader: reader.clone(),
            metrics: metrics.clone(),
            buffer_cap: config.outbound_queue.max(1),
            tail_check: Duration::from_secs(config.tail_check_secs.max(1)),
        });
        let node = Arc::new(Node {
            connections: Arc::new(Semaphore::new(config.max_connections)),
            stream_drift,
            limits,
            name,
            nats,
            js,
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
        let refresh = Duration::from_secs((node.config.stream.presence_ttl_secs / 3).max(1));
        node.presence.spawn_refresher(refresh);
        node.spawn_kick_listener().await?;
        info!(node = %node.name, "edge node started");
        Ok(node)
    }

    /// Listen for "close session X" from edges where X's name was taken over.
    async fn spawn_kick_listener(self: &Arc<Self>) -> Result<(), StartError> {
        let subject = subjects::kick(&self.name);
        let mut sub = self
            .nats
            .subscribe(subject.clone())
            .await
            .map_err(|e| StartError::Subscribe(subject, e.to_string()))?;
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(node) = me.upgrade() else { return };
                let sid = String::from_utf8_lossy(&msg.payload);
                if let Some(outbox) = node.sessions.get(&sid) {
                    info!(session = %sid, "session replaced on another edge; closing");
                    outbox.close(CloseReason::Replaced);
                }
            }
        });
        Ok(())
    }

    /// Close session `session_id` held at `node` (this one or another edge).
    pub async fn kick(&self, node: &str, session_id: &str) {
        self.metrics.takeovers.inc();
        if node == self.name {
            if let Some(o) = self.sessions.get(session_id) {
                o.close(CloseReason::Replaced);
            }
        } else if let Err(e) = self
            .nats
            .publish(subjects::kick(node), Bytes::from(session_id.to_owned()))
            .await
        {
            warn!(error = %e, "could not notify the previous session's edge");
        }
    }

    /// Publish an ephemeral room event (not stored) to every edge with members.
    pub async fn publish_event(
        &self,
        live_subject: &str,
        kind: &str,
        user_token: &str,
        frame: Bytes,
    ) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(subjects::HDR_EVENT, kind);
        headers.insert(subjects::HDR_USER, user_token);
        if let Err(e) = self
            .nats
            .publish_with_headers(live_subject.to_owned(), headers, frame)
            .await
        {
            warn!(error = %e, kind, "could not publish room event");
        }
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
