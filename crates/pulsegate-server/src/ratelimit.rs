//! Abuse limits that are rates, on the `governor` crate's GCRA token
//! buckets: WebSocket upgrades per client IP, and publishes (messages and
//! payload bytes) per connection or per HTTP credential.
//!
//! Keyed buckets (per IP, per credential) live in concurrent maps that the
//! sweeper trims every few seconds (`retain_recent`), so a flood of distinct
//! addresses cannot grow them for long. A connection's own buckets are
//! created on its first publish: subscribers, the large majority, carry none.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::LimitsConfig;

/// Why a publish was refused by a rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// `limits.publish_rate`.
    Messages,
    /// `limits.publish_bytes_rate`.
    Bytes,
}

impl Exceeded {
    /// What to tell the client.
    pub fn message(self) -> &'static str {
        match self {
            Exceeded::Messages => "publish rate exceeded (limits.publish_rate)",
            Exceeded::Bytes => "publish byte rate exceeded (limits.publish_bytes_rate)",
        }
    }

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Exceeded::Messages => "publish",
            Exceeded::Bytes => "publish_bytes",
        }
    }
}

fn quota(rate: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(rate)?;
    let burst = NonZeroU32::new(burst.max(rate.get())).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

/// A pair of buckets (messages, bytes) for one publisher.
pub struct PublishBuckets {
    messages: Option<DefaultDirectRateLimiter>,
    bytes: Option<DefaultDirectRateLimiter>,
}

impl std::fmt::Debug for PublishBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PublishBuckets")
    }
}

fn bytes_burst(l: &LimitsConfig) -> u32 {
    l.publish_bytes_rate
        .max(u32::try_from(l.max_message_bytes).unwrap_or(u32::MAX))
}

impl PublishBuckets {
    /// Buckets per `limits.publish_rate` / `limits.publish_bytes_rate`;
    /// `None` when both are off.
    pub fn new(l: &LimitsConfig) -> Option<Box<PublishBuckets>> {
        let messages = quota(l.publish_rate, l.publish_rate).map(RateLimiter::direct);
        let bytes = quota(l.publish_bytes_rate, bytes_burst(l)).map(RateLimiter::direct);
        (messages.is_some() || bytes.is_some())
            .then(|| Box::new(PublishBuckets { messages, bytes }))
    }

    /// Takes one message of `size` bytes, or says which rate it would exceed.
    pub fn take(&self, size: usize) -> Result<(), Exceeded> {
        if let Some(m) = &self.messages {
            m.check().map_err(|_| Exceeded::Messages)?;
        }
        if let Some(b) = &self.bytes {
            let n =
                NonZeroU32::new(u32::try_from(size).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
            match b.check_n(n) {
                Ok(Ok(())) => {}
                _ => return Err(Exceeded::Bytes),
            }
        }
        Ok(())
    }
}

/// The server's keyed rate limits.
pub struct RateLimits {
    handshakes: Option<DefaultKeyedRateLimiter<IpAddr>>,
    http_messages: Option<DefaultKeyedRateLimiter<String>>,
    http_bytes: Option<DefaultKeyedRateLimiter<String>>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateLimits")
    }
}

impl RateLimits {
    /// From `[limits]`; a rate of 0 turns its check off.
    pub fn new(l: &LimitsConfig) -> RateLimits {
        RateLimits {
            handshakes: quota(l.handshake_rate_per_ip, l.handshake_burst_per_ip)
                .map(RateLimiter::keyed),
            http_messages: quota(l.publish_rate, l.publish_rate).map(RateLimiter::keyed),
            http_bytes: quota(l.publish_bytes_rate, bytes_burst(l)).map(RateLimiter::keyed),
        }
    }

    /// Takes one upgrade for `ip`; `false` when over `limits.handshake_rate_per_ip`.
    pub fn handshake(&self, ip: IpAddr) -> bool {
        self.handshakes
            .as_ref()
            .is_none_or(|l| l.check_key(&ip.to_canonical()).is_ok())
    }

    /// Takes one HTTP publish of `size` bytes for `credential`.
    pub fn http_publish(&self, credential: &str, size: usize) -> Result<(), Exceeded> {
        let key = credential.to_string();
        if let Some(m) = &self.http_messages {
            m.check_key(&key).map_err(|_| Exceeded::Messages)?;
        }
        if let Some(b) = &self.http_bytes {
            let n =
                NonZeroU32::new(u32::try_from(size).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
            match b.check_key_n(&key, n) {
                Ok(Ok(())) => {}
                _ => return Err(Exceeded::Bytes),
            }
        }
        Ok(())
    }

    /// Forgets buckets that are full again (run periodically).
    pub fn sweep(&self) {
        if let Some(l) = &self.handshakes {
            l.retain_recent();
            l.shrink_to_fit();
        }
        for l in [&self.http_messages, &self.http_bytes]
            .into_iter()
            .flatten()
        {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32, pub_rate: u32, bytes: u32) -> LimitsConfig {
        LimitsConfig {
            handshake_rate_per_ip: rate,
            handshake_burst_per_ip: burst,
            publish_rate: pub_rate,
            publish_bytes_rate: bytes,
            max_message_bytes: 10,
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn handshakes_are_limited_per_ip_after_the_burst() {
        let r = RateLimits::new(&limits(1, 3, 0, 0));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| r.handshake(a)));
        assert!(!r.handshake(a));
        assert!(r.handshake(b), "another address has its own bucket");
        let off = RateLimits::new(&limits(0, 3, 0, 0));
        assert!((0..1000).all(|_| off.handshake(a)));
    }

    #[test]
    fn publishes_are_limited_by_count_and_bytes() {
        let b = PublishBuckets::new(&limits(0, 0, 5, 0)).unwrap();
        assert!((0..5).all(|_| b.take(1).is_ok()));
        assert_eq!(b.take(1), Err(Exceeded::Messages));
        let b = PublishBuckets::new(&limits(0, 0, 0, 100)).unwrap();
        assert!(b.take(60).is_ok());
        assert_eq!(b.take(60), Err(Exceeded::Bytes));
        assert!(PublishBuckets::new(&limits(0, 0, 0, 0)).is_none());
    }
}
