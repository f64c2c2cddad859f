//! The filestore's metrics: typed series registered in the service's [`Registry`] at
//! start-up and served at `/metrics` by natter-ops. Names, labels and meanings are the
//! contract in `METRICS.md`.
//!
//! Every label set is known up front (two kinds, the reject reasons, two announcement
//! results), so each series is created at registration (exported at 0 from the start) and
//! kept here as a plain counter: recording is an atomic add, never a lookup.

use std::time::Duration;

use natter_ops::{buckets, Counter, Gauge, Histogram, Registry};

use crate::store::Kind;

/// Labels of `natter_filestore_rejects_total`: every `ApiError::reason` an upload can get
/// (downloads count their `unauthorized` and `forbidden` answers here too).
const REJECT_REASONS: [&str; 16] = [
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
    "unauthorized",
    "forbidden",
    "busy",
    "deadline",
];

/// The series of one kind (`kind="image"` or `kind="file"`).
#[derive(Debug)]
struct PerKind {
    stored: Counter,
    duplicate: Counter,
    bytes: Counter,
    downloads: Counter,
    download_bytes: Counter,
    not_found: Counter,
    not_modified: Counter,
}

/// Everything the filestore measures.
#[derive(Debug)]
pub struct Metrics {
    /// Index 0: images, 1: files.
    kinds: [PerKind; 2],
    rejects: Vec<(&'static str, Counter)>,
    published: Counter,
    publish_duplicates: Counter,
    publish_failures: Counter,
    upload_duration: Histogram,
    /// 1 while the NATS connection is up (sampled at each scrape).
    pub nats_connected: Gauge,
    /// 1 while `/readyz` answers 200 (sampled at each scrape).
    pub ready: Gauge,
    /// Settings of the CHAT stream that differ from this service's (sampled at each scrape).
    pub stream_drift: Gauge,
    /// Uploads being received (sampled at each scrape).
    pub uploads_in_progress: Gauge,
}

fn idx(kind: Kind) -> usize {
    match kind {
        Kind::Image => 0,
        Kind::File => 1,
    }
}

impl Metrics {
    /// Declare every metric in `r`.
    pub fn register(r: &mut Registry) -> Metrics {
        let uploads = r.counter_family(
            "natter_filestore_uploads_total",
            "Uploads answered 200: newly stored, or a uuid stored before.",
        );
        let upload_bytes = r.counter_family(
            "natter_filestore_upload_bytes_total",
            "Bytes of newly stored blobs (images: their base64 text).",
        );
        let rejects = r.counter_family(
            "natter_filestore_rejects_total",
            "Requests refused, by reason (uploads; downloads: unauthorized and forbidden).",
        );
        let announcements = r.counter_family(
            "natter_filestore_announcements_total",
            "Notifications acknowledged by the CHAT stream (duplicate: it had the uuid already).",
        );
        let publish_failures = r.counter(
            "natter_filestore_announce_failures_total",
            "Notifications that could not be published (the client got 503).",
        );
        let downloads = r.counter_family(
            "natter_filestore_downloads_total",
            "Downloads served (200 or 206).",
        );
        let download_bytes = r.counter_family(
            "natter_filestore_download_bytes_total",
            "Bytes of downloads served.",
        );
        let not_modified = r.counter_family(
            "natter_filestore_not_modified_total",
            "Downloads answered 304 (If-None-Match).",
        );
        let not_found = r.counter_family(
            "natter_filestore_not_found_total",
            "Downloads of unknown uuids (404).",
        );
        let upload_duration = r.histogram(
            "natter_filestore_upload_duration_seconds",
            "Time to answer an upload, whatever the answer.",
            buckets::SLOW_SECONDS,
        );
        let nats_connected = r.gauge(
            "natter_filestore_nats_connected",
            "1 while the NATS connection is up.",
        );
        let ready = r.gauge("natter_filestore_ready", "1 while /readyz answers 200.");
        let uploads_in_progress = r.gauge(
            "natter_filestore_uploads_in_progress",
            "Uploads being received, of at most --max-concurrent-uploads.",
        );
        let stream_drift = r.gauge(
            "natter_filestore_stream_drift",
            "Settings of the CHAT stream that differ from this filestore's; not ready while > 0.",
        );
        let per_kind = |kind: &'static str| PerKind {
            stored: uploads.series(&[("kind", kind), ("result", "stored")]),
            duplicate: uploads.series(&[("kind", kind), ("result", "duplicate")]),
            bytes: upload_bytes.series(&[("kind", kind)]),
            downloads: downloads.series(&[("kind", kind)]),
            download_bytes: download_bytes.series(&[("kind", kind)]),
            not_found: not_found.series(&[("kind", kind)]),
            not_modified: not_modified.series(&[("kind", kind)]),
        };
        Metrics {
            kinds: [per_kind("image"), per_kind("file")],
            rejects: REJECT_REASONS
                .iter()
                .map(|r| (*r, rejects.series(&[("reason", r)])))
                .collect(),
            published: announcements.series(&[("result", "published")]),
            publish_duplicates: announcements.series(&[("result", "duplicate")]),
            publish_failures,
            upload_duration,
            nats_connected,
            ready,
            stream_drift,
            uploads_in_progress,
        }
    }

    /// A new upload was stored (`bytes`: the blob's size).
    pub fn stored(&self, kind: Kind, bytes: u64) {
        let k = &self.kinds[idx(kind)];
        k.stored.inc();
        k.bytes.inc_by(bytes);
    }

    /// An upload of a uuid that was already stored.
    pub fn duplicate(&self, kind: Kind) {
        self.kinds[idx(kind)].duplicate.inc();
    }

    /// A request refused with `reason` (an `ApiError::reason`; unknown ones are not counted).
    pub fn reject(&self, reason: &str) {
        if let Some((_, c)) = self.rejects.iter().find(|(r, _)| *r == reason) {
            c.inc();
        }
    }

    /// The stream acknowledged an announcement (`duplicate`: it had it already).
    pub fn published(&self, duplicate: bool) {
        if duplicate {
            self.publish_duplicates.inc();
        } else {
            self.published.inc();
        }
    }

    pub fn publish_failed(&self) {
        self.publish_failures.inc();
    }

    pub fn download(&self, kind: Kind, bytes: u64) {
        let k = &self.kinds[idx(kind)];
        k.downloads.inc();
        k.download_bytes.inc_by(bytes);
    }

    pub fn not_modified(&self, kind: Kind) {
        self.kinds[idx(kind)].not_modified.inc();
    }

    pub fn not_found(&self, kind: Kind) {
        self.kinds[idx(kind)].not_found.inc();
    }

    /// How long one upload request took, whatever its outcome.
    pub fn upload_latency(&self, d: Duration) {
        self.upload_duration.observe(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_exported_from_the_start() {
        let mut r = Registry::new();
        let m = Metrics::register(&mut r);
        m.stored(Kind::File, 10);
        m.reject("too_large");
        m.reject("nonsense");
        m.upload_latency(Duration::from_millis(30));
        m.ready.set(0);
        m.nats_connected.set(1);
        let t = r.encode().unwrap();
        for line in [
            "natter_filestore_uploads_total{kind=\"file\",result=\"stored\"} 1\n",
            "natter_filestore_uploads_total{kind=\"image\",result=\"duplicate\"} 0\n",
            "natter_filestore_upload_bytes_total{kind=\"file\"} 10\n",
            "natter_filestore_rejects_total{reason=\"too_large\"} 1\n",
            "natter_filestore_rejects_total{reason=\"storage\"} 0\n",
            "natter_filestore_upload_duration_seconds_bucket{le=\"0.025\"} 0\n",
            "natter_filestore_upload_duration_seconds_bucket{le=\"0.05\"} 1\n",
            "natter_filestore_upload_duration_seconds_count 1\n",
            "natter_filestore_announce_failures_total 0\n",
            "natter_filestore_nats_connected 1\n",
            "natter_filestore_ready 0\n",
        ] {
            assert!(t.contains(line), "{line} missing from\n{t}");
        }
    }
}
