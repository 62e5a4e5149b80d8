//! The certificates report: what `GET /v1/certificates?expiring_within=30d` answers. Client
//! certificates that expire within the window, soonest first: those of the members connected
//! now, and those seen since the start that expire within `tls.expiry_warning` (remembered by
//! the edge, `edge/expiry.rs`), so a device that connects once a day is listed between its
//! visits. `ws-proxy status --expiring 30d` prints it (`cli/status.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::edge::expiry::ExpiryWatch;
use crate::identity::{Fingerprint, PeerIdentity};
use crate::rooms::registry::Registry;

/// A client certificate about to expire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// Subject DN.
    pub subject: String,
    /// Serial number, uppercase hex.
    pub serial: String,
    /// SHA-256 fingerprint, uppercase hex.
    pub fingerprint: String,
    /// notAfter, seconds since the Unix epoch.
    pub not_after: i64,
    /// The rooms it is in now, or asked for when it last connected.
    pub rooms: Vec<String>,
    /// When it was last connected, seconds since the Unix epoch (now, when it is connected).
    pub last_seen: i64,
    /// Whether it is connected now.
    pub connected: bool,
}

/// The certificates that expire within `within` of `now` (Unix seconds), soonest first.
pub(crate) fn expiring(
    registry: &Registry,
    watch: &ExpiryWatch,
    within: Duration,
    now: i64,
) -> Vec<CertificateStatus> {
    let horizon = now.saturating_add(i64::try_from(within.as_secs()).unwrap_or(i64::MAX));
    let mut found: BTreeMap<[u8; 32], CertificateStatus> = BTreeMap::new();
    for (fingerprint, seen) in watch.seen() {
        if seen.not_after <= horizon {
            found.insert(
                fingerprint.0,
                CertificateStatus {
                    subject: seen.subject,
                    serial: seen.serial,
                    fingerprint: fingerprint.to_string(),
                    not_after: seen.not_after,
                    rooms: seen.rooms.into_iter().collect(),
                    last_seen: seen.last_seen,
                    connected: false,
                },
            );
        }
    }
    // Members: only those in the window have their certificate read again, for its serial.
    let members = registry.each_member(|room, m| {
        (m.not_after <= horizon)
            .then(|| (room.to_string(), m.fingerprint, m.subject.to_string(), m.not_after, m.chain.clone()))
    });
    for (room, fingerprint, subject, not_after, chain) in members.into_iter().flatten() {
        let entry = found.entry(fingerprint.0).or_insert_with(|| CertificateStatus {
            subject,
            serial: serial(&chain.chain(), fingerprint),
            fingerprint: fingerprint.to_string(),
            not_after,
            rooms: Vec::new(),
            last_seen: now,
            connected: true,
        });
        if !entry.connected {
            entry.rooms.clear();
        }
        entry.connected = true;
        entry.last_seen = now;
        if !entry.rooms.contains(&room) {
            entry.rooms.push(room);
        }
    }
    let mut report: Vec<CertificateStatus> = found.into_values().collect();
    report.sort_by(|a, b| a.not_after.cmp(&b.not_after).then_with(|| a.subject.cmp(&b.subject)));
    report
}

/// The serial of the chain's leaf, if it is the certificate with `fingerprint`.
fn serial(chain: &[rustls_pki_types::CertificateDer<'static>], fingerprint: Fingerprint) -> String {
    chain
        .first()
        .and_then(|leaf| PeerIdentity::from_der(leaf).ok())
        .filter(|identity| identity.fingerprint == fingerprint)
        .map_or_else(|| "-".to_owned(), |identity| identity.serial)
}
