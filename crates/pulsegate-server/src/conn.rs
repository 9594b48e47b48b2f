//! One WebSocket connection's whole life, in one task that owns the socket.
//!
//! The task waits on five things at once: the phase of the server (drain),
//! its heartbeat timers, the next client frame, and its [`Outbox`] becoming
//! non-empty. Publishers never touch the socket: they push into the outbox,
//! and this task writes everything queued in one vectored write
//! ([`WsStream`] queues frames and writes them with `writev` on flush).
//! Control frames (pings, close) are written by this task directly, so they
//! never wait behind a full data queue.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use pulsegate_core::{now_micros, CloseReason, Control, HubError, Outbox, Outgoing};
use pulsegate_proto::{
    close_code, topic::validate_topic, ClientFrame, Codec, DecodeError, ErrorCode, Id, Pattern,
    Reply, ServerFrame,
};
use pulsegate_ws::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep_until, Instant, Sleep};

use crate::io::Hibernate;
use crate::metrics::{FrameError, Initiator, Kind, Source};
use crate::state::{ConnInfo, ConnSlot, Phase, Shared};
use crate::ws::{frame_all, WsError, WsStream};

/// Most frames written per vectored write.
const BATCH_FRAMES: usize = 256;
/// About most bytes written per vectored write.
const BATCH_BYTES: usize = 256 * 1024;
/// Batch storage kept between writes, in frames. The batch and the outbox
/// trade storage (`Outbox::take_batch`), which the outbox sizes so that it
/// shares no allocator size class with the long-lived per-connection
/// objects (docs/ARCHITECTURE.md, memory).
const BATCH_KEEP: usize = 256;
/// Most pipelined `pub` frames to one topic published together (see
/// `Conn::take_burst`).
const INGRESS_BURST: usize = 64;
/// How long a close handshake may take before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Facts about a connection fixed at upgrade time.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    /// Remote address (of the TCP peer: a proxy, behind one).
    pub peer: SocketAddr,
    /// The client's address (see [`crate::clientip`]).
    pub client_ip: std::net::IpAddr,
    /// Negotiated codec.
    pub codec: Codec,
    /// `User-Agent`, truncated.
    pub user_agent: Option<String>,
    /// May subscribe to `$sys/` topics (see [`crate::admin`]).
    pub admin: bool,
    /// The verified token of the upgrade (`auth.mode = "jwt"`), if any.
    pub identity: Option<Box<crate::auth::Identity>>,
    /// The TLS client presented a certificate verified against `tls.client_ca`.
    pub client_cert: bool,
}

/// A frame a burst of `pub`s read ahead but did not take
/// (`Conn::take_burst`); it is handled next.
enum Held {
    /// As read (a control frame, an error, or a frame that does not decode).
    Frame(Option<Result<Message, WsError>>),
    /// Decoded, with its length on the wire.
    Request { frame: ClientFrame, len: u64 },
}

/// How a connection ended; decides the close frame and the log line.
#[derive(Debug)]
enum End {
    /// The client sent a close frame (code) or the stream ended.
    ClientClosed(Option<u16>),
    /// Transport or protocol error.
    Error(WsError),
    /// We close with this code and reason.
    Close(u16, String),
    /// The socket stopped accepting writes; drop it without a close handshake.
    WriteStalled,
}

/// Frames and bytes of one written batch, by kind.
#[derive(Default)]
struct Tally {
    data: u64,
    data_bytes: u64,
    control: u64,
    control_bytes: u64,
}

/// Heartbeat state of one connection.
struct Heartbeat {
    counter: u64,
    sent: Instant,
    pong_deadline: Option<Instant>,
}

/// A connection with no frame read or written for this long drops its
/// buffers and waits for the socket to be readable or something queued.
const HIBERNATE_AFTER: Duration = Duration::from_secs(2);

/// The run loop's state that outlives one `Conn::run` call: the run
/// future is dropped while the connection hibernates.
struct LoopState {
    next_ping: Instant,
    beat: Heartbeat,
    /// When to close for a drain (set when the drain request is seen).
    drain_at: Option<Instant>,
    /// Last frame read or written (not timer wake-ups).
    last_activity: Instant,
    /// When to look whether the connection went idle; `None` while it
    /// hibernates (then only traffic, heartbeats and deadlines wake it).
    idle_check: Option<Instant>,
    /// The outbox signalled: look at its control and write what is queued.
    outbox_signaled: bool,
}

impl LoopState {
    fn new(hb: &crate::config::HeartbeatConfig, phase: Phase) -> LoopState {
        let now = Instant::now();
        LoopState {
            next_ping: now + hb.ping_interval,
            beat: Heartbeat {
                counter: 0,
                sent: now,
                pong_deadline: None,
            },
            // The server asks for drain or stop through the outbox
            // (`Control`); a drain that began before this connection
            // registered is seen here.
            drain_at: (phase != Phase::Running).then_some(now),
            last_activity: now,
            idle_check: Some(now + HIBERNATE_AFTER),
            outbox_signaled: false,
        }
    }

    /// The earliest deadline of the connection: what the timer is set to.
    fn next_deadline<S>(&self, conn: &Conn<S>) -> Instant {
        [
            Some(self.next_ping),
            self.beat.pong_deadline,
            self.drain_at,
            self.idle_check,
            conn.auth_deadline,
            conn.silent_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("next_ping is always set")
    }
}

/// Why `Conn::run` returned.
enum Step {
    End(End),
    /// Buffers were released; sleep until traffic or the timer.
    Hibernate,
}

struct Conn<S> {
    shared: Arc<Shared>,
    ws: WsStream<S>,
    outbox: Arc<Outbox>,
    codec: Codec,
    subs: Vec<Pattern>,
    protocol_errors: u32,
    batch: VecDeque<Outgoing>,
    /// What the admin API sees of this connection; also its counters.
    info: Arc<ConnInfo>,
    /// Ingress times of the batch being written and how many deliveries
    /// share each (reused; for the lag histogram).
    lag_ts: Vec<(u64, u64)>,
    /// Token and grants (`auth.mode = "jwt"`); boxed, as most connections
    /// of an unauthenticated deployment never have one.
    identity: Option<Box<crate::auth::Identity>>,
    /// When the token expires (plus leeway), or when an unauthenticated
    /// connection must have authenticated by.
    auth_deadline: Option<Instant>,
    /// `auth_deadline` changed: the run loop re-arms its timer.
    auth_changed: bool,
    /// Publish rate buckets, created on the first `pub`.
    pub_buckets: Option<Box<crate::ratelimit::PublishBuckets>>,
    /// Verified TLS client certificate (mTLS publishers).
    client_cert: bool,
    /// Until the first frame arrives: when the connection is closed as silent.
    silent_deadline: Option<Instant>,
    /// The connection's place in the limits; released on drop.
    slot: ConnSlot,
    _tracker: tokio::sync::mpsc::Sender<()>,
}

/// Runs a `/ws` connection until it closes.
///
/// The set-up is done here, synchronously; the returned future (to be
/// spawned as the connection's task) owns only the boxed `Conn`, so its
/// state holds no second copy of the stream or the metadata (an async fn
/// keeps its arguments in its state for its whole life). `tracker` is held until
/// the connection ends (the server's drain waits for all of them).
pub fn serve_ws<S>(
    shared: Arc<Shared>,
    ws: WsStream<S>,
    meta: ConnMeta,
    slot: ConnSlot,
    tracker: tokio::sync::mpsc::Sender<()>,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Hibernate + Send,
{
    let id = slot.id;
    let outbox = Outbox::new(id, meta.codec, shared.outbox_limits());
    let info = Arc::new(ConnInfo {
        outbox: outbox.clone(),
        peer: meta.peer,
        client_ip: meta.client_ip,
        user_agent: meta.user_agent.map(|s| s.chars().take(128).collect()),
        codec: meta.codec,
        admin: meta.admin,
        connected_at_us: now_micros(),
        subject: parking_lot::Mutex::new(meta.identity.as_ref().map(|i| i.subject.as_str().into())),
        messages_in: Default::default(),
        bytes_in: Default::default(),
        bytes_out: Default::default(),
        subscriptions: Default::default(),
        ping_rtt_us: Default::default(),
    });
    let mut conn = Conn {
        ws,
        codec: meta.codec,
        subs: Vec::new(),
        protocol_errors: 0,
        batch: VecDeque::new(),
        info,
        lag_ts: Vec::new(),
        identity: None,
        auth_deadline: None,
        auth_changed: false,
        pub_buckets: None,
        client_cert: meta.client_cert,
        silent_deadline: None,
        outbox,
        shared,
        slot,
        _tracker: tracker,
    };
    conn.shared.register(&conn.info);
    if let Some(auth) = &conn.shared.config.auth_if_on() {
        conn.auth_deadline = match &meta.identity {
            Some(id) => Some(expiry_instant(id, auth.leeway)),
            // Operators holding the admin token need no JWT (the dashboard);
            // loopback alone does not exempt a connection from auth.
            None if meta.admin && conn.shared.config.admin.token.is_some() => None,
            None => Some(Instant::now() + auth.timeout),
        };
    }
    conn.identity = meta.identity;
    let first = conn.shared.config.server.first_frame_timeout;
    conn.silent_deadline = (!first.is_zero()).then(|| Instant::now() + first);
    conn.outbox.push_reply(
        conn.codec.encode(&ServerFrame::Welcome {
            conn: id.to_string(),
            node: conn.shared.node.clone(),
            ping_interval_ms: conn.shared.config.heartbeat.ping_interval.as_millis() as u64,
        }),
        conn.shared.hub.stats(),
    );
    let st = LoopState::new(&conn.shared.config.heartbeat, *conn.shared.phase.borrow());
    serve(Box::new((conn, st)))
}

/// The connection's task: run, hibernate, run …, then the close handshake
/// and the bookkeeping of its end.
///
/// `conn` is boxed: an async fn keeps its argument in its state next to the
/// local it is bound to, which would hold the connection twice.
///
/// The loop state shares that box: with it, the box (about 600 bytes) and
/// the task (under 512) stay out of the allocator size class of the run
/// future, which is freed whenever the connection hibernates; sharing a
/// class, those frees would leave holes between long-lived objects that
/// keep their pages resident (docs/ARCHITECTURE.md, memory).
async fn serve<S>(mut state: Box<(Conn<S>, LoopState)>)
where
    S: AsyncRead + AsyncWrite + Unpin + Hibernate + Send,
{
    // One timer for all deadlines (next ping, pong deadline, drain close,
    // idle check, auth), kept for the connection's life: the loop runs once
    // per delivered batch, so it must not register timers on every turn.
    let (conn, st) = &mut *state;
    let timer = tokio::time::sleep_until(st.next_deadline(conn));
    tokio::pin!(timer);
    let end = loop {
        // Boxed in its own statement so the unboxed future never sits in
        // this one's state; dropped while the connection hibernates, which
        // then holds only `conn`, `st` and the timer.
        let running = Box::pin(conn.run(st, timer.as_mut()));
        let step = running.await;
        match step {
            Step::End(end) => break end,
            Step::Hibernate => conn.hibernate(st, timer.as_mut()).await,
        }
    };
    // Boxed: the close handshake's state is needed once, not for the connection's life.
    let finishing = Box::pin(conn.finish(end));
    let (code, initiator, reason) = finishing.await;
    // Whatever is still queued, or published to us until the hub forgets
    // this connection, is counted as dropped (`connection_closed`).
    conn.outbox
        .close(CloseReason::Ended, conn.shared.hub.stats());
    let id = conn.slot.id;
    conn.shared.unregister(id);
    conn.shared.hub.remove_connection(id, conn.subs.iter());
    if let Some(c) = conn.shared.cluster.get() {
        // Boxed: needed once, at the end; not part of the task's state.
        Box::pin(async {
            for p in &conn.subs {
                c.release(p).await;
            }
        })
        .await;
    }
    let duration_ms = now_micros().saturating_sub(conn.info.connected_at_us) / 1000;
    let m = &conn.shared.metrics;
    m.closed(code, initiator);
    m.observe(&m.conn_duration, duration_ms);
    let info = &conn.info;
    tracing::info!(
        conn = id,
        remote = %info.peer,
        client_ip = %info.client_ip,
        codec = info.codec.label(),
        duration_ms,
        messages_in = info.messages_in.load(Relaxed),
        messages_out = conn.outbox.sent_frames.load(Relaxed),
        bytes_in = info.bytes_in.load(Relaxed),
        bytes_out = info.bytes_out.load(Relaxed),
        close_code = code,
        initiator = initiator.label(),
        reason = ?reason,
        ping_rtt_us = info.ping_rtt_us.load(Relaxed),
        "connection closed"
    );
}

impl<S: AsyncRead + AsyncWrite + Unpin + Hibernate> Conn<S> {
    /// Frees the connection's buffers if that loses nothing: no partial
    /// frame read, nothing left to flush or queued.
    fn try_hibernate(&mut self) -> bool {
        if !(self.ws.get_ref().can_hibernate()
            && self.outbox.release_if_empty()
            && self.ws.release_buffers())
        {
            return false;
        }
        self.batch = VecDeque::new();
        self.lag_ts = Vec::new();
        true
    }

    /// Sleeps on the bare socket, the outbox and the timer (no buffers, no
    /// future state beyond this call's references) until one of them is
    /// ready. The timer (a heartbeat, a deadline, the next idle check) is
    /// not traffic: it leaves `last_activity` alone, so the connection goes
    /// back to sleep at once if nothing else happens.
    async fn hibernate(&mut self, st: &mut LoopState, mut timer: Pin<&mut Sleep>) {
        st.idle_check = None;
        timer.as_mut().reset(st.next_deadline(self));
        let m = &self.shared.metrics;
        m.hibernated();
        m.hibernating.fetch_add(1, Relaxed);
        // `move`: the closure holds `&mut` to the stream (a shared
        // reference held across the await would need `S: Sync`).
        let ws = &mut self.ws;
        let outbox = &self.outbox;
        let mut sleep = timer.as_mut();
        let (by_outbox, by_socket) = std::future::poll_fn(move |cx| {
            if sleep.as_mut().poll(cx).is_ready() {
                Poll::Ready((false, false))
            } else if outbox.poll_ready(cx).is_ready() {
                Poll::Ready((true, false))
            } else if ws.get_ref().poll_readable(cx).is_ready() {
                Poll::Ready((false, true))
            } else {
                Poll::Pending
            }
        })
        .await;
        m.hibernating.fetch_sub(1, Relaxed);
        st.outbox_signaled |= by_outbox;
        if by_outbox || by_socket {
            st.last_activity = Instant::now();
        }
        // Awake: look again after the idle period (a heartbeat's ping and
        // pong count as traffic, so the connection sleeps again after them).
        st.idle_check = Some(Instant::now() + HIBERNATE_AFTER);
        timer.as_mut().reset(st.next_deadline(self));
    }

    /// Serves the connection until it ends or may hibernate.
    async fn run(&mut self, st: &mut LoopState, mut timer: Pin<&mut Sleep>) -> Step {
        let mut hibernate = false;
        loop {
            if std::mem::take(&mut self.auth_changed) {
                timer.as_mut().reset(st.next_deadline(self));
            }
            if std::mem::take(&mut st.outbox_signaled) {
                match self.outbox.control() {
                    Some(Control::Terminate) => {
                        return Step::End(End::Close(
                            close_code::GOING_AWAY,
                            "server shutting down".into(),
                        ));
                    }
                    Some(Control::Drain) if st.drain_at.is_none() => {
                        // Spread closes over the drain period so clients do not reconnect all at once.
                        let period = self.shared.config.server.drain_period;
                        st.drain_at = Some(Instant::now() + period.mul_f64(fastrand::f64()));
                        timer.as_mut().reset(st.next_deadline(self));
                    }
                    _ => {}
                }
                if let Err(end) = self.write_queued().await {
                    return Step::End(end);
                }
                st.last_activity = Instant::now();
            }
            if std::mem::take(&mut hibernate) && self.try_hibernate() {
                return Step::Hibernate;
            }
            let ws = &mut self.ws;
            let outbox = &self.outbox;
            tokio::select! {
                biased;
                _ = timer.as_mut() => {
                    if let Err(end) = self.on_timer(st, &mut hibernate).await {
                        return Step::End(end);
                    }
                    timer.as_mut().reset(st.next_deadline(self));
                }
                frame = ws.next() => {
                    st.last_activity = Instant::now();
                    if let Some(end) = Box::pin(self.on_frame(frame, &mut st.beat)).await {
                        return Step::End(end);
                    }
                }
                _ = outbox.ready() => st.outbox_signaled = true,
            }
        }
    }

    /// The timer fired: close on a due deadline, send a due ping, decide
    /// whether to hibernate. The caller re-arms the timer.
    async fn on_timer(&mut self, st: &mut LoopState, hibernate: &mut bool) -> Result<(), End> {
        let hb = &self.shared.config.heartbeat;
        let (ping_interval, pong_timeout) = (hb.ping_interval, hb.pong_timeout);
        let now = Instant::now();
        if st.drain_at.is_some_and(|d| d <= now) {
            self.write_queued().await?;
            let hint = 500 + fastrand::u64(..5000);
            return Err(End::Close(
                close_code::GOING_AWAY,
                format!("draining; reconnect_after_ms={hint}"),
            ));
        }
        if self.silent_deadline.is_some_and(|d| d <= now) {
            return Err(End::Close(
                close_code::POLICY_VIOLATION,
                "no frame within server.first_frame_timeout".into(),
            ));
        }
        if self.auth_deadline.is_some_and(|d| d <= now) {
            return Err(if self.identity.is_some() {
                End::Close(
                    close_code::AUTH_EXPIRED,
                    "token expired; refresh it with an auth message before exp".into(),
                )
            } else {
                End::Close(
                    close_code::AUTH_TIMEOUT,
                    "no valid token within auth.timeout".into(),
                )
            });
        }
        if st.beat.pong_deadline.is_some_and(|d| d <= now) {
            self.shared.metrics.pong_timeout();
            return Err(End::Close(close_code::PONG_TIMEOUT, "pong timeout".into()));
        }
        if st.next_ping <= now {
            st.next_ping = now + ping_interval;
            if st.beat.pong_deadline.is_none() {
                st.beat.counter += 1;
                st.beat.sent = now;
                let payload = Bytes::copy_from_slice(&st.beat.counter.to_be_bytes());
                self.send_ping(payload).await?;
                st.beat.pong_deadline = Some(now + pong_timeout);
                st.last_activity = now;
            }
        }
        if st.idle_check.is_some_and(|t| t <= now) {
            *hibernate = st.last_activity + HIBERNATE_AFTER <= now;
            st.idle_check = Some(now.max(st.last_activity) + HIBERNATE_AFTER);
        }
        Ok(())
    }

    /// Handles what the WebSocket stream yielded, and the frames a burst of
    /// `pub`s read ahead but did not take. Returns `Some` to end the connection.
    async fn on_frame(
        &mut self,
        frame: Option<Result<Message, WsError>>,
        beat: &mut Heartbeat,
    ) -> Option<End> {
        let mut next = Held::Frame(frame);
        loop {
            let mut held = None;
            let end = match next {
                Held::Frame(frame) => self.on_one_frame(frame, beat, &mut held).await,
                Held::Request { frame, len } => {
                    self.info.messages_in.fetch_add(1, Relaxed);
                    self.info.bytes_in.fetch_add(len, Relaxed);
                    self.handle_request(frame, len, &mut held).await
                }
            };
            if end.is_some() {
                return end;
            }
            next = held?;
        }
    }

    /// One frame; a `pub` may read further buffered frames, and leaves the
    /// first it does not take in `held`.
    async fn on_one_frame(
        &mut self,
        frame: Option<Result<Message, WsError>>,
        beat: &mut Heartbeat,
        held: &mut Option<Held>,
    ) -> Option<End> {
        let msg = match frame {
            None => return Some(End::ClientClosed(None)),
            Some(Err(e)) => return Some(End::Error(e)),
            Some(Ok(msg)) => msg,
        };
        let (binary, payload) = match &msg {
            Message::Text(b) => (Some(false), b.clone()),
            Message::Binary(b) => (Some(true), b.clone()),
            Message::Ping(b) | Message::Pong(b) => (None, b.clone()),
            Message::Close(_) => (None, Bytes::new()),
        };
        let len = payload.len() as u64;
        // The first frame ends the silent-connection check (the timer may
        // still fire at the old deadline and then finds nothing due).
        self.silent_deadline = None;
        self.info.messages_in.fetch_add(1, Relaxed);
        self.info.bytes_in.fetch_add(len, Relaxed);
        if binary.is_none() {
            // Data frames are counted once decoded, by op.
            self.shared.metrics.received(self.codec, Kind::Control, len);
        }
        if let Message::Pong(p) = &msg {
            if p[..] == beat.counter.to_be_bytes() && beat.pong_deadline.is_some() {
                // The timer may still fire at the old pong deadline; it then finds nothing due.
                beat.pong_deadline = None;
                let rtt = beat.sent.elapsed().as_micros() as u64;
                let rtt_us = u32::try_from(rtt).unwrap_or(u32::MAX).max(1);
                self.info.ping_rtt_us.store(rtt_us, Relaxed);
                let m = &self.shared.metrics;
                m.observe(&m.ping_rtt, rtt);
            }
            None
        } else if let Message::Close(c) = &msg {
            // A close without a code is reported as 1005 (RFC 6455 §7.1.5).
            Some(End::ClientClosed(Some(
                c.as_ref().map_or(1005, |(code, _)| *code),
            )))
        } else if let Some(binary) = binary {
            self.handle_frame(binary, &payload, held).await
        } else {
            // Pings are answered by the WebSocket layer.
            None
        }
    }

    /// Writes everything queued, batch by batch, each batch in one vectored
    /// write. A batch that cannot be written within `server.write_timeout`
    /// ends the connection; so does the outbox being closed as a slow consumer.
    async fn write_queued(&mut self) -> Result<(), End> {
        let write_timeout = self.shared.config.server.write_timeout;
        loop {
            self.batch.clear();
            match self
                .outbox
                .take_batch(&mut self.batch, BATCH_FRAMES, BATCH_BYTES)
            {
                Ok(()) => {}
                Err(CloseReason::SlowConsumer) => {
                    return Err(End::Close(
                        close_code::SLOW_CONSUMER,
                        "slow consumer".into(),
                    ))
                }
                Err(CloseReason::Kicked | CloseReason::Ended) => {
                    return Err(End::Close(close_code::KICKED, "closed by operator".into()))
                }
            }
            if self.batch.is_empty() {
                // The outbox hands its storage over with the frames; a
                // burst's large storage is not kept.
                if self.batch.capacity() > BATCH_KEEP {
                    self.batch = VecDeque::new();
                }
                return Ok(());
            }
            let binary = self.codec.is_binary();
            let ws = &mut self.ws;
            let batch = &mut self.batch;
            let outbox = &self.outbox;
            let metrics = &self.shared.metrics;
            // What the batch holds, for the counters and the lag histogram:
            // data frames of user topics vs replies and `$sys` frames. The
            // ingress times are kept only when histograms are recorded.
            let mut tally = Tally::default();
            let mut lag_ts = std::mem::take(&mut self.lag_ts);
            let record_lag = metrics.enabled();
            let codec = self.codec;
            for item in batch.drain(..) {
                let len = item.len(codec) as u64;
                let msgs = item.messages();
                match msgs.first() {
                    Some(m) if !m.topic.starts_with('$') => {
                        tally.data += msgs.len() as u64;
                        tally.data_bytes += len;
                        if record_lag {
                            // (ingress time, deliveries): a burst shares one time.
                            for m in msgs {
                                match lag_ts.last_mut() {
                                    Some((t, k)) if *t == m.ts => *k += 1,
                                    _ => lag_ts.push((m.ts, 1)),
                                }
                            }
                        }
                    }
                    _ => {
                        tally.control += msgs.len().max(1) as u64;
                        tally.control_bytes += len;
                    }
                }
                match &item {
                    // A run's frames are framed once for every subscriber
                    // that does not compress.
                    Outgoing::Run(run) if !ws.compressing() => {
                        ws.queue_framed(run.wire(codec, |msgs| {
                            frame_all(binary, msgs.iter().map(|m| m.frame_ref(codec)))
                        }));
                    }
                    _ => {
                        for frame in item.frames(codec) {
                            ws.queue_data(binary, frame, None);
                        }
                    }
                }
            }
            let n = tally.data + tally.control;
            // Fast path: the socket usually takes the whole batch at once, and
            // then no timer is armed — arming one per write would cost two
            // timer-wheel operations per delivery.
            let result = {
                let write = ws.flush();
                tokio::pin!(write);
                match futures_util::FutureExt::now_or_never(&mut write) {
                    Some(r) => r,
                    None => {
                        let stall = sleep_until(Instant::now() + write_timeout);
                        tokio::pin!(stall);
                        loop {
                            tokio::select! {
                                r = &mut write => break r,
                                _ = &mut stall => {
                                    self.shared.metrics.write_timeout();
                                    return Err(End::WriteStalled);
                                }
                                _ = outbox.ready() => {
                                    if outbox.is_closed() {
                                        return Err(End::Close(close_code::SLOW_CONSUMER, "slow consumer".into()));
                                    }
                                }
                            }
                        }
                    }
                }
            };
            match result {
                Ok(()) => {
                    if self.ws.compressing() {
                        self.shared.metrics.deflated(self.ws.take_tally());
                    }
                    self.outbox.sent_frames.fetch_add(n, Relaxed);
                    self.info
                        .bytes_out
                        .fetch_add(tally.data_bytes + tally.control_bytes, Relaxed);
                    let m = &self.shared.metrics;
                    m.sent(self.codec, Kind::Data, tally.data, tally.data_bytes);
                    m.sent(
                        self.codec,
                        Kind::Control,
                        tally.control,
                        tally.control_bytes,
                    );
                    if m.enabled() {
                        m.write_batch.observe(n);
                        m.delivery_lag.observe_since(now_micros(), &lag_ts);
                        lag_ts.clear();
                    }
                    if lag_ts.capacity() <= BATCH_FRAMES {
                        self.lag_ts = lag_ts;
                    }
                }
                Err(e) => return Err(End::Error(e.into())),
            }
        }
    }

    async fn send_ping(&mut self, payload: Bytes) -> Result<(), End> {
        let timeout = self.shared.config.server.write_timeout;
        let len = payload.len() as u64;
        self.shared.metrics.sent(self.codec, Kind::Control, 1, len);
        self.ws.queue_ping(payload);
        match tokio::time::timeout(timeout, self.ws.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::Error(e.into())),
            Err(_) => {
                self.shared.metrics.write_timeout();
                Err(End::WriteStalled)
            }
        }
    }

    /// Sends the close frame that fits `end`, waits briefly for the close
    /// handshake, and returns (close code, initiator) for the log.
    async fn finish(&mut self, end: End) -> (u16, Initiator, String) {
        match end {
            End::ClientClosed(code) => {
                // The WebSocket layer queued the echo of the client's close; flush it.
                let _ = tokio::time::timeout(CLOSE_GRACE, self.ws.flush()).await;
                match code {
                    Some(c) => (c, Initiator::Client, "client closed".into()),
                    None => (
                        1006,
                        Initiator::Abnormal,
                        "connection lost without a close frame".into(),
                    ),
                }
            }
            End::Error(e) => {
                let m = &self.shared.metrics;
                let code = match &e {
                    WsError::Protocol(p) => {
                        let code = p.close_code();
                        m.frame_error(match code {
                            close_code::MESSAGE_TOO_BIG => FrameError::Oversize,
                            close_code::INVALID_PAYLOAD => FrameError::InvalidUtf8,
                            _ => FrameError::ProtocolViolation,
                        });
                        code
                    }
                    WsError::Io(_) => 1006,
                };
                let reason = e.to_string();
                if code != 1006 {
                    let _ = tokio::time::timeout(CLOSE_GRACE, async {
                        if self.ws.send_close(Some(code), &reason).await.is_ok() {
                            // Read (and discard) until the client closes its side.
                            while let Some(Ok(_)) = self.ws.next().await {}
                        }
                    })
                    .await;
                }
                let who = if code == 1006 {
                    Initiator::Abnormal
                } else {
                    Initiator::Server
                };
                (code, who, reason)
            }
            End::Close(code, reason) => {
                // Replies already queued (e.g. the error that triggered a 1008)
                // go out before the close frame; a closed outbox has none.
                let _ = tokio::time::timeout(CLOSE_GRACE, self.write_queued()).await;
                let _ = tokio::time::timeout(CLOSE_GRACE, async {
                    if self.ws.send_close(Some(code), &reason).await.is_ok() {
                        // Wait for the client's close reply so the TCP close is clean.
                        while let Some(Ok(_)) = self.ws.next().await {}
                    }
                })
                .await;
                (code, Initiator::Server, reason)
            }
            End::WriteStalled => (
                close_code::WRITE_TIMEOUT,
                Initiator::Server,
                "socket took no data within server.write_timeout".into(),
            ),
        }
    }

    /// Handles one data frame from the client. Returns `Some` to end the connection.
    async fn handle_frame(
        &mut self,
        binary: bool,
        payload: &Bytes,
        held: &mut Option<Held>,
    ) -> Option<End> {
        if binary != self.codec.is_binary() {
            let want = if self.codec.is_binary() {
                "binary (pulsegate.v1.msgpack)"
            } else {
                "text (pulsegate.v1.json)"
            };
            self.shared
                .metrics
                .received(self.codec, Kind::Control, payload.len() as u64);
            return self.protocol_error(
                None,
                FrameError::WrongFrameType,
                ErrorCode::BadRequest,
                format!("this connection expects {want} frames"),
            );
        }
        let len = payload.len() as u64;
        let frame = match self.codec.decode(&payload[..]) {
            Ok(f) => f,
            Err(DecodeError { kind, id, message }) => {
                use pulsegate_proto::DecodeErrorKind as K;
                self.shared.metrics.received(self.codec, Kind::Control, len);
                let (what, code) = match kind {
                    K::UnknownOp => (FrameError::UnknownOp, ErrorCode::UnknownOp),
                    K::BadEncoding => (FrameError::BadJson, ErrorCode::BadRequest),
                    K::BadRequest => (FrameError::BadRequest, ErrorCode::BadRequest),
                };
                return self.protocol_error(id, what, code, message);
            }
        };
        self.handle_request(frame, len, held).await
    }

    /// A decoded request of `len` bytes on the wire.
    async fn handle_request(
        &mut self,
        frame: ClientFrame,
        len: u64,
        held: &mut Option<Held>,
    ) -> Option<End> {
        let kind = if matches!(frame, ClientFrame::Pub { .. }) {
            Kind::Data
        } else {
            Kind::Control
        };
        self.shared.metrics.received(self.codec, kind, len);
        let max_topic = self.shared.config.limits.max_topic_length;
        match frame {
            ClientFrame::Auth { id, token } => return self.authenticate(id, &token),
            ClientFrame::Ping { id } => {
                self.reply(ServerFrame::Pong {
                    id,
                    ts: now_micros(),
                });
            }
            ClientFrame::Pub { id, topic, data } => {
                if let Err(e) = validate_topic(&topic, max_topic) {
                    self.shared.metrics.publish_error("bad_request");
                    return self.protocol_error(
                        id,
                        FrameError::BadRequest,
                        ErrorCode::BadRequest,
                        e.to_string(),
                    );
                }
                if topic.starts_with('$') {
                    self.shared.metrics.publish_error("forbidden");
                    self.error(
                        id,
                        ErrorCode::Forbidden,
                        "topics starting with `$` are reserved for the server".into(),
                    );
                    return None;
                }
                if self.shared.config.tls.require_client_cert_for_publish && !self.client_cert {
                    self.shared.metrics.publish_error("forbidden");
                    self.error(
                        id,
                        ErrorCode::Forbidden,
                        "publishing needs a TLS client certificate (tls.require_client_cert_for_publish)".into(),
                    );
                    return None;
                }
                if let Some(why) = self.acl_refusal(|i| i.may_publish(&topic)) {
                    self.shared.metrics.publish_error("forbidden");
                    self.shared.metrics.acl_denied("pub");
                    self.error(
                        id,
                        ErrorCode::Forbidden,
                        format!("{why} publish to `{topic}`"),
                    );
                    return None;
                }
                let size = data.len();
                if self.pub_buckets.is_none() {
                    self.pub_buckets =
                        crate::ratelimit::PublishBuckets::new(&self.shared.config.limits);
                }
                if let Some(Err(over)) = self.pub_buckets.as_ref().map(|b| b.take(size)) {
                    self.shared.metrics.publish_error("limit");
                    self.shared.metrics.rate_limited(over.label());
                    self.error(id, ErrorCode::Limit, over.message().into());
                    return None;
                }
                if let Some(c) = self.shared.cluster.get() {
                    // Boxed: the backplane round trip's state is not kept in
                    // every connection's future.
                    let published = Box::pin(c.publish(&topic, data)).await;
                    self.published(id, &topic, size, published);
                    return None;
                }
                let mut burst = vec![(id, data)];
                let refused = self.take_burst(&topic, &mut burst, held);
                let sizes: Vec<(Option<Id>, usize)> =
                    burst.iter().map(|(id, d)| (id.clone(), d.len())).collect();
                match self
                    .shared
                    .hub
                    .publish_many(&topic, burst.into_iter().map(|(_, d)| d))
                {
                    Ok(msgs) => {
                        for ((id, size), m) in sizes.into_iter().zip(msgs) {
                            self.published(id, &topic, size, Ok(m));
                        }
                    }
                    Err(e) => {
                        for (id, size) in sizes {
                            self.published(id, &topic, size, Err(e.clone()));
                        }
                    }
                }
                if let Some((id, over)) = refused {
                    self.shared.metrics.publish_error("limit");
                    self.shared.metrics.rate_limited(over.label());
                    self.error(id, ErrorCode::Limit, over.message().into());
                }
            }
            ClientFrame::Sub {
                id,
                topic,
                snapshot,
                since,
            } => {
                let pattern = match Pattern::parse(&topic, max_topic) {
                    Ok(p) => p,
                    Err(e) => {
                        return self.protocol_error(
                            id,
                            FrameError::BadRequest,
                            ErrorCode::BadRequest,
                            e.to_string(),
                        )
                    }
                };
                let wildcards = topic.split('/').filter(|l| *l == "+" || *l == "#").count();
                let max_wild = self.shared.config.limits.max_pattern_wildcards;
                if wildcards > max_wild {
                    self.error(
                        id,
                        ErrorCode::BadRequest,
                        format!("at most {max_wild} wildcards per pattern (limits.max_pattern_wildcards)"),
                    );
                    return None;
                }
                if self.shared.over_budget.load(Relaxed) {
                    self.error(
                        id,
                        ErrorCode::Limit,
                        "server at capacity: queued bytes over limits.max_queued_bytes_total"
                            .into(),
                    );
                    return None;
                }
                if topic.starts_with('$') {
                    if !self.info.admin {
                        self.error(
                            id,
                            ErrorCode::Forbidden,
                            "`$` topics are for operators: connect with the admin token (admin.token)"
                                .into(),
                        );
                        return None;
                    }
                } else if let Some(why) = self.acl_refusal(|i| i.may_subscribe(&topic)) {
                    self.shared.metrics.acl_denied("sub");
                    self.error(
                        id,
                        ErrorCode::Forbidden,
                        format!("{why} subscribe to `{topic}`"),
                    );
                    return None;
                }
                if self.subs.contains(&pattern) {
                    self.error(
                        id,
                        ErrorCode::BadRequest,
                        format!("already subscribed to `{topic}`; unsub first"),
                    );
                    return None;
                }
                let max_subs = self.shared.config.limits.max_subscriptions_per_connection;
                if self.subs.len() >= max_subs {
                    self.error(id, ErrorCode::Limit, format!("at most {max_subs} subscriptions per connection (limits.max_subscriptions_per_connection)"));
                    return None;
                }
                if let Some((t, e)) = since
                    .iter()
                    .find_map(|(t, _)| validate_topic(t, max_topic).err().map(|e| (t, e)))
                {
                    let msg = format!(
                        "since: topic `{}`: {e}",
                        t.chars().take(64).collect::<String>()
                    );
                    return self.protocol_error(
                        id,
                        FrameError::BadRequest,
                        ErrorCode::BadRequest,
                        msg,
                    );
                }
                if let Some(c) = self.shared.cluster.get() {
                    let prepared = Box::pin(cluster_prepare(c, &pattern, snapshot, &since)).await;
                    if let Err(e) = prepared {
                        let code = hub_error_code(&e);
                        self.error(id, code, e.to_string());
                        return None;
                    }
                }
                let codec = self.codec;
                let with_since = !since.is_empty();
                self.shared
                    .hub
                    .subscribe(&self.outbox, &pattern, snapshot, &since, |o| {
                        codec.encode(&ServerFrame::Ok(Reply {
                            id,
                            recovered: with_since.then(|| o.recovered.clone()),
                            not_recovered: with_since.then(|| o.not_recovered.clone()),
                            ..Reply::default()
                        }))
                    });
                self.subs.push(pattern);
                self.info
                    .subscriptions
                    .store(self.subs.len() as u32, Relaxed);
            }
            ClientFrame::Unsub { id, topic } => {
                match self.subs.iter().position(|p| p.as_str() == topic) {
                    Some(i) => {
                        let p = self.subs.swap_remove(i);
                        self.info
                            .subscriptions
                            .store(self.subs.len() as u32, Relaxed);
                        self.shared.hub.unsubscribe(self.outbox.id(), &p);
                        if let Some(c) = self.shared.cluster.get() {
                            Box::pin(c.release(&p)).await;
                        }
                        self.reply(ServerFrame::Ok(Reply {
                            id,
                            ..Reply::default()
                        }));
                    }
                    None => self.error(
                        id,
                        ErrorCode::NotFound,
                        format!(
                            "not subscribed to `{}`",
                            topic.chars().take(256).collect::<String>()
                        ),
                    ),
                }
            }
        }
        None
    }

    /// `None` if the connection may do what `allowed` checks on its token
    /// (always, with `auth.mode = "none"`); else the start of the refusal.
    fn acl_refusal(
        &self,
        allowed: impl Fn(&crate::auth::Identity) -> bool,
    ) -> Option<&'static str> {
        self.shared.auth.as_ref()?;
        match &self.identity {
            None => Some("authenticate first ({\"op\":\"auth\",\"token\":…}) to"),
            Some(i) if allowed(i) => None,
            Some(_) => Some("the token does not allow you to"),
        }
    }

    /// `{"op":"auth"}`: a first token, or a fresh one for the same subject.
    fn authenticate(&mut self, id: Option<Id>, token: &str) -> Option<End> {
        let Some(auth) = &self.shared.auth else {
            self.error(
                id,
                ErrorCode::BadRequest,
                "authentication is off on this server (auth.mode = \"none\")".into(),
            );
            return None;
        };
        match auth.verify(token) {
            Ok(new) => {
                if let Some(old) = &self.identity {
                    if old.subject != new.subject {
                        self.shared.metrics.auth_failure("invalid");
                        return self.protocol_error(
                            id,
                            FrameError::BadRequest,
                            ErrorCode::Forbidden,
                            format!(
                                "the new token is for `{}`, this connection for `{}`",
                                new.subject, old.subject
                            ),
                        );
                    }
                }
                let leeway = self.shared.config.auth.leeway;
                self.auth_deadline = Some(expiry_instant(&new, leeway));
                self.auth_changed = true;
                *self.info.subject.lock() = Some(new.subject.as_str().into());
                let exp = new.expires_at;
                self.identity = Some(Box::new(new));
                self.reply(ServerFrame::Ok(Reply {
                    id,
                    exp,
                    ..Reply::default()
                }));
                None
            }
            Err(e) => {
                self.shared.metrics.auth_failure(e.label());
                self.protocol_error(
                    id,
                    FrameError::BadRequest,
                    ErrorCode::Forbidden,
                    e.to_string(),
                )
            }
        }
    }

    /// Takes the `pub` frames to `topic` that follow in the read buffer
    /// (a publisher pipelining), so that the hub stamps and fans them out
    /// together: one topic lock and one queue mutex per subscriber for the
    /// burst instead of per message. The first frame that is anything else
    /// is left in `held`, so frames are still handled in the order sent. The
    /// burst's first frame passed every check that depends on the topic and
    /// the connection (topic syntax, reserved prefix, certificate, ACL; an
    /// `auth` that could change them ends the burst), so only the rate limit
    /// is left per frame; a frame it refuses ends the burst and is returned,
    /// to be answered after the burst's replies.
    fn take_burst(
        &mut self,
        topic: &str,
        burst: &mut Vec<(Option<Id>, Bytes)>,
        held: &mut Option<Held>,
    ) -> Option<(Option<Id>, crate::ratelimit::Exceeded)> {
        while burst.len() < INGRESS_BURST {
            let next = self.ws.next_buffered()?;
            let payload = match &next {
                Ok(Message::Text(b)) if !self.codec.is_binary() => b,
                Ok(Message::Binary(b)) if self.codec.is_binary() => b,
                _ => {
                    *held = Some(Held::Frame(Some(next)));
                    return None;
                }
            };
            let len = payload.len() as u64;
            let Ok(frame) = self.codec.decode(&payload[..]) else {
                // Decoded again, and answered, as the next frame.
                *held = Some(Held::Frame(Some(next)));
                return None;
            };
            let (id, data) = match frame {
                ClientFrame::Pub { id, topic: t, data } if t == topic => (id, data),
                other => {
                    // Not decoded twice: a publisher that alternates topics
                    // pays nothing for the look-ahead.
                    *held = Some(Held::Request { frame: other, len });
                    return None;
                }
            };
            self.info.messages_in.fetch_add(1, Relaxed);
            self.info.bytes_in.fetch_add(len, Relaxed);
            self.shared.metrics.received(self.codec, Kind::Data, len);
            if let Some(Err(over)) = self.pub_buckets.as_ref().map(|b| b.take(data.len())) {
                return Some((id, over));
            }
            burst.push((id, data));
        }
        None
    }

    /// Counts a publish and answers it.
    fn published(
        &self,
        id: Option<Id>,
        topic: &str,
        size: usize,
        result: Result<Arc<pulsegate_core::Message>, HubError>,
    ) {
        match result {
            Ok(m) => {
                let metrics = &self.shared.metrics;
                metrics.published(Source::Ws, size);
                metrics.observe(&metrics.publish_fanout, now_micros().saturating_sub(m.ts));
                self.reply(ServerFrame::Ok(Reply {
                    id,
                    topic: Some(topic.to_owned()),
                    seq: Some(m.seq),
                    epoch: Some(m.epoch.to_string()),
                    ..Reply::default()
                }));
            }
            Err(e) => {
                let code = hub_error_code(&e);
                self.shared.metrics.publish_error(code.as_str());
                self.error(id, code, e.to_string());
            }
        }
    }

    fn reply(&self, frame: ServerFrame) {
        self.outbox
            .push_reply(self.codec.encode(&frame), self.shared.hub.stats());
    }

    fn error(&self, id: Option<Id>, code: ErrorCode, message: String) {
        self.reply(ServerFrame::Error { id, code, message });
    }

    /// A malformed request: answered with `error`, counted, and the
    /// connection is closed with 1008 once `limits.max_protocol_errors` is exceeded.
    fn protocol_error(
        &mut self,
        id: Option<Id>,
        what: FrameError,
        code: ErrorCode,
        message: String,
    ) -> Option<End> {
        self.shared.metrics.frame_error(what);
        self.protocol_errors += 1;
        self.error(id, code, message);
        let max = self.shared.config.limits.max_protocol_errors;
        (self.protocol_errors > max).then(|| {
            End::Close(
                close_code::POLICY_VIOLATION,
                format!("more than {max} malformed frames"),
            )
        })
    }
}

/// When a token stops being valid: `exp` plus the allowed clock skew.
/// In a cluster, before the hub serves a subscription: the backplane
/// delivers the pattern to this node, and the local copy of each `since`
/// topic (or of the snapshot topic) is brought up to date from its log.
async fn cluster_prepare(
    c: &pulsegate_core::Cluster,
    pattern: &Pattern,
    snapshot: bool,
    since: &[(String, pulsegate_proto::Position)],
) -> Result<(), HubError> {
    c.interest(pattern).await?;
    let mut done = Ok(());
    for (topic, pos) in since.iter().filter(|(t, _)| pattern.matches(t)) {
        done = c.catch_up(topic, Some(pos), false).await;
        if done.is_err() {
            break;
        }
    }
    if done.is_ok()
        && snapshot
        && !pattern.is_wildcard()
        && !since.iter().any(|(t, _)| t == pattern.as_str())
    {
        done = c.catch_up(pattern.as_str(), None, true).await;
    }
    if done.is_err() {
        c.release(pattern).await;
    }
    done
}

fn expiry_instant(id: &crate::auth::Identity, leeway: Duration) -> Instant {
    let now_s = now_micros() / 1_000_000;
    let left = id.expires_at.map_or(u64::MAX / 4, |exp| {
        (exp + leeway.as_secs()).saturating_sub(now_s)
    });
    Instant::now() + Duration::from_secs(left.min(10 * 365 * 86_400))
}

fn hub_error_code(e: &HubError) -> ErrorCode {
    match e {
        HubError::TooManyTopics(_) => ErrorCode::Limit,
        HubError::Backplane(_) => ErrorCode::Unavailable,
    }
}

/// Runs a `/echo` connection: every text or binary message is sent back,
/// compressed whatever its size when the client negotiated compression
/// (so the conformance run exercises the compressor).
pub async fn serve_echo<S>(mut ws: WsStream<S>, slot: ConnSlot)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(b)) => ws.queue_data(false, &b, Some(0)),
            Ok(Message::Binary(b)) => ws.queue_data(true, &b, Some(0)),
            Ok(_) => continue,
            Err(WsError::Protocol(p)) => {
                let _ = tokio::time::timeout(CLOSE_GRACE, async {
                    if ws
                        .send_close(Some(p.close_code()), &p.to_string())
                        .await
                        .is_ok()
                    {
                        while let Some(Ok(_)) = ws.next().await {}
                    }
                })
                .await;
                break;
            }
            Err(WsError::Io(_)) => break,
        }
        if ws.flush().await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, ws.flush()).await;
    drop(slot);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connection state of a plain-TCP connection is boxed once and
    /// kept for the connection's life, also while it hibernates: it must
    /// stay in jemalloc's 640-byte class. At 656 bytes it moved to 768, the
    /// class of the socket's frame queue that hibernation frees, and idle
    /// memory rose by about 200 bytes per connection (the hole effect,
    /// docs/ARCHITECTURE.md, memory).
    #[test]
    fn the_connection_state_stays_in_its_allocator_size_class() {
        type Plain = crate::io::Prefixed<tokio::net::TcpStream>;
        let size = std::mem::size_of::<(Conn<Plain>, LoopState)>();
        assert!(size <= 640, "{size} bytes");
    }
}
