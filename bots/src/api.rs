//! The REST API that manages bots (public port, `--listen`):
//!
//! | request | answer |
//! |---|---|
//! | `GET /rooms/{room}/bots` | 200 `{"bots":[{name, enabled, failures, lastFailure?, installedSeq, installedAt}]}` |
//! | `GET /rooms/{room}/bots/{name}` | 200 the same object with `script`; 404 |
//! | `PUT /rooms/{room}/bots/{name}` (body: the script) | 201 installed, 200 replaced; 400 `{"error":{"reason":"compile","message"}}` when it does not compile |
//! | `DELETE /rooms/{room}/bots/{name}` | 204; 404 |
//!
//! `{room}` is the room name, percent-encoded. Errors answer `{"error":{"reason","message"}}`.
//! Who may call is [`crate::access`]'s decision.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use natter_protocol::token;
use serde_json::{json, Value};

use crate::registry::{self, BotRecord, RegistryError};
use crate::state::AppState;

/// Longest room name, as the protocol has it.
const ROOM_MAX: usize = 128;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Compile(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::Compile(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Compile(_) => "compile",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooLarge(_) => "too_large",
            ApiError::Unavailable(_) => "unavailable",
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        ApiError::Unavailable(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status(),
            Json(json!({"error": {"reason": self.reason(), "message": self.to_string()}})),
        )
            .into_response();
        if matches!(self, ApiError::Unauthorized(_)) {
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        if matches!(self, ApiError::Unavailable(_)) {
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        r
    }
}

/// The public routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/rooms/{room}/bots", get(list))
        .route(
            "/rooms/{room}/bots/{name}",
            get(show).put(install).delete(remove),
        )
        .with_state(state)
}

fn check_room(room: &str) -> Result<(), ApiError> {
    if room.is_empty() || room.len() > ROOM_MAX {
        return Err(ApiError::BadRequest(format!(
            "room names are 1 to {ROOM_MAX} bytes"
        )));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if !registry::valid_name(name) {
        return Err(ApiError::BadRequest(
            "bot names are 1 to 32 of A-Z a-z 0-9 _ -".into(),
        ));
    }
    Ok(())
}

fn describe(r: &BotRecord, with_script: bool) -> Value {
    let mut v = json!({
        "name": r.name,
        "room": r.room,
        "enabled": !r.disabled,
        "failures": r.failures,
        "installedSeq": r.installed_seq,
        "installedAt": r.installed_at,
        "userId": format!("{}{}", crate::worker::BOT_USER_PREFIX, r.name),
        "userName": format!("{} (bot)", r.name),
    });
    if let Some(f) = &r.last_failure {
        v["lastFailure"] = json!(f);
    }
    if with_script {
        v["script"] = json!(r.script);
    }
    v
}

async fn list(
    State(st): State<Arc<AppState>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    check_room(&room)?;
    st.access
        .authorize(&headers, query.as_deref(), &room)
        .await?;
    let registry = st.bots()?;
    let room_token = token::encode(&room);
    let mut bots = Vec::new();
    for bot in registry.bots_in(&room_token) {
        // The stored record, not the mirror's: failure counts move often.
        if let Some((r, _)) = registry.get(&bot.key).await? {
            bots.push(describe(&r, false));
        }
    }
    Ok(Json(json!({ "room": room, "bots": bots })))
}

async fn show(
    State(st): State<Arc<AppState>>,
    Path((room, name)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    check_room(&room)?;
    check_name(&name)?;
    st.access
        .authorize(&headers, query.as_deref(), &room)
        .await?;
    let registry = st.bots()?;
    match registry
        .get(&registry::key(&token::encode(&room), &name))
        .await?
    {
        Some((r, _)) => Ok(Json(describe(&r, true))),
        None => Err(ApiError::NotFound(format!("no bot {name} in this room"))),
    }
}

async fn install(
    State(st): State<Arc<AppState>>,
    Path((room, name)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_room(&room)?;
    check_name(&name)?;
    st.access
        .authorize(&headers, query.as_deref(), &room)
        .await?;
    if body.len() > st.max_script_bytes {
        return Err(ApiError::TooLarge(format!(
            "the script is {} bytes, the limit is {}",
            body.len(),
            st.max_script_bytes
        )));
    }
    let script = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("the script is not UTF-8".into()))?;
    if let Err(e) = st.sandbox.compile(script) {
        st.metrics_rejected_compile();
        return Err(ApiError::Compile(format!(
            "the script does not compile: {e}"
        )));
    }
    let registry = st.bots()?;
    let room_token = token::encode(&room);
    let key = registry::key(&room_token, &name);
    let existing = registry.get(&key).await?;
    if existing.is_none() && registry.bots_in(&room_token).len() >= st.max_bots_per_room {
        return Err(ApiError::Conflict(format!(
            "this room has {} bots already, the most it may have",
            st.max_bots_per_room
        )));
    }
    let record = BotRecord {
        room: room.clone(),
        name: name.clone(),
        script: script.to_owned(),
        installed_seq: registry.stream_last_seq().await?,
        installed_at: now_rfc3339(),
        failures: 0,
        disabled: false,
        last_failure: None,
    };
    let revision = registry.put(&key, &record).await?;
    // This replica hears the room's newUser events before the install is answered (other
    // replicas follow within moments: events are best effort).
    if !registry
        .listening_at(revision, Duration::from_secs(2))
        .await
    {
        tracing::warn!(room = %room, bot = %name, "not yet listening to the room's events");
    }
    tracing::info!(room = %room, bot = %name, replaced = existing.is_some(), installed_seq = record.installed_seq, "bot installed");
    let status = if existing.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(describe(&record, false))).into_response())
}

async fn remove(
    State(st): State<Arc<AppState>>,
    Path((room, name)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, ApiError> {
    check_room(&room)?;
    check_name(&name)?;
    st.access
        .authorize(&headers, query.as_deref(), &room)
        .await?;
    let registry = st.bots()?;
    let key = registry::key(&token::encode(&room), &name);
    if registry.get(&key).await?.is_none() {
        return Err(ApiError::NotFound(format!("no bot {name} in this room")));
    }
    registry.delete(&key).await?;
    tracing::info!(room = %room, bot = %name, "bot removed");
    Ok(StatusCode::NO_CONTENT)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
