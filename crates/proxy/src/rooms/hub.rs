//! What this node's members share: the configuration, the registry of rooms, the other nodes,
//! the counters, the proxy's reply numbering, and the shutdown signal and task tracker that
//! every member's tasks run under.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::hold::HoldLimits;
use super::nodes::Nodes;
use super::registry::Registry;
use super::replies::Replies;
use crate::config::Config;
use crate::metrics::Metrics;

/// The rooms of this node and what relaying needs.
pub(crate) struct Hub {
    pub(crate) config: Arc<Config>,
    pub(crate) registry: Registry,
    /// The other nodes (nobody, on a single node).
    pub(crate) nodes: Arc<dyn Nodes>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) replies: Replies,
    /// Cancelled when the node stops: members close with 1001.
    pub(crate) shutdown: CancellationToken,
    /// Every connection's tasks, so that a drain can wait for them.
    pub(crate) tracker: TaskTracker,
}

impl Hub {
    /// No rooms yet.
    pub(crate) fn new(config: Arc<Config>, nodes: Arc<dyn Nodes>, metrics: Arc<Metrics>) -> Self {
        Hub {
            registry: Registry::new(config.max_peers, config.max_rooms, nodes.view_maker()),
            config,
            nodes,
            metrics,
            replies: Replies::default(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }

    /// The hold buffer's limits.
    pub(crate) fn hold_limits(&self) -> HoldLimits {
        HoldLimits {
            max_messages: self.config.hold_max_messages,
            max_bytes: self.config.hold_max_bytes,
            max_age: self.config.hold_max_age,
        }
    }
}
