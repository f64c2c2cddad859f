//! Reading an exposition back: a small parser of the OpenMetrics text format that
//! [`crate::Registry::encode`] writes, and of the metric tables of `METRICS.md`. It exists
//! for tests and tools that check a running service against the documented contract; no
//! service uses it to serve anything.
//!
//! It reads what natter writes (descriptors before their samples, `# EOF` last); it is not a
//! validating parser of every exposition Prometheus accepts.

use std::collections::BTreeMap;

use thiserror::Error;

/// Why an exposition could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("line {line}: {why}: {text:?}")]
    Line {
        line: usize,
        why: &'static str,
        text: String,
    },
    #[error("no `# EOF` at the end")]
    NoEof,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One metric family: its type (`counter`, `gauge`, `histogram`, ...), help and samples.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Family {
    pub kind: String,
    pub help: String,
    pub samples: Vec<Sample>,
}

/// A parsed exposition: families by name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Exposition {
    pub families: BTreeMap<String, Family>,
}

impl Exposition {
    /// The value of the sample `name` whose labels include every pair of `labels`; the sum
    /// when several match, `None` when none does.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for s in self.families.values().flat_map(|f| &f.samples) {
            if s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            {
                *found.get_or_insert(0.0) += s.value;
            }
        }
        found
    }
}

/// Parse the OpenMetrics text `text`.
pub fn parse(text: &str) -> Result<Exposition, ParseError> {
    let mut exp = Exposition::default();
    let mut current: Option<String> = None;
    let mut eof = false;
    for (i, line) in text.lines().enumerate() {
        let err = |why| ParseError::Line {
            line: i + 1,
            why,
            text: line.to_owned(),
        };
        if eof {
            return Err(err("text after # EOF"));
        }
        if line == "# EOF" {
            eof = true;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| err("TYPE without a type"))?;
            exp.families.entry(name.to_owned()).or_default().kind = kind.to_owned();
            current = Some(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            exp.families.entry(name.to_owned()).or_default().help = help.to_owned();
        } else if line.starts_with('#') || line.trim().is_empty() {
            continue;
        } else {
            let sample = parse_sample(line).ok_or_else(|| err("not a sample"))?;
            let family = current
                .as_ref()
                .filter(|f| sample.name.starts_with(f.as_str()))
                .ok_or_else(|| err("sample outside its family"))?;
            exp.families
                .entry(family.clone())
                .or_default()
                .samples
                .push(sample);
        }
    }
    if !eof {
        return Err(ParseError::NoEof);
    }
    Ok(exp)
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let (key, r) = rest.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = r.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.trim_start_matches(',').to_owned(), value);
            rest = &r[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    // The value; a timestamp or an exemplar may follow.
    let value = rest.trim_start().split(' ').next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A `/metrics` answer read back: it must be a 200 in the OpenMetrics content type whose
/// body parses. The error says which of these failed, with the body.
pub fn scraped(status: u16, content_type: Option<&str>, body: &str) -> Result<Exposition, String> {
    if status != 200 {
        return Err(format!("/metrics answered {status}: {body}"));
    }
    if !content_type.is_some_and(|t| t.starts_with("application/openmetrics-text")) {
        return Err(format!("/metrics served as {content_type:?}"));
    }
    parse(body).map_err(|e| {
        format!(
            "{e}
{body}"
        )
    })
}

/// A metric as `METRICS.md` documents it: its sample name (counters with `_total`) and its
/// type (`counter`, `gauge`, `histogram`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Documented {
    pub name: String,
    pub kind: String,
}

impl Documented {
    /// The OpenMetrics family name (a counter's name without `_total`).
    pub fn family(&self) -> &str {
        match self.kind.as_str() {
            "counter" => self.name.strip_suffix("_total").unwrap_or(&self.name),
            _ => &self.name,
        }
    }
}

/// The metrics `METRICS.md` (its text: `doc`) lists whose names start with `prefix`: the
/// first two cells of each table row, `` | `name` | type … | ``.
pub fn documented(doc: &str, prefix: &str) -> Vec<Documented> {
    doc.lines()
        .filter_map(|l| {
            let mut cells = l.strip_prefix('|')?.split('|').map(str::trim);
            let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let kind = cells.next()?.split_whitespace().next()?;
            name.starts_with(prefix).then(|| Documented {
                name: name.to_owned(),
                kind: kind.to_owned(),
            })
        })
        .collect()
}

/// Every way `exp` departs from what `doc` (the text of `METRICS.md`) lists under `prefix`;
/// also when it lists fewer than `at_least` metrics (a table lost or renamed).
pub fn contract_differences(
    exp: &Exposition,
    doc: &str,
    prefix: &str,
    at_least: usize,
) -> Vec<String> {
    let documented = documented(doc, prefix);
    let mut out = differences(exp, &documented, prefix);
    if documented.len() < at_least {
        out.push(format!(
            "METRICS.md lists {} {prefix}* metrics, expected at least {at_least}",
            documented.len()
        ));
    }
    out
}

/// Every way `exp` departs from `documented`: a documented metric missing or of another
/// type, or a family served that is not documented. Empty when they agree.
pub fn differences(exp: &Exposition, documented: &[Documented], prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for d in documented {
        match exp.families.get(d.family()) {
            None => out.push(format!(
                "{} ({}) is documented but not served",
                d.name, d.kind
            )),
            Some(f) if f.kind != d.kind => out.push(format!(
                "{} is documented as a {} but served as a {}",
                d.name, d.kind, f.kind
            )),
            Some(f) => {
                let sample = match d.kind.as_str() {
                    "histogram" => format!("{}_count", d.name),
                    _ => d.name.clone(),
                };
                if !f.samples.iter().any(|s| s.name == sample) {
                    out.push(format!("{} is served without a {sample} sample", d.name));
                }
            }
        }
    }
    for name in exp.families.keys().filter(|n| n.starts_with(prefix)) {
        if !documented.iter().any(|d| d.family() == name) {
            out.push(format!("{name} is served but not documented"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{buckets, Registry};

    #[test]
    fn reads_back_what_the_registry_writes() {
        let mut r = Registry::new();
        r.counter("natter_t_frames_total", "Frames.").inc_by(4);
        r.gauge("natter_t_open", "Open.").set(2);
        r.histogram("natter_t_seconds", "Latency.", buckets::FAST_SECONDS)
            .observe_value(0.003);
        let f = r.counter_family("natter_t_rejects_total", "Rejects.");
        f.series(&[("reason", "too \"large\"")]).inc();
        let exp = parse(&r.encode().unwrap()).unwrap();
        assert_eq!(exp.families["natter_t_frames"].kind, "counter");
        assert_eq!(exp.value("natter_t_frames_total", &[]), Some(4.0));
        assert_eq!(exp.value("natter_t_open", &[]), Some(2.0));
        assert_eq!(exp.value("natter_t_seconds_count", &[]), Some(1.0));
        assert_eq!(
            exp.value("natter_t_seconds_bucket", &[("le", "+Inf")]),
            Some(1.0)
        );
        assert_eq!(
            exp.value("natter_t_rejects_total", &[("reason", "too \"large\"")]),
            Some(1.0)
        );
        let doc = "| name | type |\n|---|---|\n\
                   | `natter_t_frames_total` | counter | | x |\n\
                   | `natter_t_open` | gauge (sampled) | | x |\n\
                   | `natter_t_seconds` | histogram (fast) | | x |\n\
                   | `natter_t_rejects_total` | counter | `reason` | x |\n";
        let d = documented(doc, "natter_t_");
        assert_eq!(d.len(), 4);
        assert_eq!(differences(&exp, &d, "natter_t_"), Vec::<String>::new());
        let wrong = [Documented {
            name: "natter_t_open".into(),
            kind: "counter".into(),
        }];
        assert_eq!(differences(&exp, &wrong, "natter_t_").len(), 4);
    }

    #[test]
    fn scrapes_are_checked() {
        let ok = "# TYPE x gauge\nx 1\n# EOF\n";
        let om = Some(crate::metrics::CONTENT_TYPE);
        assert!(scraped(200, om, ok).is_ok());
        assert!(scraped(503, om, ok).is_err());
        assert!(scraped(200, Some("text/plain; version=0.0.4"), ok).is_err());
        assert!(scraped(200, om, "x 1\n").is_err());
        let exp = scraped(200, om, ok).unwrap();
        let doc = "| `x` | gauge | | x |\n";
        assert!(contract_differences(&exp, doc, "x", 1).is_empty());
        assert_eq!(contract_differences(&exp, doc, "x", 2).len(), 1);
    }

    #[test]
    fn refuses_what_is_not_an_exposition() {
        assert_eq!(
            parse("x 1\n"),
            Err(ParseError::Line {
                line: 1,
                why: "sample outside its family",
                text: "x 1".into()
            })
        );
        assert_eq!(parse("# TYPE x gauge\nx 1\n"), Err(ParseError::NoEof));
        assert!(parse("# TYPE x gauge\nx one\n# EOF\n").is_err());
    }
}
