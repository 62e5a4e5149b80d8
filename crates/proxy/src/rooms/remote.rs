//! A room's members on other nodes (cluster mode), as the room sees them: each one's [`Card`],
//! and the [`RemoteView`] that keeps the list right. The room reads the cards (to route a frame,
//! to count members against `max_peers`, to report them) and passes every change through the
//! view; how the view reconciles the sources that race each other (joins, notes, readings of
//! presence) is the cluster's business (`cluster/view.rs`), and how a card travels between
//! nodes is the cluster's wire format (`cluster/wire.rs`). A single node never makes a view.

use std::fmt;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::id::{ConnId, NodeId, PeerName};
use crate::identity::Fingerprint;

/// A member as every node sees it: where it is, who it is, and its HELLO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Card {
    pub(crate) node: NodeId,
    pub(crate) conn: ConnId,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) name: PeerName,
    /// The HELLO frame as the member sent it.
    pub(crate) hello: Message,
}

impl Card {
    /// Which member this card describes.
    pub(crate) fn key(&self) -> MemberKey {
        MemberKey { node: self.node.clone(), conn: self.conn }
    }
}

/// One member of a cluster: its node and its connection there.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct MemberKey {
    pub(crate) node: NodeId,
    pub(crate) conn: ConnId,
}

impl fmt::Display for MemberKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.conn)
    }
}

impl fmt::Debug for MemberKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Which member with its certificate a newcomer may replace when it joins: the edge decides it
/// before the upgrade (`rooms.same_identity`), and the join holds to it, so a member that
/// appeared since is never replaced by a newcomer that did not probe it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum MayReplace {
    /// No member had its certificate: a member with it now is a conflict.
    #[default]
    Nobody,
    /// Whichever member has its certificate (`same_identity = "replace"`).
    Anyone,
    /// This member, found silent.
    Only(MemberKey),
}

impl MayReplace {
    /// Whether the newcomer may replace `who`.
    pub(crate) fn covers(&self, who: &MemberKey) -> bool {
        match self {
            MayReplace::Nobody => false,
            MayReplace::Anyone => true,
            MayReplace::Only(key) => key == who,
        }
    }
}

/// The distinct nodes of `cards`, in order of first appearance.
pub(crate) fn distinct_nodes<'a>(cards: impl IntoIterator<Item = &'a Card>) -> Vec<NodeId> {
    let mut nodes: Vec<NodeId> = Vec::new();
    for card in cards {
        if !nodes.contains(&card.node) {
            nodes.push(card.node.clone());
        }
    }
    nodes
}

/// A room's members on other nodes, kept under the room's lock. Every method is called with
/// that lock held and must not wait.
pub(crate) trait RemoteView: Send + fmt::Debug {
    /// The members known now.
    fn cards(&self) -> &[Card];

    /// A member joined elsewhere; `false` when it is known already or has left.
    fn add(&mut self, card: Card) -> bool;

    /// A member left elsewhere; its card when it was known.
    fn remove(&mut self, who: &MemberKey, now: Instant) -> Option<Card>;

    /// What a join here read from presence: returns the members not known before (the
    /// members here must be given their HELLO); `replaced` is the member the newcomer
    /// replaced, which is dropped (the newcomer tells the others itself).
    fn learn(&mut self, cards: Vec<Card>, replaced: Option<&MemberKey>, now: Instant) -> Vec<Card>;

    /// A reading of presence (`live`): returns the members now forgotten and the members
    /// learnt of.
    fn sync(&mut self, live: Vec<Card>, now: Instant) -> (Vec<Card>, Vec<Card>);

    /// Resolves once the member `who` is reported gone.
    fn departure(&mut self, who: MemberKey) -> oneshot::Receiver<()>;
}

/// Makes the view of a room that learns of a member elsewhere.
pub(crate) type NewView = fn() -> Box<dyn RemoteView>;
