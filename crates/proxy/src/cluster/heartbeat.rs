//! The node's watch on its own inbox: every [`HEARTBEAT`] the node publishes an empty packet to
//! itself, and a heartbeat published must come back through the inbox within [`SILENCE`], or
//! the subscription is taken to have stopped delivering without closing (`redis.rs` subscribes
//! again). The clock runs from the publishing, not the queueing: a heartbeat waiting behind a
//! long outbox says nothing of the inbox. Heartbeats are told apart by their packet numbers,
//! so one that comes back before its publisher has heard Redis's answer starts no clock.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How often a node publishes a heartbeat to its own inbox.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a heartbeat published may take to come back through the inbox.
pub(crate) const SILENCE: Duration = Duration::from_secs(3);

/// The heartbeats out, and the last back.
#[derive(Default)]
pub(crate) struct Watch(Mutex<Beats>);

#[derive(Default)]
struct Beats {
    /// The oldest heartbeat published and not back yet: its packet number, and when.
    out: Option<(u64, Instant)>,
    /// The highest number of this node's own packets back through the inbox.
    back: u64,
}

impl Watch {
    fn beats(&self) -> MutexGuard<'_, Beats> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The heartbeat numbered `number` was published (Redis took it): its clock starts,
    /// unless it is back already or an older one is still out.
    pub(crate) fn sent(&self, number: u64) {
        let mut beats = self.beats();
        if beats.back < number && beats.out.is_none() {
            beats.out = Some((number, Instant::now()));
        }
    }

    /// A packet of this node's own, numbered `number`, came back through the inbox: the
    /// heartbeats up to it are back.
    pub(crate) fn returned(&self, number: u64) {
        let mut beats = self.beats();
        beats.back = beats.back.max(number);
        if beats.out.is_some_and(|(out, _)| out <= number) {
            beats.out = None;
        }
    }

    /// How long the oldest heartbeat out has been out; zero when none is.
    pub(crate) fn silent_for(&self) -> Duration {
        self.beats().out.map_or(Duration::ZERO, |(_, at)| at.elapsed())
    }

    /// Forgets the heartbeats out: a new subscription proves itself with the next ones.
    pub(crate) fn restart(&self) {
        self.beats().out = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_clock_runs_from_the_oldest_heartbeat_out_until_one_comes_back() {
        let watch = Watch::default();
        assert_eq!(watch.silent_for(), Duration::ZERO, "none out");
        watch.sent(1);
        tokio::time::advance(Duration::from_secs(1)).await;
        watch.sent(2);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(watch.silent_for(), Duration::from_secs(2), "from the oldest");
        watch.returned(2);
        assert_eq!(watch.silent_for(), Duration::ZERO, "a later one back: all back");
        watch.sent(3);
        watch.restart();
        assert_eq!(watch.silent_for(), Duration::ZERO, "a new subscription starts afresh");
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_back_before_its_answer_starts_no_clock() {
        let watch = Watch::default();
        watch.returned(5);
        watch.sent(5);
        tokio::time::advance(SILENCE * 2).await;
        assert_eq!(watch.silent_for(), Duration::ZERO);
        watch.sent(6);
        tokio::time::advance(SILENCE).await;
        assert_eq!(watch.silent_for(), SILENCE);
    }
}
