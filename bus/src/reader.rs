//! Ranged reads of one room's messages straight from the stream.
//!
//! Uses batched direct get (ADR-31, NATS ≥ 2.11): one request returns up to `batch` messages
//! of a subject starting at a sequence, up to an optional last sequence, ended by an `EOB`
//! status. No consumer is created, so history, catch-up and gap repair cost one round trip
//! per batch and leave nothing behind on the server.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use thiserror::Error;

use crate::subjects::{HDR_SEQUENCE, HDR_SUBJECT, HDR_TIME_STAMP};

/// Messages asked for per direct-get round trip.
const BATCH: usize = 512;

#[derive(Debug, Error)]
pub enum ReadError {
    #[error("NATS request failed: {0}")]
    Nats(String),
    #[error("the stream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the stream answered with status {0}: {1}")]
    Status(u16, String),
    #[error("a direct-get reply had no valid {HDR_SEQUENCE} header")]
    MissingSequence,
    #[error("the replica that answered is behind the stream (it lacks sequence {0}); retry")]
    Behind(u64),
}

/// One message as the stream holds it.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub seq: u64,
    pub subject: String,
    pub payload: Bytes,
    /// Server time of storage (RFC 3339), from `Nats-Time-Stamp`.
    pub time: Option<String>,
    pub headers: HeaderMap,
}

#[derive(Serialize)]
struct DirectGetRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_by_subj: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_by_subj: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    multi_last: Option<[&'a str; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    up_to_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_time: Option<&'a str>,
}

/// Reads ranges of a stream by subject.
#[derive(Clone)]
pub struct StreamReader {
    client: Client,
    api_subject: String,
    info_subject: String,
    timeout: Duration,
}

impl StreamReader {
    pub fn new(client: Client, stream: &str, timeout: Duration) -> Self {
        StreamReader {
            client,
            api_subject: format!("$JS.API.DIRECT.GET.{stream}"),
            info_subject: format!("$JS.API.STREAM.INFO.{stream}"),
            timeout,
        }
    }

    /// Sequence of the newest message on `subject`, 0 when there is none.
    pub async fn last_seq(&self, subject: &str) -> Result<u64, ReadError> {
        let req = DirectGetRequest {
            seq: None,
            next_by_subj: None,
            last_by_subj: Some(subject),
            multi_last: None,
            batch: None,
            up_to_seq: None,
            start_time: None,
        };
        let mut out = Vec::new();
        self.request(&req, false, |m| {
            out.push(m.seq);
            true
        })
        .await?;
        Ok(out.first().copied().unwrap_or(0))
    }

    /// The stream's first sequence, as its leader knows it (a direct get may be answered by
    /// any replica, including one still catching up; the stream info comes from the leader).
    pub async fn leader_first_seq(&self) -> Result<u64, ReadError> {
        let reply = tokio::time::timeout(
            self.timeout,
            self.client.request(self.info_subject.clone(), Bytes::new()),
        )
        .await
        .map_err(|_| ReadError::Timeout(self.timeout))?
        .map_err(|e| ReadError::Nats(e.to_string()))?;
        let info: serde_json::Value =
            serde_json::from_slice(&reply.payload).map_err(|e| ReadError::Nats(e.to_string()))?;
        if let Some(err) = info.get("error") {
            let code = err["code"].as_u64().unwrap_or(0) as u16;
            return Err(ReadError::Status(code, err["description"].to_string()));
        }
        Ok(info["state"]["first_seq"].as_u64().unwrap_or(0))
    }

    /// Check a read that should have reached sequence `expected` of its subject (a sequence
    /// the caller saw stored there) but ended at `got`: fine when the stream no longer holds
    /// `expected` (trimmed after archiving), [`ReadError::Behind`] when it does, i.e. the
    /// replica that answered has not caught up yet. Without this a lagging replica's short
    /// answer would pass for "nothing more" and a resume or a repair would skip messages.
    pub async fn ensure_reached(&self, expected: u64, got: u64) -> Result<(), ReadError> {
        if got >= expected || expected == 0 {
            return Ok(());
        }
        if self.leader_first_seq().await? <= expected {
            return Err(ReadError::Behind(expected));
        }
        Ok(())
    }

    /// Sequence of the oldest message of the whole stream stored at or after `since`
    /// (RFC 3339), or `None` when every message is older.
    pub async fn first_seq_since(&self, since: &str) -> Result<Option<u64>, ReadError> {
        let req = DirectGetRequest {
            seq: None,
            next_by_subj: None,
            last_by_subj: None,
            multi_last: None,
            batch: None,
            up_to_seq: None,
            start_time: Some(since),
        };
        let mut out = None;
        self.request(&req, false, |m| {
            out = Some(m.seq);
            true
        })
        .await?;
        Ok(out)
    }

    /// Visit the messages on `subject` with sequence in `from..=up_to` in order, until `visit`
    /// returns false or the range is exhausted.
    pub async fn scan(
        &self,
        subject: &str,
        from: u64,
        up_to: Option<u64>,
        mut visit: impl FnMut(StoredMessage) -> bool,
    ) -> Result<(), ReadError> {
        let mut next = from.max(1);
        loop {
            if up_to.is_some_and(|u| next > u) {
                return Ok(());
            }
            let req = DirectGetRequest {
                seq: Some(next),
                next_by_subj: Some(subject),
                last_by_subj: None,
                multi_last: None,
                batch: Some(BATCH),
                up_to_seq: up_to,
                start_time: None,
            };
            let mut got = 0usize;
            let mut last = None;
            let mut stopped = false;
            self.request(&req, true, |m| {
                got += 1;
                last = Some(m.seq);
                // The server applies `up_to_seq` to multi-last reads only: cut here.
                if up_to.is_some_and(|u| m.seq > u) || !visit(m) {
                    stopped = true;
                    return false;
                }
                true
            })
            .await?;
            match last {
                Some(seq) if !stopped && got >= BATCH => next = seq + 1,
                _ => return Ok(()),
            }
        }
    }

    /// Messages on `subject` in `from..=up_to`, at most `max` (the oldest ones).
    pub async fn range(
        &self,
        subject: &str,
        from: u64,
        up_to: Option<u64>,
        max: usize,
    ) -> Result<Vec<StoredMessage>, ReadError> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        self.scan(subject, from, up_to, |m| {
            out.push(m);
            out.len() < max
        })
        .await?;
        Ok(out)
    }

    /// The newest `n` messages on `subject` with sequence ≤ `up_to`, oldest first, and whether
    /// the stream holds older ones on that subject. Probes backwards in growing windows, so a
    /// busy stream is not read from its start.
    pub async fn tail(
        &self,
        subject: &str,
        n: usize,
        up_to: u64,
    ) -> Result<(Vec<StoredMessage>, bool), ReadError> {
        if n == 0 || up_to == 0 {
            return Ok((Vec::new(), false));
        }
        let mut window = (n as u64).saturating_mul(4).max(256);
        loop {
            let start = up_to.saturating_sub(window - 1).max(1);
            let mut ring: VecDeque<StoredMessage> = VecDeque::with_capacity(n + 1);
            let mut seen = 0usize;
            self.scan(subject, start, Some(up_to), |m| {
                seen += 1;
                if ring.len() == n + 1 {
                    ring.pop_front();
                }
                ring.push_back(m);
                true
            })
            .await?;
            if seen > n || start == 1 {
                let more = ring.len() > n;
                if more {
                    ring.pop_front();
                }
                return Ok((ring.into(), more));
            }
            window = window.saturating_mul(8);
        }
    }

    /// The newest message of every subject matching `filter` (e.g. all keys of a KV prefix),
    /// at most `max` of them.
    pub async fn multi_last(
        &self,
        filter: &str,
        max: usize,
    ) -> Result<Vec<StoredMessage>, ReadError> {
        let req = DirectGetRequest {
            seq: None,
            next_by_subj: None,
            last_by_subj: None,
            multi_last: Some([filter]),
            batch: Some(max.max(1)),
            up_to_seq: None,
            start_time: None,
        };
        let mut out = Vec::new();
        self.request(&req, true, |m| {
            out.push(m);
            true
        })
        .await?;
        Ok(out)
    }

    /// Send one direct-get request and feed each returned message to `visit`. With
    /// `batched`, replies end at an `EOB` (204) status; otherwise after one message.
    async fn request(
        &self,
        req: &DirectGetRequest<'_>,
        batched: bool,
        mut visit: impl FnMut(StoredMessage) -> bool,
    ) -> Result<(), ReadError> {
        let body = serde_json::to_vec(req).map_err(|e| ReadError::Nats(e.to_string()))?;
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| ReadError::Nats(e.to_string()))?;
        self.client
            .publish_with_reply(self.api_subject.clone(), inbox, body.into())
            .await
            .map_err(|e| ReadError::Nats(e.to_string()))?;
        let mut keep_going = true;
        loop {
            let msg = match tokio::time::timeout(self.timeout, sub.next()).await {
                Err(_) => return Err(ReadError::Timeout(self.timeout)),
                Ok(None) => return Err(ReadError::Nats("subscription closed".into())),
                Ok(Some(m)) => m,
            };
            if let Some(status) = msg.status {
                match status.as_u16() {
                    // EOB: the batch is complete. 404: nothing (more) matches.
                    204 | 404 => return Ok(()),
                    code => {
                        return Err(ReadError::Status(
                            code,
                            msg.description.clone().unwrap_or_default(),
                        ))
                    }
                }
            }
            let headers = msg.headers.unwrap_or_default();
            let seq = headers
                .get(HDR_SEQUENCE)
                .and_then(|v| v.as_str().parse::<u64>().ok())
                .ok_or(ReadError::MissingSequence)?;
            let subject = headers
                .get(HDR_SUBJECT)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            let time = headers.get(HDR_TIME_STAMP).map(|v| v.as_str().to_owned());
            if keep_going {
                keep_going = visit(StoredMessage {
                    seq,
                    subject,
                    payload: msg.payload,
                    time,
                    headers,
                });
            }
            if !batched {
                return Ok(());
            }
            if !keep_going {
                // Unsubscribing drops whatever the server still sends for this batch.
                return Ok(());
            }
        }
    }
}
