//! Rooms across nodes (design.md section 8). A [`Backplane`] tells this node who else is in a
//! room on other nodes, and carries notes (frames, joins, departures) to those nodes.
//!
//! - [`Local`], the default, is a single node: there is no one elsewhere, and every room is
//!   whole in this process.
//! - [`redis::RedisBackplane`] keeps presence in Redis (TTL-refreshed entries, joins checked
//!   and inserted by one Lua script) and gives each node one inbox channel: a member's frame is
//!   published once to each node that hosts another member of its room.
//!
//! Each room on this node keeps the members on other nodes next to its own ([`crate::room`]),
//! so routing a frame, the hold buffer and the 409 check see the whole room without asking
//! Redis per frame. [`apply`] turns the notes other nodes send into deliveries to local
//! members.

mod link;
mod presence;
pub(crate) mod redis;
pub(crate) mod view;
pub(crate) mod wire;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tracing::{debug, warn};

use tokio_tungstenite::tungstenite::Message;

use crate::Shared;
use crate::identity::Fingerprint;
use crate::metrics::{FrameKind, Metrics};
use crate::registry::Space;
use crate::relay::{Delivery, Mailbox};
use crate::room::{Room, RoomId};
use wire::{Card, Note};

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub(crate) use presence::Roster;

/// Why Redis could not be used for a command.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BackplaneError {
    #[error(transparent)]
    Redis(#[from] ::redis::RedisError),
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("cannot read {}: {source}", path.display())]
    CaFile { path: std::path::PathBuf, source: std::io::Error },
    #[error("unexpected reply from the join script")]
    Reply,
}

/// Why the cluster could not take a member.
#[derive(Debug)]
pub(crate) enum JoinError {
    /// The room is full cluster-wide.
    Full,
    /// Presence cannot be reached.
    Unavailable(BackplaneError),
}

/// What a node shares with the other nodes.
pub(crate) trait Backplane: Send + Sync {
    /// This node's name in presence and notes.
    fn node(&self) -> &str;

    /// Whether the room has a place cluster-wide for a newcomer with this certificate (its
    /// place counts as free when a member has the same certificate).
    fn space<'a>(
        &'a self,
        room: &'a RoomId,
        fingerprint: &'a Fingerprint,
        max_peers: usize,
    ) -> BoxFuture<'a, Result<Space, BackplaneError>>;

    /// Takes a place for a local member in one atomic step: capacity, and the removal of a
    /// member elsewhere with the same certificate.
    fn join<'a>(
        &'a self,
        room: &'a RoomId,
        card: &'a Card,
        max_peers: usize,
    ) -> BoxFuture<'a, Result<Roster, JoinError>>;

    /// Gives a local member's place back.
    fn leave<'a>(&'a self, room: &'a RoomId, conn: u64) -> BoxFuture<'a, ()>;

    /// Queues a note to the inboxes of `nodes`, in that order. Notes to one node keep their
    /// order.
    fn send(&self, nodes: &[String], note: &Note);

    /// Whether presence and the inboxes can be reached now.
    fn healthy(&self) -> bool;

    /// The node's own work (publishing, its inbox, refreshing presence) while it serves.
    fn run(self: Arc<Self>, shared: Arc<Shared>) -> BoxFuture<'static, ()>;

    /// Resolves once every queued note is published (bounded in time), so that the
    /// departures of a drain reach the other nodes.
    fn drain(&self) -> BoxFuture<'_, ()>;

    /// Notes published to other nodes, and notes lost (not published) so far.
    fn counts(&self) -> (u64, u64);
}

/// One node, nothing shared.
pub(crate) struct Local;

impl Backplane for Local {
    fn node(&self) -> &str {
        "local"
    }

    fn space<'a>(
        &'a self,
        _: &'a RoomId,
        _: &'a Fingerprint,
        _: usize,
    ) -> BoxFuture<'a, Result<Space, BackplaneError>> {
        Box::pin(std::future::ready(Ok(Space::Free)))
    }

    fn join<'a>(&'a self, _: &'a RoomId, _: &'a Card, _: usize) -> BoxFuture<'a, Result<Roster, JoinError>> {
        Box::pin(std::future::ready(Ok(Roster::default())))
    }

    fn leave<'a>(&'a self, _: &'a RoomId, _: u64) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    fn send(&self, nodes: &[String], _: &Note) {
        // A single node knows no other node, so nothing routes a note here.
        debug_assert!(nodes.is_empty(), "a single node has no other node to send to");
    }

    fn healthy(&self) -> bool {
        true
    }

    fn run(self: Arc<Self>, _: Arc<Shared>) -> BoxFuture<'static, ()> {
        Box::pin(std::future::pending())
    }

    fn drain(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    fn counts(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// Carries out a note from another node. Nothing here waits: a local member that does not
/// keep up is closed (see [`Mailbox::deliver_now`]), and the node's inbox goes on.
pub(crate) fn apply(shared: &Shared, note: Note) {
    match note {
        Note::Frame { room, origin, conn, frame } => {
            let Some(room) = shared.registry.room(&room) else {
                debug!(room, origin, conn, "frame for a room with no member here");
                return;
            };
            let receivers = room.local_mailboxes();
            let flow = shared.metrics.relayed.of(FrameKind::of(&frame));
            flow.add(receivers.len() as u64, (frame.len() * receivers.len()) as u64);
            deliver_all(shared, &receivers, &frame);
        }
        Note::Joined { room, card } => {
            let Some(room) = shared.registry.room(&room) else { return };
            let hello = card.hello.clone();
            if let Some(receivers) =
                room.add_remote(card, |nodes, held| send_held(shared, room.id(), nodes, held))
            {
                deliver_all(shared, &receivers, &hello);
            }
        }
        Note::Left { room, node, conn, reason } => {
            let Some(room) = shared.registry.room(&room) else { return };
            if let Some((card, receivers)) = room.remove_remote(&wire::member_field(&node, conn)) {
                deliver_all(shared, &receivers, &shared.peer_left(&card.name, &reason));
            }
        }
        Note::Replace { room, conn, by } => {
            if let Some(mailbox) = shared.registry.room(&room).and_then(|r| r.replace_local(conn, Some(&by)))
            {
                mailbox.kill(crate::Close::Replaced);
            }
        }
    }
}

/// Brings a local room's view of the other nodes' members in line with a reading of
/// presence, telling the local members of each change.
pub(crate) fn resync(shared: &Shared, room: &Room, live: Vec<Card>) {
    let synced = room.sync_remote(live, |nodes, held| send_held(shared, room.id(), nodes, held));
    for card in synced.gone {
        warn!(room = %room.id(), node = card.node, "a member's node stopped refreshing its presence: forgotten");
        deliver_all(shared, &synced.receivers, &shared.peer_left(&card.name, "node lost"));
    }
    for card in &synced.new {
        deliver_all(shared, &synced.receivers, &card.hello);
    }
}

/// Sends what was held for a member to come to the nodes of the members that came.
fn send_held(shared: &Shared, room: &RoomId, nodes: &[String], held: Vec<Message>) {
    let origin = shared.backplane.node().to_owned();
    for frame in held {
        let note = Note::Frame { room: room.to_string(), origin: origin.clone(), conn: 0, frame };
        shared.backplane.send(nodes, &note);
    }
}

/// Queues a frame for local members without waiting; one that stays over its queue's limits
/// for `slow_consumer_timeout` is closed with 1013, as for a local sender.
fn deliver_all(shared: &Shared, receivers: &[Mailbox], frame: &Message) {
    for receiver in receivers {
        if receiver.deliver_now(frame.clone(), shared.config.slow_consumer_timeout) == Delivery::Slow {
            Metrics::inc(&shared.metrics.slow_consumers);
            warn!(
                receiver = receiver.conn().0,
                "slow consumer of another node's frames: closing it with 1013"
            );
            receiver.kill(crate::Close::SlowConsumer);
        }
    }
}
