//! Counters of what the proxy did and refused, and their Prometheus exposition.
//!
//! The relay path counts each frame in plain integers of its own (`FrameTally`) and adds them
//! to the counters that exist once per process ([`Metrics`]) or once per connection
//! ([`PeerStats`]) once per wake-up, with relaxed atomic adds: no lock, no label lookup, no
//! allocation, no locked instruction per frame. Labelled counters whose label is only known at run time (handshake
//! failure reasons, HTTP statuses, close reasons) count rare events and sit behind a lock
//! (`Tally`). Everything is turned into the Prometheus text format when `/metrics` is scraped,
//! by a `prometheus-client` collector that reads the atomics then (`metrics/exposition.rs`).

mod exposition;

pub use exposition::CONTENT_TYPE;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::Message;

use labels::LabelSet;

pub use crate::identity::CertificateExpiry;

/// One frame in this many, per connection, has its relay latency measured: reading the clock
/// for every frame would cost more than the rest of the relay path.
pub const LATENCY_SAMPLE_EVERY: u64 = 64;

/// Upper bounds of the relay latency histogram's buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] =
    [10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3, 250e-3, 1.0, 5.0];

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// TCP connections accepted under `max_connections`.
    pub connections_accepted: AtomicU64,
    /// TCP connections refused at once because `max_connections` was reached.
    pub connections_refused: AtomicU64,
    /// Accepted connections that have not ended yet.
    pub connections_open: AtomicU64,
    /// Peers that completed the HELLO and joined a room.
    pub joins: AtomicU64,
    /// Data frames received from members.
    pub received: Traffic,
    /// Data frames relayed to receivers (one per receiver).
    pub relayed: Traffic,
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
    /// Time from a frame's arrival until it is queued to every receiver (sampled).
    pub relay_latency: Histogram,
    /// Connecting certificates that expire within `tls.expiry_warning` (each certificate once).
    pub expiry_warnings: AtomicU64,
    /// TLS handshakes completed in full.
    pub handshakes_full: AtomicU64,
    /// TLS handshakes that resumed an earlier session.
    pub handshakes_resumed: AtomicU64,
    /// Connections waiting for a handshake slot (`max_handshakes_in_flight`).
    pub handshakes_queued: AtomicU64,
    /// TLS handshakes being worked on.
    pub handshakes_in_flight: AtomicU64,
    handshake_failures: Tally<labels::HandshakeFailures>,
    upgrade_refusals: Tally<labels::UpgradeStatuses>,
    conn_errors: Tally<labels::ConnErrorStatuses>,
    outcomes: Tally<labels::Outcomes>,
    auth_hook_checks: Tally<labels::AuthHookResults>,
    identity_conflicts: Tally<labels::IdentityConflicts>,
}

/// The label values of the labelled counters: each is shown from the first scrape, at 0 until
/// counted, so that a dashboard or an alert on its rate has data on a quiet node. The code that
/// counts a value (`edge/tls.rs`, `error.rs`, `edge/auth_hook.rs`, ...) is tested to count only
/// these; a value missing here would still be counted, from its first event.
pub mod labels {
    /// The values one labelled counter may take.
    pub trait LabelSet {
        /// The label's value type.
        type Key: Ord + Clone + std::fmt::Debug + 'static;
        /// Every value, in the order they are shown.
        const KNOWN: &'static [Self::Key];
    }

    macro_rules! label_set {
        ($(#[$doc:meta])* $name:ident: $key:ty = [$($value:expr),* $(,)?]) => {
            $(#[$doc])*
            #[derive(Debug)]
            pub struct $name;
            impl LabelSet for $name {
                type Key = $key;
                const KNOWN: &'static [$key] = &[$($value),*];
            }
        };
    }

    label_set!(
        /// `tls_handshake_failures_total{reason}`: `tls::handshake_failure`'s labels, and the
        /// connection's own (a timeout, a certificate refused after the handshake).
        HandshakeFailures: &'static str = [
            "no_client_certificate", "unknown_ca", "expired", "not_yet_valid", "revoked",
            "bad_signature", "bad_certificate", "incompatible", "alert_received", "protocol",
            "invalid_message", "other", "eof", "reset", "io", "timeout",
        ]
    );
    label_set!(
        /// `upgrade_refusals_total{status}`: the statuses the upgrade and admission refuse with.
        UpgradeStatuses: u16 = [400, 403, 404, 409, 426, 429, 431, 503]
    );
    label_set!(
        /// `conn_errors_total{status}`: the statuses of the proxy's `CONN:ERROR`s.
        ConnErrorStatuses: u16 = [400, 410, 429, 503]
    );
    label_set!(
        /// `connections_total{outcome}`: how a connection ended before the WebSocket, and
        /// every `Close` label after (`refused` is counted apart).
        Outcomes: &'static str = [
            "ip_limited", "handshake_rate_limited", "handshake_queue_timeout", "tls_failed",
            "upgrade_refused", "upgrade_incomplete", "shutdown", "peer_closed",
            "transport_error", "keepalive_timeout", "no_hello", "bad_hello", "room_full",
            "replaced", "revoked", "certificate_expired", "no_longer_admitted",
            "identity_conflict", "send_rate_limited", "too_many_rooms", "cluster_unavailable",
            "too_big", "too_much_before_hello", "invalid_utf8", "protocol_error",
            "slow_consumer",
        ]
    );
    label_set!(
        /// `auth_hook_checks_total{result}`: the authorization hook's answers.
        AuthHookResults: &'static str = ["allowed", "allowed_cached", "denied", "denied_cached", "unavailable"]
    );
    label_set!(
        /// `identity_conflicts_total{outcome}`: what became of a newcomer with a member's
        /// certificate.
        IdentityConflicts: &'static str = ["kept", "replaced", "refused", "refused_at_hello"]
    );
}

/// A data frame's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// A text frame.
    Text,
    /// A binary frame.
    Binary,
}

impl FrameKind {
    const ALL: [FrameKind; 2] = [FrameKind::Text, FrameKind::Binary];

    /// The type of a frame (control frames count as binary; they are never relayed).
    #[must_use]
    pub fn of(message: &Message) -> Self {
        if message.is_text() { FrameKind::Text } else { FrameKind::Binary }
    }

    fn label(self) -> &'static str {
        match self {
            FrameKind::Text => "text",
            FrameKind::Binary => "binary",
        }
    }
}

/// A count of frames and of their bytes.
#[derive(Debug, Default)]
pub struct Flow {
    frames: AtomicU64,
    bytes: AtomicU64,
}

impl Flow {
    /// Adds `frames` frames of `bytes` bytes in all; returns the frame count before.
    pub(crate) fn add(&self, frames: u64, bytes: u64) -> u64 {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.frames.fetch_add(frames, Ordering::Relaxed)
    }

    /// Frames so far.
    #[must_use]
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Bytes so far.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Frames and bytes in one direction, by frame type.
#[derive(Debug, Default)]
pub struct Traffic([Flow; 2]);

impl Traffic {
    /// The frames and bytes of one type.
    #[must_use]
    pub fn of(&self, kind: FrameKind) -> &Flow {
        &self.0[kind as usize]
    }

    /// The frames and bytes of both types.
    #[must_use]
    pub fn totals(&self) -> (u64, u64) {
        self.0.iter().fold((0, 0), |(f, b), flow| (f + flow.frames(), b + flow.bytes()))
    }
}

/// One connection's frames and bytes, for the rooms API.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Data frames the peer sent.
    pub received: Flow,
    /// Data frames written to the peer (from other members and the proxy).
    pub sent: Flow,
}

/// What one connection's relay loop has counted since it last published: plain integers,
/// added to the shared atomics ([`Metrics`], [`PeerStats`]) once per wake-up rather than once
/// per frame, since a locked add per counter per frame cost several percent of the relay path.
#[derive(Debug, Default)]
pub(crate) struct FrameTally {
    /// Frames and bytes received, by [`FrameKind`].
    received: [(u64, u64); 2],
    /// Frames and bytes relayed (one per receiver), by [`FrameKind`].
    relayed: [(u64, u64); 2],
    /// Data frames read over the connection's life, for sampling.
    seen: u64,
}

impl FrameTally {
    /// Counts a data frame received from the member. Returns the time it arrived for one
    /// frame in [`LATENCY_SAMPLE_EVERY`], to be given to [`Metrics::relay_done`].
    pub(crate) fn frame_in(&mut self, message: &Message) -> Option<Instant> {
        let count = &mut self.received[FrameKind::of(message) as usize];
        count.0 += 1;
        count.1 += message.len() as u64;
        let sampled = self.seen.is_multiple_of(LATENCY_SAMPLE_EVERY);
        self.seen += 1;
        sampled.then(Instant::now)
    }

    /// Counts a frame relayed to `receivers` receivers.
    pub(crate) fn relayed(&mut self, message: &Message, receivers: u64) {
        let count = &mut self.relayed[FrameKind::of(message) as usize];
        count.0 += receivers;
        count.1 += message.len() as u64 * receivers;
    }

    /// Adds what was counted to the process's and the peer's counters, and starts over.
    pub(crate) fn publish(&mut self, metrics: &Metrics, peer: &PeerStats) {
        for kind in FrameKind::ALL {
            let (frames, bytes) = std::mem::take(&mut self.received[kind as usize]);
            if frames > 0 {
                metrics.received.of(kind).add(frames, bytes);
                peer.received.add(frames, bytes);
            }
            let (frames, bytes) = std::mem::take(&mut self.relayed[kind as usize]);
            if frames > 0 {
                metrics.relayed.of(kind).add(frames, bytes);
            }
        }
    }
}

/// A histogram of durations with fixed buckets, in atomics.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket =
            LATENCY_BUCKETS.iter().position(|&bound| seconds <= bound).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The count of each bucket by upper bound, the `+Inf` bucket last (the encoder adds
    /// them up).
    fn buckets(&self) -> Vec<(f64, u64)> {
        let bounds = LATENCY_BUCKETS.iter().copied().chain(std::iter::once(f64::INFINITY));
        bounds.zip(&self.buckets).map(|(bound, n)| (bound, n.load(Ordering::Relaxed))).collect()
    }
}

/// Counters by label, for events rare enough that a lock costs nothing (refusals, failures);
/// every known value of the label starts at 0.
#[derive(Debug)]
struct Tally<L: LabelSet>(Mutex<BTreeMap<L::Key, u64>>);

impl<L: LabelSet> Default for Tally<L> {
    fn default() -> Self {
        Tally(Mutex::new(L::KNOWN.iter().map(|key| (key.clone(), 0)).collect()))
    }
}

impl<L: LabelSet> Tally<L> {
    fn inc(&self, key: L::Key) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(key).or_default() += 1;
    }

    fn get<Q: Ord + ?Sized>(&self, key: &Q) -> u64
    where
        L::Key: std::borrow::Borrow<Q>,
    {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(key).copied().unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().sum()
    }

    fn entries(&self) -> Vec<(L::Key, u64)> {
        let map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// When the proxy's own certificate and the CAs it trusts expire.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustExpiry {
    /// The server certificate (the leaf of `tls.server_cert`).
    pub server: Option<CertificateExpiry>,
    /// Every CA certificate of `tls.client_ca`.
    pub cas: Vec<CertificateExpiry>,
}

/// Upper bounds of the buckets of members' certificates' time left, in seconds: a day, a week,
/// two weeks, 30, 90, 180 and 365 days.
pub const EXPIRY_BUCKETS: [u64; 7] =
    [86_400, 604_800, 1_209_600, 2_592_000, 7_776_000, 15_552_000, 31_536_000];

/// The time left to the connected members' certificates, at one scrape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpiryTotals {
    /// Members per bucket of [`EXPIRY_BUCKETS`] (not cumulative); the last one is `+Inf`.
    pub buckets: [u64; EXPIRY_BUCKETS.len() + 1],
    /// Seconds left, summed over the members.
    pub sum: i64,
    /// The least time left of any member's certificate, when there is a member.
    pub soonest: Option<i64>,
}

impl ExpiryTotals {
    /// Counts a certificate with `left` seconds to go.
    pub fn add(&mut self, left: i64) {
        let bucket = EXPIRY_BUCKETS
            .iter()
            .position(|&bound| left <= i64::try_from(bound).unwrap_or(i64::MAX))
            .unwrap_or(EXPIRY_BUCKETS.len());
        self.buckets[bucket] += 1;
        self.sum = self.sum.saturating_add(left);
        self.soonest = Some(self.soonest.map_or(left, |s| s.min(left)));
    }
}

/// What `/metrics` reads at scrape time besides the counters.
#[derive(Clone, Debug)]
pub struct Gauges {
    /// The rooms, members, hold buffers and members' certificates.
    pub rooms: RoomTotals,
    /// The cluster, in cluster mode.
    pub cluster: Option<ClusterTotals>,
    /// The server's certificate and the trusted CAs.
    pub trust: Arc<TrustExpiry>,
    /// Now, seconds since the Unix epoch.
    pub now: i64,
}

/// What `/metrics` reports about the cluster, in cluster mode.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClusterTotals {
    /// Whether Redis is reachable.
    pub up: bool,
    /// Notes published to other nodes.
    pub published: u64,
    /// Notes that could not be published.
    pub lost: u64,
    /// Packets from other nodes that never arrived (numbers skipped).
    pub missed: u64,
    /// Packets from other nodes dropped for coming after a later one, or again.
    pub stale: u64,
    /// `CONN:ERROR`s that told members of lost frames.
    pub notices: u64,
    /// Times the inbox was found silent (no heartbeat) and subscribed again.
    pub silences: u64,
}

/// What `/metrics` reports about the rooms, counted from the registry at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub struct RoomTotals {
    /// Rooms.
    pub rooms: u64,
    /// Joined members in all rooms.
    pub members: u64,
    /// Messages in hold buffers.
    pub held_messages: u64,
    /// Bytes in hold buffers.
    pub held_bytes: u64,
    /// The time left to the members' certificates.
    pub expiry: ExpiryTotals,
}

/// Decrements the open-connection gauge when the connection ends.
#[must_use = "the connection counts as open while this lives"]
pub(crate) struct OpenConnection(Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One unit of a gauge, given back when dropped ([`Metrics::hold`]).
pub(crate) struct Held<'a>(&'a AtomicU64);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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

    /// Counts an accepted connection as open until the returned guard is dropped.
    pub(crate) fn opened(self: &Arc<Self>) -> OpenConnection {
        Metrics::inc(&self.connections_accepted);
        Metrics::inc(&self.connections_open);
        OpenConnection(Arc::clone(self))
    }

    /// Adds one to `gauge` until the guard is dropped.
    pub(crate) fn hold<'a>(&self, gauge: &'a AtomicU64) -> Held<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        Held(gauge)
    }

    /// Records the relay latency of a sampled frame.
    pub(crate) fn relay_done(&self, arrived: Option<Instant>) {
        if let Some(arrived) = arrived {
            self.relay_latency.observe(arrived.elapsed());
        }
    }

    /// Counts a failed TLS handshake by reason label.
    pub fn handshake_failed(&self, reason: &'static str) {
        self.handshake_failures.inc(reason);
        self.connection_ended("tls_failed");
    }

    /// Failed TLS handshakes with this reason label.
    #[must_use]
    pub fn handshake_failures(&self, reason: &str) -> u64 {
        self.handshake_failures.get(reason)
    }

    /// Failed TLS handshakes, whatever the reason.
    #[must_use]
    pub fn handshake_failures_total(&self) -> u64 {
        self.handshake_failures.total()
    }

    /// Upgrades refused, whatever the status.
    #[must_use]
    pub fn upgrade_refusals_total(&self) -> u64 {
        self.upgrade_refusals.total()
    }

    /// `CONN:ERROR`s sent, whatever the status.
    #[must_use]
    pub fn conn_errors_total(&self) -> u64 {
        self.conn_errors.total()
    }

    /// Counts an upgrade refused with an HTTP status.
    pub fn upgrade_refused(&self, status: u16) {
        self.upgrade_refusals.inc(status);
        self.connection_ended("upgrade_refused");
    }

    /// Upgrades refused with this HTTP status.
    #[must_use]
    pub fn upgrade_refusals(&self, status: u16) -> u64 {
        self.upgrade_refusals.get(&status)
    }

    /// Counts a `CONN:ERROR` sent with this status.
    pub fn conn_error_sent(&self, status: u16) {
        self.conn_errors.inc(status);
    }

    /// `CONN:ERROR`s sent with this status.
    #[must_use]
    pub fn conn_errors(&self, status: u16) -> u64 {
        self.conn_errors.get(&status)
    }

    /// Counts an answer of the authorization hook by result label.
    pub fn auth_hook_checked(&self, result: &'static str) {
        self.auth_hook_checks.inc(result);
    }

    /// Answers of the authorization hook with this result label.
    #[must_use]
    pub fn auth_hook_checks(&self, result: &str) -> u64 {
        self.auth_hook_checks.get(result)
    }

    /// Counts a newcomer with a member's certificate, by outcome: `kept` (the member answered
    /// its probe), `replaced`, `refused` (`same_identity = "refuse"`), `refused_at_hello` (a
    /// member appeared after the upgrade).
    pub fn identity_conflict(&self, outcome: &'static str) {
        self.identity_conflicts.inc(outcome);
    }

    /// Identity conflicts with this outcome.
    #[must_use]
    pub fn identity_conflicts(&self, outcome: &str) -> u64 {
        self.identity_conflicts.get(outcome)
    }

    /// Counts an accepted connection's end by outcome label.
    pub fn connection_ended(&self, outcome: &'static str) {
        self.outcomes.inc(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_frame_in_sample_every_is_timed_per_connection() {
        let metrics = Metrics::default();
        let peer = PeerStats::default();
        let mut tally = FrameTally::default();
        let frame = Message::binary(vec![0u8; 10]);
        let sampled = (0..2 * LATENCY_SAMPLE_EVERY).filter(|_| tally.frame_in(&frame).is_some()).count();
        assert_eq!(sampled, 2);
        assert_eq!(peer.received.frames(), 0, "nothing is shared before the tally is published");
        tally.relayed(&frame, 3);
        tally.publish(&metrics, &peer);
        assert_eq!(peer.received.bytes(), 20 * LATENCY_SAMPLE_EVERY);
        assert_eq!(metrics.received.of(FrameKind::Binary).frames(), 2 * LATENCY_SAMPLE_EVERY);
        assert_eq!(metrics.relayed.of(FrameKind::Binary).bytes(), 30);
        tally.publish(&metrics, &peer);
        assert_eq!(peer.received.frames(), 2 * LATENCY_SAMPLE_EVERY, "publishing starts over");
    }
}
