//! Certificates about to expire (`tls.expiry_warning`): each connecting certificate that
//! expires within the warning window is logged and counted once, so an operator renews it in
//! time without a line per reconnect.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::warn;

use crate::identity::{Fingerprint, PeerIdentity};
use crate::metrics::Metrics;

/// Certificates remembered as told, at most; past it the memory starts over (and a certificate
/// may be told again).
const REMEMBERED: usize = 65_536;

/// The certificates already told of.
#[derive(Default)]
pub(crate) struct ExpiryWatch {
    told: Mutex<HashSet<Fingerprint>>,
}

impl ExpiryWatch {
    /// Logs and counts `identity` once if its certificate expires within `warning` of now.
    pub(crate) fn check(&self, identity: &PeerIdentity, warning: Duration, metrics: &Metrics) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let left = u64::try_from(identity.not_after).unwrap_or(0).saturating_sub(now);
        if left > warning.as_secs() {
            return;
        }
        {
            let mut told = self.told.lock().unwrap_or_else(PoisonError::into_inner);
            if told.len() >= REMEMBERED {
                told.clear();
            }
            if !told.insert(identity.fingerprint) {
                return;
            }
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
}
