//! The listener: accepts sockets, reads the request head, and hands each
//! connection to its own task — a WebSocket connection ([`crate::conn`]) or
//! an HTTP connection ([`crate::http`]). Also the server's start, drain and
//! stop ([`Running`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::ws::WsStream;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use pulsegate_core::{Hub, HubConfig};
use pulsegate_proto::Codec;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::conn::{serve_echo, serve_ws, ConnMeta};
use crate::handshake::{self, HeadError};
use crate::io::Prefixed;
use crate::metrics::Rejected;
use crate::state::{ConnSlot, Phase, Shared};
use crate::StartError;

/// Listen backlog; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 4096;
/// How often aged history is trimmed and idle topics forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// A started server.
#[derive(Debug)]
pub struct Running {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
    sweeper: JoinHandle<()>,
    sampler: JoinHandle<()>,
    ingest: Option<JoinHandle<()>>,
    tracker: mpsc::Receiver<()>,
    tls: Option<crate::tls::Tls>,
}

/// Binds the listener and starts serving in the background.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let addr = config.server.listen;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| StartError::Bind(addr, e))?;
    socket
        .set_reuseaddr(true)
        .map_err(|e| StartError::Bind(addr, e))?;
    socket.bind(addr).map_err(|e| StartError::Bind(addr, e))?;
    let listener = socket
        .listen(BACKLOG)
        .map_err(|e| StartError::Bind(addr, e))?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| StartError::Bind(addr, e))?;
    let tls = match (&config.tls.cert, &config.tls.key) {
        (Some(c), Some(k)) => Some(crate::tls::Tls::new(c, k, config.tls.client_ca.as_deref())?),
        _ => None,
    };
    let node = config
        .server
        .node_name
        .clone()
        .unwrap_or_else(default_node_name);
    let hub = Arc::new(Hub::new(HubConfig {
        max_history_messages: config.history.max_messages,
        max_history_age: config.history.max_age,
        max_topics: config.history.max_topics,
    }));
    let auth = crate::auth::Authenticator::from_config(&config.auth).map_err(StartError::Auth)?;
    let shared = Shared::new(config, node, hub.clone(), auth);
    let ingest = join_cluster(&shared).await?;
    let (tracker_tx, tracker) = mpsc::channel(1);
    let acceptor = tls.as_ref().map(|t| t.acceptor.clone());
    let accept = tokio::spawn(accept_loop(listener, shared.clone(), acceptor, tracker_tx));
    let swept = shared.clone();
    let sweeper = tokio::spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            every.tick().await;
            hub.sweep();
            swept.rates.sweep();
        }
    });
    let sampler = tokio::spawn(crate::livestats::run_sampler(shared.clone()));
    tracing::info!(%local_addr, node = %shared.node, "pulsegate listening");
    Ok(Running {
        local_addr,
        shared,
        accept,
        sweeper,
        sampler,
        ingest,
        tracker,
        tls,
    })
}

/// Live messages from the backplane waiting for the ingest task; when full,
/// the backplane's reader waits (NATS then buffers in its client; the Redis
/// client's push buffer overflows into a counted drop and a resync, which
/// re-reads the missed messages from the logs).
const INGEST_QUEUE: usize = 65_536;

/// With `cluster.backplane` other than `memory`: connects the backplane
/// (in the background: a node whose backplane is down starts anyway and
/// reports `backplane_down`) and starts the task applying its live stream.
async fn join_cluster(shared: &Arc<Shared>) -> Result<Option<JoinHandle<()>>, StartError> {
    use crate::config::BackplaneKind;
    let c = &shared.config.cluster;
    if c.backplane == BackplaneKind::Memory {
        return Ok(None);
    }
    let node = c.node_name.clone().unwrap_or_else(|| shared.node.clone());
    let h = &shared.config.history;
    let (tx, rx) = mpsc::channel(INGEST_QUEUE);
    let backplane: Arc<dyn pulsegate_core::Backplane> = match c.backplane {
        BackplaneKind::Nats => pulsegate_backplane_nats::NatsBackplane::connect(
            pulsegate_backplane_nats::NatsConfig {
                url: c.nats_url.expose().to_string(),
                node_name: node,
                stream: c.prefix.to_uppercase().replace('-', "_"),
                subject_prefix: c.prefix.clone(),
                max_messages_per_topic: h.max_messages as i64,
                max_age: h.max_age,
                max_bytes: i64::try_from(c.max_bytes).unwrap_or(i64::MAX),
                ..Default::default()
            },
            tx,
        )
        .await
        .map_err(|e| StartError::Backplane(e.to_string()))?,
        BackplaneKind::Redis => pulsegate_backplane_redis::RedisBackplane::connect(
            pulsegate_backplane_redis::RedisConfig {
                url: c.redis_url.expose().to_string(),
                node_name: node,
                prefix: c.prefix.clone(),
                max_history: h.max_messages,
                history_ttl: h.max_age,
                ..Default::default()
            },
            tx,
        )
        .await
        .map_err(|e| StartError::Backplane(e.to_string()))?,
        BackplaneKind::Memory => unreachable!("handled above"),
    };
    let weak = Arc::downgrade(shared);
    let lag: pulsegate_core::LagObserver = Arc::new(move |us| {
        if let Some(s) = weak.upgrade() {
            s.metrics.observe(&s.metrics.backplane_lag, us);
        }
    });
    let cluster = Arc::new(pulsegate_core::Cluster::new(
        shared.hub.clone(),
        backplane,
        h.max_messages,
        lag,
    ));
    tracing::info!(
        backplane = c.backplane.as_str(),
        url = %match c.backplane {
            BackplaneKind::Nats => &c.nats_url,
            _ => &c.redis_url,
        },
        up = cluster.backplane().is_up(),
        "cluster backplane configured"
    );
    let _ = shared.cluster.set(cluster.clone());
    Ok(Some(tokio::spawn(cluster.run_ingest(rx))))
}

fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "pulsegate".to_string())
}

impl Running {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Shared state (hub, stats, config).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Starts draining: `/readyz` turns 503, new upgrades get 503, and
    /// connections close with 1001 spread over `server.drain_period`.
    pub fn drain(&self) {
        self.shared.start_drain();
    }

    /// Reads `tls.cert` and `tls.key` again (what `SIGHUP` does): new
    /// handshakes use the new pair, open connections keep theirs. On error
    /// the old pair stays in service. Without TLS this does nothing.
    pub fn reload_tls(&self) -> Result<(), StartError> {
        match &self.tls {
            Some(t) => t.reload(),
            None => Ok(()),
        }
    }

    /// Closes every connection now.
    pub fn terminate(&self) {
        self.shared.terminate();
    }

    /// Waits until every WebSocket connection has closed after [`Running::drain`]
    /// (or the drain period plus a grace of 5 s has passed), then stops
    /// accepting and waits briefly for the remaining connection tasks.
    pub async fn wait_drained(mut self) {
        let deadline = tokio::time::Instant::now()
            + self.shared.config.server.drain_period
            + Duration::from_secs(5);
        while self.shared.active_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.shared.terminate();
        self.accept.abort();
        self.sweeper.abort();
        self.sampler.abort();
        if let Some(i) = &self.ingest {
            i.abort();
        }
        let _ = self.accept.await;
        // Every connection task holds a tracker sender; recv() is None once all are gone.
        let _ = tokio::time::timeout(Duration::from_secs(3), self.tracker.recv()).await;
    }

    /// Drains on the first SIGTERM/SIGINT and returns when done; a second
    /// signal closes everything at once.
    pub async fn run_until_signal(self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => match self.reload_tls() {
                    Ok(()) if self.tls.is_some() => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
                    Ok(()) => tracing::info!("SIGHUP: no TLS configured, nothing to reload"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: TLS reload failed; still serving the previous certificate"),
                },
            }
        }
        tracing::info!(
            connections = self.shared.active_connections(),
            drain_period = ?self.shared.config.server.drain_period,
            "signal received: draining (send again to stop at once)"
        );
        self.drain();
        let shared = self.shared.clone();
        let second = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        tokio::select! {
            _ = self.wait_drained() => {
                tracing::info!("drained; exiting");
            }
            _ = second => {
                tracing::warn!(connections = shared.active_connections(), "second signal: exiting now");
                shared.terminate();
            }
        }
        Ok(())
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    tracker: mpsc::Sender<()>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let tls = tls.clone();
        let tracker = tracker.clone();
        tokio::spawn(handle_socket(shared, stream, peer, tls, tracker));
    }
}

/// A connection's task until its request head was read; a WebSocket
/// connection then continues in a task of its own (see [`run_next`]).
/// `tracker` is held by every connection task until it ends (drain waits
/// for all of them).
async fn handle_socket(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    tracker: mpsc::Sender<()>,
) {
    let accepted_at = Instant::now();
    // Small frames must not wait for Nagle + delayed ACK (~40 ms).
    let _ = stream.set_nodelay(true);
    // Each phase is boxed separately so the task holds only the memory of
    // the phase it is in: a spawned future is as large as its largest
    // state, and the handshake and TLS states are much larger than an
    // idle WebSocket connection needs (see docs/ARCHITECTURE.md, memory).
    // Futures are boxed in their own `let` statements: a temporary in an
    // `.await` expression stays in the caller's state until the statement
    // ends, which would put the whole unboxed future back into the task.
    match tls {
        None => {
            let prepared = Box::pin(prepare(shared.clone(), stream, peer, accepted_at, false));
            let next = prepared.await;
            let live = Box::pin(run_next(shared, next, tracker));
            live.await;
        }
        Some(acceptor) => {
            let tls = Box::pin(handle_tls(
                shared,
                stream,
                peer,
                acceptor,
                accepted_at,
                tracker,
            ));
            tls.await;
        }
    }
}

/// The TLS handshake, then the same path as a plain connection. A separate
/// function so the TLS stream's size never enlarges plain connections' tasks.
async fn handle_tls(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    accepted_at: Instant,
    tracker: mpsc::Sender<()>,
) {
    let timeout = shared.config.server.handshake_timeout;
    let tls_stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared.metrics.rejected(Rejected::BadRequest);
            return tracing::debug!(%peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            shared.metrics.rejected(Rejected::HandshakeTimeout);
            return tracing::debug!(%peer, "TLS handshake timed out");
        }
    };
    // A certificate was presented and verified against tls.client_ca (the
    // verifier refuses the handshake for one that does not chain to it).
    let client_cert = tls_stream
        .get_ref()
        .1
        .peer_certificates()
        .is_some_and(|c| !c.is_empty());
    let prepared = Box::pin(prepare(
        shared.clone(),
        tls_stream,
        peer,
        accepted_at,
        client_cert,
    ));
    let next = prepared.await;
    let live = Box::pin(run_next(shared, next, tracker));
    live.await;
}

/// What a connection becomes once its request head was read.
enum Next<S> {
    /// A `/ws` connection of our protocol.
    Ws(WsStream<Prefixed<S>>, ConnMeta, ConnSlot),
    /// A `/echo` connection.
    Echo(WsStream<Prefixed<S>>, ConnSlot),
    /// Plain HTTP, served by hyper (peer, verified client certificate).
    Http(Prefixed<S>, SocketAddr, bool),
    /// Already answered (refused) or failed.
    Done,
}

/// Serves what the connection became. A `/ws` connection, which may live for
/// days, gets a new task of its own so that nothing of the accept phase (this
/// task and its boxed phases) stays allocated with it: its task is only
/// as large as `serve_ws`'s state (see docs/ARCHITECTURE.md, memory).
async fn run_next<S>(shared: Arc<Shared>, next: Next<S>, tracker: mpsc::Sender<()>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Prefixed<S>: crate::io::Hibernate,
{
    let live: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match next {
        Next::Ws(ws, meta, slot) => {
            tokio::spawn(serve_ws(shared, ws, meta, slot, tracker));
            return;
        }
        Next::Echo(ws, slot) => Box::pin(serve_echo(ws, slot)),
        Next::Http(io, peer, cert) => Box::pin(serve_http(shared, io, peer, cert)),
        Next::Done => return,
    };
    live.await;
}

/// Reads the request head, answers refusals, and performs the upgrade.
async fn prepare<S>(
    shared: Arc<Shared>,
    mut stream: S,
    peer: SocketAddr,
    accepted_at: Instant,
    client_cert: bool,
) -> Next<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = shared.config.server.handshake_timeout;
    let (head, head_len, buf) =
        match tokio::time::timeout(timeout, handshake::read_head(&mut stream)).await {
            Ok(Ok(h)) => h,
            Ok(Err(HeadError::TooLarge)) => {
                let _ = handshake::write_error(
                    &mut stream,
                    431,
                    "Request Header Fields Too Large",
                    &[],
                    &json!({"error": "head_too_large"}),
                )
                .await;
                return Next::Done;
            }
            Ok(Err(HeadError::Malformed(m))) => {
                shared.metrics.rejected(Rejected::BadRequest);
                let _ = handshake::write_error(
                    &mut stream,
                    400,
                    "Bad Request",
                    &[],
                    &json!({"error": "bad_request", "message": m}),
                )
                .await;
                return Next::Done;
            }
            Ok(Err(_)) => return Next::Done,
            Err(_) => {
                shared.metrics.rejected(Rejected::HandshakeTimeout);
                tracing::debug!(%peer, "handshake timeout");
                return Next::Done;
            }
        };
    let is_ws_path = head.path == "/ws" || head.path == "/echo";
    if !(head.is_upgrade && is_ws_path) {
        return Next::Http(Prefixed::new(buf.freeze(), stream), peer, client_cert);
    }
    let reject = |status: u16, reason: &'static str, code: &'static str, message: String| {
        (status, reason, code, message)
    };
    let refusal = if head.ws_version.as_deref() != Some("13") {
        // RFC 6455 §4.4: name the version we speak.
        Some(reject(
            426,
            "Upgrade Required",
            "bad_version",
            "Sec-WebSocket-Version must be 13".into(),
        ))
    } else if let Err(m) = handshake::validate_upgrade(&head) {
        Some(reject(400, "Bad Request", "bad_request", m.to_string()))
    } else if shared.is_draining() {
        Some(reject(
            503,
            "Service Unavailable",
            "draining",
            "server is draining; reconnect to another node".into(),
        ))
    } else if !handshake::origin_allowed(&head, &shared.config.server.allowed_origins) {
        Some(reject(
            403,
            "Forbidden",
            "origin",
            format!(
                "Origin {} is not allowed (server.allowed_origins)",
                head.origin.as_deref().unwrap_or("")
            ),
        ))
    } else {
        None
    };
    let client_ip =
        crate::clientip::client_ip(&shared.trusted_proxies, peer.ip(), &head.forwarded_chain);
    let refusal = match refusal {
        None if !shared.rates.handshake(client_ip) => Some(reject(
            429,
            "Too Many Requests",
            "rate_limited",
            "too many upgrades from this address (limits.handshake_rate_per_ip)".into(),
        )),
        None if shared
            .over_budget
            .load(std::sync::atomic::Ordering::Relaxed) =>
        {
            Some(reject(
                503,
                "Service Unavailable",
                "at_capacity",
                "server at capacity: queued bytes over limits.max_queued_bytes_total".into(),
            ))
        }
        r => r,
    };
    // With `auth.mode = "jwt"`, a token on the upgrade must be valid; without
    // one the connection must authenticate with an `auth` message in time.
    let mut identity = None;
    let refusal = match (refusal, &shared.auth) {
        (None, Some(auth)) if head.path == "/ws" => {
            let token = crate::auth::upgrade_token(
                &shared.config,
                head.authorization.as_ref().map(|s| s.expose()),
                head.query.as_deref(),
                &head.protocols,
            );
            match token.map(|t| auth.verify(&t)) {
                None => None,
                Some(Ok(id)) => {
                    identity = Some(Box::new(id));
                    None
                }
                Some(Err(e)) => {
                    shared.metrics.auth_failure(e.label());
                    Some(reject(401, "Unauthorized", "unauthorized", e.to_string()))
                }
            }
        }
        (r, _) => r,
    };
    if let Some((status, reason, code, message)) = refusal {
        shared.metrics.rejected(match code {
            "draining" => Rejected::Draining,
            "origin" => Rejected::Origin,
            "unauthorized" => Rejected::Auth,
            "rate_limited" => Rejected::RateLimit,
            "at_capacity" => Rejected::MemoryBudget,
            _ => Rejected::BadRequest,
        });
        let extra = match code {
            "draining" | "at_capacity" => vec![("Retry-After", "5".to_string())],
            "rate_limited" => {
                shared.metrics.rate_limited("handshake");
                vec![("Retry-After", "1".to_string())]
            }
            "bad_version" => vec![("Sec-WebSocket-Version", "13".to_string())],
            _ => vec![],
        };
        tracing::debug!(%peer, code, "upgrade refused");
        let _ = handshake::write_error(
            &mut stream,
            status,
            reason,
            &extra,
            &json!({"error": code, "message": message}),
        )
        .await;
        return Next::Done;
    }
    let slot = match shared.admit(client_ip) {
        Ok(s) => s,
        Err(which) => {
            shared.metrics.rejected(if which == "limit_total" {
                Rejected::LimitTotal
            } else {
                Rejected::LimitPerIp
            });
            let (status, reason, msg) = if which == "limit_total" {
                (
                    503,
                    "Service Unavailable",
                    "server at capacity (limits.max_connections)",
                )
            } else {
                (
                    429,
                    "Too Many Requests",
                    "too many connections from this address (limits.max_connections_per_ip)",
                )
            };
            let _ = handshake::write_error(
                &mut stream,
                status,
                reason,
                &[("Retry-After", "5".to_string())],
                &json!({"error": which, "message": msg}),
            )
            .await;
            return Next::Done;
        }
    };
    let echo = head.path == "/echo";
    let (codec, protocol) = if echo {
        (Codec::Json, None)
    } else {
        Codec::negotiate(head.protocols.iter().map(String::as_str))
    };
    let key = head.ws_key.clone().unwrap_or_default();
    let z = &shared.config.compression;
    let deflate = z
        .enabled
        .then(|| pulsegate_ws::deflate::negotiate(head.extensions.iter().map(String::as_str)))
        .flatten();
    if handshake::write_101(
        &mut stream,
        &key,
        protocol,
        deflate.as_ref().map(|(_, response)| response.as_str()),
    )
    .await
    .is_err()
    {
        return Next::Done;
    }
    let deflate = deflate.map(|(params, _)| crate::ws::Deflate {
        params,
        threshold: z.threshold,
        level: z.level,
    });
    if deflate.is_some() {
        shared.metrics.deflate_negotiated();
    }
    shared.metrics.accepted(echo);
    let handshake_us = accepted_at.elapsed().as_micros() as u64;
    shared
        .metrics
        .observe(&shared.metrics.handshake, handshake_us);
    let rest = handshake::split_rest(buf, head_len);
    let ws = WsStream::new(
        Prefixed::new(rest, stream),
        shared.config.limits.max_message_bytes,
        deflate,
    );
    if echo {
        Next::Echo(ws, slot)
    } else {
        let creds = crate::admin::Credentials {
            authorization: head.authorization.as_ref().map(|s| s.expose()),
            cookie: head.cookie.as_ref().map(|s| s.expose()),
            query: head.query.as_deref(),
            forwarded: head.forwarded,
        };
        let admin = crate::admin::is_admin(&shared.config, creds, peer.ip());
        let meta = ConnMeta {
            peer,
            client_ip,
            codec,
            user_agent: head.user_agent,
            admin,
            identity,
            client_cert,
        };
        Next::Ws(ws, meta, slot)
    }
}

async fn serve_http<S>(shared: Arc<Shared>, io: Prefixed<S>, peer: SocketAddr, client_cert: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut phase = shared.phase.subscribe();
    let svc_shared = shared.clone();
    let service =
        service_fn(move |req| crate::http::route(svc_shared.clone(), peer, client_cert, req));
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(shared.config.server.handshake_timeout)
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "http connection error");
                }
                return;
            }
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow() == Phase::Terminate {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
