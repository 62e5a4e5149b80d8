//! A newcomer with the certificate of a member of the room it asks for (`rooms.same_identity`,
//! docs/protocol.md "One connection per certificate").
//!
//! Two live devices that share a certificate (a cloned SD card, a service started twice) must
//! not displace each other forever, and a device that reconnects must not be locked out by its
//! own dead socket. So, before the upgrade, the member is pinged (on its node): a member that
//! answers within `replace_probe_timeout` is alive and keeps its place, and the newcomer gets a
//! 409 with `Retry-After`; a member that stays silent is half-dead and the newcomer may replace
//! it at its HELLO, that member and no other. Each conflict is counted by outcome and logged at
//! most once per window per certificate (`conflict_log.rs`).

use std::net::SocketAddr;
use std::time::Instant;

use tracing::{info, warn};

use super::gate::Gate;
use super::upgrade::{Refusal, UpgradeRequest};
use crate::config::SameIdentity;
use crate::identity::PeerIdentity;
use crate::rooms::hub::Hub;
use crate::rooms::remote::{MayReplace, MemberKey};
use crate::rooms::room::Holder;

/// How long a newcomer refused for a live member is asked to wait before it tries again.
pub(crate) const CONFLICT_RETRY_AFTER: u32 = 10;
/// Decides on a newcomer whose certificate `holder` already has in the room; returns which
/// member the newcomer may replace at its HELLO.
///
/// # Errors
/// The 409 to answer when the member stays.
pub(crate) async fn resolve(
    gate: &Gate,
    hub: &Hub,
    holder: Holder,
    identity: &PeerIdentity,
    newcomer: SocketAddr,
    request: &UpgradeRequest,
) -> Result<MayReplace, Refusal> {
    let path = Some(request.path.as_str());
    let (member, member_address) = match &holder {
        Holder::Here { mailbox, address } => {
            (MemberKey { node: hub.nodes.node().clone(), conn: mailbox.conn() }, address.to_string())
        }
        Holder::Elsewhere(key) => (key.clone(), format!("on node {}", key.node)),
    };
    let refused = || {
        Refusal::status(
            409,
            "identity already connected: a live connection with this certificate is in this room",
            path,
        )
        .retry_after(CONFLICT_RETRY_AFTER)
    };
    let log = |outcome: &'static str| {
        gate.metrics.identity_conflict(outcome);
        if let Some(skipped) = gate.conflicts.admit(identity.fingerprint, Instant::now()) {
            let member = member_address.as_str();
            let room = request.room.as_str();
            match outcome {
                "kept" | "refused" => {
                    warn!(outcome, %newcomer, member, room, skipped, "identity conflict: two live connections share a certificate; the newcomer is refused (409)")
                }
                _ => {
                    info!(outcome, %newcomer, member, room, skipped, "identity conflict: the member with this certificate is replaced")
                }
            }
        }
    };
    match gate.config.same_identity {
        SameIdentity::Replace => {
            log("replaced");
            Ok(MayReplace::Anyone)
        }
        SameIdentity::Refuse => {
            log("refused");
            Err(refused())
        }
        SameIdentity::Probe => {
            let timeout = gate.config.replace_probe_timeout;
            let alive = match &holder {
                Holder::Here { mailbox, .. } => mailbox.probe(timeout).await,
                Holder::Elsewhere(key) => hub.nodes.probe(key, &request.room, newcomer, timeout).await,
            };
            if alive {
                if let (Holder::Here { mailbox, .. }, Some(room)) =
                    (&holder, hub.registry.room(request.room.as_str()))
                {
                    room.survived_conflict(mailbox.conn());
                }
                log("kept");
                Err(refused())
            } else {
                log("replaced");
                Ok(MayReplace::Only(member))
            }
        }
    }
}
