//! A strict reader of the Prometheus text exposition format (0.0.4), for checking what
//! `GET /metrics` serves.

/// One sample of a Prometheus exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels, in order.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

/// The value of `name` with exactly `labels`, if exposed.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|s| s.value)
}

/// The sum of every sample of `name`.
pub fn metric_sum(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses the Prometheus text format (0.0.4) strictly: `# HELP name text` and
/// `# TYPE name type` lines well formed, one TYPE per family and before its samples, every
/// sample `name{label="value",...} value [timestamp]` with a numeric value, of a declared
/// family, counters never negative.
pub fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    use std::collections::HashMap;
    let mut types: HashMap<String, String> = HashMap::new();
    let mut seen_samples: std::collections::HashSet<String> = Default::default();
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            if let Some(help) = rest.strip_prefix("HELP ") {
                let (name, _doc) = help.split_once(' ').unwrap_or((help, ""));
                if !is_metric_name(name) {
                    return Err(at("bad metric name in HELP"));
                }
            } else if let Some(ty) = rest.strip_prefix("TYPE ") {
                let mut parts = ty.split(' ');
                let (Some(name), Some(kind), None) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(at("TYPE needs a name and a type"));
                };
                if !is_metric_name(name) {
                    return Err(at("bad metric name in TYPE"));
                }
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(at("unknown metric type"));
                }
                if seen_samples.contains(name) {
                    return Err(at("TYPE after the family's samples"));
                }
                if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                    return Err(at("second TYPE for a family"));
                }
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value"))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(at("bad metric name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(mut s) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = s.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = s.find('=').ok_or_else(|| at("label without ="))?;
                let label = &s[..eq];
                if !is_label_name(label) {
                    return Err(at("bad label name"));
                }
                let body = s[eq + 1..]
                    .strip_prefix('"')
                    .ok_or_else(|| at("label value not quoted"))?;
                let (value, used) = label_value(body).ok_or_else(|| at("bad label value"))?;
                labels.push((label.to_owned(), value));
                s = &body[used..];
                if let Some(after) = s.strip_prefix(',') {
                    s = after;
                } else if !s.starts_with('}') {
                    return Err(at("expected , or } after a label"));
                }
            }
        }
        let mut fields = rest.split(' ').filter(|f| !f.is_empty());
        let value_text = fields.next().ok_or_else(|| at("no value"))?;
        if !rest.starts_with(' ') {
            return Err(at("no space before the value"));
        }
        let value = match value_text {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse::<f64>().map_err(|_| at("value is not a number"))?,
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| at("timestamp is not an integer"))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing text"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix).filter(|base| {
                    matches!(
                        types.get(*base).map(String::as_str),
                        Some("histogram" | "summary")
                    )
                })
            })
            .unwrap_or(name);
        let kind = types
            .get(family)
            .ok_or_else(|| at("sample of a family without TYPE"))?;
        if kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(at("negative counter"));
        }
        seen_samples.insert(family.to_owned());
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(samples)
}

/// A quoted label value after its opening quote: the value, and the length up to and
/// including the closing quote.
fn label_value(body: &str) -> Option<(String, usize)> {
    let mut value = String::new();
    let mut escaped = false;
    for (j, c) in body.char_indices() {
        match (escaped, c) {
            (true, 'n') => value.push('\n'),
            (true, '\\' | '"') => value.push(c),
            (true, _) => return None,
            (false, '\\') => {
                escaped = true;
                continue;
            }
            (false, '"') => return Some((value, j + 1)),
            (false, c) => value.push(c),
        }
        escaped = false;
    }
    None
}
