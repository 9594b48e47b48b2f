//! Where to reconnect: the rotation over a cluster's node URLs.
//!
//! [`crate::ClientOptions::urls`] lists the nodes (the first URL, then the
//! fallbacks). [`Rotation`] is the subscriber's place in that list: it starts
//! at the first URL and moves one step on after every lost connection or
//! failed attempt, wrapping around. Moving on even after a healthy
//! connection ended is deliberate: a node that closed (drain, crash, slow
//! consumer) is the least likely to serve the next attempt, and any node of
//! a cluster can resume the subscription with `since`, because the topic
//! logs live in the backplane, not in the node. With a single URL the
//! rotation stays put, which is the behaviour of a client without fallbacks.
//!
//! Pure index arithmetic, unit-tested here; the subscriber's use of it is
//! tested on the wire in `tests/scripted_server.rs`.

/// A position in a list of `len` URLs that advances round-robin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rotation {
    len: usize,
    current: usize,
}

impl Rotation {
    /// A rotation over `len` URLs (at least one), starting at the first.
    pub(crate) fn new(len: usize) -> Self {
        Self {
            len: len.max(1),
            current: 0,
        }
    }

    /// The index of the URL to use for the next attempt.
    pub(crate) fn current(&self) -> usize {
        self.current
    }

    /// Moves to the next URL (after the last comes the first again) and
    /// returns its index.
    pub(crate) fn advance(&mut self) -> usize {
        self.current = (self.current + 1) % self.len;
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_the_first_and_cycles_through_all_in_order() {
        let mut r = Rotation::new(3);
        assert_eq!(r.current(), 0);
        let visited: Vec<usize> = (0..7).map(|_| r.advance()).collect();
        assert_eq!(visited, [1, 2, 0, 1, 2, 0, 1]);
        assert_eq!(r.current(), 1);
    }

    #[test]
    fn a_single_url_is_always_reused() {
        let mut r = Rotation::new(1);
        assert_eq!(r.current(), 0);
        assert_eq!(r.advance(), 0);
        assert_eq!(r.advance(), 0);
    }

    #[test]
    fn zero_urls_behaves_as_one() {
        let mut r = Rotation::new(0);
        assert_eq!(r.advance(), 0);
    }

    #[test]
    fn every_url_is_tried_once_per_len_attempts() {
        for len in 1..=6 {
            let mut r = Rotation::new(len);
            let mut seen = vec![0u32; len];
            seen[r.current()] += 1;
            for _ in 1..len * 4 {
                seen[r.advance()] += 1;
            }
            assert!(seen.iter().all(|&n| n == 4), "len {len}: {seen:?}");
        }
    }
}
