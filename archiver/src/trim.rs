//! The stream's trimmer: the only thing that removes messages from `CHAT`, and only those
//! the archiver has stored.
//!
//! The stream has no age or per-room limit of its own and refuses new messages when full
//! (`discard: new`, see `bus/src/stream.rs`). Every period, one pass:
//! 1. reads the archiver consumer's acknowledgement floor: every message at or below it is
//!    committed to Postgres (messages are acked only after their commit) or was skipped as
//!    poison;
//! 2. finds where retention wants the stream to start: the first message younger than
//!    `--stream-max-age-secs`, and, when the stream holds more than 80% of
//!    `--stream-max-bytes`, far enough to bring it back to about 60%;
//! 3. purges everything below the lower of that point and `floor + 1`.
//!
//! So a message leaves the stream only after it is archived; an archiver that is down or
//! behind makes the stream fill up and refuse new sends (clients retry), never lose one.
//! Replicas may all trim: a purge below a sequence is idempotent.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use natter_bus::subjects::STREAM;
use natter_bus::StreamReader;
use thiserror::Error;
use tokio::sync::watch;

/// Start trimming archived messages when the stream is this full...
const HIGH_WATER: f64 = 0.8;
/// ...and trim down to about this.
const LOW_WATER: f64 = 0.6;

#[derive(Debug, Error)]
pub enum TrimError {
    #[error("reading the archiver consumer failed: {0}")]
    Consumer(String),
    #[error("reading the stream failed: {0}")]
    Stream(String),
    #[error("purging the stream failed: {0}")]
    Purge(String),
}

/// What the trimmer keeps.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub max_bytes: i64,
}

/// The stream's state as the trimmer needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamState {
    pub first_seq: u64,
    pub last_seq: u64,
    pub messages: u64,
    pub bytes: u64,
}

/// The first sequence to keep: messages below it may go. `age_cut` is the first sequence
/// young enough to keep by age (`last_seq + 1` when every message is older); `floor` the
/// archiver's acknowledgement floor. Never above `floor + 1`.
pub fn keep_from(state: StreamState, age_cut: u64, floor: u64, max_bytes: i64) -> u64 {
    let mut cut = age_cut;
    let max_bytes = max_bytes.max(1) as f64;
    let bytes = state.bytes as f64;
    if bytes > HIGH_WATER * max_bytes && state.messages > 0 {
        // Messages are about the same size: remove the oldest share that brings us to the
        // low-water mark.
        let share = (bytes - LOW_WATER * max_bytes) / bytes;
        let n = (state.messages as f64 * share).ceil() as u64;
        cut = cut.max(state.first_seq.saturating_add(n));
    }
    cut.min(floor.saturating_add(1))
}

/// One trimming pass; returns how many messages were purged.
pub async fn trim_once(
    js: &jetstream::Context,
    consumer: &mut PullConsumer,
    reader: &StreamReader,
    retention: Retention,
) -> Result<u64, TrimError> {
    let floor = consumer
        .info()
        .await
        .map_err(|e| TrimError::Consumer(e.to_string()))?
        .ack_floor
        .stream_sequence;
    if floor == 0 {
        return Ok(0);
    }
    let mut stream = js
        .get_stream(STREAM)
        .await
        .map_err(|e| TrimError::Stream(e.to_string()))?;
    let info = stream
        .info()
        .await
        .map_err(|e| TrimError::Stream(e.to_string()))?;
    let state = StreamState {
        first_seq: info.state.first_sequence,
        last_seq: info.state.last_sequence,
        messages: info.state.messages,
        bytes: info.state.bytes,
    };
    if state.messages == 0 {
        return Ok(0);
    }
    let cutoff = time::OffsetDateTime::now_utc() - retention.max_age;
    let since = cutoff
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| TrimError::Stream(e.to_string()))?;
    let age_cut = reader
        .first_seq_since(&since)
        .await
        .map_err(|e| TrimError::Stream(e.to_string()))?
        .unwrap_or(state.last_seq + 1);
    let keep = keep_from(state, age_cut, floor, retention.max_bytes);
    if keep <= state.first_seq {
        return Ok(0);
    }
    let purged = stream
        .purge()
        .sequence(keep)
        .await
        .map_err(|e| TrimError::Purge(e.to_string()))?
        .purged;
    tracing::debug!(keep_from = keep, floor, purged, "stream trimmed");
    Ok(purged)
}

/// Trim every `period` until shutdown; `on_trim` hears how many messages each pass purged.
pub async fn run(
    js: jetstream::Context,
    mut consumer: PullConsumer,
    reader: StreamReader,
    retention: Retention,
    period: Duration,
    on_trim: impl Fn(u64) + Send,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        match trim_once(&js, &mut consumer, &reader, retention).await {
            Ok(n) => on_trim(n),
            Err(e) => tracing::warn!(error = %e, "trimming the stream failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(first: u64, last: u64, bytes: u64) -> StreamState {
        StreamState {
            first_seq: first,
            last_seq: last,
            messages: last - first + 1,
            bytes,
        }
    }

    #[test]
    fn never_past_the_archived_floor() {
        // Everything is too old and the stream is full, but only 1..=40 are archived.
        let s = state(1, 100, 1000);
        assert_eq!(keep_from(s, 101, 40, 1000), 41);
        // Nothing archived yet: nothing goes.
        assert_eq!(keep_from(s, 101, 0, 1000), 1);
    }

    #[test]
    fn age_alone_trims_what_is_older_and_archived() {
        let s = state(1, 100, 10);
        assert_eq!(keep_from(s, 60, 100, 1_000_000), 60);
        assert_eq!(keep_from(s, 1, 100, 1_000_000), 1, "all young: keep all");
    }

    #[test]
    fn a_full_stream_is_brought_back_to_the_low_water_mark() {
        // 100 messages of 10 bytes, limit 1000: 100% full → keep the newest 60%.
        let s = state(1, 100, 1000);
        assert_eq!(keep_from(s, 1, 100, 1000), 41);
        // Below the high-water mark, bytes do not trim.
        let s = state(1, 100, 700);
        assert_eq!(keep_from(s, 1, 100, 1000), 1);
    }
}
