//! History and catch-up: what a member gets on join, on resume after `lastMessageId`, and
//! on `getHistory`, read from the stream and — for ranges the stream no longer holds — from
//! the archiver's history service.
//!
//! The stream is asked first (it is the log). The archive is asked only when the stream may
//! have dropped part of the range (the archiver trimmed it: the stream's first sequence is
//! past the range), so a healthy stream costs no archive round trip. If the archive
//! is needed and cannot answer, the client is told with `historyTruncated` instead of being
//! handed a silent gap.
//!
//! Why one file of ~460 lines: join, resume and `getHistory` share the same stream/archive
//! merge and its windowing; splitting them would put one rule in three places. About 50
//! lines are its unit tests.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use natter_bus::history::{HistoryReply, HistoryRequest, MAX_PAGE};
use natter_bus::{subjects, StoredMessage};
use natter_protocol::frame;
use serde_json::{json, Value};
use thiserror::Error;
use tracing::{debug, warn};

use crate::node::Node;
use crate::outbox::Outbox;
use crate::room::Room;

#[derive(Debug, Error)]
pub enum CatchupError {
    #[error("reading the stream failed: {0}")]
    Stream(String),
    #[error("the socket closed during replay")]
    SocketGone,
}

/// Messages ready to send: `(seq, delivered frame)`, ascending.
type Frames = Vec<(u64, Bytes)>;

fn delivered(m: &StoredMessage) -> Option<(u64, Bytes)> {
    frame::with_message_id(&m.payload, m.seq).map(|f| (m.seq, f))
}

/// Whether the stream may no longer hold messages of `subject` with sequence > `after`.
async fn stream_may_have_dropped(node: &Node, subject: &str, after: u64) -> bool {
    let req = json!({"subjects_filter": subject});
    let info: Result<Value, _> = node
        .js
        .request(format!("STREAM.INFO.{}", subjects::STREAM), &req)
        .await;
    match info {
        Ok(v) => {
            let first = v["state"]["first_seq"].as_u64().unwrap_or(0);
            let per_subject = v["config"]["max_msgs_per_subject"].as_i64().unwrap_or(-1);
            let count = v["state"]["subjects"][subject].as_i64().unwrap_or(0);
            first > after.saturating_add(1) || (per_subject > 0 && count >= per_subject)
        }
        Err(e) => {
            warn!(error = %e, "stream info failed; assuming the archive is needed");
            true
        }
    }
}

/// Ask the archiver for up to `want` of the newest messages with `after < _id < before`,
/// paging backwards. Returns them ascending, and whether older ones (still `> after`) remain.
async fn archive_before(
    node: &Node,
    room: &Room,
    after: u64,
    before: u64,
    want: usize,
) -> Result<(Frames, bool), String> {
    let mut out: VecDeque<(u64, Bytes)> = VecDeque::new();
    let mut before = before;
    let mut more = false;
    // Bounded: every page moves `before` down or ends the loop.
    for _ in 0..(want / MAX_PAGE as usize + 2) {
        let need = want.saturating_sub(out.len());
        if need == 0 || before <= after + 1 {
            break;
        }
        let req = HistoryRequest {
            after: (after > 0).then_some(after),
            before: Some(before),
            limit: need.min(MAX_PAGE as usize) as u32,
        };
        let reply = archive_request(node, room, &req).await?;
        let page_more = reply.more;
        let Some(oldest) = reply.messages.first().map(|m| m.seq) else {
            more = false;
            break;
        };
        for item in reply.messages.into_iter().rev() {
            if item.seq <= after || item.seq >= before {
                continue;
            }
            if let Some(f) = frame::with_message_id(item.msg.get().as_bytes(), item.seq) {
                out.push_front((item.seq, f));
            }
        }
        more = page_more && oldest > after + 1;
        if !more {
            break;
        }
        before = oldest;
    }
    Ok((out.into(), more))
}

async fn archive_request(
    node: &Node,
    room: &Room,
    req: &HistoryRequest,
) -> Result<HistoryReply, String> {
    node.metrics.archive_requests.inc();
    let body = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    let res = tokio::time::timeout(
        node.config.nats_timeout(),
        node.nats
            .request(subjects::history(&room.token), body.into()),
    )
    .await;
    let reply = match res {
        Err(_) => Err("archive request timed out".to_string()),
        Ok(Err(e)) => Err(format!("archive request failed: {e}")),
        Ok(Ok(msg)) => serde_json::from_slice::<HistoryReply>(&msg.payload)
            .map_err(|e| format!("bad archive reply: {e}")),
    };
    match reply {
        Ok(r) if r.error.is_none() => Ok(r),
        Ok(r) => {
            node.metrics.archive_errors.inc();
            Err(r.error.unwrap_or_default())
        }
        Err(e) => {
            node.metrics.archive_errors.inc();
            Err(e)
        }
    }
}

/// What a replay sent.
#[derive(Debug, Default)]
pub struct Replayed {
    pub messages: usize,
    pub truncated_from: Option<u64>,
}

/// Send a joining member its history up to `seam`: the newest `max_messages_history` when
/// `after` is `None`, else everything with `_id > after` (at most `max_catchup`, the newest,
/// with `historyTruncated` first when more existed).
pub async fn replay(
    node: &Node,
    outbox: &Outbox,
    room: &Room,
    after: Option<u64>,
    seam: u64,
) -> Result<Replayed, CatchupError> {
    let t0 = Instant::now();
    let (frames, truncated) = match after {
        None => newest(node, room, node.config.max_messages_history, seam).await?,
        Some(after) => since(node, room, after, seam).await?,
    };
    let mut out = Replayed {
        messages: frames.len(),
        truncated_from: None,
    };
    if truncated {
        let from = frames
            .first()
            .map(|(s, _)| *s)
            .unwrap_or(seam.saturating_add(1));
        out.truncated_from = Some(from);
        node.metrics.history_truncated.inc();
        let note = frame::notification(
            "historyTruncated",
            json!({"roomName": room.name, "fromId": from.to_string()}),
        );
        if !outbox.send(note).await {
            return Err(CatchupError::SocketGone);
        }
    }
    for (_, f) in frames {
        if !outbox.send(f).await {
            return Err(CatchupError::SocketGone);
        }
    }
    node.metrics.catchups.inc();
    node.metrics.catchup_messages.inc_by(out.messages as u64);
    node.metrics.frames_out.inc_by(out.messages as u64);
    node.metrics.catchup_latency.observe(t0.elapsed());
    debug!(messages = out.messages, truncated = ?out.truncated_from, "replayed");
    Ok(out)
}

/// The newest `n` messages with `_id <= up_to`; the flag says older ones exist (for a join:
/// whether the archive was needed but unavailable, which is reported as truncation).
async fn newest(
    node: &Node,
    room: &Room,
    n: usize,
    up_to: u64,
) -> Result<(Frames, bool), CatchupError> {
    let (msgs, _more) = page_back(node, room, n, up_to).await?;
    Ok((msgs.frames, msgs.archive_failed))
}

struct Page {
    frames: Frames,
    more: bool,
    archive_failed: bool,
}

/// The newest `n` messages with `_id <= up_to`, from the stream and, below what it holds,
/// the archive. Returns `(page, more-older-exist)`.
async fn page_back(
    node: &Node,
    room: &Room,
    n: usize,
    up_to: u64,
) -> Result<(Page, bool), CatchupError> {
    let (msgs, stream_more) = node
        .reader
        .tail(&room.subject, n, up_to)
        .await
        .map_err(|e| CatchupError::Stream(e.to_string()))?;
    // `up_to` is a message of this room the edge has seen stored: an answer without it comes
    // from a replica that is behind (unless the message was trimmed after archiving).
    let reached = msgs.last().map(|m| m.seq).unwrap_or(0);
    node.reader
        .ensure_reached(up_to, reached)
        .await
        .map_err(|e| CatchupError::Stream(e.to_string()))?;
    let mut frames: Frames = msgs.iter().filter_map(delivered).collect();
    let mut page = Page {
        frames: Vec::new(),
        more: stream_more,
        archive_failed: false,
    };
    if !stream_more && up_to > 0 && stream_may_have_dropped(node, &room.subject, 0).await {
        let before = frames
            .first()
            .map(|(s, _)| *s)
            .unwrap_or(up_to.saturating_add(1));
        let want = n - frames.len();
        match archive_before(node, room, 0, before, want.max(1)).await {
            Ok((older, more)) => {
                let take = older.len().min(want);
                let skip = older.len() - take;
                page.more = more || skip > 0;
                let mut all: Frames = older.into_iter().skip(skip).collect();
                all.append(&mut frames);
                frames = all;
            }
            Err(e) => {
                warn!(error = %e, "archive unavailable for older history");
                page.archive_failed = true;
            }
        }
    }
    page.frames = frames;
    let more = page.more;
    Ok((page, more))
}

/// Everything with `after < _id <= up_to`, at most `max_catchup` messages and
/// `max_catchup_bytes` bytes (the newest); the flag says some were left out.
async fn since(
    node: &Node,
    room: &Room,
    after: u64,
    up_to: u64,
) -> Result<(Frames, bool), CatchupError> {
    let mut window = Newest::new(node.config.max_catchup, node.config.max_catchup_bytes);
    if after >= up_to {
        return Ok((Vec::new(), false));
    }
    let mut first_in_stream = None;
    let mut reached = 0;
    node.reader
        .scan(&room.subject, after + 1, Some(up_to), |m| {
            first_in_stream.get_or_insert(m.seq);
            reached = m.seq;
            if let Some(f) = delivered(&m) {
                window.push_newer(f);
            }
            true
        })
        .await
        .map_err(|e| CatchupError::Stream(e.to_string()))?;
    // See `page_back`: a short answer from a replica that is behind is an error, not history.
    node.reader
        .ensure_reached(up_to, reached)
        .await
        .map_err(|e| CatchupError::Stream(e.to_string()))?;
    let stream_from = first_in_stream.unwrap_or(up_to + 1);
    if !window.truncated
        && stream_from > after + 1
        && stream_may_have_dropped(node, &room.subject, after).await
    {
        let want = window.room_left();
        match archive_before(node, room, after, stream_from, want).await {
            Ok((older, more)) => {
                window.truncated = more;
                for f in older.into_iter().rev() {
                    if !window.push_older(f) {
                        break;
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, after, stream_from, "archive unavailable for catch-up; reporting truncation");
                window.truncated = true;
            }
        }
    }
    Ok((window.frames.into(), window.truncated))
}

/// The newest messages of a replay within a count and a byte budget.
struct Newest {
    frames: VecDeque<(u64, Bytes)>,
    bytes: usize,
    max: usize,
    max_bytes: usize,
    /// Some messages were left out.
    truncated: bool,
}

impl Newest {
    fn new(max: usize, max_bytes: usize) -> Self {
        Newest {
            frames: VecDeque::new(),
            bytes: 0,
            max: max.max(1),
            max_bytes: max_bytes.max(1),
            truncated: false,
        }
    }

    /// Add a message newer than all held; the oldest make way.
    fn push_newer(&mut self, f: (u64, Bytes)) {
        self.bytes += f.1.len();
        self.frames.push_back(f);
        while self.frames.len() > self.max || (self.bytes > self.max_bytes && self.frames.len() > 1)
        {
            if let Some((_, old)) = self.frames.pop_front() {
                self.bytes -= old.len();
            }
            self.truncated = true;
        }
    }

    /// Add a message older than all held, if it fits; false (and truncated) when not.
    fn push_older(&mut self, f: (u64, Bytes)) -> bool {
        if self.frames.len() >= self.max || self.bytes + f.1.len() > self.max_bytes {
            self.truncated = true;
            return false;
        }
        self.bytes += f.1.len();
        self.frames.push_front(f);
        true
    }

    /// How many more messages the count allows.
    fn room_left(&self) -> usize {
        self.max - self.frames.len()
    }
}

/// `getHistory`: a page of up to `limit` messages before `before` (or the newest), as the
/// bytes of a JSON-RPC result `{messages:[...], more}`.
pub async fn history_page(
    node: &Node,
    room: &Room,
    id: Option<&Value>,
    before: Option<u64>,
    limit: usize,
) -> Result<Bytes, CatchupError> {
    let up_to = match before {
        Some(0) => 0,
        Some(b) => b - 1,
        None => room.last_seq(),
    };
    let (page, more) = if up_to == 0 {
        (
            Page {
                frames: Vec::new(),
                more: false,
                archive_failed: false,
            },
            false,
        )
    } else {
        page_back(node, room, limit, up_to).await?
    };
    if page.archive_failed {
        warn!("getHistory served without the archive");
    }
    // {"jsonrpc":"2.0","result":{"messages":[...],"more":b},"id":ID} without re-encoding frames.
    let mut out =
        BytesMut::with_capacity(64 + page.frames.iter().map(|(_, f)| f.len() + 1).sum::<usize>());
    out.put_slice(b"{\"jsonrpc\":\"2.0\",\"result\":{\"messages\":[");
    for (i, (_, f)) in page.frames.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(f);
    }
    out.put_slice(b"],\"more\":");
    out.put_slice(if more || page.archive_failed {
        b"true"
    } else {
        b"false"
    });
    out.put_slice(b"},\"id\":");
    out.put_slice(
        serde_json::to_string(&id)
            .unwrap_or_else(|_| "null".into())
            .as_bytes(),
    );
    out.put_u8(b'}');
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(seq: u64, len: usize) -> (u64, Bytes) {
        (seq, Bytes::from(vec![b'x'; len]))
    }

    fn seqs(n: &Newest) -> Vec<u64> {
        n.frames.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn the_newest_are_kept_within_the_count() {
        let mut n = Newest::new(3, 1000);
        for s in 1..=5 {
            n.push_newer(f(s, 10));
        }
        assert_eq!(seqs(&n), vec![3, 4, 5]);
        assert!(n.truncated);
    }

    #[test]
    fn the_newest_are_kept_within_the_bytes() {
        let mut n = Newest::new(100, 25);
        for s in 1..=5 {
            n.push_newer(f(s, 10));
        }
        assert_eq!(seqs(&n), vec![4, 5]);
        assert!(n.truncated);
        // One message larger than the budget is still sent alone rather than nothing.
        let mut n = Newest::new(100, 5);
        n.push_newer(f(1, 10));
        assert_eq!(seqs(&n), vec![1]);
    }

    #[test]
    fn older_messages_fill_what_is_left_and_no_more() {
        let mut n = Newest::new(4, 35);
        n.push_newer(f(10, 10));
        n.push_newer(f(11, 10));
        assert!(!n.truncated);
        assert_eq!(n.room_left(), 2);
        assert!(n.push_older(f(9, 10)));
        assert!(!n.push_older(f(8, 10)), "over the byte budget");
        assert_eq!(seqs(&n), vec![9, 10, 11]);
        assert!(n.truncated);
    }
}
