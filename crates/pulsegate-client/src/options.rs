//! How to reach a server: [`ClientOptions`], shared by every client entry point.
//!
//! Options are plain data built with chained methods
//! (`ClientOptions::new(url).codec(Codec::MsgPack).backoff(min, max)`); the
//! only I/O, reading an extra CA file, happens in
//! [`ClientOptions::add_root_ca_pem_file`] so a bad path fails at
//! configuration time with the path in the message, not on every reconnect.
//!
//! TLS uses rustls with the aws-lc-rs provider only, trusting the webpki
//! (Mozilla) roots plus any CA added here — enough for public certificates and
//! for self-signed test servers.
//!
//! Several nodes of one cluster (sharing a NATS or Redis backplane) can be
//! given with [`ClientOptions::fallback_url`]: the URL of `new` is tried
//! first, and every reconnect of a [`crate::Subscriber`] moves on to the next
//! URL in rotation (see `failover.rs`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pulsegate_proto::Codec;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_websockets::Connector;

use crate::ClientError;

/// Connection settings for [`crate::Connection`], [`crate::publish`] and [`crate::Subscriber`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub(crate) url: String,
    pub(crate) fallback_urls: Vec<String>,
    pub(crate) codec: Codec,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) max_reconnect_attempts: Option<u32>,
    pub(crate) max_message_bytes: usize,
    pub(crate) max_tracked_topics: usize,
    pub(crate) extra_roots: Vec<CertificateDer<'static>>,
    pub(crate) tls_config: Option<Arc<rustls::ClientConfig>>,
}

impl ClientOptions {
    /// Default for [`ClientOptions::connect_timeout`].
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default for [`ClientOptions::request_timeout`].
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default lower bound of [`ClientOptions::backoff`].
    pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(100);
    /// Default upper bound of [`ClientOptions::backoff`].
    pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(10);
    /// Default for [`ClientOptions::max_message_bytes`]: 16 MiB.
    pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
    /// Default for [`ClientOptions::max_tracked_topics`].
    pub const DEFAULT_MAX_TRACKED_TOPICS: usize = 4096;

    /// Options for the server at `url` (`ws://host:port/ws` or `wss://host/ws`),
    /// with the JSON codec and the defaults above. The URL is checked when connecting.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            fallback_urls: Vec::new(),
            codec: Codec::Json,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            backoff_min: Self::DEFAULT_BACKOFF_MIN,
            backoff_max: Self::DEFAULT_BACKOFF_MAX,
            max_reconnect_attempts: None,
            max_message_bytes: Self::DEFAULT_MAX_MESSAGE_BYTES,
            max_tracked_topics: Self::DEFAULT_MAX_TRACKED_TOPICS,
            extra_roots: Vec::new(),
            tls_config: None,
        }
    }

    /// Adds another node of the same cluster (same URL form as
    /// [`ClientOptions::new`]); may be called once per node. The URLs form a
    /// rotation — the first URL, then the fallbacks in the order added, then
    /// the first again: [`crate::Subscriber`] connects to the first and, after
    /// every disconnect or failed attempt, reconnects to the next one (after
    /// the usual jittered backoff or the server's drain hint) and resumes
    /// there with `since`. [`crate::publish`] tries them in order until one
    /// accepts the connection (it never re-sends a `pub`).
    ///
    /// Only useful with clustered servers (`cluster.backplane = "nats"` or
    /// `"redis"`): a standalone server's history is its own, so resuming on
    /// another one yields `not_recovered`.
    pub fn fallback_url(mut self, url: impl Into<String>) -> Self {
        self.fallback_urls.push(url.into());
        self
    }

    /// The subprotocol to ask for: `pulsegate.v1.json` (default) or
    /// `pulsegate.v1.msgpack`. A server that agrees to neither speaks JSON.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Time allowed for TCP connect, TLS, upgrade and the `welcome` frame together.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time allowed for the reply to a request (`pub`, `sub`, `ping`).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Reconnect backoff: the n-th consecutive retry waits a uniform random
    /// time between zero and `min(max, min · 2^(n-1))` ("full jitter").
    /// `max` below `min` is raised to `min`.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max.max(min);
        self
    }

    /// How many consecutive reconnects [`crate::Subscriber`] tries before
    /// giving up with [`ClientError::GaveUp`]; `None` (default) = forever,
    /// `Some(0)` = never reconnect.
    pub fn max_reconnect_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_reconnect_attempts = attempts;
        self
    }

    /// Largest WebSocket message accepted from the server; a larger one ends
    /// the connection with close code 1009.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// How many concrete topics a [`crate::Subscriber`] remembers positions
    /// for (duplicate/gap detection and resume). See [`crate::Positions`].
    pub fn max_tracked_topics(mut self, topics: usize) -> Self {
        self.max_tracked_topics = topics;
        self
    }

    /// Also trust the CA certificate(s) in a PEM file, e.g. a test server's
    /// self-signed certificate. May be called more than once.
    pub fn add_root_ca_pem_file(mut self, path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|e| {
            ClientError::Tls(format!("cannot read CA file {}: {e}", path.display()))
        })?;
        let before = self.extra_roots.len();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| {
                ClientError::Tls(format!("CA file {} is not valid PEM: {e}", path.display()))
            })?;
            self.extra_roots.push(cert);
        }
        if self.extra_roots.len() == before {
            return Err(ClientError::Tls(format!(
                "CA file {} holds no `BEGIN CERTIFICATE` block",
                path.display()
            )));
        }
        Ok(self)
    }

    /// Use this rustls configuration for `wss://` instead of the webpki roots
    /// plus added CAs (e.g. for client certificates).
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls_config = Some(config);
        self
    }

    /// The first server URL (the one given to [`ClientOptions::new`]).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every server URL in rotation order: [`ClientOptions::url`], then
    /// those added with [`ClientOptions::fallback_url`].
    pub fn urls(&self) -> Vec<&str> {
        std::iter::once(self.url.as_str())
            .chain(self.fallback_urls.iter().map(String::as_str))
            .collect()
    }

    /// The codec asked for.
    pub fn requested_codec(&self) -> Codec {
        self.codec
    }

    /// Parses and checks the first URL: scheme `ws` or `wss`, a host.
    #[cfg(test)]
    pub(crate) fn parsed_url(&self) -> Result<http::Uri, ClientError> {
        parse_url(&self.url)
    }

    /// Checks every URL of the rotation, so a typo in a fallback fails at
    /// the first connect rather than at the first failover.
    pub(crate) fn check_urls(&self) -> Result<(), ClientError> {
        for url in self.urls() {
            parse_url(url)?;
        }
        Ok(())
    }

    /// The TLS connector for `wss://` URLs.
    pub(crate) fn tls_connector(&self) -> Result<Connector, ClientError> {
        Ok(Connector::Rustls(self.rustls_client_config()?.into()))
    }

    /// The rustls configuration used for `wss://`: the one given with
    /// [`ClientOptions::tls_config`], else the webpki roots plus added CAs
    /// with the aws-lc-rs provider. Public for tools that drive the TLS
    /// handshake themselves and time it (`pulsegate probe`).
    pub fn rustls_client_config(&self) -> Result<Arc<rustls::ClientConfig>, ClientError> {
        if let Some(config) = &self.tls_config {
            return Ok(config.clone());
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in &self.extra_roots {
            roots
                .add(cert.clone())
                .map_err(|e| ClientError::Tls(format!("extra CA certificate rejected: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(format!("TLS protocol versions: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// Parses and checks a server URL: scheme `ws` or `wss`, a host.
pub(crate) fn parse_url(url: &str) -> Result<http::Uri, ClientError> {
    let invalid = |reason: String| ClientError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let uri: http::Uri = url.parse().map_err(|e| invalid(format!("{e}")))?;
    match uri.scheme_str() {
        Some("ws") | Some("wss") => {}
        Some(other) => return Err(invalid(format!("scheme `{other}` is not ws or wss"))),
        None => return Err(invalid("no scheme".into())),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("no host".into()));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_checks() {
        for ok in [
            "ws://127.0.0.1:8080/ws",
            "wss://example.com/ws",
            "ws://[::1]:1/ws",
        ] {
            ClientOptions::new(ok).parsed_url().unwrap();
        }
        for (bad, why) in [
            ("http://127.0.0.1/ws", "scheme `http`"),
            ("127.0.0.1:8080", "no scheme"),
            ("", "invalid server URL ``"),
            ("ws:///ws", "invalid server URL"),
        ] {
            let e = ClientOptions::new(bad).parsed_url().unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
            assert!(!e.is_retryable());
        }
    }

    #[test]
    fn urls_are_the_first_then_the_fallbacks_in_order() {
        let o = ClientOptions::new("ws://a/ws")
            .fallback_url("ws://b/ws")
            .fallback_url(String::from("ws://c/ws"));
        assert_eq!(o.url(), "ws://a/ws");
        assert_eq!(o.urls(), ["ws://a/ws", "ws://b/ws", "ws://c/ws"]);
        o.check_urls().unwrap();
        assert_eq!(ClientOptions::new("ws://a/ws").urls(), ["ws://a/ws"]);
    }

    #[test]
    fn a_bad_fallback_url_is_reported_with_its_text() {
        let e = ClientOptions::new("ws://a/ws")
            .fallback_url("http://b/ws")
            .check_urls()
            .unwrap_err();
        assert!(e.to_string().contains("`http://b/ws`"), "{e}");
        assert!(!e.is_retryable());
    }

    #[test]
    fn backoff_max_is_at_least_min() {
        let o =
            ClientOptions::new("ws://x/ws").backoff(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(o.backoff_max, Duration::from_secs(2));
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let e = ClientOptions::new("wss://x/ws")
            .add_root_ca_pem_file("/nonexistent/ca.pem")
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let e = ClientOptions::new("wss://x/ws")
            .add_root_ca_pem_file(&path)
            .unwrap_err();
        assert!(e.to_string().contains("no `BEGIN CERTIFICATE`"), "{e}");
    }

    #[test]
    fn wss_connector_builds_with_webpki_roots() {
        let c = ClientOptions::new("wss://x/ws").tls_connector().unwrap();
        assert!(matches!(c, Connector::Rustls(_)));
    }
}
