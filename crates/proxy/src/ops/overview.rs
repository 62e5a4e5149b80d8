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
    /// The rooms with their members, by id: the first [`SHOWN`] (`/v1/rooms` has them all).
    pub rooms: Vec<RoomStatus>,
    /// How many rooms and members there are, shown or not.
    pub totals: Totals,
    /// The window of [`Overview::expiring`], in days (`tls.expiry_warning`).
    pub expiring_within_days: u64,
    /// Client certificates that expire within the window, soonest first: the first [`SHOWN`]
    /// (`/v1/certificates` has them all).
    pub expiring: Vec<CertificateStatus>,
    /// The proxy's own certificate and the trusted CAs.
    pub trust: Vec<TrustedCertificate>,
}

/// Rooms, and certificates about to expire, an overview carries at most: the console shows
/// no more, and the script reads the overview every few seconds from nodes that may hold tens
/// of thousands of members.
pub const SHOWN: usize = 1000;

/// How many rooms, members and certificates there are, shown or not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Rooms.
    pub rooms: usize,
    /// Members on this node.
    pub members: usize,
    /// Members of this node's rooms on other nodes.
    pub elsewhere: usize,
    /// Client certificates expiring within the window.
    pub expiring: usize,
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
        let (rooms, expiring, totals) = shown(rooms, expiring);
        Overview {
            version: env!("CARGO_PKG_VERSION").into(),
            node: shared.hub.nodes.node().to_string(),
            now,
            ready: readiness.is_ok(),
            readiness: readiness.err().unwrap_or("ready").into(),
            cluster,
            counters: Counters::of(&shared.metrics),
            rooms,
            totals,
            expiring_within_days: window.as_secs() / 86_400,
            expiring,
            trust,
        }
    }
}

/// The first [`SHOWN`] rooms and certificates, and the totals of all of them.
fn shown(
    mut rooms: Vec<RoomStatus>,
    mut expiring: Vec<CertificateStatus>,
) -> (Vec<RoomStatus>, Vec<CertificateStatus>, Totals) {
    let totals = Totals {
        rooms: rooms.len(),
        members: rooms.iter().map(|r| r.members.len()).sum(),
        elsewhere: rooms.iter().map(|r| r.elsewhere.len()).sum(),
        expiring: expiring.len(),
    };
    rooms.truncate(SHOWN);
    expiring.truncate(SHOWN);
    (rooms, expiring, totals)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::status::RemoteMemberStatus;

    #[test]
    fn a_large_node_is_carried_in_part_and_counted_whole() {
        let member = RemoteMemberStatus {
            node: "b".into(),
            fingerprint: "AB".into(),
            peer_class: None,
            peer_id: None,
        };
        let room = |i: usize| RoomStatus {
            id: format!("r{i:05}"),
            held_messages: 0,
            held_bytes: 0,
            members: Vec::new(),
            elsewhere: vec![member.clone()],
        };
        let certificate = CertificateStatus {
            subject: "CN=x".into(),
            serial: "01".into(),
            fingerprint: "CD".into(),
            not_after: 0,
            rooms: Vec::new(),
            last_seen: 0,
            connected: false,
        };
        let (rooms, expiring, totals) =
            shown((0..SHOWN + 7).map(room).collect(), vec![certificate; SHOWN + 1]);
        assert_eq!((rooms.len(), expiring.len()), (SHOWN, SHOWN));
        assert_eq!(rooms.last().map(|r| r.id.as_str()), Some("r00999"), "the first ones, in order");
        assert_eq!(
            totals,
            Totals { rooms: SHOWN + 7, members: 0, elsewhere: SHOWN + 7, expiring: SHOWN + 1 }
        );
    }
}
