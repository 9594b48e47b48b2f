//! `pulsegate doctor`: is this host ready to run pulsegate with this config?
//!
//! Each check reads one kernel or process setting (from `/proc` and
//! `getrlimit`, so no root is needed), compares it with what the configured
//! server needs, and says ok / warn / fail together with the exact commands
//! that fix it. A file that cannot be read (a container without some of
//! `/proc/sys`, another kernel) gives `unknown`, never an error: the doctor
//! must work on the hosts that most need it.
//!
//! What is needed follows from the config (`--config FILE`, loaded with
//! [`Config::load`] exactly as `serve` would, environment included):
//! - file descriptors: one per connection, `limits.max_connections`, plus
//!   [`FD_MARGIN`] for the listener, epoll, timers and logs;
//! - listen queues: the server listens with a backlog of 4096, which the
//!   kernel silently caps at `net.core.somaxconn`; a reconnect storm after a
//!   deploy arrives as a burst of SYNs (`net.ipv4.tcp_max_syn_backlog`);
//! - memory: see [`memory_needed`];
//! - ephemeral ports, `tcp_tw_reuse` and the congestion control matter for
//!   what runs next to the server (a proxy opening upstream connections, a
//!   load generator) and for lag over lossy links.
//!
//! The parse functions are public and pure so they are tested with fixture
//! strings; [`run`] takes the `/proc` root as an option so tests can point it
//! at a directory of fixtures.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use pulsegate_server::Config;
use serde_json::{json, Value};

use crate::table::Table;

/// Descriptors kept for the server itself on top of one per connection.
pub const FD_MARGIN: u64 = 1024;
/// Memory per connection, worst case: 10 KiB, the RSS growth per connection
/// measured with heartbeats running (docs/BENCHMARKS.md: 8.8–10.2 KB once
/// every connection has read a pong; 4.5–4.8 KB idle between heartbeats).
pub const DEFAULT_BYTES_PER_CONNECTION: u64 = 10 * 1024;
/// Share of connections assumed to have a full delivery queue at the same
/// time (slow consumers during a burst). Queued messages are shared between
/// subscribers (allocated once per message), so all queues full at once would
/// both be unlikely and overstate the memory.
pub const DEFAULT_QUEUE_FRACTION: f64 = 0.05;
/// The listen backlog the server asks for (`server.rs`), capped by somaxconn.
pub const SERVER_BACKLOG: u64 = 4096;
/// The line operators put sysctl settings in.
const SYSCTL_FILE: &str = "/etc/sysctl.d/99-pulsegate.conf";

/// What to check and against which numbers.
#[derive(Debug, Clone)]
pub struct DoctorOptions {
    /// Server config file; `None` = defaults (plus `PULSEGATE_*` environment).
    pub config: Option<PathBuf>,
    /// Where `/proc` is mounted (tests point it at fixtures).
    pub proc_root: PathBuf,
    /// Read the open-file limits of this running process
    /// (`/proc/PID/limits`) instead of this process's own (`getrlimit`).
    pub pid: Option<u32>,
    /// Memory assumed per connection. Default [`DEFAULT_BYTES_PER_CONNECTION`].
    pub bytes_per_connection: u64,
    /// Share of connections with a full queue. Default [`DEFAULT_QUEUE_FRACTION`].
    pub queue_fraction: f64,
}

impl Default for DoctorOptions {
    fn default() -> Self {
        DoctorOptions {
            config: None,
            proc_root: PathBuf::from("/proc"),
            pid: None,
            bytes_per_connection: DEFAULT_BYTES_PER_CONNECTION,
            queue_fraction: DEFAULT_QUEUE_FRACTION,
        }
    }
}

/// Unusable options (a bad config file is a failed check, not an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DoctorError {
    /// An option out of range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
}

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Fine as it is.
    Ok,
    /// The setting could not be read.
    Unknown,
    /// Works, but will hurt under load or in some setups.
    Warn,
    /// The configured server cannot work as configured here.
    Fail,
}

impl Status {
    /// `ok`, `unknown`, `warn`, `fail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Unknown => "unknown",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Stable name, e.g. `somaxconn`.
    pub name: &'static str,
    /// The outcome.
    pub status: Status,
    /// What was found, e.g. `1024 soft / 524288 hard`.
    pub value: String,
    /// Why this status: what is needed and why it matters.
    pub detail: String,
    /// Commands or config lines that fix it (empty when ok).
    pub fix: Vec<String>,
}

/// All checks, in a fixed order.
#[derive(Debug, Clone)]
pub struct DoctorReport {
    /// Where the config came from.
    pub config_source: String,
    /// `limits.max_connections` used for the checks.
    pub max_connections: u64,
    /// `delivery.queue_max_bytes` used for the checks.
    pub queue_max_bytes: u64,
    /// The checks.
    pub checks: Vec<Check>,
}

/// The names of every check, in report order.
pub const CHECKS: &[&str] = &[
    "config",
    "open_files",
    "somaxconn",
    "tcp_max_syn_backlog",
    "ephemeral_ports",
    "congestion_control",
    "tcp_tw_reuse",
    "memory",
];

impl DoctorReport {
    /// The check called `name`.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// How many checks have `status`.
    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// Whether the command should exit non-zero: any `fail`, or with
    /// `strict` any `warn` or `fail` (`unknown` never fails).
    pub fn failed(&self, strict: bool) -> bool {
        self.checks.iter().any(|c| match c.status {
            Status::Fail => true,
            Status::Warn => strict,
            Status::Ok | Status::Unknown => false,
        })
    }

    /// The report as one JSON object.
    pub fn to_json(&self, strict: bool) -> Value {
        json!({
            "config": self.config_source,
            "max_connections": self.max_connections,
            "queue_max_bytes": self.queue_max_bytes,
            "strict": strict,
            "ok": !self.failed(strict),
            "summary": {
                "ok": self.count(Status::Ok),
                "warn": self.count(Status::Warn),
                "fail": self.count(Status::Fail),
                "unknown": self.count(Status::Unknown),
            },
            "checks": self.checks.iter().map(|c| json!({
                "name": c.name,
                "status": c.status.as_str(),
                "value": c.value,
                "detail": c.detail,
                "fix": c.fix,
            })).collect::<Vec<_>>(),
        })
    }

    /// The report as a table plus the fixes, for people.
    pub fn render_text(&self, strict: bool) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "pulsegate doctor: config {} (limits.max_connections = {}, delivery.queue_max_bytes = {})\n",
            self.config_source, self.max_connections, self.queue_max_bytes
        );
        let mut t = Table::new(&["check", "status", "value"]);
        for c in &self.checks {
            t.row(vec![
                c.name.to_owned(),
                c.status.as_str().to_owned(),
                c.value.clone(),
            ]);
        }
        out.push_str(&t.render(0));
        for c in self.checks.iter().filter(|c| c.status != Status::Ok) {
            let _ = writeln!(out, "\n{} ({}): {}", c.name, c.status.as_str(), c.detail);
            for f in &c.fix {
                let _ = writeln!(out, "    {f}");
            }
        }
        let _ = writeln!(
            out,
            "\n{} ok, {} warn, {} fail, {} unknown{}",
            self.count(Status::Ok),
            self.count(Status::Warn),
            self.count(Status::Fail),
            self.count(Status::Unknown),
            if self.failed(strict) {
                if strict {
                    " — not ready (--strict: warnings count)"
                } else {
                    " — not ready"
                }
            } else {
                " — ready"
            }
        );
        out
    }
}

/// Runs every check.
pub fn run(opts: &DoctorOptions) -> Result<DoctorReport, DoctorError> {
    if !(0.0..=1.0).contains(&opts.queue_fraction) {
        return Err(DoctorError::InvalidOption(format!(
            "queue fraction must be between 0 and 1, got {}",
            opts.queue_fraction
        )));
    }
    let (config, config_check, source) = check_config(opts.config.as_deref());
    let max_conn = config.limits.max_connections as u64;
    let queue = config.delivery.queue_max_bytes as u64;
    let sys = |rel: &str| read(&opts.proc_root.join("sys").join(rel));
    let limits = match opts.pid {
        Some(pid) => read(&opts.proc_root.join(pid.to_string()).join("limits")).and_then(|t| {
            parse_limits_nofile(&t).ok_or_else(|| "no `Max open files` line".to_owned())
        }),
        None => {
            let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
            Ok((l.current, l.maximum))
        }
    };
    let checks = vec![
        config_check,
        check_open_files(limits, max_conn, opts.pid),
        check_somaxconn(sys("net/core/somaxconn")),
        check_syn_backlog(sys("net/ipv4/tcp_max_syn_backlog")),
        check_ports(sys("net/ipv4/ip_local_port_range"), max_conn),
        check_congestion(
            sys("net/ipv4/tcp_congestion_control"),
            sys("net/ipv4/tcp_available_congestion_control"),
        ),
        check_tw_reuse(sys("net/ipv4/tcp_tw_reuse")),
        check_memory(
            read(&opts.proc_root.join("meminfo")),
            max_conn,
            queue,
            opts.bytes_per_connection,
            opts.queue_fraction,
        ),
    ];
    Ok(DoctorReport {
        config_source: source,
        max_connections: max_conn,
        queue_max_bytes: queue,
        checks,
    })
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn check(
    name: &'static str,
    status: Status,
    value: String,
    detail: String,
    fix: Vec<String>,
) -> Check {
    Check {
        name,
        status,
        value,
        detail,
        fix,
    }
}

fn unknown(name: &'static str, why: String) -> Check {
    check(
        name,
        Status::Unknown,
        "unknown".into(),
        format!("{why}; check it by hand on the host that runs the server"),
        Vec::new(),
    )
}

/// `sysctl -w` for now, the `sysctl.d` line for after a reboot.
fn sysctl_fix(key: &str, value: &str) -> Vec<String> {
    let quoted = if value.contains(' ') {
        format!("\"{value}\"")
    } else {
        value.to_owned()
    };
    vec![
        format!("sysctl -w {key}={quoted}"),
        format!("echo '{key} = {value}' | sudo tee -a {SYSCTL_FILE}"),
    ]
}

fn check_config(file: Option<&Path>) -> (Config, Check, String) {
    let source = file
        .map(|f| f.display().to_string())
        .unwrap_or_else(|| "defaults (no --config)".into());
    match Config::load(file, &[]) {
        Ok(c) => {
            let value = match file {
                Some(f) => format!("{} is valid", f.display()),
                None => "built-in defaults plus PULSEGATE_* environment".into(),
            };
            (
                c,
                check(
                    "config",
                    Status::Ok,
                    value,
                    "the config loads and validates".into(),
                    vec![],
                ),
                source,
            )
        }
        Err(e) => {
            let msg = e.to_string();
            let fix = match file {
                Some(f) => vec![
                    "correct the key named above".into(),
                    format!("pulsegate check-config {} --print", f.display()),
                ],
                None => vec!["correct or unset the PULSEGATE_* variable named above".into()],
            };
            (
                Config::default(),
                check(
                    "config",
                    Status::Fail,
                    msg,
                    "the server would refuse to start; the other checks use the default config"
                        .into(),
                    fix,
                ),
                format!("{source} (invalid, defaults used)"),
            )
        }
    }
}

/// A limit value; `None` is unlimited.
fn fmt_limit(l: Option<u64>) -> String {
    l.map(|v| v.to_string())
        .unwrap_or_else(|| "unlimited".into())
}

fn check_open_files(
    limits: Result<(Option<u64>, Option<u64>), String>,
    max_conn: u64,
    pid: Option<u32>,
) -> Check {
    const NAME: &str = "open_files";
    let (soft, hard) = match limits {
        Ok(l) => l,
        Err(e) => return unknown(NAME, e),
    };
    let needed = max_conn + FD_MARGIN;
    // Suggest a round, generous number rather than the bare minimum.
    let suggest = needed.max(65_536);
    let whose = match pid {
        Some(p) => format!("process {p}"),
        None => "this shell (the server inherits the limits of whatever starts it)".into(),
    };
    let value = format!("{} soft / {} hard", fmt_limit(soft), fmt_limit(hard));
    let fits = |l: Option<u64>| l.is_none_or(|v| v >= needed);
    let need = format!(
        "limits.max_connections = {max_conn} needs {needed} open files ({max_conn} + {FD_MARGIN} margin); limits of {whose}"
    );
    let systemd = format!(
        "systemd: LimitNOFILE={suggest} in the [Service] section (systemctl edit pulsegate)"
    );
    if fits(soft) {
        check(NAME, Status::Ok, value, need, vec![])
    } else if fits(hard) {
        check(
            NAME,
            Status::Warn,
            value,
            format!("{need}: the soft limit is too low (the server does not raise it), the hard limit allows it"),
            vec![format!("ulimit -n {}", hard.map_or(suggest, |h| h.min(suggest))), systemd],
        )
    } else {
        check(
            NAME,
            Status::Fail,
            value,
            format!("{need}: even the hard limit is too low; the server would fail with EMFILE (\"Too many open files\") before reaching max_connections"),
            vec![
                systemd,
                format!("otherwise as root, /etc/security/limits.d/pulsegate.conf: `<user> soft nofile {suggest}` and `<user> hard nofile {suggest}`, then log in again"),
                format!("or lower limits.max_connections below {}", hard.unwrap_or(0).saturating_sub(FD_MARGIN)),
            ],
        )
    }
}

fn check_somaxconn(text: Result<String, String>) -> Check {
    const NAME: &str = "somaxconn";
    let v = match text
        .and_then(|t| parse_u64(&t).ok_or_else(|| format!("unexpected content `{}`", t.trim())))
    {
        Ok(v) => v,
        Err(e) => return unknown(NAME, e),
    };
    let detail = format!(
        "the server listens with a backlog of {SERVER_BACKLOG}, which the kernel caps at net.core.somaxconn; \
         a shorter accept queue drops connections during reconnect storms"
    );
    if v >= SERVER_BACKLOG {
        check(NAME, Status::Ok, v.to_string(), detail, vec![])
    } else {
        check(
            NAME,
            Status::Warn,
            v.to_string(),
            detail,
            sysctl_fix("net.core.somaxconn", &SERVER_BACKLOG.to_string()),
        )
    }
}

fn check_syn_backlog(text: Result<String, String>) -> Check {
    const NAME: &str = "tcp_max_syn_backlog";
    let v = match text
        .and_then(|t| parse_u64(&t).ok_or_else(|| format!("unexpected content `{}`", t.trim())))
    {
        Ok(v) => v,
        Err(e) => return unknown(NAME, e),
    };
    let detail = format!(
        "half-open connections the kernel queues; after a deploy every client reconnects at once \
         (want at least {SERVER_BACKLOG})"
    );
    if v >= SERVER_BACKLOG {
        check(NAME, Status::Ok, v.to_string(), detail, vec![])
    } else {
        check(
            NAME,
            Status::Warn,
            v.to_string(),
            detail,
            sysctl_fix("net.ipv4.tcp_max_syn_backlog", &SERVER_BACKLOG.to_string()),
        )
    }
}

fn check_ports(text: Result<String, String>, max_conn: u64) -> Check {
    const NAME: &str = "ephemeral_ports";
    let (lo, hi) = match text.and_then(|t| {
        parse_port_range(&t).ok_or_else(|| format!("unexpected content `{}`", t.trim()))
    }) {
        Ok(v) => v,
        Err(e) => return unknown(NAME, e),
    };
    let ports = u64::from(hi) - u64::from(lo) + 1;
    let value = format!("{lo}-{hi} ({ports} ports)");
    let detail = format!(
        "outgoing connections from one address to one server address:port can use at most {ports} ports; \
         matters for a load generator or a proxy on this host opening limits.max_connections = {max_conn} connections"
    );
    if ports >= max_conn {
        check(NAME, Status::Ok, value, detail, vec![])
    } else {
        check(
            NAME,
            Status::Warn,
            value,
            detail,
            sysctl_fix("net.ipv4.ip_local_port_range", "1024 65535"),
        )
    }
}

fn check_congestion(current: Result<String, String>, available: Result<String, String>) -> Check {
    const NAME: &str = "congestion_control";
    let current = match current {
        Ok(c) => c.trim().to_owned(),
        Err(e) => return unknown(NAME, e),
    };
    let available: Option<Vec<String>> = available
        .ok()
        .map(|a| a.split_whitespace().map(str::to_owned).collect());
    let bbr_available = available.as_ref().map(|a| a.iter().any(|c| c == "bbr"));
    let value = format!(
        "{current} (available: {})",
        available
            .as_ref()
            .map(|a| a.join(" "))
            .unwrap_or_else(|| "unknown".into())
    );
    let detail =
        "BBR keeps latency low on lossy or long links (mobile dashboards, other continents) \
                  where loss-based algorithms like cubic back off and queue";
    let mut enable = vec![
        "sysctl -w net.core.default_qdisc=fq".to_owned(),
        "sysctl -w net.ipv4.tcp_congestion_control=bbr".to_owned(),
        format!(
            "printf 'net.core.default_qdisc = fq\\nnet.ipv4.tcp_congestion_control = bbr\\n' | sudo tee -a {SYSCTL_FILE}"
        ),
    ];
    if current == "bbr" {
        check(
            NAME,
            Status::Ok,
            value,
            format!("bbr is active. {detail}"),
            vec![],
        )
    } else {
        let d = match bbr_available {
            Some(true) => format!("bbr is available but not active. {detail}"),
            Some(false) => {
                enable.insert(
                    0,
                    "modprobe tcp_bbr && echo tcp_bbr | sudo tee /etc/modules-load.d/bbr.conf"
                        .into(),
                );
                format!("bbr is not loaded. {detail}")
            }
            None => format!("bbr availability unknown. {detail}"),
        };
        check(NAME, Status::Warn, value, d, enable)
    }
}

fn check_tw_reuse(text: Result<String, String>) -> Check {
    const NAME: &str = "tcp_tw_reuse";
    let v = match text
        .and_then(|t| parse_u64(&t).ok_or_else(|| format!("unexpected content `{}`", t.trim())))
    {
        Ok(v) => v,
        Err(e) => return unknown(NAME, e),
    };
    let detail = "lets new outgoing connections reuse ports in TIME_WAIT; matters for a proxy or load \
                  generator on this host that reconnects often (the server's own accepted sockets are unaffected)";
    match v {
        1 => check(
            NAME,
            Status::Ok,
            "1 (enabled)".into(),
            detail.into(),
            vec![],
        ),
        2 => check(
            NAME,
            Status::Ok,
            "2 (loopback only, the kernel default)".into(),
            format!("{detail}; set 1 if a proxy here connects to pulsegate over the network"),
            vec![],
        ),
        _ => check(
            NAME,
            Status::Warn,
            format!("{v} (disabled)"),
            detail.into(),
            sysctl_fix("net.ipv4.tcp_tw_reuse", "1"),
        ),
    }
}

/// Memory the configured server may need, in bytes:
///
/// `max_connections × bytes_per_connection` (the connection's task, socket
/// buffers touched by heartbeats) `+ max_connections × queue_fraction ×
/// queue_max_bytes` (the share of connections whose delivery queue is full
/// at the same moment). Returns `(per-connection part, queue part)`.
pub fn memory_needed(
    max_connections: u64,
    bytes_per_connection: u64,
    queue_max_bytes: u64,
    queue_fraction: f64,
) -> (u64, u64) {
    let base = max_connections.saturating_mul(bytes_per_connection);
    let queues = (max_connections as f64 * queue_fraction * queue_max_bytes as f64) as u64;
    (base, queues)
}

fn check_memory(
    meminfo: Result<String, String>,
    max_conn: u64,
    queue: u64,
    per_conn: u64,
    fraction: f64,
) -> Check {
    const NAME: &str = "memory";
    let available = match meminfo.and_then(|t| {
        parse_mem_available(&t).ok_or_else(|| "no MemAvailable line in meminfo".to_owned())
    }) {
        Ok(v) => v,
        Err(e) => return unknown(NAME, e),
    };
    let (base, queues) = memory_needed(max_conn, per_conn, queue, fraction);
    let need = base + queues;
    let value = format!(
        "{} available, {} needed",
        fmt_bytes(available),
        fmt_bytes(need)
    );
    let detail = format!(
        "needed = {max_conn} connections × {} ({}) + {max_conn} × {:.0}% with a full queue × {} \
         (delivery.queue_max_bytes) = {} + {}",
        fmt_bytes(per_conn),
        "worst case with heartbeats, docs/BENCHMARKS.md",
        fraction * 100.0,
        fmt_bytes(queue),
        fmt_bytes(base),
        fmt_bytes(queues)
    );
    let per_conn_total = (need / max_conn.max(1)).max(1);
    let fits = available / per_conn_total;
    let fix = vec![
        format!("lower limits.max_connections to {fits} (what fits in the available memory)"),
        "or lower delivery.queue_max_bytes".into(),
        "or give the host more memory".into(),
    ];
    if available >= need {
        check(NAME, Status::Ok, value, detail, vec![])
    } else if available >= base {
        check(
            NAME,
            Status::Warn,
            value,
            format!("{detail}: the connections fit, but not the queues of slow consumers"),
            fix,
        )
    } else {
        check(
            NAME,
            Status::Fail,
            value,
            format!("{detail}: not even the connections fit"),
            fix,
        )
    }
}

/// The first integer in a `/proc/sys` file.
pub fn parse_u64(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
pub fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut it = line["MemAvailable:".len()..].split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    match it.next() {
        Some("kB") | None => n.checked_mul(1024),
        Some(_) => None,
    }
}

/// The soft and hard `Max open files` from `/proc/PID/limits`; `None`
/// inside means unlimited.
pub fn parse_limits_nofile(limits: &str) -> Option<(Option<u64>, Option<u64>)> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut it = line["Max open files".len()..].split_whitespace();
    let value = |s: &str| -> Option<Option<u64>> {
        if s == "unlimited" {
            Some(None)
        } else {
            s.parse().ok().map(Some)
        }
    };
    let soft = value(it.next()?)?;
    let hard = value(it.next()?)?;
    Some((soft, hard))
}

/// `net.ipv4.ip_local_port_range`: two numbers, low and high.
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace();
    let lo: u16 = it.next()?.parse().ok()?;
    let hi: u16 = it.next()?.parse().ok()?;
    (lo <= hi && it.next().is_none()).then_some((lo, hi))
}

/// `1.5 GiB`, `977 MiB`, `10 KiB`.
fn fmt_bytes(b: u64) -> String {
    const KIB: f64 = 1024.0;
    let v = b as f64;
    if v >= KIB * KIB * KIB {
        format!("{:.1} GiB", v / (KIB * KIB * KIB))
    } else if v >= KIB * KIB {
        format!("{:.0} MiB", v / (KIB * KIB))
    } else if v >= KIB {
        format!("{:.0} KiB", v / KIB)
    } else {
        format!("{b} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:        8029624 kB\nMemFree:          512000 kB\nMemAvailable:    4014812 kB\nBuffers:          102400 kB\n";
    const LIMITS: &str =
        "Limit                     Soft Limit           Hard Limit           Units     \n\
        Max cpu time              unlimited            unlimited            seconds   \n\
        Max open files            1024                 524288               files     \n\
        Max locked memory         8388608              8388608              bytes     \n";

    #[test]
    fn meminfo() {
        assert_eq!(parse_mem_available(MEMINFO), Some(4_014_812 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: lots kB\n"), None);
    }

    #[test]
    fn limits() {
        assert_eq!(
            parse_limits_nofile(LIMITS),
            Some((Some(1024), Some(524_288)))
        );
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_limits_nofile(unlimited), Some((None, None)));
        assert_eq!(parse_limits_nofile("Max cpu time 1 2 s\n"), None);
    }

    #[test]
    fn port_range() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("1024 65535"), Some((1024, 65535)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("32768"), None);
        assert_eq!(parse_port_range("a b"), None);
    }

    #[test]
    fn sysctl_values() {
        assert_eq!(parse_u64("4096\n"), Some(4096));
        assert_eq!(parse_u64(""), None);
    }

    #[test]
    fn memory_formula() {
        // 10,000 × 10 KiB + 10,000 × 5% × 1 MiB
        let (base, queues) = memory_needed(10_000, 10 * 1024, 1 << 20, 0.05);
        assert_eq!(base, 102_400_000);
        assert_eq!(queues, 524_288_000);
        let c = check_memory(Ok(MEMINFO.into()), 10_000, 1 << 20, 10 * 1024, 0.05);
        assert_eq!(c.status, Status::Ok, "{c:?}");
        // 100,000 connections: the connections fit (~977 MiB), the queues do not.
        let c = check_memory(Ok(MEMINFO.into()), 100_000, 1 << 20, 10 * 1024, 0.05);
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert!(
            c.fix[0].starts_with("lower limits.max_connections to "),
            "{:?}",
            c.fix
        );
        let c = check_memory(Ok(MEMINFO.into()), 1_000_000, 1 << 20, 10 * 1024, 0.05);
        assert_eq!(c.status, Status::Fail);
    }

    #[test]
    fn open_files_soft_hard() {
        let c = check_open_files(Ok((Some(1024), Some(524_288))), 10_000, None);
        assert_eq!(c.status, Status::Warn);
        assert_eq!(c.value, "1024 soft / 524288 hard");
        assert_eq!(c.fix[0], "ulimit -n 65536");
        let c = check_open_files(Ok((Some(1024), Some(4096))), 10_000, Some(7));
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.fix.iter().any(|f| f.contains("LimitNOFILE=65536")),
            "{:?}",
            c.fix
        );
        let c = check_open_files(Ok((None, None)), 10_000, None);
        assert_eq!(c.status, Status::Ok);
    }

    #[test]
    fn sysctl_checks_give_exact_fixes() {
        let c = check_somaxconn(Ok("128\n".into()));
        assert_eq!(c.status, Status::Warn);
        assert_eq!(
            c.fix,
            [
                "sysctl -w net.core.somaxconn=4096",
                "echo 'net.core.somaxconn = 4096' | sudo tee -a /etc/sysctl.d/99-pulsegate.conf"
            ]
        );
        assert_eq!(check_somaxconn(Ok("4096".into())).status, Status::Ok);
        assert_eq!(
            check_somaxconn(Err("missing".into())).status,
            Status::Unknown
        );
        let c = check_ports(Ok("50000 60000".into()), 20_000);
        assert_eq!(c.status, Status::Warn);
        assert_eq!(
            c.fix[0],
            "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\""
        );
        let c = check_congestion(Ok("cubic\n".into()), Ok("reno cubic bbr\n".into()));
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.starts_with("bbr is available but not active"));
        let c = check_congestion(Ok("bbr\n".into()), Ok("reno cubic bbr\n".into()));
        assert_eq!(c.status, Status::Ok);
        assert_eq!(check_tw_reuse(Ok("2".into())).status, Status::Ok);
        assert_eq!(check_tw_reuse(Ok("0".into())).status, Status::Warn);
    }

    #[test]
    fn bytes() {
        assert_eq!(fmt_bytes(10 * 1024), "10 KiB");
        assert_eq!(fmt_bytes(3 << 30), "3.0 GiB");
    }
}
