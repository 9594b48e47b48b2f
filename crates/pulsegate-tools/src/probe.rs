//! `pulsegate probe URL`: where, between this machine and a server, does the
//! lag come from?
//!
//! Every layer a WebSocket client crosses is timed on its own, `count` times
//! (min/median/max): DNS resolution, TCP connect, the TLS handshake (full,
//! then resumed with the session the first connection left behind), the HTTP
//! upgrade, a WebSocket ping→pong, an application `{"op":"ping"}`→`pong`, and
//! a publish that comes back through a subscription. Each layer adds its own
//! cost on top of the one below, so comparing neighbours localises a problem:
//! TCP connect time is the network round trip; a WebSocket ping much slower
//! than that points at something buffering between the two ends (a proxy, or
//! Nagle's algorithm); an application ping much slower than the WebSocket ping
//! points at a busy server; a pub→sub round trip much slower than the
//! application ping points at the delivery path.
//!
//! The upgrade is written and parsed here rather than by tokio-websockets so
//! that a refused or mangled upgrade is reported with its status, headers and
//! body instead of an opaque error: that is how a proxy that drops
//! `Upgrade`/`Connection` (400/426), answers by itself (200) or cannot reach
//! the backend (502) shows up. After a `101` the same stream is handed to
//! tokio-websockets, which also answers the server's pings during `--idle`.
//! Every upgrade the probe makes (measured, TLS resumption, `--idle`) carries
//! the same extra headers: [`ProbeOptions::token`] as `Authorization: Bearer`,
//! [`ProbeOptions::origin`] and [`ProbeOptions::headers`]. The token is never
//! shown, and is replaced by `***` where a server echoes it.
//!
//! [`run`] measures and returns a [`ProbeReport`]; [`diagnose`] (called by
//! `run`) turns the numbers into [`Finding`]s, and the report renders as a
//! table ([`ProbeReport::render_text`]) or JSON ([`ProbeReport::to_json`]).
//! Every network wait is bounded by [`ProbeOptions::timeout`].

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use pulsegate_client::ClientOptions;
use pulsegate_proto::codec::JSON_PROTOCOL;
use pulsegate_proto::{ClientFrame, Codec, Id, ServerFrame};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::HandshakeKind;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_websockets::{CloseCode, MaybeTlsStream, Message, WebSocketStream};

use crate::table::Table;

/// Default for [`ProbeOptions::count`].
pub const DEFAULT_COUNT: usize = 5;
/// Default for [`ProbeOptions::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest HTTP response head accepted from the server or proxy.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest part of a refusal's body kept for the report.
const MAX_BODY_BYTES: usize = 4096;
/// How long to wait for the body of a refused upgrade that has no
/// `Content-Length` (it may never end).
const BODY_GRACE: Duration = Duration::from_millis(300);
/// How long closing a connection politely may take before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The GUID of RFC 6455 §1.3, hashed with the key into `Sec-WebSocket-Accept`.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

type Stream = BufReader<MaybeTlsStream<TcpStream>>;
type Ws = WebSocketStream<Stream>;

/// Above which values a measurement becomes a finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thresholds {
    /// How much one layer's round trip may exceed the one below it (WebSocket
    /// ping over TCP connect, app ping over WebSocket ping, pub→sub over app
    /// ping) before it is flagged. Default 20 ms.
    pub rtt_excess: Duration,
    /// Median DNS resolution above this is flagged. Default 50 ms.
    pub dns: Duration,
    /// Median full TLS handshake above this is flagged. Default 100 ms.
    pub tls: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            rtt_excess: Duration::from_millis(20),
            dns: Duration::from_millis(50),
            tls: Duration::from_millis(100),
        }
    }
}

/// What to probe and how.
///
/// `Debug` shows the token, and the values of `Authorization`, `Cookie` and
/// `Proxy-Authorization` headers, as `***`.
#[derive(Clone)]
pub struct ProbeOptions {
    /// `ws://host:port/ws` or `wss://host/ws`.
    pub url: String,
    /// Samples per step (at least 1). Default [`DEFAULT_COUNT`].
    pub count: usize,
    /// Bound on every single network wait. Default [`DEFAULT_TIMEOUT`].
    pub timeout: Duration,
    /// Also hold an idle connection this long and report if and when it was closed.
    pub idle: Option<Duration>,
    /// When measurements become findings.
    pub thresholds: Thresholds,
    /// Extra CA certificates (PEM files) to trust for `wss://`.
    pub ca_files: Vec<PathBuf>,
    /// Sent as `Authorization: Bearer <token>` on every upgrade (a server
    /// with `auth.mode = "jwt"`). Never shown: not in the report, not in
    /// errors; where it shows up in a server's answer it is replaced by `***`.
    pub token: Option<String>,
    /// Sent as `Origin` on every upgrade (a server with `server.allowed_origins`).
    pub origin: Option<String>,
    /// More request headers for every upgrade, e.g. from [`parse_header`];
    /// checked by [`run`] like [`parse_header`] checks them.
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for ProbeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| {
                let v = if is_sensitive(n.trim()) {
                    "***"
                } else {
                    v.as_str()
                };
                (n.as_str(), v)
            })
            .collect();
        f.debug_struct("ProbeOptions")
            .field("url", &self.url)
            .field("count", &self.count)
            .field("timeout", &self.timeout)
            .field("idle", &self.idle)
            .field("thresholds", &self.thresholds)
            .field("ca_files", &self.ca_files)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("origin", &self.origin)
            .field("headers", &headers)
            .finish()
    }
}

impl ProbeOptions {
    /// Options for `url` with the defaults above.
    pub fn new(url: impl Into<String>) -> Self {
        ProbeOptions {
            url: url.into(),
            count: DEFAULT_COUNT,
            timeout: DEFAULT_TIMEOUT,
            idle: None,
            thresholds: Thresholds::default(),
            ca_files: Vec::new(),
            token: None,
            origin: None,
            headers: Vec::new(),
        }
    }
}

/// Request headers the probe writes itself; `--header` may not set them.
const RESERVED_HEADERS: [&str; 7] = [
    "Host",
    "Upgrade",
    "Connection",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Extensions",
];

/// Headers whose values are credentials: hidden like the token.
fn is_sensitive(name: &str) -> bool {
    ["authorization", "proxy-authorization", "cookie"]
        .iter()
        .any(|s| name.eq_ignore_ascii_case(s))
}

/// Parses one `--header 'Name: value'` and checks it with the rules of
/// [`run`]: a name that is an HTTP token and not one the probe writes itself
/// (Host, Upgrade, Connection, Sec-WebSocket-*), no CR, LF or NUL anywhere.
/// Spaces around the value are trimmed. Errors name the header but never
/// show its value.
pub fn parse_header(s: &str) -> Result<(String, String), ProbeError> {
    let Some((name, value)) = s.split_once(':') else {
        return Err(ProbeError::InvalidOption(
            "--header expects `Name: value`, got a header without `:`".into(),
        ));
    };
    let (name, value) = (name.trim(), value.trim_matches([' ', '\t']));
    check_header(name, value)?;
    Ok((name.to_owned(), value.to_owned()))
}

fn check_header(name: &str, value: &str) -> Result<(), ProbeError> {
    let invalid = |why: String| Err(ProbeError::InvalidOption(why));
    if name.is_empty() {
        return invalid("--header has an empty name; expected `Name: value`".into());
    }
    if name.contains(['\r', '\n']) || value.contains(['\r', '\n']) {
        return invalid(format!(
            "--header {name:?}: CR and LF are not allowed in a header name or value"
        ));
    }
    // RFC 9110 §5.6.2: a field name is a token.
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !name.chars().all(tchar) {
        return invalid(format!("--header {name:?} is not a valid header name"));
    }
    if let Some(reserved) = RESERVED_HEADERS
        .iter()
        .find(|r| r.eq_ignore_ascii_case(name))
    {
        return invalid(format!(
            "--header `{reserved}` cannot be set: the probe writes {} itself",
            RESERVED_HEADERS.join(", ")
        ));
    }
    if value.contains('\0') {
        return invalid(format!("--header `{name}`: NUL is not allowed in a value"));
    }
    Ok(())
}

/// The request headers every upgrade carries besides its own: the token as
/// `Authorization`, the `Origin`, then `--header`s, all checked.
fn request_headers(opts: &ProbeOptions) -> Result<Vec<(String, String)>, ProbeError> {
    let invalid = |why: &str| Err(ProbeError::InvalidOption(why.to_owned()));
    let named = |name: &str| {
        opts.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    let mut headers = Vec::new();
    if let Some(token) = &opts.token {
        let token = token.trim();
        if token.is_empty() {
            return invalid("--token is empty");
        }
        if token.contains(|c: char| c.is_ascii_control() || c == ' ') {
            return invalid("--token must not contain spaces or control characters (CR, LF…)");
        }
        if named("authorization") {
            return invalid(
                "--token and --header Authorization both set the Authorization header: give one",
            );
        }
        headers.push(("Authorization".to_owned(), format!("Bearer {token}")));
    }
    if let Some(origin) = &opts.origin {
        let origin = origin.trim();
        if origin.is_empty() {
            return invalid("--origin is empty");
        }
        if origin.contains(|c: char| c.is_ascii_control()) {
            return invalid("--origin must not contain control characters (CR, LF…)");
        }
        if named("origin") {
            return invalid("--origin and --header Origin both set the Origin header: give one");
        }
        headers.push(("Origin".to_owned(), origin.to_owned()));
    }
    for (name, value) in &opts.headers {
        let (name, value) = (name.trim(), value.trim_matches([' ', '\t']));
        check_header(name, value)?;
        headers.push((name.to_owned(), value.to_owned()));
    }
    Ok(headers)
}

/// What the report must never show: the token, and credentials given as
/// `--header` (the whole value and the part after an auth scheme).
fn secrets(opts: &ProbeOptions) -> Vec<String> {
    let mut out: Vec<String> = opts.token.iter().map(|t| t.trim().to_owned()).collect();
    for (_, value) in opts.headers.iter().filter(|(n, _)| is_sensitive(n.trim())) {
        let value = value.trim();
        out.push(value.to_owned());
        if let Some((_, credential)) = value.split_once(' ') {
            out.push(credential.trim().to_owned());
        }
    }
    out.retain(|s| !s.is_empty());
    // Longest first, so a value is replaced before a part of it.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

/// Why a probe could not even start (bad options). Network failures are not
/// errors: they are part of the [`ProbeReport`] (see [`ProbeReport::failure`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The URL is not `ws://` or `wss://` with a host.
    #[error(
        "invalid URL `{url}`: {reason} (expected e.g. ws://127.0.0.1:8080/ws or wss://host/ws)"
    )]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An option out of range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The TLS client configuration could not be built (e.g. an unreadable CA file).
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

/// One measured step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Resolving the host name.
    Dns,
    /// TCP connect: one network round trip, the baseline for the rest.
    TcpConnect,
    /// A full TLS handshake (no session to resume).
    TlsFull,
    /// A TLS handshake offering the session of an earlier connection.
    TlsResumed,
    /// Writing the upgrade request until the whole response head arrived.
    Upgrade,
    /// WebSocket ping frame → pong frame.
    WsPing,
    /// `{"op":"ping"}` → `{"op":"pong"}`.
    AppPing,
    /// `pub` on a probe topic → its `msg` on the same connection's subscription.
    PubSub,
}

impl StepKind {
    /// Every step, in the order they are measured and printed.
    pub const ALL: [StepKind; 8] = [
        StepKind::Dns,
        StepKind::TcpConnect,
        StepKind::TlsFull,
        StepKind::TlsResumed,
        StepKind::Upgrade,
        StepKind::WsPing,
        StepKind::AppPing,
        StepKind::PubSub,
    ];

    /// The key used in JSON.
    pub fn key(self) -> &'static str {
        match self {
            StepKind::Dns => "dns",
            StepKind::TcpConnect => "tcp_connect",
            StepKind::TlsFull => "tls_handshake",
            StepKind::TlsResumed => "tls_resumed",
            StepKind::Upgrade => "upgrade",
            StepKind::WsPing => "ws_ping",
            StepKind::AppPing => "app_ping",
            StepKind::PubSub => "pub_sub",
        }
    }

    /// The label used in the table.
    pub fn label(self) -> &'static str {
        match self {
            StepKind::Dns => "DNS resolution",
            StepKind::TcpConnect => "TCP connect (TCP RTT)",
            StepKind::TlsFull => "TLS handshake, full",
            StepKind::TlsResumed => "TLS handshake, resumed",
            StepKind::Upgrade => "HTTP upgrade",
            StepKind::WsPing => "WebSocket ping→pong",
            StepKind::AppPing => "app ping→pong",
            StepKind::PubSub => "pub→sub round trip",
        }
    }
}

/// The samples of one step, and why it stopped early if it did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// Durations measured, in order.
    pub samples: Vec<Duration>,
    /// Why the step failed or was not run to the end.
    pub error: Option<String>,
}

impl Step {
    /// Fastest sample.
    pub fn min(&self) -> Option<Duration> {
        self.samples.iter().min().copied()
    }

    /// Slowest sample.
    pub fn max(&self) -> Option<Duration> {
        self.samples.iter().max().copied()
    }

    /// Median sample (mean of the middle two for an even count).
    pub fn median(&self) -> Option<Duration> {
        let mut s = self.samples.clone();
        s.sort();
        let n = s.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(s[n / 2]),
            _ => Some((s[n / 2 - 1] + s[n / 2]) / 2),
        }
    }
}

/// The response to the upgrade request, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeResponse {
    /// HTTP status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The start of the body of a refusal (empty for `101`).
    pub body: String,
    /// What is wrong with a `101` (missing or wrong `Upgrade`, `Connection`,
    /// `Sec-WebSocket-Accept`); empty when it is a valid switch.
    pub problems: Vec<String>,
}

impl UpgradeResponse {
    /// Whether the connection switched to WebSocket correctly.
    pub fn switched(&self) -> bool {
        self.status == 101 && self.problems.is_empty()
    }

    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn check_switch(&mut self, key: &str) {
        if self.status != 101 {
            return;
        }
        let has_token = |name: &str, token: &str| {
            self.headers
                .iter()
                .filter(|(n, _)| n == name)
                .flat_map(|(_, v)| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        if !has_token("upgrade", "websocket") {
            self.problems
                .push("the 101 response lacks `Upgrade: websocket`".into());
        }
        if !has_token("connection", "upgrade") {
            self.problems
                .push("the 101 response lacks `Connection: Upgrade`".into());
        }
        let expected = accept_key(key);
        match self.header("sec-websocket-accept") {
            Some(v) if v.trim() == expected => {}
            Some(v) => self.problems.push(format!(
                "`Sec-WebSocket-Accept` is `{v}`, expected `{expected}`"
            )),
            None => self
                .problems
                .push("the 101 response lacks `Sec-WebSocket-Accept`".into()),
        }
    }
}

/// The TLS side of a `wss://` probe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// Negotiated protocol version, e.g. `TLSv1_3`.
    pub version: Option<String>,
    /// Handshakes that offered an earlier session.
    pub resumption_attempts: usize,
    /// Of those, how many the server accepted.
    pub resumed: usize,
}

/// The server's `welcome` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WelcomeInfo {
    /// Node name.
    pub node: String,
    /// Announced WebSocket ping interval (zero = never).
    pub ping_interval: Duration,
    /// The subprotocol the server chose (`None` = none, i.e. JSON).
    pub subprotocol: Option<String>,
}

/// What happened to the idle connection of `--idle`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleResult {
    /// How long it was to be held.
    pub requested: Duration,
    /// When it was closed, counted from the completed upgrade; `None` if it
    /// was still open at the end.
    pub closed_after: Option<Duration>,
    /// The close code; 1006 when the connection ended without a close frame.
    pub code: Option<u16>,
    /// The close reason, or what ended the connection.
    pub reason: String,
    /// WebSocket pings the server sent meanwhile (all answered).
    pub server_pings: u32,
    /// Set when the idle connection could not be opened at all.
    pub error: Option<String>,
}

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something to fix.
    Problem,
    /// Context for reading the numbers.
    Info,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Problem => "problem",
            Level::Info => "info",
        }
    }
}

/// One line of the diagnosis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Problem or information.
    pub level: Level,
    /// Stable machine-readable name, e.g. `ws_rtt_excess`.
    pub code: &'static str,
    /// Plain-language explanation with the numbers and what to do.
    pub message: String,
}

/// Everything a probe measured, and what it concluded.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// The URL probed.
    pub url: String,
    /// Host name from the URL.
    pub host: String,
    /// Port (explicit or the scheme's default).
    pub port: u16,
    /// Whether the URL is `wss://`.
    pub tls: bool,
    /// The address connected to (the first DNS answer).
    pub addr: Option<SocketAddr>,
    /// Samples asked for per step.
    pub count: usize,
    /// The steps that apply to this URL, in order.
    pub steps: Vec<(StepKind, Step)>,
    /// The (last) upgrade response.
    pub upgrade: Option<UpgradeResponse>,
    /// TLS details for `wss://`.
    pub tls_info: Option<TlsInfo>,
    /// The server's `welcome`.
    pub welcome: Option<WelcomeInfo>,
    /// The `--idle` hold.
    pub idle: Option<IdleResult>,
    /// The diagnosis.
    pub findings: Vec<Finding>,
    /// Set when the server could not be reached or the upgrade failed: the
    /// probe as a whole failed (non-zero exit).
    pub failure: Option<String>,
    /// Whether the upgrades carried credentials (`--token`, or an
    /// `Authorization` header): decides the advice on a 401 or a refused
    /// subscription.
    pub sent_credentials: bool,
    /// Whether the upgrades carried an `Origin` header: decides the advice on a 403.
    pub sent_origin: bool,
}

impl ProbeReport {
    fn new(target: &Target, count: usize) -> Self {
        let steps = StepKind::ALL
            .iter()
            .filter(|k| target.tls || !matches!(k, StepKind::TlsFull | StepKind::TlsResumed))
            .map(|k| (*k, Step::default()))
            .collect();
        ProbeReport {
            url: target.url.clone(),
            host: target.host.clone(),
            port: target.port,
            tls: target.tls,
            addr: None,
            count,
            steps,
            upgrade: None,
            tls_info: None,
            welcome: None,
            idle: None,
            findings: Vec::new(),
            failure: None,
            sent_credentials: target.has_header("authorization"),
            sent_origin: target.has_header("origin"),
        }
    }

    /// The step of that kind, if it applies to this URL.
    pub fn step(&self, kind: StepKind) -> Option<&Step> {
        self.steps.iter().find(|(k, _)| *k == kind).map(|(_, s)| s)
    }

    fn step_mut(&mut self, kind: StepKind) -> &mut Step {
        let i = self
            .steps
            .iter()
            .position(|(k, _)| *k == kind)
            .unwrap_or_else(|| {
                self.steps.push((kind, Step::default()));
                self.steps.len() - 1
            });
        &mut self.steps[i].1
    }

    fn record(&mut self, kind: StepKind, d: Duration) {
        self.step_mut(kind).samples.push(d);
    }

    fn fail_step(&mut self, kind: StepKind, error: String) {
        let step = self.step_mut(kind);
        if step.error.is_none() {
            step.error = Some(error);
        }
    }

    /// Replaces `secret` by `***` in everything the server or the network
    /// put into the report.
    fn redact(&mut self, secret: &str) {
        let scrub = |s: &mut String| {
            if s.contains(secret) {
                *s = s.replace(secret, "***");
            }
        };
        if let Some(u) = &mut self.upgrade {
            scrub(&mut u.reason);
            u.headers.iter_mut().for_each(|(_, v)| scrub(v));
            scrub(&mut u.body);
            u.problems.iter_mut().for_each(scrub);
        }
        for (_, step) in &mut self.steps {
            step.error.iter_mut().for_each(scrub);
        }
        self.failure.iter_mut().for_each(scrub);
        if let Some(w) = &mut self.welcome {
            scrub(&mut w.node);
        }
        if let Some(i) = &mut self.idle {
            scrub(&mut i.reason);
            i.error.iter_mut().for_each(scrub);
        }
        self.findings.iter_mut().for_each(|f| scrub(&mut f.message));
    }

    /// Whether the probe succeeded: server reached and upgrade accepted.
    pub fn is_success(&self) -> bool {
        self.failure.is_none()
    }

    /// Whether any finding is a problem.
    pub fn has_problems(&self) -> bool {
        self.findings.iter().any(|f| f.level == Level::Problem)
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> Value {
        let mut steps = serde_json::Map::new();
        for (kind, step) in &self.steps {
            steps.insert(
                kind.key().to_owned(),
                json!({
                    "n": step.samples.len(),
                    "min_ms": step.min().map(ms),
                    "median_ms": step.median().map(ms),
                    "max_ms": step.max().map(ms),
                    "samples_ms": step.samples.iter().copied().map(ms).collect::<Vec<_>>(),
                    "error": step.error,
                }),
            );
        }
        let upgrade = self.upgrade.as_ref().map(|u| {
            json!({
                "status": u.status,
                "reason": u.reason,
                "headers": u.headers.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
                "body": u.body,
                "problems": u.problems,
                "switched": u.switched(),
            })
        });
        let tls = self.tls_info.as_ref().map(|t| {
            json!({
                "version": t.version,
                "resumption_attempts": t.resumption_attempts,
                "resumed": t.resumed,
            })
        });
        let welcome = self.welcome.as_ref().map(|w| {
            json!({
                "node": w.node,
                "ping_interval_ms": w.ping_interval.as_millis() as u64,
                "subprotocol": w.subprotocol,
            })
        });
        let idle = self.idle.as_ref().map(|i| {
            json!({
                "requested_ms": ms(i.requested),
                "closed": i.closed_after.is_some(),
                "closed_after_ms": i.closed_after.map(ms),
                "code": i.code,
                "reason": i.reason,
                "server_pings": i.server_pings,
                "error": i.error,
            })
        });
        json!({
            "url": self.url,
            "host": self.host,
            "port": self.port,
            "tls": self.tls,
            "addr": self.addr.map(|a| a.to_string()),
            "count": self.count,
            "ok": self.is_success(),
            "failure": self.failure,
            "steps": steps,
            "upgrade": upgrade,
            "tls_info": tls,
            "welcome": welcome,
            "idle": idle,
            "diagnosis": self.findings.iter().map(|f| json!({
                "level": f.level.as_str(),
                "code": f.code,
                "message": f.message,
            })).collect::<Vec<_>>(),
        })
    }

    /// The report as a table followed by the diagnosis, for people.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let addr = self
            .addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unresolved".into());
        let _ = writeln!(
            out,
            "pulsegate probe {} ({addr}, {} sample{} per step)\n",
            self.url,
            self.count,
            if self.count == 1 { "" } else { "s" }
        );
        let mut t = Table::new(&["step", "min", "median", "max", "n", "note"]);
        for (kind, step) in &self.steps {
            let cell = |d: Option<Duration>| d.map(fmt_ms).unwrap_or_else(|| "-".into());
            let mut note = match kind {
                StepKind::Upgrade => self
                    .upgrade
                    .as_ref()
                    .map(|u| format!("{} {}", u.status, u.reason))
                    .unwrap_or_default(),
                StepKind::TlsFull => self
                    .tls_info
                    .as_ref()
                    .and_then(|t| t.version.clone())
                    .unwrap_or_default(),
                StepKind::TlsResumed => self
                    .tls_info
                    .as_ref()
                    .filter(|t| t.resumption_attempts > 0)
                    .map(|t| format!("{}/{} resumed", t.resumed, t.resumption_attempts))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            if let Some(e) = &step.error {
                if !note.is_empty() {
                    note.push_str("; ");
                }
                note.push_str("error: ");
                note.push_str(e);
            }
            t.row(vec![
                kind.label().to_owned(),
                cell(step.min()),
                cell(step.median()),
                cell(step.max()),
                step.samples.len().to_string(),
                note,
            ]);
        }
        if let Some(i) = &self.idle {
            let note = match (&i.error, i.closed_after) {
                (Some(e), _) => format!("error: {e}"),
                (None, Some(after)) => format!(
                    "closed after {} with {}{}",
                    fmt_secs(after),
                    i.code
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "no code".into()),
                    if i.reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", i.reason)
                    }
                ),
                (None, None) => format!(
                    "still open after {} ({} server ping{} answered)",
                    fmt_secs(i.requested),
                    i.server_pings,
                    if i.server_pings == 1 { "" } else { "s" }
                ),
            };
            t.row(vec![
                "idle hold".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                note,
            ]);
        }
        out.push_str(&t.render(0));
        if let Some(u) = &self.upgrade {
            let _ = writeln!(out, "\nupgrade response: {} {}", u.status, u.reason);
            for (n, v) in &u.headers {
                let _ = writeln!(out, "  {n}: {v}");
            }
            if !u.body.is_empty() {
                let _ = writeln!(out, "  body: {}", u.body);
            }
        }
        if let Some(w) = &self.welcome {
            let _ = writeln!(
                out,
                "welcome: node `{}`, server pings every {}, subprotocol {}",
                w.node,
                fmt_secs(w.ping_interval),
                w.subprotocol.as_deref().unwrap_or("none (JSON)")
            );
        }
        out.push_str("\ndiagnosis:\n");
        for f in &self.findings {
            let tag = match f.level {
                Level::Problem => "!",
                Level::Info => "-",
            };
            let _ = writeln!(out, "  {tag} {}", f.message);
        }
        if let Some(f) = &self.failure {
            let _ = writeln!(out, "\nFAILED: {f}");
        }
        out
    }
}

/// Probes `opts.url` and returns the report with its diagnosis.
///
/// `Err` only for unusable options; a server that cannot be reached or
/// refuses the upgrade gives `Ok` with [`ProbeReport::failure`] set, so the
/// partial measurements and the diagnosis are still available.
pub async fn run(opts: &ProbeOptions) -> Result<ProbeReport, ProbeError> {
    let mut target = Target::parse(&opts.url)?;
    // Carried by `target` into every upgrade: measured, resumption and idle.
    target.headers = request_headers(opts)?;
    if opts.count == 0 {
        return Err(ProbeError::InvalidOption(
            "--count must be at least 1".into(),
        ));
    }
    if opts.timeout.is_zero() {
        return Err(ProbeError::InvalidOption(
            "--timeout must be above zero".into(),
        ));
    }
    let tls = if target.tls {
        Some(TlsConfigs::new(opts, &target.host)?)
    } else {
        None
    };
    let mut report = ProbeReport::new(&target, opts.count);
    if let Some(ws) = connect_steps(opts, &target, tls.as_ref(), &mut report).await {
        session_steps(opts, ws, &mut report).await;
        if let (Some(tls), Some(addr)) = (&tls, report.addr) {
            resumption_steps(opts, &target, tls, addr, &mut report).await;
        }
        if let (Some(idle), Some(addr)) = (opts.idle, report.addr) {
            let cfg = tls.as_ref().map(|t| (&t.full, &t.server_name));
            report.idle = Some(hold_idle(opts, &target, cfg, addr, idle).await);
        }
    }
    // A server may echo what it refused (a proxy's error page, say).
    for secret in secrets(opts) {
        report.redact(&secret);
    }
    report.findings = diagnose(&report, &opts.thresholds);
    Ok(report)
}

/// DNS, TCP, TLS and upgrade, `count` times; returns the first connection,
/// upgraded, for the session steps. `None` (with `report.failure` set) when
/// the server cannot be reached or refuses the upgrade.
async fn connect_steps(
    opts: &ProbeOptions,
    target: &Target,
    tls: Option<&TlsConfigs>,
    report: &mut ProbeReport,
) -> Option<Ws> {
    let mut session = None;
    for i in 0..opts.count {
        let (addrs, d) = match timed(
            opts.timeout,
            tokio::net::lookup_host((target.host.as_str(), target.port)),
        )
        .await
        {
            Ok((addrs, d)) => (addrs.collect::<Vec<_>>(), d),
            Err(e) => {
                return fail(
                    report,
                    StepKind::Dns,
                    format!("cannot resolve {}: {e}", target.host),
                )
            }
        };
        if addrs.is_empty() {
            return fail(
                report,
                StepKind::Dns,
                format!("{} resolved to no address", target.host),
            );
        }
        report.record(StepKind::Dns, d);

        // Like a browser, fall back to the next address (e.g. from ::1 to
        // 127.0.0.1); the time is that of the connect that succeeded.
        let mut errors = Vec::new();
        let mut connected = None;
        for addr in report.addr.iter().copied().chain(addrs.iter().copied()) {
            match tcp_connect(addr, opts.timeout).await {
                Ok((tcp, d)) => {
                    connected = Some((tcp, d, addr));
                    break;
                }
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        let Some((tcp, d, addr)) = connected else {
            report.addr.get_or_insert(addrs[0]);
            return fail(
                report,
                StepKind::TcpConnect,
                format!("cannot connect to {}", errors.join(", ")),
            );
        };
        report.addr = Some(addr);
        report.record(StepKind::TcpConnect, d);

        let stream = match tls {
            None => MaybeTlsStream::Plain(tcp),
            Some(tls) => {
                match tls_handshake(&tls.full, &tls.server_name, tcp, opts.timeout).await {
                    Ok((stream, d, version, _)) => {
                        report.record(StepKind::TlsFull, d);
                        report.tls_info.get_or_insert_with(TlsInfo::default).version = version;
                        stream
                    }
                    Err(e) => {
                        return fail(
                            report,
                            StepKind::TlsFull,
                            format!("TLS handshake failed: {e}"),
                        )
                    }
                }
            }
        };

        let (stream, response, d) = match upgrade(stream, target, opts.timeout).await {
            Ok(v) => v,
            Err(e) => return fail(report, StepKind::Upgrade, format!("upgrade failed: {e}")),
        };
        report.record(StepKind::Upgrade, d);
        let switched = response.switched();
        let status = response.status;
        let problems = response.problems.join("; ");
        report.upgrade = Some(response);
        if !switched {
            let why = if status == 101 {
                format!("upgrade answered 101 but {problems}")
            } else {
                format!("upgrade answered {status} instead of 101")
            };
            report.fail_step(StepKind::Upgrade, why.clone());
            report.failure = Some(why);
            return None;
        }
        let ws = tokio_websockets::ClientBuilder::new().take_over(stream);
        if i == 0 {
            session = Some(ws);
        } else {
            close_quietly(ws).await;
        }
    }
    session
}

fn fail(report: &mut ProbeReport, kind: StepKind, why: String) -> Option<Ws> {
    report.fail_step(kind, why.clone());
    report.failure = Some(why);
    None
}

/// The round trips measured on one upgraded connection.
async fn session_steps(opts: &ProbeOptions, mut ws: Ws, report: &mut ProbeReport) {
    let t = opts.timeout;
    let subprotocol = report
        .upgrade
        .as_ref()
        .and_then(|u| u.header("sec-websocket-protocol"))
        .map(str::to_owned);
    match next_server_frame(&mut ws, t).await {
        Ok(ServerFrame::Welcome {
            node,
            ping_interval_ms,
            ..
        }) => {
            report.welcome = Some(WelcomeInfo {
                node,
                ping_interval: Duration::from_millis(ping_interval_ms),
                subprotocol,
            })
        }
        Ok(other) => {
            let why = format!("expected a welcome frame first, got {other:?}");
            report.fail_step(StepKind::AppPing, why.clone());
            report.fail_step(StepKind::PubSub, why);
        }
        Err(e) => {
            let why = format!("no welcome frame: {e}");
            report.fail_step(StepKind::AppPing, why.clone());
            report.fail_step(StepKind::PubSub, why);
        }
    }

    for i in 0..opts.count {
        match ws_ping(&mut ws, i as u64, t).await {
            Ok(d) => report.record(StepKind::WsPing, d),
            Err(e) => {
                report.fail_step(StepKind::WsPing, e);
                break;
            }
        }
    }
    if report.welcome.is_none() {
        close_quietly(ws).await;
        return;
    }
    let mut next_id = 1u64;
    for _ in 0..opts.count {
        let id = next_id;
        next_id += 1;
        match app_ping(&mut ws, id, t).await {
            Ok(d) => report.record(StepKind::AppPing, d),
            Err(e) => {
                report.fail_step(StepKind::AppPing, e);
                break;
            }
        }
    }
    let topic = format!("probe/{:016x}", fastrand::u64(..));
    match pub_sub(&mut ws, &topic, opts.count, &mut next_id, t).await {
        Ok(samples) => report.step_mut(StepKind::PubSub).samples = samples,
        Err((samples, e)) => {
            report.step_mut(StepKind::PubSub).samples = samples;
            report.fail_step(StepKind::PubSub, e);
        }
    }
    close_quietly(ws).await;
}

/// Full and resumed TLS handshakes on fresh connections: the first one
/// leaves a session behind (tickets arrive after the handshake, so it also
/// completes an upgrade to read them), the next `count` offer it.
async fn resumption_steps(
    opts: &ProbeOptions,
    target: &Target,
    tls: &TlsConfigs,
    addr: SocketAddr,
    report: &mut ProbeReport,
) {
    let mut info = report.tls_info.clone().unwrap_or_default();
    for i in 0..=opts.count {
        let result = async {
            let (tcp, _) = tcp_connect(addr, opts.timeout).await?;
            let (stream, d, _, kind) =
                tls_handshake(&tls.resuming, &tls.server_name, tcp, opts.timeout).await?;
            // Reading the upgrade response also processes the session tickets.
            let (stream, response, _) = upgrade(stream, target, opts.timeout).await?;
            if response.switched() {
                close_quietly(tokio_websockets::ClientBuilder::new().take_over(stream)).await;
            }
            Ok::<_, String>((d, kind))
        }
        .await;
        match result {
            Ok((d, kind)) if i > 0 => {
                info.resumption_attempts += 1;
                if kind == Some(HandshakeKind::Resumed) {
                    info.resumed += 1;
                    report.record(StepKind::TlsResumed, d);
                }
            }
            Ok(_) => {}
            Err(e) => {
                report.fail_step(StepKind::TlsResumed, e);
                break;
            }
        }
    }
    report.tls_info = Some(info);
}

/// Opens one more connection and leaves it idle for `idle`, answering
/// server pings, to see whether something in between closes it.
async fn hold_idle(
    opts: &ProbeOptions,
    target: &Target,
    tls: Option<(&Arc<rustls::ClientConfig>, &ServerName<'static>)>,
    addr: SocketAddr,
    idle: Duration,
) -> IdleResult {
    let mut result = IdleResult {
        requested: idle,
        closed_after: None,
        code: None,
        reason: String::new(),
        server_pings: 0,
        error: None,
    };
    let opened = async {
        let (tcp, _) = tcp_connect(addr, opts.timeout).await?;
        let stream = match tls {
            None => MaybeTlsStream::Plain(tcp),
            Some((cfg, name)) => tls_handshake(cfg, name, tcp, opts.timeout).await?.0,
        };
        let (stream, response, _) = upgrade(stream, target, opts.timeout).await?;
        if !response.switched() {
            return Err(format!("upgrade answered {}", response.status));
        }
        Ok(tokio_websockets::ClientBuilder::new().take_over(stream))
    }
    .await;
    let mut ws = match opened {
        Ok(ws) => ws,
        Err(e) => {
            result.error = Some(e);
            return result;
        }
    };
    let start = Instant::now();
    let deadline = start + idle;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => break,
            Ok(None) => {
                result.closed_after = Some(start.elapsed());
                result.code = Some(1006);
                result.reason = "connection ended without a close frame".into();
                return result;
            }
            Ok(Some(Err(e))) => {
                result.closed_after = Some(start.elapsed());
                result.code = Some(1006);
                result.reason = format!("no close frame: {e}");
                return result;
            }
            Ok(Some(Ok(msg))) => {
                if let Some((code, reason)) = msg.as_close() {
                    result.closed_after = Some(start.elapsed());
                    let code = u16::from(code);
                    result.code =
                        (code != u16::from(CloseCode::NO_STATUS_RECEIVED)).then_some(code);
                    result.reason = reason.to_owned();
                    // Let tokio-websockets send its close reply.
                    let _ = tokio::time::timeout(CLOSE_GRACE, ws.next()).await;
                    return result;
                }
                if msg.is_ping() {
                    result.server_pings += 1;
                }
            }
        }
    }
    close_quietly(ws).await;
    result
}

/// Turns the measurements into findings: problems first, then information;
/// "no problem found" when there is no problem.
pub fn diagnose(report: &ProbeReport, th: &Thresholds) -> Vec<Finding> {
    let mut f = Vec::new();
    let problem = |code, message| Finding {
        level: Level::Problem,
        code,
        message,
    };
    let info = |code, message| Finding {
        level: Level::Info,
        code,
        message,
    };
    let median = |k| report.step(k).and_then(Step::median);

    // Reachability.
    if let Some(e) = report.step(StepKind::Dns).and_then(|s| s.error.clone()) {
        f.push(problem(
            "dns_failed",
            format!("{e}: check the host name and this machine's resolver"),
        ));
    }
    if let Some(e) = report
        .step(StepKind::TcpConnect)
        .and_then(|s| s.error.clone())
    {
        f.push(problem(
            "tcp_failed",
            format!(
                "{e}: nothing accepts connections there (server down, wrong port, or a firewall)"
            ),
        ));
    }
    if let Some(e) = report.step(StepKind::TlsFull).and_then(|s| s.error.clone()) {
        f.push(problem(
            "tls_failed",
            format!("{e}: check the certificate (a private CA needs --ca-file) and that the port speaks TLS"),
        ));
    }
    if let Some(u) = &report.upgrade {
        if let Some(m) = upgrade_finding(u, report.sent_credentials, report.sent_origin) {
            f.push(problem("upgrade_refused", m));
        }
    } else if let Some(e) = report.step(StepKind::Upgrade).and_then(|s| s.error.clone()) {
        f.push(problem(
            "upgrade_failed",
            format!("{e}: the port answers, but not with HTTP (wrong port, or ws:// against a TLS port)"),
        ));
    }

    // Layer against layer.
    let dns = median(StepKind::Dns);
    if let Some(d) = dns.filter(|d| *d > th.dns) {
        f.push(problem(
            "slow_dns",
            format!(
                "DNS resolution takes {} (threshold {}): use a caching resolver near the clients, or a longer TTL",
                fmt_ms(d),
                fmt_ms(th.dns)
            ),
        ));
    }
    let tcp = median(StepKind::TcpConnect);
    let ws = median(StepKind::WsPing);
    let app = median(StepKind::AppPing);
    let pubsub = median(StepKind::PubSub);
    if let (Some(tcp), Some(ws)) = (tcp, ws) {
        if ws > tcp + th.rtt_excess {
            f.push(problem(
                "ws_rtt_excess",
                format!(
                    "WebSocket RTT is {} above TCP RTT ({} vs {}): buffering or Nagle in a proxy \
                     (nginx: `proxy_buffering off; tcp_nodelay on`), or a slow relay between here and the server",
                    fmt_ms(ws - tcp),
                    fmt_ms(ws),
                    fmt_ms(tcp)
                ),
            ));
        }
    }
    if let (Some(ws), Some(app)) = (ws, app) {
        if app > ws + th.rtt_excess {
            f.push(problem(
                "app_rtt_excess",
                format!(
                    "app ping is {} above WebSocket ping ({} vs {}): the server is slow to process requests \
                     (CPU-starved or overloaded; check its CPU and /api/stats)",
                    fmt_ms(app - ws),
                    fmt_ms(app),
                    fmt_ms(ws)
                ),
            ));
        }
    }
    if let (Some(app), Some(ps)) = (app, pubsub) {
        if ps > app + th.rtt_excess {
            f.push(problem(
                "pubsub_excess",
                format!(
                    "pub→sub round trip is {} above app ping ({} vs {}): the delivery path is slow \
                     (busy hub or full queues; check lag_ms and dropped in /api/stats)",
                    fmt_ms(ps - app),
                    fmt_ms(ps),
                    fmt_ms(app)
                ),
            ));
        }
    }
    for kind in [
        StepKind::WsPing,
        StepKind::AppPing,
        StepKind::PubSub,
        StepKind::TlsResumed,
    ] {
        if report.failure.is_some() {
            break;
        }
        if let Some(e) = report.step(kind).and_then(|s| s.error.clone()) {
            let mut m = format!("{} failed: {e}", kind.label());
            // What a server with `auth.mode = "jwt"` answers a connection
            // without a token, or with one that does not grant the topic.
            if kind == StepKind::PubSub && e.contains(": forbidden:") {
                m.push_str(if report.sent_credentials {
                    "; the token must allow subscribe and publish on probe/#"
                } else {
                    "; the server requires authentication and no token was sent: pass --token TOKEN \
                     (allowing subscribe and publish on probe/#)"
                });
            }
            f.push(problem("step_failed", m));
        }
    }

    // TLS.
    if let Some(t) = &report.tls_info {
        let full = median(StepKind::TlsFull);
        let resumed = median(StepKind::TlsResumed);
        let resumes = t.resumption_attempts > 0 && t.resumed == t.resumption_attempts;
        if let Some(full) = full.filter(|d| *d > th.tls) {
            match (resumes, resumed) {
                (true, Some(r)) => f.push(info(
                    "slow_tls_full",
                    format!(
                        "a full TLS handshake takes {} but a resumed one {}: session resumption works, \
                         so only first connections pay the full price",
                        fmt_ms(full),
                        fmt_ms(r)
                    ),
                )),
                _ => f.push(problem(
                    "slow_tls",
                    format!(
                        "TLS handshake takes {} (threshold {}) and the server did not resume sessions: \
                         enable session resumption (tickets or a session cache) where TLS terminates",
                        fmt_ms(full),
                        fmt_ms(th.tls)
                    ),
                )),
            }
        } else if t.resumption_attempts > 0 && t.resumed < t.resumption_attempts {
            f.push(info(
                "no_resumption",
                format!(
                    "the server resumed {} of {} TLS sessions: every reconnect pays a full handshake \
                     (cheap here, but enable resumption where TLS terminates)",
                    t.resumed, t.resumption_attempts
                ),
            ));
        }
    }

    // Idle hold.
    if let Some(i) = &report.idle {
        if let Some(e) = &i.error {
            f.push(problem(
                "idle_failed",
                format!("the idle connection could not be opened: {e}"),
            ));
        } else if let Some(after) = i.closed_after {
            let ping = report.welcome.as_ref().map(|w| w.ping_interval);
            let code = i.code.unwrap_or(1005);
            let mut m = format!(
                "the idle connection was closed after {} with {code}",
                fmt_secs(after)
            );
            if code == 1006 {
                m.push_str(" (no close frame): something between here and the server drops idle connections (proxy or load-balancer idle timeout, NAT)");
                match ping {
                    Some(p) if !p.is_zero() && p >= after => {
                        let _ = write!(
                            m,
                            "; the server pings every {}, too rarely: set heartbeat.ping_interval below {}, or raise the proxy's idle timeout",
                            fmt_secs(p),
                            fmt_secs(after)
                        );
                    }
                    _ => m.push_str("; raise the proxy's idle timeout"),
                }
            } else if !i.reason.is_empty() {
                let _ = write!(m, " ({})", i.reason);
            }
            f.push(problem("idle_closed", m));
        } else {
            f.push(info(
                "idle_ok",
                format!(
                    "an idle connection stayed open for {} ({} server ping{} answered)",
                    fmt_secs(i.requested),
                    i.server_pings,
                    if i.server_pings == 1 { "" } else { "s" }
                ),
            ));
        }
    }

    // Context.
    if let Some(tcp) = tcp.filter(|d| *d > Duration::from_millis(50)) {
        f.push(info(
            "network_rtt",
            format!(
                "the network round trip alone is {}: no message can arrive faster than that; \
                 a server closer to the clients is the only cure",
                fmt_ms(tcp)
            ),
        ));
    }
    if let Some(w) = &report.welcome {
        if w.subprotocol.as_deref() != Some(JSON_PROTOCOL) {
            f.push(info(
                "no_subprotocol",
                format!(
                    "the server did not confirm subprotocol {JSON_PROTOCOL} (a proxy may strip \
                     Sec-WebSocket-Protocol); pulsegate then speaks JSON anyway"
                ),
            ));
        }
    }
    if !f.iter().any(|x| x.level == Level::Problem) {
        f.insert(0, info("no_problem", "no problem found".into()));
    }
    f
}

/// The plain-language explanation of a refused or mangled upgrade; whether
/// credentials and an `Origin` were sent decides the advice on 401 and 403.
fn upgrade_finding(
    u: &UpgradeResponse,
    sent_credentials: bool,
    sent_origin: bool,
) -> Option<String> {
    if u.switched() {
        return None;
    }
    let body = if u.body.is_empty() {
        String::new()
    } else {
        format!(" (body: {})", u.body.chars().take(200).collect::<String>())
    };
    let s = u.status;
    let why = match s {
        101 => format!(
            "upgrade answered 101 but {}: a proxy rewrites the hop-by-hop headers; browsers will refuse this connection",
            u.problems.join("; ")
        ),
        400 => "upgrade answered 400: the proxy drops the Upgrade header (nginx needs \
                `proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\"`)"
            .into(),
        426 => "upgrade answered 426 Upgrade Required: the request reached the server without \
                `Upgrade: websocket`/`Connection: Upgrade`, so a proxy strips them (see its WebSocket settings)"
            .into(),
        200 => "upgrade answered 200 instead of 101: something answered the request as plain HTTP \
                (a proxy or CDN without WebSocket support, or a URL that is not the WebSocket endpoint)"
            .into(),
        404 => "upgrade answered 404: wrong path (pulsegate serves WebSocket at /ws)".into(),
        401 if !sent_credentials => "upgrade answered 401: the server requires authentication \
                and no token was sent: pass --token TOKEN"
            .into(),
        403 if !sent_origin => "upgrade answered 403: refused by authentication or the Origin check; \
                no Origin was sent and the server may check Origin: pass --origin ORIGIN \
                (one it allows, see server.allowed_origins)"
            .into(),
        401 | 403 => format!(
            "upgrade answered {s}: refused by authentication or the Origin check (server.allowed_origins)"
        ),
        429 => "upgrade answered 429: too many connections from this address (limits.max_connections_per_ip)".into(),
        502 | 504 => format!(
            "upgrade answered {s}: the proxy could not reach the server or does not pass WebSocket upgrades"
        ),
        503 => "upgrade answered 503: the server is at limits.max_connections or draining, or a proxy has no healthy backend".into(),
        _ => format!("upgrade answered {s} {} instead of 101", u.reason),
    };
    Some(format!("{why}{body}"))
}

/// The parts of the URL the probe needs.
#[derive(Debug, Clone)]
struct Target {
    url: String,
    tls: bool,
    /// Host for DNS and SNI (no brackets).
    host: String,
    /// Value of the `Host` header.
    host_header: String,
    port: u16,
    /// Path and query of the request line.
    path: String,
    /// More request headers for every upgrade (see [`request_headers`]).
    headers: Vec<(String, String)>,
}

impl Target {
    fn parse(url: &str) -> Result<Target, ProbeError> {
        let invalid = |reason: String| ProbeError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let u = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        let tls = match u.scheme() {
            "ws" => false,
            "wss" => true,
            other => return Err(invalid(format!("scheme `{other}` is not ws or wss"))),
        };
        let host_str = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("no host".into()))?;
        let port = u
            .port_or_known_default()
            .ok_or_else(|| invalid("no port".into()))?;
        let host_header = match u.port() {
            Some(p) => format!("{host_str}:{p}"),
            None => host_str.to_owned(),
        };
        let path = match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        };
        Ok(Target {
            url: url.to_owned(),
            tls,
            host: host_str.trim_matches(['[', ']']).to_owned(),
            host_header,
            port,
            path,
            headers: Vec::new(),
        })
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }
}

/// Two client configurations built from the one `pulsegate-client` uses:
/// one that never resumes (to time full handshakes), one with its own
/// session cache (to time resumed ones).
struct TlsConfigs {
    full: Arc<rustls::ClientConfig>,
    resuming: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

impl TlsConfigs {
    fn new(opts: &ProbeOptions, host: &str) -> Result<Self, ProbeError> {
        let mut client = ClientOptions::new(opts.url.clone());
        for file in &opts.ca_files {
            client = client
                .add_root_ca_pem_file(file)
                .map_err(|e| ProbeError::Tls(e.to_string()))?;
        }
        let base = client
            .rustls_client_config()
            .map_err(|e| ProbeError::Tls(e.to_string()))?;
        let mut full = (*base).clone();
        full.resumption = Resumption::disabled();
        let mut resuming = (*base).clone();
        resuming.resumption = Resumption::in_memory_sessions(64);
        let server_name = ServerName::try_from(host.to_owned()).map_err(|e| {
            ProbeError::Tls(format!("`{host}` is not a valid TLS server name: {e}"))
        })?;
        Ok(TlsConfigs {
            full: Arc::new(full),
            resuming: Arc::new(resuming),
            server_name,
        })
    }
}

/// Runs `fut` within `limit` and times it.
async fn timed<T, E: std::fmt::Display>(
    limit: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<(T, Duration), String> {
    let start = Instant::now();
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok((v, start.elapsed())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timed out after {}", fmt_secs(limit))),
    }
}

async fn tcp_connect(addr: SocketAddr, limit: Duration) -> Result<(TcpStream, Duration), String> {
    let (tcp, d) = timed(limit, TcpStream::connect(addr)).await?;
    // As every pulsegate client does: small frames must not wait for Nagle.
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok((tcp, d))
}

/// The handshake, its duration, the protocol version and whether it resumed.
async fn tls_handshake(
    config: &Arc<rustls::ClientConfig>,
    name: &ServerName<'static>,
    tcp: TcpStream,
    limit: Duration,
) -> Result<
    (
        MaybeTlsStream<TcpStream>,
        Duration,
        Option<String>,
        Option<HandshakeKind>,
    ),
    String,
> {
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let (stream, d) = timed(limit, connector.connect(name.clone(), tcp)).await?;
    let conn = stream.get_ref().1;
    let version = conn.protocol_version().map(|v| format!("{v:?}"));
    let kind = conn.handshake_kind();
    Ok((MaybeTlsStream::Rustls(stream), d, version, kind))
}

/// Writes the upgrade request and reads the response head (and the start of
/// a refusal's body). Timed from the first byte written to the last byte of
/// the head. Bytes after the head (the `welcome` frame) stay buffered in the
/// returned stream.
async fn upgrade(
    stream: MaybeTlsStream<TcpStream>,
    target: &Target,
    limit: Duration,
) -> Result<(Stream, UpgradeResponse, Duration), String> {
    let mut stream = BufReader::new(stream);
    let mut key = [0u8; 16];
    fastrand::fill(&mut key);
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {JSON_PROTOCOL}\r\n",
        target.path, target.host_header,
    );
    if !target.has_header("user-agent") {
        let _ = write!(
            request,
            "User-Agent: pulsegate-probe/{}\r\n",
            env!("CARGO_PKG_VERSION")
        );
    }
    for (name, value) in &target.headers {
        let _ = write!(request, "{name}: {value}\r\n");
    }
    request.push_str("\r\n");
    let start = Instant::now();
    let head = tokio::time::timeout(limit, async {
        stream.write_all(request.as_bytes()).await?;
        stream.flush().await?;
        read_head(&mut stream).await
    })
    .await
    .map_err(|_| format!("no complete response within {}", fmt_secs(limit)))?
    .map_err(|e| e.to_string())?;
    let elapsed = start.elapsed();

    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("truncated HTTP response head".into()),
        Err(e) => {
            let start: String = String::from_utf8_lossy(&head).chars().take(60).collect();
            return Err(format!("not an HTTP response ({e}): {start:?}"));
        }
    }
    let mut response = UpgradeResponse {
        status: parsed.code.unwrap_or(0),
        reason: parsed.reason.unwrap_or("").to_owned(),
        headers: parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: String::new(),
        problems: Vec::new(),
    };
    if response.status == 101 {
        response.check_switch(&key);
    } else {
        response.body = read_body(&mut stream, &response, limit).await;
    }
    Ok((stream, response, elapsed))
}

/// Reads up to and including the blank line that ends an HTTP head.
async fn read_head(stream: &mut Stream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = (&mut *stream)
            .take((MAX_HEAD_BYTES - head.len()) as u64)
            .read_until(b'\n', &mut head)
            .await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed after {} bytes, before a complete HTTP response",
                    head.len()
                ),
            ));
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            return Ok(head);
        }
        if head.len() >= MAX_HEAD_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("HTTP response head larger than {MAX_HEAD_BYTES} bytes"),
            ));
        }
    }
}

/// The start of a refusal's body, lossily decoded and on one line.
async fn read_body(stream: &mut Stream, response: &UpgradeResponse, limit: Duration) -> String {
    let length = response
        .header("content-length")
        .and_then(|v| v.trim().parse::<usize>().ok());
    let mut body = Vec::new();
    let wait = match length {
        Some(0) => return String::new(),
        Some(_) => limit,
        None => BODY_GRACE.min(limit),
    };
    let want = length.unwrap_or(MAX_BODY_BYTES).min(MAX_BODY_BYTES);
    let _ = tokio::time::timeout(wait, async {
        let mut chunk = [0u8; 1024];
        while body.len() < want {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n.min(want - body.len())]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&body)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The next frame, skipping pings and pongs; an error on close, end or timeout.
async fn next_msg(ws: &mut Ws, deadline: Instant) -> Result<Message, String> {
    match tokio::time::timeout_at(deadline, ws.next()).await {
        Err(_) => Err("timed out".into()),
        Ok(None) => Err("connection closed".into()),
        Ok(Some(Err(e))) => Err(e.to_string()),
        Ok(Some(Ok(m))) => {
            if let Some((code, reason)) = m.as_close() {
                return Err(format!(
                    "closed by the server with {} {reason}",
                    u16::from(code)
                ));
            }
            Ok(m)
        }
    }
}

async fn next_server_frame(ws: &mut Ws, limit: Duration) -> Result<ServerFrame, String> {
    let deadline = Instant::now() + limit;
    loop {
        let m = next_msg(ws, deadline).await?;
        if m.is_text() || m.is_binary() {
            return Codec::Json.decode_server(m.as_payload());
        }
    }
}

async fn ws_ping(ws: &mut Ws, n: u64, limit: Duration) -> Result<Duration, String> {
    let payload = Bytes::from(format!("probe-{n}"));
    let start = Instant::now();
    let deadline = start + limit;
    ws.send(Message::ping(payload.clone()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let m = next_msg(ws, deadline).await?;
        if m.is_pong() && m.as_payload()[..] == payload[..] {
            return Ok(start.elapsed());
        }
    }
}

async fn send_frame(ws: &mut Ws, frame: &ClientFrame) -> Result<(), String> {
    ws.send(Message::text(Codec::Json.encode_client(frame)))
        .await
        .map_err(|e| e.to_string())
}

async fn app_ping(ws: &mut Ws, id: u64, limit: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let deadline = start + limit;
    send_frame(
        ws,
        &ClientFrame::Ping {
            id: Some(Id::Num(id)),
        },
    )
    .await?;
    loop {
        let m = next_msg(ws, deadline).await?;
        if !m.is_text() {
            continue;
        }
        match Codec::Json.decode_server(m.as_payload())? {
            ServerFrame::Pong {
                id: Some(Id::Num(got)),
                ..
            } if got == id => return Ok(start.elapsed()),
            ServerFrame::Error {
                id: Some(Id::Num(got)),
                code,
                message,
            } if got == id => return Err(format!("server answered {}: {message}", code.as_str())),
            _ => {}
        }
    }
}

/// Subscribes to `topic`, then publishes `count` times on the same
/// connection, timing each `pub` until its `msg` arrives.
async fn pub_sub(
    ws: &mut Ws,
    topic: &str,
    count: usize,
    next_id: &mut u64,
    limit: Duration,
) -> Result<Vec<Duration>, (Vec<Duration>, String)> {
    let mut samples = Vec::new();
    let sub_id = *next_id;
    *next_id += 1;
    let sub = ClientFrame::Sub {
        id: Some(Id::Num(sub_id)),
        topic: topic.to_owned(),
        snapshot: false,
        since: Vec::new(),
    };
    let deadline = Instant::now() + limit;
    let subscribed = async {
        send_frame(ws, &sub).await?;
        loop {
            let m = next_msg(ws, deadline).await?;
            if !m.is_text() {
                continue;
            }
            match Codec::Json.decode_server(m.as_payload())? {
                ServerFrame::Ok(r) if r.id == Some(Id::Num(sub_id)) => return Ok(()),
                ServerFrame::Error {
                    id: Some(Id::Num(got)),
                    code,
                    message,
                } if got == sub_id => {
                    return Err(format!("subscribe refused: {}: {message}", code.as_str()))
                }
                _ => {}
            }
        }
    }
    .await;
    if let Err(e) = subscribed {
        return Err((samples, e));
    }
    for n in 0..count {
        let id = *next_id;
        *next_id += 1;
        let frame = ClientFrame::Pub {
            id: Some(Id::Num(id)),
            topic: topic.to_owned(),
            data: Bytes::from(format!("{{\"probe\":{n}}}")),
        };
        let start = Instant::now();
        let deadline = start + limit;
        let got = async {
            send_frame(ws, &frame).await?;
            loop {
                let m = next_msg(ws, deadline).await?;
                if !m.is_text() {
                    continue;
                }
                match Codec::Json.decode_server(m.as_payload())? {
                    ServerFrame::Msg { topic: t, data, .. }
                        if t == topic && data["probe"] == json!(n) =>
                    {
                        return Ok(start.elapsed())
                    }
                    ServerFrame::Error {
                        id: Some(Id::Num(got)),
                        code,
                        message,
                    } if got == id => {
                        return Err(format!("publish refused: {}: {message}", code.as_str()))
                    }
                    _ => {}
                }
            }
        }
        .await;
        match got {
            Ok(d) => samples.push(d),
            Err(e) => return Err((samples, e)),
        }
    }
    let unsub = ClientFrame::Unsub {
        id: None,
        topic: topic.to_owned(),
    };
    let _ = send_frame(ws, &unsub).await;
    Ok(samples)
}

/// Closes with 1000 and waits briefly for the server's reply; errors ignored.
async fn close_quietly(mut ws: Ws) {
    if ws
        .send(Message::close(
            Some(CloseCode::NORMAL_CLOSURE),
            "probe done",
        ))
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// Milliseconds with microsecond resolution, for JSON.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `0.12 ms`, `38.4 ms`, `120 ms`.
fn fmt_ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v < 10.0 {
        format!("{v:.2} ms")
    } else if v < 100.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.0} ms")
    }
}

/// `1.0 s`, `25 s`, `120 s`.
fn fmt_secs(d: Duration) -> String {
    let v = d.as_secs_f64();
    if v < 10.0 {
        format!("{v:.1} s")
    } else {
        format!("{v:.0} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Target {
        Target::parse(url).unwrap()
    }

    #[test]
    fn urls() {
        let t = target("ws://127.0.0.1:8080/ws?x=1");
        assert_eq!((t.host.as_str(), t.port, t.tls), ("127.0.0.1", 8080, false));
        assert_eq!(t.host_header, "127.0.0.1:8080");
        assert_eq!(t.path, "/ws?x=1");
        let t = target("wss://[::1]/ws");
        assert_eq!((t.host.as_str(), t.port, t.tls), ("::1", 443, true));
        assert_eq!(t.host_header, "[::1]");
        for bad in ["http://x/ws", "nope", "wss://"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn medians() {
        let s = |v: &[u64]| Step {
            samples: v.iter().map(|m| Duration::from_millis(*m)).collect(),
            error: None,
        };
        assert_eq!(s(&[3, 1, 2]).median(), Some(Duration::from_millis(2)));
        assert_eq!(s(&[4, 1, 2, 3]).median(), Some(Duration::from_micros(2500)));
        assert_eq!(s(&[]).median(), None);
        assert_eq!(s(&[5, 1, 9]).min(), Some(Duration::from_millis(1)));
        assert_eq!(s(&[5, 1, 9]).max(), Some(Duration::from_millis(9)));
    }

    /// An upgrade answered `status` with no headers and no body.
    fn refused(status: u16) -> UpgradeResponse {
        UpgradeResponse {
            status,
            reason: "X".into(),
            headers: vec![],
            body: String::new(),
            problems: vec![],
        }
    }

    fn report_with(steps: &[(StepKind, u64)]) -> ProbeReport {
        let mut r = ProbeReport::new(&target("ws://127.0.0.1:1/ws"), 1);
        for (k, us) in steps {
            r.record(*k, Duration::from_micros(*us));
        }
        r.welcome = Some(WelcomeInfo {
            node: "n".into(),
            ping_interval: Duration::from_secs(25),
            subprotocol: Some(JSON_PROTOCOL.into()),
        });
        r
    }

    #[test]
    fn healthy_numbers_find_no_problem() {
        let r = report_with(&[
            (StepKind::Dns, 50),
            (StepKind::TcpConnect, 100),
            (StepKind::Upgrade, 300),
            (StepKind::WsPing, 150),
            (StepKind::AppPing, 200),
            (StepKind::PubSub, 300),
        ]);
        let f = diagnose(&r, &Thresholds::default());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].message, "no problem found");
    }

    #[test]
    fn each_layer_is_compared_with_the_one_below() {
        let r = report_with(&[
            (StepKind::TcpConnect, 1_000),
            (StepKind::WsPing, 39_000),
            (StepKind::AppPing, 70_000),
            (StepKind::PubSub, 71_000),
        ]);
        let f = diagnose(&r, &Thresholds::default());
        let codes: Vec<_> = f.iter().map(|f| f.code).collect();
        assert_eq!(codes, ["ws_rtt_excess", "app_rtt_excess"], "{f:?}");
        assert!(
            f[0].message
                .starts_with("WebSocket RTT is 38.0 ms above TCP RTT"),
            "{}",
            f[0].message
        );
        // A higher threshold silences both.
        let lenient = Thresholds {
            rtt_excess: Duration::from_millis(40),
            ..Thresholds::default()
        };
        assert_eq!(diagnose(&r, &lenient)[0].code, "no_problem");
    }

    #[test]
    fn refused_upgrades_are_explained() {
        let mut r = report_with(&[(StepKind::TcpConnect, 100)]);
        r.welcome = None;
        for (status, needle) in [
            (400, "drops the Upgrade header"),
            (426, "strips them"),
            (200, "instead of 101"),
            (502, "could not reach the server"),
            // Nothing was sent that the server may want.
            (401, "no token was sent: pass --token TOKEN"),
            (403, "the server may check Origin: pass --origin ORIGIN"),
        ] {
            r.upgrade = Some(refused(status));
            let f = diagnose(&r, &Thresholds::default());
            assert_eq!(f[0].code, "upgrade_refused");
            assert!(f[0].message.contains(needle), "{status}: {}", f[0].message);
        }
    }

    #[test]
    fn refused_auth_and_origin_say_which_flag_is_missing() {
        let mut r = report_with(&[(StepKind::TcpConnect, 100)]);
        r.welcome = None;
        let existing = "refused by authentication or the Origin check (server.allowed_origins)";
        // (status, token sent, origin sent, expected, not expected)
        for (status, token, origin, needle, absent) in [
            (
                401,
                false,
                false,
                "no token was sent: pass --token TOKEN",
                "--origin",
            ),
            (
                401,
                false,
                true,
                "no token was sent: pass --token TOKEN",
                "--origin",
            ),
            (401, true, false, existing, "--token"),
            (
                403,
                false,
                false,
                "no Origin was sent and the server may check Origin: pass --origin ORIGIN",
                "--token",
            ),
            (403, true, false, "pass --origin ORIGIN", "--token"),
            (403, false, true, existing, "--origin"),
            (403, true, true, existing, "--origin"),
        ] {
            r.sent_credentials = token;
            r.sent_origin = origin;
            r.upgrade = Some(refused(status));
            let f = diagnose(&r, &Thresholds::default());
            let m = &f[0].message;
            assert_eq!(f[0].code, "upgrade_refused");
            assert!(
                m.starts_with(&format!("upgrade answered {status}: ")),
                "{m}"
            );
            assert!(m.contains(needle), "{status} {token} {origin}: {m}");
            assert!(!m.contains(absent), "{status} {token} {origin}: {m}");
        }
    }

    #[test]
    fn a_forbidden_subscription_asks_for_a_token() {
        let mut r = report_with(&[(StepKind::TcpConnect, 100), (StepKind::AppPing, 100)]);
        r.fail_step(
            StepKind::PubSub,
            "subscribe refused: forbidden: authenticate first to subscribe".into(),
        );
        let f = diagnose(&r, &Thresholds::default());
        assert_eq!(f[0].code, "step_failed");
        assert!(
            f[0].message.ends_with(
                "no token was sent: pass --token TOKEN (allowing subscribe and publish on probe/#)"
            ),
            "{}",
            f[0].message
        );
        r.sent_credentials = true;
        let f = diagnose(&r, &Thresholds::default());
        assert!(
            f[0].message
                .ends_with("; the token must allow subscribe and publish on probe/#"),
            "{}",
            f[0].message
        );
        // Other failures keep their wording.
        r.sent_credentials = false;
        r.steps.iter_mut().for_each(|(_, s)| s.error = None);
        r.fail_step(StepKind::PubSub, "timed out".into());
        let f = diagnose(&r, &Thresholds::default());
        assert_eq!(f[0].message, "pub→sub round trip failed: timed out");
    }

    #[test]
    fn header_flags_are_checked() {
        assert_eq!(
            parse_header("X-Tenant:  acme ").unwrap(),
            ("X-Tenant".to_owned(), "acme".to_owned())
        );
        assert_eq!(
            parse_header("Authorization: Basic a:b").unwrap(),
            ("Authorization".to_owned(), "Basic a:b".to_owned())
        );
        assert_eq!(parse_header("X-Empty:").unwrap().1, "");
        let err = |s: &str| parse_header(s).unwrap_err().to_string();
        let e = err("X-Tenant acme-secret");
        assert!(e.contains("expects `Name: value`"), "{e}");
        assert!(!e.contains("acme-secret"), "the value is never shown: {e}");
        for name in [
            "Host",
            "upgrade",
            "CONNECTION",
            "Sec-WebSocket-Key",
            "sec-websocket-version",
            "Sec-WebSocket-Protocol",
        ] {
            let e = err(&format!("{name}: x"));
            assert!(e.contains("cannot be set"), "{name}: {e}");
            assert!(
                e.to_lowercase()
                    .contains(&format!("`{}`", name.to_lowercase())),
                "{name}: {e}"
            );
        }
        for bad in [
            "X-A: b\r\nHost: evil",
            "X-A: b\nX-B: c",
            "X-A: b\r",
            "X\r\nA: b",
        ] {
            let e = err(bad);
            assert!(e.contains("CR and LF are not allowed"), "{bad:?}: {e}");
            assert!(!e.contains("evil") && !e.contains("X-B"), "{bad:?}: {e}");
        }
        assert!(err(": v").contains("empty name"));
        assert!(err("X A: v").contains("not a valid header name"));

        // `run` applies the same rules to options built directly, and to
        // --token and --origin; a token is never part of an error.
        let headers = |o: ProbeOptions| request_headers(&o).map_err(|e| e.to_string());
        let base = ProbeOptions::new("ws://127.0.0.1:1/ws");
        let mut o = base.clone();
        o.token = Some(" tok.en ".into());
        o.origin = Some("https://app.example".into());
        o.headers = vec![("X-A".into(), "1".into())];
        assert_eq!(
            headers(o).unwrap(),
            [
                ("Authorization".to_owned(), "Bearer tok.en".to_owned()),
                ("Origin".to_owned(), "https://app.example".to_owned()),
                ("X-A".to_owned(), "1".to_owned()),
            ]
        );
        let mut o = base.clone();
        o.headers = vec![("Sec-WebSocket-Key".into(), "x".into())];
        assert!(headers(o)
            .unwrap_err()
            .contains("`Sec-WebSocket-Key` cannot be set"));
        let mut o = base.clone();
        o.token = Some("secret\r\nX-Injected: 1".into());
        let e = headers(o).unwrap_err();
        assert!(e.contains("--token must not contain"), "{e}");
        assert!(!e.contains("secret") && !e.contains("Injected"), "{e}");
        let mut o = base.clone();
        o.token = Some("secret-token".into());
        o.headers = vec![("authorization".into(), "Bearer other".into())];
        let e = headers(o.clone()).unwrap_err();
        assert!(e.contains("both set the Authorization header"), "{e}");
        assert!(!e.contains("secret-token"), "{e}");
        let debug = format!("{o:?}");
        assert!(
            !debug.contains("secret-token") && !debug.contains("other"),
            "{debug}"
        );
        assert!(debug.contains("***"), "{debug}");
        let mut o = base;
        o.origin = Some("https://a\r\nX: y".into());
        assert!(headers(o)
            .unwrap_err()
            .contains("--origin must not contain"));
    }

    #[test]
    fn a_101_without_upgrade_headers_is_not_a_switch() {
        let mut u = UpgradeResponse {
            status: 101,
            reason: "Switching Protocols".into(),
            headers: vec![("sec-websocket-accept".into(), accept_key("k"))],
            body: String::new(),
            problems: vec![],
        };
        u.check_switch("k");
        assert!(!u.switched());
        assert_eq!(u.problems.len(), 2, "{:?}", u.problems);
        assert!(upgrade_finding(&u, false, false)
            .unwrap()
            .contains("lacks `Upgrade: websocket`"));
    }

    #[test]
    fn idle_close_1006_before_the_ping_interval_blames_the_proxy() {
        let mut r = report_with(&[(StepKind::TcpConnect, 100)]);
        r.idle = Some(IdleResult {
            requested: Duration::from_secs(120),
            closed_after: Some(Duration::from_secs(60)),
            code: Some(1006),
            reason: String::new(),
            server_pings: 0,
            error: None,
        });
        r.welcome.as_mut().unwrap().ping_interval = Duration::from_secs(90);
        let f = diagnose(&r, &Thresholds::default());
        assert_eq!(f[0].code, "idle_closed");
        assert!(
            f[0].message.contains("closed after 60 s with 1006"),
            "{}",
            f[0].message
        );
        assert!(
            f[0].message.contains(
                "the server pings every 90 s, too rarely: set heartbeat.ping_interval below 60 s"
            ),
            "{}",
            f[0].message
        );
        // Pings every 25 s did not keep it open: the proxy ignores them.
        r.welcome.as_mut().unwrap().ping_interval = Duration::from_secs(25);
        let f = diagnose(&r, &Thresholds::default());
        assert!(
            f[0].message.ends_with("raise the proxy's idle timeout"),
            "{}",
            f[0].message
        );
    }

    #[test]
    fn slow_tls_without_resumption_is_a_problem() {
        let mut r = report_with(&[(StepKind::TlsFull, 120_000)]);
        r.tls_info = Some(TlsInfo {
            version: Some("TLSv1_3".into()),
            resumption_attempts: 3,
            resumed: 0,
        });
        let f = diagnose(&r, &Thresholds::default());
        assert_eq!(f[0].code, "slow_tls");
        assert!(
            f[0].message.starts_with("TLS handshake takes 120 ms"),
            "{}",
            f[0].message
        );
        r.tls_info.as_mut().unwrap().resumed = 3;
        r.record(StepKind::TlsResumed, Duration::from_millis(30));
        let f = diagnose(&r, &Thresholds::default());
        assert_eq!(f[0].code, "no_problem", "{f:?}");
        assert_eq!(f[1].code, "slow_tls_full");
    }
}
