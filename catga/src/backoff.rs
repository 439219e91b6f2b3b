//! One backoff for every retry loop: send retries, durable redeliveries,
//! reconnects, idempotency waits and saga retries.
//!
//! The delay before retry `n` (1-based) is `first × 2^(n−1)`, capped at
//! `max` (overflow-checked: a huge `n` is `max`, never a panic), then
//! optionally jittered.

use std::time::Duration;

/// An exponential backoff: `first × 2^(n−1)`, at most `max`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    jitter: Jitter,
}

/// How a delay is randomised, so that many retrying callers spread out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Jitter {
    /// Exactly the delay.
    None,
    /// Uniform in `[0, delay)` ("full jitter").
    Full,
    /// Uniform in `[delay / 2, delay)`.
    Half,
}

impl Backoff {
    /// `first`, doubling, at most `max`; no jitter.
    pub(crate) const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max, jitter: Jitter::None }
    }

    /// Each delay uniform in `[0, delay)`.
    pub(crate) const fn full_jitter(self) -> Backoff {
        Backoff { jitter: Jitter::Full, ..self }
    }

    /// Each delay uniform in `[delay / 2, delay)`.
    pub(crate) const fn half_jitter(self) -> Backoff {
        Backoff { jitter: Jitter::Half, ..self }
    }

    /// The delay before retry `attempt` (1 is the first retry; 0 counts as 1).
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1);
        let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
        let ceiling = self.first.saturating_mul(factor).min(self.max);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Full => ceiling.mul_f64(fastrand::f64()),
            Jitter::Half => ceiling.mul_f64(0.5 + fastrand::f64() / 2.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_from_the_first_delay_up_to_the_cap() {
        let b = Backoff::new(100 * MS, 1000 * MS);
        let delays: Vec<_> = (1..=6).map(|n| b.delay(n)).collect();
        assert_eq!(delays, [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]);
        assert_eq!(b.delay(0), 100 * MS);
    }

    #[test]
    fn huge_attempts_stay_at_the_cap_without_overflow() {
        let b = Backoff::new(50 * MS, Duration::MAX);
        assert!(b.delay(u32::MAX) >= b.delay(31));
        assert_eq!(Backoff::new(50 * MS, 2000 * MS).delay(u32::MAX), 2000 * MS);
    }

    #[test]
    fn jitter_stays_in_its_range() {
        let full = Backoff::new(80 * MS, 80 * MS).full_jitter();
        let half = Backoff::new(80 * MS, 80 * MS).half_jitter();
        for _ in 0..1000 {
            assert!(full.delay(3) < 80 * MS);
            let d = half.delay(3);
            assert!(d >= 40 * MS && d < 80 * MS, "{d:?}");
        }
    }
}
