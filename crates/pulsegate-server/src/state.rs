//! State shared by the listener, every connection task and the HTTP routes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;
use pulsegate_core::{Control, Hub, Outbox, OutboxLimits, SlowConsumerPolicy};
use tokio::sync::watch;

use crate::config::{Config, SlowConsumer};
use crate::stats::ServerStats;

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
    /// Server-side counters.
    pub stats: ServerStats,
    /// Phase broadcast.
    pub phase: watch::Sender<Phase>,
    next_conn: AtomicU64,
    active: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    draining: AtomicBool,
    /// Live WebSocket connections' outboxes, to reach them out of band
    /// (drain, stop; the admin API later).
    conns: Mutex<HashMap<u64, Arc<Outbox>>>,
}

impl Shared {
    /// Builds the shared state.
    pub fn new(config: Config, node: String, hub: Arc<Hub>) -> Arc<Shared> {
        let (phase, _) = watch::channel(Phase::Running);
        Arc::new(Shared {
            config,
            node,
            hub,
            stats: ServerStats::default(),
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
        let conns: Vec<Arc<Outbox>> = self.conns.lock().values().cloned().collect();
        for ob in conns {
            ob.request(control);
        }
    }

    /// Registers a live connection's outbox.
    pub fn register(&self, id: u64, outbox: &Arc<Outbox>) {
        self.conns.lock().insert(id, outbox.clone());
    }

    /// Forgets a closed connection.
    pub fn unregister(&self, id: u64) {
        self.conns.lock().remove(&id);
    }

    /// True once draining started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// `None` when ready, else why not.
    pub fn not_ready(&self) -> Option<NotReady> {
        if self.is_draining() {
            Some(NotReady::Draining)
        } else if !self.hub.backplane().is_up() {
            Some(NotReady::BackplaneDown)
        } else if self.active.load(Relaxed) >= self.config.limits.max_connections {
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
