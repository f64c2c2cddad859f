//! `POST /files`: the `multipart/form-data` body, streamed. The `files[]` part goes to a
//! temporary blob under the size limit, the `message` part (bounded) is parsed as the
//! `fileMessage`, other parts are read and dropped within a small allowance.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header;
use axum::response::Response;

use super::{
    body_still_arriving, check_declared_length, store_and_announce, DRAIN_MAX, DRAIN_TIME,
    OTHER_PARTS_MAX,
};
use crate::config::METADATA_MAX;
use crate::error::ApiError;
use crate::filename;
use crate::message::{MessageKind, UploadMessage};
use crate::state::Shared;
use crate::store::TempBlob;

pub(super) async fn receive_file(st: &Shared, req: Request) -> Result<Response, ApiError> {
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
        let ext = filename::extension(&filename::display_name(&file_name));
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
