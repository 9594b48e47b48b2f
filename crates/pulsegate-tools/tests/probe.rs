//! `pulsegate probe` against a real server on `127.0.0.1:0`, and against the
//! things that go wrong in front of one: a "proxy" that refuses the upgrade,
//! a relay that adds 50 ms to every chunk, a relay that cuts connections
//! after a second, a TLS server (resumption measured), and servers that need
//! a token (`auth.mode = "jwt"`) or an allowed Origin, directly and behind a
//! gateway that refuses upgrades without them (`--token`, `--origin`,
//! `--header`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use pulsegate_server::config::{AuthMode, Secret};
use pulsegate_testkit::TestServer;
use pulsegate_tools::probe::{self, Level, ProbeOptions, StepKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

fn opts(url: String, count: usize) -> ProbeOptions {
    ProbeOptions {
        count,
        timeout: Duration::from_secs(5),
        ..ProbeOptions::new(url)
    }
}

fn codes(report: &probe::ProbeReport) -> Vec<&'static str> {
    report.findings.iter().map(|f| f.code).collect()
}

#[tokio::test]
async fn healthy_server_every_step_measured_and_no_problem() {
    let server = TestServer::start().await;
    let report = probe::run(&opts(server.ws_url(), 3)).await.unwrap();

    assert!(report.is_success(), "{}", report.render_text());
    for kind in [
        StepKind::Dns,
        StepKind::TcpConnect,
        StepKind::Upgrade,
        StepKind::WsPing,
        StepKind::AppPing,
        StepKind::PubSub,
    ] {
        let step = report.step(kind).unwrap();
        assert_eq!(step.samples.len(), 3, "{kind:?}: {step:?}");
        assert!(step.error.is_none(), "{kind:?}: {step:?}");
    }
    assert!(
        report.step(StepKind::TlsFull).is_none(),
        "no TLS steps for ws://"
    );
    let upgrade = report.upgrade.as_ref().unwrap();
    assert_eq!(upgrade.status, 101);
    assert_eq!(upgrade.header("upgrade"), Some("websocket"));
    assert_eq!(report.welcome.as_ref().unwrap().node, "test");
    assert!(!report.has_problems(), "{}", report.render_text());
    assert_eq!(report.findings[0].message, "no problem found");

    let text = report.render_text();
    assert!(text.contains("pub→sub round trip"), "{text}");
    assert!(text.contains("- no problem found"), "{text}");

    let json = report.to_json();
    assert_eq!(json["ok"], true);
    assert_eq!(json["failure"], serde_json::Value::Null);
    assert_eq!(json["upgrade"]["status"], 101);
    for key in [
        "dns",
        "tcp_connect",
        "upgrade",
        "ws_ping",
        "app_ping",
        "pub_sub",
    ] {
        let step = &json["steps"][key];
        assert_eq!(step["n"], 3, "{key}: {step}");
        assert!(step["median_ms"].as_f64().unwrap() >= 0.0, "{key}: {step}");
        assert!(
            step["min_ms"].as_f64() <= step["max_ms"].as_f64(),
            "{key}: {step}"
        );
        assert_eq!(step["samples_ms"].as_array().unwrap().len(), 3);
    }
    assert_eq!(json["diagnosis"][0]["level"], "info");
    assert_eq!(json["diagnosis"][0]["code"], "no_problem");
}

/// A "proxy" that answers every request with `status` instead of upgrading.
async fn refusing_proxy(status: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "<html>no websocket here</html>";
                let resp = format!(
                    "HTTP/1.1 {status}\r\nServer: fakeproxy\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn proxy_answering_400_is_named_and_fails_the_probe() {
    let addr = refusing_proxy("400 Bad Request").await;
    let report = probe::run(&opts(format!("ws://{addr}/ws"), 2))
        .await
        .unwrap();

    assert!(!report.is_success());
    assert_eq!(
        report.failure.as_deref(),
        Some("upgrade answered 400 instead of 101")
    );
    let upgrade = report.upgrade.as_ref().unwrap();
    assert_eq!(upgrade.status, 400);
    assert_eq!(upgrade.header("server"), Some("fakeproxy"));
    assert_eq!(upgrade.body, "<html>no websocket here</html>");
    let f = &report.findings[0];
    assert_eq!((f.level, f.code), (Level::Problem, "upgrade_refused"));
    assert!(
        f.message
            .starts_with("upgrade answered 400: the proxy drops the Upgrade header"),
        "{}",
        f.message
    );
    // The steps before the upgrade were still measured.
    assert_eq!(report.step(StepKind::TcpConnect).unwrap().samples.len(), 1);
    let json = report.to_json();
    assert_eq!(json["ok"], false);
    assert_eq!(json["upgrade"]["switched"], false);
    assert_eq!(json["diagnosis"][0]["code"], "upgrade_refused");
}

#[tokio::test]
async fn proxy_answering_200_is_named() {
    let addr = refusing_proxy("200 OK").await;
    let report = probe::run(&opts(format!("ws://{addr}/ws"), 1))
        .await
        .unwrap();
    assert!(!report.is_success());
    assert!(
        report.findings[0].message.starts_with(
            "upgrade answered 200 instead of 101: something answered the request as plain HTTP"
        ),
        "{}",
        report.findings[0].message
    );
}

#[tokio::test]
async fn nothing_listening_is_a_failed_probe() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let report = probe::run(&opts(format!("ws://{addr}/ws"), 1))
        .await
        .unwrap();
    assert!(!report.is_success());
    assert_eq!(report.findings[0].code, "tcp_failed");
    assert!(report.step(StepKind::TcpConnect).unwrap().error.is_some());
}

#[tokio::test]
async fn bad_urls_are_errors() {
    for url in ["http://127.0.0.1/ws", "127.0.0.1:8080"] {
        let e = probe::run(&ProbeOptions::new(url)).await.unwrap_err();
        assert!(e.to_string().contains("invalid URL"), "{e}");
    }
}

/// Copies `r` to `w`, sleeping `delay` before forwarding each chunk.
async fn pipe(mut r: OwnedReadHalf, mut w: OwnedWriteHalf, delay: Duration) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}

/// A TCP relay to `upstream` that delays every chunk by `delay` and cuts
/// each connection `cut_after` after accepting it.
async fn relay(upstream: SocketAddr, delay: Duration, cut_after: Option<Duration>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let both = async {
                    tokio::join!(pipe(cr, sw, delay), pipe(sr, cw, delay));
                };
                match cut_after {
                    // Dropping both halves closes both sockets mid-stream.
                    Some(after) => {
                        let _ = tokio::time::timeout(after, both).await;
                    }
                    None => both.await,
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn delaying_relay_shows_up_as_websocket_rtt_above_tcp_rtt() {
    let server = TestServer::start().await;
    let addr = relay(server.addr, Duration::from_millis(50), None).await;
    let report = probe::run(&opts(format!("ws://{addr}/ws"), 3))
        .await
        .unwrap();

    assert!(report.is_success(), "{}", report.render_text());
    let ws = report.step(StepKind::WsPing).unwrap().median().unwrap();
    let tcp = report.step(StepKind::TcpConnect).unwrap().median().unwrap();
    assert!(
        ws >= tcp + Duration::from_millis(50),
        "ws {ws:?} tcp {tcp:?}"
    );
    let f = report
        .findings
        .iter()
        .find(|f| f.code == "ws_rtt_excess")
        .unwrap_or_else(|| panic!("{}", report.render_text()));
    assert_eq!(f.level, Level::Problem);
    assert!(f.message.starts_with("WebSocket RTT is "), "{}", f.message);
    assert!(f.message.contains("above TCP RTT"), "{}", f.message);
    // App ping and pub→sub cross the same relay: no extra excess above the WebSocket ping.
    assert!(
        !codes(&report).contains(&"app_rtt_excess"),
        "{:?}",
        codes(&report)
    );

    // The threshold is configurable: at 1 s the same relay is not flagged.
    let mut lenient = opts(format!("ws://{addr}/ws"), 2);
    lenient.thresholds.rtt_excess = Duration::from_secs(1);
    let report = probe::run(&lenient).await.unwrap();
    assert!(
        !codes(&report).contains(&"ws_rtt_excess"),
        "{:?}",
        codes(&report)
    );
}

#[tokio::test]
async fn idle_connection_cut_by_a_relay_reports_1006_after_a_second() {
    let server = TestServer::start().await;
    let addr = relay(server.addr, Duration::ZERO, Some(Duration::from_secs(1))).await;
    let mut o = opts(format!("ws://{addr}/ws"), 1);
    o.idle = Some(Duration::from_secs(3));
    let report = probe::run(&o).await.unwrap();

    assert!(report.is_success(), "{}", report.render_text());
    let idle = report.idle.as_ref().unwrap();
    let after = idle.closed_after.expect("closed");
    assert!(
        after >= Duration::from_millis(800) && after <= Duration::from_millis(2000),
        "{after:?}"
    );
    assert_eq!(idle.code, Some(1006));
    let f = report
        .findings
        .iter()
        .find(|f| f.code == "idle_closed")
        .unwrap();
    assert!(
        f.message.contains("closed after 1.0 s with 1006"),
        "{}",
        f.message
    );
    assert!(
        f.message
            .contains("set heartbeat.ping_interval below 1.0 s"),
        "{}",
        f.message
    );
    let json = report.to_json();
    assert_eq!(json["idle"]["closed"], true);
    assert_eq!(json["idle"]["code"], 1006);
}

#[tokio::test]
async fn idle_connection_left_alone_stays_open_and_answers_pings() {
    let server = TestServer::start_with(|c| {
        c.heartbeat.ping_interval = Duration::from_millis(300);
    })
    .await;
    let mut o = opts(server.ws_url(), 1);
    o.idle = Some(Duration::from_secs(1));
    let report = probe::run(&o).await.unwrap();
    let idle = report.idle.as_ref().unwrap();
    assert_eq!(idle.closed_after, None, "{idle:?}");
    assert!(idle.server_pings >= 2, "{idle:?}");
    assert!(codes(&report).contains(&"idle_ok"), "{:?}", codes(&report));
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../pulsegate-client/tests/fixtures")
        .join(name)
}

#[tokio::test]
async fn wss_times_full_and_resumed_handshakes() {
    let server = TestServer::start_with(|c| {
        c.tls.cert = Some(fixture("server.pem"));
        c.tls.key = Some(fixture("server.key"));
    })
    .await;
    let url = format!("wss://{}/ws", server.addr);
    let mut o = opts(url.clone(), 3);
    o.ca_files = vec![fixture("ca.pem")];
    let report = probe::run(&o).await.unwrap();

    assert!(report.is_success(), "{}", report.render_text());
    assert_eq!(report.step(StepKind::TlsFull).unwrap().samples.len(), 3);
    let tls = report.tls_info.as_ref().unwrap();
    assert_eq!(tls.version.as_deref(), Some("TLSv1_3"));
    assert_eq!(tls.resumption_attempts, 3);
    assert_eq!(tls.resumed, 3, "{}", report.render_text());
    assert_eq!(report.step(StepKind::TlsResumed).unwrap().samples.len(), 3);
    assert_eq!(report.step(StepKind::PubSub).unwrap().samples.len(), 3);
    assert_eq!(report.to_json()["tls_info"]["resumed"], 3);

    // Without the private CA the certificate is refused: a failed probe.
    let report = probe::run(&opts(url, 1)).await.unwrap();
    assert!(!report.is_success());
    assert_eq!(report.findings[0].code, "tls_failed");
    assert!(
        report.findings[0].message.contains("--ca-file"),
        "{}",
        report.findings[0].message
    );
}

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!!";
const ALLOWED_ORIGIN: &str = "https://app.example";

/// An HS256 token for `sub`, valid for five minutes, signed with `secret`.
fn token(secret: &str, subscribe: &[&str], publish: &[&str]) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    encode(
        &Header::default(),
        &serde_json::json!({"sub": "prober", "exp": exp, "subscribe": subscribe, "publish": publish}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A token that may use the probe's own topics (`probe/<random>`).
fn probe_token() -> String {
    token(SECRET, &["probe/#"], &["probe/#"])
}

async fn jwt_server() -> TestServer {
    TestServer::start_with(|c| {
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwt_hs256_secret = Some(Secret::new(SECRET));
    })
    .await
}

async fn origin_server() -> TestServer {
    TestServer::start_with(|c| c.server.allowed_origins = vec![ALLOWED_ORIGIN.into()]).await
}

/// The text and the JSON of a report, for "never shows the token" checks.
fn rendered(report: &probe::ProbeReport) -> String {
    format!("{}\n{}", report.render_text(), report.to_json())
}

fn finding<'a>(report: &'a probe::ProbeReport, code: &str) -> &'a probe::Finding {
    report
        .findings
        .iter()
        .find(|f| f.code == code)
        .unwrap_or_else(|| panic!("no `{code}` finding:\n{}", report.render_text()))
}

/// Request heads seen by a [`gate`].
type Heads = Arc<Mutex<Vec<String>>>;

/// A gateway in front of `upstream`, like an auth proxy or a WAF: records
/// every request head, answers `refusal` when the head lacks header
/// `required`, and relays the connection to `upstream` otherwise.
async fn gate(
    upstream: SocketAddr,
    required: &'static str,
    refusal: &'static str,
) -> (SocketAddr, Heads) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Heads::default();
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match client.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                seen.lock().unwrap().push(text.clone());
                let present = text.lines().any(|l| {
                    l.split_once(':')
                        .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(required))
                });
                if !present {
                    let body = format!("{{\"error\":\"{required} required\"}}");
                    let resp = format!(
                        "HTTP/1.1 {refusal}\r\nServer: gate\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = client.write_all(resp.as_bytes()).await;
                    let _ = client.shutdown().await;
                    return;
                }
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                if server.write_all(&head).await.is_err() {
                    return;
                }
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::join!(pipe(cr, sw, Duration::ZERO), pipe(sr, cw, Duration::ZERO));
            });
        }
    });
    (addr, heads)
}

#[tokio::test]
async fn jwt_server_probed_without_a_token_is_told_to_pass_one() {
    let server = jwt_server().await;

    // pulsegate itself lets a connection without a token upgrade (it may
    // still send an `auth` message) but refuses its subscription.
    let report = probe::run(&opts(server.ws_url(), 1)).await.unwrap();
    assert_eq!(report.upgrade.as_ref().unwrap().status, 101);
    let error = report.step(StepKind::PubSub).unwrap().error.clone();
    assert!(
        error.as_deref().unwrap_or("").contains("forbidden"),
        "{}",
        report.render_text()
    );
    let f = finding(&report, "step_failed");
    assert_eq!(f.level, Level::Problem);
    assert!(
        f.message.ends_with(
            "the server requires authentication and no token was sent: pass --token TOKEN \
             (allowing subscribe and publish on probe/#)"
        ),
        "{}",
        f.message
    );

    // A token without rights on the probe's topics: the advice changes.
    let mut o = opts(server.ws_url(), 1);
    o.token = Some(token(SECRET, &["other/#"], &["other/#"]));
    let report = probe::run(&o).await.unwrap();
    let f = finding(&report, "step_failed");
    assert!(
        f.message
            .ends_with("the token must allow subscribe and publish on probe/#"),
        "{}",
        f.message
    );

    // An auth gateway in front answers 401 to an upgrade without a token.
    let (addr, _) = gate(server.addr, "authorization", "401 Unauthorized").await;
    let report = probe::run(&opts(format!("ws://{addr}/ws"), 1))
        .await
        .unwrap();
    assert!(!report.is_success());
    assert_eq!(
        report.failure.as_deref(),
        Some("upgrade answered 401 instead of 101")
    );
    let f = &report.findings[0];
    assert_eq!((f.level, f.code), (Level::Problem, "upgrade_refused"));
    assert!(
        f.message.starts_with(
            "upgrade answered 401: the server requires authentication and no token was sent: pass --token TOKEN"
        ),
        "{}",
        f.message
    );
    assert_eq!(report.to_json()["diagnosis"][0]["code"], "upgrade_refused");
}

#[tokio::test]
async fn jwt_server_probed_with_a_token_succeeds_including_pub_sub() {
    let server = jwt_server().await;
    let t = probe_token();
    let mut o = opts(server.ws_url(), 3);
    o.token = Some(t.clone());
    let report = probe::run(&o).await.unwrap();

    assert!(report.is_success(), "{}", report.render_text());
    assert!(!report.has_problems(), "{}", report.render_text());
    assert_eq!(report.findings[0].code, "no_problem");
    let pub_sub = report.step(StepKind::PubSub).unwrap();
    assert_eq!(pub_sub.samples.len(), 3, "{pub_sub:?}");
    assert!(pub_sub.error.is_none(), "{pub_sub:?}");
    assert_eq!(report.to_json()["steps"]["pub_sub"]["n"], 3);
    let out = rendered(&report);
    assert!(!out.contains(&t), "the token is shown:\n{out}");
    assert!(!format!("{o:?}").contains(&t), "the token is in Debug");
}

#[tokio::test]
async fn token_origin_and_headers_go_on_every_upgrade() {
    let server = TestServer::start_with(|c| {
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwt_hs256_secret = Some(Secret::new(SECRET));
        c.server.allowed_origins = vec![ALLOWED_ORIGIN.into()];
    })
    .await;
    let (addr, heads) = gate(server.addr, "authorization", "401 Unauthorized").await;
    let t = probe_token();
    let mut o = opts(format!("ws://{addr}/ws"), 2);
    o.token = Some(t.clone());
    o.origin = Some(ALLOWED_ORIGIN.into());
    o.headers = vec![probe::parse_header("X-Probe-Test: yes").unwrap()];
    o.idle = Some(Duration::from_millis(300));
    let report = probe::run(&o).await.unwrap();

    assert!(report.is_success(), "{}", report.render_text());
    assert_eq!(report.step(StepKind::PubSub).unwrap().samples.len(), 2);
    let idle = report.idle.as_ref().unwrap();
    assert!(
        idle.error.is_none() && idle.closed_after.is_none(),
        "{idle:?}"
    );
    let heads = heads.lock().unwrap().clone();
    // Two measured upgrades and the idle one.
    assert_eq!(heads.len(), 3, "{heads:#?}");
    for head in &heads {
        for line in [
            format!("Authorization: Bearer {t}\r\n"),
            format!("Origin: {ALLOWED_ORIGIN}\r\n"),
            "X-Probe-Test: yes\r\n".to_owned(),
            "Sec-WebSocket-Version: 13\r\n".to_owned(),
        ] {
            assert!(head.contains(&line), "{line:?} missing from\n{head}");
        }
    }
    let out = rendered(&report);
    assert!(!out.contains(&t), "the token is shown:\n{out}");
}

#[tokio::test]
async fn a_refused_token_is_never_shown_even_when_echoed() {
    // Signed with another secret: pulsegate answers 401 itself.
    let server = jwt_server().await;
    let forged = token(
        "another-hs256-secret-of-at-least-32-bytes",
        &["probe/#"],
        &["probe/#"],
    );
    let mut o = opts(server.ws_url(), 1);
    o.token = Some(forged.clone());
    let report = probe::run(&o).await.unwrap();
    assert!(!report.is_success());
    assert_eq!(report.upgrade.as_ref().unwrap().status, 401);
    let f = &report.findings[0];
    assert_eq!(f.code, "upgrade_refused");
    // A token was sent, so no advice to send one.
    assert!(
        f.message
            .starts_with("upgrade answered 401: refused by authentication"),
        "{}",
        f.message
    );
    assert!(!f.message.contains("--token"), "{}", f.message);
    let out = rendered(&report);
    assert!(!out.contains(&forged), "the token is shown:\n{out}");

    // A server that echoes the request (Authorization included) in its refusal.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let auth = head
                .lines()
                .find_map(|l| l.strip_prefix("Authorization: "))
                .unwrap_or("")
                .to_owned();
            let resp = format!(
                "HTTP/1.1 403 Forbidden\r\nX-Seen-Authorization: {auth}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
                head.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
        }
    });
    let mut o = opts(format!("ws://{addr}/ws"), 1);
    o.token = Some(forged.clone());
    let report = probe::run(&o).await.unwrap();
    let upgrade = report.upgrade.as_ref().unwrap();
    assert_eq!(upgrade.status, 403);
    assert_eq!(upgrade.header("x-seen-authorization"), Some("Bearer ***"));
    assert!(
        upgrade.body.contains("Authorization: Bearer ***"),
        "{}",
        upgrade.body
    );
    let out = rendered(&report);
    assert!(!out.contains(&forged), "the token is shown:\n{out}");
}

#[tokio::test]
async fn origin_allow_list_needs_an_allowed_origin() {
    let server = origin_server().await;

    // A foreign Origin: pulsegate answers 403; an Origin was sent, so the
    // finding keeps its general wording.
    let mut o = opts(server.ws_url(), 1);
    o.origin = Some("https://evil.example".into());
    let report = probe::run(&o).await.unwrap();
    assert!(!report.is_success());
    let upgrade = report.upgrade.as_ref().unwrap();
    assert_eq!(upgrade.status, 403, "{}", report.render_text());
    assert!(
        upgrade.body.contains("https://evil.example"),
        "{}",
        upgrade.body
    );
    let f = &report.findings[0];
    assert_eq!(f.code, "upgrade_refused");
    assert!(
        f.message
            .contains("refused by authentication or the Origin check (server.allowed_origins)"),
        "{}",
        f.message
    );
    assert!(!f.message.contains("pass --origin"), "{}", f.message);

    // The allowed Origin: every step succeeds.
    let mut o = opts(server.ws_url(), 2);
    o.origin = Some(ALLOWED_ORIGIN.into());
    let report = probe::run(&o).await.unwrap();
    assert!(report.is_success(), "{}", report.render_text());
    assert!(!report.has_problems(), "{}", report.render_text());
    assert_eq!(report.step(StepKind::PubSub).unwrap().samples.len(), 2);

    // A gateway in front that refuses requests without an Origin with 403.
    let (addr, _) = gate(server.addr, "origin", "403 Forbidden").await;
    let report = probe::run(&opts(format!("ws://{addr}/ws"), 1))
        .await
        .unwrap();
    assert!(!report.is_success());
    assert_eq!(report.upgrade.as_ref().unwrap().status, 403);
    let f = &report.findings[0];
    assert_eq!((f.level, f.code), (Level::Problem, "upgrade_refused"));
    assert!(
        f.message
            .contains("no Origin was sent and the server may check Origin: pass --origin ORIGIN"),
        "{}",
        f.message
    );
    let mut o = opts(format!("ws://{addr}/ws"), 1);
    o.origin = Some(ALLOWED_ORIGIN.into());
    let report = probe::run(&o).await.unwrap();
    assert!(report.is_success(), "{}", report.render_text());
    assert_eq!(report.step(StepKind::PubSub).unwrap().samples.len(), 1);
}
