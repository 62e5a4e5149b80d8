//! Conflicts of one certificate are logged once per window: a pair of devices that share a
//! certificate and keep trying would otherwise write a line every few seconds for ever. The
//! lines in between are counted, and the next line says how many there were.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::identity::Fingerprint;

/// A certificate's conflicts are logged at most once per this window.
const LOG_WINDOW: Duration = Duration::from_secs(10);
/// Certificates whose last conflict is remembered, at most.
const REMEMBERED: usize = 4096;

/// When each certificate's last conflict was logged, and how many were not logged since.
#[derive(Default)]
pub(crate) struct ConflictLog {
    last: Mutex<HashMap<Fingerprint, (Instant, u64)>>,
}

impl ConflictLog {
    /// Whether to log a conflict of `fingerprint` now; `Some(n)` with the conflicts not logged
    /// since the last line.
    pub(crate) fn admit(&self, fingerprint: Fingerprint, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.len() >= REMEMBERED {
            last.retain(|_, (at, _)| now.duration_since(*at) < LOG_WINDOW);
        }
        match last.get_mut(&fingerprint) {
            Some((at, skipped)) if now.duration_since(*at) < LOG_WINDOW => {
                *skipped += 1;
                None
            }
            Some((at, skipped)) => {
                *at = now;
                Some(std::mem::take(skipped))
            }
            None => {
                last.insert(fingerprint, (now, 0));
                Some(0)
            }
        }
    }
}
