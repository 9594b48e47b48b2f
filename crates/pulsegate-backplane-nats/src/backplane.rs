//! [`NatsBackplane`]: the [`Backplane`] trait on one NATS connection.
//!
//! Who owns what:
//! - async-nats owns the socket, reconnects by itself and re-sends our
//!   subscriptions; its event callback only flips a `watch` and the up flag.
//! - The *supervisor* task (one per backplane) reacts to that `watch`: after
//!   every (re)connect it creates or updates the stream, flushes, marks the
//!   backplane up and sends [`Incoming::Resync`].
//! - One *live task* per distinct NATS subject forwards republished messages
//!   into the node's channel (`LiveSub`).
//! - `publish` and `read` run on the caller's task.
//!
//! [`NatsBackplane`] owns the stop signals of every task: dropping it stops
//! them; [`NatsBackplane::close`] also waits for them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::{PublishMessage, StreamMessage};
use async_nats::jetstream::stream::{
    self, DiscardPolicy, LastRawMessageErrorKind, Republish, StorageType,
};
use async_nats::jetstream::{self, Context};
use async_nats::{Event, HeaderMap, Subscriber};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use pulsegate_core::backplane::redact_url;
use pulsegate_core::{Backplane, BackplaneError, BackplaneStats, Incoming, Log, Message, Stamp};
use pulsegate_proto::Pattern;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tracing::{debug, info, warn};

use crate::config::{split_credentials, Credentials, NatsConfig};
use crate::subject::{pattern_subjects, tokens_to_topic, topic_to_tokens};

/// Header with the message's per-topic seq.
pub const HEADER_SEQ: &str = "Pg-Seq";
/// Header with the topic log's epoch.
pub const HEADER_EPOCH: &str = "Pg-Epoch";
/// Header with the publisher's ingress time, µs since the Unix epoch.
pub const HEADER_TS: &str = "Pg-Ts";
/// Header with the publishing node's name.
pub const HEADER_NODE: &str = "Pg-Node";
/// Header with the stream sequence of the topic's previous message (0 for
/// the first of an epoch): lets `read` walk back without a consumer.
pub const HEADER_PREV: &str = "Pg-Prev";

/// Publish attempts on expected-sequence conflicts before giving up. With
/// the backoff below this is about a second of trying: two busy nodes on
/// one hot topic gave up after 20 attempts (≈20 ms) on a loaded machine.
const MAX_PUBLISH_ATTEMPTS: u32 = 200;
/// Largest pause between two attempts after a conflict.
const MAX_CONFLICT_BACKOFF_US: u64 = 5_000;
/// Reads of at most this many messages walk back along `Pg-Prev` (one
/// point get each); longer ones use a short-lived consumer.
const WALK_BACK_MAX: u64 = 8;
/// Messages fetched per pull request when scanning with a consumer.
const SCAN_BATCH: usize = 256;
/// Most topics whose last stream sequence is cached for publishing; when
/// full, idle entries are dropped (they are only a shortcut).
const HEAD_CACHE_MAX: usize = 65_536;
/// Longest wait between two reconnect attempts or stream setups.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// What the NATS event callback tells the supervisor; the latest value
/// wins, so flaps cannot be lost in a full queue.
#[derive(Debug, Clone, Copy, Default)]
struct Link {
    connected: bool,
    /// Incremented on every `Connected` event.
    connects: u64,
    /// Incremented on every slow-consumer event (a live message dropped).
    slow: u64,
}

/// State shared with the spawned tasks. It holds no task handles, so the
/// tasks keep it alive but cannot keep the [`NatsBackplane`] alive.
struct Shared {
    config: NatsConfig,
    client: async_nats::Client,
    js: Context,
    stream: stream::Stream<()>,
    stats: Arc<BackplaneStats>,
    tx: mpsc::Sender<Incoming>,
    /// `{prefix}.h`
    stored_prefix: String,
    /// `{prefix}.l.`
    live_prefix: String,
    /// Whether `connect` has returned: the first up transition before
    /// that is the initial connection, not a reconnect.
    handed_out: Mutex<bool>,
    /// Successful stream setups so far (one per connection, more after a
    /// lost stream): cached heads from an older setup are not trusted.
    setups: AtomicU64,
}

/// What this node last knew of a topic's log when it published.
#[derive(Debug, Clone)]
enum Head {
    /// Not cached: read the last message first.
    Unknown,
    /// The subject has no message: the next publish starts an epoch.
    Empty,
    /// The subject's last message, as known during setup `setup`.
    At {
        setup: u64,
        stream_seq: u64,
        /// `(seq, epoch)`, or `None` when that message is not ours.
        log: Option<(u64, Arc<str>)>,
    },
}

/// One NATS subscription on a live subject, shared by every pattern that
/// maps to that subject (`a/#` and `a` both use `pg.l.a`).
struct LiveSub {
    /// Patterns using this subscription, with repeats; messages are
    /// forwarded once if any of them matches.
    patterns: Arc<Mutex<Vec<Pattern>>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// A NATS JetStream backplane. Create it with [`NatsBackplane::connect`].
pub struct NatsBackplane {
    shared: Arc<Shared>,
    /// Per-topic publish state. Its async mutex is held across the publish
    /// round trip on purpose: it serializes this node's publishes to one
    /// topic, so they never conflict with each other and need no re-read.
    heads: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<Head>>>>,
    /// Live subscriptions by NATS subject. Held across subscribe and its
    /// flush so overlapping patterns always see a consistent refcount.
    subs: tokio::sync::Mutex<HashMap<String, LiveSub>>,
    /// Asks the supervisor to set the stream up again.
    resetup: mpsc::Sender<()>,
    supervisor: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

impl std::fmt::Debug for NatsBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBackplane")
            .field("url", &redact_url(&self.shared.config.url))
            .field("node", &self.shared.config.node_name)
            .field("stream", &self.shared.config.stream)
            .field("up", &self.shared.stats.up.load(Relaxed))
            .finish()
    }
}

fn down(what: impl std::fmt::Display) -> BackplaneError {
    BackplaneError::Down(format!("nats: {what}"))
}

/// Exponential retry delay with jitter: the first retry at once, then
/// 50 ms doubling up to 5 s, each wait drawn from the upper half of its step.
fn retry_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let step = Duration::from_millis(50)
        .saturating_mul(1 << (attempts - 2).min(10))
        .min(MAX_RETRY_DELAY);
    let half = step.as_micros() as u64 / 2;
    Duration::from_micros(half + fastrand::u64(0..=half))
}

/// A fresh epoch: `n` and 16 random hex digits.
fn new_epoch() -> Arc<str> {
    format!("n{:016x}", fastrand::u64(..)).into()
}

/// The `Pg-*` headers of a stored or republished message.
struct Stamped<'a> {
    seq: u64,
    epoch: &'a str,
    ts: u64,
    prev: u64,
}

fn stamped(headers: &HeaderMap) -> Option<Stamped<'_>> {
    let seq = headers.get(HEADER_SEQ)?.as_str().parse().ok()?;
    let epoch = headers.get(HEADER_EPOCH)?.as_str();
    let ts = headers.get(HEADER_TS)?.as_str().parse().ok()?;
    let prev = headers
        .get(HEADER_PREV)
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0);
    (seq > 0 && !epoch.is_empty()).then_some(Stamped {
        seq,
        epoch,
        ts,
        prev,
    })
}

/// The stream this backplane needs, from its config.
fn stream_config(c: &NatsConfig) -> stream::Config {
    stream::Config {
        name: c.stream.clone(),
        subjects: vec![format!("{}.h.>", c.subject_prefix)],
        storage: StorageType::File,
        max_messages_per_subject: c.max_messages_per_topic,
        max_age: c.max_age,
        max_bytes: c.max_bytes,
        discard: DiscardPolicy::Old,
        republish: Some(Republish {
            source: format!("{}.h.>", c.subject_prefix),
            destination: format!("{}.l.>", c.subject_prefix),
            headers_only: false,
        }),
        ..Default::default()
    }
}

/// `have` with the fields this backplane manages taken from `want`, or
/// `None` when they already agree. Other fields (replicas, placement…)
/// stay as an operator set them.
fn updated_config(have: &stream::Config, want: &stream::Config) -> Option<stream::Config> {
    let same = have.subjects == want.subjects
        && have.max_messages_per_subject == want.max_messages_per_subject
        && have.max_age == want.max_age
        && have.max_bytes == want.max_bytes
        && have.discard == want.discard
        && have.republish == want.republish;
    (!same).then(|| stream::Config {
        subjects: want.subjects.clone(),
        max_messages_per_subject: want.max_messages_per_subject,
        max_age: want.max_age,
        max_bytes: want.max_bytes,
        discard: want.discard,
        republish: want.republish.clone(),
        ..have.clone()
    })
}

impl Shared {
    fn stored_subject(&self, topic: &str) -> String {
        format!("{}.{}", self.stored_prefix, topic_to_tokens(topic))
    }

    /// Creates the stream, or updates it when its limits differ; then
    /// flushes so that re-sent subscriptions are registered.
    async fn setup(&self) -> Result<(), String> {
        let want = stream_config(&self.config);
        let stream = self
            .js
            .get_or_create_stream(want.clone())
            .await
            .map_err(|e| format!("cannot create or get stream {}: {e}", want.name))?;
        let have = &stream.cached_info().config;
        if have.storage != want.storage {
            warn!(
                stream = %want.name,
                "stream storage is {:?}, not file: history does not survive a NATS restart",
                have.storage
            );
        }
        if let Some(update) = updated_config(have, &want) {
            self.js
                .update_stream(update)
                .await
                .map_err(|e| format!("cannot update stream {}: {e}", want.name))?;
            info!(stream = %want.name, "updated stream limits and republish");
        }
        self.client
            .flush()
            .await
            .map_err(|e| format!("flush failed: {e}"))
    }

    /// Marks the backplane up; true when the node must resync (a down → up
    /// transition after `connect` returned).
    fn became_up(&self) -> bool {
        let handed_out = self.handed_out.lock();
        if *handed_out {
            self.stats.set_up()
        } else {
            self.stats.up.store(true, Relaxed);
            false
        }
    }

    /// The subject's last stored message, `None` when it has none.
    async fn last_message(&self, subject: &str) -> Result<Option<StreamMessage>, BackplaneError> {
        let got = timeout(
            self.config.op_timeout,
            self.stream.get_last_raw_message_by_subject(subject),
        )
        .await
        .map_err(|_| down(format!("reading the last message of {subject} timed out")))?;
        match got {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(down(format!("reading the last message of {subject}: {e}"))),
        }
    }

    async fn load_head(&self, subject: &str) -> Result<Head, BackplaneError> {
        let setup = self.setups.load(Relaxed);
        Ok(match self.last_message(subject).await? {
            None => Head::Empty,
            Some(m) => Head::At {
                setup,
                stream_seq: m.sequence,
                log: stamped(&m.headers).map(|s| (s.seq, Arc::from(s.epoch))),
            },
        })
    }
}

impl NatsBackplane {
    /// Connects to NATS and returns once the backplane is up, or after
    /// `op_timeout` in the down state (it keeps reconnecting in the
    /// background, and a server that appears later is used).
    ///
    /// Live messages and [`Incoming::Resync`] go to `tx`, with back-pressure.
    pub async fn connect(
        config: NatsConfig,
        tx: mpsc::Sender<Incoming>,
    ) -> Result<Arc<NatsBackplane>, BackplaneError> {
        config.validate().map_err(BackplaneError::Down)?;
        let mut config = config;
        config.node_name = config.node_name.replace(|c: char| c.is_control(), "_");

        let (servers, credentials) = split_credentials(&config.url).map_err(down)?;

        let stats = Arc::new(BackplaneStats::default());
        let (link_tx, link_rx) = watch::channel(Link::default());
        let callback_stats = stats.clone();
        let options = async_nats::ConnectOptions::new()
            .name(format!("pulsegate-{}", config.node_name))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(config.op_timeout)
            .request_timeout(Some(config.op_timeout))
            .reconnect_delay_callback(retry_delay)
            .event_callback(move |event| {
                match event {
                    Event::Connected => link_tx.send_modify(|l| {
                        l.connected = true;
                        l.connects += 1;
                    }),
                    Event::Disconnected | Event::Closed => {
                        callback_stats.set_down();
                        link_tx.send_modify(|l| l.connected = false);
                    }
                    Event::SlowConsumer(sid) => {
                        warn!(sid, "nats dropped a live message: this node will resync");
                        callback_stats.error();
                        link_tx.send_modify(|l| l.slow += 1);
                    }
                    other => debug!(event = %other, "nats event"),
                }
                async {}
            });
        let options = match credentials {
            Some(Credentials::UserPassword(user, password)) => {
                options.user_and_password(user, password)
            }
            Some(Credentials::Token(token)) => options.token(token),
            None => options,
        };
        info!(url = %redact_url(&config.url), node = %config.node_name, "connecting to nats");
        let client = options.connect(servers).await.map_err(|e| {
            down(format!(
                "cannot use {}: {}",
                redact_url(&config.url),
                e.kind()
            ))
        })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.op_timeout)
            .build(client.clone());
        let stream = js
            .get_stream_no_info(&config.stream)
            .await
            .map_err(|e| down(format!("stream name {:?}: {e}", config.stream)))?;
        let shared = Arc::new(Shared {
            stored_prefix: format!("{}.h", config.subject_prefix),
            live_prefix: format!("{}.l.", config.subject_prefix),
            config,
            client,
            js,
            stream,
            stats,
            tx,
            handed_out: Mutex::new(false),
            setups: AtomicU64::new(0),
        });

        let (resetup_tx, resetup_rx) = mpsc::channel(1);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(supervise(shared.clone(), link_rx, resetup_rx, stop_rx));

        let deadline = Instant::now() + shared.config.op_timeout;
        while !shared.stats.up.load(Relaxed) && Instant::now() < deadline {
            sleep(Duration::from_millis(5)).await;
        }
        *shared.handed_out.lock() = true;
        if !shared.stats.up.load(Relaxed) {
            warn!(
                url = %redact_url(&shared.config.url),
                "nats backplane not up yet; publishing is refused until it is"
            );
        }
        Ok(Arc::new(NatsBackplane {
            shared,
            heads: Mutex::default(),
            subs: tokio::sync::Mutex::default(),
            resetup: resetup_tx,
            supervisor: Mutex::new(Some((stop_tx, task))),
        }))
    }

    /// The configuration in use.
    pub fn config(&self) -> &NatsConfig {
        &self.shared.config
    }

    /// Stops every task of this backplane, waits for them (each bounded by
    /// `op_timeout`) and closes the NATS connection after flushing it.
    pub async fn close(&self) {
        let subs: Vec<LiveSub> = self.subs.lock().await.drain().map(|(_, s)| s).collect();
        for sub in subs {
            stop_live(sub, self.shared.config.op_timeout).await;
        }
        let supervisor = self.supervisor.lock().take();
        if let Some((stop, task)) = supervisor {
            let _ = stop.send(());
            let _ = timeout(self.shared.config.op_timeout, task).await;
        }
        let _ = timeout(self.shared.config.op_timeout, self.shared.client.drain()).await;
        self.shared.stats.set_down();
    }

    fn check_up(&self) -> Result<(), BackplaneError> {
        if self.is_up() {
            Ok(())
        } else {
            self.shared.stats.error();
            Err(down(format!(
                "not connected to {}",
                redact_url(&self.shared.config.url)
            )))
        }
    }

    /// The publish state of `topic`, created on first use.
    fn head_slot(&self, topic: &str) -> Arc<tokio::sync::Mutex<Head>> {
        let mut heads = self.heads.lock();
        if let Some(slot) = heads.get(topic) {
            return slot.clone();
        }
        if heads.len() >= HEAD_CACHE_MAX {
            heads.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        let slot = Arc::new(tokio::sync::Mutex::new(Head::Unknown));
        heads.insert(topic.into(), slot.clone());
        slot
    }

    async fn publish_inner(
        &self,
        topic: &str,
        data: Bytes,
        ts: u64,
    ) -> Result<Stamp, BackplaneError> {
        let shared = &self.shared;
        let subject = shared.stored_subject(topic);
        let slot = self.head_slot(topic);
        let mut head = slot.lock().await;
        for attempt in 0..MAX_PUBLISH_ATTEMPTS {
            // After a reconnect or a re-created stream, a cached stream
            // sequence could match a different message: re-read.
            let setup = shared.setups.load(Relaxed);
            if matches!(*head, Head::At { setup: s, .. } if s != setup) {
                *head = Head::Unknown;
            }
            if matches!(*head, Head::Unknown) {
                *head = shared.load_head(&subject).await?;
            }
            let (expected, seq, epoch) = match &*head {
                Head::At {
                    stream_seq,
                    log: Some((seq, epoch)),
                    ..
                } => (*stream_seq, seq + 1, epoch.clone()),
                Head::At {
                    stream_seq,
                    log: None,
                    ..
                } => (*stream_seq, 1, new_epoch()),
                Head::Empty | Head::Unknown => (0, 1, new_epoch()),
            };
            let message = PublishMessage::build()
                .payload(data.clone())
                .expected_last_subject_sequence(expected)
                .header(HEADER_SEQ, seq.to_string())
                .header(HEADER_EPOCH, &*epoch)
                .header(HEADER_TS, ts.to_string())
                .header(HEADER_NODE, shared.config.node_name.as_str())
                .header(HEADER_PREV, expected.to_string());
            let acked = match shared.js.send_publish(subject.clone(), message).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match acked {
                Ok(ack) => {
                    *head = Head::At {
                        setup,
                        stream_seq: ack.sequence,
                        log: Some((seq, epoch.clone())),
                    };
                    shared.stats.published.fetch_add(1, Relaxed);
                    return Ok(Stamp { seq, epoch });
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    // Another node stored a message on this topic first.
                    shared.stats.conflicts.fetch_add(1, Relaxed);
                    *head = Head::Unknown;
                    // Full jitter, growing exponentially: the nodes that
                    // lost spread out instead of colliding again.
                    let ceiling = (100u64 << attempt.min(16)).min(MAX_CONFLICT_BACKOFF_US);
                    sleep(Duration::from_micros(fastrand::u64(0..=ceiling))).await;
                }
                Err(e) => {
                    // On a timeout the message may have been stored: re-read.
                    *head = Head::Unknown;
                    if e.kind() == PublishErrorKind::StreamNotFound {
                        let _ = self.resetup.try_send(());
                    }
                    return Err(down(format!("publish to {subject}: {e}")));
                }
            }
        }
        Err(BackplaneError::Contention(topic.to_string()))
    }

    async fn read_inner(
        &self,
        topic: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Option<Log>, BackplaneError> {
        let shared = &self.shared;
        let subject = shared.stored_subject(topic);
        let Some(last) = shared.last_message(&subject).await? else {
            return Ok(None);
        };
        let Some(head) = stamped(&last.headers) else {
            warn!(%subject, seq = last.sequence, "last message has no pulsegate headers");
            shared.stats.error();
            return Ok(None);
        };
        let topic: Arc<str> = topic.into();
        let epoch: Arc<str> = head.epoch.into();
        let last_seq = head.seq;
        let reader = LogReader {
            shared,
            subject: &subject,
            topic: &topic,
            epoch: &epoch,
        };
        let messages = match after {
            None => vec![reader.message(&head, last.payload.clone())],
            Some(s) if s >= last_seq || limit == 0 => Vec::new(),
            Some(s) if last_seq - s <= WALK_BACK_MAX => {
                reader.walk_back(&last, &head, s, limit).await?
            }
            Some(s) => reader.scan(s, last_seq, limit).await?,
        };
        Ok(Some(Log {
            epoch,
            last_seq,
            messages,
        }))
    }
}

/// Reads one topic's retained messages for `read`.
struct LogReader<'a> {
    shared: &'a Shared,
    subject: &'a str,
    topic: &'a Arc<str>,
    epoch: &'a Arc<str>,
}

impl LogReader<'_> {
    fn message(&self, s: &Stamped<'_>, payload: Bytes) -> Arc<Message> {
        Arc::new(Message::new(
            self.topic.clone(),
            s.seq,
            self.epoch.clone(),
            s.ts,
            payload,
        ))
    }

    /// Messages with seq > `after`, found by following `Pg-Prev` back from
    /// the last one: one point get per message, no consumer.
    async fn walk_back(
        &self,
        last: &StreamMessage,
        head: &Stamped<'_>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Message>>, BackplaneError> {
        let mut newest_first = vec![self.message(head, last.payload.clone())];
        let (mut seq, mut prev) = (head.seq, head.prev);
        while seq > after + 1 && prev != 0 {
            let got = self
                .shared
                .stream
                .raw_message_builder()
                .sequence(prev)
                .send()
                .await;
            let m = match got {
                Ok(m) => m,
                // Trimmed: what is older is gone too.
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(down(format!("reading {} #{prev}: {e}", self.subject))),
            };
            let Some(s) = stamped(&m.headers) else { break };
            if m.subject.as_str() != self.subject || s.epoch != &**self.epoch || s.seq + 1 != seq {
                break;
            }
            newest_first.push(self.message(&s, m.payload.clone()));
            (seq, prev) = (s.seq, s.prev);
        }
        newest_first.reverse();
        newest_first.truncate(limit);
        Ok(newest_first)
    }

    /// Messages with seq > `after`, from a short-lived consumer that
    /// delivers the subject's retained messages in order.
    async fn scan(
        &self,
        after: u64,
        last_seq: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Message>>, BackplaneError> {
        let name = format!("pg-read-{:016x}", fastrand::u64(..));
        let consumer = self
            .shared
            .stream
            .create_consumer(pull::Config {
                name: Some(name.clone()),
                filter_subject: self.subject.to_string(),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::None,
                memory_storage: true,
                // Removed by the server if this read dies half-way.
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(|e| down(format!("reading {}: {e}", self.subject)))?;
        let mut out = Vec::new();
        let result = async {
            loop {
                let mut batch = consumer
                    .fetch()
                    .max_messages(SCAN_BATCH)
                    .messages()
                    .await
                    .map_err(|e| down(format!("reading {}: {e}", self.subject)))?;
                let (mut got, mut pending) = (0, 0);
                while let Some(m) = batch.next().await {
                    let m = m.map_err(|e| down(format!("reading {}: {e}", self.subject)))?;
                    got += 1;
                    pending = m.info().map(|i| i.pending).unwrap_or(0);
                    let Some(s) = m.headers.as_ref().and_then(stamped) else {
                        continue;
                    };
                    if s.epoch == &**self.epoch && s.seq > after {
                        out.push(self.message(&s, m.payload.clone()));
                    }
                    if out.len() >= limit || s.seq >= last_seq {
                        return Ok(());
                    }
                }
                if got == 0 || pending == 0 {
                    return Ok(());
                }
            }
        }
        .await;
        let _ = self.shared.stream.delete_consumer(&name).await;
        result.map(|()| out)
    }
}

/// Forwards the messages of one live subscription to the node until
/// stopped (or the node's channel closes).
async fn forward_live(
    shared: Arc<Shared>,
    mut sub: Subscriber,
    patterns: Arc<Mutex<Vec<Pattern>>>,
    mut stop: oneshot::Receiver<()>,
) {
    // Most messages of a subscription share an epoch: share its allocation.
    let mut epoch: Option<Arc<str>> = None;
    loop {
        let m = tokio::select! {
            biased;
            _ = &mut stop => break,
            m = sub.next() => match m {
                Some(m) => m,
                None => break,
            },
        };
        let Some(message) = live_message(&shared.live_prefix, &m, &mut epoch) else {
            debug!(subject = %m.subject, "live message without pulsegate headers");
            shared.stats.error();
            continue;
        };
        if !patterns.lock().iter().any(|p| p.matches(&message.topic)) {
            continue;
        }
        tokio::select! {
            biased;
            _ = &mut stop => break,
            sent = shared.tx.send(Incoming::Message(Arc::new(message))) => {
                if sent.is_err() {
                    break;
                }
                shared.stats.received.fetch_add(1, Relaxed);
            }
        }
    }
    let _ = sub.unsubscribe().await;
}

fn live_message(
    prefix: &str,
    m: &async_nats::Message,
    epoch: &mut Option<Arc<str>>,
) -> Option<Message> {
    let topic = tokens_to_topic(m.subject.strip_prefix(prefix)?)?;
    let s = stamped(m.headers.as_ref()?)?;
    let epoch = match epoch {
        Some(e) if &**e == s.epoch => e.clone(),
        _ => epoch.insert(s.epoch.into()).clone(),
    };
    Some(Message::new(
        topic.into(),
        s.seq,
        epoch,
        s.ts,
        m.payload.clone(),
    ))
}

async fn stop_live(sub: LiveSub, wait: Duration) {
    let _ = sub.stop.send(());
    let _ = timeout(wait, sub.task).await;
}

/// Keeps the backplane's up state and stream in step with the connection.
async fn supervise(
    shared: Arc<Shared>,
    mut link: watch::Receiver<Link>,
    mut resetup: mpsc::Receiver<()>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut seen = Link::default();
    let mut setup_at: Option<Instant> = None;
    let mut failures = 0;
    let mut resync = false;
    loop {
        let now = *link.borrow_and_update();
        if !now.connected {
            shared.stats.set_down();
            setup_at = None;
        } else if now.connects != seen.connects {
            // A new connection, maybe after a flap too quick to observe:
            // mark down so that becoming up again sends a resync.
            shared.stats.set_down();
            setup_at = Some(Instant::now());
            failures = 0;
        }
        if now.slow != seen.slow {
            resync = true;
        }
        seen = now;
        if resync && shared.stats.up.load(Relaxed) {
            tokio::select! {
                biased;
                _ = &mut stop => return,
                _ = shared.tx.send(Incoming::Resync) => resync = false,
            }
        }
        tokio::select! {
            biased;
            _ = &mut stop => return,
            changed = link.changed() => if changed.is_err() { return },
            Some(()) = resetup.recv() => {
                if seen.connected && setup_at.is_none() {
                    setup_at = Some(Instant::now());
                }
            }
            _ = sleep_until(setup_at.unwrap_or_else(Instant::now)), if setup_at.is_some() => {
                let budget = shared.config.op_timeout * 3;
                let result = match timeout(budget, shared.setup()).await {
                    Ok(r) => r,
                    Err(_) => Err("stream setup timed out".into()),
                };
                match result {
                    Ok(()) => {
                        setup_at = None;
                        shared.setups.fetch_add(1, Relaxed);
                        let current = *link.borrow();
                        if current.connected && current.connects == seen.connects {
                            info!(stream = %shared.config.stream, "nats backplane up");
                            resync |= shared.became_up();
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        shared.stats.error();
                        warn!(error = %e, "nats backplane setup failed; retrying");
                        setup_at = Some(Instant::now() + retry_delay(failures + 1));
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Backplane for NatsBackplane {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn stats(&self) -> &BackplaneStats {
        &self.shared.stats
    }

    async fn publish(&self, topic: &str, data: Bytes, ts: u64) -> Result<Stamp, BackplaneError> {
        self.check_up()?;
        let result = self.publish_inner(topic, data, ts).await;
        if result.is_err() {
            self.shared.stats.error();
        }
        result
    }

    async fn subscribe(&self, pattern: &Pattern) -> Result<(), BackplaneError> {
        self.check_up()?;
        let mut subs = self.subs.lock().await;
        let mut added = Vec::new();
        let mut failed = None;
        for subject in pattern_subjects(self.shared.live_prefix.trim_end_matches('.'), pattern) {
            if let Some(sub) = subs.get(&subject) {
                sub.patterns.lock().push(pattern.clone());
                added.push(subject);
                continue;
            }
            match self.shared.client.subscribe(subject.clone()).await {
                Ok(nats_sub) => {
                    let patterns = Arc::new(Mutex::new(vec![pattern.clone()]));
                    let (stop, stop_rx) = oneshot::channel();
                    let task = tokio::spawn(forward_live(
                        self.shared.clone(),
                        nats_sub,
                        patterns.clone(),
                        stop_rx,
                    ));
                    subs.insert(
                        subject.clone(),
                        LiveSub {
                            patterns,
                            stop,
                            task,
                        },
                    );
                    added.push(subject);
                }
                Err(e) => {
                    failed = Some(down(format!("subscribe to {subject}: {e}")));
                    break;
                }
            }
        }
        if failed.is_none() {
            // `flush` only empties our write buffer. A request answered by
            // the server proves it has read our SUBs (it parses a
            // connection's input in order), so it delivers every message
            // republished from now on. Found by a test that missed seq 1
            // under load.
            let synced = async {
                self.shared
                    .client
                    .flush()
                    .await
                    .map_err(|e| e.to_string())?;
                // Any JetStream request does; this one reads a stored
                // subject no topic maps to (`~` alone is not an escape).
                let probe = format!("{}.~", self.shared.stored_prefix);
                self.shared
                    .last_message(&probe)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            match timeout(self.shared.config.op_timeout, synced).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => failed = Some(down(format!("sync after subscribe: {e}"))),
                Err(_) => failed = Some(down("sync after subscribe timed out")),
            }
        }
        for subject in added {
            remove_pattern(&mut subs, &subject, pattern, self.shared.config.op_timeout).await;
        }
        self.shared.stats.error();
        Err(failed.unwrap_or_else(|| down("subscribe failed")))
    }

    async fn unsubscribe(&self, pattern: &Pattern) -> Result<(), BackplaneError> {
        let mut subs = self.subs.lock().await;
        for subject in pattern_subjects(self.shared.live_prefix.trim_end_matches('.'), pattern) {
            remove_pattern(&mut subs, &subject, pattern, self.shared.config.op_timeout).await;
        }
        Ok(())
    }

    async fn read(
        &self,
        topic: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Option<Log>, BackplaneError> {
        self.check_up()?;
        let result = match timeout(
            self.shared.config.op_timeout,
            self.read_inner(topic, after, limit),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(down(format!("reading topic {topic:?} timed out"))),
        };
        if result.is_err() {
            self.shared.stats.error();
        }
        result
    }
}

/// Removes one use of `subject` by `pattern`; the NATS subscription goes
/// with its last pattern.
async fn remove_pattern(
    subs: &mut HashMap<String, LiveSub>,
    subject: &str,
    pattern: &Pattern,
    wait: Duration,
) {
    let Some(sub) = subs.get(subject) else {
        return;
    };
    let now_unused = {
        let mut patterns = sub.patterns.lock();
        match patterns.iter().position(|p| p == pattern) {
            Some(i) => {
                patterns.swap_remove(i);
                patterns.is_empty()
            }
            None => false,
        }
    };
    if now_unused {
        if let Some(sub) = subs.remove(subject) {
            stop_live(sub, wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        assert_eq!(retry_delay(1), Duration::ZERO);
        for attempts in 2..100 {
            let d = retry_delay(attempts);
            assert!(d <= MAX_RETRY_DELAY, "{attempts}: {d:?}");
            assert!(d >= Duration::from_millis(25), "{attempts}: {d:?}");
        }
        assert!(retry_delay(3) <= Duration::from_millis(100));
        assert!(retry_delay(30) >= MAX_RETRY_DELAY / 2);
    }

    #[test]
    fn epochs_are_fresh() {
        let (a, b) = (new_epoch(), new_epoch());
        assert_ne!(a, b);
        assert_eq!(a.len(), 17);
        assert!(a.starts_with('n'));
    }

    #[test]
    fn stream_config_update_keeps_operator_fields() {
        let c = NatsConfig::default();
        let want = stream_config(&c);
        let mut have = want.clone();
        have.num_replicas = 3;
        assert!(updated_config(&have, &want).is_none());
        have.max_messages_per_subject = 5;
        let update = updated_config(&have, &want).expect("differs");
        assert_eq!(update.num_replicas, 3);
        assert_eq!(update.max_messages_per_subject, 1000);
    }
}
