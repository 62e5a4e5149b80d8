//! When to try again: exponential backoff with full jitter (each wait is uniform between zero
//! and a ceiling that doubles per attempt, up to a cap), never shorter than the relay's
//! `Retry-After`, and reset only by a connection that stayed up. So a fleet refused together
//! spreads its retries, and no refusal (a 409, a 1008 right after the upgrade) turns into a
//! tight loop.

use std::time::Duration;

/// A connection that lasted this long was not refused: the next failure starts the backoff over.
pub const STABLE: Duration = Duration::from_secs(30);

/// The waits between attempts.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Waits whose ceiling starts at `initial` and doubles up to `max`.
    #[must_use]
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max: max.max(initial), attempt: 0 }
    }

    /// The wait before the next attempt: at least `retry_after` when the relay asked for it.
    pub fn next(&mut self, retry_after: Option<Duration>) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(random_fraction()).max(retry_after.unwrap_or_default())
    }

    /// The ceiling of the next wait.
    #[must_use]
    pub fn ceiling(&self) -> Duration {
        let doubled = self.initial.saturating_mul(1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX));
        doubled.min(self.max)
    }

    /// After a connection that stayed up: the next wait starts small again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A number in [0, 1] from the system's randomness (1 when it cannot be read: the longest
/// wait, never a tight loop).
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 4];
    if aws_lc_rs::rand::fill(&mut bytes).is_ok() {
        f64::from(u32::from_be_bytes(bytes)) / f64::from(u32::MAX)
    } else {
        1.0
    }
}

/// Repeated refusals are logged once: the first time a reason is met, not again until another
/// reason comes between.
#[derive(Debug, Default)]
pub struct RefusalLog {
    last: Option<String>,
    repeats: u64,
}

impl RefusalLog {
    /// Whether `reason` is new (log it); `false` for the same reason as the last one.
    pub fn is_new(&mut self, reason: &str) -> bool {
        if self.last.as_deref() == Some(reason) {
            self.repeats += 1;
            return false;
        }
        self.last = Some(reason.to_owned());
        self.repeats = 0;
        true
    }

    /// How often the last reason repeated since it was logged.
    #[must_use]
    pub fn repeats(&self) -> u64 {
        self.repeats
    }

    /// A connection succeeded: the next refusal is news again.
    pub fn clear(&mut self) {
        self.last = None;
        self.repeats = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_the_cap_and_honour_retry_after() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(8));
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            let ceiling = backoff.ceiling();
            ceilings.push(ceiling);
            assert!(backoff.next(None) <= ceiling);
        }
        assert_eq!(ceilings[..5], [500, 1000, 2000, 4000, 8000].map(Duration::from_millis));
        assert_eq!(ceilings[7], Duration::from_secs(8), "capped");
        assert!(backoff.next(Some(Duration::from_secs(10))) >= Duration::from_secs(10));
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(500));
        for _ in 0..100 {
            backoff.next(None);
        }
        assert_eq!(backoff.ceiling(), Duration::from_secs(8), "no overflow after many attempts");
    }

    #[test]
    fn a_refusal_is_news_once_until_another_comes_between() {
        let mut log = RefusalLog::default();
        assert!(log.is_new("409 identity already connected"));
        assert!(!log.is_new("409 identity already connected"));
        assert!(!log.is_new("409 identity already connected"));
        assert_eq!(log.repeats(), 2);
        assert!(log.is_new("503 cluster unavailable"));
        log.clear();
        assert!(log.is_new("503 cluster unavailable"));
    }
}
