//! Certificates about to expire (`tls.expiry_warning`): each connecting certificate that
//! expires within the warning window is logged and counted once, so an operator renews it in
//! time without a line per reconnect; and it is remembered (who, which rooms, when last seen)
//! for `/v1/certificates`, so a device that only connects now and then is listed too.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing::warn;

use crate::identity::{Fingerprint, PeerIdentity};
use crate::metrics::Metrics;
use crate::rooms::id::RoomId;

/// Certificates remembered, at most; past it the memory starts over (and a certificate may be
/// told again).
const REMEMBERED: usize = 65_536;
/// Rooms remembered per certificate, at most.
const ROOMS: usize = 16;

/// A certificate about to expire, as it was last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) subject: String,
    pub(crate) serial: String,
    /// notAfter, seconds since the Unix epoch.
    pub(crate) not_after: i64,
    /// The rooms it asked for (the first [`ROOMS`]).
    pub(crate) rooms: BTreeSet<String>,
    /// When it last connected, seconds since the Unix epoch.
    pub(crate) last_seen: i64,
}

/// The certificates about to expire that have connected.
#[derive(Default)]
pub(crate) struct ExpiryWatch {
    seen: Mutex<HashMap<Fingerprint, Seen>>,
}

impl ExpiryWatch {
    fn lock(&self) -> MutexGuard<'_, HashMap<Fingerprint, Seen>> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers `identity`, connecting at `now` (Unix seconds), if its certificate expires
    /// within `warning`; logs and counts it the first time.
    pub(crate) fn check(&self, identity: &PeerIdentity, warning: Duration, now: i64, metrics: &Metrics) {
        let left = identity.not_after.saturating_sub(now);
        if left > i64::try_from(warning.as_secs()).unwrap_or(i64::MAX) {
            return;
        }
        {
            let mut seen = self.lock();
            if let Some(known) = seen.get_mut(&identity.fingerprint) {
                known.last_seen = now;
                return;
            }
            if seen.len() >= REMEMBERED {
                seen.clear();
            }
            seen.insert(
                identity.fingerprint,
                Seen {
                    subject: identity.subject.clone(),
                    serial: identity.serial.clone(),
                    not_after: identity.not_after,
                    rooms: BTreeSet::new(),
                    last_seen: now,
                },
            );
        }
        Metrics::inc(&metrics.expiry_warnings);
        warn!(
            subject = %identity.subject,
            serial = %identity.serial,
            days_left = left / 86_400,
            not_after = identity.not_after,
            "client certificate expires soon: renew it"
        );
    }

    /// Notes the room a remembered certificate asked for.
    pub(crate) fn entered(&self, fingerprint: &Fingerprint, room: &RoomId) {
        if let Some(known) = self.lock().get_mut(fingerprint)
            && known.rooms.len() < ROOMS
        {
            known.rooms.insert(room.to_string());
        }
    }

    /// Every certificate remembered.
    pub(crate) fn seen(&self) -> Vec<(Fingerprint, Seen)> {
        self.lock().iter().map(|(fingerprint, seen)| (*fingerprint, seen.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(not_after: i64) -> PeerIdentity {
        PeerIdentity {
            subject: "CN=gw-7".into(),
            common_name: Some("gw-7".into()),
            organization: None,
            org_unit: None,
            sans: vec![],
            serial: "0C".into(),
            fingerprint: Fingerprint([9; 32]),
            not_after,
        }
    }

    #[test]
    fn a_certificate_about_to_expire_is_told_once_and_remembered_with_its_rooms() {
        let watch = ExpiryWatch::default();
        let metrics = Metrics::default();
        let day = 86_400;
        let warning = Duration::from_secs(30 * day as u64);
        watch.check(&identity(1_000 + 40 * day), warning, 1_000, &metrics);
        assert!(watch.seen().is_empty(), "outside the window");
        let soon = identity(1_000 + 10 * day);
        watch.check(&soon, warning, 1_000, &metrics);
        watch.entered(&soon.fingerprint, &RoomId::parse("gw/7").unwrap());
        watch.check(&soon, warning, 2_000, &metrics);
        assert_eq!(Metrics::get(&metrics.expiry_warnings), 1, "told once");
        let seen = watch.seen();
        assert_eq!(seen.len(), 1);
        let (_, entry) = &seen[0];
        assert_eq!((entry.serial.as_str(), entry.last_seen), ("0C", 2_000));
        assert_eq!(entry.rooms.iter().collect::<Vec<_>>(), ["gw/7"]);
    }
}
