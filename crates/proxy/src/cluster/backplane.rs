//! What a node shares with the other nodes, as the daemon runs it: the rooms' interface to the
//! other nodes ([`Nodes`]), and the node's own work while it serves (publishing, its inbox,
//! refreshing presence), its health and its counts.

use std::sync::Arc;

use crate::metrics::ClusterTotals;
use crate::rooms::hub::Hub;
use crate::rooms::nodes::{BoxFuture, Nodes};

/// The other nodes, and the work of keeping in touch with them.
pub(crate) trait Backplane: Nodes {
    /// Whether presence and the inboxes can be reached now.
    fn healthy(&self) -> bool;

    /// The node's own work while it serves; it carries the other nodes' notes to `hub`'s rooms.
    fn run(self: Arc<Self>, hub: Arc<Hub>) -> BoxFuture<'static, ()>;

    /// Resolves once every queued note is published (bounded in time), so that the
    /// departures of a drain reach the other nodes.
    fn drain(&self) -> BoxFuture<'_, ()>;

    /// Reachability, and the notes published, lost and missed so far.
    fn totals(&self) -> ClusterTotals;
}
