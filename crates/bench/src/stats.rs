//! Delivery checks and latency statistics.

use serde::Serialize;

/// What the receivers saw, against what the senders sent.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct Delivery {
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) reordered: u64,
    pub(crate) corrupted: u64,
}

impl Delivery {
    pub(crate) fn add(&mut self, other: &Delivery) {
        self.sent += other.sent;
        self.received += other.received;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.corrupted += other.corrupted;
    }

    pub(crate) fn is_perfect(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.corrupted == 0
            && self.sent == self.received
    }
}

/// Tracks one sender's sequence at one receiver: a bitset of the numbers seen, so a duplicate
/// is told apart from a late arrival exactly.
#[derive(Debug, Default)]
pub(crate) struct SequenceCheck {
    next: u64,
    seen: Vec<u64>,
    unique: u64,
    pub(crate) delivery: Delivery,
}

impl SequenceCheck {
    /// Records message `seq`; `intact` says whether its bytes were the expected ones.
    pub(crate) fn record(&mut self, seq: u64, intact: bool) {
        self.delivery.received += 1;
        if !intact {
            self.delivery.corrupted += 1;
        }
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.delivery.duplicated += 1;
            return;
        }
        self.seen[word] |= 1 << bit;
        self.unique += 1;
        if seq != self.next {
            self.delivery.reordered += 1;
        }
        self.next = self.next.max(seq + 1);
    }

    /// Records a frame whose sequence number cannot even be read.
    pub(crate) fn record_unreadable(&mut self) {
        self.delivery.received += 1;
        self.delivery.corrupted += 1;
    }

    /// Closes the check after `sent` messages were sent.
    pub(crate) fn finish(mut self, sent: u64) -> Delivery {
        self.delivery.sent = sent;
        self.delivery.lost = sent.saturating_sub(self.unique);
        self.delivery
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct Percentiles {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
}

impl Percentiles {
    pub(crate) fn of(mut samples_us: Vec<f64>) -> Self {
        if samples_us.is_empty() {
            return Percentiles::default();
        }
        samples_us.sort_by(f64::total_cmp);
        let at = |q: f64| samples_us[((samples_us.len() - 1) as f64 * q).round() as usize];
        Percentiles { p50: at(0.5), p90: at(0.9), p99: at(0.99), p999: at(0.999), max: at(1.0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_checks() {
        let mut check = SequenceCheck::default();
        for seq in [0, 1, 2, 3] {
            check.record(seq, true);
        }
        assert!(check.finish(4).is_perfect());

        let mut check = SequenceCheck::default();
        for (seq, intact) in [(0, true), (2, true), (1, true), (2, true), (3, false)] {
            check.record(seq, intact);
        }
        check.record_unreadable();
        let d = check.finish(5);
        assert_eq!((d.received, d.reordered, d.duplicated, d.corrupted, d.lost), (6, 2, 1, 2, 1));
        assert!(!d.is_perfect());
    }

    #[test]
    fn percentiles() {
        let p = Percentiles::of((1..=1000).map(f64::from).collect());
        assert_eq!((p.p50, p.p99, p.max), (501.0, 990.0, 1000.0));
    }
}
