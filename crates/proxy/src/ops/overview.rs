//! The node at a glance: what the web console shows (`console.rs`) and `GET /v1/overview`
//! answers, so the page's script refreshes from the same data the server rendered it from:
//! readiness, the cluster, the main counters, the rooms and their members, the certificates
//! about to expire, and the proxy's own certificate and CAs.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::certificates::{self, CertificateStatus};
use super::state::Shared;
use super::status::{self, RoomStatus};
use crate::identity::unix_now;
use crate::metrics::{ClusterTotals, Metrics};

/// The node at a glance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overview {
    /// The proxy's version.
    pub version: String,
    /// This node's id.
    pub node: String,
    /// When this was read, seconds since the Unix epoch.
    pub now: i64,
    /// Whether `/readyz` answers 200.
    pub ready: bool,
    /// What `/readyz` says.
    pub readiness: String,
    /// The cluster, in cluster mode.
    pub cluster: Option<ClusterOverview>,
    /// The main counters, for totals and (between two reads) rates.
    pub counters: Counters,
    /// Every room with its members.
    pub rooms: Vec<RoomStatus>,
    /// The window of [`Overview::expiring`], in days (`tls.expiry_warning`).
    pub expiring_within_days: u64,
    /// Client certificates that expire within the window, soonest first.
    pub expiring: Vec<CertificateStatus>,
    /// The proxy's own certificate and the trusted CAs.
    pub trust: Vec<TrustedCertificate>,
}

/// The cluster as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterOverview {
    /// Whether Redis is reachable.
    pub up: bool,
    /// The other nodes hosting members of this node's rooms.
    pub nodes: Vec<String>,
    /// Notes published to other nodes.
    pub published: u64,
    /// Notes that could not be published.
    pub lost: u64,
}

/// The main counters (totals since the start, but for the gauges).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Open connections (a gauge).
    pub connections_open: u64,
    /// Connections accepted.
    pub connections_accepted: u64,
    /// Connections refused at `max_connections`.
    pub connections_refused: u64,
    /// Members that joined.
    pub joins: u64,
    /// Data frames received from members.
    pub frames_in: u64,
    /// Data frames queued to receivers.
    pub frames_out: u64,
    /// Bytes received from members.
    pub bytes_in: u64,
    /// Bytes queued to receivers.
    pub bytes_out: u64,
    /// Full TLS handshakes.
    pub handshakes_full: u64,
    /// Resumed TLS handshakes.
    pub handshakes_resumed: u64,
    /// Failed TLS handshakes.
    pub handshake_failures: u64,
    /// Refused upgrades.
    pub upgrade_refusals: u64,
    /// `CONN:ERROR`s sent.
    pub conn_errors: u64,
    /// Receivers closed for not reading.
    pub slow_consumers: u64,
}

/// A certificate the proxy itself holds or trusts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedCertificate {
    /// `server` or `ca`.
    pub role: String,
    /// Subject DN.
    pub subject: String,
    /// notAfter, seconds since the Unix epoch.
    pub not_after: i64,
}

/// Whether the node is ready (`/readyz`), and if not, why.
pub(crate) fn readiness(shared: &Shared) -> Result<(), &'static str> {
    if !shared.ready.load(Ordering::Relaxed) {
        return Err("not ready: draining or not listening yet");
    }
    if !shared.backplane.healthy() {
        return Err("not ready: the cluster's redis is unreachable");
    }
    Ok(())
}

impl Overview {
    /// The node now.
    pub(crate) fn read(shared: &Shared) -> Self {
        let now = unix_now();
        let rooms = status::snapshot(&shared.hub.registry);
        let cluster = shared.config.cluster.as_ref().map(|_| {
            let ClusterTotals { up, published, lost, .. } = shared.backplane.totals();
            let nodes: BTreeSet<String> =
                rooms.iter().flat_map(|r| &r.elsewhere).map(|m| m.node.clone()).collect();
            ClusterOverview { up, nodes: nodes.into_iter().collect(), published, lost }
        });
        let window = shared.config.expiry_warning;
        let expiring = certificates::expiring(&shared.hub.registry, &shared.gate.expiry, window, now);
        let material = shared.gate.tls.load();
        let trust = material
            .expiries
            .server
            .iter()
            .map(|c| ("server", c))
            .chain(material.expiries.cas.iter().map(|c| ("ca", c)))
            .map(|(role, c)| TrustedCertificate {
                role: role.into(),
                subject: c.subject.clone(),
                not_after: c.not_after,
            })
            .collect();
        let readiness = readiness(shared);
        Overview {
            version: env!("CARGO_PKG_VERSION").into(),
            node: shared.hub.nodes.node().to_string(),
            now,
            ready: readiness.is_ok(),
            readiness: readiness.err().unwrap_or("ready").into(),
            cluster,
            counters: Counters::of(&shared.metrics),
            rooms,
            expiring_within_days: window.as_secs() / 86_400,
            expiring,
            trust,
        }
    }
}

impl Counters {
    fn of(m: &Metrics) -> Self {
        let (frames_in, bytes_in) = m.received.totals();
        let (frames_out, bytes_out) = m.relayed.totals();
        Counters {
            connections_open: Metrics::get(&m.connections_open),
            connections_accepted: Metrics::get(&m.connections_accepted),
            connections_refused: Metrics::get(&m.connections_refused),
            joins: Metrics::get(&m.joins),
            frames_in,
            frames_out,
            bytes_in,
            bytes_out,
            handshakes_full: Metrics::get(&m.handshakes_full),
            handshakes_resumed: Metrics::get(&m.handshakes_resumed),
            handshake_failures: m.handshake_failures_total(),
            upgrade_refusals: m.upgrade_refusals_total(),
            conn_errors: m.conn_errors_total(),
            slow_consumers: Metrics::get(&m.slow_consumers),
        }
    }
}
