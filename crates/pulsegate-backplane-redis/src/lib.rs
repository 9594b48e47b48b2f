//! The Redis backplane: several pulsegate nodes share their topic logs
//! through one Redis server.
//!
//! [`RedisBackplane`] implements [`pulsegate_core::Backplane`] with the
//! semantics of the reference [`pulsegate_core::MemoryBackplane`]: Redis
//! assigns each topic's `seq` and `epoch`, keeps its history, and carries
//! every new message to every node subscribed to a matching pattern.
//!
//! # Data in Redis
//!
//! For a topic `T` (used verbatim: keys are binary safe, so spaces, `*`,
//! `[`, `$` or non-ASCII in a topic need no escaping), under
//! [`RedisConfig::prefix`] (default `pulsegate`):
//!
//! | key / channel        | type    | holds                                          |
//! |----------------------|---------|------------------------------------------------|
//! | `{prefix}:epoch:{T}` | string  | the epoch of the current log, `r` + 16 hex     |
//! | `{prefix}:seq:{T}`   | string  | the last seq assigned (`INCR`)                 |
//! | `{prefix}:log:{T}`   | stream  | entry ID `<seq>-1`, fields `d` data, `t` ts (µs), `n` node |
//! | `{prefix}:live:{T}`  | channel | `seq\nepoch\nts\nnode\n` then the data bytes   |
//!
//! All three keys expire after [`RedisConfig::history_ttl`] without a
//! publish; the next publish then starts a new epoch at seq 1. The stream
//! is capped with `MAXLEN ~ max_history` (approximate: Redis trims whole
//! stream nodes, so a log may keep up to about 100 entries more).
//!
//! # Publishing
//!
//! [`Backplane::publish`](pulsegate_core::Backplane::publish) is one Lua
//! script (`EVALSHA`): read the epoch (create it, and clear seq and log, if
//! missing), `INCR` the seq, `XADD` the entry, refresh the expiries, and
//! `PUBLISH` the live payload. Redis runs a script atomically, so seqs are
//! contiguous across the whole cluster and the order of `PUBLISH`es, which
//! is the order subscribers receive, equals seq order.
//!
//! Live messages use classic `PUBLISH`, not sharded `SPUBLISH`: sharded
//! pub/sub has no pattern subscriptions, and wildcard patterns need
//! `PSUBSCRIBE`. For the same reason (and because one script touches three
//! keys that are not in one hash slot) Redis Cluster is not supported: use
//! a single Redis server (a primary; replicas may follow it).
//!
//! # Subscribing
//!
//! A concrete topic subscribes its live channel. A wildcard pattern
//! subscribes a glob that is a superset: each `+` and a trailing `#` become
//! `*` (which also spans `/`), glob metacharacters in literal levels are
//! escaped; `a/#` also subscribes the channel of `a` itself, which `a/#`
//! matches (`+/b/#` subscribes the single glob `*/b*`, covering both).
//! Each received message is checked locally with
//! [`Pattern::matches`](pulsegate_proto::Pattern::matches) (which also keeps
//! `$…` topics away from first-level wildcards) and forwarded once per
//! Redis delivery: a message carried by two subscriptions of this node
//! (say `a` and `a/#`) arrives twice, which the contract allows (nodes
//! de-duplicate by seq). Reference counts make `unsubscribe` remove exactly
//! the Redis subscriptions no remaining pattern needs.
//!
//! # Reading
//!
//! [`Backplane::read`](pulsegate_core::Backplane::read) is one Lua script
//! too, so epoch, last seq and messages come from the same instant:
//! `XRANGE log <after+1>-0 + COUNT limit`, or the last entry only.
//!
//! # Connections and outages
//!
//! Two [`redis::aio::ConnectionManager`]s speak RESP3: one for commands
//! (scripts, `PING`), one for subscriptions, whose pushes arrive through the
//! manager's push sender and which re-subscribes by itself after a
//! reconnect. The managers reconnect in the background with exponential
//! backoff: 100 ms doubling up to 2.5 s, plus 0–100 % jitter (so at most
//! 5 s between attempts), forever.
//!
//! The backplane is *down* after any failed operation, or when the
//! subscription connection drops; publish, read and subscribe then fail at
//! once with [`BackplaneError::Down`](pulsegate_core::BackplaneError::Down).
//! A health task pings both connections every 500 ms (each operation is
//! bounded by [`RedisConfig::op_timeout`]); when both answer again the
//! backplane is up and the node receives
//! [`Incoming::Resync`](pulsegate_core::Incoming::Resync), since live
//! messages published during the outage were lost. A node whose incoming
//! channel is full makes the forwarding task wait; the Redis connection
//! cannot wait, so up to [`RedisConfig::push_buffer`] live messages are
//! buffered in between, and an overflow is counted and also answered with a
//! `Resync`.
//!
//! Passwords never appear in logs, errors or `Debug` output
//! ([`pulsegate_core::backplane::redact_url`]).
#![warn(missing_docs)]

mod backplane;
mod config;
mod keys;
mod scripts;

pub use backplane::RedisBackplane;
pub use config::RedisConfig;
