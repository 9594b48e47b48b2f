//! A subscription that survives disconnects: [`Subscriber`].
//!
//! The subscriber is a small state machine driven by [`Subscriber::next`];
//! there is no background task and no queue, so the only buffer is the socket
//! and a single pending event. Its life:
//!
//! ```text
//!  Idle ──connect + sub──▶ AwaitingOk ──ok──▶ Live ──close/error──▶ Idle (after a delay)
//!    ▲                         │ error/timeout                          │
//!    └──────── delay ◀─────────┘                                        │
//!  fatal error (bad pattern, forbidden, bad URL) or too many retries ──▶ Stopped
//! ```
//!
//! Each message passes through [`Positions::observe`]: duplicates are
//! dropped (resume and snapshot may overlap), a jump in `seq` is reported as
//! [`Event::Gap`] before the message. With `resume`, every reconnect sends
//! the known positions as `since`, so the server replays exactly what was
//! missed, or lists the topic as `not_recovered` (then the caller resyncs it).
//!
//! The delay before a reconnect is the server's drain hint when it closed
//! with 1001 and `reconnect_after_ms=`, else jittered exponential backoff.
//! Where it reconnects: with [`ClientOptions::fallback_url`], to the next
//! node URL in rotation after every lost connection or failed attempt
//! (`failover.rs`), resuming there with the same `since`.

use std::time::Duration;

use pulsegate_proto::{close_code, ClientFrame, Id, Position, ServerFrame};
use tokio::time::Instant;

use crate::backoff::{parse_reconnect_after, Backoff};
use crate::failover::Rotation;
use crate::positions::{Observation, Positions};
use crate::{ClientError, ClientOptions, Connection};

/// What [`Subscriber::next`] yields.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A message on a concrete topic matching the pattern.
    Msg {
        /// Concrete topic.
        topic: String,
        /// Per-topic sequence number.
        seq: u64,
        /// History lifetime of the topic.
        epoch: String,
        /// Server ingress time, µs since the Unix epoch.
        ts: u64,
        /// Payload.
        data: serde_json::Value,
    },
    /// The (re)subscription was accepted. With `resume`, `recovered` lists
    /// topics whose missed messages follow, and `not_recovered` those whose
    /// history is gone: their state must be rebuilt from what comes next.
    Subscribed {
        /// Topics whose missed messages follow.
        recovered: Vec<String>,
        /// Topics that could not be recovered.
        not_recovered: Vec<String>,
    },
    /// Messages `expected..got` on `topic` never arrived (server conflation,
    /// history too short, or no resume); the message `got` follows.
    Gap {
        /// Concrete topic.
        topic: String,
        /// The seq that should have come.
        expected: u64,
        /// The seq that came instead.
        got: u64,
    },
    /// The connection ended (or a connect attempt failed); the subscriber
    /// reconnects after `retry_in` on the next call to [`Subscriber::next`],
    /// to the next URL of the rotation ([`Subscriber::url`] names it).
    Disconnected {
        /// Close code, when the server sent one.
        code: Option<u16>,
        /// Close reason or error description.
        reason: String,
        /// Wait before the next attempt.
        retry_in: Duration,
    },
}

enum State {
    /// No connection; the next attempt starts at `reconnect_at` (now if `None`).
    Idle { reconnect_at: Option<Instant> },
    /// `sub` sent with request id `id`; waiting for its `ok` until `deadline`.
    AwaitingOk {
        conn: Connection,
        id: u64,
        deadline: Instant,
    },
    /// Subscribed; messages flow.
    Live { conn: Connection },
    /// A fatal error was returned; nothing more will happen.
    Stopped,
}

/// What one read from the connection produced, detached from the borrow of it.
enum Read {
    Frame(ServerFrame),
    Undecodable(String),
    Ended(ClientError),
}

/// A subscription to one pattern that reconnects and (optionally) resumes.
pub struct Subscriber {
    opts: ClientOptions,
    pattern: String,
    snapshot: bool,
    resume: bool,
    backoff: Backoff,
    /// Which of `opts.urls()` the next attempt (or the live connection) uses.
    rotation: Rotation,
    positions: Positions,
    state: State,
    /// A message held back while the [`Event::Gap`] before it is returned.
    pending: Option<Event>,
    /// Reconnects scheduled since the last successful subscribe.
    retries: u32,
    next_id: u64,
    duplicates: u64,
    undecodable: u64,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("url", &self.url())
            .field("pattern", &self.pattern)
            .field("snapshot", &self.snapshot)
            .field("resume", &self.resume)
            .field("connected", &self.is_connected())
            .field("tracked_topics", &self.positions.len())
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    /// A subscriber to `pattern` (e.g. `site/+/power`). Nothing happens until
    /// the first [`Subscriber::next`]. `snapshot` asks for the last value of
    /// each matching topic after every (re)subscribe; `resume` sends the last
    /// seen positions on reconnect so missed messages are replayed.
    pub fn new(
        opts: ClientOptions,
        pattern: impl Into<String>,
        snapshot: bool,
        resume: bool,
    ) -> Self {
        let backoff = Backoff::new(opts.backoff_min, opts.backoff_max);
        let positions = Positions::new(opts.max_tracked_topics);
        let rotation = Rotation::new(opts.urls().len());
        Self {
            rotation,
            opts,
            pattern: pattern.into(),
            snapshot,
            resume,
            backoff,
            positions,
            state: State::Idle { reconnect_at: None },
            pending: None,
            retries: 0,
            next_id: 1,
            duplicates: 0,
            undecodable: 0,
        }
    }

    /// The pattern subscribed to.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// True while subscribed on a live connection.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Live { .. })
    }

    /// The server URL in use: the one connected to, or, between connections,
    /// the one the next attempt goes to.
    pub fn url(&self) -> &str {
        match self.rotation.current() {
            0 => &self.opts.url,
            i => &self.opts.fallback_urls[i - 1],
        }
    }

    /// The name of the node the subscriber is connected to (from its
    /// `welcome` frame), while connected.
    pub fn node(&self) -> Option<&str> {
        match &self.state {
            State::AwaitingOk { conn, .. } | State::Live { conn } => {
                Some(conn.welcome().node.as_str())
            }
            State::Idle { .. } | State::Stopped => None,
        }
    }

    /// The last position seen on a concrete topic.
    pub fn position(&self, topic: &str) -> Option<&Position> {
        self.positions.get(topic)
    }

    /// All tracked positions, sorted by topic (what a resume would send).
    pub fn positions(&self) -> Vec<(String, Position)> {
        self.positions.since()
    }

    /// Seeds a position, e.g. saved by an earlier process, so the first
    /// subscribe (with `resume`) asks for what came after it.
    pub fn set_position(&mut self, topic: &str, position: Position) {
        self.positions.set(topic, position);
    }

    /// Messages dropped because they had been delivered already.
    pub fn duplicates_dropped(&self) -> u64 {
        self.duplicates
    }

    /// Frames skipped because they could not be decoded (each is logged; the
    /// topic's next message then shows up as an [`Event::Gap`]).
    pub fn undecodable_frames(&self) -> u64 {
        self.undecodable
    }

    /// Messages delivered without tracking because `max_tracked_topics` was reached.
    pub fn untracked_messages(&self) -> u64 {
        self.positions.untracked()
    }

    /// Waits for the next event, connecting and reconnecting as needed.
    ///
    /// Returns `Err` only when the subscriber cannot go on: a fatal error
    /// (invalid URL, TLS setup, a `sub` refused as `bad_request` or
    /// `forbidden`) or [`ClientError::GaveUp`] after
    /// `max_reconnect_attempts`; later calls return [`ClientError::Stopped`].
    ///
    /// Cancel-safe (e.g. in `tokio::select!` or under a timeout): dropping
    /// the future loses no message; at worst an in-progress connection
    /// attempt is abandoned and started again by the next call.
    pub async fn next(&mut self) -> Result<Event, ClientError> {
        if let Some(event) = self.pending.take() {
            return Ok(event);
        }
        loop {
            match &mut self.state {
                State::Stopped => return Err(ClientError::Stopped),
                State::Idle { reconnect_at } => {
                    if let Some(at) = *reconnect_at {
                        tokio::time::sleep_until(at).await;
                    }
                    match self.open().await {
                        Ok((conn, id)) => {
                            let deadline = Instant::now() + self.opts.request_timeout;
                            self.state = State::AwaitingOk { conn, id, deadline };
                        }
                        Err(e) => return self.connection_lost(e),
                    }
                }
                State::AwaitingOk { .. } | State::Live { .. } => {
                    if let Some(event) = self.read_one().await? {
                        return Ok(event);
                    }
                }
            }
        }
    }

    /// Closes the connection politely, if there is one.
    pub async fn close(mut self) {
        match std::mem::replace(&mut self.state, State::Stopped) {
            State::AwaitingOk { conn, .. } | State::Live { conn } => conn.close().await,
            State::Idle { .. } | State::Stopped => {}
        }
    }

    /// Connects to the current URL of the rotation and sends `sub` (with
    /// `since` when resuming).
    async fn open(&mut self) -> Result<(Connection, u64), ClientError> {
        self.opts.check_urls()?;
        let mut conn = Connection::connect_to(&self.opts, self.url()).await?;
        let id = self.next_id;
        self.next_id += 1;
        let since = if self.resume {
            self.positions.since()
        } else {
            Vec::new()
        };
        conn.send(ClientFrame::Sub {
            id: Some(Id::Num(id)),
            topic: self.pattern.clone(),
            snapshot: self.snapshot,
            since,
        })
        .await?;
        Ok((conn, id))
    }

    /// Reads one frame and turns it into at most one event.
    async fn read_one(&mut self) -> Result<Option<Event>, ClientError> {
        let (read, awaiting) = match &mut self.state {
            State::AwaitingOk { conn, id, deadline } => {
                let (id, deadline) = (*id, *deadline);
                let read = match tokio::time::timeout_at(deadline, conn.next()).await {
                    Ok(item) => to_read(conn, item),
                    Err(_) => Read::Ended(ClientError::Timeout {
                        what: "waiting for the server to accept the subscription",
                        after: self.opts.request_timeout,
                    }),
                };
                (read, Some(id))
            }
            State::Live { conn } => {
                let item = conn.next().await;
                (to_read(conn, item), None)
            }
            State::Idle { .. } | State::Stopped => return Ok(None),
        };
        let frame = match read {
            Read::Frame(frame) => frame,
            Read::Undecodable(e) => {
                self.undecodable += 1;
                tracing::warn!(error = %e, pattern = %self.pattern, "skipping an undecodable frame");
                return Ok(None);
            }
            Read::Ended(e) => return self.connection_lost(e).map(Some),
        };
        match frame {
            ServerFrame::Msg {
                topic,
                seq,
                epoch,
                ts,
                data,
            } => {
                let observation = self.positions.observe(&topic, &epoch, seq);
                if let Observation::Duplicate { .. } = observation {
                    self.duplicates += 1;
                    return Ok(None);
                }
                match &observation {
                    Observation::NewEpoch { previous } => {
                        tracing::info!(%topic, %previous, %epoch, "topic history restarted (new epoch)");
                    }
                    Observation::Untracked if self.positions.untracked() == 1 => {
                        tracing::warn!(
                            %topic,
                            max_tracked_topics = self.opts.max_tracked_topics,
                            "position table full: topics seen from now on are delivered without \
                             duplicate/gap detection or resume (raise ClientOptions::max_tracked_topics)"
                        );
                    }
                    _ => {}
                }
                let gap_topic =
                    matches!(observation, Observation::Gap { .. }).then(|| topic.clone());
                let msg = Event::Msg {
                    topic,
                    seq,
                    epoch,
                    ts,
                    data,
                };
                match (observation, gap_topic) {
                    (Observation::Gap { expected, got }, Some(topic)) => {
                        self.pending = Some(msg);
                        Ok(Some(Event::Gap {
                            topic,
                            expected,
                            got,
                        }))
                    }
                    _ => Ok(Some(msg)),
                }
            }
            ServerFrame::Ok(reply) if awaiting.is_some() && reply.id == awaiting.map(Id::Num) => {
                if let State::AwaitingOk { conn, .. } =
                    std::mem::replace(&mut self.state, State::Stopped)
                {
                    self.state = State::Live { conn };
                }
                self.retries = 0;
                let not_recovered = reply.not_recovered.unwrap_or_default();
                for topic in &not_recovered {
                    self.positions.forget(topic);
                }
                Ok(Some(Event::Subscribed {
                    recovered: reply.recovered.unwrap_or_default(),
                    not_recovered,
                }))
            }
            ServerFrame::Error { id, code, message } => {
                let error = ClientError::Server { code, message };
                if awaiting.is_some() && id == awaiting.map(Id::Num) {
                    self.connection_lost(error).map(Some)
                } else {
                    tracing::warn!(%error, "error frame from the server");
                    Ok(None)
                }
            }
            ServerFrame::Ok(_) | ServerFrame::Pong { .. } | ServerFrame::Welcome { .. } => Ok(None),
        }
    }

    /// Drops the connection and decides what comes next: a reconnect after a
    /// delay ([`Event::Disconnected`]) or the end ([`Err`]).
    fn connection_lost(&mut self, cause: ClientError) -> Result<Event, ClientError> {
        // Dropping the connection closes the socket; the server already closed or vanished.
        self.state = State::Stopped;
        if !cause.is_retryable() {
            return Err(cause);
        }
        if let Some(max) = self.opts.max_reconnect_attempts {
            if self.retries >= max {
                return Err(ClientError::GaveUp {
                    attempts: self.retries,
                    last: Box::new(cause),
                });
            }
        }
        let (code, reason) = match &cause {
            ClientError::Closed { code, reason } => (*code, reason.clone()),
            other => (None, other.to_string()),
        };
        let hint = (code == Some(close_code::GOING_AWAY))
            .then(|| parse_reconnect_after(&reason))
            .flatten();
        let retry_in = match hint {
            Some(hint) => self.backoff.jitter_hint(hint),
            None => self.backoff.delay(self.retries),
        };
        self.retries = self.retries.saturating_add(1);
        self.state = State::Idle {
            reconnect_at: Some(Instant::now() + retry_in),
        };
        let lost = self.rotation.current();
        if self.rotation.advance() != lost {
            tracing::debug!(from = %self.opts.urls()[lost], to = %self.url(), "failing over");
        }
        tracing::debug!(?code, %reason, ?retry_in, pattern = %self.pattern, "disconnected");
        Ok(Event::Disconnected {
            code,
            reason,
            retry_in,
        })
    }
}

fn to_read(conn: &Connection, item: Option<Result<ServerFrame, ClientError>>) -> Read {
    match item {
        Some(Ok(frame)) => Read::Frame(frame),
        Some(Err(ClientError::Decode(e))) => Read::Undecodable(e),
        Some(Err(e)) => Read::Ended(e),
        None => Read::Ended(conn.closed_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost() -> ClientError {
        ClientError::Closed {
            code: None,
            reason: "connection lost".into(),
        }
    }

    #[test]
    fn every_disconnect_moves_to_the_next_url_and_wraps() {
        let opts = ClientOptions::new("ws://a/ws")
            .fallback_url("ws://b/ws")
            .fallback_url("ws://c/ws")
            .backoff(Duration::ZERO, Duration::ZERO);
        let mut sub = Subscriber::new(opts, "x/+", false, true);
        assert_eq!(sub.url(), "ws://a/ws");
        let mut visited = Vec::new();
        for _ in 0..4 {
            let event = sub.connection_lost(lost()).unwrap();
            assert!(matches!(event, Event::Disconnected { .. }), "{event:?}");
            visited.push(sub.url().to_owned());
        }
        assert_eq!(
            visited,
            ["ws://b/ws", "ws://c/ws", "ws://a/ws", "ws://b/ws"]
        );
    }

    #[test]
    fn a_drain_hint_is_honoured_on_failover_too() {
        let opts = ClientOptions::new("ws://a/ws").fallback_url("ws://b/ws");
        let mut sub = Subscriber::new(opts, "x/+", false, true);
        let event = sub
            .connection_lost(ClientError::Closed {
                code: Some(close_code::GOING_AWAY),
                reason: "draining; reconnect_after_ms=2000".into(),
            })
            .unwrap();
        let Event::Disconnected { retry_in, .. } = event else {
            panic!("{event:?}");
        };
        assert!(
            retry_in >= Duration::from_millis(1800) && retry_in <= Duration::from_millis(2200),
            "{retry_in:?}"
        );
        assert_eq!(sub.url(), "ws://b/ws");
    }

    #[test]
    fn without_fallbacks_the_url_stays() {
        let mut sub = Subscriber::new(ClientOptions::new("ws://a/ws"), "x/+", false, true);
        sub.connection_lost(lost()).unwrap();
        sub.connection_lost(lost()).unwrap();
        assert_eq!(sub.url(), "ws://a/ws");
        assert_eq!(sub.node(), None);
    }

    #[test]
    fn resume_positions_survive_the_failover() {
        let opts = ClientOptions::new("ws://a/ws").fallback_url("ws://b/ws");
        let mut sub = Subscriber::new(opts, "x/+", false, true);
        sub.positions.observe("x/1", "E", 7);
        sub.connection_lost(lost()).unwrap();
        assert_eq!(sub.url(), "ws://b/ws");
        assert_eq!(
            sub.positions(),
            vec![(
                "x/1".to_string(),
                Position {
                    epoch: "E".into(),
                    seq: 7
                }
            )]
        );
    }
}
