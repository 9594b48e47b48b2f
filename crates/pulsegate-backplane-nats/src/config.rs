//! [`NatsConfig`]: where the NATS backplane connects and what its stream keeps.

use std::fmt;
use std::time::Duration;

use pulsegate_core::backplane::redact_url;

/// Settings of the NATS JetStream backplane. Nodes of one cluster must
/// agree on `stream`, `subject_prefix` and the limits (the last node to
/// connect wins on the limits: it updates the stream).
#[derive(Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// `nats://[user:password@]host:port`; the password never appears in
    /// logs or `Debug` output. Default `nats://127.0.0.1:4222`.
    pub url: String,
    /// This node's name, stored with every message it publishes (`Pg-Node`
    /// header) and used as the NATS connection name. Default `pulsegate`.
    pub node_name: String,
    /// Name of the JetStream stream holding every topic's log.
    /// Default `PULSEGATE`.
    pub stream: String,
    /// First subject token of everything this backplane publishes:
    /// `{prefix}.h.…` (stored) and `{prefix}.l.…` (live). Default `pg`.
    pub subject_prefix: String,
    /// Messages kept per topic (stream `max_msgs_per_subject`); at least 1,
    /// since a topic's last message also holds its last seq. Default 1000.
    pub max_messages_per_topic: i64,
    /// Age after which stored messages expire (stream `max_age`); zero
    /// keeps them forever. A topic whose every message expired starts a new
    /// epoch. Default 5 minutes.
    pub max_age: Duration,
    /// Bytes the stream keeps over all topics, oldest messages discarded
    /// first; -1 is unlimited. Default 1 GiB.
    pub max_bytes: i64,
    /// Bound on each NATS operation (connect attempt, publish ack, read,
    /// stream setup). Default 2 s.
    pub op_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            node_name: "pulsegate".into(),
            stream: "PULSEGATE".into(),
            subject_prefix: "pg".into(),
            max_messages_per_topic: 1000,
            max_age: Duration::from_secs(300),
            max_bytes: 1 << 30,
            op_timeout: Duration::from_secs(2),
        }
    }
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &redact_url(&self.url))
            .field("node_name", &self.node_name)
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("max_messages_per_topic", &self.max_messages_per_topic)
            .field("max_age", &self.max_age)
            .field("max_bytes", &self.max_bytes)
            .field("op_timeout", &self.op_timeout)
            .finish()
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl NatsConfig {
    /// Checks the values the stream and subjects are built from.
    pub fn validate(&self) -> Result<(), String> {
        if !is_name(&self.stream) {
            return Err(format!(
                "nats stream name must be letters, digits, '-' or '_', got {:?}",
                self.stream
            ));
        }
        if !is_name(&self.subject_prefix) {
            return Err(format!(
                "nats subject_prefix must be letters, digits, '-' or '_', got {:?}",
                self.subject_prefix
            ));
        }
        if self.max_messages_per_topic < 1 {
            return Err(format!(
                "nats max_messages_per_topic must be >= 1 (a topic's last message holds its seq), got {}",
                self.max_messages_per_topic
            ));
        }
        if self.max_bytes == 0 || self.max_bytes < -1 {
            return Err(format!(
                "nats max_bytes must be > 0 or -1 (unlimited), got {}",
                self.max_bytes
            ));
        }
        split_credentials(&self.url)?;
        if self.op_timeout.is_zero() {
            return Err("nats op_timeout must be > 0".into());
        }
        Ok(())
    }
}

/// How to authenticate, taken out of the URL (no `Debug`: it is secret).
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Credentials {
    UserPassword(String, String),
    Token(String),
}

/// The server addresses of a (comma-separated) URL list without their
/// credentials, and the first credentials found. async-nats ignores
/// credentials in URLs (and would print them in its debug logs), so they
/// are passed to it as connect options instead.
pub(crate) fn split_credentials(urls: &str) -> Result<(Vec<String>, Option<Credentials>), String> {
    let mut servers = Vec::new();
    let mut credentials = None;
    for raw in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let with_scheme = if raw.contains("://") {
            raw.to_string()
        } else {
            format!("nats://{raw}")
        };
        let mut url = url::Url::parse(&with_scheme)
            .map_err(|e| format!("nats url {} is invalid: {e}", redact_url(raw)))?;
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let user = decode(url.username());
        let password = url.password().map(decode);
        if credentials.is_none() && !user.is_empty() {
            credentials = Some(match password {
                Some(p) => Credentials::UserPassword(user, p),
                None => Credentials::Token(user),
            });
        }
        let cleared = url.set_username("").is_ok() && url.set_password(None).is_ok();
        if !cleared {
            return Err(format!("nats url {} has no host", redact_url(raw)));
        }
        servers.push(url.to_string());
    }
    if servers.is_empty() {
        return Err("nats url is empty".into());
    }
    Ok((servers, credentials))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let c = NatsConfig {
            url: "nats://bob:s3cret@h:4222".into(),
            ..NatsConfig::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("nats://bob:***@h:4222"), "{shown}");
    }

    #[test]
    fn credentials_leave_the_url() {
        let (servers, creds) = split_credentials("nats://bob:s3cr%3At%40@h:4222").unwrap();
        assert_eq!(servers, ["nats://h:4222"]);
        assert!(creds == Some(Credentials::UserPassword("bob".into(), "s3cr:t@".into())));
        let (servers, creds) = split_credentials("nats://tok3n@h:1, tls://h2:2").unwrap();
        assert_eq!(servers, ["nats://h:1", "tls://h2:2"]);
        assert!(creds == Some(Credentials::Token("tok3n".into())));
        let (servers, creds) = split_credentials("127.0.0.1:4222").unwrap();
        assert_eq!(servers, ["nats://127.0.0.1:4222"]);
        assert!(creds.is_none());
        let Err(err) = split_credentials("nats://bob:pw@[bad") else {
            panic!("invalid url accepted");
        };
        assert!(!err.contains("pw"), "{err}");
        assert!(split_credentials("").is_err());
        assert!(
            split_credentials("http://h:1").is_ok(),
            "async-nats checks schemes"
        );
    }

    #[test]
    fn validates() {
        assert_eq!(NatsConfig::default().validate(), Ok(()));
        let bad = |f: fn(&mut NatsConfig)| {
            let mut c = NatsConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.stream = "A.B".into()).contains("stream"));
        assert!(bad(|c| c.subject_prefix = "p*".into()).contains("subject_prefix"));
        assert!(bad(|c| c.max_messages_per_topic = 0).contains(">= 1"));
        assert!(bad(|c| c.max_bytes = 0).contains("max_bytes"));
    }
}
