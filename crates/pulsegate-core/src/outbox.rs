//! One connection's outbound queue: bounded in messages and bytes, with the
//! slow-consumer policy applied at the moment a publisher would overflow it.
//!
//! Publishers only ever take this queue's short mutex to push a frame; they
//! never wait for the socket. The connection task drains the queue in
//! batches and writes each batch with one vectored write. An idle
//! connection's queue holds no allocation (`VecDeque::new` and a shrink
//! after large bursts).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use pulsegate_proto::Codec;
use std::sync::atomic::{AtomicBool, AtomicU8};
use std::task::{Context, Poll};

use crate::message::{Message, Run};
use crate::stats::{DropReason, HubStats};

/// What to do with a subscriber whose queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Close the connection (code 4000); the client recovers with `since`.
    Disconnect,
    /// Keep only the newest pending message per topic; the seq jump shows what was skipped.
    Conflate,
}

/// Bounds of one queue.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    /// Most queued frames.
    pub max_messages: usize,
    /// Most queued bytes.
    pub max_bytes: usize,
    /// Policy when a bound is hit.
    pub policy: SlowConsumerPolicy,
}

/// Why the queue was closed; the connection task turns it into a close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Queue overflow under [`SlowConsumerPolicy::Disconnect`].
    SlowConsumer,
    /// Closed by an operator (admin API).
    Kicked,
    /// The connection ended (client close, error, timeout, shutdown).
    Ended,
}

impl CloseReason {
    fn drop_reason(self) -> DropReason {
        match self {
            CloseReason::SlowConsumer => DropReason::SlowConsumerClose,
            CloseReason::Kicked | CloseReason::Ended => DropReason::ConnectionClosed,
        }
    }
}

/// What the server asks of a connection task, out of band of its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Control {
    /// Close with 1001 at a random moment within the drain period.
    Drain = 1,
    /// Close now.
    Terminate = 2,
}

/// A frame waiting to be written. 16 bytes: the hub writes one entry per
/// subscriber per message, so a busy subscriber's queue must take as few
/// cache lines as possible (with the encoded frame, topic and time inline
/// it took 64 bytes, and the hub's fan-out loop stalled on those stores).
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A live data message.
    Live(Arc<Message>),
    /// A replayed or snapshot data message: exempt from the bounds and from conflation.
    Forced(Arc<Message>),
    /// A reply or other frame of our protocol, already encoded.
    Reply(Box<Bytes>),
    /// Live data messages of one topic published together, queued as one
    /// entry (see [`Run`]).
    Run(Arc<Run>),
}

impl Outgoing {
    /// The data messages of the entry (none for a reply).
    pub fn messages(&self) -> &[Arc<Message>] {
        match self {
            Outgoing::Live(m) | Outgoing::Forced(m) => std::slice::from_ref(m),
            Outgoing::Run(r) => &r.msgs,
            Outgoing::Reply(_) => &[],
        }
    }

    /// The encoded frames (text for JSON, binary for MessagePack), one per
    /// message or the reply.
    pub fn frames(&self, codec: Codec) -> impl Iterator<Item = &Bytes> {
        let reply = match self {
            Outgoing::Reply(b) => Some(&**b),
            _ => None,
        };
        reply
            .into_iter()
            .chain(self.messages().iter().map(move |m| m.frame_ref(codec)))
    }

    /// Total length of the entry's frames.
    pub fn len(&self, codec: Codec) -> usize {
        match self {
            Outgoing::Live(m) | Outgoing::Forced(m) => m.frame_ref(codec).len(),
            Outgoing::Run(r) => r.frames_len(codec),
            Outgoing::Reply(b) => b.len(),
        }
    }

    /// Frames the entry holds (a run holds several).
    fn count(&self) -> usize {
        match self {
            Outgoing::Run(r) => r.msgs.len(),
            _ => 1,
        }
    }

    fn forced(&self) -> bool {
        matches!(self, Outgoing::Forced(_))
    }

    /// A live frame of `topic` (the candidates for conflation).
    fn is_live_of(&self, topic: &str) -> bool {
        matches!(self, Outgoing::Live(m) if *m.topic == *topic)
    }
}

/// Result of pushing a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued.
    Queued,
    /// Queued, replacing an older pending message of the same topic.
    Conflated,
    /// Queued after dropping the oldest queued message (conflate policy, full queue).
    DroppedOldest,
    /// The queue overflowed and is now closed (disconnect policy).
    Overflow,
    /// The queue was already closed; the message was dropped (and counted).
    Closed,
}

impl PushOutcome {
    /// Whether the message was added to the queue (counted in `enqueued`).
    pub fn enqueued(self) -> bool {
        matches!(self, PushOutcome::Queued | PushOutcome::DroppedOldest)
    }
}

#[derive(Debug)]
struct State {
    codec: Codec,
    items: VecDeque<Outgoing>,
    /// Frames queued beyond one per entry (runs hold several).
    /// (u32, like `forced_items`: the two share the word one counter used
    /// to take, which keeps the outbox in its allocator size class.)
    run_extra: u32,
    bytes: usize,
    /// Forced frames (replay, snapshot) still queued, and their bytes: they
    /// do not count against the bounds, so a recovery never trips the
    /// slow-consumer policy by itself.
    forced_items: u32,
    forced_bytes: usize,
    closed: Option<CloseReason>,
}

impl State {
    fn new(codec: Codec) -> State {
        State {
            codec,
            items: VecDeque::new(),
            run_extra: 0,
            bytes: 0,
            forced_items: 0,
            forced_bytes: 0,
            closed: None,
        }
    }

    /// Frames and bytes that count against the bounds.
    fn bounded(&self) -> (usize, usize) {
        (
            self.items.len() + self.run_extra as usize - self.forced_items as usize,
            self.bytes - self.forced_bytes,
        )
    }

    fn push(&mut self, item: Outgoing) {
        let len = item.len(self.codec);
        self.bytes += len;
        self.run_extra += item.count() as u32 - 1;
        if item.forced() {
            self.forced_items += 1;
            self.forced_bytes += len;
        }
        if self.items.capacity() == 0 {
            // 64 × 16 B = 1 KiB: not the size class of a long-lived
            // per-connection object, so the storage freed when the
            // connection hibernates leaves no hole between them.
            self.items.reserve(QUEUE_RESERVE);
        }
        self.items.push_back(item);
    }

    fn remove(&mut self, pos: usize) -> Option<Outgoing> {
        let item = self.items.remove(pos)?;
        self.forget(&item);
        Some(item)
    }

    fn pop_front(&mut self) -> Option<Outgoing> {
        let item = self.items.pop_front()?;
        self.forget(&item);
        Some(item)
    }

    fn forget(&mut self, item: &Outgoing) {
        let len = item.len(self.codec);
        self.bytes -= len;
        self.run_extra -= item.count() as u32 - 1;
        if item.forced() {
            self.forced_items -= 1;
            self.forced_bytes -= len;
        }
    }

    /// Replaces every run by its messages, for the conflate policy, which
    /// drops and replaces single messages.
    fn split_runs(&mut self) {
        if self.run_extra == 0 {
            return;
        }
        let items = std::mem::take(&mut self.items);
        self.items.reserve(items.len() + self.run_extra as usize);
        for item in items {
            match item {
                Outgoing::Run(r) => self
                    .items
                    .extend(r.msgs.iter().map(|m| Outgoing::Live(m.clone()))),
                other => self.items.push_back(other),
            }
        }
        self.run_extra = 0;
    }

    /// Empties the queue and returns how many data frames were discarded.
    fn discard(&mut self) -> u64 {
        let data = self.items.iter().map(|i| i.messages().len()).sum::<usize>() as u64;
        *self = State {
            closed: self.closed,
            ..State::new(self.codec)
        };
        data
    }
}

/// A connection's bounded outbound queue.
#[derive(Debug)]
pub struct Outbox {
    id: u64,
    codec: Codec,
    limits: OutboxLimits,
    state: Mutex<State>,
    /// The connection task's waker, and whether something happened since it
    /// last looked. An `AtomicWaker` rather than a `Notify`: re-polling a
    /// waiting `Notify` takes a mutex, and the task polls once per batch.
    waker: AtomicWaker,
    signaled: AtomicBool,
    /// Highest [`Control`] requested by the server (0 = none).
    control: AtomicU8,
    /// Frames written to the socket (updated by the connection task).
    pub sent_frames: AtomicU64,
}

/// Entries a queue makes room for when first used (64 × 16 B = 1 KiB).
const QUEUE_RESERVE: usize = 64;
/// Capacity above which an emptied queue gives its memory back.
const SHRINK_ABOVE: usize = 256;

impl Outbox {
    /// A queue for connection `id`, whose frames are encoded with `codec`.
    pub fn new(id: u64, codec: Codec, limits: OutboxLimits) -> Arc<Outbox> {
        Arc::new(Outbox {
            id,
            codec,
            limits,
            state: Mutex::new(State::new(codec)),
            waker: AtomicWaker::new(),
            signaled: AtomicBool::new(false),
            control: AtomicU8::new(0),
            sent_frames: AtomicU64::new(0),
        })
    }

    /// Connection id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The codec of this connection.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Pushes a live message, applying the slow-consumer policy. Called by
    /// the hub with the topic lock held: cost is one mutex and one `Arc`
    /// clone, plus a wake when the queue was empty. The caller counts
    /// [`PushOutcome::enqueued`] outcomes in `stats.enqueued` (once per
    /// publish, not once per subscriber).
    pub fn push_msg(&self, msg: &Arc<Message>, stats: &HubStats) -> PushOutcome {
        let mut st = self.state.lock();
        let was_empty = st.items.is_empty();
        let outcome = self.push_locked(&mut st, msg, stats);
        drop(st);
        if outcome == PushOutcome::Overflow || (was_empty && outcome.enqueued()) {
            self.signal();
        }
        outcome
    }

    /// Pushes consecutive live messages (a publisher's pipelined burst to
    /// one topic) under one lock and with at most one wake, each with the
    /// policy of [`Outbox::push_msg`]. Returns how many were enqueued.
    pub fn push_msgs(&self, msgs: &[Arc<Message>], stats: &HubStats) -> u64 {
        let mut st = self.state.lock();
        let was_empty = st.items.is_empty();
        let mut enqueued = 0;
        let mut overflow = false;
        for msg in msgs {
            let outcome = self.push_locked(&mut st, msg, stats);
            enqueued += u64::from(outcome.enqueued());
            overflow |= outcome == PushOutcome::Overflow;
        }
        drop(st);
        if overflow || (was_empty && enqueued > 0) {
            self.signal();
        }
        enqueued
    }

    /// Pushes a run of live messages as one entry when all of it fits in
    /// the bounds (one lock, one entry, at most one wake); otherwise message
    /// by message as [`Outbox::push_msgs`], so the slow-consumer policy
    /// sees each. Returns how many messages were enqueued.
    pub fn push_run(&self, run: &Arc<Run>, stats: &HubStats) -> u64 {
        let n = run.msgs.len();
        let len = run.frames_len(self.codec);
        let mut st = self.state.lock();
        if let Some(reason) = st.closed {
            drop(st);
            stats.count_drop(reason.drop_reason(), n as u64);
            return 0;
        }
        let (queued, bytes) = st.bounded();
        if queued + n > self.limits.max_messages || bytes + len > self.limits.max_bytes {
            drop(st);
            return self.push_msgs(&run.msgs, stats);
        }
        let was_empty = st.items.is_empty();
        st.push(Outgoing::Run(run.clone()));
        drop(st);
        if was_empty {
            self.signal();
        }
        n as u64
    }

    fn push_locked(&self, st: &mut State, msg: &Arc<Message>, stats: &HubStats) -> PushOutcome {
        if let Some(reason) = st.closed {
            stats.count_drop(reason.drop_reason(), 1);
            return PushOutcome::Closed;
        }
        let len = msg.frame_ref(self.codec).len();
        let over = |st: &State| {
            let (n, b) = st.bounded();
            n >= self.limits.max_messages || b + len > self.limits.max_bytes
        };
        let mut outcome = PushOutcome::Queued;
        if over(st) {
            match self.limits.policy {
                SlowConsumerPolicy::Disconnect => {
                    st.closed = Some(CloseReason::SlowConsumer);
                    let dropped = st.discard() + 1;
                    stats.count_drop(DropReason::SlowConsumerClose, dropped);
                    stats.slow_consumer_disconnects.fetch_add(1, Relaxed);
                    return PushOutcome::Overflow;
                }
                SlowConsumerPolicy::Conflate => {
                    st.split_runs();
                    let same = st.items.iter().rposition(|i| i.is_live_of(&msg.topic));
                    if let Some(pos) = same {
                        st.bytes = st.bytes - st.items[pos].len(self.codec) + len;
                        st.items[pos] = Outgoing::Live(msg.clone());
                        stats.count_drop(DropReason::Conflated, 1);
                        return PushOutcome::Conflated;
                    }
                    // No pending message of this topic: make room by dropping the oldest data frames.
                    while over(st) {
                        let Some(pos) =
                            st.items.iter().position(|i| matches!(i, Outgoing::Live(_)))
                        else {
                            break;
                        };
                        st.remove(pos);
                        stats.count_drop(DropReason::QueueFull, 1);
                        outcome = PushOutcome::DroppedOldest;
                    }
                }
            }
        }
        st.push(Outgoing::Live(msg.clone()));
        outcome
    }

    /// Pushes a message that must not be dropped (replay after recovery,
    /// snapshot). Forced frames are not counted against the bounds nor
    /// conflated: a recovery queues up to `history.max_messages` per
    /// recovered topic on top of the bounds, once.
    pub fn push_msg_forced(&self, msg: &Arc<Message>) {
        self.push_raw(Outgoing::Forced(msg.clone()));
    }

    /// Pushes a reply or other control frame of our protocol. Replies are
    /// produced by the client's own requests, which the connection reads
    /// one at a time, so they are bounded by the client's request rate; a
    /// client that sends requests and never reads replies overflows twice
    /// the byte bound and is closed as a slow consumer.
    pub fn push_reply(&self, frame: Bytes, stats: &HubStats) -> bool {
        let over = self.state.lock().bounded().1 > self.limits.max_bytes.saturating_mul(2);
        if over {
            self.close(CloseReason::SlowConsumer, stats);
            return false;
        }
        self.push_raw(Outgoing::Reply(Box::new(frame)));
        true
    }

    fn push_raw(&self, item: Outgoing) {
        let mut st = self.state.lock();
        if st.closed.is_some() {
            return;
        }
        let was_empty = st.items.is_empty();
        st.push(item);
        drop(st);
        if was_empty {
            self.signal();
        }
    }

    /// Closes the queue: pending data frames are discarded and counted as
    /// drops for `reason`, later pushes are dropped and counted too, and the
    /// connection task sees the reason on its next [`Outbox::take_batch`].
    pub fn close(&self, reason: CloseReason, stats: &HubStats) {
        let mut st = self.state.lock();
        if st.closed.is_some() {
            return;
        }
        st.closed = Some(reason);
        let dropped = st.discard();
        drop(st);
        if reason == CloseReason::SlowConsumer {
            stats.slow_consumer_disconnects.fetch_add(1, Relaxed);
        }
        stats.count_drop(reason.drop_reason(), dropped);
        self.signal();
    }

    /// Moves up to `max_frames` / about `max_bytes` queued frames into `out`
    /// (which the caller reuses). Returns the close reason if the queue was
    /// closed. When everything queued fits and `out` is empty, the two
    /// queues trade storage: no per-frame work under the lock.
    pub fn take_batch(
        &self,
        out: &mut VecDeque<Outgoing>,
        max_frames: usize,
        max_bytes: usize,
    ) -> Result<(), CloseReason> {
        let mut st = self.state.lock();
        if let Some(reason) = st.closed {
            return Err(reason);
        }
        if out.is_empty() && st.items.len() <= max_frames && st.bytes <= max_bytes {
            std::mem::swap(&mut st.items, out);
            st.run_extra = 0;
            st.bytes = 0;
            st.forced_items = 0;
            st.forced_bytes = 0;
            if st.items.capacity() > SHRINK_ABOVE {
                st.items = VecDeque::new();
            }
            return Ok(());
        }
        let mut bytes = 0;
        while out.len() < max_frames && bytes < max_bytes {
            let Some(item) = st.pop_front() else {
                break;
            };
            bytes += item.len(self.codec);
            out.push_back(item);
        }
        if st.items.is_empty() && st.items.capacity() > SHRINK_ABOVE {
            st.items = VecDeque::new();
        }
        Ok(())
    }

    /// True once the queue was closed.
    pub fn is_closed(&self) -> bool {
        self.state.lock().closed.is_some()
    }

    /// Gives the queue's storage back if nothing is queued (an idle
    /// connection about to hibernate). Returns false when frames are queued.
    pub fn release_if_empty(&self) -> bool {
        let mut st = self.state.lock();
        if !st.items.is_empty() {
            return false;
        }
        st.items = VecDeque::new();
        true
    }

    /// Frames and bytes queued now.
    pub fn depth(&self) -> (usize, usize) {
        let st = self.state.lock();
        (st.items.len() + st.run_extra as usize, st.bytes)
    }

    fn signal(&self) {
        self.signaled
            .store(true, std::sync::atomic::Ordering::Release);
        self.waker.wake();
    }

    /// Ready when something was pushed, the queue was closed, or the server
    /// requested a [`Control`] since the last time it returned ready.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        use std::sync::atomic::Ordering::AcqRel;
        if self.signaled.swap(false, AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.signaled.swap(false, AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Waits for [`Outbox::poll_ready`]. Call [`Outbox::take_batch`] before waiting again.
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await
    }

    /// Asks the connection task to drain or stop (the highest request wins).
    pub fn request(&self, control: Control) {
        self.control.fetch_max(control as u8, Relaxed);
        self.signal();
    }

    /// The highest control requested so far.
    pub fn control(&self) -> Option<Control> {
        match self.control.load(Relaxed) {
            1 => Some(Control::Drain),
            2 => Some(Control::Terminate),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, seq: u64) -> Arc<Message> {
        Arc::new(Message::new(
            topic.into(),
            seq,
            "E".into(),
            1,
            Bytes::from_static(b"1"),
        ))
    }

    fn outbox(max: usize, policy: SlowConsumerPolicy) -> Arc<Outbox> {
        Outbox::new(
            1,
            Codec::Json,
            OutboxLimits {
                max_messages: max,
                max_bytes: 1 << 20,
                policy,
            },
        )
    }

    fn seqs(ob: &Outbox) -> Vec<(String, u64)> {
        let mut out = VecDeque::new();
        ob.take_batch(&mut out, usize::MAX, usize::MAX).unwrap();
        out.iter()
            .flat_map(|o| o.frames(Codec::Json))
            .map(|f| {
                let v: serde_json::Value = serde_json::from_slice(f).unwrap();
                (
                    v["topic"].as_str().unwrap().to_string(),
                    v["seq"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn disconnect_policy_closes_and_counts() {
        let stats = HubStats::default();
        let ob = outbox(2, SlowConsumerPolicy::Disconnect);
        assert_eq!(ob.push_msg(&msg("a", 1), &stats), PushOutcome::Queued);
        assert_eq!(ob.push_msg(&msg("a", 2), &stats), PushOutcome::Queued);
        assert_eq!(ob.push_msg(&msg("a", 3), &stats), PushOutcome::Overflow);
        assert_eq!(ob.push_msg(&msg("a", 4), &stats), PushOutcome::Closed);
        assert_eq!(stats.drops(DropReason::SlowConsumerClose), 4);
        assert_eq!(stats.slow_consumer_disconnects.load(Relaxed), 1);
        let mut out = VecDeque::new();
        assert_eq!(
            ob.take_batch(&mut out, 10, 1000),
            Err(CloseReason::SlowConsumer)
        );
    }

    #[test]
    fn conflate_keeps_newest_per_topic() {
        let stats = HubStats::default();
        let ob = outbox(2, SlowConsumerPolicy::Conflate);
        ob.push_msg(&msg("a", 1), &stats);
        ob.push_msg(&msg("b", 1), &stats);
        assert_eq!(ob.push_msg(&msg("a", 2), &stats), PushOutcome::Conflated);
        assert_eq!(ob.push_msg(&msg("a", 3), &stats), PushOutcome::Conflated);
        assert_eq!(
            ob.push_msg(&msg("c", 1), &stats),
            PushOutcome::DroppedOldest
        );
        assert_eq!(seqs(&ob), vec![("b".into(), 1), ("c".into(), 1)]);
        assert_eq!(stats.drops(DropReason::Conflated), 2);
        assert_eq!(stats.drops(DropReason::QueueFull), 1);
    }

    /// Every connection keeps its outbox for life, also while it
    /// hibernates: the `Arc` allocation must stay in jemalloc's 160-byte
    /// class. An 8-byte counter more moved it to 192, the class of buffers
    /// freed at hibernation, and idle memory rose by about 200 bytes per
    /// connection (the hole effect, docs/ARCHITECTURE.md, memory).
    #[test]
    fn the_outbox_stays_in_its_allocator_size_class() {
        // The Arc's allocation: two reference counts, then the outbox.
        let allocation = 2 * std::mem::size_of::<usize>() + std::mem::size_of::<Outbox>();
        assert!(allocation <= 160, "{allocation} bytes");
    }

    /// A burst gets, message by message, what single pushes would get.
    #[test]
    fn a_burst_is_pushed_as_its_messages_would_be_one_by_one() {
        let burst: Vec<Arc<Message>> = [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("c", 1)]
            .iter()
            .map(|(t, s)| msg(t, *s))
            .collect();
        for policy in [SlowConsumerPolicy::Disconnect, SlowConsumerPolicy::Conflate] {
            let (one_stats, many_stats) = (HubStats::default(), HubStats::default());
            let (one, many) = (outbox(3, policy), outbox(3, policy));
            one.push_msg(&msg("z", 1), &one_stats);
            many.push_msg(&msg("z", 1), &many_stats);
            let enqueued_one: u64 = burst
                .iter()
                .map(|m| u64::from(one.push_msg(m, &one_stats).enqueued()))
                .sum();
            assert_eq!(
                many.push_msgs(&burst, &many_stats),
                enqueued_one,
                "{policy:?}"
            );
            for reason in [
                DropReason::SlowConsumerClose,
                DropReason::Conflated,
                DropReason::QueueFull,
            ] {
                assert_eq!(
                    many_stats.drops(reason),
                    one_stats.drops(reason),
                    "{policy:?} {reason:?}"
                );
            }
            assert_eq!(many.is_closed(), one.is_closed(), "{policy:?}");
            if !one.is_closed() {
                assert_eq!(seqs(&many), seqs(&one), "{policy:?}");
            }
        }
        // And within the bounds, everything in order, with one wake.
        let stats = HubStats::default();
        let ob = outbox(10, SlowConsumerPolicy::Disconnect);
        assert_eq!(ob.push_msgs(&burst, &stats), 5);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(ob.poll_ready(&mut cx), Poll::Ready(()));
        assert_eq!(
            ob.poll_ready(&mut cx),
            Poll::Pending,
            "one wake for the burst"
        );
        let want: Vec<(String, u64)> = burst.iter().map(|m| (m.topic.to_string(), m.seq)).collect();
        assert_eq!(seqs(&ob), want);
    }

    /// A run is one entry when it fits, and otherwise (and for the conflate
    /// policy, once runs are queued) leads to exactly what pushing its
    /// messages one by one would.
    #[test]
    fn runs_are_one_entry_within_the_bounds_and_single_messages_beyond() {
        let run = |topic: &str, seqs: std::ops::RangeInclusive<u64>| {
            Arc::new(Run::new(seqs.map(|s| msg(topic, s)).collect()))
        };
        let runs = [run("a", 1..=3), run("b", 1..=4)];
        let singles = [msg("c", 1), msg("a", 4)];
        for policy in [SlowConsumerPolicy::Disconnect, SlowConsumerPolicy::Conflate] {
            let (one_stats, run_stats) = (HubStats::default(), HubStats::default());
            let (one, ob) = (outbox(6, policy), outbox(6, policy));
            assert_eq!(ob.push_run(&runs[0], &run_stats), 3);
            assert_eq!(ob.depth().0, 3, "a run counts its messages");
            assert_eq!(ob.state.lock().items.len(), 1, "as one entry");
            for r in &runs {
                for m in &r.msgs {
                    one.push_msg(m, &one_stats);
                }
            }
            ob.push_run(&runs[1], &run_stats);
            for m in &singles {
                one.push_msg(m, &one_stats);
                ob.push_msg(m, &run_stats);
            }
            for reason in [
                DropReason::SlowConsumerClose,
                DropReason::Conflated,
                DropReason::QueueFull,
            ] {
                assert_eq!(
                    run_stats.drops(reason),
                    one_stats.drops(reason),
                    "{policy:?} {reason:?}"
                );
            }
            assert_eq!(ob.is_closed(), one.is_closed(), "{policy:?}");
            assert_eq!(ob.depth(), one.depth(), "{policy:?}");
            if !one.is_closed() {
                assert_eq!(seqs(&ob), seqs(&one), "{policy:?}");
            }
        }
        // A closed queue counts every message of a run it refuses.
        let stats = HubStats::default();
        let ob = outbox(6, SlowConsumerPolicy::Disconnect);
        ob.close(CloseReason::Ended, &stats);
        assert_eq!(ob.push_run(&runs[1], &stats), 0);
        assert_eq!(stats.drops(DropReason::ConnectionClosed), 4);
    }

    #[test]
    fn forced_frames_are_outside_the_bounds_and_never_conflated() {
        let stats = HubStats::default();
        for policy in [SlowConsumerPolicy::Disconnect, SlowConsumerPolicy::Conflate] {
            let ob = outbox(2, policy);
            for s in 1..=5 {
                ob.push_msg_forced(&msg("a", s));
            }
            assert_eq!(
                ob.push_msg(&msg("a", 6), &stats),
                PushOutcome::Queued,
                "{policy:?}"
            );
            assert_eq!(
                ob.push_msg(&msg("a", 7), &stats),
                PushOutcome::Queued,
                "{policy:?}"
            );
            let want: Vec<(String, u64)> = (1..=7).map(|s| ("a".to_string(), s)).collect();
            assert_eq!(seqs(&ob), want, "{policy:?}");
        }
    }

    #[test]
    fn closing_counts_what_was_queued_and_what_comes_later() {
        let stats = HubStats::default();
        let ob = outbox(10, SlowConsumerPolicy::Disconnect);
        ob.push_msg(&msg("a", 1), &stats);
        ob.push_msg(&msg("a", 2), &stats);
        ob.push_reply(Bytes::from_static(b"{}"), &stats);
        ob.close(CloseReason::Ended, &stats);
        assert_eq!(ob.push_msg(&msg("a", 3), &stats), PushOutcome::Closed);
        assert_eq!(stats.drops(DropReason::ConnectionClosed), 3);
        assert_eq!(stats.slow_consumer_disconnects.load(Relaxed), 0);
        assert_eq!(ob.depth(), (0, 0));
    }

    #[test]
    fn byte_bound_applies() {
        let stats = HubStats::default();
        let ob = Outbox::new(
            1,
            Codec::Json,
            OutboxLimits {
                max_messages: 100,
                max_bytes: 100,
                policy: SlowConsumerPolicy::Disconnect,
            },
        );
        // each frame is ~50 bytes
        ob.push_msg(&msg("a", 1), &stats);
        assert_eq!(ob.push_msg(&msg("a", 2), &stats), PushOutcome::Overflow);
    }

    #[test]
    fn an_empty_queue_releases_its_storage_and_a_busy_one_does_not() {
        let stats = HubStats::default();
        let ob = outbox(1000, SlowConsumerPolicy::Disconnect);
        ob.push_reply(Bytes::from_static(b"welcome"), &stats);
        ob.push_reply(Bytes::from_static(b"more"), &stats);
        assert!(!ob.release_if_empty(), "a queued frame keeps the queue");
        assert_eq!(ob.depth().0, 2);
        let mut out = VecDeque::new();
        ob.take_batch(&mut out, 1, 1 << 20).unwrap();
        ob.take_batch(&mut out, 2, 1 << 20).unwrap();
        assert_eq!(out.len(), 2);
        assert!(ob.state.lock().items.capacity() > 0);
        assert!(ob.release_if_empty());
        assert_eq!(ob.state.lock().items.capacity(), 0);
        // Still usable afterwards.
        ob.push_reply(Bytes::from_static(b"again"), &stats);
        out.clear();
        ob.take_batch(&mut out, 10, 1 << 20).unwrap();
        assert_eq!(&out[0].frames(Codec::Json).next().unwrap()[..], b"again");
    }

    #[test]
    fn batches_respect_limits_and_shrink() {
        let stats = HubStats::default();
        let ob = outbox(1000, SlowConsumerPolicy::Disconnect);
        for s in 1..=(SHRINK_ABOVE as u64 + 1) {
            ob.push_msg(&msg("a", s), &stats);
        }
        let mut out = VecDeque::new();
        ob.take_batch(&mut out, 64, usize::MAX).unwrap();
        assert_eq!(out.len(), 64);
        out.clear();
        ob.take_batch(&mut out, usize::MAX, usize::MAX).unwrap();
        assert_eq!(out.len(), SHRINK_ABOVE + 1 - 64);
        assert_eq!(ob.depth(), (0, 0));
        // The burst's storage went to the caller with the frames (it frees
        // it); the queue kept at most a small one.
        assert!(out.capacity() > SHRINK_ABOVE);
        assert!(ob.state.lock().items.capacity() <= SHRINK_ABOVE);
    }
}
