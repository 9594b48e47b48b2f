//! State shared by the listener, every connection task and the HTTP routes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;
use pulsegate_core::{CloseReason, Control, Hub, Outbox, OutboxLimits, SlowConsumerPolicy};
use pulsegate_proto::Codec;
use tokio::sync::watch;

use crate::config::{Config, SlowConsumer};
use crate::metrics::Metrics;

/// What the admin API and the dashboard show about one live `/ws`
/// connection. Counters are written only by the connection's own task
/// (uncontended relaxed atomics) and read at request time.
#[derive(Debug)]
pub struct ConnInfo {
    /// Its outbound queue (which also carries the connection id).
    pub outbox: Arc<Outbox>,
    /// Remote address (of the TCP peer: a proxy, behind one).
    pub peer: SocketAddr,
    /// The client's address: `peer`'s, or the one a trusted proxy forwarded.
    pub client_ip: IpAddr,
    /// `User-Agent`, truncated.
    pub user_agent: Option<Box<str>>,
    /// Negotiated codec.
    pub codec: Codec,
    /// May read `$sys/` topics.
    pub admin: bool,
    /// Token subject, when authenticated (`auth.mode = "jwt"`).
    pub subject: parking_lot::Mutex<Option<Box<str>>>,
    /// Upgrade time, µs since the Unix epoch.
    pub connected_at_us: u64,
    /// Frames received.
    pub messages_in: AtomicU64,
    /// Payload bytes received.
    pub bytes_in: AtomicU64,
    /// Payload bytes written (frames written are `outbox.sent_frames`).
    pub bytes_out: AtomicU64,
    /// Active subscriptions.
    pub subscriptions: AtomicU32,
    /// Last WebSocket ping round trip, µs (0: none yet; saturates at
    /// about 71 minutes). 32 bits keep this record in the same allocator
    /// size class as the outbox (docs/ARCHITECTURE.md, memory).
    pub ping_rtt_us: AtomicU32,
}

impl ConnInfo {
    /// Connection id (also in `welcome`).
    pub fn id(&self) -> u64 {
        self.outbox.id()
    }
}

/// Phase of the server's life, broadcast to every connection task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepting and serving.
    Running,
    /// Draining: refuse new upgrades, close existing connections spread over the drain period.
    Draining,
    /// Stop now: close everything immediately.
    Terminate,
}

/// Why the server is not ready (`/readyz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// Shutdown in progress.
    Draining,
    /// `limits.max_connections` reached.
    AtCapacity,
    /// The cluster backplane is down.
    BackplaneDown,
}

impl NotReady {
    /// JSON reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            NotReady::Draining => "draining",
            NotReady::AtCapacity => "at_capacity",
            NotReady::BackplaneDown => "backplane_down",
        }
    }
}

/// Everything connection tasks share.
#[derive(Debug)]
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// This node's name.
    pub node: String,
    /// The hub.
    pub hub: Arc<Hub>,
    /// The cluster layer when `cluster.backplane` is not `memory`; set once at start.
    pub cluster: std::sync::OnceLock<Arc<pulsegate_core::Cluster>>,
    /// Server-side counters and histograms.
    pub metrics: Metrics,
    /// Token verification (`auth.mode = "jwt"`), else `None`.
    pub auth: Option<crate::auth::Authenticator>,
    /// Handshake and HTTP publish rate limits.
    pub rates: crate::ratelimit::RateLimits,
    /// Queued bytes over `limits.max_queued_bytes_total` at the last sample.
    pub over_budget: AtomicBool,
    /// `server.trusted_proxies`, parsed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Rates and quantiles sampled once a second.
    pub live: crate::livestats::LiveStats,
    /// When the server started.
    pub started: std::time::Instant,
    /// Phase broadcast.
    pub phase: watch::Sender<Phase>,
    next_conn: AtomicU64,
    active: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    draining: AtomicBool,
    /// Live WebSocket connections, to reach them out of band (drain, stop,
    /// the admin API) and to list them.
    conns: Mutex<HashMap<u64, Arc<ConnInfo>>>,
}

impl Shared {
    /// Builds the shared state.
    pub fn new(
        config: Config,
        node: String,
        hub: Arc<Hub>,
        auth: Option<crate::auth::Authenticator>,
    ) -> Arc<Shared> {
        let (phase, _) = watch::channel(Phase::Running);
        let metrics = Metrics::new(config.metrics.enabled);
        let rates = crate::ratelimit::RateLimits::new(&config.limits);
        let trusted_proxies = config
            .server
            .trusted_proxies
            .iter()
            .filter_map(|p| crate::clientip::parse_net(p).ok())
            .collect();
        Arc::new(Shared {
            config,
            node,
            hub,
            cluster: std::sync::OnceLock::new(),
            rates,
            over_budget: AtomicBool::new(false),
            trusted_proxies,
            metrics,
            auth,
            live: Default::default(),
            started: std::time::Instant::now(),
            phase,
            next_conn: AtomicU64::new(1),
            active: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
        })
    }

    /// Outbox bounds from config.
    pub fn outbox_limits(&self) -> OutboxLimits {
        let d = &self.config.delivery;
        OutboxLimits {
            max_messages: d.queue_max_messages,
            max_bytes: d.queue_max_bytes,
            policy: match d.slow_consumer {
                SlowConsumer::Disconnect => SlowConsumerPolicy::Disconnect,
                SlowConsumer::Conflate => SlowConsumerPolicy::Conflate,
            },
        }
    }

    /// Marks the server as draining and asks every connection to close
    /// within the drain period.
    pub fn start_drain(&self) {
        self.draining.store(true, Relaxed);
        self.phase.send_replace(Phase::Draining);
        self.request_all(Control::Drain);
    }

    /// Asks every connection to close now.
    pub fn terminate(&self) {
        self.draining.store(true, Relaxed);
        self.phase.send_replace(Phase::Terminate);
        self.request_all(Control::Terminate);
    }

    fn request_all(&self, control: Control) {
        for c in self.connections() {
            c.outbox.request(control);
        }
    }

    /// Registers a live connection.
    pub fn register(&self, info: &Arc<ConnInfo>) {
        self.conns.lock().insert(info.id(), info.clone());
    }

    /// Live `/ws` connections, sorted by id.
    pub fn connections(&self) -> Vec<Arc<ConnInfo>> {
        let mut v: Vec<Arc<ConnInfo>> = self.conns.lock().values().cloned().collect();
        v.sort_unstable_by_key(|c| c.id());
        v
    }

    /// Closes connection `id` with 4002 (operator); false if it is not live
    /// (unknown, or already closing).
    pub fn kick(&self, id: u64) -> bool {
        let info = self.conns.lock().get(&id).cloned();
        match info {
            Some(c) if !c.outbox.is_closed() => {
                c.outbox.close(CloseReason::Kicked, self.hub.stats());
                true
            }
            _ => false,
        }
    }

    /// (deepest queue in messages, messages queued, bytes queued) over all
    /// live connections, read at scrape time.
    pub fn queue_depths(&self) -> (usize, usize, usize) {
        let conns = self.conns.lock();
        conns.values().fold((0, 0, 0), |(max, n, b), c| {
            let (m, bytes) = c.outbox.depth();
            (max.max(m), n + m, b + bytes)
        })
    }

    /// Forgets a closed connection.
    pub fn unregister(&self, id: u64) {
        self.conns.lock().remove(&id);
    }

    /// True once draining started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Publishes through the backplane in a cluster, else to the hub directly.
    pub async fn publish(
        &self,
        topic: &str,
        data: bytes::Bytes,
    ) -> Result<Arc<pulsegate_core::Message>, pulsegate_core::HubError> {
        match self.cluster.get() {
            Some(c) => c.publish(topic, data).await,
            None => self.hub.publish(topic, data),
        }
    }

    /// `None` when ready, else why not.
    pub fn not_ready(&self) -> Option<NotReady> {
        if self.is_draining() {
            Some(NotReady::Draining)
        } else if self.cluster.get().is_some_and(|c| !c.backplane().is_up()) {
            Some(NotReady::BackplaneDown)
        } else if self.active.load(Relaxed) >= self.config.limits.max_connections
            || self.over_budget.load(Relaxed)
        {
            Some(NotReady::AtCapacity)
        } else {
            None
        }
    }

    /// Live WebSocket connections.
    pub fn active_connections(&self) -> usize {
        self.active.load(Relaxed)
    }

    /// Reserves a connection slot for `ip`, or says which limit refused it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, &'static str> {
        let limits = &self.config.limits;
        let total = self.active.fetch_add(1, Relaxed);
        if total >= limits.max_connections {
            self.active.fetch_sub(1, Relaxed);
            return Err("limit_total");
        }
        let mut per_ip = self.per_ip.lock();
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= limits.max_connections_per_ip {
            drop(per_ip);
            self.active.fetch_sub(1, Relaxed);
            return Err("limit_per_ip");
        }
        *n += 1;
        Ok(ConnSlot {
            shared: self.clone(),
            ip,
            id: self.next_conn.fetch_add(1, Relaxed),
        })
    }
}

/// A held connection slot; released on drop.
#[derive(Debug)]
pub struct ConnSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
    /// The connection id.
    pub id: u64,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, Relaxed);
        let mut per_ip = self.shared.per_ip.lock();
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}
