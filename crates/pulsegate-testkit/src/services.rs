//! Real NATS (with JetStream) and Redis servers for tests: each on a free
//! loopback port with its own temporary data directory, killed and cleaned
//! up when the guard drops. `stop` and `start_again` (same port, same data)
//! let tests simulate an outage.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within 15 s");
}

/// Which server a [`Service`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `nats-server -js`.
    Nats,
    /// `redis-server`, no persistence.
    Redis,
}

/// A NATS or Redis server process owned by a test.
#[derive(Debug)]
pub struct Service {
    kind: Kind,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Service {
    /// Starts `nats-server` with JetStream on a free port.
    pub fn nats() -> Service {
        Self::start(Kind::Nats)
    }

    /// Starts `redis-server` on a free port.
    pub fn redis() -> Service {
        Self::start(Kind::Redis)
    }

    fn start(kind: Kind) -> Service {
        let mut s = Service {
            kind,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        s.start_again();
        s
    }

    /// The client URL: `nats://127.0.0.1:PORT` or `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// (Re)starts the process on the same port and data directory.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let port = self.port.to_string();
        let dir = self.data_dir();
        let mut cmd = match self.kind {
            Kind::Nats => {
                let mut c = Command::new("nats-server");
                c.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
                    .arg(&dir);
                c
            }
            Kind::Redis => {
                let mut c = Command::new("redis-server");
                c.args([
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &port,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--protected-mode",
                    "no",
                ])
                .arg("--dir")
                .arg(&dir);
                c
            }
        };
        let log = std::fs::File::create(dir.join("server.log")).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?} (is it installed?): {e}", self.kind));
        self.child = Some(child);
        wait_listening(self.port, &format!("{:?}", self.kind));
        if self.kind == Kind::Nats {
            // The port opens before JetStream has recovered its store.
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Kills the process (SIGKILL) and waits for it; the data directory stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}
