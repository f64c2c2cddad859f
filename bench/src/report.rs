//! Shared figures for scenario reports: latency percentiles, number formatting, and the
//! [`Report`] the load scenarios print (human-readable or JSON).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::load::LoadResult;
use crate::procs as procstat;

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(samples: &[Duration]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            // Nearest rank.
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[rank - 1]
        };
        Latency {
            samples: v.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: v[v.len() - 1],
        }
    }

    pub fn human(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  max {}  ({} samples)",
            ms(self.p50_ms),
            ms(self.p90_ms),
            ms(self.p99_ms),
            ms(self.max_ms),
            self.samples
        )
    }
}

/// `1234.5` ms as "1.23 s", `12.3` as "12.3 ms".
pub fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else {
        format!("{v:.1} ms")
    }
}

/// `12345.6` as "12,346".
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

pub struct Report {
    pub scenario: String,
    pub figures: Map<String, Value>,
}

impl Report {
    pub fn new(scenario: &str) -> Self {
        Report {
            scenario: scenario.into(),
            figures: Map::new(),
        }
    }

    pub fn set(&mut self, key: &str, v: impl Into<Value>) {
        self.figures.insert(key.into(), v.into());
    }

    /// The standard figures of a room load.
    pub fn load(&mut self, r: &LoadResult) {
        let secs = r.elapsed.as_secs_f64().max(1e-9);
        self.set("connections", r.connections);
        self.set("messages_sent", r.sent);
        self.set("messages_acked", r.acked);
        self.set("refusals_retried", r.refused);
        self.set("deliveries_expected", r.expected_deliveries);
        self.set("deliveries_received", r.delivered);
        self.set("lost", r.lost);
        self.set("duplicated", r.duplicated);
        self.set("reconnects", r.reconnects);
        self.set("elapsed_s", round(secs, 2));
        self.set("deliveries_per_s", round(r.delivered as f64 / secs, 0));
        if let Some(h) = &r.latency_us {
            self.latency("latency", h);
        }
    }

    pub fn latency(&mut self, name: &str, h: &Histogram<u64>) {
        let ms = |q: f64| round(h.value_at_quantile(q) as f64 / 1000.0, 2);
        self.set(
            &format!("{name}_ms"),
            json!({"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p99.9": ms(0.999),
                   "max": round(h.max() as f64 / 1000.0, 2), "samples": h.len()}),
        );
    }

    /// CPU seconds used by each process (and the load generator) since `before` was taken.
    pub fn cpu(&mut self, procs: &[(String, u32)], before: &[(String, f64)]) {
        let m: Map<String, Value> = cpu_since(procs, before)
            .into_iter()
            .map(|(name, s)| (name, json!(round(s, 2))))
            .collect();
        self.set("cpu_seconds", Value::Object(m));
    }

    pub fn print(&self, as_json: bool) {
        if as_json {
            println!(
                "{}",
                json!({"scenario": self.scenario, "figures": self.figures})
            );
            return;
        }
        println!("natter-bench {}", self.scenario);
        for (k, v) in &self.figures {
            match v {
                Value::Object(o) => {
                    let parts: Vec<String> = o.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!("  {k:<24} {}", parts.join("  "));
                }
                other => println!("  {k:<24} {other}"),
            }
        }
    }
}

pub fn cpu_snapshot(procs: &[(String, u32)]) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = procs
        .iter()
        .map(|(n, p)| (n.clone(), procstat::cpu_seconds(*p).unwrap_or(0.0)))
        .collect();
    v.push((
        "load-generator".into(),
        procstat::cpu_seconds(std::process::id()).unwrap_or(0.0),
    ));
    v
}

/// CPU seconds each of `procs` and the load generator used since [`cpu_snapshot`] gave
/// `before`.
pub fn cpu_since(procs: &[(String, u32)], before: &[(String, f64)]) -> Vec<(String, f64)> {
    let was = |name: &str| {
        before
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |(_, c)| *c)
    };
    let mut v: Vec<(String, f64)> = procs
        .iter()
        // A process that is gone counts as having used nothing more.
        .map(|(n, p)| {
            (
                n.clone(),
                procstat::cpu_seconds(*p).map_or(0.0, |c| c - was(n)),
            )
        })
        .collect();
    let me = procstat::cpu_seconds(std::process::id()).unwrap_or(0.0);
    v.push(("load-generator".into(), me - was("load-generator")));
    v
}

pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_formatting() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(&d);
        assert_eq!(
            (l.p50_ms, l.p99_ms, l.max_ms, l.samples),
            (50.0, 99.0, 100.0, 100)
        );
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(ms(1500.0), "1.50 s");
    }
}
