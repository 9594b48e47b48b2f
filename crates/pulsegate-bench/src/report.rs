//! Turning reports into output: one JSON object (`--json`) or an aligned
//! two-column table for people.

use std::fmt::{self, Display};

use serde::Serialize;

use crate::stats::LatencySummary;

/// Prints `report` to stdout as JSON or as its human table.
pub fn emit<R: Serialize + Display>(report: &R, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

/// An aligned key/value table with section headings.
pub(crate) struct Table {
    title: String,
    rows: Vec<(String, String)>,
}

impl Table {
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, key: &str, value: impl Display) -> &mut Self {
        self.rows.push((key.to_owned(), value.to_string()));
        self
    }

    /// Adds a row only when `value` is known.
    pub fn opt<T: Display>(&mut self, key: &str, value: Option<T>) -> &mut Self {
        self.row(
            key,
            value.map_or_else(|| "n/a".to_owned(), |v| v.to_string()),
        )
    }

    /// Adds a latency summary row.
    pub fn latency(&mut self, key: &str, l: &LatencySummary) -> &mut Self {
        self.row(
            key,
            format!(
                "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  ({} samples)",
                l.p50, l.p90, l.p99, l.p999, l.max, l.samples
            ),
        )
    }

    /// Adds one row per error example.
    pub fn examples(&mut self, key: &str, examples: &[String]) -> &mut Self {
        for e in examples {
            self.row(key, e);
        }
        self
    }
}

impl Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        writeln!(f, "{}", self.title)?;
        for (k, v) in &self.rows {
            writeln!(f, "  {k:<width$}  {v}")?;
        }
        Ok(())
    }
}

/// Formats a rate with thousands grouping, e.g. `98,765.4`.
pub(crate) fn grouped(x: f64) -> String {
    let neg = x < 0.0;
    let whole = x.abs().trunc() as u64;
    let frac = ((x.abs() - whole as f64) * 10.0).round() as u64;
    let (whole, frac) = if frac == 10 {
        (whole + 1, 0)
    } else {
        (whole, frac)
    };
    format!(
        "{}{}.{frac}",
        if neg { "-" } else { "" },
        grouped_int(whole)
    )
}

/// Formats a count with thousands grouping, e.g. `1,234,567`.
pub(crate) fn grouped_int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_keys() {
        let mut t = Table::new("fanout");
        t.row("a", 1).row("longer key", "x").opt::<u8>("cpu", None);
        assert_eq!(
            t.to_string(),
            "fanout\n  a           1\n  longer key  x\n  cpu         n/a\n"
        );
    }

    #[test]
    fn grouping() {
        assert_eq!(grouped(98765.43), "98,765.4");
        assert_eq!(grouped(0.96), "1.0");
        assert_eq!(grouped(1234567.0), "1,234,567.0");
        assert_eq!(grouped(-1000.0), "-1,000.0");
        assert_eq!(grouped_int(0), "0");
        assert_eq!(grouped_int(41_000_123), "41,000,123");
    }
}
