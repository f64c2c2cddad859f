//! `POST /images` and `POST /files`: authenticate, receive, authorize, store, announce.
//!
//! Before any of the body is read: the token is checked (401, see `access.rs`), a permit
//! for one of `--max-concurrent-uploads` is taken (503 with `Retry-After` when none is
//! free) and a declared `Content-Length` over the limit is refused (413). Then both
//! handlers stream the payload into a temporary file while checking its limits (nothing
//! is held whole in memory), each chunk awaited at most `--body-idle-timeout-secs` and the
//! whole body within `--upload-deadline-secs` (408); as soon as the message is known it
//! is validated and authorized (403); then the blob and its record are committed
//! (`store.rs`) and the notification published (`announce.rs`). Every refusal deletes the
//! temporary file before answering, so nothing is stored or announced.
//!
//! The image body is parsed in `image.rs` (JSON with a base64 payload), the file body in
//! `file.rs` (multipart, `multipart.rs`); what follows the body (commit, announce, answer)
//! is here.
//!
//! Idempotency by uuid: a uuid already stored and announced is answered 200 without storing
//! or publishing again; one stored but not announced (NATS failed last time) is published
//! again with the same bytes, which the stream deduplicates if an earlier attempt got through.

use std::time::{Duration, Instant};

use axum::body::{BodyDataStream, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use natter_auth::Claims;
use serde_json::json;

use crate::access::Carrier;
use crate::config::METADATA_MAX;
use crate::error::ApiError;
use crate::message::{MessageKind, UploadMessage};
use crate::state::Shared;
use crate::store::{Committed, Kind, Meta, Store, TempBlob};

mod file;
mod image;

use file::receive_file;
use image::receive_image;

/// After refusing an upload whose body is still arriving, read and discard at most this much
/// of it, for at most [`DRAIN_TIME`], so the client reads the answer instead of a reset.
const DRAIN_MAX: u64 = 8 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(5);
/// The same for a request refused before its body was looked at (401, 503, 413 by its
/// declared length): a stranger gets much less of our time.
const EARLY_DRAIN_MAX: u64 = 64 * 1024;
const EARLY_DRAIN_TIME: Duration = Duration::from_secs(1);
/// Multipart parts other than `files[]` and `message` are read and dropped, up to this much.
const OTHER_PARTS_MAX: u64 = METADATA_MAX as u64;

/// `POST /images`
pub async fn post_image(State(st): State<Shared>, req: Request) -> Response {
    let started = Instant::now();
    let res = upload(&st, req, MessageKind::Image).await;
    st.metrics.upload_latency(started.elapsed());
    respond(&st, "image", res)
}

/// `POST /files`
pub async fn post_file(State(st): State<Shared>, req: Request) -> Response {
    let started = Instant::now();
    let res = upload(&st, req, MessageKind::File).await;
    st.metrics.upload_latency(started.elapsed());
    respond(&st, "file", res)
}

/// The checks made before the body is read, then the upload itself.
async fn upload(st: &Shared, req: Request, kind: MessageKind) -> Result<Response, ApiError> {
    let body_max = match kind {
        MessageKind::Image => st.limits.image_body_max(),
        MessageKind::File => st.limits.file_body_max(),
    };
    let early = st
        .access
        .authenticate(req.headers(), None, Carrier::Header)
        .and_then(|claims| {
            let permit = st
                .uploads
                .clone()
                .try_acquire_owned()
                .map_err(|_| ApiError::Busy)?;
            check_declared_length(req.headers(), body_max)?;
            Ok((claims, permit))
        });
    let (claims, _permit) = match early {
        Ok(v) => v,
        Err(e) => {
            let mut body = req.into_body().into_data_stream();
            drain_body(&mut body, EARLY_DRAIN_MAX, EARLY_DRAIN_TIME).await;
            return Err(e);
        }
    };
    let up = Upload {
        st,
        claims,
        idle: st.limits.body_idle_timeout,
        deadline: Instant::now() + st.limits.upload_deadline,
        total: st.limits.upload_deadline,
    };
    match kind {
        MessageKind::Image => receive_image(&up, req).await,
        MessageKind::File => receive_file(&up, req).await,
    }
}

/// One upload being received: who sent it and how long it may take.
struct Upload<'a> {
    st: &'a Shared,
    /// The verified token, when the request is checked.
    claims: Option<Claims>,
    idle: Duration,
    deadline: Instant,
    total: Duration,
}

impl Upload<'_> {
    /// The next chunk of the body: 400 after `idle` without one, 408 past the deadline.
    async fn next_chunk(&self, body: &mut BodyDataStream) -> Result<Option<Bytes>, ApiError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ApiError::Deadline(self.total));
        }
        let wait = self.idle.min(left);
        match tokio::time::timeout(wait, body.next()).await {
            Err(_) if wait == left => Err(ApiError::Deadline(self.total)),
            Err(_) => Err(ApiError::Aborted(format!("no data for {:?}", self.idle))),
            Ok(None) => Ok(None),
            Ok(Some(Ok(b))) => Ok(Some(b)),
            Ok(Some(Err(e))) => Err(ApiError::Aborted(e.to_string())),
        }
    }

    /// Whether the token lets its holder post `msg` (403 otherwise).
    async fn authorize(&self, msg: &UploadMessage) -> Result<(), ApiError> {
        self.st
            .access
            .authorize_upload(self.claims.as_ref(), msg)
            .await
    }
}

fn respond(st: &Shared, what: &str, res: Result<Response, ApiError>) -> Response {
    match res {
        Ok(r) => r,
        Err(e) => {
            st.metrics.reject(e.reason());
            if e.status().is_server_error() {
                tracing::warn!(upload = what, reason = e.reason(), error = %e, "upload failed");
            } else {
                tracing::info!(upload = what, reason = e.reason(), error = %e, "upload refused");
            }
            e.into_response()
        }
    }
}

/// Refuse at once a body that announces more than `max` bytes.
fn check_declared_length(headers: &HeaderMap, max: u64) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > max => Err(ApiError::TooLarge {
            what: "the request body",
            limit: max,
        }),
        _ => Ok(()),
    }
}

/// Whether the body may still be arriving after this error (then it is drained).
fn body_still_arriving(e: &ApiError) -> bool {
    !matches!(
        e,
        ApiError::Aborted(_) | ApiError::BadMultipart(_) | ApiError::Deadline(_)
    )
}

/// Read and drop what is left of a refused body, within bounds.
async fn drain_body(body: &mut BodyDataStream, max: u64, time: Duration) {
    let _ = tokio::time::timeout(time, async {
        let mut left = max;
        while let Some(Ok(chunk)) = body.next().await {
            left = left.saturating_sub(chunk.len() as u64);
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Commit the upload unless its uuid is stored already, then make sure it is announced.
async fn store_and_announce(
    st: &Shared,
    msg: UploadMessage,
    temp: TempBlob,
    content_type: String,
    file_name: Option<String>,
) -> Result<Response, ApiError> {
    let kind = match msg.kind {
        MessageKind::Image => Kind::Image,
        MessageKind::File => Kind::File,
    };
    if let Some(existing) = st.store.load(kind, &msg.uuid).await? {
        temp.discard().await;
        return settle(st, &msg, existing, false).await;
    }
    let ts = now_rfc3339();
    let meta = Meta {
        version: Meta::VERSION,
        kind,
        uuid: msg.uuid.clone(),
        room: msg.room.clone(),
        blob_id: Store::new_blob_id(),
        size: temp.len(),
        file_name,
        content_type,
        stored_at: ts.clone(),
        notification: msg.stored(&ts),
        announced: false,
        seq: None,
    };
    match st.store.commit(temp, meta).await? {
        Committed::Created(meta) => {
            st.metrics.stored(kind, meta.size);
            tracing::info!(kind = ?kind, uuid = %meta.uuid, room = %meta.room, size = meta.size, "upload stored");
            settle(st, &msg, meta, true).await
        }
        Committed::Existing(meta) => settle(st, &msg, meta, false).await,
    }
}

/// Answer for a stored upload, announcing it first when that has not happened yet.
async fn settle(
    st: &Shared,
    msg: &UploadMessage,
    meta: Meta,
    created: bool,
) -> Result<Response, ApiError> {
    if meta.room != msg.room {
        return Err(ApiError::Conflict(msg.uuid.clone()));
    }
    if meta.announced {
        st.metrics.duplicate(meta.kind);
        return Ok(uploaded(&meta, meta.seq, true));
    }
    let Some(announcer) = st.announcer.get() else {
        st.metrics.publish_failed();
        return Err(ApiError::Unavailable("not connected to NATS yet".into()));
    };
    let payload = Bytes::from(meta.notification.clone().into_bytes());
    match announcer.announce(&meta.room, &meta.uuid, payload).await {
        Ok(ack) => {
            st.metrics.published(ack.duplicate);
            if !created {
                st.metrics.duplicate(meta.kind);
            }
            tracing::info!(uuid = %meta.uuid, seq = ack.seq, duplicate = ack.duplicate, "upload announced");
            let meta = match st.store.mark_announced(&meta, ack.seq).await {
                Ok(m) => m,
                Err(e) => {
                    // Announced all the same; a retry republishes and the stream dedupes.
                    tracing::warn!(uuid = %meta.uuid, error = %e, "could not record the announcement");
                    meta
                }
            };
            Ok(uploaded(&meta, Some(ack.seq), !created))
        }
        Err(e) => {
            st.metrics.publish_failed();
            Err(ApiError::Unavailable(e.to_string()))
        }
    }
}

fn uploaded(meta: &Meta, seq: Option<u64>, duplicate: bool) -> Response {
    axum::Json(json!({
        "uuid": meta.uuid,
        "_id": seq.map(|s| s.to_string()),
        "size": meta.size,
        "duplicate": duplicate,
    }))
    .into_response()
}
