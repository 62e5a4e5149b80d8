//! A member's send rate limit (`limits.max_frames_per_second`, `limits.max_bytes_per_second`):
//! two token buckets holding one second's worth each.
//!
//! The buckets belong to the connection's relay loop, so they need no atomics, and they read
//! the clock only when a frame finds them short or full: a peer within its rate costs a few
//! comparisons per frame. A frame over the rate is not relayed; its sender is told
//! (`CONN:ERROR` 429). A sender refused for a second's worth of frames in a row, or for a whole
//! second, is closed (1008).

use std::time::{Duration, Instant};

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Within the rate: relay it.
    Yes,
    /// Over the rate: refuse it, and tell the sender.
    Refuse,
    /// Over the rate for a second's worth of frames in a row: close the connection.
    Close,
}

/// One connection's buckets. A limit of 0 is no limit.
#[derive(Debug)]
pub(crate) struct RateLimit {
    frames_per_second: f64,
    bytes_per_second: f64,
    frames: f64,
    bytes: f64,
    refilled: Instant,
    refused_in_a_row: u64,
    /// When the current run of refused frames began.
    refusing_since: Option<Instant>,
}

impl RateLimit {
    pub(crate) fn new(frames_per_second: u64, bytes_per_second: u64, now: Instant) -> Self {
        let (frames, bytes) = (frames_per_second as f64, bytes_per_second as f64);
        RateLimit {
            frames_per_second: frames,
            bytes_per_second: bytes,
            frames,
            bytes,
            refilled: now,
            refused_in_a_row: 0,
            refusing_since: None,
        }
    }

    /// Takes a frame of `len` bytes from the buckets if they hold enough, refilling them (and
    /// reading the clock) only when they do not.
    pub(crate) fn admit(&mut self, len: usize) -> Admit {
        self.admit_at(len, Instant::now)
    }

    fn admit_at(&mut self, len: usize, now: impl Fn() -> Instant) -> Admit {
        if self.frames_per_second == 0.0 && self.bytes_per_second == 0.0 {
            return Admit::Yes;
        }
        // A full bucket starts its refill clock when it is first drawn on, so that time it
        // spent full is not credited again.
        if self.is_full() {
            self.refilled = now();
        }
        if self.take(len) {
            return Admit::Yes;
        }
        let now = now();
        self.refill(now);
        if self.take(len) {
            return Admit::Yes;
        }
        self.refused_in_a_row += 1;
        let since = *self.refusing_since.get_or_insert(now);
        let frames_worth =
            self.frames_per_second > 0.0 && self.refused_in_a_row as f64 > self.frames_per_second;
        if frames_worth || now.saturating_duration_since(since) >= Duration::from_secs(1) {
            Admit::Close
        } else {
            Admit::Refuse
        }
    }

    fn is_full(&self) -> bool {
        (self.frames_per_second == 0.0 || self.frames >= self.frames_per_second)
            && (self.bytes_per_second == 0.0 || self.bytes >= self.bytes_per_second)
    }

    fn take(&mut self, len: usize) -> bool {
        let frames_ok = self.frames_per_second == 0.0 || self.frames >= 1.0;
        let bytes_ok = self.bytes_per_second == 0.0 || self.bytes >= len as f64;
        if frames_ok && bytes_ok {
            self.frames -= 1.0;
            self.bytes -= len as f64;
            self.refused_in_a_row = 0;
            self.refusing_since = None;
        }
        frames_ok && bytes_ok
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).min(Duration::from_secs(1)).as_secs_f64();
        self.refilled = now;
        self.frames = (self.frames + elapsed * self.frames_per_second).min(self.frames_per_second);
        self.bytes = (self.bytes + elapsed * self.bytes_per_second).min(self.bytes_per_second);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_worth_passes_then_frames_are_refused_then_the_sender_is_closed() {
        let start = Instant::now();
        let mut rate = RateLimit::new(10, 0, start);
        for _ in 0..10 {
            assert_eq!(rate.admit_at(100, || start), Admit::Yes);
        }
        for _ in 0..10 {
            assert_eq!(rate.admit_at(100, || start), Admit::Refuse);
        }
        assert_eq!(rate.admit_at(100, || start), Admit::Close, "a second's worth refused in a row");
    }

    #[test]
    fn the_buckets_refill_with_time_and_a_passing_frame_resets_the_streak() {
        let start = Instant::now();
        let mut rate = RateLimit::new(10, 1000, start);
        assert_eq!(rate.admit_at(1000, || start), Admit::Yes);
        assert_eq!(rate.admit_at(1, || start), Admit::Refuse, "the byte bucket is empty");
        let later = start + Duration::from_millis(500);
        assert_eq!(rate.admit_at(400, || later), Admit::Yes, "half a second refills half of it");
        assert_eq!(rate.admit_at(200, || later), Admit::Refuse);
        assert_eq!(rate.refused_in_a_row, 1);
        // Drained, then a long pause refills one second's worth, no more.
        while rate.admit_at(1, || later) == Admit::Yes {}
        let much_later = later + Duration::from_secs(60);
        let passed = (0..100).take_while(|_| rate.admit_at(1, || much_later) == Admit::Yes).count();
        assert_eq!(passed, 10);
    }

    #[test]
    fn a_byte_limit_alone_closes_after_a_second_of_refusals() {
        let start = Instant::now();
        let mut rate = RateLimit::new(0, 100, start);
        assert_eq!(rate.admit_at(100, || start), Admit::Yes);
        assert_eq!(rate.admit_at(100, || start), Admit::Refuse);
        assert_eq!(rate.admit_at(100, || start), Admit::Refuse, "not closed on the second refusal");
        let later = start + Duration::from_millis(1000);
        assert_eq!(rate.admit_at(1000, || later), Admit::Close, "a second of refusals");
    }

    #[test]
    fn time_spent_full_is_not_credited_twice() {
        let start = Instant::now();
        let mut rate = RateLimit::new(10, 0, start);
        let after_idle = start + Duration::from_secs(30);
        let passed = (0..100).take_while(|_| rate.admit_at(1, || after_idle) == Admit::Yes).count();
        assert_eq!(passed, 10, "one second's worth after an idle spell, not two");
    }

    #[test]
    fn zero_means_no_limit() {
        let start = Instant::now();
        let mut rate = RateLimit::new(0, 0, start);
        for _ in 0..100_000 {
            assert_eq!(rate.admit_at(1 << 20, || start), Admit::Yes);
        }
    }
}
