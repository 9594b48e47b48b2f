//! The committed proxy configurations, run by the real proxies: nginx with
//! `deploy/nginx/pulsegate.conf` and HAProxy with `deploy/haproxy/pulsegate.cfg`,
//! each on free loopback ports in front of two pulsegate nodes started in
//! this process. Only addresses, ports, paths and HAProxy's check interval
//! are substituted; every directive under test is the committed one.
//!
//! For each proxy: (a) the upgrade answers 101 and a subscriber receives what
//! is published over HTTP through the proxy; (b) `pulsegate probe` through the
//! proxy sees a clean upgrade and a pub→sub round trip; (d) pulsegate sees the
//! real client address (`client_ip` in the admin API), not the proxy's, and a
//! client cannot choose it with its own `X-Forwarded-For`/`Forwarded`; (c)
//! draining the node a client is on closes it with 1001 and its reconnect
//! through the proxy lands on the other node.
//!
//! nginx and HAProxy must be installed (Debian packages `nginx`, `haproxy`;
//! `./scripts/test-all` installs them). Without them this test fails: it
//! never skips.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pulsegate_server::config::Secret;
use pulsegate_testkit::{get_json, header_value, http, post_json, TestServer, WsClient};
use pulsegate_tools::probe::{self, ProbeOptions, StepKind};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const ADMIN_TOKEN: &str = "proxies-test-admin-token-0123456789";
/// Every wait in this file is bounded by this.
const WAIT: Duration = Duration::from_secs(10);
/// The client address of check (d): a second loopback address, so that it
/// differs from the proxy's 127.0.0.1 (the only trusted proxy).
const CLIENT_IP: &str = "127.0.0.2";

fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The binary `name` from PATH or the sbin directories (nginx is in
/// /usr/sbin, which a non-root PATH often lacks); fails naming the package.
fn require_binary(name: &str, package: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{name}` is not installed (looked in PATH, /usr/sbin, /usr/local/sbin, /sbin): this test runs \
         the committed proxy configuration with the real {name}. Install the Debian package \
         `{package}` (apt-get install -y {package}), or run ./scripts/test-all, which installs it."
    );
}

/// `text` with `from` replaced by `to`; `from` must occur exactly once, so a
/// change to the committed file cannot silently leave the test on defaults.
fn replace_once(text: &str, from: &str, to: &str, file: &str) -> String {
    let n = text.matches(from).count();
    assert_eq!(
        n, 1,
        "{file}: expected `{from}` exactly once (found {n}); update crates/pulsegate-tools/tests/proxies.rs"
    );
    text.replacen(from, to, 1)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A proxy process started by this test; killed (and, if the test failed,
/// its log printed) on drop.
struct Proxy {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Proxy {
    fn spawn(
        name: &'static str,
        mut cmd: Command,
        addr: SocketAddr,
        dir: tempfile::TempDir,
    ) -> Proxy {
        let log = dir.path().join(format!("{name}.log"));
        let out = fs::File::create(&log).expect("create log");
        let err = out.try_clone().expect("clone log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proxy {
            name,
            child,
            addr,
            log,
            dir,
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the proxy answers `GET /healthz` with 200 (from a node).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited with {status} at start:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if let Ok(Ok(_)) = tokio::time::timeout(WAIT, TcpStream::connect(self.addr)).await {
                let (status, _) = get_json(self.addr, "/healthz").await;
                if status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} did not answer /healthz on {} within {WAIT:?}:\n{}",
                self.name,
                self.addr,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} log ({}) ---\n{}",
                self.name,
                self.dir.path().display(),
                self.log_text()
            );
        }
    }
}

/// Two pulsegate nodes, `node-a` and `node-b`, trusting 127.0.0.1 as proxy.
async fn two_nodes() -> [(String, TestServer); 2] {
    let start = |name: &'static str| {
        TestServer::start_with(move |c| {
            c.server.trusted_proxies = vec!["127.0.0.1".into()];
            c.server.node_name = Some(name.into());
            c.server.drain_period = Duration::from_secs(1);
            c.admin.token = Some(Secret::new(ADMIN_TOKEN));
        })
    };
    [
        ("node-a".to_string(), start("node-a").await),
        ("node-b".to_string(), start("node-b").await),
    ]
}

/// nginx with the committed `deploy/nginx/pulsegate.conf` included in a
/// minimal main configuration (the committed file is an http {} snippet).
async fn start_nginx(a: SocketAddr, b: SocketAddr) -> Proxy {
    let nginx = require_binary("nginx", "nginx");
    let file = "deploy/nginx/pulsegate.conf";
    let port = free_port();
    let conf = repo_file(file);
    let conf = replace_once(
        &conf,
        "listen 80;",
        &format!("listen 127.0.0.1:{port};"),
        file,
    );
    let conf = replace_once(
        &conf,
        "server 127.0.0.1:8081 ",
        &format!("server {a} "),
        file,
    );
    let conf = replace_once(
        &conf,
        "server 127.0.0.1:8082 ",
        &format!("server {b} "),
        file,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display().to_string();
    fs::write(dir.path().join("pulsegate.conf"), conf).expect("write conf");
    // `master_process off`: one process, so killing it leaves no worker
    // behind, and it keeps the current user (no switch to `nobody`).
    let main = format!(
        "events {{ worker_connections 1024; }}\n\
         http {{\n\
         \x20   log_format up '$remote_addr \"$request\" $status upstream=$upstream_addr upstream_status=$upstream_status';\n\
         \x20   access_log {d}/access.log up;\n\
         \x20   client_body_temp_path {d}/client_body;\n\
         \x20   proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n\
         \x20   include {d}/pulsegate.conf;\n\
         }}\n"
    );
    let main_path = dir.path().join("nginx.conf");
    fs::write(&main_path, main).expect("write main conf");
    let mut cmd = Command::new(nginx);
    cmd.arg("-e")
        .arg("stderr")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&main_path)
        .arg("-g")
        .arg(format!(
            "daemon off; master_process off; pid {d}/nginx.pid; error_log stderr;"
        ));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut proxy = Proxy::spawn("nginx", cmd, addr, dir);
    proxy.wait_ready().await;
    proxy
}

/// HAProxy with the committed `deploy/haproxy/pulsegate.cfg`: ports
/// substituted, `inter 200ms` for a fast test, and without the privilege
/// drop (user, group, chroot), which needs root.
async fn start_haproxy(a: SocketAddr, b: SocketAddr) -> (Proxy, SocketAddr) {
    let haproxy = require_binary("haproxy", "haproxy");
    let file = "deploy/haproxy/pulsegate.cfg";
    let port = free_port();
    let stats_port = free_port();
    let cfg = repo_file(file);
    let cfg = replace_once(
        &cfg,
        "bind :80\n",
        &format!("bind 127.0.0.1:{port}\n"),
        file,
    );
    let cfg = replace_once(
        &cfg,
        "bind 127.0.0.1:8404\n",
        &format!("bind 127.0.0.1:{stats_port}\n"),
        file,
    );
    let cfg = replace_once(
        &cfg,
        "server node1 127.0.0.1:8081 ",
        &format!("server node-a {a} "),
        file,
    );
    let cfg = replace_once(
        &cfg,
        "server node2 127.0.0.1:8082 ",
        &format!("server node-b {b} "),
        file,
    );
    let cfg = replace_once(
        &cfg,
        "default-server inter 2s ",
        "default-server inter 200ms ",
        file,
    );
    let cfg = replace_once(&cfg, "    maxconn 100000\n", "    maxconn 1000\n", file);
    let cfg: String = cfg
        .lines()
        .filter(|l| {
            !matches!(
                l.split_whitespace().next(),
                Some("user" | "group" | "chroot")
            )
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("haproxy.cfg");
    fs::write(&path, cfg).expect("write cfg");
    let mut cmd = Command::new(haproxy);
    cmd.arg("-f").arg(&path).arg("-db");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut proxy = Proxy::spawn("haproxy", cmd, addr, dir);
    proxy.wait_ready().await;
    let stats: SocketAddr = format!("127.0.0.1:{stats_port}").parse().unwrap();
    for node in ["node-a", "node-b"] {
        wait_haproxy_status(stats, node, "UP").await;
    }
    (proxy, stats)
}

/// HAProxy's status of `server` in backend pulsegate_nodes (stats CSV).
async fn haproxy_status(stats: SocketAddr, server: &str) -> String {
    let (code, _, body) = http(stats, "GET", "/stats;csv", &[], b"").await;
    assert_eq!(code, 200, "HAProxy stats page");
    let text = String::from_utf8_lossy(&body).to_string();
    let header = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("# ");
    let col = header
        .split(',')
        .position(|c| c == "status")
        .expect("status column in stats CSV");
    text.lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"pulsegate_nodes") && f.get(1) == Some(&server))
        .and_then(|f| f.get(col).map(|s| s.to_string()))
        .unwrap_or_else(|| panic!("no server {server} in HAProxy stats:\n{text}"))
}

async fn wait_haproxy_status(stats: SocketAddr, server: &str, want: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = haproxy_status(stats, server).await;
        if status.starts_with(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "HAProxy never reported {server} {want} within {WAIT:?} (last: {status})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (a) The upgrade through the proxy is a proper 101, and a subscriber
/// behind the proxy receives a message published over HTTP through it.
/// Returns the subscriber and the node it is on.
async fn upgrade_and_fan_out(proxy: &Proxy) -> (WsClient, String) {
    let (status, head, _conn) = pulsegate_testkit::raw_upgrade(
        proxy.addr,
        "/ws",
        &[("Sec-WebSocket-Protocol", "pulsegate.v1.json")],
    )
    .await;
    assert_eq!(
        status, 101,
        "{}: upgrade through the proxy:\n{head}",
        proxy.name
    );
    assert!(
        header_value(&head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{}: 101 without Upgrade: websocket:\n{head}",
        proxy.name
    );
    assert_eq!(
        header_value(&head, "sec-websocket-accept"),
        Some(pulsegate_server::handshake::accept_key("dGhlIHNhbXBsZSBub25jZQ==").as_str()),
        "{}: Sec-WebSocket-Accept passed unchanged:\n{head}",
        proxy.name
    );

    let (mut sub, welcome) = WsClient::connect(&proxy.url()).await;
    let node = welcome["node"]
        .as_str()
        .expect("node in welcome")
        .to_string();
    let ok = sub
        .request(serde_json::json!({"op":"sub","id":1,"topic":"site/+/power"}))
        .await;
    assert_eq!(ok["op"], "ok", "{}: {ok}", proxy.name);

    let (status, reply) = post_json(proxy.addr, "/api/publish/site/a/power", r#"{"w":1520}"#).await;
    assert_eq!(
        status, 200,
        "{}: publish through the proxy: {reply}",
        proxy.name
    );
    let msg = sub.recv_json().await;
    assert_eq!(msg["op"], "msg", "{}: {msg}", proxy.name);
    assert_eq!(msg["topic"], "site/a/power");
    assert_eq!(msg["data"]["w"], 1520);
    assert_eq!(msg["seq"], reply["seq"]);
    (sub, node)
}

/// Reads one HTTP response head from `stream`, byte by byte (nothing past it).
async fn read_head(stream: &mut TcpStream, who: &str) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("response in time")
            .expect("read");
        assert!(
            n > 0,
            "{who}: closed before the end of the response head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).to_string()
}

const UPGRADE_HEADERS: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

/// (e) A client that sends a plain HTTP request and then its upgrade on the
/// same keep-alive connection still gets 101: the proxy must not pass the
/// upgrade over the upstream connection of the first request, on which
/// pulsegate's HTTP server would answer 426.
async fn upgrade_after_http_on_one_connection(proxy: &Proxy) {
    let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(proxy.addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let host = proxy.addr;
    stream
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let head = read_head(&mut stream, proxy.name).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{}: {head}", proxy.name);
    let len: usize = header_value(&head, "content-length")
        .unwrap_or_else(|| panic!("{}: /healthz without Content-Length: {head}", proxy.name))
        .parse()
        .expect("Content-Length");
    let mut body = vec![0u8; len];
    tokio::time::timeout(WAIT, stream.read_exact(&mut body))
        .await
        .expect("body in time")
        .expect("body");
    stream
        .write_all(format!("GET /ws HTTP/1.1\r\nHost: {host}\r\n{UPGRADE_HEADERS}\r\n").as_bytes())
        .await
        .expect("write");
    let head = read_head(&mut stream, proxy.name).await;
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "{}: an upgrade after a plain request on the same client connection:\n{head}",
        proxy.name
    );
}

/// (b) `pulsegate probe` through the proxy.
async fn probe_through(proxy: &Proxy) {
    let report = probe::run(&ProbeOptions {
        count: 3,
        timeout: Duration::from_secs(5),
        ..ProbeOptions::new(proxy.url())
    })
    .await
    .expect("probe options are valid");
    let text = report.render_text();
    assert!(report.is_success(), "{}: probe failed:\n{text}", proxy.name);
    let upgrade = report.upgrade.as_ref().expect("upgrade response");
    assert_eq!(upgrade.status, 101, "{}:\n{text}", proxy.name);
    assert!(
        upgrade.switched() && upgrade.problems.is_empty(),
        "{}: 101 with header problems {:?}:\n{text}",
        proxy.name,
        upgrade.problems
    );
    let pub_sub = report.step(StepKind::PubSub).expect("pub→sub step");
    assert!(
        pub_sub.error.is_none() && pub_sub.samples.len() == 3,
        "{}: pub→sub round trip not measured:\n{text}",
        proxy.name
    );
    let upgrade_findings: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.code.starts_with("upgrade"))
        .collect();
    assert!(
        upgrade_findings.is_empty(),
        "{}: upgrade problems in the diagnosis {upgrade_findings:?}:\n{text}",
        proxy.name
    );
    println!("probe through {}:\n{text}", proxy.name);
}

/// (d) An upgrade from 127.0.0.2 through the proxy shows `client_ip`
/// 127.0.0.2 in the admin API of the node it landed on, with the proxy as
/// `remote`, even though the client forged both forwarding headers.
async fn real_client_ip(proxy: &Proxy, nodes: &[(String, TestServer); 2]) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(CLIENT_IP.parse().unwrap(), 0))
        .expect("bind 127.0.0.2 (a loopback address)");
    let mut stream = tokio::time::timeout(WAIT, socket.connect(proxy.addr))
        .await
        .expect("connect in time")
        .expect("connect from 127.0.0.2");
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\n{UPGRADE_HEADERS}\
         X-Forwarded-For: 203.0.113.9\r\nForwarded: for=198.51.100.7\r\n\r\n",
        proxy.addr
    );
    stream.write_all(req.as_bytes()).await.expect("write");
    let head = read_head(&mut stream, proxy.name).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{}: {head}", proxy.name);

    let auth = format!("Bearer {ADMIN_TOKEN}");
    let mut seen = Vec::new();
    for (name, node) in nodes {
        let (status, _, body) = http(
            node.addr,
            "GET",
            "/api/connections",
            &[("Authorization", &auth)],
            b"",
        )
        .await;
        assert_eq!(status, 200, "admin API of {name}");
        let body: Value = serde_json::from_slice(&body).expect("JSON");
        for c in body["connections"].as_array().expect("connections") {
            seen.push((name.clone(), c["client_ip"].clone(), c["remote"].clone()));
        }
    }
    let ours: Vec<_> = seen.iter().filter(|(_, ip, _)| ip == CLIENT_IP).collect();
    assert_eq!(
        ours.len(),
        1,
        "{}: expected one connection with client_ip {CLIENT_IP} (forged headers ignored); all: {seen:?}",
        proxy.name
    );
    let remote: SocketAddr = ours[0].2.as_str().unwrap().parse().unwrap();
    assert_eq!(
        remote.ip(),
        "127.0.0.1".parse::<IpAddr>().unwrap(),
        "{}: the peer is the proxy",
        proxy.name
    );
    assert!(
        !seen
            .iter()
            .any(|(_, ip, _)| ip == "203.0.113.9" || ip == "198.51.100.7"),
        "{}: a forged address was believed: {seen:?}",
        proxy.name
    );
    drop(stream);
}

/// (c) Drains the node `sub` is on: `sub` gets 1001, and a new connection
/// through the proxy lands on the other node. `before_reconnect` waits for
/// the proxy to notice (HAProxy's check) or does nothing (nginx).
async fn drain_and_reconnect(
    proxy: &Proxy,
    nodes: &[(String, TestServer); 2],
    mut sub: WsClient,
    node: &str,
    before_reconnect: impl std::future::Future<Output = ()>,
) -> (u64, String) {
    let (drained, other) = if nodes[0].0 == node {
        (&nodes[0], &nodes[1])
    } else {
        (&nodes[1], &nodes[0])
    };
    assert_eq!(drained.0, node, "the client's node is one of ours");
    drained.1.running().drain();
    let (code, reason) = sub
        .recv_close(WAIT)
        .await
        .unwrap_or_else(|| panic!("{}: no close frame after the drain", proxy.name));
    assert_eq!(code, 1001, "{}: {reason}", proxy.name);
    assert!(reason.starts_with("draining"), "{}: {reason}", proxy.name);

    before_reconnect.await;
    let mut again = WsClient::connect_with(&proxy.url(), &[])
        .await
        .unwrap_or_else(|status| {
            panic!(
                "{}: the reconnect after the drain was refused with {status} instead of \
                 reaching the other node",
                proxy.name
            )
        });
    let welcome = again.recv_json().await;
    assert_eq!(
        welcome["node"], other.0,
        "{}: the reconnect must land on the node that is not draining",
        proxy.name
    );
    let pong = again.request(serde_json::json!({"op":"ping","id":7})).await;
    assert_eq!(pong["op"], "pong", "{}: {pong}", proxy.name);
    let (_, stats) = get_json(drained.1.addr, "/api/stats").await;
    let rejected = stats["rejected"].as_u64().expect("rejected");
    (rejected, other.0.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_in_front_of_two_nodes() {
    let nodes = two_nodes().await;
    let proxy = start_nginx(nodes[0].1.addr, nodes[1].1.addr).await;

    let (sub, node) = upgrade_and_fan_out(&proxy).await;
    upgrade_after_http_on_one_connection(&proxy).await;
    probe_through(&proxy).await;
    real_client_ip(&proxy, &nodes).await;

    // No active checks in open-source nginx: the refused upgrade (503
    // draining) is retried on the other node (proxy_next_upstream http_503).
    let (rejected, _) = drain_and_reconnect(&proxy, &nodes, sub, &node, async {}).await;
    assert!(
        rejected >= 1,
        "nginx should have tried the draining node first and been refused (rejected = {rejected})"
    );
    // nginx logs an upgraded request when its tunnel ends (the client of
    // drain_and_reconnect has just closed), so wait for the line.
    let deadline = Instant::now() + WAIT;
    loop {
        let access = fs::read_to_string(proxy.dir.path().join("access.log")).unwrap_or_default();
        if access
            .lines()
            .any(|l| l.contains("upstream_status=503, 101"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the access log never showed the reconnect refused with 503 by the draining node, \
             then switched by the other (upstream_status=503, 101):\n{access}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_in_front_of_two_nodes() {
    let nodes = two_nodes().await;
    let (proxy, stats) = start_haproxy(nodes[0].1.addr, nodes[1].1.addr).await;

    let (sub, node) = upgrade_and_fan_out(&proxy).await;
    upgrade_after_http_on_one_connection(&proxy).await;
    probe_through(&proxy).await;
    real_client_ip(&proxy, &nodes).await;

    // The /readyz check (503 while draining) takes the node out; the
    // reconnect then goes straight to the other node.
    let check = wait_haproxy_status(stats, &node, "DOWN");
    let (rejected, other) = drain_and_reconnect(&proxy, &nodes, sub, &node, check).await;
    assert_eq!(
        rejected, 0,
        "HAProxy should not have sent the reconnect to the draining node"
    );
    assert!(haproxy_status(stats, &other).await.starts_with("UP"));
}
