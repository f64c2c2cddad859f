//! Ranged reads of one room's messages straight from the stream.
//!
//! Uses batched direct get (ADR-31, NATS ≥ 2.11): one request returns up to `batch` messages
//! of a subject starting at a sequence, up to an optional last sequence, ended by an `EOB`
//! status. No consumer is created, so history, catch-up and gap repair cost one round trip
//! per batch and leave nothing behind on the server.
//!
//! For KV buckets read as streams (presence), two more calls: the subjects under a prefix
//! as the stream's leader knows them ([`StreamReader::subjects`], from the subject index),
//! and deleting one message by sequence ([`StreamReader::delete_seq`]), which is a
//! compare-and-delete on a key's revision.

use std::collections::{HashMap, VecDeque};
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
    #[error("the JetStream API refused (error {0}): {1}")]
    Api(u64, String),
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
    delete_subject: String,
    timeout: Duration,
}

/// Most subjects one stream-info reply lists (the server pages longer lists).
const SUBJECTS_PAGE: usize = 100_000;
/// The JetStream API error codes of a delete whose sequence is not in the stream.
const SEQ_NOT_FOUND: u64 = 10043;
const DELETE_FAILED: u64 = 10057;

impl StreamReader {
    pub fn new(client: Client, stream: &str, timeout: Duration) -> Self {
        StreamReader {
            client,
            api_subject: format!("$JS.API.DIRECT.GET.{stream}"),
            info_subject: format!("$JS.API.STREAM.INFO.{stream}"),
            delete_subject: format!("$JS.API.STREAM.MSG.DELETE.{stream}"),
            timeout,
        }
    }

    /// Sequence of the newest message on `subject`, 0 when there is none.
    pub async fn last_seq(&self, subject: &str) -> Result<u64, ReadError> {
        let req = DirectGetRequest {
            seq: None,
            next_by_subj: None,
            last_by_subj: Some(subject),
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
        let info = self.api(&self.info_subject, Bytes::new()).await?;
        Ok(info["state"]["first_seq"].as_u64().unwrap_or(0))
    }

    /// The subjects matching `filter` with their message counts, at most about `max` of
    /// them (whole pages), as the stream's leader knows them. Served from the stream's
    /// subject index: the cost grows with the subjects matched, not with the stream
    /// (unlike a multi-last or next-by-subject read with a wildcard, which walks the
    /// stream's blocks).
    pub async fn subjects(
        &self,
        filter: &str,
        max: usize,
    ) -> Result<HashMap<String, u64>, ReadError> {
        let mut out = HashMap::new();
        // Bounded: each page adds up to SUBJECTS_PAGE subjects or ends the loop.
        for _ in 0..=max / SUBJECTS_PAGE {
            let body = serde_json::json!({"subjects_filter": filter, "offset": out.len()});
            let body = serde_json::to_vec(&body).map_err(|e| ReadError::Nats(e.to_string()))?;
            let info = self.api(&self.info_subject, body.into()).await?;
            let state = &info["state"];
            let page = state["subjects"].as_object();
            let got = page.map_or(0, |p| p.len());
            if let Some(page) = page {
                out.extend(
                    page.iter()
                        .map(|(s, n)| (s.clone(), n.as_u64().unwrap_or(0))),
                );
            }
            let total = state["num_subjects"].as_u64().unwrap_or(0) as usize;
            if got == 0 || out.len() >= total || out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Delete the message with sequence `seq`: true when it was deleted, false when the
    /// stream does not hold it (in a KV bucket: the key was rewritten or removed since that
    /// revision). The stream's leader decides in its log order, so for a key this is a
    /// compare-and-delete on its revision that leaves no marker behind.
    pub async fn delete_seq(&self, seq: u64) -> Result<bool, ReadError> {
        let body = serde_json::json!({"seq": seq, "no_erase": true});
        let body = serde_json::to_vec(&body).map_err(|e| ReadError::Nats(e.to_string()))?;
        match self.api(&self.delete_subject, body.into()).await {
            Ok(_) => Ok(true),
            Err(ReadError::Api(code, _)) if code == SEQ_NOT_FOUND => Ok(false),
            Err(ReadError::Api(code, desc))
                if code == DELETE_FAILED
                    && (desc.contains("no message found") || desc.contains("not found")) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// One JetStream API request with a JSON reply; an `error` in it is an error here.
    async fn api(&self, subject: &str, body: Bytes) -> Result<serde_json::Value, ReadError> {
        let reply =
            tokio::time::timeout(self.timeout, self.client.request(subject.to_owned(), body))
                .await
                .map_err(|_| ReadError::Timeout(self.timeout))?
                .map_err(|e| ReadError::Nats(e.to_string()))?;
        let v: serde_json::Value =
            serde_json::from_slice(&reply.payload).map_err(|e| ReadError::Nats(e.to_string()))?;
        if let Some(err) = v.get("error") {
            return Err(ReadError::Api(
                err["err_code"].as_u64().unwrap_or(0),
                err["description"].as_str().unwrap_or_default().to_owned(),
            ));
        }
        Ok(v)
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
