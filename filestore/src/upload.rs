//! `POST /images` and `POST /files`: receive, validate, store, announce.
//!
//! Both stream the payload into a temporary file while checking its limits (nothing is
//! held whole in memory), then validate the message, commit the blob and its record
//! (`store.rs`) and publish the notification (`announce.rs`). Every refusal deletes the
//! temporary file before answering, so nothing is stored or announced.
//!
//! Idempotency by uuid: a uuid already stored and announced is answered 200 without storing
//! or publishing again; one stored but not announced (NATS failed last time) is published
//! again with the same bytes, which the stream deduplicates if an earlier attempt got through.

use std::time::{Duration, Instant};

use axum::body::{BodyDataStream, Bytes};
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::config::{ImageType, METADATA_MAX};
use crate::error::ApiError;
use crate::imagebody::{Base64Check, Base64Error, BodyError, Splitter};
use crate::message::{MessageKind, UploadMessage};
use crate::names;
use crate::server::Shared;
use crate::store::{Committed, Kind, Meta, Store, TempBlob};

/// After refusing an upload whose body is still arriving, read and discard at most this much
/// of it, for at most [`DRAIN_TIME`], so the client reads the answer instead of a reset.
const DRAIN_MAX: u64 = 8 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(5);
/// Multipart parts other than `files[]` and `message` are read and dropped, up to this much.
const OTHER_PARTS_MAX: u64 = METADATA_MAX as u64;

/// `POST /images`
pub async fn post_image(State(st): State<Shared>, req: Request) -> Response {
    let started = Instant::now();
    let res = receive_image(&st, req).await;
    st.metrics.upload_latency(started.elapsed());
    respond(&st, "image", res)
}

/// `POST /files`
pub async fn post_file(State(st): State<Shared>, req: Request) -> Response {
    let started = Instant::now();
    let res = receive_file(&st, req).await;
    st.metrics.upload_latency(started.elapsed());
    respond(&st, "file", res)
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

async fn next_chunk(body: &mut BodyDataStream, idle: Duration) -> Result<Option<Bytes>, ApiError> {
    match tokio::time::timeout(idle, body.next()).await {
        Err(_) => Err(ApiError::Aborted(format!("no data for {idle:?}"))),
        Ok(None) => Ok(None),
        Ok(Some(Ok(b))) => Ok(Some(b)),
        Ok(Some(Err(e))) => Err(ApiError::Aborted(e.to_string())),
    }
}

/// Whether the body may still be arriving after this error (then it is drained).
fn body_still_arriving(e: &ApiError) -> bool {
    !matches!(e, ApiError::Aborted(_) | ApiError::BadMultipart(_))
}

async fn drain_body(body: &mut BodyDataStream) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut left = DRAIN_MAX;
        while let Some(Ok(chunk)) = body.next().await {
            left = left.saturating_sub(chunk.len() as u64);
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

fn body_error(e: BodyError) -> ApiError {
    match e {
        BodyError::SkeletonTooLarge => ApiError::TooLarge {
            what: "the message without its image",
            limit: METADATA_MAX as u64,
        },
        BodyError::TooDeep => ApiError::MalformedJson("nested too deep".into()),
        BodyError::DuplicatePayload => ApiError::invalid("params.base64ImgString appears twice"),
    }
}

fn base64_error(e: Base64Error, limit: u64) -> ApiError {
    match e {
        Base64Error::Invalid(m) => ApiError::NotBase64(m),
        Base64Error::NotImage(t) => {
            ApiError::Unsupported(format!("a data URL of type {t:?} is not an image"))
        }
        Base64Error::TooLarge => ApiError::TooLarge {
            what: "the image",
            limit,
        },
    }
}

async fn receive_image(st: &Shared, req: Request) -> Result<Response, ApiError> {
    let limits = &st.limits;
    let body_max = limits.image_body_max();
    check_declared_length(req.headers(), body_max)?;
    let mut body = req.into_body().into_data_stream();
    let mut temp = st.store.temp_blob().await?;
    let mut splitter = Splitter::new(METADATA_MAX);
    let mut check = Base64Check::new(limits.max_image_bytes);
    let mut text = Vec::with_capacity(64 * 1024);
    let mut received: u64 = 0;
    let failure = loop {
        let chunk = match next_chunk(&mut body, limits.body_idle_timeout).await {
            Ok(Some(c)) => c,
            Ok(None) => break None,
            Err(e) => break Some(e),
        };
        received += chunk.len() as u64;
        if received > body_max {
            break Some(ApiError::TooLarge {
                what: "the request body",
                limit: body_max,
            });
        }
        text.clear();
        if let Err(e) = splitter.feed(&chunk, &mut text) {
            break Some(body_error(e));
        }
        if let Err(e) = check.push(&text) {
            break Some(base64_error(e, limits.max_image_bytes));
        }
        if let Err(e) = temp.write(&text).await {
            break Some(e.into());
        }
    };
    if let Some(e) = failure {
        temp.discard().await;
        if body_still_arriving(&e) {
            drain_body(&mut body).await;
        }
        return Err(e);
    }
    let (skeleton, found) = splitter.finish();
    let value: Value =
        serde_json::from_slice(&skeleton).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    let (msg, inline) = UploadMessage::from_value(MessageKind::Image, value)?;
    if !found {
        // Only a key spelled with escapes escapes the splitter; the value is then small (it
        // fitted in the skeleton) and is checked the same way.
        match inline {
            Some(Value::String(s)) if !s.is_empty() => {
                check
                    .push(s.as_bytes())
                    .map_err(|e| base64_error(e, limits.max_image_bytes))?;
                temp.write(s.as_bytes()).await?;
            }
            _ => {
                return Err(ApiError::invalid(
                    "params.base64ImgString must be a non-empty string",
                ))
            }
        }
    }
    let summary = check
        .finish()
        .map_err(|e| base64_error(e, limits.max_image_bytes))?;
    let sniffed = ImageType::sniff(&summary.head);
    let content_type = match (&limits.image_types, sniffed) {
        (Some(allowed), Some(t)) if allowed.contains(&t) => t.mime().to_owned(),
        (None, Some(t)) => t.mime().to_owned(),
        (None, None) => summary
            .media_type
            .unwrap_or_else(|| "application/octet-stream".to_owned()),
        (Some(allowed), _) => {
            let names: Vec<&str> = allowed.iter().map(|t| t.name()).collect();
            return Err(ApiError::Unsupported(format!(
                "the image is not one of: {}",
                names.join(", ")
            )));
        }
    };
    store_and_announce(st, msg, temp, content_type, None).await
}

async fn receive_file(st: &Shared, req: Request) -> Result<Response, ApiError> {
    let limits = &st.limits;
    check_declared_length(req.headers(), limits.file_body_max())?;
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        });
    if !multipart {
        return Err(ApiError::BadMultipart(
            "expected multipart/form-data with a files[] part and a message part".into(),
        ));
    }
    let mut mp = Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError::BadMultipart(e.body_text()))?;
    let idle = limits.body_idle_timeout;
    let mut message: Option<Vec<u8>> = None;
    let mut file: Option<(TempBlob, Option<String>, Option<String>)> = None;
    let mut other: u64 = 0;
    let mut failure = None;
    'parts: loop {
        let mut field = match tokio::time::timeout(idle, mp.next_field()).await {
            Err(_) => {
                failure = Some(ApiError::Aborted(format!("no data for {idle:?}")));
                break;
            }
            Ok(Err(e)) => {
                failure = Some(ApiError::BadMultipart(e.body_text()));
                break;
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(f))) => f,
        };
        let name = field.name().unwrap_or("").to_owned();
        match name.as_str() {
            "files[]" | "files" | "file" => {
                if file.is_some() {
                    failure = Some(ApiError::invalid("exactly one file part is accepted"));
                    break;
                }
                let part_name = field.file_name().map(str::to_owned);
                let part_type = field.content_type().map(str::to_owned);
                let mut temp = st.store.temp_blob().await?;
                loop {
                    match field_chunk(&mut field, idle).await {
                        Ok(Some(c)) => {
                            if temp.len() + c.len() as u64 > limits.max_file_bytes {
                                failure = Some(ApiError::TooLarge {
                                    what: "the file",
                                    limit: limits.max_file_bytes,
                                });
                                temp.discard().await;
                                break 'parts;
                            }
                            temp.write(&c).await?;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            failure = Some(e);
                            break 'parts;
                        }
                    }
                }
                file = Some((temp, part_name, part_type));
            }
            "message" => {
                let mut text = Vec::new();
                loop {
                    match field_chunk(&mut field, idle).await {
                        Ok(Some(c)) => {
                            if text.len() + c.len() > METADATA_MAX {
                                failure = Some(ApiError::TooLarge {
                                    what: "the message part",
                                    limit: METADATA_MAX as u64,
                                });
                                break 'parts;
                            }
                            text.extend_from_slice(&c);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            failure = Some(e);
                            break 'parts;
                        }
                    }
                }
                message = Some(text);
            }
            _ => loop {
                match field_chunk(&mut field, idle).await {
                    Ok(Some(c)) => {
                        other += c.len() as u64;
                        if other > OTHER_PARTS_MAX {
                            failure = Some(ApiError::TooLarge {
                                what: "the parts besides files[] and message",
                                limit: OTHER_PARTS_MAX,
                            });
                            break 'parts;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        failure = Some(e);
                        break 'parts;
                    }
                }
            },
        }
    }
    if let Some(e) = failure {
        drop(file);
        if body_still_arriving(&e) {
            drain_multipart(&mut mp).await;
        }
        return Err(e);
    }
    let Some((temp, part_name, part_type)) = file else {
        return Err(ApiError::NoFilePart);
    };
    let Some(message) = message else {
        return Err(ApiError::invalid(
            "no message part: send the fileMessage object as a part named message",
        ));
    };
    let (msg, _) = UploadMessage::parse(MessageKind::File, &message)?;
    let file_name = match msg.str_param("fileName")? {
        Some(n) if !n.is_empty() => n.to_owned(),
        _ => part_name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "file".to_owned()),
    };
    if file_name.len() > limits.max_file_name_bytes {
        return Err(ApiError::NameTooLong {
            len: file_name.len(),
            max: limits.max_file_name_bytes,
        });
    }
    if !limits.file_extensions.is_empty() {
        let ext = names::extension(&names::display_name(&file_name));
        if !ext.is_some_and(|e| limits.file_extensions.contains(&e)) {
            return Err(ApiError::Unsupported(format!(
                "file names must end in one of: {}",
                limits.file_extensions.join(", ")
            )));
        }
    }
    let content_type = part_type
        .filter(|t| t.len() <= 128 && t.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    store_and_announce(st, msg, temp, content_type, Some(file_name)).await
}

async fn field_chunk(
    field: &mut axum::extract::multipart::Field<'_>,
    idle: Duration,
) -> Result<Option<Bytes>, ApiError> {
    match tokio::time::timeout(idle, field.chunk()).await {
        Err(_) => Err(ApiError::Aborted(format!("no data for {idle:?}"))),
        Ok(Err(e)) => Err(ApiError::BadMultipart(e.body_text())),
        Ok(Ok(c)) => Ok(c),
    }
}

async fn drain_multipart(mp: &mut Multipart) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut left = DRAIN_MAX;
        while let Ok(Some(mut field)) = mp.next_field().await {
            while let Ok(Some(c)) = field.chunk().await {
                left = left.saturating_sub(c.len() as u64);
                if left == 0 {
                    return;
                }
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
