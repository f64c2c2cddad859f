//! Metrics: a per-service [`Registry`] over `prometheus-client`, and the types services
//! declare their metrics with.
//!
//! A service writes one struct of its metrics (plain fields of [`Counter`], [`Gauge`],
//! [`Histogram`]), builds it against its own [`Registry`] at start-up and keeps it in its
//! shared state. Updating a metric is an atomic operation on that field (a histogram's
//! `observe` too: no lock); only `/metrics` walks the registry. There is no global state:
//! two services in one process have two registries.
//!
//! Names are given as the samples appear in the exposition, so that every name a dashboard
//! or an alert uses can be found verbatim in the source: counters end in `_total` (the
//! OpenMetrics family is the name without it). Registering a name twice, or a name whose
//! samples collide with another's (a gauge `x` beside a counter `x_total`), panics at
//! start-up: that is a programming error, and the exposition would be rejected whole.
//!
//! It is not a place for metric definitions: those belong to each service.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::MetricType;

/// A count that only grows (`inc`, `inc_by`, `get`; `inner()` is the `AtomicU64`).
pub type Counter = prometheus_client::metrics::counter::Counter;

/// A value that goes up and down (`set`, `inc`, `dec`, `inc_by`, `dec_by`, `get`).
pub type Gauge = prometheus_client::metrics::gauge::Gauge;

/// The labels of one series: `(name, value)` pairs.
pub type Labels = Vec<(&'static str, &'static str)>;

/// The `Content-Type` of [`Registry::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Standard bucket upper bounds, in seconds.
pub mod buckets {
    /// In-process work and NATS round trips: 100 µs … 2.5 s.
    pub const FAST_SECONDS: &[f64] = &[
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ];
    /// Disk, database and whole requests: 1 ms … 30 s.
    pub const SLOW_SECONDS: &[f64] = &[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
}

/// A histogram with fixed buckets on atomics. Cloning it shares the same series.
#[derive(Clone, Debug)]
pub struct Histogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    /// Finite upper bounds, ascending; `counts` has one more slot, for `+Inf`.
    bounds: Box<[f64]>,
    /// Observations per bucket (not cumulative).
    counts: Box<[AtomicU64]>,
    /// The sum of observations, as `f64` bits.
    sum_bits: AtomicU64,
}

impl Histogram {
    /// A histogram with `bounds` as bucket upper bounds (sorted and deduplicated here;
    /// non-finite bounds are dropped, `+Inf` is always there).
    pub fn new(bounds: &[f64]) -> Histogram {
        let mut b: Vec<f64> = bounds.iter().copied().filter(|v| v.is_finite()).collect();
        b.sort_by(f64::total_cmp);
        b.dedup();
        let counts = (0..=b.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram {
            inner: Arc::new(HistogramInner {
                bounds: b.into_boxed_slice(),
                counts,
                sum_bits: AtomicU64::new(0f64.to_bits()),
            }),
        }
    }

    /// Record a duration, in seconds.
    pub fn observe(&self, d: Duration) {
        self.observe_value(d.as_secs_f64());
    }

    /// Record a plain value (e.g. a batch size). NaN is ignored.
    pub fn observe_value(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        let i = self.inner.bounds.partition_point(|b| *b < v);
        self.inner.counts[i].fetch_add(1, Relaxed);
        // A CAS loop: contention on one histogram is rare and short.
        let _ = self.inner.sum_bits.fetch_update(Relaxed, Relaxed, |bits| {
            Some((f64::from_bits(bits) + v).to_bits())
        });
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Sum of the observations so far.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.inner.sum_bits.load(Relaxed))
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.inner.counts.iter().map(|c| c.load(Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A counter with labels. Create the series you know of at start-up with
/// [`CounterFamily::series`] (they are exported at 0 from then on) and keep the returned
/// counters: they share the family's storage and update without a lookup.
#[derive(Clone, Debug, Default)]
pub struct CounterFamily {
    family: Family<Labels, Counter>,
}

impl CounterFamily {
    /// The series with `labels`, created on first use.
    pub fn series(&self, labels: &[(&'static str, &'static str)]) -> Counter {
        self.family.get_or_create_owned(&labels.to_vec())
    }
}

/// One service's metrics, as exposed at `/metrics`.
#[derive(Debug, Default)]
pub struct Registry {
    inner: prometheus_client::registry::Registry,
    /// Family names and sample names taken so far.
    families: BTreeSet<String>,
    samples: BTreeSet<String>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Register a counter; `name` is its sample name and ends in `_total`.
    ///
    /// # Panics
    /// When `name` does not end in `_total`, or collides with a registered name.
    #[track_caller]
    pub fn counter(&mut self, name: &str, help: &str) -> Counter {
        let family = counter_family(name);
        self.claim(family, &["_total", "_created"]);
        let c = Counter::default();
        self.inner.register(family, help, c.clone());
        c
    }

    /// Register a counter with labels; `name` as for [`Registry::counter`].
    ///
    /// # Panics
    /// As [`Registry::counter`].
    #[track_caller]
    pub fn counter_family(&mut self, name: &str, help: &str) -> CounterFamily {
        let family = counter_family(name);
        self.claim(family, &["_total", "_created"]);
        let f = CounterFamily::default();
        self.inner.register(family, help, f.family.clone());
        f
    }

    /// Register a gauge.
    ///
    /// # Panics
    /// When `name` collides with a registered name.
    #[track_caller]
    pub fn gauge(&mut self, name: &str, help: &str) -> Gauge {
        self.claim(name, &[""]);
        let g = Gauge::default();
        self.inner.register(name, help, g.clone());
        g
    }

    /// Register a histogram with the given bucket upper bounds (see [`buckets`]).
    ///
    /// # Panics
    /// When `name` collides with a registered name.
    #[track_caller]
    pub fn histogram(&mut self, name: &str, help: &str, bounds: &[f64]) -> Histogram {
        self.claim(name, &["_bucket", "_sum", "_count", "_created"]);
        let h = Histogram::new(bounds);
        self.inner.register(name, help, h.clone());
        h
    }

    /// The OpenMetrics text exposition of every registered metric (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::text::encode(&mut out, &self.inner)?;
        Ok(out)
    }

    #[track_caller]
    fn claim(&mut self, family: &str, suffixes: &[&str]) {
        let samples: Vec<String> = suffixes.iter().map(|s| format!("{family}{s}")).collect();
        let clash = self.families.contains(family)
            || samples
                .iter()
                .any(|s| self.samples.contains(s) || self.families.contains(s));
        assert!(
            !clash,
            "metric {family} collides with a metric registered before (same family or sample name)"
        );
        self.families.insert(family.to_owned());
        self.samples.extend(samples);
    }
}

#[track_caller]
fn counter_family(name: &str) -> &str {
    match name.strip_suffix("_total") {
        Some(family) if !family.is_empty() => family,
        _ => panic!("counter {name:?}: counter names end in _total"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_keeps_sample_names() {
        let mut r = Registry::new();
        let c = r.counter("natter_test_frames_out_total", "Frames.");
        let g = r.gauge("natter_test_connections", "Open sockets.");
        let h = r.histogram("natter_test_seconds", "Latency.", buckets::FAST_SECONDS);
        let f = r.counter_family("natter_test_uploads_total", "Uploads.");
        let stored = f.series(&[("kind", "file"), ("result", "stored")]);
        c.inc_by(3);
        g.set(-2);
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        stored.inc();
        let t = r.encode().unwrap();
        assert!(t.contains("# TYPE natter_test_frames_out counter\n"), "{t}");
        assert!(t.contains("natter_test_frames_out_total 3\n"), "{t}");
        assert!(t.contains("natter_test_connections -2\n"), "{t}");
        assert!(
            t.contains("natter_test_seconds_bucket{le=\"0.0001\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("natter_test_seconds_bucket{le=\"0.005\"} 2\n"),
            "{t}"
        );
        assert!(
            t.contains("natter_test_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{t}"
        );
        assert!(t.contains("natter_test_seconds_count 3\n"), "{t}");
        assert!(
            t.contains("natter_test_uploads_total{kind=\"file\",result=\"stored\"} 1\n"),
            "{t}"
        );
        assert!(t.ends_with("# EOF\n"), "{t}");
        assert_eq!(h.count(), 3);
        assert!((h.sum() - 10.00305).abs() < 1e-9);
    }

    #[test]
    fn histogram_bounds_are_inclusive_and_nan_ignored() {
        let h = Histogram::new(&[2.0, 1.0, f64::INFINITY, 1.0]);
        h.observe_value(1.0);
        h.observe_value(1.5);
        h.observe_value(f64::NAN);
        h.observe_value(7.0);
        let counts: Vec<u64> = h.inner.counts.iter().map(|c| c.load(Relaxed)).collect();
        assert_eq!(counts, vec![1, 1, 1]);
    }

    #[test]
    #[should_panic(expected = "collides")]
    fn a_gauge_beside_a_counter_of_the_same_family_is_refused() {
        let mut r = Registry::new();
        r.gauge("natter_test_connections", "Open.");
        r.counter("natter_test_connections_total", "Accepted.");
    }

    #[test]
    #[should_panic(expected = "end in _total")]
    fn counters_end_in_total() {
        Registry::new().counter("natter_test_frames", "Frames.");
    }

    #[test]
    fn registries_are_separate() {
        let mut a = Registry::new();
        let mut b = Registry::new();
        a.counter("natter_test_x_total", "X.").inc();
        b.counter("natter_test_x_total", "X.");
        assert!(a.encode().unwrap().contains("natter_test_x_total 1\n"));
        assert!(b.encode().unwrap().contains("natter_test_x_total 0\n"));
    }
}
