//! The node's side of publishing: notes go into the outbox (`outbox.rs`), and one task takes
//! them out in order, in batches, and publishes one numbered packet per receiving node, the
//! packets of a batch at once. What could not be published is counted lost, and the members
//! whose frames it carried are told (`loss.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tracing::{debug, warn};

use super::{BATCH, RedisBackplane};
use crate::cluster::direct::Published;
use crate::cluster::loss::{self, Loss};
use crate::cluster::outbox::Queued;
use crate::cluster::wire::{Note, encode_packet};
use crate::rooms::hub::Hub;
use crate::rooms::id::NodeId;

impl RedisBackplane {
    /// Queues a note to the inboxes of `nodes`, in that order (the last takes the note, the
    /// others a copy: reference counts).
    pub(super) fn send(&self, nodes: &[NodeId], note: Note) {
        if let Some((last, others)) = nodes.split_last() {
            for node in others {
                self.enqueue(node, Some(note.clone()));
            }
            self.enqueue(last, Some(note));
        }
    }

    /// Queues a note (`None`: the heartbeat) for `node`; counts it lost when the outbox is
    /// full.
    pub(super) fn enqueue(&self, node: &NodeId, note: Option<Note>) {
        let heartbeat = note.is_none();
        if self.outbox.push(node, note).is_err() && !heartbeat {
            self.lost.fetch_add(1, Ordering::Relaxed);
            warn!(node = %node, "outbox to other nodes full: note lost");
        }
    }

    /// Publishes queued notes in order, in batches, forever.
    pub(super) async fn publish(&self, hub: &Hub) {
        let mut batch = Vec::with_capacity(BATCH);
        // Each receiving node's inbox channel, named once, and the number of its last packet.
        let mut inboxes: HashMap<NodeId, (Arc<str>, u64)> = HashMap::new();
        let mut outlet = self.link.outlet();
        loop {
            let taken = self.outbox.take(&mut batch, BATCH).await;
            let by_node = by_node(&batch);
            let sent: Vec<(Arc<str>, Bytes)> = by_node
                .iter()
                .map(|(node, notes)| {
                    let (channel, number) =
                        inboxes.entry((*node).clone()).or_insert_with(|| (self.inbox(node).into(), 0));
                    *number += 1;
                    (Arc::clone(channel), encode_packet(&self.node, *number, notes))
                })
                .collect();
            let results = outlet.publish(&sent).await;
            drop(sent);
            for ((node, notes), result) in by_node.into_iter().zip(results) {
                self.settle(hub, node, &notes, result).await;
            }
            batch.clear();
            self.outbox.done(taken);
        }
    }

    /// Counts what became of the packet of `notes` to `node`, and tells the members whose
    /// frames it lost.
    async fn settle(&self, hub: &Hub, node: &NodeId, notes: &[&Note], result: Published) {
        let n = notes.len() as u64;
        let (error, loss) = match result {
            // The heartbeat: whether it comes back is the inbox's to see.
            _ if *node == self.node && n == 0 => return,
            Published::Received(0) => {
                // No node was subscribed to receive it: its node is gone, or was between
                // subscriptions.
                self.lost.fetch_add(n, Ordering::Relaxed);
                if n > 0 {
                    debug!(node = %node, notes = n, "notes published to an inbox nobody listens on: lost");
                    let told = loss::tell_senders(hub, node, notes, Loss::Certain).await;
                    self.notices.fetch_add(told, Ordering::Relaxed);
                }
                return;
            }
            Published::Received(_) => {
                self.published.fetch_add(n, Ordering::Relaxed);
                return;
            }
            Published::NotSent(e) => (e, Loss::Certain),
            Published::Unanswered(e) => (e, Loss::Unconfirmed),
        };
        self.lost.fetch_add(n, Ordering::Relaxed);
        if n > 0 {
            warn!(error = %error, node = %node, notes = n, "cannot publish to another node: notes lost");
            let told = loss::tell_senders(hub, node, notes, loss).await;
            self.notices.fetch_add(told, Ordering::Relaxed);
        }
    }
}

/// The notes of `batch` grouped by receiving node: the nodes in the order they first appear,
/// each node's notes in their order. The notes stay where they are (a note is larger than a
/// reference to it). A heartbeat (`None`) makes its node's packet without adding a note to it.
fn by_node(batch: &[Queued]) -> Vec<(&NodeId, Vec<&Note>)> {
    let mut grouped: Vec<(&NodeId, Vec<&Note>)> = Vec::new();
    for (node, note) in batch {
        let i = match grouped.iter().position(|(n, _)| *n == node) {
            Some(i) => i,
            None => {
                grouped.push((node, Vec::with_capacity(batch.len())));
                grouped.len() - 1
            }
        };
        if let Some(note) = note {
            grouped[i].1.push(note);
        }
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probed(probe: u64) -> Option<Note> {
        Some(Note::Probed { probe, alive: true })
    }

    #[test]
    fn a_batch_is_grouped_by_node_in_order() {
        let (a, b) = (NodeId::new("a"), NodeId::new("b"));
        let batch =
            vec![(a.clone(), probed(1)), (b.clone(), probed(2)), (a.clone(), probed(3)), (b.clone(), None)];
        let [one, two, three] = [1, 2, 3].map(|n| probed(n).unwrap());
        assert_eq!(by_node(&batch), vec![(&a, vec![&one, &three]), (&b, vec![&two])]);
    }

    #[test]
    fn a_heartbeat_alone_is_a_packet_with_no_notes() {
        let me = NodeId::new("me");
        assert_eq!(by_node(&[(me.clone(), None)]), vec![(&me, Vec::new())]);
    }
}
