//! Publishing upload notifications to the room through JetStream.
//!
//! A notification is the stored message of the upload (see `message.rs`), published to
//! `room.<token>` with `Nats-Msg-Id = <token>:<uuid>`: the CHAT stream stores it once per
//! uuid within its duplicate window, gives it its sequence (`_id`), and republishes it to
//! `live.room.<token>`, from where the edges deliver it to every member and the archiver
//! stores it like any other message.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use natter_bus::subjects;
use natter_protocol::token;

/// Why a notification was not acknowledged. The upload stays stored and unannounced; the
/// client retries with the same uuid.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("not connected to NATS")]
    Disconnected,
    #[error("invalid message id header: {0}")]
    Header(String),
    #[error("publish failed: {0}")]
    Publish(String),
    #[error("no acknowledgement from the stream within {0:?}")]
    Timeout(Duration),
}

/// The stream's acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announced {
    /// The stream sequence: the message's `_id`.
    pub seq: u64,
    /// The stream had this uuid already (a retry, or a racing replica).
    pub duplicate: bool,
}

/// Publishes notifications.
#[derive(Clone)]
pub struct Announcer {
    client: async_nats::Client,
    js: jetstream::Context,
    timeout: Duration,
}

impl Announcer {
    pub fn new(client: async_nats::Client, timeout: Duration) -> Announcer {
        let js = jetstream::ContextBuilder::new()
            .timeout(timeout)
            .build(client.clone());
        Announcer {
            client,
            js,
            timeout,
        }
    }

    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Publish `payload` (a stored message) to `room` with the uuid as dedupe key, and wait
    /// for the stream's acknowledgement.
    pub async fn announce(
        &self,
        room: &str,
        uuid: &str,
        payload: Bytes,
    ) -> Result<Announced, AnnounceError> {
        // While disconnected the client would buffer the publish and might send it after
        // the request has already failed; refuse instead, so a 503 means "not published".
        if !self.connected() {
            return Err(AnnounceError::Disconnected);
        }
        let room_token = token::encode(room);
        let mut headers = async_nats::HeaderMap::new();
        let id: async_nats::HeaderValue = subjects::msg_id(&room_token, uuid).parse().map_err(
            |e: async_nats::header::ParseHeaderValueError| AnnounceError::Header(e.to_string()),
        )?;
        headers.insert("Nats-Msg-Id", id);
        let publish = async {
            let ack_future = self
                .js
                .publish_with_headers(subjects::room(&room_token), headers, payload)
                .await
                .map_err(|e| AnnounceError::Publish(e.to_string()))?;
            ack_future
                .await
                .map_err(|e| AnnounceError::Publish(e.to_string()))
        };
        let ack = tokio::time::timeout(self.timeout, publish)
            .await
            .map_err(|_| AnnounceError::Timeout(self.timeout))??;
        Ok(Announced {
            seq: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}
