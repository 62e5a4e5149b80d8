//! The other nodes, as this node's rooms see them: [`Nodes`] is what a member asks of them (a
//! place in a room cluster-wide) and what it tells them (its frames, its joining and leaving).
//! The cluster implements it: with nobody (`cluster/local.rs`, a single node) or through Redis
//! (`cluster/redis.rs`). How the cluster carries these notes is its own business.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;

use super::id::{ConnId, NodeId, RoomId};
use super::registry::Space;
use super::remote::{Card, MayReplace, MemberKey, NewView};
use crate::identity::Fingerprint;

/// A boxed future, for the trait's asynchronous methods.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why the other nodes could not be asked (cluster mode: Redis is unreachable, or answered
/// what it should not have).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub(crate) struct Unreachable(pub(crate) Box<dyn std::error::Error + Send + Sync>);

/// Why the cluster could not take a member.
#[derive(Debug)]
pub(crate) enum JoinError {
    /// The room is full cluster-wide.
    Full,
    /// A member elsewhere has the newcomer's certificate, and the newcomer may not replace it.
    Conflict,
    /// The other nodes cannot be asked.
    Unreachable(Unreachable),
}

/// What a join found: the room's members on other nodes, and the member elsewhere it replaced.
#[derive(Debug, Default)]
pub(crate) struct Roster {
    pub(crate) others: Vec<Card>,
    pub(crate) replaced: Option<Card>,
}

/// The other nodes. Nothing here waits on a peer: what is told is queued.
pub(crate) trait Nodes: Send + Sync {
    /// This node's name.
    fn node(&self) -> &NodeId;

    /// Makes a room's view of its members elsewhere, when it learns of the first.
    fn view_maker(&self) -> NewView;

    /// Whether the room has a place cluster-wide for a newcomer with this certificate (its
    /// place counts as free when a member has the same certificate), and that member.
    fn space<'a>(
        &'a self,
        room: &'a RoomId,
        fingerprint: &'a Fingerprint,
        max_peers: usize,
    ) -> BoxFuture<'a, Result<(Space, Option<MemberKey>), Unreachable>>;

    /// Takes a place for a local member in one atomic step: capacity, and the removal of the
    /// member with its certificate when `may_replace` covers it.
    fn join<'a>(
        &'a self,
        room: &'a RoomId,
        card: &'a Card,
        max_peers: usize,
        may_replace: &'a MayReplace,
    ) -> BoxFuture<'a, Result<Roster, JoinError>>;

    /// The live members of `room` on other nodes, read once more after a member joined it here
    /// (`None` on a single node, or when the read fails: the periodic refresh does it later).
    /// Those whose join note reached this node before the room had this member (two joins at
    /// once on two nodes) are learnt from it.
    fn live_elsewhere<'a>(&'a self, room: &'a RoomId) -> BoxFuture<'a, Option<Vec<Card>>>;

    /// Asks the node of member `who` of `room` whether it answers a probe within `timeout`
    /// (a newcomer at `newcomer` has its certificate); `false` when its node does not answer
    /// in time either.
    fn probe<'a>(
        &'a self,
        who: &'a MemberKey,
        room: &'a RoomId,
        newcomer: SocketAddr,
        timeout: Duration,
    ) -> BoxFuture<'a, bool>;

    /// Gives a local member's place back.
    fn leave<'a>(&'a self, room: &'a RoomId, conn: ConnId) -> BoxFuture<'a, ()>;

    /// A member's frame, for the members of `room` on `nodes`. Notes to one node keep their
    /// order. The frame is taken: a caller with local receivers too keeps a copy (a reference
    /// count), one without gives it away, which spares its buffer a shared header.
    fn send_frame(&self, nodes: &[NodeId], room: &RoomId, from: ConnId, frame: Message);

    /// A member joined `room` here.
    fn send_joined(&self, nodes: &[NodeId], room: &RoomId, card: &Card);

    /// A member left `room`, for `reason`.
    fn send_left(&self, nodes: &[NodeId], room: &RoomId, who: &MemberKey, reason: &str);

    /// Asks `node` to close its member `conn` of `room`: a newer connection with its
    /// certificate joined here, and waits for its departure.
    fn send_replace(&self, node: &NodeId, room: &RoomId, conn: ConnId);
}
