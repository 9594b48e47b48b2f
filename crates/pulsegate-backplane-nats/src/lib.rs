//! The pulsegate cluster backplane on NATS JetStream.
//!
//! [`NatsBackplane`] implements [`pulsegate_core::Backplane`] with the same
//! semantics as the reference `MemoryBackplane`: every topic has one log,
//! shared by all nodes, with a contiguous `seq` inside an `epoch`; a message
//! reaches the live stream of the subscribed nodes only once it is stored.
//!
//! # Where things live in NATS
//!
//! - **One stream** (`stream`, default `PULSEGATE`) with the subjects
//!   `{prefix}.h.>` holds every topic's log: file storage, at most
//!   `max_messages_per_topic` messages per subject, `max_age`, `max_bytes`,
//!   oldest discarded first. It is created at connect, or updated when its
//!   limits differ from this node's config (other fields, such as replicas,
//!   are left as an operator set them).
//! - **A topic is a subject**: `a/b c` is stored on `pg.h.a.b~20c` (see
//!   [`subject`] for the escaping: only `A-Z a-z 0-9 _ -` are kept, every
//!   other byte is `~XX`, so NATS wildcards, dots, spaces and `$` never reach
//!   a subject).
//! - **A message** is the payload (the JSON data, unchanged) plus headers:
//!   `Pg-Seq`, `Pg-Epoch`, `Pg-Ts` (publisher ingress time, µs), `Pg-Node`
//!   (publishing node) and `Pg-Prev` (stream sequence of the topic's
//!   previous message, 0 for the first of an epoch).
//!
//! # Assigning seq: optimistic concurrency
//!
//! A publish sends `Nats-Expected-Last-Subject-Sequence: N`, where `N` is
//! the stream sequence of the topic's last stored message (0: the subject
//! has none), with `Pg-Seq` = that message's `Pg-Seq` + 1 in the same epoch,
//! or `Pg-Seq: 1` and a fresh epoch (`n` + 16 random hex digits) when the
//! subject is empty. JetStream stores the message only if `N` is still the
//! subject's last sequence, so two nodes can never store the same seq; the
//! loser gets error 10071 ("wrong last sequence"), re-reads the subject's
//! last message and tries again after a pause drawn at random up to a
//! ceiling that doubles from 100 µs to 5 ms (at most 200 attempts, about a
//! second, then [`BackplaneError::Contention`]; 20 attempts without the
//! exponential spread gave up under CPU load). Each retry counts in
//! `stats.conflicts`.
//!
//! Each node caches, per topic, the last stream sequence, seq and epoch it
//! stored, behind a per-topic async mutex: publishes from one node to one
//! topic are serialized and normally cost one round trip (the publish and
//! its ack). The cache is only a shortcut: a stale entry costs one conflict.
//!
//! **Cost**, measured with `tests/concurrency.rs` (release build, a
//! 2-CPU machine, local nats-server 2.9.10):
//!
//! | case | publishes/s | conflicts |
//! |------|-------------|-----------|
//! | one node, one topic, one after another | 4,400–5,700 | 0 |
//! | bare JetStream publish + ack, no headers or check (baseline) | 6,000–7,400 | – |
//! | one node, 8 topics at once | ~21,500 | 0 |
//! | two nodes, one topic, 2 × 200 at once | 5,300–6,200 in total | 0.07–0.13 per publish |
//! | six nodes, one topic, 6 × 200 at once (one-off run) | ~6,600 in total | 0.53 per publish, none gave up |
//!
//! So: one round trip per publish, as a plain JetStream publish, plus
//! ~20 % for the headers and the check. One topic is written by one
//! publish at a time per node (no pipelining inside a topic), which bounds
//! a single hot topic to about one message per round trip; different
//! topics proceed in parallel. Each conflict adds a re-read and a retry.
//! The headers add ~150 bytes to every stored message and ~250 bytes
//! (with the server's `Nats-*` republish headers) to every live one.
//!
//! # Live delivery: republish
//!
//! The stream republishes (JetStream `RePublish`, nats-server ≥ 2.9) every
//! message it stores from `{prefix}.h.>` to `{prefix}.l.>`, in stream order,
//! with our headers. Nodes subscribe with plain core-NATS subscriptions to
//! the live subjects of their patterns (`+` → `*`; a trailing `#` → `>` plus
//! the parent subject, since `a/#` matches `a`), so fan-out costs no
//! JetStream consumer, and a message whose expected-sequence check failed is
//! never delivered. Received messages are filtered with
//! [`Pattern::matches`](pulsegate_proto::Pattern::matches) (the `$` rule
//! has no NATS equivalent) and sent to the node's channel with back-pressure.
//! Patterns mapping to one subject share one subscription.
//!
//! Core NATS delivery is at most once: while disconnected, or when the
//! client drops a message because this node fell behind (slow consumer),
//! messages are missed. Both end with [`Incoming::Resync`](pulsegate_core::Incoming::Resync): the node
//! re-reads the logs of its topics and fills the gaps.
//!
//! # Connection
//!
//! async-nats reconnects by itself (delay 50 ms doubling to 5 s, jittered)
//! and re-sends the subscriptions. After each connection the backplane
//! re-checks the stream (JetStream API requests, which the server answers
//! only after reading the re-sent subscriptions), then marks itself up and
//! sends [`Incoming::Resync`](pulsegate_core::Incoming::Resync). Likewise
//! `subscribe` returns only after a JetStream request made after its SUBs
//! was answered: `flush` alone only empties the client's write buffer, and
//! a message stored right after could be republished before the server had
//! the subscription.
//! [`NatsBackplane::connect`] succeeds even when the server is down: it
//! waits up to `op_timeout` and returns in the down state, where publish,
//! subscribe and read fail with [`BackplaneError::Down`].
//!
//! Credentials in `url` (`nats://user:password@host`, or `nats://token@host`)
//! are taken out of it and given to async-nats as connect options: async-nats
//! 0.51 ignores credentials written in a URL. The password never appears in
//! `Debug` output or logs.
//!
//! # Reading a log
//!
//! `read(topic, None, _)` is one get of the subject's last message.
//! `read(topic, Some(s), limit)` reads the last message first (epoch and
//! last seq `L`); when `L - s` is at most 8 it walks back along `Pg-Prev`
//! (one get per message), otherwise it scans the subject with a short-lived
//! pull consumer and keeps the messages with seq > `s`.

#![warn(missing_docs)]

pub mod backplane;
pub mod config;
pub mod subject;

pub use backplane::NatsBackplane;
pub use config::NatsConfig;
pub use subject::{pattern_subjects, tokens_to_topic, topic_to_tokens};

#[doc(no_inline)]
pub use pulsegate_core::BackplaneError;
