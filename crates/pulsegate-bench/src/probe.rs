//! Reading the server's CPU time and memory while a scenario runs.
//!
//! Two sources, in order of preference: `/proc/<pid>/{stat,status}` when the
//! user passes `--server-pid` (works for any peer server on this machine), or
//! the server's Prometheus endpoint (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`) when it exposes one. The HTTP client here
//! is a deliberately tiny HTTP/1.0 GET: one request per reading, bounded in
//! time and size, no keep-alive, no chunked encoding.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound on a `/metrics` response body.
const MAX_METRICS_BYTES: u64 = 4 * 1024 * 1024;
/// Upper bound on one `/metrics` request.
const METRICS_TIMEOUT: Duration = Duration::from_secs(2);

/// Where server readings come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerProbe {
    /// `/proc/<pid>`.
    Pid(u32),
    /// A Prometheus text endpoint, `http://host:port/path`.
    Metrics(String),
    /// No readings available.
    None,
}

impl ServerProbe {
    /// Uses `pid` if given; otherwise `metrics_url` if it answers with at
    /// least one process metric; otherwise nothing.
    pub async fn detect(pid: Option<u32>, metrics_url: &str) -> Self {
        if let Some(pid) = pid {
            return Self::Pid(pid);
        }
        match http_get(metrics_url).await {
            Ok(body)
                if parse_prometheus_value(&body, "process_cpu_seconds_total").is_some()
                    || parse_prometheus_value(&body, "process_resident_memory_bytes").is_some() =>
            {
                Self::Metrics(metrics_url.to_owned())
            }
            _ => Self::None,
        }
    }

    /// Human description for reports: `pid 1234`, `http://…/metrics`, `none`.
    pub fn describe(&self) -> String {
        match self {
            Self::Pid(p) => format!("pid {p}"),
            Self::Metrics(u) => u.clone(),
            Self::None => "none".to_owned(),
        }
    }

    /// Cumulative user+system CPU seconds of the server process.
    pub async fn cpu_seconds(&self) -> Option<f64> {
        match self {
            Self::Pid(pid) => proc_cpu_seconds(&format!("/proc/{pid}/stat")),
            Self::Metrics(url) => {
                let body = http_get(url).await.ok()?;
                parse_prometheus_value(&body, "process_cpu_seconds_total")
            }
            Self::None => None,
        }
    }

    /// Resident set size of the server process in bytes.
    pub async fn rss_bytes(&self) -> Option<u64> {
        match self {
            Self::Pid(pid) => {
                let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                parse_vmrss_bytes(&s)
            }
            Self::Metrics(url) => {
                let body = http_get(url).await.ok()?;
                parse_prometheus_value(&body, "process_resident_memory_bytes").map(|v| v as u64)
            }
            Self::None => None,
        }
    }
}

/// CPU seconds used so far by this (the bench) process.
pub fn self_cpu_seconds() -> Option<f64> {
    proc_cpu_seconds("/proc/self/stat")
}

fn proc_cpu_seconds(path: &str) -> Option<f64> {
    let s = std::fs::read_to_string(path).ok()?;
    let ticks = parse_proc_stat_cpu_ticks(&s)?;
    Some(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// utime + stime (fields 14 and 15 of `/proc/<pid>/stat`) in clock ticks.
/// The command name in field 2 may contain spaces and parentheses, so fields
/// are counted from the last `)`.
pub fn parse_proc_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // rest starts at field 3 (state); utime is field 14, i.e. index 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS:  12345 kB` from `/proc/<pid>/status`, in bytes.
pub fn parse_vmrss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut it = line["VmRSS:".len()..].split_ascii_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    match it.next() {
        Some("kB") | None => Some(n * 1024),
        Some(_) => None,
    }
}

/// The value of the first sample of metric `name` in Prometheus text format
/// (labels, if any, are ignored).
pub fn parse_prometheus_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let rest = if let Some(labels) = rest.strip_prefix('{') {
            &labels[labels.find('}')? + 1..]
        } else if rest.starts_with([' ', '\t']) {
            rest
        } else {
            return None; // a longer metric name sharing the prefix
        };
        rest.split_ascii_whitespace().next()?.parse().ok()
    })
}

/// `ws://host:port/anything` → `http://host:port/metrics`.
pub fn default_metrics_url(ws_url: &url::Url) -> Option<String> {
    let host = ws_url.host_str()?;
    let port = ws_url.port_or_known_default()?;
    let scheme = if ws_url.scheme() == "wss" {
        "https"
    } else {
        "http"
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    Some(format!("{scheme}://{host}:{port}/metrics"))
}

/// A bounded HTTP/1.0 GET returning the body of a 200 response.
async fn http_get(url: &str) -> anyhow::Result<String> {
    let u = url::Url::parse(url)?;
    anyhow::ensure!(
        u.scheme() == "http",
        "only http:// metrics URLs are supported"
    );
    let host = u
        .host_str()
        .ok_or_else(|| anyhow::anyhow!("metrics URL has no host"))?;
    let port = u.port_or_known_default().unwrap_or(80);
    let path = match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_owned(),
    };
    let fut = async {
        let mut s = TcpStream::connect((host.trim_matches(['[', ']']), port)).await?;
        let req =
            format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nAccept: text/plain\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.take(MAX_METRICS_BYTES).read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(METRICS_TIMEOUT, fut).await??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("malformed HTTP response from {url}"))?;
    let status = head.split_ascii_whitespace().nth(1).unwrap_or("");
    anyhow::ensure!(status == "200", "{url} answered HTTP {status}");
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_with_spaces_in_the_command_name() {
        let stat = "1234 (my (weird) srv) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 4 0 100 1000000 300 18446744073709551615";
        assert_eq!(parse_proc_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_proc_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn own_stat_parses() {
        assert!(self_cpu_seconds().is_some());
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(parse_vmrss_bytes(&own).unwrap() > 0);
    }

    #[test]
    fn vmrss_in_bytes() {
        let s = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t    7168 kB\nThreads: 1\n";
        assert_eq!(parse_vmrss_bytes(s), Some(7168 * 1024));
        assert_eq!(parse_vmrss_bytes("Name: x\n"), None);
    }

    #[test]
    fn prometheus_values() {
        let text = "# HELP process_cpu_seconds_total Total CPU.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total_extra 9\nprocess_cpu_seconds_total 12.5\nprocess_resident_memory_bytes{pid=\"1\"} 1.048576e+06 1700000000\n";
        assert_eq!(
            parse_prometheus_value(text, "process_cpu_seconds_total"),
            Some(12.5)
        );
        assert_eq!(
            parse_prometheus_value(text, "process_resident_memory_bytes"),
            Some(1_048_576.0)
        );
        assert_eq!(parse_prometheus_value(text, "nope"), None);
    }

    #[test]
    fn metrics_url_from_ws_url() {
        let u = url::Url::parse("ws://127.0.0.1:8080/ws").unwrap();
        assert_eq!(
            default_metrics_url(&u).unwrap(),
            "http://127.0.0.1:8080/metrics"
        );
        let u = url::Url::parse("ws://[::1]:9/ws").unwrap();
        assert_eq!(default_metrics_url(&u).unwrap(), "http://[::1]:9/metrics");
    }
}
