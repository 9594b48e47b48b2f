//! The process's own resource use, read from `/proc/self` at scrape time
//! (the standard `process_*` metrics). Linux only; elsewhere every value is 0.

/// One reading.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// Soft `RLIMIT_NOFILE`.
    pub max_fds: u64,
    /// OS threads.
    pub threads: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

/// Reads `/proc/self/{stat,limits,fd}` and `/proc/stat` (boot time).
pub fn read() -> ProcessStats {
    let mut p = ProcessStats::default();
    // Clock ticks and page size are 100 and 4096 on every Linux we run on;
    // reading them would need libc (unsafe) for two constants.
    const TICKS: f64 = 100.0;
    const PAGE: u64 = 4096;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may contain spaces), from field 3.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| {
                f.get(i - 3)
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            p.cpu_seconds = (num(14) + num(15)) as f64 / TICKS;
            p.threads = num(20);
            p.virtual_bytes = num(23);
            p.resident_bytes = num(24) * PAGE;
            let boot = std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| {
                    s.lines().find_map(|l| {
                        l.strip_prefix("btime ")
                            .map(|v| v.trim().parse::<u64>().ok())
                    })
                })
                .flatten()
                .unwrap_or(0);
            p.start_time_seconds = boot as f64 + num(22) as f64 / TICKS;
        }
    }
    p.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        p.max_fds = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
    }
    p
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_plausible_values() {
        let p = super::read();
        assert!(p.resident_bytes > 1 << 20, "{p:?}");
        assert!(p.open_fds >= 3 && p.open_fds <= p.max_fds, "{p:?}");
        assert!(p.threads >= 1, "{p:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            p.start_time_seconds > now - 3600.0 && p.start_time_seconds <= now + 1.0,
            "{p:?}"
        );
    }
}
