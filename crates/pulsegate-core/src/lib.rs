//! The hub of pulsegate: where a published message is stamped, retained and
//! fanned out to subscriber queues. No sockets here — the server crate owns
//! those — so every delivery rule can be tested directly.
//!
//! - [`message`]: a stamped message, encoded once per codec and shared.
//! - [`outbox`]: one connection's bounded outbound queue and its slow-consumer policy.
//! - [`hub`]: topic index, per-topic history and last value, subscribe/recover/publish.
//! - [`backplane`]: the seam to other nodes: the [`Backplane`] trait and [`MemoryBackplane`], its in-process reference implementation.
//! - [`cluster`]: a node's hub kept in step with the backplane's topic logs.
#![warn(missing_docs)]

pub mod backplane;
pub mod cluster;
pub mod hub;
pub mod message;
pub mod outbox;
pub mod stats;

pub use backplane::{
    redact_url, Backplane, BackplaneError, BackplaneStats, Incoming, Log, MemoryBackplane, Stamp,
};
pub use cluster::{Cluster, ClusterStats, LagObserver};
pub use hub::{Hub, HubConfig, HubError, Ingested, OnGap, SubscribeOutcome, TopicInfo};
pub use message::{now_micros, Message, Run};
pub use outbox::{
    CloseReason, Control, Outbox, OutboxLimits, Outgoing, PushOutcome, SlowConsumerPolicy,
};
pub use stats::{DropReason, HubStats};
