//! How every natter service connects to NATS: a list of URLs, reconnecting forever, with
//! connection events logged, and a bounded wait for the first connection.

use std::time::Duration;

use crate::SetupError;

/// Connect to NATS as `name`: keeps reconnecting forever, logs connection events, and
/// waits for the first connection up to `first_connect` (services start before NATS is
/// ready in Kubernetes; the wait keeps a misconfigured URL from hanging silently).
pub async fn connect(
    url: &str,
    name: &str,
    first_connect: Duration,
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
            async move {
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
