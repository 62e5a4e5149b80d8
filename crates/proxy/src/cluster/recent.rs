//! What this node keeps per other node where other nodes (or forged packets) decide how many
//! there are: the numbers of the packets it receives (`loss.rs`) and of those it publishes
//! (`redis/publisher.rs`). Bounded: past the bound, the node used least recently is forgotten
//! (a name from a flood, or of a node long gone: every restart gives a node a new name).

use std::collections::HashMap;

use crate::rooms::id::NodeId;

/// Nodes kept, at most: far more than a cluster has, counting the names its nodes had before
/// their restarts.
pub(crate) const NODES: usize = 4096;

/// A value per node, for the [`NODES`] used most recently.
pub(crate) struct Recent<V> {
    /// Each node's value, and when it was last used (in uses).
    entries: HashMap<NodeId, (V, u64)>,
    uses: u64,
}

impl<V> Default for Recent<V> {
    fn default() -> Self {
        Recent { entries: HashMap::new(), uses: 0 }
    }
}

impl<V> Recent<V> {
    /// `node`'s value, made by `new` if it has none (forgetting the node used least recently
    /// when [`NODES`] are kept).
    pub(crate) fn get(&mut self, node: &NodeId, new: impl FnOnce() -> V) -> &mut V {
        self.uses += 1;
        if self.entries.len() >= NODES && !self.entries.contains_key(node) {
            let oldest = self.entries.iter().min_by_key(|(_, (_, used))| *used).map(|(node, _)| node.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        let (value, used) = self.entries.entry(node.clone()).or_insert_with(|| (new(), 0));
        *used = self.uses;
        value
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, node: &NodeId) -> bool {
        self.entries.contains_key(node)
    }
}
