//! The live dashboard end to end: a real server with an admin token, some
//! traffic, and the page at `GET /dashboard` opened in headless Chromium by
//! `tests/e2e/dashboard.mjs` (playwright-core). The figures the page shows,
//! fed by the `$sys/stats` topic, must equal the server's `/api/stats`.
//!
//! Needs `node`, Chromium (`$CHROMIUM` or `/usr/bin/chromium`) and
//! `tests/e2e/node_modules`; `./scripts/test-all` installs them. When one is
//! missing the test fails and says so: it never skips silently.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pulsegate_testkit::{get_json, header_value, http, TestServer, WsClient};
use serde_json::{json, Value};
use support::{publish, recv_msg, subscribe};

/// The admin token (the config wants at least 16 characters).
const TOKEN: &str = "dash-secret-0123456789";
/// How long the browser script may take, start to JSON line.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

const SUBSCRIBERS: usize = 3;
const HTTP_PUBLISHES: u64 = 50;
const WS_PUBLISHES: u64 = 20;
/// The subscribers and the page (the publisher comes on top).
const MIN_CONNECTIONS: u64 = SUBSCRIBERS as u64 + 1;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// Checks that node, Chromium and the e2e packages are installed; panics
/// with what is missing otherwise.
fn require_browser_tools(root: &Path) {
    let hint = "run ./scripts/test-all (it installs them: `npm ci --prefix tests/e2e`; \
                Chromium from the distribution, or set CHROMIUM=/path/to/chromium)";
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`node --version` failed ({}): {}; {hint}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("node is not installed or not on PATH ({e}); {hint}"),
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).is_file(),
        "Chromium not found at {chromium}; {hint}"
    );
    let playwright = root.join("tests/e2e/node_modules/playwright-core/package.json");
    assert!(
        playwright.is_file(),
        "{} is missing; {hint}",
        playwright.display()
    );
}

/// The browser script, killed if the test ends before it does.
struct Browser {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Browser {
    /// Starts `node tests/e2e/dashboard.mjs URL OUTDIR --hold`.
    fn start(root: &Path, url: &str, outdir: &Path) -> Browser {
        let mut child = Command::new("node")
            .arg(root.join("tests/e2e/dashboard.mjs"))
            .arg(url)
            .arg(outdir)
            .arg("--hold")
            .current_dir(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start node tests/e2e/dashboard.mjs");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Browser {
            child,
            lines,
            stderr: Some(stderr),
        }
    }

    /// The script's JSON line: the figures of the settled page (which stays
    /// open until [`Browser::finish`]).
    fn figures(&mut self) -> Value {
        let deadline = Instant::now() + BROWSER_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.trim_start().starts_with('{') => {
                    return serde_json::from_str(&line).unwrap_or_else(|e| {
                        panic!("dashboard.mjs printed invalid JSON ({e}): {line}")
                    })
                }
                Ok(line) => seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "dashboard.mjs gave no result within {BROWSER_TIMEOUT:?}\nstdout: {}\nstderr:\n{}",
                        seen.join("\n"),
                        self.stderr_text()
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().expect("wait for node");
                    panic!(
                        "dashboard.mjs failed ({status})\nstdout: {}\nstderr:\n{}",
                        seen.join("\n"),
                        self.stderr_text()
                    );
                }
            }
        }
    }

    /// Closes the page (stdin EOF) and waits for the script to exit cleanly.
    fn finish(mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for node") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("dashboard.mjs did not exit after stdin closed");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "dashboard.mjs exited with {status}:\n{}",
            self.stderr_text()
        );
    }

    fn stderr_text(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls the admin API's `GET /api/topics` until `topic` is listed.
async fn wait_for_topic_rates(addr: SocketAddr, topic: &str) {
    let auth = format!("Bearer {TOKEN}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, head, body) =
            http(addr, "GET", "/api/topics", &[("Authorization", &auth)], b"").await;
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        assert_eq!(status, 200, "GET /api/topics: {head}\n{body}");
        let listed = body["topics"]
            .as_array()
            .is_some_and(|ts| ts.iter().any(|t| t["topic"] == topic));
        if listed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET /api/topics never listed {topic}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn start_server() -> TestServer {
    TestServer::start_with(|cfg| {
        cfg.admin.token = Some(TOKEN.into());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_browser_shows_the_same_figures_as_api_stats() {
    let root = workspace_root();
    require_browser_tools(&root);
    let server = start_server().await;
    let addr = server.addr;

    // Traffic: 3 subscribers on a pattern, 50 publishes over HTTP and 20
    // over WebSocket (from a connection of its own), all delivered.
    let mut subscribers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let (mut c, _) = WsClient::connect(&server.ws_url()).await;
        subscribe(&mut c, "site/+/power").await;
        subscribers.push(c);
    }
    for i in 0..HTTP_PUBLISHES {
        publish(addr, "site/a/power", json!({"w": i})).await;
    }
    let (mut publisher, _) = WsClient::connect(&server.ws_url()).await;
    for i in 0..WS_PUBLISHES {
        let reply = publisher
            .request(json!({"op": "pub", "id": i, "topic": "site/b/power", "data": {"w": i}}))
            .await;
        assert_eq!(
            (&reply["op"], &reply["id"]),
            (&json!("ok"), &json!(i)),
            "{reply}"
        );
    }
    let total = HTTP_PUBLISHES + WS_PUBLISHES;
    for c in &mut subscribers {
        for _ in 0..total {
            recv_msg(c).await;
        }
    }

    // The busiest-topics table is recomputed every few seconds: wait until
    // the server lists the traffic's topics before opening the page.
    wait_for_topic_rates(addr, "site/a/power").await;

    // The page, until its figures settle; it stays connected meanwhile.
    let outdir = root.join("target/test-output/dashboard");
    std::fs::create_dir_all(&outdir).expect("create the output directory");
    let screenshot = outdir.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let url = format!("http://{addr}/dashboard?token={TOKEN}");
    let mut browser = Browser::start(&root, &url, &outdir);
    let (browser, page) = tokio::task::spawn_blocking(move || {
        let page = browser.figures();
        (browser, page)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let (status, stats) = get_json(addr, "/api/stats").await;
    assert_eq!(status, 200, "GET /api/stats: {stats}");
    tokio::task::spawn_blocking(move || browser.finish())
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));

    let ctx = format!("\npage:  {page}\nstats: {stats}");
    assert_eq!(page["status"], "connected", "{ctx}");
    assert_eq!(page["banner"], "", "the page shows a banner{ctx}");
    assert_eq!(page["page_errors"], json!([]), "{ctx}");
    assert_eq!(page["console_errors"], json!([]), "{ctx}");
    assert!(page["seq"].as_u64().is_some_and(|s| s >= 1), "{ctx}");

    // Subscribers, publisher and the page itself.
    assert_eq!(
        page["connections"], stats["connections"],
        "connections{ctx}"
    );
    assert!(
        page["connections"]
            .as_u64()
            .is_some_and(|n| n >= MIN_CONNECTIONS),
        "connections{ctx}"
    );
    assert_eq!(page["published"], stats["published"], "published{ctx}");
    assert!(
        page["published"].as_u64().is_some_and(|n| n >= total),
        "published{ctx}"
    );
    assert_eq!(page["delivered"], stats["delivered"], "delivered{ctx}");
    assert!(
        page["delivered"]
            .as_u64()
            .is_some_and(|n| n >= total * SUBSCRIBERS as u64),
        "delivered{ctx}"
    );
    for key in ["subscriptions", "topics", "slow_consumer_disconnects"] {
        let shown = if key == "slow_consumer_disconnects" {
            &page["slow_closes"]
        } else {
            &page[key]
        };
        assert_eq!(shown, &stats[key], "{key}{ctx}");
    }
    assert!(
        page["topics_rows"].as_u64().is_some_and(|n| n >= 1),
        "topics_rows{ctx}"
    );
    assert!(
        page["conns_rows"]
            .as_u64()
            .is_some_and(|n| n >= MIN_CONNECTIONS),
        "conns_rows{ctx}"
    );
    let size = std::fs::metadata(&screenshot)
        .unwrap_or_else(|e| panic!("screenshot {}: {e}", screenshot.display()))
        .len();
    assert!(size > 0, "empty screenshot {}", screenshot.display());

    // /api/stats carries every key of the `$sys/stats` data but the two
    // tables, which name topics and client addresses and are for the admin
    // only (`$sys/stats`, `/api/topics`, `/api/connections`).
    for key in [
        "ts",
        "node",
        "uptime_s",
        "version",
        "connections",
        "subscriptions",
        "topics",
        "published",
        "delivered",
        "rates",
        "lag_ms",
        "ping_rtt_ms",
        "dropped",
        "slow_consumer_disconnects",
        "closes_last_minute",
    ] {
        assert!(
            stats.get(key).is_some(),
            "/api/stats lacks `{key}`: {stats}"
        );
    }
    drop((subscribers, publisher));
}

#[tokio::test]
async fn the_dashboard_without_the_token_is_refused_with_401() {
    let server = start_server().await;
    let (status, head, body) = http(server.addr, "GET", "/dashboard", &[], b"").await;
    assert_eq!(status, 401, "{head}\n\n{}", String::from_utf8_lossy(&body));
    let (status, head, _) = http(
        server.addr,
        "GET",
        "/dashboard?token=not-the-admin-token",
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 401, "a wrong token: {head}");

    // With the token: the page, and the HttpOnly cookie that authorises its
    // WebSocket.
    let (status, head, body) = http(
        server.addr,
        "GET",
        &format!("/dashboard?token={TOKEN}"),
        &[],
        b"",
    )
    .await;
    assert!(
        status == 200 || (300..400).contains(&status),
        "with the token: {head}"
    );
    let cookie = header_value(&head, "set-cookie").unwrap_or_default();
    assert!(
        cookie.to_ascii_lowercase().contains("httponly"),
        "with the token the server sets an HttpOnly cookie: {head}"
    );
    if status == 200 {
        let html = String::from_utf8_lossy(&body);
        assert!(
            html.contains("id=\"published\""),
            "the dashboard page: {head}"
        );
    }
}
