//! Harness for `tests/cluster.rs`: a backplane server (real `nats-server -js`
//! or `redis-server`, from `pulsegate-testkit`) plus pulsegate nodes that are
//! separate OS processes of the real binary.
//!
//! Each [`Node`] is a guard: it starts `pulsegate serve` on a free loopback
//! port with its stderr in a temporary file, waits until `/readyz` answers
//! 200, and SIGKILLs the process when dropped. When a test fails, every node
//! dropped while the thread panics prints its log, so the failure report
//! shows what each server did. Every wait here is bounded; nothing leaves
//! 127.0.0.1.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pulsegate_client::{ClientOptions, Connection};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

pub use pulsegate_testkit::services::{free_port, Kind, Service};

/// How long one HTTP exchange with a node may take before it counts as failed.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node may take to answer `/readyz` 200 after it was spawned
/// (a debug build on a loaded machine, plus the backplane connection).
pub const START_TIMEOUT: Duration = Duration::from_secs(45);

/// The storm test holds 10,000 sockets (the nodes it spawns inherit the limit).
pub use pulsegate_testkit::raise_nofile_limit;

/// A cluster-wide unique `cluster.prefix` for one test (letters, digits, `_`).
pub fn prefix(test: &str) -> String {
    format!("t{}_{}", std::process::id(), test.replace(['/', '-'], "_"))
}

/// Starts the backplane server of `kind` (blocking work, off the runtime).
pub async fn start_backplane(kind: Kind) -> Service {
    tokio::task::spawn_blocking(move || match kind {
        Kind::Nats => Service::nats(),
        Kind::Redis => Service::redis(),
    })
    .await
    .expect("backplane server starts")
}

/// Restarts a stopped backplane server on its port (blocking work, off the runtime).
pub async fn restart_backplane(service: Service) -> Service {
    tokio::task::spawn_blocking(move || {
        let mut service = service;
        service.start_again();
        service
    })
    .await
    .expect("backplane server restarts")
}

/// One `pulsegate serve` process.
pub struct Node {
    /// `nodeA`, `nodeB`, …: `server.node_name` and `cluster.node_name`.
    pub name: String,
    /// Where it listens (loopback).
    pub addr: SocketAddr,
    child: Option<Child>,
    log: tempfile::NamedTempFile,
}

impl Node {
    /// Spawns a node on `backplane` with a free port and waits for `/readyz` 200.
    /// `extra` are more `--set KEY=VALUE` pairs.
    pub async fn start(
        name: &str,
        backplane: &Service,
        kind: Kind,
        prefix: &str,
        extra: &[(&str, &str)],
    ) -> Node {
        // A free port can be taken by someone else before the node binds it:
        // then the node exits at once and another port is tried.
        for attempt in 1..=3 {
            let mut node = Node::spawn(name, backplane, kind, prefix, extra);
            match node.wait_ready(START_TIMEOUT).await {
                Ok(()) => return node,
                Err(why) if attempt < 3 && node.log_text().contains("in use") => {
                    eprintln!("{name}: {why}; retrying on another port");
                }
                Err(why) => {
                    node.print_log();
                    panic!("{name} did not become ready: {why}");
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn(
        name: &str,
        backplane: &Service,
        kind: Kind,
        prefix: &str,
        extra: &[(&str, &str)],
    ) -> Node {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = tempfile::Builder::new()
            .prefix(&format!("pulsegate-{name}-"))
            .suffix(".log")
            .tempfile()
            .expect("log file");
        let (backplane_name, url_key) = match kind {
            Kind::Nats => ("nats", "cluster.nats_url"),
            Kind::Redis => ("redis", "cluster.redis_url"),
        };
        let mut settings: Vec<(String, String)> = vec![
            ("server.listen".into(), addr.to_string()),
            ("server.node_name".into(), name.into()),
            ("cluster.node_name".into(), name.into()),
            ("cluster.backplane".into(), backplane_name.into()),
            (url_key.into(), backplane.url()),
            ("cluster.prefix".into(), prefix.into()),
            ("limits.handshake_rate_per_ip".into(), "0".into()),
            ("limits.max_connections_per_ip".into(), "100000".into()),
        ];
        settings.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pulsegate"));
        cmd.arg("serve");
        for (k, v) in &settings {
            cmd.arg("--set").arg(format!("{k}={v}"));
        }
        // Only the settings above: nothing from the environment of the test run.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PULSEGATE_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("log file"));
        let child = cmd.spawn().expect("spawn the pulsegate binary");
        Node {
            name: name.into(),
            addr,
            child: Some(child),
            log,
        }
    }

    /// Polls `/readyz` until 200; `Err` if the process exits or time runs out.
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("the process exited with {status}"));
            }
            let last = match http(self.addr, "GET", "/readyz", "").await {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("{status} {body}"),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!("/readyz not 200 within {limit:?}; last: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `ws://ADDR/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM (the server starts draining).
    pub fn sigterm(&self) {
        use rustix::process::{kill_process, Pid, Signal};
        let child = self.child.as_ref().expect("the node is running");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits")).expect("pid > 0");
        kill_process(pid, Signal::TERM).expect("SIGTERM delivered");
    }

    /// Waits (polling) for the process to exit by itself; its exit code.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/readyz` as (status, body), or the transport error.
    pub async fn readyz(&self) -> Result<(u16, Value), String> {
        http(self.addr, "GET", "/readyz", "").await
    }

    /// `POST /api/publish/{topic}` with `data` as the body.
    pub async fn http_publish(&self, topic: &str, data: &Value) -> Result<(u16, Value), String> {
        http(
            self.addr,
            "POST",
            &format!("/api/publish/{topic}"),
            &data.to_string(),
        )
        .await
    }

    /// A raw client connection (no reconnect).
    pub async fn connect(&self) -> Connection {
        Connection::connect(&client_options(&self.ws_url()))
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.name))
    }

    /// The node's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    fn print_log(&self) {
        let text = self.log_text();
        const MAX: usize = 48 * 1024;
        let start = text.len().saturating_sub(MAX);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        eprintln!(
            "===== log of {} ({}){} =====\n{}\n===== end of log of {} =====",
            self.name,
            self.addr,
            if start > 0 { ", last 48 KiB" } else { "" },
            &text[start..],
            self.name
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.sigkill();
        if std::thread::panicking() {
            self.print_log();
        }
    }
}

/// The backplane and the nodes of one test. Nodes are dropped (killed)
/// before the backplane.
pub struct Cluster {
    /// `nodeA`, `nodeB`, … in order.
    pub nodes: Vec<Node>,
    /// The NATS or Redis server (`None` only while a test restarts it).
    pub backplane: Option<Service>,
}

impl Cluster {
    /// Starts the backplane and `n` nodes (`nodeA`, `nodeB`, …) on it, each with `extra` settings.
    pub async fn start(kind: Kind, test: &str, n: usize, extra: &[(&str, &str)]) -> Cluster {
        raise_nofile_limit();
        let backplane = start_backplane(kind).await;
        let prefix = prefix(test);
        let mut nodes = Vec::new();
        for i in 0..n {
            let name = format!("node{}", char::from(b'A' + u8::try_from(i).unwrap()));
            nodes.push(Node::start(&name, &backplane, kind, &prefix, extra).await);
        }
        Cluster {
            nodes,
            backplane: Some(backplane),
        }
    }

    /// The backplane server.
    pub fn service(&mut self) -> &mut Service {
        self.backplane.as_mut().expect("backplane present")
    }
}

/// Client options for the tests: short backoff, generous timeouts.
pub fn client_options(url: &str) -> ClientOptions {
    ClientOptions::new(url)
        .backoff(Duration::from_millis(100), Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(15))
        .request_timeout(Duration::from_secs(20))
}

/// A minimal HTTP/1.1 exchange (`Connection: close`) bounded by
/// [`HTTP_TIMEOUT`]; returns (status, JSON body or `Null`), or why it failed
/// (a killed node refuses the connection).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, Value), String> {
    let exchange = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write to {addr}: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read from {addr}: {e}"))?;
        Ok::<Vec<u8>, String>(buf)
    };
    let buf = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{method} {path} on {addr}: no answer within {HTTP_TIMEOUT:?}"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{method} {path} on {addr}: no status line in {head:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `done` every 20 ms until it holds; panics with `what` and the
/// last `describe()` after `limit`.
pub async fn wait_until(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
    describe: impl Fn() -> String,
) {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            panic!("{what}: not reached within {limit:?}; {}", describe());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
