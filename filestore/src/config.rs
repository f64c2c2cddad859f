//! Filestore configuration: every setting is a flag with an environment variable twin;
//! [`Config::limits`] is what `--check-config` validates beyond the flags' types.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use natter_auth::AuthArgs;
use natter_bus::StreamArgs;

use crate::multipart::MultipartLimits;

/// Bytes a request may carry besides the payload itself: the message object, multipart
/// framing, the JSON around an image. Also the most a `message` part or the image JSON
/// without its `base64ImgString` may hold.
pub const METADATA_MAX: usize = 64 * 1024;

/// natter filestore: image and file uploads onto a shared volume, announced to the room.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "natter-filestore",
    version,
    about,
    mut_arg("ops_listen", |a| a.default_value("127.0.0.1:9090").required(false))
)]
pub struct Config {
    /// Public address: the REST API (/images, /files) only.
    #[arg(long, env = "NATTER_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,

    /// `--ops-listen` (/healthz, /readyz, /metrics) and the limits of both listeners.
    #[command(flatten)]
    pub net: natter_ops::ListenArgs,

    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Directory holding blobs and their metadata: the persistent volume in Kubernetes.
    /// Several replicas may share it (it needs atomic rename and hard links, as local
    /// file systems and NFS have).
    #[arg(long, env = "NATTER_FILESTORE_DIR", default_value = ".data/filestore")]
    pub data_dir: PathBuf,

    /// Largest image accepted, in decoded bytes (413 beyond).
    #[arg(long, env = "NATTER_MAX_IMAGE_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_image_bytes: u64,

    /// Largest file accepted, in bytes (413 beyond).
    #[arg(long, env = "NATTER_MAX_FILE_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub max_file_bytes: u64,

    /// Longest file name accepted, in bytes of UTF-8 (400 beyond).
    #[arg(long, env = "NATTER_MAX_FILE_NAME_BYTES", default_value_t = 255)]
    pub max_file_name_bytes: usize,

    /// Image formats accepted, recognised by their content (not by what the client claims):
    /// a comma-separated subset of png,jpeg,gif,webp,bmp, or `*` for anything (415 otherwise).
    #[arg(
        long,
        env = "NATTER_IMAGE_TYPES",
        default_value = "png,jpeg,gif,webp,bmp"
    )]
    pub image_types: String,

    /// File name extensions accepted, comma-separated and case-insensitive (e.g.
    /// `pdf,txt,zip`); empty accepts any file (415 otherwise). Files are always served
    /// as `application/octet-stream` attachments, whatever they hold.
    #[arg(long, env = "NATTER_FILE_EXTENSIONS", default_value = "")]
    pub file_extensions: String,

    /// How long one publish to JetStream may take, acknowledgement included, in milliseconds
    /// (503 beyond; the client retries with the same uuid).
    #[arg(long, env = "NATTER_PUBLISH_TIMEOUT_MS", default_value_t = 5000)]
    pub publish_timeout_ms: u64,

    /// Seconds an upload may stall between two chunks of its body before it is dropped.
    #[arg(long, env = "NATTER_BODY_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub body_idle_timeout_secs: u64,

    /// Uploads received at once by this replica; more get 503 with `Retry-After`.
    #[arg(long, env = "NATTER_MAX_CONCURRENT_UPLOADS", default_value_t = 64)]
    pub max_concurrent_uploads: usize,

    /// Seconds one upload may take from its first byte to its answer's start, however
    /// steadily its body arrives (408 beyond).
    #[arg(long, env = "NATTER_UPLOAD_DEADLINE_SECS", default_value_t = 300)]
    pub upload_deadline_secs: u64,

    /// Parts a `POST /files` body may have (`files[]`, `message` and a few others; 413
    /// beyond).
    #[arg(long, env = "NATTER_MAX_MULTIPART_PARTS", default_value_t = 8)]
    pub max_multipart_parts: usize,

    /// Bytes of one multipart part's header block (413 beyond).
    #[arg(long, env = "NATTER_MAX_PART_HEADER_BYTES", default_value_t = 8 * 1024)]
    pub max_part_header_bytes: usize,

    /// Seconds in-flight requests get to finish after SIGTERM before the process exits.
    #[arg(long, env = "NATTER_SHUTDOWN_GRACE_SECS", default_value_t = 25)]
    pub shutdown_grace_secs: u64,

    #[command(flatten)]
    pub stream: StreamArgs,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub ops: natter_ops::OpsArgs,
}

impl natter_ops::ServiceConfig for Config {
    fn ops(&self) -> &natter_ops::OpsArgs {
        &self.ops
    }

    /// The upload limits, content rules and token keys resolve.
    fn validate(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.limits()?;
        natter_auth::Verifier::from_args(&self.auth, self.listen)?;
        Ok(())
    }

    fn secret_args() -> &'static [&'static str] {
        AuthArgs::SECRET_ARGS
    }
}

/// Image formats the filestore recognises by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageType {
    Png,
    Jpeg,
    Gif,
    Webp,
    Bmp,
}

impl ImageType {
    pub const ALL: [ImageType; 5] = [
        ImageType::Png,
        ImageType::Jpeg,
        ImageType::Gif,
        ImageType::Webp,
        ImageType::Bmp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ImageType::Png => "png",
            ImageType::Jpeg => "jpeg",
            ImageType::Gif => "gif",
            ImageType::Webp => "webp",
            ImageType::Bmp => "bmp",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            ImageType::Png => "image/png",
            ImageType::Jpeg => "image/jpeg",
            ImageType::Gif => "image/gif",
            ImageType::Webp => "image/webp",
            ImageType::Bmp => "image/bmp",
        }
    }

    /// The format `head` (the first decoded bytes of an image) starts like.
    pub fn sniff(head: &[u8]) -> Option<ImageType> {
        if head.starts_with(&[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a]) {
            Some(ImageType::Png)
        } else if head.starts_with(&[0xff, 0xd8, 0xff]) {
            Some(ImageType::Jpeg)
        } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
            Some(ImageType::Gif)
        } else if head.len() >= 12 && head.starts_with(b"RIFF") && &head[8..12] == b"WEBP" {
            Some(ImageType::Webp)
        } else if head.starts_with(b"BM") {
            Some(ImageType::Bmp)
        } else {
            None
        }
    }
}

/// The limits and content rules uploads are checked against, resolved from [`Config`].
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_image_bytes: u64,
    pub max_file_bytes: u64,
    pub max_file_name_bytes: usize,
    /// `None`: any content.
    pub image_types: Option<Vec<ImageType>>,
    /// Lower-case, without dots; empty: any extension.
    pub file_extensions: Vec<String>,
    pub body_idle_timeout: Duration,
    /// Longest time one upload may take to arrive.
    pub upload_deadline: Duration,
    /// Uploads received at once.
    pub max_concurrent_uploads: usize,
    /// Preamble, part headers and part count of `POST /files` bodies.
    pub multipart: MultipartLimits,
}

impl Limits {
    /// Largest body `POST /images` reads: the base64 text of the largest image (with room for
    /// escaped `/`), plus the rest of the object.
    pub fn image_body_max(&self) -> u64 {
        self.max_image_bytes
            .saturating_mul(3)
            .saturating_add(METADATA_MAX as u64 * 4)
    }

    /// Largest body `POST /files` reads: the largest file plus the message part and framing.
    pub fn file_body_max(&self) -> u64 {
        self.max_file_bytes.saturating_add(METADATA_MAX as u64 * 4)
    }
}

/// Why a configuration value is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown image type {0:?} in --image-types (known: png, jpeg, gif, webp, bmp, or *)")]
    ImageType(String),
    #[error("--image-types is empty: use * to accept any image")]
    NoImageTypes,
}

impl Config {
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms.max(1))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// The upload limits, checked.
    pub fn limits(&self) -> Result<Limits, ConfigError> {
        let image_types = parse_image_types(&self.image_types)?;
        let file_extensions = self
            .file_extensions
            .split(',')
            .map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase())
            .filter(|e| !e.is_empty())
            .collect();
        Ok(Limits {
            max_image_bytes: self.max_image_bytes,
            max_file_bytes: self.max_file_bytes,
            max_file_name_bytes: self.max_file_name_bytes.max(1),
            image_types,
            file_extensions,
            body_idle_timeout: Duration::from_secs(self.body_idle_timeout_secs.max(1)),
            upload_deadline: Duration::from_secs(self.upload_deadline_secs.max(1)),
            max_concurrent_uploads: self.max_concurrent_uploads.max(1),
            multipart: MultipartLimits {
                part_headers_max: self.max_part_header_bytes.max(256),
                parts_max: self.max_multipart_parts.max(2),
                ..MultipartLimits::default()
            },
        })
    }
}

fn parse_image_types(s: &str) -> Result<Option<Vec<ImageType>>, ConfigError> {
    let mut out = Vec::new();
    for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if t == "*" {
            return Ok(None);
        }
        let t = t.to_ascii_lowercase();
        let t = if t == "jpg" { "jpeg".to_owned() } else { t };
        match ImageType::ALL.iter().find(|k| k.name() == t) {
            Some(k) => out.push(*k),
            None => return Err(ConfigError::ImageType(t)),
        }
    }
    if out.is_empty() {
        return Err(ConfigError::NoImageTypes);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let c = Config::try_parse_from(["natter-filestore"]).unwrap();
        let l = c.limits().unwrap();
        assert_eq!(l.max_image_bytes, 10 * 1024 * 1024);
        assert_eq!(l.max_file_bytes, 100 * 1024 * 1024);
        assert_eq!(l.image_types.unwrap().len(), 5);
        assert!(l.file_extensions.is_empty());
    }

    #[test]
    fn image_types() {
        assert_eq!(parse_image_types("*").unwrap(), None);
        assert_eq!(
            parse_image_types("PNG, jpg").unwrap(),
            Some(vec![ImageType::Png, ImageType::Jpeg])
        );
        assert!(parse_image_types("tiff").is_err());
        assert!(parse_image_types(" , ").is_err());
    }

    #[test]
    fn sniffing() {
        assert_eq!(
            ImageType::sniff(&[0x89, b'P', b'N', b'G', 13, 10, 26, 10, 0]),
            Some(ImageType::Png)
        );
        assert_eq!(
            ImageType::sniff(&[0xff, 0xd8, 0xff, 0xe0]),
            Some(ImageType::Jpeg)
        );
        assert_eq!(ImageType::sniff(b"GIF89a...."), Some(ImageType::Gif));
        assert_eq!(
            ImageType::sniff(b"RIFF\0\0\0\0WEBPVP8 "),
            Some(ImageType::Webp)
        );
        assert_eq!(ImageType::sniff(b"<svg"), None);
        assert_eq!(ImageType::sniff(b""), None);
    }
}
