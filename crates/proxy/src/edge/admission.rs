//! Admission: whether a valid upgrade request may go ahead, checked in order of cost before
//! the 101 is sent, so a refused peer learns why (an HTTP status) before any frame flows: the
//! per-certificate connection limit (429), the ACL (403), the authorization hook (403, or 503
//! when it cannot answer), room and rooms capacity here and cluster-wide (409, 503), then a
//! member with the same certificate (`same_identity.rs`: 409, or the member it may replace).
//! Refusals that may pass later carry `Retry-After`.

use std::net::SocketAddr;

use tracing::{info, warn};

use super::acl::Decision;
use super::auth_hook::{Subject, Verdict};
use super::gate::Gate;
use super::same_identity;
use super::slots::Slot;
use super::upgrade::{Refusal, UpgradeRequest};
use crate::config::SameIdentity;
use crate::identity::{Fingerprint, PeerIdentity};
use crate::rooms::hub::Hub;
use crate::rooms::registry::Space;
use crate::rooms::remote::MayReplace;
use crate::rooms::room::Holder;

/// How long a refusal for a limit or an unavailable service asks the client to wait.
const BUSY_RETRY_AFTER: u32 = 5;

/// What an admitted request carries into the room: the `peerClass` its HELLO must carry (from
/// the ACL rule that let it in), its place under the per-certificate limit, and the member with
/// its certificate it may replace.
pub(crate) struct Pass {
    pub(crate) peer_class: Option<String>,
    pub(crate) slot: Slot<Fingerprint>,
    pub(crate) may_replace: MayReplace,
}

/// Decides on one upgrade request from `peer`, whose certificate is `identity`.
///
/// # Errors
/// The refusal to answer with.
pub(crate) async fn admit(
    gate: &Gate,
    hub: &Hub,
    identity: &PeerIdentity,
    peer: SocketAddr,
    request: &UpgradeRequest,
) -> Result<Pass, Refusal> {
    let path = Some(request.path.as_str());
    let Some(slot) = gate.per_identity.acquire(identity.fingerprint) else {
        return Err(Refusal::status(429, "too many connections with this certificate", path)
            .retry_after(BUSY_RETRY_AFTER));
    };
    // The loaded rules are let go at once, not held across the hook's check.
    let decision = gate.acl.load().decide(identity, &request.room);
    let peer_class = match decision {
        Decision::Deny(why) => {
            info!(reason = %why, path = %request.path, "ACL: refused");
            return Err(Refusal::status(403, "this certificate may not join this room", path));
        }
        Decision::Allow { peer_class } => peer_class,
    };
    if let Some(hook) = &gate.auth_hook {
        let subject = Subject {
            identity,
            peer: peer.ip(),
            target: &request.target,
            room: request.room.as_str(),
            headers: &request.headers,
        };
        let answer = hook.check(&subject).await;
        gate.metrics.auth_hook_checked(answer.label());
        match answer.verdict {
            Verdict::Allow => {}
            Verdict::Deny(status) => {
                info!(hook_status = status, cached = answer.cached, path = %request.path, "authorization hook: refused");
                return Err(Refusal::status(403, "refused by the authorization service", path));
            }
            Verdict::Unavailable(why) => {
                warn!(reason = %why, path = %request.path, "authorization hook unavailable: refused (fail closed)");
                return Err(Refusal::status(503, "authorization service unavailable: try again later", path)
                    .retry_after(BUSY_RETRY_AFTER));
            }
        }
    }
    let max_peers = gate.config.max_peers;
    let space = match hub.registry.space(&request.room, &identity.fingerprint) {
        (Space::Free, None) => hub
            .nodes
            .space(&request.room, &identity.fingerprint, max_peers)
            .await
            .map(|(space, holder)| (space, holder.map(Holder::Elsewhere))),
        local => Ok(local),
    };
    let holder = match space {
        Ok((Space::Free, holder)) => holder,
        Ok((Space::RoomFull, _)) => return Err(Refusal::status(409, "room full", path)),
        Ok((Space::TooManyRooms, _)) => {
            return Err(
                Refusal::status(503, "too many rooms: try again later", path).retry_after(BUSY_RETRY_AFTER)
            );
        }
        Err(why) => {
            warn!(reason = %why, path = %request.path, "cluster presence unreachable: refused");
            return Err(Refusal::status(503, "cluster unavailable: try again later", path)
                .retry_after(BUSY_RETRY_AFTER));
        }
    };
    let may_replace = match holder {
        Some(holder) => same_identity::resolve(gate, hub, holder, identity, peer, request).await?,
        // A member with this certificate may still join before this one's HELLO: in replace
        // mode it is replaced then too, as it would have been now.
        None if gate.config.same_identity == SameIdentity::Replace => MayReplace::Anyone,
        None => MayReplace::Nobody,
    };
    Ok(Pass { peer_class, slot, may_replace })
}
