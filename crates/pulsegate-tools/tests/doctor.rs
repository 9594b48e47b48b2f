//! `pulsegate doctor` on this machine, on a fixture `/proc` with missing
//! files, and with a broken config file.

use std::path::Path;

use pulsegate_tools::doctor::{self, DoctorOptions, Status, CHECKS};

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn this_machine_gets_every_check() {
    let report = doctor::run(&DoctorOptions::default()).unwrap();
    let names: Vec<_> = report.checks.iter().map(|c| c.name).collect();
    assert_eq!(names, CHECKS);
    assert_eq!(report.check("config").unwrap().status, Status::Ok);
    assert_eq!(report.max_connections, 10_000);
    for c in &report.checks {
        assert!(!c.value.is_empty(), "{c:?}");
        if matches!(c.status, Status::Warn | Status::Fail) {
            assert!(!c.fix.is_empty(), "a warning without a fix: {c:?}");
        }
    }
    let json = report.to_json(false);
    assert_eq!(json["checks"].as_array().unwrap().len(), CHECKS.len());
    let summary = &json["summary"];
    let total: u64 = ["ok", "warn", "fail", "unknown"]
        .iter()
        .map(|k| summary[k].as_u64().unwrap())
        .sum();
    assert_eq!(total as usize, CHECKS.len());
    assert!(report.render_text(false).contains("memory"));
}

#[test]
fn fixture_proc_with_missing_files_reports_unknown_and_strict_counts_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "sys/net/core/somaxconn", "128\n");
    write(root, "sys/net/ipv4/tcp_max_syn_backlog", "8192\n");
    write(root, "sys/net/ipv4/ip_local_port_range", "32768\t60999\n");
    write(root, "sys/net/ipv4/tcp_congestion_control", "bbr\n");
    write(
        root,
        "sys/net/ipv4/tcp_available_congestion_control",
        "reno cubic bbr\n",
    );
    // tcp_tw_reuse is missing.
    write(
        root,
        "meminfo",
        "MemTotal: 16000000 kB\nMemAvailable: 8000000 kB\n",
    );
    write(
        root,
        "4242/limits",
        "Limit                     Soft Limit           Hard Limit           Units\n\
         Max open files            65536                65536                files\n",
    );
    let opts = DoctorOptions {
        proc_root: root.to_path_buf(),
        pid: Some(4242),
        ..DoctorOptions::default()
    };
    let report = doctor::run(&opts).unwrap();
    let status = |n: &str| report.check(n).unwrap().status;
    assert_eq!(status("config"), Status::Ok);
    assert_eq!(status("open_files"), Status::Ok);
    assert_eq!(
        report.check("open_files").unwrap().value,
        "65536 soft / 65536 hard"
    );
    assert_eq!(status("somaxconn"), Status::Warn);
    assert_eq!(
        report.check("somaxconn").unwrap().fix,
        [
            "sysctl -w net.core.somaxconn=4096",
            "echo 'net.core.somaxconn = 4096' | sudo tee -a /etc/sysctl.d/99-pulsegate.conf"
        ]
    );
    assert_eq!(status("tcp_max_syn_backlog"), Status::Ok);
    assert_eq!(status("ephemeral_ports"), Status::Ok);
    assert_eq!(status("congestion_control"), Status::Ok);
    assert_eq!(status("tcp_tw_reuse"), Status::Unknown);
    assert_eq!(report.check("tcp_tw_reuse").unwrap().value, "unknown");
    assert_eq!(status("memory"), Status::Ok);

    // One warning: fine without --strict, not ready with it.
    assert!(!report.failed(false));
    assert!(report.failed(true));
    assert_eq!(report.to_json(true)["ok"], false);
    assert_eq!(report.to_json(false)["ok"], true);

    // A /proc with nothing in it: every kernel check unknown, no crash, not failed.
    let empty = tempfile::tempdir().unwrap();
    let report = doctor::run(&DoctorOptions {
        proc_root: empty.path().to_path_buf(),
        pid: Some(1),
        ..DoctorOptions::default()
    })
    .unwrap();
    assert_eq!(
        report.count(Status::Unknown),
        CHECKS.len() - 1,
        "{:?}",
        report.checks
    );
    assert!(!report.failed(true));
}

#[test]
fn bad_config_fails_naming_the_key_and_fails_without_strict() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pulsegate.toml");
    std::fs::write(&file, "[limits]\nmax_conections = 5000\n").unwrap();
    let report = doctor::run(&DoctorOptions {
        config: Some(file.clone()),
        ..DoctorOptions::default()
    })
    .unwrap();
    let c = report.check("config").unwrap();
    assert_eq!(c.status, Status::Fail);
    assert!(c.value.contains("limits.max_conections"), "{}", c.value);
    assert!(
        c.value.contains("did you mean `limits.max_connections`"),
        "{}",
        c.value
    );
    assert!(report.failed(false));
    assert_eq!(
        report.checks.len(),
        CHECKS.len(),
        "the other checks still run"
    );

    std::fs::write(&file, "[limits]\nmax_connections = 0\n").unwrap();
    let report = doctor::run(&DoctorOptions {
        config: Some(file.clone()),
        ..DoctorOptions::default()
    })
    .unwrap();
    let c = report.check("config").unwrap();
    assert_eq!(c.status, Status::Fail);
    assert!(
        c.value.contains("limits.max_connections must be > 0"),
        "{}",
        c.value
    );

    // A valid file drives the numbers.
    std::fs::write(&file, "[limits]\nmax_connections = 50000\n").unwrap();
    let report = doctor::run(&DoctorOptions {
        config: Some(file),
        ..DoctorOptions::default()
    })
    .unwrap();
    assert_eq!(report.check("config").unwrap().status, Status::Ok);
    assert_eq!(report.max_connections, 50_000);
}
