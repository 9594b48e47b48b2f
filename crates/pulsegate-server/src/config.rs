//! The one validated configuration tree of the gateway.
//!
//! Every tunable of pulsegate is a key in [`Config`], grouped into sections
//! (`server`, `limits`, `heartbeat`, `delivery`, `history`, `tls`). Values come
//! from four layers, lowest to highest precedence:
//!
//! 1. built-in defaults (the `Default` impls below);
//! 2. a TOML file (`[section]` tables, `key = value`);
//! 3. environment variables `PULSEGATE_<SECTION>__<KEY>`, e.g.
//!    `PULSEGATE_SERVER__DRAIN_PERIOD=5s`;
//! 4. command-line overrides given as dotted keys, e.g. `limits.max_connections`.
//!
//! Why so strict: a typo in a config key must never be silently ignored, so
//! every struct denies unknown fields and [`ConfigError`] names the full dotted
//! key and the exact place it came from (file, variable or override). After
//! merging, [`Config::validate`] checks every bound, so code that receives a
//! `Config` can trust it without re-checking.
//!
//! Value forms are the same in every layer: durations are humantime strings
//! (`"250ms"`, `"5s"`, `"1m"`), sizes are plain integers of bytes, and list
//! keys accept a TOML array or one comma-separated string (the only form an
//! environment variable can carry).
//!
//! The doc comment on each key is the source of `docs/configuration.md` and
//! `pulsegate.example.toml`; change them together.

use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::error::{Kind, OneOf};
use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::{Deserialize, Deserializer, Serialize};

/// Prefix of every environment variable read as configuration.
pub const ENV_PREFIX: &str = "PULSEGATE_";

/// Separator between section and key in environment variable names.
pub const ENV_SEPARATOR: &str = "__";

/// Every config key as `section.key`, in documentation order.
pub const KEYS: &[&str] = &[
    "server.listen",
    "server.allowed_origins",
    "server.drain_period",
    "server.handshake_timeout",
    "server.node_name",
    "server.write_timeout",
    "server.trusted_proxies",
    "server.first_frame_timeout",
    "limits.max_connections",
    "limits.max_connections_per_ip",
    "limits.max_message_bytes",
    "limits.max_subscriptions_per_connection",
    "limits.max_topic_length",
    "limits.max_protocol_errors",
    "limits.handshake_rate_per_ip",
    "limits.handshake_burst_per_ip",
    "limits.publish_rate",
    "limits.publish_bytes_rate",
    "limits.max_pattern_wildcards",
    "limits.max_queued_bytes_total",
    "heartbeat.ping_interval",
    "heartbeat.pong_timeout",
    "delivery.queue_max_messages",
    "delivery.queue_max_bytes",
    "delivery.slow_consumer",
    "history.max_messages",
    "history.max_age",
    "history.max_topics",
    "tls.cert",
    "tls.key",
    "tls.client_ca",
    "tls.require_client_cert_for_publish",
    "admin.token",
    "metrics.enabled",
    "auth.mode",
    "auth.jwt_hs256_secret",
    "auth.jwt_public_key_file",
    "auth.jwks_file",
    "auth.audience",
    "auth.issuer",
    "auth.leeway",
    "auth.timeout",
    "auth.api_keys",
    "cluster.backplane",
    "cluster.node_name",
    "cluster.nats_url",
    "cluster.redis_url",
    "cluster.prefix",
    "cluster.max_bytes",
    "compression.enabled",
    "compression.threshold",
    "compression.level",
];

/// Keys holding secrets: never printed, rendered as a comment by
/// [`Config::to_toml_string`].
pub const SECRET_KEYS: &[&str] = &["admin.token", "auth.jwt_hs256_secret", "auth.api_keys"];

/// Largest allowed `limits.max_topic_length`: topic lengths travel as `u16`.
pub const MAX_TOPIC_LENGTH_CEILING: usize = 65_535;

// Metadata names of our own providers; `describe_origin` matches on them.
const ENV_PROVIDER_NAME: &str = "environment variable";
const OVERRIDE_PROVIDER_NAME: &str = "command-line override";

/// The whole gateway configuration. Obtain one with [`Config::load`]; the
/// result is already validated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listener, origin policy and connection lifecycle timeouts.
    pub server: ServerConfig,
    /// Hard bounds on connections, messages and subscriptions.
    pub limits: LimitsConfig,
    /// WebSocket ping/pong liveness checks.
    pub heartbeat: HeartbeatConfig,
    /// Per-connection outbound queue and what happens when it fills.
    pub delivery: DeliveryConfig,
    /// Per-topic history kept for resume and late joiners.
    pub history: HistoryConfig,
    /// TLS certificate and key; plain TCP when both are unset.
    pub tls: TlsConfig,
    /// Operator access: the admin API and the live dashboard.
    pub admin: AdminConfig,
    /// Prometheus metrics and the live statistics.
    pub metrics: MetricsConfig,
    /// Who may connect, subscribe and publish.
    pub auth: AuthConfig,
    /// Several nodes sharing topic logs through NATS or Redis.
    pub cluster: ClusterConfig,
    /// permessage-deflate (RFC 7692) for clients that offer it.
    pub compression: CompressionConfig,
}

/// `[compression]`: permessage-deflate (RFC 7692).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    /// Accept permessage-deflate when a client offers it (browsers always
    /// do). Default `true`.
    pub enabled: bool,
    /// Messages shorter than this many bytes are sent uncompressed:
    /// compressing small frames costs CPU and saves little. Default `2048`.
    pub threshold: usize,
    /// zlib compression level, 1 (fastest) to 9 (smallest). Each message is
    /// compressed once for all its subscribers. Default `1`.
    pub level: u32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            enabled: true,
            threshold: 2048,
            level: 1,
        }
    }
}

/// Which backplane joins this node to others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackplaneKind {
    /// A single node: history in this process's memory.
    #[default]
    Memory,
    /// NATS: JetStream keeps the logs, core subjects carry live messages.
    Nats,
    /// Redis: Streams keep the logs, pub/sub carries live messages.
    Redis,
}

impl BackplaneKind {
    /// The config value.
    pub fn as_str(self) -> &'static str {
        match self {
            BackplaneKind::Memory => "memory",
            BackplaneKind::Nats => "nats",
            BackplaneKind::Redis => "redis",
        }
    }
}

/// A server URL that may carry credentials: `Debug` and `Display` show the
/// password as `***` (see [`pulsegate_core::redact_url`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServerUrl(String);

impl ServerUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> ServerUrl {
        ServerUrl(url.into())
    }

    /// The URL with its credentials, for the client library only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", pulsegate_core::redact_url(&self.0))
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&pulsegate_core::redact_url(&self.0))
    }
}

/// `[cluster]`: the backplane shared by the nodes of a cluster (docs/CLUSTER.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `"memory"` (default: one node, nothing external), `"nats"` or `"redis"`.
    pub backplane: BackplaneKind,
    /// This node's name in the backplane (stored with each message it
    /// publishes). Default: `server.node_name`, else the host name.
    pub node_name: Option<String>,
    /// NATS server with JetStream, `nats://[user:password@]host:port`.
    /// Default `nats://127.0.0.1:4222`.
    pub nats_url: ServerUrl,
    /// Redis server, `redis://[:password@]host:port[/db]`.
    /// Default `redis://127.0.0.1:6379`.
    pub redis_url: ServerUrl,
    /// Namespace of everything pulsegate creates in the backplane: Redis key
    /// and channel prefix, NATS subject prefix and (upper-cased) JetStream
    /// stream name. Nodes of one cluster share it; two clusters on one
    /// server use two. Letters, digits, `-` and `_`. Default `pulsegate`.
    pub prefix: String,
    /// NATS: most bytes the JetStream stream keeps over all topics (oldest
    /// messages go first). Per topic, `history.max_messages` and
    /// `history.max_age` apply to both backplanes. Default `1073741824` (1 GiB).
    pub max_bytes: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            backplane: BackplaneKind::Memory,
            node_name: None,
            nats_url: ServerUrl::new("nats://127.0.0.1:4222"),
            redis_url: ServerUrl::new("redis://127.0.0.1:6379"),
            prefix: "pulsegate".into(),
            max_bytes: 1 << 30,
        }
    }
}

/// How clients authenticate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone reachable may subscribe and publish (trusted networks only).
    #[default]
    None,
    /// A JWT is required; its claims carry topic ACLs.
    Jwt,
}

impl AuthMode {
    /// The config value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Jwt => "jwt",
        }
    }
}

/// `[auth]`: client authentication and topic ACLs (see docs/SECURITY.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `"none"` (default: no authentication; keep the listener on a trusted
    /// network) or `"jwt"`: WebSocket clients present a JWT (Bearer header,
    /// `?token=`, a `bearer.<jwt>` subprotocol entry, or an `auth` message
    /// within `auth.timeout`) and HTTP publishers a JWT or an API key. Token
    /// claims `subscribe` and `publish` list the patterns allowed.
    pub mode: AuthMode,
    /// HS256 shared secret (at least 32 bytes). Exactly one of this,
    /// `jwt_public_key_file` and `jwks_file` is set with `mode = "jwt"`.
    /// Default: unset.
    pub jwt_hs256_secret: Option<Secret>,
    /// PEM file with the RSA (RS256) or EC P-256 (ES256) public key that
    /// signs tokens. Default: unset.
    pub jwt_public_key_file: Option<PathBuf>,
    /// Local JWKS file (`{"keys":[…]}`) with RS256/ES256 public keys, chosen
    /// by the token's `kid`. Default: unset.
    pub jwks_file: Option<PathBuf>,
    /// Required `aud` claim, when set. Default: unset (no `aud` check).
    pub audience: Option<String>,
    /// Required `iss` claim, when set. Default: unset (no `iss` check).
    pub issuer: Option<String>,
    /// Clock skew allowed when checking `exp` and `nbf`. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// With `mode = "jwt"`, how long a connection may stay without a valid
    /// token before it is closed with 4005. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Static API keys for the HTTP publish API (`Authorization: Bearer
    /// <key>`), each allowed to publish to every topic. At least 16
    /// characters each. Default: none.
    #[serde(deserialize_with = "secret_list")]
    pub api_keys: Vec<Secret>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            jwt_hs256_secret: None,
            jwt_public_key_file: None,
            jwks_file: None,
            audience: None,
            issuer: None,
            leeway: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            api_keys: Vec::new(),
        }
    }
}

/// A list of secrets, as a TOML array or one comma-separated string.
fn secret_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    list_or_comma_string(d).map(|v| v.into_iter().map(Secret::new).collect())
}

/// A secret string (token, password). Its `Debug` and `Display` never show
/// the value, so it cannot leak into logs or `check-config --print`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that must compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_owned())
    }
}

/// `[admin]`: operator access to the admin API and the live dashboard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token of the admin API (`/api/connections`, `/api/topics`)
    /// and the dashboard (`/dashboard?token=…` once, then a cookie). At
    /// least 16 characters; compared in constant time; never logged. Unset
    /// disables the admin API (404) and serves the dashboard and the `$sys/`
    /// topics to loopback clients only. Default: unset.
    pub token: Option<Secret>,
}

/// `[metrics]`: Prometheus metrics at `/metrics` and the live statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Record histograms and serve `GET /metrics`. When `false`, `/metrics`
    /// answers 404 and per-delivery lag, fan-out time, RTT and size
    /// histograms are not recorded (counters still are: `/api/stats` needs
    /// them). Default `true`.
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true }
    }
}

/// `[server]`: listener, origin policy and connection lifecycle timeouts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to accept WebSocket and HTTP connections on, as
    /// `IP:port` (`0.0.0.0:8080`, `[::]:8080`); host names are not resolved.
    /// Default `127.0.0.1:8080`: reachable from this machine only.
    pub listen: SocketAddr,
    /// Browser `Origin`s allowed to open a WebSocket, besides same-origin
    /// requests (Origin host equal to the `Host` header), written as
    /// `scheme://host[:port]` without a trailing slash. Requests without an
    /// `Origin` header (non-browser clients) are not affected. `"*"` allows
    /// every origin, which is unsafe: any web page a user visits can then
    /// connect with that user's cookies and network position. Default: empty
    /// (same-origin only).
    #[serde(deserialize_with = "list_or_comma_string")]
    pub allowed_origins: Vec<String>,
    /// On shutdown, how long open connections get to finish (receive a close
    /// frame and flush their queues) before they are dropped. `0s` closes
    /// immediately. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub drain_period: Duration,
    /// Longest time from TCP accept (including the TLS handshake) to a
    /// completed WebSocket upgrade; slower clients are disconnected.
    /// Default `10s`.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Name of this node in logs, metrics and cluster messages. Unset means the
    /// host name is used, resolved at startup. Default: unset.
    pub node_name: Option<String>,
    /// A batch of queued frames (at most 256 frames / 256 KiB) that cannot
    /// be written to the socket within this time ends the connection as a
    /// slow consumer; the socket is dropped without a close frame, since it
    /// cannot take one (logged as close code 4003). Default `10s`.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Proxies (addresses or CIDR blocks) whose `Forwarded` /
    /// `X-Forwarded-For` headers are believed: behind them, per-IP limits,
    /// rate limits and logs use the client's address (the rightmost hop that
    /// is not a trusted proxy). From any other peer those headers are
    /// ignored. Default: empty (never believed).
    #[serde(deserialize_with = "list_or_comma_string")]
    pub trusted_proxies: Vec<String>,
    /// A WebSocket connection that sends no frame at all (not even a pong)
    /// within this time of its upgrade is closed with 1008: it holds a slot
    /// and does nothing (slowloris after the handshake). `0s` turns the check
    /// off. Default `30s` (above the default ping interval, so any live
    /// client has answered a ping by then).
    #[serde(with = "humantime_serde")]
    pub first_frame_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            allowed_origins: Vec::new(),
            drain_period: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            node_name: None,
            write_timeout: Duration::from_secs(10),
            trusted_proxies: Vec::new(),
            first_frame_timeout: Duration::from_secs(30),
        }
    }
}

/// `[limits]`: hard bounds on connections, messages and subscriptions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most WebSocket connections open at once on this node; beyond it an
    /// upgrade gets 503 and `/readyz` says `at_capacity` (HTTP keeps
    /// working). Default `10000`.
    pub max_connections: usize,
    /// Most connections open at once from one client IP address. Default `1000`.
    pub max_connections_per_ip: usize,
    /// Largest WebSocket message accepted, in bytes; a larger message closes
    /// the connection with close code 1009 (message too big). Default `1048576`
    /// (1 MiB).
    pub max_message_bytes: usize,
    /// Most topic patterns one connection may be subscribed to; a `subscribe`
    /// beyond this is answered with an `error`. Default `1000`.
    pub max_subscriptions_per_connection: usize,
    /// Longest topic or pattern accepted, in bytes (at most 65535).
    /// Default `256`.
    pub max_topic_length: usize,
    /// A malformed frame (bad JSON or MessagePack, wrong frame type, missing
    /// field, invalid topic, unknown `op`) is answered with an `error` frame;
    /// the error that makes the count exceed this limit is answered too,
    /// then the connection is closed with close code 1008. Default `10`.
    pub max_protocol_errors: u32,
    /// WebSocket upgrades per second from one client IP (token bucket);
    /// beyond it the upgrade gets 429 `rate_limited`. `0` turns the check
    /// off (load tests from one address). Default `100`.
    pub handshake_rate_per_ip: u32,
    /// Upgrades one IP may make at once before `handshake_rate_per_ip`
    /// applies. Default `200`.
    pub handshake_burst_per_ip: u32,
    /// Messages per second one connection (or one HTTP credential: API key,
    /// token subject, or client IP without auth) may publish, with a burst
    /// of one second's worth; beyond it a publish is refused with `limit`
    /// (HTTP 429). `0` turns it off. Default `100000`.
    pub publish_rate: u32,
    /// Payload bytes per second one connection (or HTTP credential) may
    /// publish; the burst is one second's worth or `max_message_bytes`,
    /// whichever is larger. `0` turns it off. Default `67108864` (64 MiB).
    pub publish_bytes_rate: u32,
    /// Most wildcards (`+` and `#`) in one subscription pattern; more is a
    /// `bad_request`. Default `8`.
    pub max_pattern_wildcards: usize,
    /// Budget for bytes queued to all subscribers together (sampled once a
    /// second). Above it new connections get 503 `at_capacity`, new
    /// subscriptions `limit`, and `/readyz` says `at_capacity`, before the
    /// kernel's OOM killer has to decide. Default `1073741824` (1 GiB).
    pub max_queued_bytes_total: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            max_message_bytes: 1_048_576,
            max_subscriptions_per_connection: 1_000,
            max_topic_length: 256,
            max_protocol_errors: 10,
            handshake_rate_per_ip: 100,
            handshake_burst_per_ip: 200,
            publish_rate: 100_000,
            publish_bytes_rate: 64 * 1024 * 1024,
            max_pattern_wildcards: 8,
            max_queued_bytes_total: 1 << 30,
        }
    }
}

/// `[heartbeat]`: WebSocket ping/pong liveness checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    /// How often the server sends a WebSocket ping on every connection,
    /// whatever its traffic (it also measures the round trip). Keep it below the idle timeout of any proxy or load
    /// balancer in front of pulsegate. Default `25s`.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long to wait for the pong answering a ping before the connection
    /// is considered dead and closed. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
        }
    }
}

/// `[delivery]`: per-connection outbound queue and what happens when it fills.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Most messages waiting to be written to one connection. Default `1024`.
    pub queue_max_messages: usize,
    /// Most bytes of messages waiting to be written to one connection.
    /// Default `1048576` (1 MiB).
    pub queue_max_bytes: usize,
    /// What happens when a connection's queue is full: `"disconnect"` closes
    /// the connection as a slow consumer; `"conflate"` keeps only the newest
    /// queued message per topic so the subscriber skips intermediate values.
    /// Default `"disconnect"`.
    pub slow_consumer: SlowConsumer,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            queue_max_messages: 1_024,
            queue_max_bytes: 1_048_576,
            slow_consumer: SlowConsumer::Disconnect,
        }
    }
}

/// What to do with a subscriber whose outbound queue is full
/// (`delivery.slow_consumer`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowConsumer {
    /// Close the connection; the client reconnects and resumes from history.
    #[default]
    Disconnect,
    /// Keep only the newest queued message per topic.
    Conflate,
}

impl SlowConsumer {
    /// The spelling used in config files and environment variables.
    pub fn as_str(self) -> &'static str {
        match self {
            SlowConsumer::Disconnect => "disconnect",
            SlowConsumer::Conflate => "conflate",
        }
    }
}

impl fmt::Display for SlowConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[history]`: per-topic history kept for resume and late joiners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Most messages kept per topic; the oldest is evicted first.
    /// Default `1000`.
    pub max_messages: usize,
    /// Messages older than this are evicted from history. Default `5m`.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Most concrete topics kept on this node (history and last value).
    /// Publishing to a new topic beyond it is refused with error code
    /// `limit` (HTTP 429); topics without subscribers and without a message
    /// younger than `max_age` are forgotten by a sweep every 5 s, freeing
    /// room. Default `100000`.
    pub max_topics: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            max_messages: 1_000,
            max_age: Duration::from_secs(5 * 60),
            max_topics: 100_000,
        }
    }
}

/// `[tls]`: certificate and key; the listener speaks plain TCP when both are
/// unset. Set both or neither.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first. Relative paths are
    /// resolved against the working directory. Default: unset.
    pub cert: Option<PathBuf>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1) matching `cert`.
    /// Relative paths are resolved against the working directory.
    /// Default: unset.
    pub key: Option<PathBuf>,
    /// PEM file with the CA certificate(s) that sign client certificates.
    /// When set, the server asks every TLS client for a certificate
    /// (optional for the client) and verifies the ones presented.
    /// Default: unset.
    pub client_ca: Option<PathBuf>,
    /// Publishing (WebSocket `pub` and the HTTP publish API) needs a client
    /// certificate verified against `client_ca` (mTLS publishers), on top of
    /// what `auth.mode` asks. Subscribers need none. Default `false`.
    pub require_client_cert_for_publish: bool,
}

/// Why configuration could not be loaded. Every message names the key (or
/// file, or variable) at fault and what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file given explicitly could not be opened.
    #[error("cannot read config file {}: {reason}", .path.display())]
    FileUnreadable {
        /// The path as given.
        path: PathBuf,
        /// The operating system's reason.
        reason: std::io::Error,
    },
    /// The TOML text itself is malformed.
    #[error("invalid TOML {origin}: {message}")]
    Syntax {
        /// Where the text came from, e.g. `in file pulsegate.toml`.
        origin: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key or section that does not exist.
    #[error(
        "unknown config {} `{key}` ({origin}); {}",
        if .section.is_some() { "key" } else { "section or key" },
        unknown_key_hint(.section.as_deref(), .known, .suggestion.as_deref())
    )]
    UnknownKey {
        /// Full dotted key, e.g. `server.lisen`.
        key: String,
        /// Where it came from, e.g. `in env PULSEGATE_SERVER__LISEN`.
        origin: String,
        /// The section it was found in; `None` at the top level.
        section: Option<String>,
        /// The keys that do exist there.
        known: Vec<&'static str>,
        /// A likely intended key, if one is close.
        suggestion: Option<String>,
    },
    /// A key whose value has the wrong type or form.
    #[error("invalid value for config key `{key}` ({origin}): {reason}")]
    InvalidValue {
        /// Full dotted key.
        key: String,
        /// Where the value came from.
        origin: String,
        /// What was wrong and what is expected.
        reason: String,
    },
    /// A well-formed value that breaks a rule checked by [`Config::validate`].
    #[error("config key {key} {reason}{}", .origin.as_ref().map(|o| format!(" (set {o})")).unwrap_or_default())]
    Invalid {
        /// Full dotted key.
        key: String,
        /// The rule and the offending value, e.g. `must be > 0, got 0`.
        reason: String,
        /// Where the value came from, when known (not for defaults).
        origin: Option<String>,
    },
    /// A `PULSEGATE_*__*` variable whose name has an empty section or key.
    #[error(
        "environment variable {name} does not name a config key: use \
         PULSEGATE_<SECTION>__<KEY>, e.g. PULSEGATE_SERVER__LISTEN"
    )]
    MalformedEnvName {
        /// The variable name as found.
        name: String,
    },
    /// An override whose key is not `section.key`.
    #[error(
        "override `{key}` does not name a config key: use <section>.<key>, \
         e.g. server.listen"
    )]
    MalformedOverride {
        /// The key as given.
        key: String,
    },
    /// Any other failure reported while merging sources.
    #[error("invalid configuration ({origin}): {message}")]
    Other {
        /// Where it came from.
        origin: String,
        /// What went wrong.
        message: String,
    },
}

fn unknown_key_hint(
    section: Option<&str>,
    known: &[&'static str],
    suggestion: Option<&str>,
) -> String {
    let mut hint = match section {
        Some(section) => format!("known keys in [{section}]: {}", known.join(", ")),
        None => format!("known sections: {}", known.join(", ")),
    };
    if let Some(suggestion) = suggestion {
        let _ = write!(hint, "; did you mean `{suggestion}`?");
    }
    hint
}

impl Config {
    /// Loads the configuration: defaults < `file` < process environment
    /// `PULSEGATE_*` < `overrides` (dotted key, value), then validates it.
    ///
    /// `file` must exist when given. Environment variables starting with
    /// `PULSEGATE_` but without `__` (like `PULSEGATE_LOG`) are not config
    /// keys and are ignored.
    pub fn load(file: Option<&Path>, overrides: &[(&str, String)]) -> Result<Config, ConfigError> {
        // vars_os rather than vars: a non-UTF-8 variable elsewhere in the
        // environment must not abort startup.
        let env = std::env::vars_os().map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        });
        Config::load_from(file, env, overrides)
    }

    /// As [`Config::load`], with the environment given explicitly as
    /// `(name, value)` pairs; all pairs may be passed, non-`PULSEGATE_` ones
    /// are skipped.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(&str, String)],
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();

        if let Some(path) = file {
            match std::fs::metadata(path) {
                Ok(meta) if meta.is_file() => {}
                Ok(_) => {
                    return Err(ConfigError::FileUnreadable {
                        path: path.to_owned(),
                        reason: std::io::Error::other("not a regular file"),
                    })
                }
                Err(reason) => {
                    return Err(ConfigError::FileUnreadable {
                        path: path.to_owned(),
                        reason,
                    })
                }
            }
            figment = figment.merge(Toml::file_exact(path));
        }

        let mut env_entries = Vec::new();
        for (name, value) in env {
            if let Some(entry) = env_entry(name, value)? {
                env_entries.push(entry);
            }
        }
        // Deterministic order, so that names differing only in case resolve
        // the same way on every run.
        env_entries.sort();
        for entry in env_entries {
            figment = figment.merge(entry);
        }

        for (key, value) in overrides {
            if key.is_empty() || key.split('.').any(str::is_empty) {
                return Err(ConfigError::MalformedOverride {
                    key: (*key).to_owned(),
                });
            }
            figment = figment.merge(KeyValue {
                provider: OVERRIDE_PROVIDER_NAME,
                origin_name: (*key).to_owned(),
                key: key.to_ascii_lowercase(),
                value: value.clone(),
            });
        }

        extract_validated(&figment)
    }

    /// Parses and validates a TOML document alone (no environment, no
    /// overrides). Missing keys take their defaults.
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        extract_validated(&Figment::from(Toml::string(s)))
    }

    /// Checks every rule that the types alone do not: bounds are positive,
    /// `tls.cert` and `tls.key` are set together and name existing files.
    /// The first violation is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive: [(&str, u64); 13] = [
            (
                "limits.handshake_burst_per_ip",
                u64::from(self.limits.handshake_burst_per_ip),
            ),
            (
                "limits.max_pattern_wildcards",
                self.limits.max_pattern_wildcards as u64,
            ),
            (
                "limits.max_queued_bytes_total",
                self.limits.max_queued_bytes_total as u64,
            ),
            ("limits.max_connections", self.limits.max_connections as u64),
            (
                "limits.max_connections_per_ip",
                self.limits.max_connections_per_ip as u64,
            ),
            (
                "limits.max_message_bytes",
                self.limits.max_message_bytes as u64,
            ),
            (
                "limits.max_subscriptions_per_connection",
                self.limits.max_subscriptions_per_connection as u64,
            ),
            (
                "limits.max_topic_length",
                self.limits.max_topic_length as u64,
            ),
            (
                "limits.max_protocol_errors",
                u64::from(self.limits.max_protocol_errors),
            ),
            (
                "delivery.queue_max_messages",
                self.delivery.queue_max_messages as u64,
            ),
            (
                "delivery.queue_max_bytes",
                self.delivery.queue_max_bytes as u64,
            ),
            ("history.max_messages", self.history.max_messages as u64),
            ("history.max_topics", self.history.max_topics as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be > 0, got 0".into()));
            }
        }

        if self.limits.max_topic_length > MAX_TOPIC_LENGTH_CEILING {
            return Err(invalid(
                "limits.max_topic_length",
                format!(
                    "must be <= {MAX_TOPIC_LENGTH_CEILING}, got {}",
                    self.limits.max_topic_length
                ),
            ));
        }

        // drain_period may be zero (close at once); a zero timeout anywhere
        // else would fail every connection.
        let nonzero_durations = [
            ("server.handshake_timeout", self.server.handshake_timeout),
            ("server.write_timeout", self.server.write_timeout),
            ("heartbeat.ping_interval", self.heartbeat.ping_interval),
            ("heartbeat.pong_timeout", self.heartbeat.pong_timeout),
            ("history.max_age", self.history.max_age),
        ];
        for (key, value) in nonzero_durations {
            if value.is_zero() {
                return Err(invalid(key, "must be > 0, got 0s".into()));
            }
        }

        for origin in &self.server.allowed_origins {
            check_origin(origin)?;
        }
        for proxy in &self.server.trusted_proxies {
            crate::clientip::parse_net(proxy)
                .map_err(|e| invalid("server.trusted_proxies", format!("entry {e}")))?;
        }

        if let Some(name) = &self.server.node_name {
            if name.trim().is_empty() {
                return Err(invalid(
                    "server.node_name",
                    "must not be empty; leave it unset to use the host name".into(),
                ));
            }
        }

        self.validate_cluster()?;
        self.validate_integer_range()?;
        if !(1..=9).contains(&self.compression.level) {
            return Err(invalid(
                "compression.level",
                format!("must be 1 to 9, got {}", self.compression.level),
            ));
        }

        if let Some(token) = &self.admin.token {
            if token.expose().chars().count() < 16 {
                return Err(invalid(
                    "admin.token",
                    "must be at least 16 characters (it guards the admin API); generate one with `openssl rand -hex 24`".into(),
                ));
            }
        }

        self.validate_auth()?;

        match (&self.tls.cert, &self.tls.key) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(invalid(
                    "tls.key",
                    "must be set because tls.cert is set (set both or neither)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "tls.cert",
                    "must be set because tls.key is set (set both or neither)".into(),
                ))
            }
            (Some(cert), Some(key)) => {
                check_readable_file("tls.cert", cert)?;
                check_readable_file("tls.key", key)?;
            }
        }
        if let Some(ca) = &self.tls.client_ca {
            if self.tls.cert.is_none() {
                return Err(invalid(
                    "tls.client_ca",
                    "needs TLS: set tls.cert and tls.key too".into(),
                ));
            }
            check_readable_file("tls.client_ca", ca)?;
        }
        if self.tls.require_client_cert_for_publish && self.tls.client_ca.is_none() {
            return Err(invalid(
                "tls.require_client_cert_for_publish",
                "needs tls.client_ca (the CA that signs publisher certificates)".into(),
            ));
        }

        Ok(())
    }

    /// `[auth]` when authentication is on.
    pub fn auth_if_on(&self) -> Option<&AuthConfig> {
        (self.auth.mode == AuthMode::Jwt).then_some(&self.auth)
    }

    /// Every count and size must fit a TOML integer (`i64`): a larger one
    /// can arrive as a string from an environment variable or `--set`, and
    /// the effective config would then not print as TOML that reads back.
    fn validate_integer_range(&self) -> Result<(), ConfigError> {
        let tree = serde_json::to_value(self).map_err(|e| invalid("config", e.to_string()))?;
        for (section, keys) in tree.as_object().into_iter().flatten() {
            for (key, value) in keys.as_object().into_iter().flatten() {
                if let Some(n) = value.as_u64().filter(|n| *n > i64::MAX as u64) {
                    return Err(invalid(
                        &format!("{section}.{key}"),
                        format!(
                            "must be at most {} (the largest TOML integer), got {n}",
                            i64::MAX
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        if c.prefix.is_empty()
            || !c
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "cluster.prefix",
                format!("must be letters, digits, `-` or `_`, got {:?}", c.prefix),
            ));
        }
        if c.node_name.as_ref().is_some_and(|n| n.trim().is_empty()) {
            return Err(invalid(
                "cluster.node_name",
                "must not be empty; leave it unset to use server.node_name".into(),
            ));
        }
        if c.max_bytes == 0 {
            return Err(invalid("cluster.max_bytes", "must be > 0, got 0".into()));
        }
        for (key, url, scheme) in [
            ("cluster.nats_url", &c.nats_url, "nats"),
            ("cluster.redis_url", &c.redis_url, "redis"),
        ] {
            let u = url.expose();
            let ok = u.split_once("://").is_some_and(|(s, rest)| {
                (s == scheme || s == format!("{scheme}s") || s == "tls" && scheme == "nats")
                    && !rest.is_empty()
            });
            if !ok {
                return Err(invalid(
                    key,
                    format!("must look like {scheme}://host:port, got {url}"),
                ));
            }
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
        let sources = [
            ("auth.jwt_hs256_secret", a.jwt_hs256_secret.is_some()),
            ("auth.jwt_public_key_file", a.jwt_public_key_file.is_some()),
            ("auth.jwks_file", a.jwks_file.is_some()),
        ];
        let set: Vec<&str> = sources.iter().filter(|s| s.1).map(|s| s.0).collect();
        if a.mode == AuthMode::None {
            let stray = set.first().copied().or_else(|| {
                [
                    ("auth.audience", a.audience.is_some()),
                    ("auth.issuer", a.issuer.is_some()),
                    ("auth.api_keys", !a.api_keys.is_empty()),
                ]
                .iter()
                .find(|s| s.1)
                .map(|s| s.0)
            });
            if let Some(key) = stray {
                return Err(invalid(
                    key,
                    "is set but auth.mode is \"none\": set auth.mode = \"jwt\" or remove it".into(),
                ));
            }
            return Ok(());
        }
        match set.as_slice() {
            [] => {
                return Err(invalid(
                    "auth.mode",
                    "is \"jwt\" but no key is configured: set one of auth.jwt_hs256_secret, auth.jwt_public_key_file, auth.jwks_file".into(),
                ))
            }
            [_] => {}
            [first, second, ..] => {
                return Err(invalid(
                    second,
                    format!("cannot be combined with {first}: set exactly one token key source"),
                ))
            }
        }
        if let Some(secret) = &a.jwt_hs256_secret {
            if secret.expose().len() < 32 {
                return Err(invalid(
                    "auth.jwt_hs256_secret",
                    "must be at least 32 bytes (HS256 needs a key as long as its hash)".into(),
                ));
            }
        }
        if let Some(path) = &a.jwt_public_key_file {
            check_readable_file("auth.jwt_public_key_file", path)?;
        }
        if let Some(path) = &a.jwks_file {
            check_readable_file("auth.jwks_file", path)?;
        }
        if a.timeout.is_zero() {
            return Err(invalid("auth.timeout", "must be > 0, got 0s".into()));
        }
        if a.api_keys.iter().any(|k| k.expose().chars().count() < 16) {
            return Err(invalid(
                "auth.api_keys",
                "every key must be at least 16 characters".into(),
            ));
        }
        Ok(())
    }

    /// Renders the effective configuration as TOML that [`Config::from_toml_str`]
    /// reads back to an equal `Config` (used by `check-config --print`).
    /// Unset optional keys are written as comments.
    pub fn to_toml_string(&self) -> String {
        let mut out = String::new();
        let s = &self.server;
        out.push_str("[server]\n");
        line(&mut out, "listen", &toml_str(&s.listen.to_string()));
        let origins: Vec<String> = s.allowed_origins.iter().map(|o| toml_str(o)).collect();
        line(
            &mut out,
            "allowed_origins",
            &format!("[{}]", origins.join(", ")),
        );
        line(&mut out, "drain_period", &toml_duration(s.drain_period));
        line(
            &mut out,
            "handshake_timeout",
            &toml_duration(s.handshake_timeout),
        );
        match &s.node_name {
            Some(name) => line(&mut out, "node_name", &toml_str(name)),
            None => out.push_str("# node_name is unset: the host name is used\n"),
        }
        line(&mut out, "write_timeout", &toml_duration(s.write_timeout));
        let proxies: Vec<String> = s.trusted_proxies.iter().map(|o| toml_str(o)).collect();
        line(
            &mut out,
            "trusted_proxies",
            &format!("[{}]", proxies.join(", ")),
        );
        line(
            &mut out,
            "first_frame_timeout",
            &toml_duration(s.first_frame_timeout),
        );

        let l = &self.limits;
        out.push_str("\n[limits]\n");
        line(&mut out, "max_connections", &l.max_connections.to_string());
        line(
            &mut out,
            "max_connections_per_ip",
            &l.max_connections_per_ip.to_string(),
        );
        line(
            &mut out,
            "max_message_bytes",
            &l.max_message_bytes.to_string(),
        );
        line(
            &mut out,
            "max_subscriptions_per_connection",
            &l.max_subscriptions_per_connection.to_string(),
        );
        line(
            &mut out,
            "max_topic_length",
            &l.max_topic_length.to_string(),
        );
        line(
            &mut out,
            "max_protocol_errors",
            &l.max_protocol_errors.to_string(),
        );
        for (name, v) in [
            ("handshake_rate_per_ip", l.handshake_rate_per_ip as usize),
            ("handshake_burst_per_ip", l.handshake_burst_per_ip as usize),
            ("publish_rate", l.publish_rate as usize),
            ("publish_bytes_rate", l.publish_bytes_rate as usize),
            ("max_pattern_wildcards", l.max_pattern_wildcards),
            ("max_queued_bytes_total", l.max_queued_bytes_total),
        ] {
            line(&mut out, name, &v.to_string());
        }

        let h = &self.heartbeat;
        out.push_str("\n[heartbeat]\n");
        line(&mut out, "ping_interval", &toml_duration(h.ping_interval));
        line(&mut out, "pong_timeout", &toml_duration(h.pong_timeout));

        let d = &self.delivery;
        out.push_str("\n[delivery]\n");
        line(
            &mut out,
            "queue_max_messages",
            &d.queue_max_messages.to_string(),
        );
        line(&mut out, "queue_max_bytes", &d.queue_max_bytes.to_string());
        line(
            &mut out,
            "slow_consumer",
            &toml_str(d.slow_consumer.as_str()),
        );

        let hi = &self.history;
        out.push_str("\n[history]\n");
        line(&mut out, "max_messages", &hi.max_messages.to_string());
        line(&mut out, "max_age", &toml_duration(hi.max_age));
        line(&mut out, "max_topics", &hi.max_topics.to_string());

        out.push_str("\n[tls]\n");
        for (name, path) in [
            ("cert", &self.tls.cert),
            ("key", &self.tls.key),
            ("client_ca", &self.tls.client_ca),
        ] {
            match path {
                Some(path) => line(&mut out, name, &toml_str(&path.to_string_lossy())),
                None => {
                    let _ = writeln!(out, "# {name} is unset");
                }
            }
        }

        line(
            &mut out,
            "require_client_cert_for_publish",
            &self.tls.require_client_cert_for_publish.to_string(),
        );

        out.push_str("\n[admin]\n");
        match &self.admin.token {
            Some(_) => out.push_str("# token is set (not shown)\n"),
            None => out.push_str("# token is unset: admin API disabled\n"),
        }

        out.push_str("\n[metrics]\n");
        line(&mut out, "enabled", &self.metrics.enabled.to_string());

        let a = &self.auth;
        out.push_str("\n[auth]\n");
        line(&mut out, "mode", &toml_str(a.mode.as_str()));
        match &a.jwt_hs256_secret {
            Some(_) => out.push_str("# jwt_hs256_secret is set (not shown)\n"),
            None => out.push_str("# jwt_hs256_secret is unset\n"),
        }
        for (name, path) in [
            ("jwt_public_key_file", &a.jwt_public_key_file),
            ("jwks_file", &a.jwks_file),
        ] {
            match path {
                Some(path) => line(&mut out, name, &toml_str(&path.to_string_lossy())),
                None => {
                    let _ = writeln!(out, "# {name} is unset");
                }
            }
        }
        for (name, v) in [("audience", &a.audience), ("issuer", &a.issuer)] {
            match v {
                Some(v) => line(&mut out, name, &toml_str(v)),
                None => {
                    let _ = writeln!(out, "# {name} is unset");
                }
            }
        }
        line(&mut out, "leeway", &toml_duration(a.leeway));
        line(&mut out, "timeout", &toml_duration(a.timeout));
        let _ = writeln!(out, "# api_keys: {} set (not shown)", a.api_keys.len());

        let c = &self.cluster;
        out.push_str("\n[cluster]\n");
        line(&mut out, "backplane", &toml_str(c.backplane.as_str()));
        match &c.node_name {
            Some(name) => line(&mut out, "node_name", &toml_str(name)),
            None => {
                out.push_str("# node_name is unset: server.node_name or the host name is used\n")
            }
        }
        line(&mut out, "nats_url", &toml_str(&c.nats_url.to_string()));
        line(&mut out, "redis_url", &toml_str(&c.redis_url.to_string()));
        line(&mut out, "prefix", &toml_str(&c.prefix));
        line(&mut out, "max_bytes", &c.max_bytes.to_string());

        let z = &self.compression;
        out.push_str("\n[compression]\n");
        line(&mut out, "enabled", &z.enabled.to_string());
        line(&mut out, "threshold", &z.threshold.to_string());
        line(&mut out, "level", &z.level.to_string());
        out
    }
}

/// Extracts a `Config` from merged sources, translating figment's errors into
/// [`ConfigError`]s that name the key and its origin, then validates it.
fn extract_validated(figment: &Figment) -> Result<Config, ConfigError> {
    // Lossy extraction lets numbers arrive as strings, which is the only form
    // environment variables and overrides have; strings such as `node_name`
    // stay strings even when they look like numbers.
    let config: Config = figment
        .extract_lossy()
        .map_err(|err| from_figment(err, figment))?;
    config.validate().map_err(|err| match err {
        ConfigError::Invalid {
            key,
            reason,
            origin: None,
        } => {
            let origin = figment.find_metadata(&key).map(describe_origin);
            ConfigError::Invalid {
                key,
                reason,
                origin,
            }
        }
        other => other,
    })?;
    Ok(config)
}

fn invalid(key: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason,
        origin: None,
    }
}

fn check_origin(origin: &str) -> Result<(), ConfigError> {
    if origin == "*" {
        return Ok(());
    }
    // Browsers send `scheme://host[:port]`; anything with a path or trailing
    // slash would never match, so refuse it instead of silently denying.
    let well_formed = match origin.split_once("://") {
        Some((scheme, rest)) => {
            !scheme.is_empty()
                && !rest.is_empty()
                && !rest.contains(['/', '?', '#'])
                && !origin.contains(char::is_whitespace)
        }
        None => false,
    };
    if well_formed {
        Ok(())
    } else {
        Err(invalid(
            "server.allowed_origins",
            format!(
                "entries must be \"*\" or scheme://host[:port] without a path or \
                 trailing slash (e.g. https://app.example), got {origin:?}"
            ),
        ))
    }
}

fn check_readable_file(key: &str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(invalid(
            key,
            format!("names {}, which is not a regular file", path.display()),
        )),
        Err(err) => Err(invalid(
            key,
            format!("names {}, which cannot be read: {err}", path.display()),
        )),
    }
}

/// Turns one environment variable into a config entry: `None` when it is not
/// ours (no `PULSEGATE_` prefix, or no `__`, like `PULSEGATE_LOG`).
fn env_entry(name: String, value: String) -> Result<Option<KeyValue>, ConfigError> {
    let Some(prefix) = name.get(..ENV_PREFIX.len()) else {
        return Ok(None);
    };
    if !prefix.eq_ignore_ascii_case(ENV_PREFIX) {
        return Ok(None);
    }
    let rest = &name[ENV_PREFIX.len()..];
    if !rest.contains(ENV_SEPARATOR) {
        return Ok(None);
    }
    let parts: Vec<&str> = rest.split(ENV_SEPARATOR).collect();
    if parts.iter().any(|p| p.is_empty() || p.contains('.')) {
        return Err(ConfigError::MalformedEnvName { name });
    }
    Ok(Some(KeyValue {
        provider: ENV_PROVIDER_NAME,
        key: parts.join(".").to_ascii_lowercase(),
        origin_name: name,
        value,
    }))
}

/// One string value at a dotted key, from one environment variable or one
/// override. Each is its own figment provider so that errors point at the
/// exact variable or override that supplied the value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct KeyValue {
    provider: &'static str,
    /// Variable name or override key as the user wrote it.
    origin_name: String,
    /// Lowercase dotted key.
    key: String,
    value: String,
}

impl Provider for KeyValue {
    fn metadata(&self) -> Metadata {
        Metadata::from(self.provider, Source::Custom(self.origin_name.clone()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let nested = figment::util::nest(&self.key, Value::from(self.value.clone()));
        let dict = nested
            .into_dict()
            .ok_or_else(|| figment::Error::from(format!("empty key for {}", self.origin_name)))?;
        let mut map = Map::new();
        map.insert(Profile::Default, dict);
        Ok(map)
    }
}

/// "in file x.toml", "in env PULSEGATE_X__Y", "in command-line override x.y".
fn describe_origin(md: &Metadata) -> String {
    match &md.source {
        Some(Source::File(path)) => format!("in file {}", path.display()),
        Some(Source::Custom(name)) if md.name == ENV_PROVIDER_NAME => format!("in env {name}"),
        Some(Source::Custom(name)) if md.name == OVERRIDE_PROVIDER_NAME => {
            format!("in command-line override {name}")
        }
        _ if md.name.contains("source string") => "in TOML text".to_owned(),
        Some(source) => format!("in {} {source}", md.name),
        None => format!("in {}", md.name),
    }
}

fn from_figment(err: figment::Error, figment: &Figment) -> ConfigError {
    // Deserialization stops at the first problem; when several providers
    // failed to parse, the first one reported is enough to act on.
    let err = err.into_iter().next().expect("an error holds at least one");
    let origin = err
        .metadata
        .as_ref()
        .map(describe_origin)
        .unwrap_or_else(|| "in the configuration".to_owned());
    let key = err.path.join(".");

    if err.path.is_empty() {
        return match err.kind {
            Kind::Message(message) => ConfigError::Syntax { origin, message },
            kind => ConfigError::Other {
                origin,
                message: kind.to_string(),
            },
        };
    }

    let reason = match err.kind {
        Kind::UnknownField(field, known) => {
            let section = (err.path.len() > 1).then(|| err.path[..err.path.len() - 1].join("."));
            let suggestion = suggest(section.as_deref(), &field, known);
            return ConfigError::UnknownKey {
                key,
                origin,
                section,
                known: known.to_vec(),
                suggestion,
            };
        }
        Kind::UnknownVariant(found, expected) => {
            format!("expected {}, found `{found}`", OneOf(expected))
        }
        Kind::InvalidType(found, expected) | Kind::InvalidValue(found, expected) => {
            format!("expected {}, found {found}", expected_form(&expected))
        }
        // Custom messages (e.g. from `FromStr` of a socket address) do not
        // include the value, so look it up to show what was given.
        Kind::Message(message) => {
            let expected = match key.as_str() {
                "server.listen" => "an IP address and port such as 127.0.0.1:8080 or [::]:8080",
                _ => "a valid value",
            };
            match figment.find_value(&key) {
                Ok(Value::String(_, found)) => {
                    format!("expected {expected}, found {found:?} ({message})")
                }
                _ => message,
            }
        }
        kind => kind.to_string(),
    };
    ConfigError::InvalidValue {
        key,
        origin,
        reason,
    }
}

fn expected_form(expected: &str) -> String {
    match expected {
        "a duration" => "a duration such as \"250ms\", \"5s\" or \"1m\"".to_owned(),
        other => other.to_owned(),
    }
}

/// A likely intended key for an unknown `field`: the same name in another
/// section (`listen` at the top level means `server.listen`), or a known key
/// within edit distance 2.
fn suggest(section: Option<&str>, field: &str, known: &[&str]) -> Option<String> {
    let prefix = section.map(|s| format!("{s}.")).unwrap_or_default();
    if let Some(close) = known.iter().find(|k| edit_distance(k, field) <= 2) {
        return Some(format!("{prefix}{close}"));
    }
    KEYS.iter()
        .find(|k| k.rsplit('.').next() == Some(field))
        .map(|k| (*k).to_owned())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Accepts a list either as a TOML array or as one comma-separated string
/// (`"https://a.example, https://b.example"`), the only form environment
/// variables and overrides can carry. Blank items are dropped.
fn list_or_comma_string<'de, D>(deserializer: D) -> Result<Vec<String>, D::Error>
where
    D: Deserializer<'de>,
{
    struct ListVisitor;

    impl<'de> serde::de::Visitor<'de> for ListVisitor {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of strings or a comma-separated string")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(v.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect())
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(item) = seq.next_element::<String>()? {
                items.push(item);
            }
            Ok(items)
        }
    }

    deserializer.deserialize_any(ListVisitor)
}

fn line(out: &mut String, key: &str, value: &str) {
    let _ = writeln!(out, "{key} = {value}");
}

fn toml_duration(d: Duration) -> String {
    toml_str(&humantime::format_duration(d).to_string())
}

/// A TOML basic string with the escapes the TOML spec requires.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A file under the temp dir with a unique name, removed on drop even when
    /// the test fails.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(suffix: &str, contents: &str) -> TempFile {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "pulsegate-config-test-{}-{}-{suffix}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(name);
            std::fs::write(&path, contents).expect("write temp file");
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let c = Config::default();
        assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(c.server.allowed_origins.is_empty());
        assert_eq!(c.server.drain_period, Duration::from_secs(30));
        assert_eq!(c.server.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.server.node_name, None);
        assert_eq!(c.server.write_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(c.limits.max_connections_per_ip, 1_000);
        assert_eq!(c.limits.max_message_bytes, 1_048_576);
        assert_eq!(c.limits.max_subscriptions_per_connection, 1_000);
        assert_eq!(c.limits.max_topic_length, 256);
        assert_eq!(c.limits.max_protocol_errors, 10);
        assert_eq!(c.heartbeat.ping_interval, Duration::from_secs(25));
        assert_eq!(c.heartbeat.pong_timeout, Duration::from_secs(10));
        assert_eq!(c.delivery.queue_max_messages, 1_024);
        assert_eq!(c.delivery.queue_max_bytes, 1_048_576);
        assert_eq!(c.delivery.slow_consumer, SlowConsumer::Disconnect);
        assert_eq!(c.history.max_messages, 1_000);
        assert_eq!(c.history.max_age, Duration::from_secs(300));
        assert_eq!(c.history.max_topics, 100_000);
        assert_eq!(c.tls, TlsConfig::default());
        c.validate().unwrap();

        let loaded = Config::load_from(None, no_env(), &[]).unwrap();
        assert_eq!(loaded, c);
        assert_eq!(Config::from_toml_str("").unwrap(), c);
    }

    #[test]
    fn toml_file_sets_keys_and_leaves_the_rest_default() {
        let file = TempFile::new(
            "pulsegate.toml",
            r#"
            [server]
            listen = "0.0.0.0:9000"
            allowed_origins = ["https://a.example", "https://b.example"]
            node_name = "edge-1"

            [limits]
            max_connections = 5000

            [delivery]
            slow_consumer = "conflate"

            [history]
            max_age = "1m"
            "#,
        );
        let c = Config::load_from(Some(&file.0), no_env(), &[]).unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(
            c.server.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(c.server.node_name.as_deref(), Some("edge-1"));
        assert_eq!(c.limits.max_connections, 5000);
        assert_eq!(c.delivery.slow_consumer, SlowConsumer::Conflate);
        assert_eq!(c.history.max_age, Duration::from_secs(60));
        assert_eq!(c.limits.max_message_bytes, 1_048_576);
        assert_eq!(c.heartbeat, HeartbeatConfig::default());
    }

    #[test]
    fn env_overrides_file() {
        let file = TempFile::new(
            "pulsegate.toml",
            "[server]\ndrain_period = \"1m\"\n[limits]\nmax_connections = 5000\n",
        );
        let c = Config::load_from(
            Some(&file.0),
            env(&[
                ("PULSEGATE_SERVER__DRAIN_PERIOD", "5s"),
                ("PULSEGATE_LIMITS__MAX_CONNECTIONS", "7000"),
                ("PULSEGATE_SERVER__NODE_NAME", "1234"),
                ("PATH", "/usr/bin"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(c.server.drain_period, Duration::from_secs(5));
        assert_eq!(c.limits.max_connections, 7000);
        // Looks like a number, stays a string.
        assert_eq!(c.server.node_name.as_deref(), Some("1234"));
    }

    #[test]
    fn overrides_win_over_env() {
        let c = Config::load_from(
            None,
            env(&[("PULSEGATE_LIMITS__MAX_CONNECTIONS", "5000")]),
            &[
                ("limits.max_connections", "42".to_owned()),
                ("server.listen", "[::1]:7000".to_owned()),
            ],
        )
        .unwrap();
        assert_eq!(c.limits.max_connections, 42);
        assert_eq!(c.server.listen, "[::1]:7000".parse().unwrap());
    }

    #[test]
    fn list_from_env_is_comma_separated() {
        let c = Config::load_from(
            None,
            env(&[(
                "PULSEGATE_SERVER__ALLOWED_ORIGINS",
                "https://a.example, https://b.example,",
            )]),
            &[],
        )
        .unwrap();
        assert_eq!(
            c.server.allowed_origins,
            ["https://a.example", "https://b.example"]
        );

        let c = Config::from_toml_str("[server]\nallowed_origins = \"*\"").unwrap();
        assert_eq!(c.server.allowed_origins, ["*"]);
    }

    #[test]
    fn durations_are_humantime_strings() {
        let c = Config::from_toml_str(
            "[server]\ndrain_period = \"5s\"\nwrite_timeout = \"250ms\"\n\
             [heartbeat]\nping_interval = \"1m 30s\"",
        )
        .unwrap();
        assert_eq!(c.server.drain_period, Duration::from_secs(5));
        assert_eq!(c.server.write_timeout, Duration::from_millis(250));
        assert_eq!(c.heartbeat.ping_interval, Duration::from_secs(90));

        let err = Config::from_toml_str("[server]\ndrain_period = 5").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for config key `server.drain_period` (in TOML text): \
             expected a duration such as \"250ms\", \"5s\" or \"1m\", found signed int `5`"
        );
    }

    #[test]
    fn unknown_key_in_file_is_named_with_its_file() {
        let file = TempFile::new("pulsegate.toml", "[server]\nlisen = \"0.0.0.0:80\"\n");
        let err = Config::load_from(Some(&file.0), no_env(), &[]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("unknown config key `server.lisen` (in file "),
            "{msg}"
        );
        assert!(
            msg.contains(file.0.file_name().unwrap().to_str().unwrap()),
            "{msg}"
        );
        assert!(
            msg.ends_with(
                "known keys in [server]: listen, allowed_origins, drain_period, \
                 handshake_timeout, node_name, write_timeout, trusted_proxies, first_frame_timeout; did you mean `server.listen`?"
            ),
            "{msg}"
        );
        assert!(matches!(err, ConfigError::UnknownKey { ref key, .. } if key == "server.lisen"));
    }

    #[test]
    fn counts_beyond_toml_integers_are_refused_with_their_key() {
        // Found by the `config` fuzz target: a string number above i64::MAX
        // was accepted and then printed as TOML that does not read back.
        let err = Config::from_toml_str("[limits]\nmax_connections = \"12913675589755338750\"\n")
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("limits.max_connections"), "{msg}");
        assert!(msg.contains("largest TOML integer"), "{msg}");
        let ok = Config::from_toml_str("[cluster]\nmax_bytes = \"9223372036854775807\"\n").unwrap();
        assert_eq!(Config::from_toml_str(&ok.to_toml_string()).unwrap(), ok);
    }

    #[test]
    fn unknown_section_and_misplaced_key_are_named() {
        let err = Config::from_toml_str("listen = \"0.0.0.0:80\"").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown config section or key `listen` (in TOML text); known sections: \
             server, limits, heartbeat, delivery, history, tls, admin, metrics, auth, cluster, compression; did you mean `server.listen`?"
        );
    }

    #[test]
    fn unknown_env_key_is_rejected_and_plain_pulsegate_vars_are_ignored() {
        let err = Config::load_from(
            None,
            env(&[("PULSEGATE_LOG", "debug"), ("PULSEGATE_SERVER__LISEN", "x")]),
            &[],
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "unknown config key `server.lisen` (in env PULSEGATE_SERVER__LISEN); \
                 known keys in [server]: listen,"
            ),
            "{err}"
        );

        let err =
            Config::load_from(None, env(&[("PULSEGATE_LOG__LEVEL", "debug")]), &[]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unknown config section or key `log` (in env PULSEGATE_LOG__LEVEL)"),
            "{err}"
        );

        let err = Config::load_from(None, env(&[("PULSEGATE_SERVER__", "x")]), &[]).unwrap_err();
        assert!(
            matches!(err, ConfigError::MalformedEnvName { ref name } if name == "PULSEGATE_SERVER__")
        );

        Config::load_from(None, env(&[("PULSEGATE_LOG", "debug")]), &[]).unwrap();
    }

    #[test]
    fn unknown_override_key_is_rejected() {
        let err = Config::load_from(None, no_env(), &[("limits.max_conections", "1".into())])
            .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "unknown config key `limits.max_conections` \
                 (in command-line override limits.max_conections)"
            ),
            "{err}"
        );
        let err = Config::load_from(None, no_env(), &[("limits.", "1".into())]).unwrap_err();
        assert!(
            matches!(err, ConfigError::MalformedOverride { .. }),
            "{err}"
        );
    }

    #[test]
    fn zero_limit_is_rejected_naming_the_key() {
        let mut c = Config::default();
        c.limits.max_message_bytes = 0;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "config key limits.max_message_bytes must be > 0, got 0"
        );

        let err = Config::load_from(
            None,
            env(&[("PULSEGATE_LIMITS__MAX_CONNECTIONS", "0")]),
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config key limits.max_connections must be > 0, got 0 \
             (set in env PULSEGATE_LIMITS__MAX_CONNECTIONS)"
        );

        let err = Config::from_toml_str("[limits]\nmax_topic_length = 70000").unwrap_err();
        assert_eq!(
            err.to_string(),
            "config key limits.max_topic_length must be <= 65535, got 70000 (set in TOML text)"
        );

        let err = Config::from_toml_str("[heartbeat]\nping_interval = \"0s\"").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("config key heartbeat.ping_interval must be > 0, got 0s"));
    }

    #[test]
    fn wrongly_typed_number_is_named() {
        let err = Config::load_from(
            None,
            env(&[("PULSEGATE_LIMITS__MAX_CONNECTIONS", "lots")]),
            &[],
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "invalid value for config key `limits.max_connections` \
                 (in env PULSEGATE_LIMITS__MAX_CONNECTIONS): expected usize"
            ),
            "{err}"
        );
    }

    #[test]
    fn bad_slow_consumer_value_is_named() {
        let err = Config::load_from(
            None,
            env(&[("PULSEGATE_DELIVERY__SLOW_CONSUMER", "drop")]),
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for config key `delivery.slow_consumer` \
             (in env PULSEGATE_DELIVERY__SLOW_CONSUMER): \
             expected `disconnect` or `conflate`, found `drop`"
        );
    }

    #[test]
    fn bad_listen_address_is_named() {
        let err = Config::from_toml_str("[server]\nlisten = \"localhost\"").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for config key `server.listen` (in TOML text): expected an IP \
             address and port such as 127.0.0.1:8080 or [::]:8080, found \"localhost\" \
             (invalid socket address syntax)"
        );
    }

    #[test]
    fn tls_must_be_fully_configured_with_existing_files() {
        let err = Config::from_toml_str("[tls]\ncert = \"/etc/pulsegate/cert.pem\"").unwrap_err();
        assert_eq!(
            err.to_string(),
            "config key tls.key must be set because tls.cert is set (set both or neither)"
        );
        let err = Config::from_toml_str("[tls]\nkey = \"/etc/pulsegate/key.pem\"").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("config key tls.cert must be set"));

        let cert = TempFile::new("cert.pem", "not really a cert");
        let missing_key = std::env::temp_dir().join("pulsegate-config-test-no-such-key.pem");
        let overrides = [
            ("tls.cert", cert.0.to_string_lossy().into_owned()),
            ("tls.key", missing_key.to_string_lossy().into_owned()),
        ];
        let err = Config::load_from(None, no_env(), &overrides).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "config key tls.key names {}, which cannot be read:",
                missing_key.display()
            )),
            "{err}"
        );

        let key = TempFile::new("key.pem", "not really a key");
        let overrides = [
            ("tls.cert", cert.0.to_string_lossy().into_owned()),
            ("tls.key", key.0.to_string_lossy().into_owned()),
        ];
        let c = Config::load_from(None, no_env(), &overrides).unwrap();
        assert_eq!(c.tls.cert.as_deref(), Some(cert.0.as_path()));
        assert_eq!(c.tls.key.as_deref(), Some(key.0.as_path()));
    }

    #[test]
    fn allowed_origins_must_be_origins() {
        let err = Config::from_toml_str("[server]\nallowed_origins = [\"https://a.example/\"]")
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("config key server.allowed_origins entries must be"),
            "{err}"
        );
        Config::from_toml_str("[server]\nallowed_origins = [\"*\", \"http://localhost:3000\"]")
            .unwrap();
    }

    #[test]
    fn missing_file_and_bad_toml_name_the_file() {
        let missing = std::env::temp_dir().join("pulsegate-config-test-missing.toml");
        let err = Config::load_from(Some(&missing), no_env(), &[]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read config file {}:", missing.display())),
            "{err}"
        );

        let file = TempFile::new("broken.toml", "[server\nlisten = 1\n");
        let err = Config::load_from(Some(&file.0), no_env(), &[]).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
        assert!(
            err.to_string().starts_with("invalid TOML in file "),
            "{err}"
        );
    }

    #[test]
    fn to_toml_string_round_trips_and_covers_every_key() {
        let cert = TempFile::new("cert.pem", "c");
        let key = TempFile::new("key.pem", "k");
        let mut c = Config::default();
        c.server.allowed_origins = vec!["https://a.example".into(), "*".into()];
        c.server.node_name = Some("node \"one\"".into());
        c.server.write_timeout = Duration::from_millis(250);
        c.delivery.slow_consumer = SlowConsumer::Conflate;
        c.tls.cert = Some(cert.0.clone());
        c.tls.key = Some(key.0.clone());
        c.tls.client_ca = Some(cert.0.clone());
        c.tls.require_client_cert_for_publish = true;
        c.metrics.enabled = false;
        c.admin.token = Some(Secret::new("a-secret-token-of-some-length"));
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwt_public_key_file = Some(cert.0.clone());
        c.auth.audience = Some("dashboards".into());
        c.auth.issuer = Some("https://idp.example".into());
        c.auth.leeway = Duration::from_secs(5);
        c.cluster.backplane = BackplaneKind::Redis;
        c.cluster.node_name = Some("gw-1".into());
        c.cluster.redis_url = ServerUrl::new("redis://10.0.0.5:6380/2");

        let text = c.to_toml_string();
        assert!(!text.contains("a-secret-token"), "{text}");
        // Secrets are not rendered, so they do not round-trip.
        c.admin.token = None;
        assert_eq!(Config::from_toml_str(&text).unwrap(), c, "{text}");
        let defaults = Config::default().to_toml_string();
        assert_eq!(Config::from_toml_str(&defaults).unwrap(), Config::default());

        let mut section = "";
        let mut rendered = Vec::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name;
            } else if let Some((k, _)) = line.split_once(" = ") {
                rendered.push(format!("{section}.{k}"));
            }
        }
        // Secrets are never rendered; `auth.jwks_file` excludes the
        // `auth.jwt_public_key_file` set here, so it is a comment.
        let expected: Vec<&str> = KEYS
            .iter()
            .copied()
            .filter(|k| !SECRET_KEYS.contains(k) && *k != "auth.jwks_file")
            .collect();
        assert_eq!(rendered, expected);
    }

    #[test]
    fn admin_token_is_checked_and_never_shown() {
        let err = Config::from_toml_str("[admin]\ntoken = \"short\"\n").unwrap_err();
        assert!(err.to_string().contains("admin.token"), "{err}");
        assert!(!err.to_string().contains("short"), "{err}");
        let c = Config::from_toml_str("[admin]\ntoken = \"0123456789abcdef-secret\"\n").unwrap();
        assert_eq!(
            c.admin.token.as_ref().unwrap().expose(),
            "0123456789abcdef-secret"
        );
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn example_file_and_docs_cover_every_key() {
        let example = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../pulsegate.example.toml"
        ));
        assert_eq!(Config::from_toml_str(example).unwrap(), Config::default());

        // Uncommenting every `#key = value` line must give known keys only,
        // with the defaults where the example shows them.
        let uncommented: String = example
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let figment = Figment::from(Toml::string(&uncommented));
        let uncommented: Config = figment.extract_lossy().unwrap();
        assert_eq!(uncommented.server.node_name.as_deref(), Some("gateway-1"));
        assert!(uncommented.tls.cert.is_some() && uncommented.tls.key.is_some());
        let mut expected = Config::default();
        expected.server.node_name = uncommented.server.node_name.clone();
        expected.tls = uncommented.tls.clone();
        assert_eq!(uncommented, expected);

        let docs = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/configuration.md"
        ));
        for key in KEYS {
            let env_name =
                format!("{ENV_PREFIX}{}", key.replace('.', ENV_SEPARATOR)).to_ascii_uppercase();
            assert!(docs.contains(&format!("`{key}`")), "{key} not documented");
            assert!(docs.contains(&env_name), "{env_name} not documented");
            assert!(example.contains(&env_name), "{env_name} not in example");
        }
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("listen", "lisen"), 1);
        assert_eq!(edit_distance("listen", "listen"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
