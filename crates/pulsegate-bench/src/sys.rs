//! Process limits the load generator needs: enough file descriptors for
//! thousands of client sockets.
//!
//! This machine's hard `RLIMIT_NOFILE` is 20000 and cannot be raised, so the
//! bench raises its soft limit to the hard one and refuses up front a
//! scenario that could not fit, instead of failing half-way with EMFILE.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// File descriptors the bench keeps for itself (stdio, epoll, timers, the
/// metrics client, publishers) on top of one per connection.
pub const FD_RESERVE: u64 = 64;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft
/// limit now in force (`u64::MAX` for unlimited).
pub fn raise_nofile_limit() -> u64 {
    let lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let raised = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return lim.maximum.unwrap_or(u64::MAX);
        }
    }
    lim.current.unwrap_or(u64::MAX)
}

/// Fails with advice when `sockets` client connections cannot fit under
/// `limit` open files.
pub fn ensure_fd_room(sockets: u64, limit: u64) -> anyhow::Result<()> {
    let needed = sockets.saturating_add(FD_RESERVE);
    anyhow::ensure!(
        needed <= limit,
        "this scenario needs about {needed} file descriptors ({sockets} sockets + {FD_RESERVE} reserve) \
         but RLIMIT_NOFILE is {limit}; lower --connections/--subscribers or raise the hard limit \
         (`ulimit -Hn`) before starting the bench"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_never_lowers_the_limit() {
        let before = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
        assert!(raise_nofile_limit() >= before);
    }

    #[test]
    fn room_check() {
        assert!(ensure_fd_room(10_000, 20_000).is_ok());
        let err = ensure_fd_room(19_990, 20_000).unwrap_err().to_string();
        assert!(err.contains("RLIMIT_NOFILE is 20000"), "{err}");
    }
}
