//! Where a subscriber stands on each concrete topic, and what a new message means.
//!
//! The server numbers messages per concrete topic (`seq` +1 per message)
//! within a history lifetime (`epoch`). [`Positions`] remembers the last
//! `(epoch, seq)` seen per topic and classifies each incoming message with
//! [`Positions::observe`]: the next one, a duplicate (resume and snapshot may
//! overlap, so these are dropped), a gap (the server conflated or lost
//! messages), or a new epoch (history was lost; the caller resyncs). On
//! reconnect, [`Positions::since`] is exactly the `since` map of the `sub`
//! frame that asks for what was missed.
//!
//! The map is bounded by `max_topics`: a wildcard pattern over an unbounded
//! topic space must not grow client memory without limit. Topics first seen
//! when the map is full are delivered but not tracked (no duplicate or gap
//! detection, no resume) and counted in [`Positions::untracked`].

use std::collections::HashMap;

use pulsegate_proto::Position;

/// What an incoming message is, relative to what was seen before on its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// The first message seen on this topic.
    First,
    /// Exactly the successor of the last one seen.
    Next,
    /// Already seen (`seq` ≤ last seen, same epoch): drop it.
    Duplicate {
        /// The last seq seen.
        last: u64,
    },
    /// Messages `expected..got` were not received.
    Gap {
        /// The seq that should have come next.
        expected: u64,
        /// The seq that came.
        got: u64,
    },
    /// The topic's history lifetime changed: numbering restarted.
    NewEpoch {
        /// The epoch seen before.
        previous: String,
    },
    /// The table is full and this topic is not in it.
    Untracked,
}

/// Last seen `(epoch, seq)` per concrete topic, bounded.
#[derive(Debug, Clone)]
pub struct Positions {
    map: HashMap<String, Position>,
    max_topics: usize,
    untracked: u64,
}

impl Positions {
    /// An empty table that tracks at most `max_topics` topics.
    pub fn new(max_topics: usize) -> Self {
        Self {
            map: HashMap::new(),
            max_topics,
            untracked: 0,
        }
    }

    /// Classifies a message and records it as the latest position unless it
    /// is a duplicate (a duplicate never moves a position backwards).
    pub fn observe(&mut self, topic: &str, epoch: &str, seq: u64) -> Observation {
        let Some(pos) = self.map.get_mut(topic) else {
            if self.map.len() >= self.max_topics {
                self.untracked += 1;
                return Observation::Untracked;
            }
            self.map.insert(
                topic.to_owned(),
                Position {
                    epoch: epoch.to_owned(),
                    seq,
                },
            );
            return Observation::First;
        };
        if pos.epoch != epoch {
            let previous = std::mem::replace(&mut pos.epoch, epoch.to_owned());
            pos.seq = seq;
            return Observation::NewEpoch { previous };
        }
        if seq <= pos.seq {
            return Observation::Duplicate { last: pos.seq };
        }
        let expected = pos.seq + 1;
        pos.seq = seq;
        if seq == expected {
            Observation::Next
        } else {
            Observation::Gap { expected, got: seq }
        }
    }

    /// Sets a topic's position, e.g. one saved by a previous process.
    /// Ignored (and counted as untracked) when the table is full.
    pub fn set(&mut self, topic: &str, position: Position) {
        if self.map.len() >= self.max_topics && !self.map.contains_key(topic) {
            self.untracked += 1;
            return;
        }
        self.map.insert(topic.to_owned(), position);
    }

    /// Forgets a topic (after the server said it cannot be recovered).
    pub fn forget(&mut self, topic: &str) {
        self.map.remove(topic);
    }

    /// The position of one topic.
    pub fn get(&self, topic: &str) -> Option<&Position> {
        self.map.get(topic)
    }

    /// Every tracked position, sorted by topic: the `since` of a resuming `sub`.
    pub fn since(&self) -> Vec<(String, Position)> {
        let mut v: Vec<(String, Position)> = self
            .map
            .iter()
            .map(|(t, p)| (t.clone(), p.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Number of tracked topics.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no topic is tracked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Messages delivered untracked because the table was full.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(epoch: &str, seq: u64) -> Position {
        Position {
            epoch: epoch.into(),
            seq,
        }
    }

    #[test]
    fn in_order_then_duplicates_then_gap() {
        let mut p = Positions::new(10);
        assert_eq!(p.observe("a", "E", 41), Observation::First);
        assert_eq!(p.observe("a", "E", 42), Observation::Next);
        assert_eq!(p.observe("a", "E", 42), Observation::Duplicate { last: 42 });
        assert_eq!(p.observe("a", "E", 7), Observation::Duplicate { last: 42 });
        assert_eq!(p.get("a"), Some(&pos("E", 42)));
        assert_eq!(
            p.observe("a", "E", 45),
            Observation::Gap {
                expected: 43,
                got: 45
            }
        );
        assert_eq!(p.observe("a", "E", 46), Observation::Next);
        assert_eq!(p.get("a"), Some(&pos("E", 46)));
    }

    #[test]
    fn topics_are_independent() {
        let mut p = Positions::new(10);
        assert_eq!(p.observe("a", "E", 1), Observation::First);
        assert_eq!(p.observe("b", "E", 1), Observation::First);
        assert_eq!(p.observe("a", "E", 2), Observation::Next);
        assert_eq!(p.observe("b", "E", 2), Observation::Next);
    }

    #[test]
    fn new_epoch_restarts_numbering() {
        let mut p = Positions::new(10);
        p.observe("a", "E1", 10);
        assert_eq!(
            p.observe("a", "E2", 1),
            Observation::NewEpoch {
                previous: "E1".into()
            }
        );
        assert_eq!(p.observe("a", "E2", 2), Observation::Next);
        // A late frame of the old epoch is not a duplicate of the new one:
        // it is reported as another epoch switch, never silently merged.
        assert_eq!(
            p.observe("a", "E1", 11),
            Observation::NewEpoch {
                previous: "E2".into()
            }
        );
    }

    #[test]
    fn since_is_sorted_and_complete() {
        let mut p = Positions::new(10);
        p.observe("site/b/power", "E", 3);
        p.observe("site/a/power", "E", 41);
        p.set("site/c/power", pos("F", 9));
        assert_eq!(
            p.since(),
            vec![
                ("site/a/power".to_string(), pos("E", 41)),
                ("site/b/power".to_string(), pos("E", 3)),
                ("site/c/power".to_string(), pos("F", 9)),
            ]
        );
        p.forget("site/b/power");
        assert_eq!(p.len(), 2);
        assert_eq!(p.observe("site/b/power", "E", 9), Observation::First);
    }

    #[test]
    fn bounded_table_counts_untracked() {
        let mut p = Positions::new(2);
        p.observe("a", "E", 1);
        p.observe("b", "E", 1);
        assert_eq!(p.observe("c", "E", 1), Observation::Untracked);
        assert_eq!(p.observe("c", "E", 1), Observation::Untracked);
        assert_eq!(p.untracked(), 2);
        assert_eq!(p.len(), 2);
        // Known topics keep being tracked when the table is full.
        assert_eq!(p.observe("a", "E", 2), Observation::Next);
        p.set("d", pos("E", 1));
        assert_eq!(p.get("d"), None);
        p.set("a", pos("E", 5));
        assert_eq!(p.get("a"), Some(&pos("E", 5)));
    }

    #[test]
    fn seq_at_u64_max_does_not_overflow() {
        let mut p = Positions::new(2);
        p.observe("a", "E", u64::MAX);
        assert_eq!(
            p.observe("a", "E", u64::MAX),
            Observation::Duplicate { last: u64::MAX }
        );
        assert_eq!(
            p.observe("a", "E", 0),
            Observation::Duplicate { last: u64::MAX }
        );
    }
}
