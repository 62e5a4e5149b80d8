//! A single node: nobody else, nothing shared. Every room is whole in this process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;

use super::backplane::Backplane;
use super::view::new_view;
use crate::identity::Fingerprint;
use crate::metrics::ClusterTotals;
use crate::rooms::hub::Hub;
use crate::rooms::id::{ConnId, NodeId, RoomId};
use crate::rooms::nodes::{BoxFuture, JoinError, Nodes, Roster, Unreachable};
use crate::rooms::registry::Space;
use crate::rooms::remote::{Card, MayReplace, MemberKey, NewView};

/// One node, nothing shared.
pub(crate) struct Local {
    node: NodeId,
}

impl Default for Local {
    fn default() -> Self {
        Local { node: NodeId::new("local") }
    }
}

impl Nodes for Local {
    fn node(&self) -> &NodeId {
        &self.node
    }

    fn view_maker(&self) -> NewView {
        // Never called: a single node learns of no member elsewhere.
        new_view
    }

    fn space<'a>(
        &'a self,
        _: &'a RoomId,
        _: &'a Fingerprint,
        _: usize,
    ) -> BoxFuture<'a, Result<(Space, Option<MemberKey>), Unreachable>> {
        Box::pin(std::future::ready(Ok((Space::Free, None))))
    }

    fn join<'a>(
        &'a self,
        _: &'a RoomId,
        _: &'a Card,
        _: usize,
        _: &'a MayReplace,
    ) -> BoxFuture<'a, Result<Roster, JoinError>> {
        Box::pin(std::future::ready(Ok(Roster::default())))
    }

    /// A single node knows no member elsewhere.
    fn live_elsewhere<'a>(&'a self, _: &'a RoomId) -> BoxFuture<'a, Option<Vec<Card>>> {
        Box::pin(std::future::ready(None))
    }

    /// Never asked: a single node knows no member elsewhere.
    fn probe<'a>(
        &'a self,
        _: &'a MemberKey,
        _: &'a RoomId,
        _: SocketAddr,
        _: Duration,
    ) -> BoxFuture<'a, bool> {
        Box::pin(std::future::ready(false))
    }

    fn leave<'a>(&'a self, _: &'a RoomId, _: ConnId) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    // A single node knows no other node, so nothing routes a note to one.
    fn send_frame(&self, nodes: &[NodeId], _: &RoomId, _: ConnId, _: Message) {
        debug_assert!(nodes.is_empty(), "a single node has no other node to send to");
    }

    fn send_joined(&self, nodes: &[NodeId], _: &RoomId, _: &Card) {
        debug_assert!(nodes.is_empty(), "a single node has no other node to send to");
    }

    fn send_left(&self, nodes: &[NodeId], _: &RoomId, _: &MemberKey, _: &str) {
        debug_assert!(nodes.is_empty(), "a single node has no other node to send to");
    }

    fn send_replace(&self, _: &NodeId, _: &RoomId, _: ConnId) {}
}

impl Backplane for Local {
    fn healthy(&self) -> bool {
        true
    }

    fn run(self: Arc<Self>, _: Arc<Hub>) -> BoxFuture<'static, ()> {
        Box::pin(std::future::pending())
    }

    fn drain(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    fn totals(&self) -> ClusterTotals {
        ClusterTotals { up: true, ..ClusterTotals::default() }
    }
}
