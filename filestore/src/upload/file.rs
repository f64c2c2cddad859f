//! `POST /files`: the `multipart/form-data` body, streamed through [`crate::multipart`]
//! (bounded preamble, part headers and part count). The `files[]` part goes to a temporary
//! blob under the size limit, the `message` part (bounded) is parsed as the `fileMessage`
//! and authorized as soon as it is complete, other parts are read and dropped within a
//! small allowance. Reading stops at the closing boundary (hyper reads the short epilogue
//! that usually follows, so the connection stays usable: see the keep-alive test).

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::header;
use axum::response::Response;

use super::{
    body_still_arriving, drain_body, store_and_announce, Upload, DRAIN_MAX, DRAIN_TIME,
    OTHER_PARTS_MAX,
};
use crate::config::METADATA_MAX;
use crate::error::ApiError;
use crate::filename;
use crate::message::{MessageKind, UploadMessage};
use crate::multipart::{self, Event, MultipartError, Parser, PartHead};
use crate::store::TempBlob;

fn multipart_error(e: MultipartError) -> ApiError {
    match e {
        MultipartError::PreambleTooLarge(n) => ApiError::TooLarge {
            what: "the multipart preamble",
            limit: n as u64,
        },
        MultipartError::HeadersTooLarge(n) => ApiError::TooLarge {
            what: "a multipart part's headers",
            limit: n as u64,
        },
        MultipartError::TooManyParts(n) => ApiError::TooLarge {
            what: "the number of multipart parts",
            limit: n as u64,
        },
        other => ApiError::BadMultipart(other.to_string()),
    }
}

/// The file part as received.
struct FilePart {
    temp: TempBlob,
    name: Option<String>,
    content_type: Option<String>,
}

/// Which part the data events currently belong to.
enum Current {
    None,
    File,
    Message(Vec<u8>),
    Other,
}

/// What the parts delivered so far add up to.
struct Parts<'u, 'a> {
    up: &'u Upload<'a>,
    current: Current,
    file: Option<FilePart>,
    message: Option<UploadMessage>,
    other: u64,
}

impl Parts<'_, '_> {
    async fn on(&mut self, event: Event) -> Result<(), ApiError> {
        match event {
            Event::Part(head) => {
                self.part_done().await?;
                self.begin(head).await
            }
            Event::Data(data) => self.data(data).await,
            Event::End => self.part_done().await,
        }
    }

    async fn begin(&mut self, head: PartHead) -> Result<(), ApiError> {
        self.current = match head.name.as_deref().unwrap_or("") {
            "files[]" | "files" | "file" => {
                if self.file.is_some() {
                    return Err(ApiError::invalid("exactly one file part is accepted"));
                }
                self.file = Some(FilePart {
                    temp: self.up.st.store.temp_blob().await?,
                    name: head.file_name,
                    content_type: head.content_type,
                });
                Current::File
            }
            "message" => {
                if self.message.is_some() {
                    return Err(ApiError::invalid("exactly one message part is accepted"));
                }
                Current::Message(Vec::new())
            }
            _ => Current::Other,
        };
        Ok(())
    }

    async fn data(&mut self, data: Bytes) -> Result<(), ApiError> {
        let max_file = self.up.st.limits.max_file_bytes;
        match &mut self.current {
            Current::File => {
                let Some(f) = self.file.as_mut() else {
                    return Ok(());
                };
                if f.temp.len() + data.len() as u64 > max_file {
                    return Err(ApiError::TooLarge {
                        what: "the file",
                        limit: max_file,
                    });
                }
                f.temp.write(&data).await?;
            }
            Current::Message(text) => {
                if text.len() + data.len() > METADATA_MAX {
                    return Err(ApiError::TooLarge {
                        what: "the message part",
                        limit: METADATA_MAX as u64,
                    });
                }
                text.extend_from_slice(&data);
            }
            Current::Other => {
                self.other += data.len() as u64;
                if self.other > OTHER_PARTS_MAX {
                    return Err(ApiError::TooLarge {
                        what: "the parts besides files[] and message",
                        limit: OTHER_PARTS_MAX,
                    });
                }
            }
            Current::None => {}
        }
        Ok(())
    }

    /// The current part is complete: a message is validated and authorized now, before
    /// any more of the body is read.
    async fn part_done(&mut self) -> Result<(), ApiError> {
        if let Current::Message(text) = std::mem::replace(&mut self.current, Current::None) {
            let (msg, _) = UploadMessage::parse(MessageKind::File, &text)?;
            self.up.authorize(&msg).await?;
            self.message = Some(msg);
        }
        Ok(())
    }
}

pub(super) async fn receive_file(up: &Upload<'_>, req: Request) -> Result<Response, ApiError> {
    let st = up.st;
    let limits = &st.limits;
    let body_max = limits.file_body_max();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multipart::boundary(content_type).map_err(|e| {
        ApiError::BadMultipart(format!(
            "expected multipart/form-data with a files[] part and a message part ({e})"
        ))
    })?;
    let mut parser = Parser::new(&boundary, limits.multipart);
    let mut body = req.into_body().into_data_stream();
    let mut parts = Parts {
        up,
        current: Current::None,
        file: None,
        message: None,
        other: 0,
    };
    let mut events = Vec::new();
    let mut received: u64 = 0;
    let failure = 'body: loop {
        let chunk = match up.next_chunk(&mut body).await {
            Ok(Some(c)) => c,
            Ok(None) => break parser.finish().err().map(multipart_error),
            Err(e) => break Some(e),
        };
        received += chunk.len() as u64;
        if received > body_max {
            break Some(ApiError::TooLarge {
                what: "the request body",
                limit: body_max,
            });
        }
        events.clear();
        if let Err(e) = parser.feed(&chunk, &mut events) {
            break Some(multipart_error(e));
        }
        for event in events.drain(..) {
            if let Err(e) = parts.on(event).await {
                break 'body Some(e);
            }
        }
        if parser.is_done() {
            break None;
        }
    };
    if let Some(e) = failure {
        if let Some(f) = parts.file.take() {
            f.temp.discard().await;
        }
        if body_still_arriving(&e) && !parser.is_done() {
            drain_body(&mut body, DRAIN_MAX, DRAIN_TIME).await;
        }
        return Err(e);
    }
    let Some(FilePart {
        temp,
        name: part_name,
        content_type: part_type,
    }) = parts.file
    else {
        return Err(ApiError::NoFilePart);
    };
    let Some(msg) = parts.message else {
        temp.discard().await;
        return Err(ApiError::invalid(
            "no message part: send the fileMessage object as a part named message",
        ));
    };
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
