//! How every natter service connects to NATS: a list of URLs, reconnecting forever, with
//! connection events logged, and a bounded wait for the first connection; and
//! [`Disruptions`], which counts the events after which core NATS messages to a client may
//! have been lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::SetupError;

/// Counts the events after which core NATS messages on their way to one client may have
/// been lost: its connection dropped or came back, or the client dropped messages for a
/// slow subscription (*connection* disruptions, which lose any message to it); and a
/// stream's leader changed (a leader lost between storing a message and republishing it
/// loses the live copy). Whoever depends on core delivery compares an epoch with its value
/// at its last check. Clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct Disruptions(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    connection: AtomicU64,
    leader: AtomicU64,
}

impl Disruptions {
    /// Every disruption so far: connection disruptions and leader elections.
    pub fn epoch(&self) -> u64 {
        self.connection_epoch() + self.0.leader.load(Ordering::Acquire)
    }

    /// The connection disruptions so far.
    pub fn connection_epoch(&self) -> u64 {
        self.0.connection.load(Ordering::Acquire)
    }

    /// Count a connection disruption.
    pub fn bump(&self) {
        self.0.connection.fetch_add(1, Ordering::AcqRel);
    }

    /// Count each leader election of `stream` (JetStream's advisory; a single server has
    /// none), until the connection closes for good.
    pub async fn watch_leader_elections(
        &self,
        client: &async_nats::Client,
        stream: &str,
    ) -> Result<(), SetupError> {
        let subject = format!("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{stream}");
        let mut sub = client
            .subscribe(subject)
            .await
            .map_err(|e| SetupError::Connect(e.to_string()))?;
        let this = self.clone();
        let stream = stream.to_owned();
        tokio::spawn(async move {
            while sub.next().await.is_some() {
                tracing::info!(stream = %stream, "stream leader elected");
                this.0.leader.fetch_add(1, Ordering::AcqRel);
            }
        });
        Ok(())
    }
}

/// Connect to NATS as `name`: keeps reconnecting forever, logs connection events, and
/// waits for the first connection up to `first_connect` (services start before NATS is
/// ready in Kubernetes; the wait keeps a misconfigured URL from hanging silently).
pub async fn connect(
    url: &str,
    name: &str,
    first_connect: Duration,
) -> Result<async_nats::Client, SetupError> {
    connect_watched(url, name, first_connect, Disruptions::default()).await
}

/// [`connect`], counting this connection's disruptions into `disruptions`.
pub async fn connect_watched(
    url: &str,
    name: &str,
    first_connect: Duration,
    disruptions: Disruptions,
) -> Result<async_nats::Client, SetupError> {
    let name_owned = name.to_owned();
    let opts = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .subscription_capacity(64 * 1024)
        .request_timeout(Some(Duration::from_secs(5)))
        .event_callback(move |event| {
            let name = name_owned.clone();
            let disruptions = disruptions.clone();
            async move {
                if matches!(
                    event,
                    async_nats::Event::Connected
                        | async_nats::Event::Disconnected
                        | async_nats::Event::SlowConsumer(_)
                ) {
                    disruptions.bump();
                }
                match event {
                    async_nats::Event::Connected => tracing::info!(client = %name, "NATS connected"),
                    async_nats::Event::Disconnected => tracing::warn!(client = %name, "NATS disconnected"),
                    async_nats::Event::SlowConsumer(sid) => {
                        tracing::warn!(client = %name, sid, "NATS slow consumer: messages dropped (repaired from the stream)")
                    }
                    other => tracing::info!(client = %name, event = %other, "NATS event"),
                }
            }
        });
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SetupError::Connect(format!("bad NATS URL {url:?}: {e}")))?;
    let client = opts
        .connect(servers)
        .await
        .map_err(|e| SetupError::Connect(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + first_connect;
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() >= deadline {
            return Err(SetupError::Connect(format!(
                "no connection to {url} within {first_connect:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(client)
}
