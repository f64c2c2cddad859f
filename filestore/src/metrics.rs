//! Counters and a latency histogram, rendered in the Prometheus text format at `/metrics`.
//!
//! Plain atomics: the label sets are small and fixed, so no metrics library is needed.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::store::Kind;

/// Labels of `natter_filestore_rejects_total`: every `ApiError::reason` an upload can get.
const REJECT_REASONS: [&str; 12] = [
    "malformed_json",
    "invalid_message",
    "no_file",
    "bad_multipart",
    "bad_base64",
    "unsupported_content",
    "file_name",
    "too_large",
    "conflict",
    "aborted",
    "unavailable",
    "storage",
];

/// Upper bounds of the upload latency buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Per-kind counters (index 0: images, 1: files).
#[derive(Default)]
struct PerKind {
    stored: AtomicU64,
    duplicate: AtomicU64,
    bytes: AtomicU64,
    downloads: AtomicU64,
    download_bytes: AtomicU64,
    not_found: AtomicU64,
    not_modified: AtomicU64,
}

#[derive(Default)]
pub struct Metrics {
    kinds: [PerKind; 2],
    rejects: [AtomicU64; REJECT_REASONS.len()],
    published: AtomicU64,
    publish_duplicates: AtomicU64,
    publish_failures: AtomicU64,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

fn idx(kind: Kind) -> usize {
    match kind {
        Kind::Image => 0,
        Kind::File => 1,
    }
}

impl Metrics {
    /// A new upload was stored (`bytes`: the blob's size).
    pub fn stored(&self, kind: Kind, bytes: u64) {
        let k = &self.kinds[idx(kind)];
        k.stored.fetch_add(1, Relaxed);
        k.bytes.fetch_add(bytes, Relaxed);
    }

    /// An upload of a uuid that was already stored.
    pub fn duplicate(&self, kind: Kind) {
        self.kinds[idx(kind)].duplicate.fetch_add(1, Relaxed);
    }

    pub fn reject(&self, reason: &str) {
        if let Some(i) = REJECT_REASONS.iter().position(|r| *r == reason) {
            self.rejects[i].fetch_add(1, Relaxed);
        }
    }

    /// The stream acknowledged an announcement (`duplicate`: it had it already).
    pub fn published(&self, duplicate: bool) {
        if duplicate {
            self.publish_duplicates.fetch_add(1, Relaxed);
        } else {
            self.published.fetch_add(1, Relaxed);
        }
    }

    pub fn publish_failed(&self) {
        self.publish_failures.fetch_add(1, Relaxed);
    }

    pub fn download(&self, kind: Kind, bytes: u64) {
        let k = &self.kinds[idx(kind)];
        k.downloads.fetch_add(1, Relaxed);
        k.download_bytes.fetch_add(bytes, Relaxed);
    }

    pub fn not_modified(&self, kind: Kind) {
        self.kinds[idx(kind)].not_modified.fetch_add(1, Relaxed);
    }

    pub fn not_found(&self, kind: Kind) {
        self.kinds[idx(kind)].not_found.fetch_add(1, Relaxed);
    }

    /// How long one upload request took, whatever its outcome.
    pub fn upload_latency(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.latency_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_micros
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// The Prometheus text exposition; `nats_connected` and `ready` are sampled by the caller.
    pub fn render(&self, nats_connected: bool, ready: bool) -> String {
        let mut s = String::with_capacity(4096);
        let kinds = [("image", &self.kinds[0]), ("file", &self.kinds[1])];
        let mut counter = |name: &str, help: &str, rows: &[(String, u64)]| {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} counter");
            for (labels, v) in rows {
                let _ = writeln!(s, "{name}{labels} {v}");
            }
        };
        let mut uploads = Vec::new();
        for (k, c) in &kinds {
            uploads.push((
                format!("{{kind=\"{k}\",result=\"stored\"}}"),
                c.stored.load(Relaxed),
            ));
            uploads.push((
                format!("{{kind=\"{k}\",result=\"duplicate\"}}"),
                c.duplicate.load(Relaxed),
            ));
        }
        counter(
            "natter_filestore_uploads_total",
            "Uploads answered 200: newly stored, or a uuid stored before.",
            &uploads,
        );
        let per_kind = |f: &dyn Fn(&PerKind) -> u64| -> Vec<(String, u64)> {
            kinds
                .iter()
                .map(|(k, c)| (format!("{{kind=\"{k}\"}}"), f(c)))
                .collect()
        };
        counter(
            "natter_filestore_upload_bytes_total",
            "Bytes of newly stored blobs (images: their base64 text).",
            &per_kind(&|c| c.bytes.load(Relaxed)),
        );
        counter(
            "natter_filestore_rejects_total",
            "Requests refused, by reason.",
            &REJECT_REASONS
                .iter()
                .zip(&self.rejects)
                .map(|(r, c)| (format!("{{reason=\"{r}\"}}"), c.load(Relaxed)))
                .collect::<Vec<_>>(),
        );
        counter(
            "natter_filestore_announcements_total",
            "Notifications acknowledged by the CHAT stream (duplicate: it had the uuid already).",
            &[
                (
                    "{result=\"published\"}".into(),
                    self.published.load(Relaxed),
                ),
                (
                    "{result=\"duplicate\"}".into(),
                    self.publish_duplicates.load(Relaxed),
                ),
            ],
        );
        counter(
            "natter_filestore_announce_failures_total",
            "Notifications that could not be published (the client got 503).",
            &[(String::new(), self.publish_failures.load(Relaxed))],
        );
        counter(
            "natter_filestore_downloads_total",
            "Downloads served (200 or 206).",
            &per_kind(&|c| c.downloads.load(Relaxed)),
        );
        counter(
            "natter_filestore_download_bytes_total",
            "Bytes of downloads served.",
            &per_kind(&|c| c.download_bytes.load(Relaxed)),
        );
        counter(
            "natter_filestore_not_modified_total",
            "Downloads answered 304 (If-None-Match).",
            &per_kind(&|c| c.not_modified.load(Relaxed)),
        );
        counter(
            "natter_filestore_not_found_total",
            "Downloads of unknown uuids (404).",
            &per_kind(&|c| c.not_found.load(Relaxed)),
        );
        let name = "natter_filestore_upload_duration_seconds";
        let _ = writeln!(
            s,
            "# HELP {name} Time to answer an upload, whatever the answer."
        );
        let _ = writeln!(s, "# TYPE {name} histogram");
        for (b, c) in BUCKETS.iter().zip(&self.latency_buckets) {
            let _ = writeln!(s, "{name}_bucket{{le=\"{b}\"}} {}", c.load(Relaxed));
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.latency_sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(s, "{name}_sum {sum}");
        let _ = writeln!(s, "{name}_count {count}");
        for (name, help, v) in [
            (
                "natter_filestore_nats_connected",
                "1 while the NATS connection is up.",
                nats_connected,
            ),
            (
                "natter_filestore_ready",
                "1 while /readyz answers 200.",
                ready,
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} gauge");
            let _ = writeln!(s, "{name} {}", u8::from(v));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.stored(Kind::File, 10);
        m.reject("too_large");
        m.reject("nonsense");
        m.upload_latency(Duration::from_millis(30));
        let t = m.render(true, false);
        assert!(t.contains("natter_filestore_uploads_total{kind=\"file\",result=\"stored\"} 1\n"));
        assert!(t.contains("natter_filestore_upload_bytes_total{kind=\"file\"} 10\n"));
        assert!(t.contains("natter_filestore_rejects_total{reason=\"too_large\"} 1\n"));
        assert!(t.contains("natter_filestore_upload_duration_seconds_bucket{le=\"0.025\"} 0\n"));
        assert!(t.contains("natter_filestore_upload_duration_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(t.contains("natter_filestore_upload_duration_seconds_count 1\n"));
        assert!(t.contains("natter_filestore_announce_failures_total 0\n"));
        assert!(t.contains("natter_filestore_nats_connected 1\n"));
        assert!(t.contains("natter_filestore_ready 0\n"));
    }
}
