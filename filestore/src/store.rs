//! Blobs and their metadata on the data directory (the persistent volume), shared safely by
//! several replicas.
//!
//! Layout under the data directory:
//!
//! ```text
//! tmp/<random>.part                      an upload being received (deleted on any failure)
//! tmp/<random>.meta                      a metadata record being written
//! images/<shard>/<key>.meta              the metadata of the image with that uuid (JSON)
//! images/<shard>/<key>.<blob id>.blob    its content (the base64 text)
//! files/<shard>/<key>.meta               the same for files (the raw bytes)
//! files/<shard>/<key>.<blob id>.blob
//! ```
//!
//! `<key>` is the hex encoding of the uuid's bytes and `<shard>` two hex digits of a hash of
//! it: a client string is never used as a path, and hex stays unambiguous on
//! case-insensitive volumes. Nothing the client sends (file names included) reaches a path.
//!
//! Commit protocol, safe against crashes and against replicas racing on one uuid:
//!
//! 1. The upload is streamed to `tmp/`, then flushed and fsynced.
//! 2. It is renamed to its final blob name, unique to this upload (`<blob id>` is random),
//!    so the rename never replaces anything.
//! 3. The metadata is written to `tmp/`, fsynced, and **hard-linked** to `<key>.meta`. A link
//!    is an atomic create-if-absent (also on NFS), so exactly one upload of a uuid wins;
//!    a loser deletes its blob and continues with the winner's record.
//! 4. After the announcement is acknowledged, the record is rewritten (`announced`, `seq`)
//!    through a temporary file and an atomic rename.
//!
//! A crash between 2 and 3 can leave an unreferenced blob behind (disk space only); a crash
//! during 1 leaves a temporary file that [`Store::sweep_tmp`] removes later.
//!
//! Longer than 400 lines on purpose: the layout, the commit protocol and the helpers it relies
//! on (synced writes, links, directory syncs) stay in one file so that the crash-safety
//! argument above can be checked against the code in one read.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// Largest write buffer in front of a temporary file (grown as data arrives).
const WRITE_BUFFER: usize = 256 * 1024;

/// What a uuid names: images and files are separate namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Image,
    File,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Image => "images",
            Kind::File => "files",
        }
    }
}

/// The sidecar record of one stored upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    /// Format version of this record.
    pub version: u32,
    pub kind: Kind,
    pub uuid: String,
    pub room: String,
    /// Random id of the blob: part of its file name, and the ETag (a blob never changes).
    pub blob_id: String,
    /// Size of the blob in bytes.
    pub size: u64,
    /// The file name as the client gave it (files only); sanitised only when sent out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    /// What the content was recognised as (images), or what the client said (files).
    pub content_type: String,
    /// When it was stored (RFC 3339, server time).
    pub stored_at: String,
    /// The exact stored message published to the room: republishing after a failure sends
    /// the same bytes, so the stream can deduplicate them.
    pub notification: String,
    /// Whether the stream acknowledged the notification.
    pub announced: bool,
    /// The stream sequence (`_id`) of the notification, once announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

impl Meta {
    pub const VERSION: u32 = 1;

    /// The strong ETag of the content (quoted).
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.blob_id)
    }
}

/// The outcome of [`Store::commit`].
#[derive(Debug)]
pub enum Committed {
    /// This upload is now the stored one.
    Created(Meta),
    /// The uuid was already stored (by an earlier upload or a racing replica): this upload
    /// was dropped and this is the stored record.
    Existing(Meta),
}

/// The data directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    tmp: PathBuf,
    /// Prefix of this process's probe files (unique per process, numbered per probe).
    probe: String,
    probes: Arc<AtomicU64>,
}

impl Store {
    /// Open (and create when needed) the directory layout under `root`.
    pub async fn open(root: &Path) -> io::Result<Store> {
        let tmp = root.join("tmp");
        tokio::fs::create_dir_all(&tmp).await?;
        for kind in [Kind::Image, Kind::File] {
            tokio::fs::create_dir_all(root.join(kind.dir())).await?;
        }
        Ok(Store {
            root: root.to_owned(),
            tmp,
            probe: format!(".probe-{}", uuid::Uuid::new_v4().simple()),
            probes: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Whether a file can be written and removed in the directory right now.
    pub async fn writable(&self) -> bool {
        let n = self.probes.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!("{}-{n}", self.probe));
        let ok = tokio::fs::write(&path, b"ok").await.is_ok();
        let removed = tokio::fs::remove_file(&path).await.is_ok();
        ok && removed
    }

    /// A new temporary file for an upload.
    pub async fn temp_blob(&self) -> io::Result<TempBlob> {
        let path = self
            .tmp
            .join(format!("{}.part", uuid::Uuid::new_v4().simple()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok(TempBlob {
            path,
            file: Some(file),
            buf: Vec::new(),
            len: 0,
            armed: true,
        })
    }

    /// A fresh random blob id.
    pub fn new_blob_id() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    fn shard_dir(&self, kind: Kind, uuid: &str) -> PathBuf {
        self.root
            .join(kind.dir())
            .join(format!("{:02x}", fnv1a(uuid.as_bytes()) & 0xff))
    }

    fn meta_path(&self, kind: Kind, uuid: &str) -> PathBuf {
        self.shard_dir(kind, uuid)
            .join(format!("{}.meta", key(uuid)))
    }

    fn blob_path(&self, meta: &Meta) -> PathBuf {
        self.shard_dir(meta.kind, &meta.uuid).join(format!(
            "{}.{}.blob",
            key(&meta.uuid),
            meta.blob_id
        ))
    }

    /// The record of `uuid`, if stored.
    pub async fn load(&self, kind: Kind, uuid: &str) -> io::Result<Option<Meta>> {
        read_meta_async(&self.meta_path(kind, uuid)).await
    }

    /// Store the finished upload `blob` under `meta.uuid` unless that uuid is stored already
    /// (see the module documentation for the protocol).
    pub async fn commit(&self, mut blob: TempBlob, meta: Meta) -> io::Result<Committed> {
        blob.finish().await?;
        let store = self.clone();
        let temp = blob.path.clone();
        // From here on the blocking task owns the temporary file's fate.
        blob.armed = false;
        tokio::task::spawn_blocking(move || store.commit_blocking(&temp, meta))
            .await
            .map_err(io::Error::other)?
    }

    fn commit_blocking(&self, temp: &Path, meta: Meta) -> io::Result<Committed> {
        if !valid_blob_id(&meta.blob_id) {
            let _ = std::fs::remove_file(temp);
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid blob id",
            ));
        }
        let dir = self.shard_dir(meta.kind, &meta.uuid);
        let final_meta = self.meta_path(meta.kind, &meta.uuid);
        let blob = self.blob_path(&meta);
        let placed = std::fs::create_dir_all(&dir).and_then(|()| std::fs::rename(temp, &blob));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(temp);
            return Err(e);
        }
        let record = serde_json::to_vec_pretty(&meta).map_err(io::Error::other);
        let meta_tmp = self
            .tmp
            .join(format!("{}.meta", uuid::Uuid::new_v4().simple()));
        let linked = record
            .and_then(|bytes| write_synced(&meta_tmp, &bytes))
            .and_then(|()| std::fs::hard_link(&meta_tmp, &final_meta));
        let _ = std::fs::remove_file(&meta_tmp);
        match linked {
            Ok(()) => {
                sync_dir(&dir);
                Ok(Committed::Created(meta))
            }
            Err(e) => {
                let _ = std::fs::remove_file(&blob);
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(e);
                }
                match read_meta(&final_meta)? {
                    Some(existing) => Ok(Committed::Existing(existing)),
                    None => Err(io::Error::other(
                        "metadata vanished after a lost create race",
                    )),
                }
            }
        }
    }

    /// Record that the notification of `meta` is in the stream at `seq`.
    pub async fn mark_announced(&self, meta: &Meta, seq: u64) -> io::Result<Meta> {
        let mut updated = meta.clone();
        updated.announced = true;
        updated.seq = Some(seq);
        let store = self.clone();
        let record = updated.clone();
        tokio::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec_pretty(&record).map_err(io::Error::other)?;
            let meta_tmp = store
                .tmp
                .join(format!("{}.meta", uuid::Uuid::new_v4().simple()));
            let res = write_synced(&meta_tmp, &bytes).and_then(|()| {
                std::fs::rename(&meta_tmp, store.meta_path(record.kind, &record.uuid))
            });
            if res.is_err() {
                let _ = std::fs::remove_file(&meta_tmp);
            }
            res
        })
        .await
        .map_err(io::Error::other)??;
        Ok(updated)
    }

    /// Open the blob of `meta` for reading.
    pub async fn open_blob(&self, meta: &Meta) -> io::Result<tokio::fs::File> {
        tokio::fs::File::open(self.blob_path(meta)).await
    }

    /// Delete temporary files older than `max_age` (left by crashed uploads, of this replica
    /// or another). Returns how many were removed.
    pub async fn sweep_tmp(&self, max_age: Duration) -> usize {
        let tmp = self.tmp.clone();
        tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&tmp) else {
                return 0;
            };
            let now = SystemTime::now();
            let mut removed = 0;
            for entry in entries.flatten() {
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|age| age >= max_age);
                if old && std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
            removed
        })
        .await
        .unwrap_or(0)
    }
}

/// An upload being received into `tmp/`. Deleted when dropped before [`Store::commit`]
/// took it, so a rejected or interrupted upload leaves nothing behind.
///
/// Its write buffer grows with the data that arrives (up to [`WRITE_BUFFER`]), so an upload
/// that sends little holds little.
pub struct TempBlob {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    buf: Vec<u8>,
    len: u64,
    armed: bool,
}

impl TempBlob {
    /// Append `data`.
    pub async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("temporary file already closed"))?;
        if self.buf.len() + data.len() > WRITE_BUFFER {
            f.write_all(&self.buf).await?;
            self.buf.clear();
        }
        if data.len() >= WRITE_BUFFER {
            f.write_all(data).await?;
        } else {
            self.buf.extend_from_slice(data);
        }
        self.len += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Flush and fsync: afterwards the content is safely on disk.
    async fn finish(&mut self) -> io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.write_all(&self.buf).await?;
            self.buf = Vec::new();
            f.flush().await?;
            f.sync_all().await?;
        }
        Ok(())
    }

    /// Delete the file now (also done on drop; this waits for it).
    pub async fn discard(mut self) {
        self.file = None;
        self.armed = false;
        let _ = tokio::fs::remove_file(&self.path).await;
    }
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if self.armed {
            self.file = None;
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn read_meta_async(path: &Path) -> io::Result<Option<Meta>> {
    match tokio::fs::read(path).await {
        Ok(bytes) => parse_meta(&bytes, path).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn read_meta(path: &Path) -> io::Result<Option<Meta>> {
    match std::fs::read(path) {
        Ok(bytes) => parse_meta(&bytes, path).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse_meta(bytes: &[u8], path: &Path) -> io::Result<Meta> {
    let bad = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("metadata {}: {why}", path.display()),
        )
    };
    let meta: Meta = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    // The blob id becomes part of a path: only what `new_blob_id` makes is accepted.
    if !valid_blob_id(&meta.blob_id) {
        return Err(bad("invalid blob id".into()));
    }
    Ok(meta)
}

fn valid_blob_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Make a rename or link in `dir` durable; some file systems refuse, which is harmless.
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The file-name key of a uuid: its bytes in hex.
fn key(uuid: &str) -> String {
    hex(uuid.as_bytes())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(uuid: &str, blob_id: &str) -> Meta {
        Meta {
            version: Meta::VERSION,
            kind: Kind::File,
            uuid: uuid.into(),
            room: "r".into(),
            blob_id: blob_id.into(),
            size: 3,
            file_name: Some("../x".into()),
            content_type: "application/octet-stream".into(),
            stored_at: "2026-01-01T00:00:00Z".into(),
            notification: "{}".into(),
            announced: false,
            seq: None,
        }
    }

    async fn temp_with(store: &Store, data: &[u8]) -> TempBlob {
        let mut t = store.temp_blob().await.unwrap();
        t.write(data).await.unwrap();
        t
    }

    fn count_files(dir: &Path) -> usize {
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                n += count_files(&p);
            } else {
                n += 1;
            }
        }
        n
    }

    #[test]
    fn keys_are_path_safe() {
        assert_eq!(key("../../etc/passwd"), "2e2e2f2e2e2f6574632f706173737764");
        assert_eq!(key("Ab"), "4162");
        assert_ne!(key("Ab"), key("aB"));
    }

    #[tokio::test]
    async fn first_commit_wins_and_loser_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let a = temp_with(&store, b"aaa").await;
        let b = temp_with(&store, b"bbb").await;
        let Committed::Created(m) = store.commit(a, meta("u/1", "a1")).await.unwrap() else {
            panic!("first commit must create")
        };
        let Committed::Existing(e) = store.commit(b, meta("u/1", "b2")).await.unwrap() else {
            panic!("second commit must find the first")
        };
        assert_eq!(e, m);
        // One blob and one record, nothing left in tmp/ but nothing else either.
        assert_eq!(count_files(&dir.path().join("files")), 2);
        assert_eq!(count_files(&dir.path().join("tmp")), 0);
        let mut content = String::new();
        use tokio::io::AsyncReadExt;
        store
            .open_blob(&e)
            .await
            .unwrap()
            .read_to_string(&mut content)
            .await
            .unwrap();
        assert_eq!(content, "aaa");
        let marked = store.mark_announced(&e, 42).await.unwrap();
        assert_eq!(store.load(Kind::File, "u/1").await.unwrap(), Some(marked));
        assert_eq!(store.load(Kind::Image, "u/1").await.unwrap(), None);
        assert_eq!(count_files(&dir.path().join("tmp")), 0);
    }

    #[tokio::test]
    async fn dropped_temp_files_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        drop(temp_with(&store, b"partial").await);
        temp_with(&store, b"partial").await.discard().await;
        assert_eq!(count_files(&dir.path().join("tmp")), 0);
        assert!(store.writable().await);
        let _kept = temp_with(&store, b"x").await;
        assert_eq!(store.sweep_tmp(Duration::from_secs(3600)).await, 0);
        assert_eq!(store.sweep_tmp(Duration::ZERO).await, 1);
    }
}
