//! The one error type of the REST handlers, and how each error becomes an HTTP response.
//!
//! Every rejection has a status (the contract of `shared/PROTOCOL.md`), a short machine
//! readable `reason` (also the label of `natter_filestore_rejects_total`) and a message for
//! humans. Bodies are `{"error":{"reason":R,"message":M}}`. A 401 also carries
//! `WWW-Authenticate: Bearer`; a 503 carries `Retry-After`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body (or the `message` part) is not JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// JSON, but not a valid message: missing or ill-typed uuid, roomName, ...
    #[error("invalid message: {0}")]
    Invalid(String),
    /// `POST /files` without a `files[]` part.
    #[error("no file part: send the file as a multipart part named files[]")]
    NoFilePart,
    /// Not `multipart/form-data`, or a broken one.
    #[error("bad multipart body: {0}")]
    BadMultipart(String),
    /// `base64ImgString` is not base64.
    #[error("base64ImgString is not base64: {0}")]
    NotBase64(String),
    /// The content is not of an accepted kind.
    #[error("unsupported content: {0}")]
    Unsupported(String),
    /// The file name is longer than the limit.
    #[error("file name is {len} bytes, the limit is {max}")]
    NameTooLong { len: usize, max: usize },
    /// The payload (or the request) exceeds its limit.
    #[error("{what} exceeds the limit of {limit} bytes")]
    TooLarge { what: &'static str, limit: u64 },
    /// The uuid is already used for another room.
    #[error("uuid {0:?} is already used in another room")]
    Conflict(String),
    /// Unknown uuid.
    #[error("not found")]
    NotFound,
    /// The `Range` header asks for bytes past the end.
    #[error("range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    /// The body stopped arriving or the client went away.
    #[error("upload interrupted: {0}")]
    Aborted(String),
    /// NATS is unreachable or did not acknowledge: the upload is kept and the client retries
    /// with the same uuid.
    #[error("temporarily unavailable: {0}; retry with the same uuid")]
    Unavailable(String),
    /// The data directory failed.
    #[error("storage error: {0}")]
    Storage(#[from] std::io::Error),
    /// No token, or one that does not verify (missing, malformed, expired, forged).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// A valid token that does not allow this: another room, another user, a name the user
    /// does not hold.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Too many uploads in progress on this replica; retry shortly.
    #[error("too many uploads in progress; retry shortly")]
    Busy,
    /// The upload took longer than its deadline.
    #[error("the upload did not complete within {0:?}")]
    Deadline(std::time::Duration),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_)
            | ApiError::Invalid(_)
            | ApiError::NoFilePart
            | ApiError::BadMultipart(_)
            | ApiError::NotBase64(_)
            | ApiError::NameTooLong { .. }
            | ApiError::Aborted(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Deadline(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Storage(e) if e.kind() == std::io::ErrorKind::StorageFull => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            ApiError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::Invalid(_) => "invalid_message",
            ApiError::NoFilePart => "no_file",
            ApiError::BadMultipart(_) => "bad_multipart",
            ApiError::NotBase64(_) => "bad_base64",
            ApiError::Unsupported(_) => "unsupported_content",
            ApiError::NameTooLong { .. } => "file_name",
            ApiError::TooLarge { .. } => "too_large",
            ApiError::Conflict(_) => "conflict",
            ApiError::NotFound => "not_found",
            ApiError::RangeNotSatisfiable { .. } => "range",
            ApiError::Aborted(_) => "aborted",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Storage(_) => "storage",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Busy => "busy",
            ApiError::Deadline(_) => "deadline",
        }
    }

    pub fn invalid(msg: impl Into<String>) -> ApiError {
        ApiError::Invalid(msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // Storage details (paths) stay in the log.
        let message = match &self {
            ApiError::Storage(_) => "storage error".to_owned(),
            other => other.to_string(),
        };
        let body = json!({"error": {"reason": self.reason(), "message": message}});
        let mut resp = (status, axum::Json(body)).into_response();
        let headers = resp.headers_mut();
        match self {
            ApiError::RangeNotSatisfiable { size } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
            }
            ApiError::Unavailable(_) | ApiError::Busy => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        resp
    }
}
