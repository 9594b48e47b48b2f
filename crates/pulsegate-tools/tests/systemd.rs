//! The host files under deploy/: `systemd-analyze verify` on
//! `deploy/systemd/pulsegate.service`, the unit's stop settings against the
//! server's drain, and `deploy/sysctl/99-pulsegate.conf` against what
//! `pulsegate doctor` checks.
//!
//! `systemd-analyze` must be installed (Debian package `systemd`;
//! `./scripts/test-all` installs it). Without it this test fails: it never
//! skips.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pulsegate_server::Config;
use pulsegate_tools::doctor;

const UNIT: &str = "deploy/systemd/pulsegate.service";
const SYSCTL: &str = "deploy/sysctl/99-pulsegate.conf";
/// After `server.drain_period` the server waits this much longer before it
/// closes what is left and exits (`Running::wait_drained` in server.rs).
const DRAIN_GRACE: Duration = Duration::from_secs(5);

fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `Key=value` settings of a unit (or `key = value` of a sysctl file), in
/// order, comments and section headers skipped.
fn settings(text: &str, sep: char) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with('#') && !l.starts_with(';') && !l.starts_with('[')
        })
        .filter_map(|l| l.split_once(sep))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The last value of `key` (later assignments win, as in systemd and sysctl).
fn last<'a>(settings: &'a [(String, String)], key: &str) -> Option<&'a str> {
    settings
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A systemd time span (`45s`, `1min 30s`, `90` = seconds, `500ms`).
fn parse_timespan(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        total += match unit {
            "us" | "usec" => Duration::from_micros(n),
            "ms" | "msec" => Duration::from_millis(n),
            "" | "s" | "sec" | "second" | "seconds" => Duration::from_secs(n),
            "m" | "min" | "minute" | "minutes" => Duration::from_secs(n * 60),
            "h" | "hr" | "hour" | "hours" => Duration::from_secs(n * 3600),
            _ => return None,
        };
    }
    Some(total)
}

#[test]
fn timespans_parse_like_systemd() {
    assert_eq!(parse_timespan("45s"), Some(Duration::from_secs(45)));
    assert_eq!(parse_timespan("45"), Some(Duration::from_secs(45)));
    assert_eq!(parse_timespan("1min 30s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_timespan("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_timespan("banana"), None);
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The unit stops by draining: SIGTERM, and systemd waits longer than the
/// longest drain before it sends SIGKILL.
#[test]
fn unit_stop_outlasts_the_drain() {
    let unit = settings(&repo_file(UNIT), '=');
    assert_eq!(
        last(&unit, "KillSignal"),
        Some("SIGTERM"),
        "{UNIT}: SIGTERM starts pulsegate's drain"
    );
    let stop = last(&unit, "TimeoutStopSec").unwrap_or_else(|| {
        panic!("{UNIT}: no TimeoutStopSec (systemd's default 90s is not a decision)")
    });
    let stop =
        parse_timespan(stop).unwrap_or_else(|| panic!("{UNIT}: TimeoutStopSec={stop} unparsable"));

    // The drain period the unit runs with: a PULSEGATE_SERVER__DRAIN_PERIOD
    // set in the unit, else the server's default.
    let default = Config::default().server.drain_period;
    let from_env = unit
        .iter()
        .filter(|(k, _)| k == "Environment")
        .filter_map(|(_, v)| {
            v.trim_matches('"')
                .strip_prefix("PULSEGATE_SERVER__DRAIN_PERIOD=")
        })
        .next_back()
        .map(|v| {
            parse_timespan(v).unwrap_or_else(|| panic!("{UNIT}: drain period `{v}` unparsable"))
        });
    let drain = from_env.unwrap_or(default);
    assert_eq!(
        default,
        Duration::from_secs(30),
        "docs say the default drain_period is 30s"
    );
    assert!(
        stop > drain + DRAIN_GRACE,
        "{UNIT}: TimeoutStopSec ({stop:?}) must exceed server.drain_period ({drain:?}) + {DRAIN_GRACE:?}, \
         the longest a drain takes; otherwise systemd SIGKILLs the server mid-drain"
    );

    assert_eq!(
        last(&unit, "ExecReload"),
        Some("/bin/kill -HUP $MAINPID"),
        "{UNIT}: reload = SIGHUP = TLS reload"
    );
    assert_eq!(last(&unit, "Restart"), Some("on-failure"));
    let nofile: u64 = last(&unit, "LimitNOFILE")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{UNIT}: LimitNOFILE must be a number"));
    let max_conn = Config::default().limits.max_connections as u64;
    assert!(
        nofile >= max_conn + doctor::FD_MARGIN,
        "{UNIT}: LimitNOFILE={nofile} below what doctor wants for the default limits.max_connections"
    );
    let sysctl = settings(&repo_file(SYSCTL), '=');
    let nr_open: u64 = last(&sysctl, "fs.nr_open")
        .and_then(|v| v.parse().ok())
        .expect("fs.nr_open in the sysctl file");
    assert!(
        nofile <= nr_open,
        "{UNIT}: LimitNOFILE={nofile} above fs.nr_open={nr_open}: the service would not start"
    );
    assert_eq!(
        last(&unit, "CapabilityBoundingSet"),
        Some(""),
        "{UNIT}: no capabilities unless binding below 1024"
    );
    assert_eq!(last(&unit, "AmbientCapabilities"), None);
}

/// `systemd-analyze verify` accepts the unit without a single warning.
#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let Some(analyze) = find_binary("systemd-analyze") else {
        panic!(
            "`systemd-analyze` is not installed: this test verifies {UNIT} with it. Install the \
             Debian package `systemd` (apt-get install -y systemd), or run ./scripts/test-all, \
             which installs it."
        );
    };
    // verify checks that ExecStart's binary exists and is executable, and
    // /usr/local/bin/pulsegate is not installed on a build machine: point it
    // at an executable stub in a copy of the unit. Everything else is the
    // committed file, byte for byte.
    let dir = tempfile::tempdir().expect("tempdir");
    let stub = dir.path().join("pulsegate");
    fs::write(&stub, "#!/bin/sh\nexit 0\n").expect("write stub");
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).expect("chmod stub");
    }
    let text = repo_file(UNIT);
    let exec = "ExecStart=/usr/local/bin/pulsegate ";
    assert_eq!(
        text.matches(exec).count(),
        1,
        "{UNIT}: expected `{exec}` once"
    );
    let copy = dir.path().join("pulsegate.service");
    fs::write(
        &copy,
        text.replace(exec, &format!("ExecStart={} ", stub.display())),
    )
    .expect("write unit copy");

    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", analyze.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "systemd-analyze verify {UNIT}: {}\n{stdout}{stderr}",
        out.status
    );
    // verify exits 0 even for unknown keys and unparsable values (it only
    // warns), so any output at all is a failure.
    assert!(
        out.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "systemd-analyze verify {UNIT} ({}):\n{stdout}{stderr}",
        out.status
    );
}

/// Every kernel setting `pulsegate doctor` checks is set in the sysctl file
/// to a value the doctor calls ok (for the default configuration).
#[test]
fn sysctl_file_satisfies_doctor() {
    let sysctl = settings(&repo_file(SYSCTL), '=');
    let num = |key: &str| -> u64 {
        last(&sysctl, key)
            .and_then(doctor::parse_u64)
            .unwrap_or_else(|| panic!("{SYSCTL}: {key} missing or not a number"))
    };
    assert!(num("net.core.somaxconn") >= doctor::SERVER_BACKLOG);
    assert!(num("net.ipv4.tcp_max_syn_backlog") >= doctor::SERVER_BACKLOG);
    let (lo, hi) = last(&sysctl, "net.ipv4.ip_local_port_range")
        .and_then(doctor::parse_port_range)
        .expect("ip_local_port_range");
    let ports = u64::from(hi - lo) + 1;
    assert!(
        ports >= Config::default().limits.max_connections as u64,
        "{SYSCTL}: {ports} ephemeral ports"
    );
    assert!(matches!(num("net.ipv4.tcp_tw_reuse"), 1 | 2));
    assert_eq!(
        last(&sysctl, "net.ipv4.tcp_congestion_control"),
        Some("bbr")
    );
    assert_eq!(
        last(&sysctl, "net.core.default_qdisc"),
        Some("fq"),
        "bbr wants fq pacing"
    );
    assert!(num("fs.file-max") >= num("fs.nr_open"));
    // Every key names a real sysctl on this kernel: `sysctl --system` only
    // warns about a misspelt key and goes on.
    for (key, _) in &sysctl {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        assert!(
            path.exists(),
            "{SYSCTL}: {key} is not a sysctl of this kernel ({} missing)",
            path.display()
        );
    }
}
