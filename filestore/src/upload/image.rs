//! `POST /images`: the `imageMessage` JSON body, streamed. The base64 image is diverted from
//! the JSON as it arrives ([`crate::json_splitter`]), checked ([`crate::base64_check`]) and
//! written to a temporary blob; the rest is parsed as the message. The image format is
//! recognised from its first bytes, never taken from the client.

use axum::extract::Request;
use axum::response::Response;
use serde_json::Value;

use super::{body_still_arriving, drain_body, store_and_announce, Upload, DRAIN_MAX, DRAIN_TIME};
use crate::base64_check::{Base64Check, Base64Error};
use crate::config::{ImageType, METADATA_MAX};
use crate::error::ApiError;
use crate::json_splitter::{BodyError, Splitter};
use crate::message::{MessageKind, UploadMessage};

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

pub(super) async fn receive_image(up: &Upload<'_>, req: Request) -> Result<Response, ApiError> {
    let st = up.st;
    let limits = &st.limits;
    let body_max = limits.image_body_max();
    let mut body = req.into_body().into_data_stream();
    let mut temp = st.store.temp_blob().await?;
    let mut splitter = Splitter::new(METADATA_MAX);
    let mut check = Base64Check::new(limits.max_image_bytes);
    let mut text = Vec::new();
    let mut received: u64 = 0;
    let failure = loop {
        let chunk = match up.next_chunk(&mut body).await {
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
            drain_body(&mut body, DRAIN_MAX, DRAIN_TIME).await;
        }
        return Err(e);
    }
    let (skeleton, found) = splitter.finish();
    let value: Value =
        serde_json::from_slice(&skeleton).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    let (msg, inline) = UploadMessage::from_value(MessageKind::Image, value)?;
    up.authorize(&msg).await?;
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
