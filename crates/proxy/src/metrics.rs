//! Counters of what the proxy did and refused. The operations issue exports them to
//! Prometheus; for now they are read by tests and logged at shutdown.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// TCP connections accepted under `max_connections`.
    pub connections_accepted: AtomicU64,
    /// TCP connections refused at once because `max_connections` was reached.
    pub connections_refused: AtomicU64,
    /// Peers that completed the HELLO and joined a room.
    pub joins: AtomicU64,
    /// Frames queued to receivers (one per receiver).
    pub frames_relayed: AtomicU64,
    /// Bytes queued to receivers.
    pub bytes_relayed: AtomicU64,
    /// `CONN:ERROR` and 503 replies sent by the proxy.
    pub errors_sent: AtomicU64,
    /// Receivers closed with 1013 for not reading.
    pub slow_consumers: AtomicU64,
    /// Messages held for a lone member.
    pub held: AtomicU64,
    /// Held messages that expired or were refused (their sender was told).
    pub held_refused: AtomicU64,
    /// Held messages discarded because their sender left before anyone joined.
    pub held_discarded: AtomicU64,
    handshake_failures: Tally<&'static str>,
    upgrade_refusals: Tally<u16>,
}

/// Counters by label, for events rare enough that a lock costs nothing (refusals, failures).
#[derive(Debug)]
struct Tally<K>(Mutex<BTreeMap<K, u64>>);

impl<K> Default for Tally<K> {
    fn default() -> Self {
        Tally(Mutex::new(BTreeMap::new()))
    }
}

impl<K: Ord> Tally<K> {
    fn inc(&self, key: K) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(key).or_default() += 1;
    }

    fn get<Q: Ord + ?Sized>(&self, key: &Q) -> u64
    where
        K: std::borrow::Borrow<Q>,
    {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(key).copied().unwrap_or(0)
    }
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    #[must_use]
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts a failed TLS handshake by reason label.
    pub fn handshake_failed(&self, reason: &'static str) {
        self.handshake_failures.inc(reason);
    }

    /// Failed TLS handshakes with this reason label.
    #[must_use]
    pub fn handshake_failures(&self, reason: &str) -> u64 {
        self.handshake_failures.get(reason)
    }

    /// Counts an upgrade refused with an HTTP status.
    pub fn upgrade_refused(&self, status: u16) {
        self.upgrade_refusals.inc(status);
    }

    /// Upgrades refused with this HTTP status.
    #[must_use]
    pub fn upgrade_refusals(&self, status: u16) -> u64 {
        self.upgrade_refusals.get(&status)
    }
}
