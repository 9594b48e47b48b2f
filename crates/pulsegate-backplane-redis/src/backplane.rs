//! [`RedisBackplane`]: the connections, the two background tasks, and the
//! [`Backplane`] operations.
//!
//! Where things live:
//! - `Inner` is everything the handle and its tasks share: the command
//!   connection (`cmd`), the subscription connection (`sub`), the `Link`
//!   (up/down state, counters) and the subscription bookkeeping.
//! - `read_live` is the task forwarding live messages from `sub` to the node.
//! - `watch_health` is the task deciding up/down (a `PING` on both
//!   connections every 500 ms) and sending [`Incoming::Resync`] when Redis
//!   comes back.
//!
//! Both tasks are owned by the [`RedisBackplane`] and aborted when it drops.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use pulsegate_core::backplane::redact_url;
use pulsegate_core::{Backplane, BackplaneError, BackplaneStats, Incoming, Log, Stamp};
use pulsegate_proto::Pattern;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, RedisError, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::RedisConfig;
use crate::keys::{self, TopicKeys};
use crate::scripts::{self, Scripts};

/// How often the health task pings Redis.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// First reconnection delay; each next one doubles.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Largest reconnection delay before jitter. The `redis` crate adds a
/// random 0–100 % to each delay, so no wait exceeds 5 s.
const RETRY_CAP: Duration = Duration::from_millis(2500);

/// A [`Backplane`] on one Redis server (see the crate documentation for
/// the data layout and guarantees). Create it with [`RedisBackplane::connect`].
pub struct RedisBackplane {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

/// Up/down state and counters; shared with the push callback of `sub`,
/// which runs inside the `redis` crate and must not block.
#[derive(Default)]
struct Link {
    stats: BackplaneStats,
    /// Bumped on every failure. The health task only marks the backplane up
    /// if no failure happened while it was pinging: a `PONG` from a
    /// connection that dropped right after proves nothing.
    generation: Mutex<u64>,
    /// A live message was dropped because `push_buffer` was full.
    overflowed: AtomicBool,
}

impl Link {
    fn generation(&self) -> u64 {
        *self.generation.lock()
    }

    /// Counts a failure and marks the backplane down; logs the transition.
    fn down(&self, url: &str, what: &str, why: &str) {
        let mut g = self.generation.lock();
        *g += 1;
        self.stats.error();
        if self.stats.set_down() {
            tracing::warn!(url, "redis backplane down: {what}: {why}");
        }
    }

    /// Marks the backplane up unless a failure happened since `generation`;
    /// true on a down → up transition.
    fn up_if_unchanged(&self, generation: u64) -> bool {
        let g = self.generation.lock();
        *g == generation && self.stats.set_up()
    }
}

/// Which patterns this node subscribed, and which Redis subscriptions
/// they hold. Several patterns may need the same channel or glob (`a/#` and
/// `a` both need `…:live:a`), hence reference counts.
#[derive(Default)]
struct SubState {
    channels: HashMap<Vec<u8>, usize>,
    globs: HashMap<Vec<u8>, usize>,
    /// Redis subscriptions no pattern needs any more but that could not be
    /// removed (Redis was down): the health task removes them once it is up.
    /// Meanwhile the local filter discards what they carry.
    stale_channels: HashSet<Vec<u8>>,
    stale_globs: HashSet<Vec<u8>>,
}

/// The subscribed patterns, checked against each live message's topic: the
/// Redis subscriptions are a superset of what was asked for.
#[derive(Default)]
struct Filter {
    exact: HashMap<Box<str>, usize>,
    wild: Vec<Pattern>,
}

impl Filter {
    fn add(&mut self, p: &Pattern) {
        if p.is_wildcard() {
            self.wild.push(p.clone());
        } else {
            *self.exact.entry(p.as_str().into()).or_default() += 1;
        }
    }

    /// Removes one subscription of `p`; false if there was none.
    fn remove(&mut self, p: &Pattern) -> bool {
        if p.is_wildcard() {
            match self.wild.iter().position(|w| w == p) {
                Some(i) => {
                    self.wild.swap_remove(i);
                    true
                }
                None => false,
            }
        } else {
            match self.exact.get_mut(p.as_str()) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    true
                }
                Some(_) => {
                    self.exact.remove(p.as_str());
                    true
                }
                None => false,
            }
        }
    }

    /// Cost: one hash lookup plus one match per wildcard pattern.
    fn matches(&self, topic: &str) -> bool {
        self.exact.contains_key(topic) || self.wild.iter().any(|p| p.matches(topic))
    }
}

struct Inner {
    config: RedisConfig,
    /// `config.url` without its password, for logs and errors.
    url: String,
    /// `config.node_name` on one line.
    node: String,
    cmd: ConnectionManager,
    sub: ConnectionManager,
    scripts: Scripts,
    link: Arc<Link>,
    filter: RwLock<Filter>,
    /// Serializes subscribe/unsubscribe (held across their Redis round
    /// trip, which `op_timeout` bounds).
    subs: tokio::sync::Mutex<SubState>,
    tx: mpsc::Sender<Incoming>,
}

impl Inner {
    fn check_up(&self) -> Result<(), BackplaneError> {
        if self.link.stats.up.load(Relaxed) {
            Ok(())
        } else {
            self.link.stats.error();
            Err(BackplaneError::Down(format!(
                "redis backplane {} is unreachable; retrying in the background",
                self.url
            )))
        }
    }

    /// Runs one Redis operation within `op_timeout`. Any failure marks the
    /// backplane down until the health task sees Redis answer again.
    async fn bounded<T>(
        &self,
        what: &str,
        op: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, BackplaneError> {
        let why = match tokio::time::timeout(self.config.op_timeout, op).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no reply within {:?}", self.config.op_timeout),
        };
        self.link.down(&self.url, what, &why);
        Err(BackplaneError::Down(format!(
            "redis {what} failed ({}): {why}",
            self.url
        )))
    }

    /// A reply the scripts cannot produce: counted, but not an outage.
    fn bad_reply(&self, what: &str, detail: String) -> BackplaneError {
        self.link.stats.error();
        tracing::warn!(url = %self.url, "redis {what}: {detail}");
        BackplaneError::Down(format!("redis {what}: {detail}"))
    }

    /// `PING` on both connections. A reconnected `sub` answers only after
    /// its subscriptions were restored (the `redis` crate sends them before
    /// any other command), so success means live delivery works again.
    async fn ping(&self) -> Result<(), BackplaneError> {
        let (mut cmd, mut sub) = (self.cmd.clone(), self.sub.clone());
        let ping = redis::cmd("PING");
        self.bounded("health check", async {
            tokio::try_join!(
                ping.query_async::<()>(&mut cmd),
                ping.query_async::<()>(&mut sub),
            )
            .map(|_| ())
        })
        .await
    }

    /// Removes the Redis subscriptions left behind by unsubscribes that
    /// happened while Redis was down.
    async fn remove_stale(&self) {
        let mut subs = self.subs.lock().await;
        let subs = &mut *subs;
        let channels: Vec<Vec<u8>> = subs
            .stale_channels
            .iter()
            .filter(|c| !subs.channels.contains_key(*c))
            .cloned()
            .collect();
        let globs: Vec<Vec<u8>> = subs
            .stale_globs
            .iter()
            .filter(|g| !subs.globs.contains_key(*g))
            .cloned()
            .collect();
        if self.unsubscribe_redis(&channels, &globs).await.is_ok() {
            subs.stale_channels.clear();
            subs.stale_globs.clear();
        }
    }

    async fn unsubscribe_redis(
        &self,
        channels: &[Vec<u8>],
        globs: &[Vec<u8>],
    ) -> Result<(), BackplaneError> {
        let mut sub = self.sub.clone();
        self.bounded("unsubscribe", async {
            // An empty UNSUBSCRIBE would drop every subscription.
            if !channels.is_empty() {
                sub.unsubscribe(channels).await?;
            }
            if !globs.is_empty() {
                sub.punsubscribe(globs).await?;
            }
            Ok(())
        })
        .await
    }

    /// A live push as a message for this node, if it is one of ours and a
    /// subscribed pattern matches its topic.
    fn decode(&self, info: PushInfo) -> Option<pulsegate_core::Message> {
        let mut data = info.data.into_iter();
        if info.kind == PushKind::PMessage {
            data.next(); // the glob that matched
        }
        let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
            (data.next(), data.next())
        else {
            return None;
        };
        let topic = keys::topic_of_channel(&self.config.prefix, &channel)?;
        if !self.filter.read().matches(topic) {
            return None;
        }
        let msg = keys::parse_live(topic, payload);
        if msg.is_none() {
            self.link.stats.error();
            tracing::warn!(topic, "redis backplane: malformed live message ignored");
        }
        msg
    }
}

/// The push callback of `sub`: runs on the connection's reader, must not
/// block, so it only hands messages to `read_live` through a bounded
/// buffer and notes when that buffer overflowed.
fn push_sender(
    link: Arc<Link>,
    url: String,
    buffer: mpsc::Sender<PushInfo>,
) -> impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static {
    move |info: PushInfo| match info.kind {
        PushKind::Disconnection => {
            link.down(&url, "subscription connection", "connection lost");
            Ok(())
        }
        PushKind::Message | PushKind::PMessage => match buffer.try_send(info) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                link.stats.error();
                link.overflowed.store(true, Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
        },
        _ => Ok(()),
    }
}

/// Forwards live messages to the node, in the order Redis sent them
/// (per topic, seq order). Waits when the node's channel is full.
async fn read_live(inner: Arc<Inner>, mut buffer: mpsc::Receiver<PushInfo>) {
    loop {
        // Checked before each receive: the flag is only set while the
        // buffer is full, so it is seen before the buffer runs dry.
        if inner.link.overflowed.swap(false, Relaxed) {
            tracing::warn!(url = %inner.url, "redis backplane: live buffer full, messages dropped; resyncing");
            if inner.tx.send(Incoming::Resync).await.is_err() {
                return;
            }
        }
        let Some(info) = buffer.recv().await else {
            return;
        };
        let Some(msg) = inner.decode(info) else {
            continue;
        };
        if inner
            .tx
            .send(Incoming::Message(Arc::new(msg)))
            .await
            .is_err()
        {
            return;
        }
        inner.link.stats.received.fetch_add(1, Relaxed);
    }
}

/// Decides up/down. The `redis` crate reconnects by itself (with backoff);
/// this task only observes, and on a down → up transition removes stale
/// subscriptions and tells the node to re-read its logs.
async fn watch_health(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let generation = inner.link.generation();
        if inner.ping().await.is_ok() && inner.link.up_if_unchanged(generation) {
            tracing::info!(url = %inner.url, "redis backplane up");
            inner.remove_stale().await;
            if inner.tx.send(Incoming::Resync).await.is_err() {
                return;
            }
        }
    }
}

fn manager_config(config: &RedisConfig) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_min_delay(RETRY_FIRST)
        .set_exponent_base(2.0)
        .set_max_delay(RETRY_CAP)
        // Never give up: the health task, not the library, reports outages.
        .set_number_of_retries(usize::MAX)
        .set_connection_timeout(Some(config.op_timeout))
        .set_response_timeout(Some(config.op_timeout))
}

impl RedisBackplane {
    /// Connects to Redis and starts delivering live messages into `tx`.
    ///
    /// Fails only when `config.url` is invalid. An unreachable Redis gives a
    /// backplane in the down state ([`Backplane::is_up`] is false) that
    /// comes up, and sends [`Incoming::Resync`], once Redis answers.
    /// Must be called inside a Tokio runtime.
    pub async fn connect(
        config: RedisConfig,
        tx: mpsc::Sender<Incoming>,
    ) -> Result<Arc<RedisBackplane>, BackplaneError> {
        let url = redact_url(&config.url);
        let invalid = |e: RedisError| {
            BackplaneError::Down(format!(
                "invalid redis URL {url}: {e}; expected redis://[[user]:password@]host:port[/db]"
            ))
        };
        let info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(invalid)?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings)).map_err(invalid)?;

        let link = Arc::new(Link::default());
        let (push_tx, push_rx) = mpsc::channel(config.push_buffer.max(1));
        let sub_config = manager_config(&config)
            .set_push_sender(push_sender(link.clone(), url.clone(), push_tx))
            .set_automatic_resubscription();
        // Lazy: nothing is awaited here, so a down Redis does not fail us.
        let cmd = ConnectionManager::new_lazy_with_config(client.clone(), manager_config(&config))
            .map_err(invalid)?;
        let sub = ConnectionManager::new_lazy_with_config(client, sub_config).map_err(invalid)?;

        let inner = Arc::new(Inner {
            node: keys::one_line(&config.node_name),
            config,
            url,
            cmd,
            sub,
            scripts: Scripts::new(),
            link,
            filter: RwLock::default(),
            subs: tokio::sync::Mutex::default(),
            tx,
        });
        // First contact, bounded by op_timeout: a reachable Redis gives a
        // backplane that is up from the start (no Resync: nothing to redo).
        if inner.ping().await.is_ok() {
            inner.link.stats.up.store(true, Relaxed);
        } else {
            tracing::warn!(url = %inner.url, "redis backplane unreachable; starting down, retrying in the background");
        }
        let tasks = vec![
            tokio::spawn(read_live(inner.clone(), push_rx)),
            tokio::spawn(watch_health(inner.clone())),
        ];
        Ok(Arc::new(RedisBackplane { inner, tasks }))
    }

    /// The configuration it was created with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }
}

impl Drop for RedisBackplane {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("url", &self.inner.url)
            .field("node", &self.inner.node)
            .field("prefix", &self.inner.config.prefix)
            .field("up", &self.is_up())
            .finish()
    }
}

#[async_trait]
impl Backplane for RedisBackplane {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn stats(&self) -> &BackplaneStats {
        &self.inner.link.stats
    }

    async fn publish(&self, topic: &str, data: Bytes, ts: u64) -> Result<Stamp, BackplaneError> {
        let inner = &*self.inner;
        inner.check_up()?;
        let keys = TopicKeys::new(&inner.config.prefix, topic);
        let fresh_epoch = format!("r{:016x}", fastrand::u64(..));
        let ttl = inner.config.history_ttl;
        let ttl_ms = if ttl.is_zero() {
            0
        } else {
            u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
        };
        let mut invocation = inner.scripts.publish.prepare_invoke();
        invocation
            .key(&keys.epoch)
            .key(&keys.seq)
            .key(&keys.log)
            .arg(fresh_epoch)
            .arg(&data[..])
            .arg(ts)
            .arg(&inner.node)
            .arg(inner.config.max_history)
            .arg(ttl_ms)
            .arg(&keys.live);
        let mut cmd = inner.cmd.clone();
        let reply: Value = inner
            .bounded("publish", invocation.invoke_async(&mut cmd))
            .await?;
        let (seq, epoch) = scripts::parse_stamp(&reply).ok_or_else(|| {
            inner.bad_reply(
                "publish",
                format!("unexpected reply {reply:?} on `{topic}`"),
            )
        })?;
        inner.link.stats.published.fetch_add(1, Relaxed);
        Ok(Stamp { seq, epoch })
    }

    async fn subscribe(&self, pattern: &Pattern) -> Result<(), BackplaneError> {
        let inner = &*self.inner;
        inner.check_up()?;
        let mut subs = inner.subs.lock().await;
        // Filter first: messages that arrive before Redis confirms are
        // extra, never missing.
        inner.filter.write().add(pattern);
        let targets = keys::targets(&inner.config.prefix, pattern);
        let new_channels: Vec<Vec<u8>> = targets
            .channels
            .iter()
            .filter(|c| !subs.channels.contains_key(*c))
            .cloned()
            .collect();
        let new_globs: Vec<Vec<u8>> = targets
            .globs
            .iter()
            .filter(|g| !subs.globs.contains_key(*g))
            .cloned()
            .collect();
        let mut sub = inner.sub.clone();
        // The crate's subscribe returns once Redis confirmed each channel.
        let confirmed = inner
            .bounded("subscribe", async {
                if !new_channels.is_empty() {
                    sub.subscribe(&new_channels).await?;
                }
                if !new_globs.is_empty() {
                    sub.psubscribe(&new_globs).await?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = confirmed {
            inner.filter.write().remove(pattern);
            // Some of them may have been taken: clean up once Redis is back.
            subs.stale_channels.extend(new_channels);
            subs.stale_globs.extend(new_globs);
            return Err(e);
        }
        for c in targets.channels {
            subs.stale_channels.remove(&c);
            *subs.channels.entry(c).or_default() += 1;
        }
        for g in targets.globs {
            subs.stale_globs.remove(&g);
            *subs.globs.entry(g).or_default() += 1;
        }
        Ok(())
    }

    /// Delivery for `pattern` stops at once, even while Redis is down; the
    /// Redis subscriptions it alone needed are removed now, or by the health
    /// task once Redis is back (then this returns `Err(Down)`).
    async fn unsubscribe(&self, pattern: &Pattern) -> Result<(), BackplaneError> {
        let inner = &*self.inner;
        let mut subs = inner.subs.lock().await;
        if !inner.filter.write().remove(pattern) {
            return Ok(());
        }
        let targets = keys::targets(&inner.config.prefix, pattern);
        let release = |counts: &mut HashMap<Vec<u8>, usize>, names: Vec<Vec<u8>>| {
            names
                .into_iter()
                .filter(|n| match counts.get_mut(n) {
                    Some(c) if *c > 1 => {
                        *c -= 1;
                        false
                    }
                    Some(_) => {
                        counts.remove(n);
                        true
                    }
                    None => false,
                })
                .collect::<Vec<_>>()
        };
        let channels = release(&mut subs.channels, targets.channels);
        let globs = release(&mut subs.globs, targets.globs);
        if channels.is_empty() && globs.is_empty() {
            return Ok(());
        }
        let result = match inner.check_up() {
            Ok(()) => inner.unsubscribe_redis(&channels, &globs).await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            subs.stale_channels.extend(channels);
            subs.stale_globs.extend(globs);
        }
        result
    }

    async fn read(
        &self,
        topic: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Option<Log>, BackplaneError> {
        let inner = &*self.inner;
        inner.check_up()?;
        let keys = TopicKeys::new(&inner.config.prefix, topic);
        let first_id = match after {
            Some(a) => format!("{}-0", a.saturating_add(1)),
            None => String::new(),
        };
        let mut invocation = inner.scripts.read.prepare_invoke();
        invocation
            .key(&keys.epoch)
            .key(&keys.seq)
            .key(&keys.log)
            .arg(first_id)
            .arg(limit);
        let mut cmd = inner.cmd.clone();
        let reply: Value = inner
            .bounded("read", invocation.invoke_async(&mut cmd))
            .await?;
        scripts::parse_log(topic, &reply).map_err(|detail| inner.bad_reply("read", detail))
    }
}
