//! When to reconnect: jittered exponential backoff and the server's drain hint.
//!
//! Pure arithmetic, no I/O, so it is unit-tested exactly. Two sources decide
//! the wait before a reconnect:
//! - [`Backoff::delay`]: "full jitter" — a uniform draw from zero up to a
//!   ceiling that doubles per consecutive failure (`min · 2^attempt`, capped at
//!   `max`). Clients disconnected together (a server restart) thus spread
//!   their reconnects over the whole window instead of arriving in waves.
//! - [`parse_reconnect_after`]: a draining server closes with code 1001 and a
//!   reason such as `draining; reconnect_after_ms=1234`; that hint wins over
//!   the backoff and is jittered by ±10% with [`Backoff::jitter_hint`].

use std::time::Duration;

/// The longest drain hint honoured; a larger one (a buggy or hostile server)
/// is clamped so a client never sleeps for hours on one close frame.
pub const MAX_RECONNECT_HINT: Duration = Duration::from_secs(600);

/// Jittered exponential backoff.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    rng: fastrand::Rng,
}

impl Backoff {
    /// A backoff whose first ceiling is `min` and whose ceiling never exceeds
    /// `max` (raised to `min` if smaller).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self::with_rng(min, max, fastrand::Rng::new())
    }

    /// As [`Backoff::new`] with a seeded random source, for reproducible tests.
    pub fn with_seed(min: Duration, max: Duration, seed: u64) -> Self {
        Self::with_rng(min, max, fastrand::Rng::with_seed(seed))
    }

    fn with_rng(min: Duration, max: Duration, rng: fastrand::Rng) -> Self {
        Self {
            min,
            max: max.max(min),
            rng,
        }
    }

    /// The upper bound of the wait before reconnect number `attempt + 1`
    /// (`attempt` = failures so far): `min(max, min · 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        // 2^31 · min overflows nothing when saturating, and is past any sane max anyway.
        let factor = 1u32 << attempt.min(31);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// A uniformly drawn wait in `0..=ceiling(attempt)`.
    pub fn delay(&mut self, attempt: u32) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.u64(0..=ceiling))
    }

    /// The server's hint (see [`parse_reconnect_after`]) ± 10%, so clients
    /// given the same hint do not return in the same millisecond.
    pub fn jitter_hint(&mut self, hint: Duration) -> Duration {
        let hint = hint.min(MAX_RECONNECT_HINT);
        let nanos = u64::try_from(hint.as_nanos()).unwrap_or(u64::MAX);
        let spread = nanos / 10;
        let low = nanos - spread;
        let high = nanos.saturating_add(spread);
        Duration::from_nanos(self.rng.u64(low..=high))
    }
}

/// Reads `reconnect_after_ms=N` from a close reason such as
/// `draining; reconnect_after_ms=1234`. Tokens are separated by `;`, `,` or
/// whitespace; anything unparsable yields `None` (then the normal backoff
/// applies). Values above [`MAX_RECONNECT_HINT`] are clamped to it.
pub fn parse_reconnect_after(reason: &str) -> Option<Duration> {
    reason
        .split(|c: char| c == ';' || c == ',' || c.is_whitespace())
        .find_map(|token| token.strip_prefix("reconnect_after_ms="))
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms).min(MAX_RECONNECT_HINT))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff::new(100 * MS, 10_000 * MS);
        let ceilings: Vec<u64> = (0..10).map(|a| b.ceiling(a).as_millis() as u64).collect();
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
        assert_eq!(b.ceiling(u32::MAX), 10_000 * MS);
    }

    #[test]
    fn max_below_min_is_raised_to_min() {
        let b = Backoff::new(500 * MS, 100 * MS);
        assert_eq!(b.ceiling(0), 500 * MS);
        assert_eq!(b.ceiling(5), 500 * MS);
    }

    #[test]
    fn delay_is_within_zero_and_ceiling_and_spreads() {
        let mut b = Backoff::with_seed(100 * MS, 10_000 * MS, 7);
        for attempt in 0..40 {
            let ceiling = b.ceiling(attempt);
            let mut lowest = ceiling;
            let mut highest = Duration::ZERO;
            for _ in 0..200 {
                let d = b.delay(attempt);
                assert!(d <= ceiling, "{d:?} > {ceiling:?}");
                lowest = lowest.min(d);
                highest = highest.max(d);
            }
            // Full jitter uses the whole window, not just its top.
            assert!(lowest < ceiling / 4, "attempt {attempt}: lowest {lowest:?}");
            assert!(
                highest > ceiling * 3 / 4,
                "attempt {attempt}: highest {highest:?}"
            );
        }
    }

    #[test]
    fn zero_min_never_waits() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(b.delay(3), Duration::ZERO);
    }

    #[test]
    fn hint_jitter_is_ten_percent() {
        let mut b = Backoff::with_seed(100 * MS, 10_000 * MS, 1);
        for _ in 0..500 {
            let d = b.jitter_hint(1000 * MS);
            assert!(d >= 900 * MS && d <= 1100 * MS, "{d:?}");
        }
        assert!(b.jitter_hint(Duration::from_secs(86_400)) <= MAX_RECONNECT_HINT * 11 / 10);
        assert_eq!(b.jitter_hint(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn reason_parsing() {
        assert_eq!(
            parse_reconnect_after("draining; reconnect_after_ms=1234"),
            Some(1234 * MS)
        );
        assert_eq!(
            parse_reconnect_after("reconnect_after_ms=0"),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_reconnect_after("draining,reconnect_after_ms=5 node=a"),
            Some(5 * MS)
        );
        assert_eq!(parse_reconnect_after("draining"), None);
        assert_eq!(parse_reconnect_after(""), None);
        assert_eq!(parse_reconnect_after("reconnect_after_ms="), None);
        assert_eq!(parse_reconnect_after("reconnect_after_ms=-5"), None);
        assert_eq!(parse_reconnect_after("reconnect_after_ms=12ms"), None);
        assert_eq!(parse_reconnect_after("xreconnect_after_ms=12"), None);
        assert_eq!(
            parse_reconnect_after("reconnect_after_ms=99999999999999999999999"),
            None
        );
        assert_eq!(
            parse_reconnect_after("reconnect_after_ms=86400000"),
            Some(MAX_RECONNECT_HINT)
        );
    }
}
