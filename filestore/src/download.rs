//! `GET /files/{uuid}` and `GET /images/{uuid}`: stored content streamed from disk.
//!
//! Files come back as `application/octet-stream` attachments with a safe
//! `Content-Disposition`, `Content-Length`, a strong `ETag` (`If-None-Match` → 304) and
//! single-range `Range` support (206, or 416 when unsatisfiable; `If-Range` honoured).
//! Images come back as the stored `imageMessage` object with its `base64ImgString`, spliced
//! around the stored text without loading it.
//!
//! Where tokens are checked (`access.rs`), a download needs one (header or `?token=`)
//! that allows the room the upload was posted to: 401 without a valid token, 404 for an
//! unknown uuid, 403 for another room's upload.
//!
//! `Range` ([`parse_range`]): one `bytes=` range (`a-b`, `a-`, `-n`) is served as 206 with
//! the part that lies within the file; one starting at or past the end (or `-0`, or any
//! range of an empty file) is 416 with `Content-Range: bytes */size`; anything else
//! (several ranges, another unit, reversed or non-numeric bounds, numbers beyond 64 bits, a
//! value that is not ASCII) is ignored and the whole file is sent with 200, as RFC 9110
//! allows. Nothing a `Range` says changes what is allocated: the body is streamed in fixed
//! chunks.

use std::io::{self, SeekFrom};

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::access::Carrier;
use crate::error::ApiError;
use crate::filename;
use crate::message::valid_uuid;
use crate::state::Shared;
use crate::store::{Kind, Meta};

/// Read size when streaming a blob.
const CHUNK: usize = 64 * 1024;
const CACHE_CONTROL: &str = "private, max-age=31536000, immutable";

/// `GET /files/{uuid}`
pub async fn get_file(
    State(st): State<Shared>,
    Path(uuid): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let res = match load(&st, Kind::File, &uuid, &headers, query.as_deref()).await {
        Ok(meta) => serve_file(&st, meta, &headers).await,
        Err(e) => Err(e),
    };
    finish(&st, Kind::File, res)
}

/// `GET /images/{uuid}`
pub async fn get_image(
    State(st): State<Shared>,
    Path(uuid): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let res = match load(&st, Kind::Image, &uuid, &headers, query.as_deref()).await {
        Ok(meta) => serve_image(&st, meta, &headers).await,
        Err(e) => Err(e),
    };
    finish(&st, Kind::Image, res)
}

fn finish(st: &Shared, kind: Kind, res: Result<Response, ApiError>) -> Response {
    match res {
        Ok(r) => r,
        Err(e) => {
            match &e {
                ApiError::NotFound => st.metrics.not_found(kind),
                ApiError::Unauthorized(_) | ApiError::Forbidden(_) => {
                    st.metrics.reject(e.reason());
                    tracing::info!(kind = ?kind, reason = e.reason(), error = %e, "download refused");
                }
                ApiError::Storage(err) => {
                    tracing::error!(kind = ?kind, error = %err, "download failed")
                }
                _ => {}
            }
            e.into_response()
        }
    }
}

/// The record of `uuid`, if the request may read it: 401, then 404, then 403.
async fn load(
    st: &Shared,
    kind: Kind,
    uuid: &str,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Meta, ApiError> {
    let claims = st
        .access
        .authenticate(headers, query, Carrier::HeaderOrQuery)?;
    if !valid_uuid(uuid) {
        return Err(ApiError::NotFound);
    }
    let meta = st.store.load(kind, uuid).await?.ok_or(ApiError::NotFound)?;
    st.access.authorize_download(claims.as_ref(), &meta.room)?;
    Ok(meta)
}

fn not_modified(st: &Shared, kind: Kind, headers: &HeaderMap, etag: &str) -> Option<Response> {
    let inm = headers.get(header::IF_NONE_MATCH)?;
    if !etag_listed(inm, etag) {
        return None;
    }
    st.metrics.not_modified(kind);
    let mut resp = StatusCode::NOT_MODIFIED.into_response();
    set(&mut resp, header::ETAG, etag);
    set(&mut resp, header::CACHE_CONTROL, CACHE_CONTROL);
    Some(resp)
}

async fn serve_file(st: &Shared, meta: Meta, headers: &HeaderMap) -> Result<Response, ApiError> {
    let etag = meta.etag();
    if let Some(resp) = not_modified(st, Kind::File, headers, &etag) {
        return Ok(resp);
    }
    let size = meta.size;
    let range = match headers.get(header::RANGE) {
        Some(r) if if_range_allows(headers, &etag) => parse_range(r, size)?,
        _ => None,
    };
    let mut file = st.store.open_blob(&meta).await?;
    let (status, start, len) = match range {
        Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        None => (StatusCode::OK, 0, size),
    };
    if start > 0 {
        file.seek(SeekFrom::Start(start)).await?;
    }
    st.metrics.download(Kind::File, len);
    let mut resp = Response::new(Body::from_stream(file_stream(file, len)));
    *resp.status_mut() = status;
    set(&mut resp, header::CONTENT_TYPE, "application/octet-stream");
    set(&mut resp, header::CONTENT_LENGTH, &len.to_string());
    set(
        &mut resp,
        header::CONTENT_DISPOSITION,
        &filename::content_disposition(meta.file_name.as_deref().unwrap_or("")),
    );
    set(&mut resp, header::ETAG, &etag);
    set(&mut resp, header::ACCEPT_RANGES, "bytes");
    set(&mut resp, header::CACHE_CONTROL, CACHE_CONTROL);
    set(&mut resp, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(
        &mut resp,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; sandbox",
    );
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            &mut resp,
            header::CONTENT_RANGE,
            &format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    Ok(resp)
}

async fn serve_image(st: &Shared, meta: Meta, headers: &HeaderMap) -> Result<Response, ApiError> {
    let etag = meta.etag();
    if let Some(resp) = not_modified(st, Kind::Image, headers, &etag) {
        return Ok(resp);
    }
    let (head, tail) = image_envelope(&meta)?;
    let file = st.store.open_blob(&meta).await?;
    let len = head.len() as u64 + meta.size + tail.len() as u64;
    st.metrics.download(Kind::Image, len);
    let body = stream::iter([Ok::<Bytes, io::Error>(head)])
        .chain(file_stream(file, meta.size))
        .chain(stream::iter([Ok(tail)]));
    let mut resp = Response::new(Body::from_stream(body));
    set(&mut resp, header::CONTENT_TYPE, "application/json");
    set(&mut resp, header::CONTENT_LENGTH, &len.to_string());
    set(&mut resp, header::ETAG, &etag);
    set(&mut resp, header::CACHE_CONTROL, CACHE_CONTROL);
    set(&mut resp, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    Ok(resp)
}

/// The JSON before and after the base64 text: the stored `imageMessage` (as announced, with
/// its `_id` once known) whose `params.base64ImgString` is the blob. The blob holds only
/// characters that need no escaping in a JSON string (checked on upload).
fn image_envelope(meta: &Meta) -> Result<(Bytes, Bytes), ApiError> {
    let corrupt = |why: &str| {
        ApiError::Storage(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("stored notification of {:?}: {why}", meta.uuid),
        ))
    };
    let note: Value =
        serde_json::from_str(&meta.notification).map_err(|e| corrupt(&e.to_string()))?;
    let mut params = match note.get("params") {
        Some(Value::Object(p)) => p.clone(),
        _ => return Err(corrupt("no params")),
    };
    params.remove("base64ImgString");
    let params = serde_json::to_string(&params).map_err(|e| corrupt(&e.to_string()))?;
    let open = params
        .strip_suffix('}')
        .ok_or_else(|| corrupt("params not an object"))?;
    let sep = if open == "{" { "" } else { "," };
    let method = note
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("imageMessage");
    let method = serde_json::to_string(method).map_err(|e| corrupt(&e.to_string()))?;
    let head = format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":{method},\"params\":{open}{sep}\"base64ImgString\":\""
    );
    let mut tail = String::from("\"}");
    if let Some(id) = note.get("id") {
        tail.push_str(&format!(",\"id\":{id}"));
    }
    if let Some(seq) = meta.seq {
        tail.push_str(&format!(",\"_id\":\"{seq}\""));
    }
    tail.push('}');
    Ok((Bytes::from(head), Bytes::from(tail)))
}

fn set(resp: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

/// `len` bytes from the current position of `file`, in chunks.
fn file_stream(
    file: tokio::fs::File,
    len: u64,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    stream::unfold((file, len), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let want = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
        let mut buf = vec![0u8; want];
        match file.read(&mut buf).await {
            Ok(0) => Some((
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob shorter than recorded",
                )),
                (file, 0),
            )),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), (file, left - n as u64)))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    })
}

/// Whether an `If-None-Match` value lists `etag` (weak comparison, `*` matches all).
fn etag_listed(value: &HeaderValue, etag: &str) -> bool {
    let Ok(s) = value.to_str() else {
        return false;
    };
    s.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag))
}

/// A `Range` applies unless an `If-Range` names another version (dates never match: the
/// ETag is the only validator handed out).
fn if_range_allows(headers: &HeaderMap, etag: &str) -> bool {
    match headers.get(header::IF_RANGE) {
        None => true,
        Some(v) => v.to_str().is_ok_and(|v| v.trim() == etag),
    }
}

/// The inclusive byte range a `Range` header asks for in a body of `size` bytes: `None` to
/// send everything (no usable single `bytes` range), 416 when it starts past the end.
fn parse_range(value: &HeaderValue, size: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let unsatisfiable = ApiError::RangeNotSatisfiable { size };
    let Ok(s) = value.to_str() else {
        return Ok(None);
    };
    let Some(spec) = s.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit());
    if a.is_empty() {
        // Suffix: the last `b` bytes.
        if !digits(b) {
            return Ok(None);
        }
        let Ok(n) = b.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 || size == 0 {
            return Err(unsatisfiable);
        }
        return Ok(Some((size - n.min(size), size - 1)));
    }
    if !digits(a) || !(b.is_empty() || digits(b)) {
        return Ok(None);
    }
    let Ok(start) = a.parse::<u64>() else {
        return Ok(None);
    };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e,
            _ => return Ok(None),
        }
    };
    if start >= size {
        return Err(unsatisfiable);
    }
    Ok(Some((start, end.min(size - 1))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str, size: u64) -> Result<Option<(u64, u64)>, u16> {
        parse_range(&HeaderValue::from_str(s).unwrap(), size).map_err(|e| e.status().as_u16())
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=90-200", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=-1000", 100), Ok(Some((0, 99))));
        assert_eq!(range("bytes=100-", 100), Err(416));
        assert_eq!(range("bytes=-0", 100), Err(416));
        assert_eq!(range("bytes=0-", 0), Err(416));
        assert_eq!(range("bytes=5-1", 100), Ok(None));
        assert_eq!(range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(range("items=0-1", 100), Ok(None));
        assert_eq!(range("bytes=a-b", 100), Ok(None));
        assert_eq!(range("bytes=+1-2", 100), Ok(None));
    }

    #[test]
    fn etags() {
        let e = "\"abc\"";
        assert!(etag_listed(&HeaderValue::from_static("\"abc\""), e));
        assert!(etag_listed(
            &HeaderValue::from_static("\"x\", W/\"abc\""),
            e
        ));
        assert!(etag_listed(&HeaderValue::from_static("*"), e));
        assert!(!etag_listed(&HeaderValue::from_static("\"abcd\""), e));
    }

    #[test]
    fn image_envelope_is_json() {
        let meta = Meta {
            version: 1,
            kind: Kind::Image,
            uuid: "u".into(),
            room: "r".into(),
            blob_id: "b".into(),
            size: 4,
            file_name: None,
            content_type: "image/png".into(),
            stored_at: "t".into(),
            notification: r#"{"jsonrpc":"2.0","method":"imageMessage","params":{"uuid":"u","base64ImgString":"","ack":true,"ts":"t"},"id":"7"}"#.into(),
            announced: true,
            seq: Some(12),
        };
        let (h, t) = image_envelope(&meta).unwrap();
        let whole = [&h[..], b"QUJD", &t[..]].concat();
        let v: Value = serde_json::from_slice(&whole).unwrap();
        assert_eq!(v["params"]["base64ImgString"], "QUJD");
        assert_eq!(v["params"]["ack"], true);
        assert_eq!(v["id"], "7");
        assert_eq!(v["_id"], "12");
        assert_eq!(v["method"], "imageMessage");
    }
}

/// Property tests of [`parse_range`]: any header value and any size — never a panic, a
/// satisfiable range always lies within the file, what cannot be satisfied is 416, and
/// anything malformed is ignored (the whole file, 200), as the module documents.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn sizes() -> impl Strategy<Value = u64> {
        prop_oneof![0..5u64, 0..2000u64, any::<u64>(), Just(u64::MAX)]
    }

    fn numbers() -> impl Strategy<Value = String> {
        prop_oneof![
            (0..3000u64).prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            "[0-9]{19,30}",
            Just(String::new()),
        ]
    }

    /// Values shaped like ranges, broken in the usual ways, and arbitrary bytes.
    fn values() -> impl Strategy<Value = Vec<u8>> {
        let spec = || (numbers(), numbers()).prop_map(|(a, b)| format!("{a}-{b}"));
        prop_oneof![
            spec().prop_map(|s| format!("bytes={s}").into_bytes()),
            prop::collection::vec(spec(), 1..20)
                .prop_map(|v| format!("bytes={}", v.join(",")).into_bytes()),
            "(bytes|BYTES|items)?=? ?[-0-9, ]{0,40}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..64),
        ]
    }

    proptest! {
        #[test]
        fn ranges_lie_within_the_file_or_are_refused(value in values(), size in sizes()) {
            let Ok(header) = HeaderValue::from_bytes(&value) else {
                return Ok(());
            };
            match parse_range(&header, size) {
                Ok(Some((a, b))) => {
                    prop_assert!(a <= b && b < size, "{}-{} of {}", a, b, size);
                }
                Ok(None) => {}
                Err(e) => {
                    prop_assert_eq!(e.status(), StatusCode::RANGE_NOT_SATISFIABLE);
                }
            }
        }

        #[test]
        fn single_ranges_follow_the_rfc(a in 0..3000u64, b in 0..3000u64, size in 0..2000u64) {
            let parse = |s: String| parse_range(&HeaderValue::from_str(&s).unwrap(), size)
                .map_err(|e| e.status());
            let unsatisfiable = Err(StatusCode::RANGE_NOT_SATISFIABLE);
            // a-b
            let expected = if b < a {
                Ok(None)
            } else if a >= size {
                unsatisfiable
            } else {
                Ok(Some((a, b.min(size - 1))))
            };
            prop_assert_eq!(parse(format!("bytes={a}-{b}")), expected);
            // a-
            let expected = if a >= size { unsatisfiable } else { Ok(Some((a, size - 1))) };
            prop_assert_eq!(parse(format!("bytes={a}-")), expected);
            // -b: the last b bytes
            let expected = if b == 0 || size == 0 {
                unsatisfiable
            } else {
                Ok(Some((size - b.min(size), size - 1)))
            };
            prop_assert_eq!(parse(format!("bytes=-{b}")), expected);
            // Several ranges are served whole.
            prop_assert_eq!(parse(format!("bytes={a}-{b},0-0")), Ok(None));
        }
    }
}
