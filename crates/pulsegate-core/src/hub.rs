//! The hub: topic index, per-topic history and last value, subscriptions,
//! recovery and fan-out.
//!
//! Locking, and why it gives the delivery guarantees:
//! - `state` is a read/write lock over the topic map and the wildcard
//!   pattern registry. **A publish holds it for reading for its whole
//!   duration**; subscribe, unsubscribe and the sweeper take it for writing.
//!   So a subscription change never interleaves with a fan-out: a new
//!   subscriber gets its `ok`, then its replay or snapshot, then live
//!   messages, with no gap and no duplicate.
//! - Each topic has its own mutex, so publishes to different topics run in
//!   parallel, and publishes to one topic are stamped and enqueued in `seq`
//!   order.
//! - Publishers never wait for a socket: fan-out pushes into each
//!   subscriber's bounded [`Outbox`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock, RwLockWriteGuard};
use pulsegate_proto::{Pattern, Position};

use crate::backplane::BackplaneError;
use crate::message::{now_micros, Message, Run};
use crate::outbox::Outbox;
use crate::stats::HubStats;

/// Bounds of the hub's retained state.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Messages retained per topic (`history.max_messages`).
    pub max_history_messages: usize,
    /// Age after which retained messages are dropped (`history.max_age`).
    pub max_history_age: Duration,
    /// Most concrete topics retained at once (`history.max_topics`).
    pub max_topics: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_history_messages: 1000,
            max_history_age: Duration::from_secs(300),
            max_topics: 100_000,
        }
    }
}

/// Why the hub refused a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HubError {
    /// `history.max_topics` reached.
    #[error("too many topics: the limit is {0} (history.max_topics)")]
    TooManyTopics(usize),
    /// The backplane is down; nothing was published.
    #[error(transparent)]
    Backplane(#[from] BackplaneError),
}

/// What [`Hub::ingest`] does with a message that is not the next of its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnGap {
    /// Leave the hub unchanged and report the gap (the caller reads the
    /// missing messages from the backplane and ingests them first).
    Report,
    /// Drop the local history and continue from this message.
    Reset,
    /// Leave the hub unchanged (also for unknown topics, which are not created).
    Skip,
}

/// What [`Hub::ingest`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Retained and fanned out.
    Applied,
    /// Already held (same epoch, seq not above the last).
    Duplicate,
    /// Not applied: messages after `last` are missing first.
    Gap {
        /// The last seq the hub holds in the message's epoch (0 if none).
        last: u64,
    },
    /// Not applied (`OnGap::Skip`).
    Skipped,
}

/// What a subscribe did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOutcome {
    /// Topics from `since` whose missed messages were replayed.
    pub recovered: Vec<String>,
    /// Topics from `since` that could not be recovered (epoch changed, trimmed,
    /// unknown, or not matching the pattern).
    pub not_recovered: Vec<String>,
    /// Messages replayed.
    pub replayed: usize,
    /// Last values sent as snapshot.
    pub snapshot: usize,
}

/// A topic's summary for the HTTP API.
#[derive(Debug, Clone)]
pub struct TopicInfo {
    /// Topic name.
    pub topic: Arc<str>,
    /// Current epoch.
    pub epoch: Arc<str>,
    /// Last seq assigned.
    pub seq: u64,
    /// Local subscribers (connections).
    pub subscribers: usize,
    /// Retained messages.
    pub retained: usize,
}

struct Sub {
    outbox: Arc<Outbox>,
    /// How many of this connection's patterns match the topic; the
    /// connection gets each message once however many patterns match.
    refs: u32,
}

struct TopicInner {
    seq: u64,
    epoch: Arc<str>,
    history: VecDeque<Arc<Message>>,
    last: Option<Arc<Message>>,
    subscribers: HashMap<u64, Sub>,
}

struct Topic {
    name: Arc<str>,
    inner: Mutex<TopicInner>,
}

struct PatternSubs {
    pattern: Pattern,
    subscribers: HashMap<u64, Arc<Outbox>>,
}

#[derive(Default)]
struct State {
    topics: HashMap<Arc<str>, Arc<Topic>>,
    /// Wildcard patterns only; concrete subscriptions live on their topic.
    patterns: HashMap<Box<str>, PatternSubs>,
    /// Concrete subscriptions to topics that do not exist yet, so the topic
    /// picks them up when first published.
    pending_exact: HashMap<Box<str>, HashMap<u64, Arc<Outbox>>>,
}

/// The hub of one node.
pub struct Hub {
    state: RwLock<State>,
    config: HubConfig,
    stats: HubStats,
    epoch_base: u32,
    epoch_counter: AtomicU64,
    subscriptions: AtomicUsize,
    retained_messages: AtomicUsize,
    retained_bytes: AtomicUsize,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("config", &self.config).finish()
    }
}

impl Hub {
    /// A hub with the given bounds and backplane.
    pub fn new(config: HubConfig) -> Hub {
        Hub {
            state: RwLock::new(State::default()),
            config,
            stats: HubStats::default(),
            epoch_base: fastrand::u32(..),
            epoch_counter: AtomicU64::new(0),
            subscriptions: AtomicUsize::new(0),
            retained_messages: AtomicUsize::new(0),
            retained_bytes: AtomicUsize::new(0),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &HubStats {
        &self.stats
    }

    fn new_epoch(&self) -> Arc<str> {
        let n = self.epoch_counter.fetch_add(1, Relaxed);
        format!("{:08x}{:x}", self.epoch_base, n).into()
    }

    /// Publishes `data` (JSON text, already validated) to the concrete,
    /// already validated `topic`: stamps it, retains it, and pushes it into
    /// every subscriber's queue. Cost: one read lock, one topic mutex, one
    /// allocation for the message, then per subscriber one queue mutex and a
    /// `Bytes` clone.
    pub fn publish(&self, topic: &str, data: Bytes) -> Result<Arc<Message>, HubError> {
        let mut msgs = self.publish_many(topic, [data])?;
        Ok(msgs.pop().expect("one message published"))
    }

    /// Publishes consecutive messages to one topic, as [`Hub::publish`]
    /// does each, but under one read lock and one topic lock, and with one
    /// queue mutex per subscriber for all of them (a publisher's pipelined
    /// burst). The messages get consecutive `seq`s, in order, and are
    /// queued as one [`Run`] per subscriber when they fit its bounds.
    pub fn publish_many(
        &self,
        topic: &str,
        data: impl IntoIterator<Item = Bytes>,
    ) -> Result<Vec<Arc<Message>>, HubError> {
        let state = self.state.read();
        let found = state.topics.get(topic).cloned();
        let (state, topic) = match found {
            Some(t) => (state, t),
            None => {
                drop(state);
                let mut w = self.state.write();
                let t = self.topic_or_create(&mut w, topic)?;
                (RwLockWriteGuard::downgrade(w), t)
            }
        };
        let ts = now_micros();
        let mut inner = topic.inner.lock();
        let msgs: Vec<Arc<Message>> = data
            .into_iter()
            .map(|data| {
                inner.seq += 1;
                let msg = Arc::new(Message::new(
                    topic.name.clone(),
                    inner.seq,
                    inner.epoch.clone(),
                    ts,
                    data,
                ));
                self.retain(&mut inner, &msg, ts);
                msg
            })
            .collect();
        let mut enqueued = 0;
        if let [msg] = &msgs[..] {
            for sub in inner.subscribers.values() {
                enqueued += u64::from(sub.outbox.push_msg(msg, &self.stats).enqueued());
            }
        } else if !inner.subscribers.is_empty() {
            let run = Arc::new(Run::new(msgs.clone()));
            for sub in inner.subscribers.values() {
                enqueued += sub.outbox.push_run(&run, &self.stats);
            }
        }
        self.stats.enqueued.fetch_add(enqueued, Relaxed);
        drop(inner);
        drop(state);
        self.stats.published.fetch_add(msgs.len() as u64, Relaxed);
        Ok(msgs)
    }

    /// Applies a message stamped elsewhere (by the cluster backplane) to
    /// this hub, keeping each topic's local log a gap-free copy of the
    /// backplane's: a message already seen is dropped as a duplicate, the
    /// next one is retained and fanned out like a local publish, and one
    /// that leaves a hole is handled by `on_gap`. A different epoch means
    /// the backplane started the topic's log over: the local history is
    /// dropped and the new epoch counts from zero. A topic this hub has
    /// never seen starts at whatever seq arrives first.
    pub fn ingest(&self, msg: &Arc<Message>, on_gap: OnGap) -> Result<Ingested, HubError> {
        let state = self.state.read();
        let found = state.topics.get(&*msg.topic).cloned();
        let (state, topic) = match found {
            Some(t) => (state, t),
            None if on_gap == OnGap::Skip => return Ok(Ingested::Skipped),
            None => {
                drop(state);
                let mut w = self.state.write();
                // A live message nobody here subscribes to (in flight while
                // the node unsubscribed) must not leave a copy behind that
                // would later go stale.
                if on_gap == OnGap::Report
                    && !w.topics.contains_key(&*msg.topic)
                    && !wanted(&w, &msg.topic)
                {
                    return Ok(Ingested::Skipped);
                }
                let t = self.topic_or_create(&mut w, &msg.topic)?;
                (RwLockWriteGuard::downgrade(w), t)
            }
        };
        let mut inner = topic.inner.lock();
        let fresh = inner.seq == 0 && inner.last.is_none();
        let same_epoch = *inner.epoch == *msg.epoch;
        let last = if same_epoch { inner.seq } else { 0 };
        if !fresh && msg.seq <= last {
            return Ok(Ingested::Duplicate);
        }
        if !fresh && msg.seq != last + 1 {
            match on_gap {
                OnGap::Report => return Ok(Ingested::Gap { last }),
                OnGap::Skip => return Ok(Ingested::Skipped),
                OnGap::Reset => {}
            }
        }
        if !same_epoch || (!fresh && msg.seq != last + 1) {
            self.clear_history(&mut inner);
        }
        inner.epoch = msg.epoch.clone();
        inner.seq = msg.seq;
        self.retain(&mut inner, msg, now_micros());
        let mut enqueued = 0;
        for sub in inner.subscribers.values() {
            enqueued += u64::from(sub.outbox.push_msg(msg, &self.stats).enqueued());
        }
        self.stats.enqueued.fetch_add(enqueued, Relaxed);
        drop(inner);
        drop(state);
        self.stats.published.fetch_add(1, Relaxed);
        Ok(Ingested::Applied)
    }

    /// Puts older messages of the same epoch in front of the retained
    /// history of `topic`, when they end right before its oldest retained
    /// message. A topic this node began holding mid-stream (its first live
    /// message arrived before a client's catch-up read) thus still serves
    /// recovery from earlier positions. Nothing is fanned out: current
    /// subscribers joined after these messages.
    pub fn backfill(&self, topic: &str, older: &[Arc<Message>]) {
        let state = self.state.read();
        let Some(t) = state.topics.get(topic) else {
            return;
        };
        let mut inner = t.inner.lock();
        let Some(oldest) = inner.history.front().map(|m| m.seq) else {
            return;
        };
        let add: Vec<&Arc<Message>> = older
            .iter()
            .filter(|m| m.seq < oldest && *m.epoch == *inner.epoch)
            .collect();
        let contiguous = add.windows(2).all(|w| w[1].seq == w[0].seq + 1);
        if add.last().map(|m| m.seq + 1) != Some(oldest) || !contiguous {
            return;
        }
        for m in add.into_iter().rev() {
            inner.history.push_front(m.clone());
            self.retained_messages.fetch_add(1, Relaxed);
            self.retained_bytes.fetch_add(m.data.len(), Relaxed);
        }
    }

    /// Forgets the topics matching `pattern` that have no local subscriber
    /// (the node just stopped receiving them from the backplane): their copy
    /// would go stale, and a later live message would then look like a hole
    /// to fill and replay old messages to new subscribers. Returns how many.
    pub fn forget_unsubscribed(&self, pattern: &Pattern) -> usize {
        let mut state = self.state.write();
        let before = state.topics.len();
        state.topics.retain(|name, t| {
            let mut inner = t.inner.lock();
            let drop = inner.subscribers.is_empty() && pattern.matches(name);
            if drop {
                self.clear_history(&mut inner);
            }
            !drop
        });
        before - state.topics.len()
    }

    /// Forgets what this hub holds of `topic` (the backplane has no log for
    /// it): recovery from the old position then fails, as it must, and the
    /// next ingested message starts the topic afresh.
    pub fn invalidate(&self, topic: &str) {
        let state = self.state.read();
        if let Some(t) = state.topics.get(topic) {
            let mut inner = t.inner.lock();
            self.clear_history(&mut inner);
            inner.last = None;
            inner.seq = 0;
            inner.epoch = self.new_epoch();
        }
    }

    /// `(epoch, last seq)` of a topic this hub knows.
    pub fn position(&self, topic: &str) -> Option<(Arc<str>, u64)> {
        let state = self.state.read();
        let t = state.topics.get(topic)?;
        let inner = t.inner.lock();
        Some((inner.epoch.clone(), inner.seq))
    }

    /// Topics with at least one local subscriber, with `(epoch, last seq)`.
    pub fn subscribed_positions(&self) -> Vec<(Arc<str>, Arc<str>, u64)> {
        let state = self.state.read();
        state
            .topics
            .values()
            .filter_map(|t| {
                let inner = t.inner.lock();
                (!inner.subscribers.is_empty())
                    .then(|| (t.name.clone(), inner.epoch.clone(), inner.seq))
            })
            .collect()
    }

    fn clear_history(&self, inner: &mut TopicInner) {
        for old in inner.history.drain(..) {
            self.retained_messages.fetch_sub(1, Relaxed);
            self.retained_bytes.fetch_sub(old.data.len(), Relaxed);
        }
    }

    fn retain(&self, inner: &mut TopicInner, msg: &Arc<Message>, now: u64) {
        if self.config.max_history_messages > 0 {
            inner.history.push_back(msg.clone());
            self.retained_messages.fetch_add(1, Relaxed);
            self.retained_bytes.fetch_add(msg.data.len(), Relaxed);
        }
        self.trim(inner, now);
        inner.last = Some(msg.clone());
    }

    fn trim(&self, inner: &mut TopicInner, now: u64) {
        let max_age = self.config.max_history_age.as_micros() as u64;
        while let Some(front) = inner.history.front() {
            let too_many = inner.history.len() > self.config.max_history_messages;
            let too_old = now.saturating_sub(front.ts) > max_age;
            if !(too_many || too_old) {
                break;
            }
            let old = inner.history.pop_front().expect("front exists");
            self.retained_messages.fetch_sub(1, Relaxed);
            self.retained_bytes.fetch_sub(old.data.len(), Relaxed);
        }
    }

    fn topic_or_create(&self, state: &mut State, name: &str) -> Result<Arc<Topic>, HubError> {
        if let Some(t) = state.topics.get(name) {
            return Ok(t.clone());
        }
        if state.topics.len() >= self.config.max_topics {
            return Err(HubError::TooManyTopics(self.config.max_topics));
        }
        let name: Arc<str> = name.into();
        let mut subscribers: HashMap<u64, Sub> = HashMap::new();
        let mut add = |ob: &Arc<Outbox>| {
            subscribers
                .entry(ob.id())
                .or_insert_with(|| Sub {
                    outbox: ob.clone(),
                    refs: 0,
                })
                .refs += 1;
        };
        if let Some(exact) = state.pending_exact.remove(&*name) {
            exact.values().for_each(&mut add);
        }
        for p in state.patterns.values() {
            if p.pattern.matches(&name) {
                p.subscribers.values().for_each(&mut add);
            }
        }
        let topic = Arc::new(Topic {
            name: name.clone(),
            inner: Mutex::new(TopicInner {
                seq: 0,
                epoch: self.new_epoch(),
                history: VecDeque::new(),
                last: None,
                subscribers,
            }),
        });
        state.topics.insert(name, topic.clone());
        Ok(topic)
    }

    /// Subscribes the connection owning `outbox` to `pattern`.
    ///
    /// Under the write lock, in this order: `make_ok` builds the `ok` reply
    /// from the recovery outcome and it is queued; then, per matching topic,
    /// the missed messages (topics in `since` that can be recovered) or the
    /// last value (`snapshot`); then the subscription goes live. Topics in
    /// `since` that the history cannot serve whole are reported as not
    /// recovered and get nothing partial.
    pub fn subscribe(
        &self,
        outbox: &Arc<Outbox>,
        pattern: &Pattern,
        snapshot: bool,
        since: &[(String, Position)],
        make_ok: impl FnOnce(&SubscribeOutcome) -> Bytes,
    ) -> SubscribeOutcome {
        let mut state = self.state.write();
        let now = now_micros();
        let mut outcome = SubscribeOutcome::default();
        let matching: Vec<Arc<Topic>> = if pattern.is_wildcard() {
            let mut v: Vec<_> = state
                .topics
                .values()
                .filter(|t| pattern.matches(&t.name))
                .cloned()
                .collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            v
        } else {
            state
                .topics
                .get(pattern.as_str())
                .cloned()
                .into_iter()
                .collect()
        };
        let mut guards: Vec<_> = matching.iter().map(|t| (t, t.inner.lock())).collect();
        // Decide recovery per `since` topic before anything is queued.
        let mut replays: Vec<(usize, u64)> = Vec::new();
        for (topic, pos) in since {
            let found = guards
                .iter_mut()
                .position(|(t, _)| &*t.name == topic.as_str());
            let ok = found.and_then(|i| {
                let inner = &mut guards[i].1;
                self.trim(inner, now);
                recoverable(inner, pos).then_some((i, pos.seq))
            });
            match ok {
                Some(r) => {
                    replays.push(r);
                    outcome.recovered.push(topic.clone());
                }
                None => outcome.not_recovered.push(topic.clone()),
            }
        }
        self.stats
            .recovered
            .fetch_add(outcome.recovered.len() as u64, Relaxed);
        self.stats
            .not_recovered
            .fetch_add(outcome.not_recovered.len() as u64, Relaxed);
        outbox.push_reply(make_ok(&outcome), &self.stats);
        for (i, (_, inner)) in guards.iter_mut().enumerate() {
            if let Some(&(_, after)) = replays.iter().find(|(r, _)| *r == i) {
                for m in inner.history.iter().filter(|m| m.seq > after) {
                    outbox.push_msg_forced(m);
                    outcome.replayed += 1;
                }
            } else if snapshot {
                if let Some(last) = &inner.last {
                    outbox.push_msg_forced(last);
                    outcome.snapshot += 1;
                }
            }
            inner
                .subscribers
                .entry(outbox.id())
                .or_insert_with(|| Sub {
                    outbox: outbox.clone(),
                    refs: 0,
                })
                .refs += 1;
        }
        drop(guards);
        if pattern.is_wildcard() {
            state
                .patterns
                .entry(pattern.as_str().into())
                .or_insert_with(|| PatternSubs {
                    pattern: pattern.clone(),
                    subscribers: HashMap::new(),
                })
                .subscribers
                .insert(outbox.id(), outbox.clone());
        } else if matching.is_empty() {
            state
                .pending_exact
                .entry(pattern.as_str().into())
                .or_default()
                .insert(outbox.id(), outbox.clone());
        }
        self.subscriptions.fetch_add(1, Relaxed);
        outcome
    }

    /// Removes one subscription of connection `conn`. The caller knows the
    /// connection held it (it keeps the set of its patterns).
    pub fn unsubscribe(&self, conn: u64, pattern: &Pattern) {
        let mut state = self.state.write();
        self.unsubscribe_locked(&mut state, conn, pattern);
    }

    /// Removes every subscription of a closing connection.
    pub fn remove_connection<'a>(
        &self,
        conn: u64,
        patterns: impl IntoIterator<Item = &'a Pattern>,
    ) {
        let mut state = self.state.write();
        for p in patterns {
            self.unsubscribe_locked(&mut state, conn, p);
        }
    }

    fn unsubscribe_locked(&self, state: &mut State, conn: u64, pattern: &Pattern) {
        let drop_ref = |t: &Topic| {
            let mut inner = t.inner.lock();
            if let Some(sub) = inner.subscribers.get_mut(&conn) {
                sub.refs -= 1;
                if sub.refs == 0 {
                    inner.subscribers.remove(&conn);
                }
            }
        };
        if pattern.is_wildcard() {
            for t in state.topics.values().filter(|t| pattern.matches(&t.name)) {
                drop_ref(t);
            }
            if let Some(p) = state.patterns.get_mut(pattern.as_str()) {
                p.subscribers.remove(&conn);
                if p.subscribers.is_empty() {
                    state.patterns.remove(pattern.as_str());
                }
            }
        } else if let Some(t) = state.topics.get(pattern.as_str()) {
            drop_ref(t);
        } else if let Some(p) = state.pending_exact.get_mut(pattern.as_str()) {
            p.remove(&conn);
            if p.is_empty() {
                state.pending_exact.remove(pattern.as_str());
            }
        }
        self.subscriptions.fetch_sub(1, Relaxed);
    }

    /// The last message of a concrete topic.
    pub fn last_value(&self, topic: &str) -> Option<Arc<Message>> {
        let state = self.state.read();
        let t = state.topics.get(topic)?;
        let inner = t.inner.lock();
        inner.last.clone()
    }

    /// Retained messages of `topic` with `seq > since`, at most `limit`,
    /// with the topic's epoch and last seq. `None` for an unknown topic.
    pub fn history(
        &self,
        topic: &str,
        since: u64,
        limit: usize,
    ) -> Option<(Arc<str>, u64, Vec<Arc<Message>>)> {
        let state = self.state.read();
        let t = state.topics.get(topic)?;
        let mut inner = t.inner.lock();
        self.trim(&mut inner, now_micros());
        let msgs = inner
            .history
            .iter()
            .filter(|m| m.seq > since)
            .take(limit)
            .cloned()
            .collect();
        Some((inner.epoch.clone(), inner.seq, msgs))
    }

    /// Summaries of all topics (sorted by name), for the HTTP API.
    pub fn topics(&self) -> Vec<TopicInfo> {
        let state = self.state.read();
        let mut v: Vec<TopicInfo> = state
            .topics
            .values()
            .map(|t| {
                let inner = t.inner.lock();
                TopicInfo {
                    topic: t.name.clone(),
                    epoch: inner.epoch.clone(),
                    seq: inner.seq,
                    subscribers: inner.subscribers.len(),
                    retained: inner.history.len(),
                }
            })
            .collect();
        v.sort_by(|a, b| a.topic.cmp(&b.topic));
        v
    }

    /// Trims aged history everywhere and forgets topics that have no
    /// subscriber and nothing retained younger than `history.max_age`. A
    /// forgotten topic starts a new epoch when published again, so clients
    /// that try to recover it are told `not_recovered`. Run periodically.
    pub fn sweep(&self) -> usize {
        let now = now_micros();
        let max_age = self.config.max_history_age.as_micros() as u64;
        let mut state = self.state.write();
        let before = state.topics.len();
        state.topics.retain(|_, t| {
            let mut inner = t.inner.lock();
            self.trim(&mut inner, now);
            let idle = inner
                .last
                .as_ref()
                .is_none_or(|m| now.saturating_sub(m.ts) > max_age);
            !(inner.subscribers.is_empty() && inner.history.is_empty() && idle)
        });
        before - state.topics.len()
    }

    /// Whether publishing to the concrete `topic` now would reach anyone
    /// (lets the server skip building messages nobody reads).
    pub fn has_subscribers(&self, topic: &str) -> bool {
        let state = self.state.read();
        if let Some(t) = state.topics.get(topic) {
            return !t.inner.lock().subscribers.is_empty();
        }
        wanted(&state, topic)
    }

    /// Number of concrete topics.
    pub fn topic_count(&self) -> usize {
        self.state.read().topics.len()
    }

    /// Number of active subscriptions (patterns × connections).
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.load(Relaxed)
    }

    /// Retained history: (messages, payload bytes).
    pub fn retained(&self) -> (usize, usize) {
        (
            self.retained_messages.load(Relaxed),
            self.retained_bytes.load(Relaxed),
        )
    }
}

/// Whether a subscription waits for `topic` (exact, not yet created, or a
/// wildcard pattern matching it).
fn wanted(state: &State, topic: &str) -> bool {
    state
        .pending_exact
        .get(topic)
        .is_some_and(|s| !s.is_empty())
        || state
            .patterns
            .values()
            .any(|p| !p.subscribers.is_empty() && p.pattern.matches(topic))
}

/// Whether the history of a topic holds everything after `pos`.
fn recoverable(inner: &TopicInner, pos: &Position) -> bool {
    if *inner.epoch != *pos.epoch || pos.seq > inner.seq {
        return false;
    }
    if pos.seq == inner.seq {
        return true;
    }
    let oldest = inner.history.front().map_or(inner.seq + 1, |m| m.seq);
    pos.seq + 1 >= oldest
}
