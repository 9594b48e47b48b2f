//! [`RedisConfig`]: where Redis is, and the bounds of what we keep there.

use std::fmt;
use std::time::Duration;

use pulsegate_core::backplane::redact_url;

/// Settings of a [`RedisBackplane`](crate::RedisBackplane). Every node of a
/// cluster uses the same `url`, `prefix`, `max_history` and `history_ttl`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[[user]:password@]host:port[/db]`. RESP3 is always used
    /// (a `?protocol=` in the URL is overridden). Default
    /// `redis://127.0.0.1:6379`. Never logged with its password.
    pub url: String,
    /// This node's name, stored with each message it publishes (`n` field
    /// of the stream entry). Newlines are replaced by spaces. Default
    /// `pulsegate`.
    pub node_name: String,
    /// Namespace of every key and channel: `{prefix}:seq:{topic}`,
    /// `{prefix}:epoch:{topic}`, `{prefix}:log:{topic}` and the channel
    /// `{prefix}:live:{topic}`. Nodes of one cluster share it; two clusters
    /// on one Redis use two. Default `pulsegate`.
    pub prefix: String,
    /// Messages kept per topic log, applied as `XADD … MAXLEN ~`: Redis
    /// trims whole stream nodes, so a log may hold up to about 100 more
    /// (the server's `stream-node-max-entries`). Default 1000.
    pub max_history: usize,
    /// A topic's keys expire after this much time without a publish; the
    /// next publish then starts a new epoch at seq 1. Zero keeps them
    /// forever. Default 5 minutes.
    pub history_ttl: Duration,
    /// Deadline of every Redis operation (publish, read, subscribe, health
    /// check) and of each connection attempt. Default 2 s.
    pub op_timeout: Duration,
    /// Live messages buffered between the Redis connection and the task
    /// forwarding them to the node. The connection cannot wait, so when this
    /// buffer is full a message is dropped, counted in `errors`, and the node
    /// receives [`Incoming::Resync`](pulsegate_core::Incoming::Resync) to
    /// re-read its logs. Default 65 536.
    pub push_buffer: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            node_name: "pulsegate".into(),
            prefix: "pulsegate".into(),
            max_history: 1000,
            history_ttl: Duration::from_secs(300),
            op_timeout: Duration::from_secs(2),
            push_buffer: 65_536,
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("node_name", &self.node_name)
            .field("prefix", &self.prefix)
            .field("max_history", &self.max_history)
            .field("history_ttl", &self.history_ttl)
            .field("op_timeout", &self.op_timeout)
            .field("push_buffer", &self.push_buffer)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let c = RedisConfig {
            url: "redis://:s3cret@h:6379/0".into(),
            ..Default::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("redis://:***@h:6379/0"), "{shown}");
    }
}
