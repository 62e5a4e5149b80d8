//! The node's side of publishing: notes go into the outbox (`outbox.rs`), and one task takes
//! them out in order, in batches, and publishes one numbered packet per receiving node, the
//! packets of a batch at once. What could not be published is counted lost, and the members
//! whose frames it carried are told (`loss.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tracing::{debug, warn};

use super::{BATCH, RedisBackplane};
use crate::cluster::direct::Published;
use crate::cluster::loss::{self, Loss};
use crate::cluster::outbox::{Full, Queued};
use crate::cluster::recent::Recent;
use crate::cluster::wire::{Note, encode_packet};
use crate::rooms::hub::Hub;
use crate::rooms::id::NodeId;

impl RedisBackplane {
    /// Queues a note to the inboxes of `nodes`, in that order (the last takes the note, the
    /// others a copy: reference counts).
    ///
    /// # Errors
    /// The note, when the outbox had no room for it for one of the nodes (counted lost).
    pub(super) fn send(&self, nodes: &[NodeId], note: Note) -> Result<(), Note> {
        let Some((last, others)) = nodes.split_last() else { return Ok(()) };
        let mut refused = None;
        for node in others {
            if let Err(Full(copy)) = self.enqueue(node, Some(note.clone())) {
                refused = copy;
            }
        }
        match self.enqueue(last, Some(note)) {
            Err(Full(note)) => note.map_or(Ok(()), Err),
            Ok(()) => refused.map_or(Ok(()), Err),
        }
    }

    /// Queues a note that is not a member's frame. One the outbox refuses is counted lost and
    /// nothing more: presence puts right what it said (a join or departure is read at the next
    /// refresh), and a probe not answered times out.
    pub(super) fn send_state(&self, nodes: &[NodeId], note: Note) {
        let _refused = self.send(nodes, note);
    }

    /// Queues a note (`None`: the heartbeat) for `node`; counts it lost when the outbox is
    /// full.
    ///
    /// # Errors
    /// [`Full`], with the note.
    pub(super) fn enqueue(&self, node: &NodeId, note: Option<Note>) -> Result<(), Full> {
        let heartbeat = note.is_none();
        let queued = self.outbox.push(node, note);
        if queued.is_err() && !heartbeat {
            self.lost.fetch_add(1, Ordering::Relaxed);
            warn!(node = %node, "outbox to other nodes full: note lost");
        }
        queued
    }

    /// Publishes queued notes in order, in batches, forever.
    pub(super) async fn publish(&self, hub: &Hub) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut inboxes = Inboxes::default();
        let mut outlet = self.link.outlet();
        loop {
            let taken = self.outbox.take(&mut batch, BATCH).await;
            // A node whose notes the outbox refused sees a number skipped, as if a packet had
            // been lost: it tells its members of the rooms shared with this node.
            for node in &taken.skipped {
                inboxes.of(node, || self.inbox(node)).number += 1;
            }
            let by_node = by_node(&batch);
            let mut numbers = Vec::with_capacity(by_node.len());
            let sent: Vec<(Arc<str>, Bytes)> = by_node
                .iter()
                .map(|(node, notes)| {
                    let inbox = inboxes.of(node, || self.inbox(node));
                    inbox.number += 1;
                    numbers.push(inbox.number);
                    (Arc::clone(&inbox.channel), encode_packet(&self.node, inbox.number, notes))
                })
                .collect();
            let results = outlet.publish(&sent).await;
            drop(sent);
            for (((node, notes), number), result) in by_node.into_iter().zip(numbers).zip(results) {
                self.settle(hub, node, number, &notes, result);
            }
            batch.clear();
            self.outbox.done(taken);
        }
    }

    /// Counts what became of packet `number`, of `notes` to `node`, and tells the members
    /// whose frames it lost.
    fn settle(&self, hub: &Hub, node: &NodeId, number: u64, notes: &[&Note], result: Published) {
        let n = notes.len() as u64;
        if *node == self.node && n == 0 {
            // The heartbeat: whether it comes back is the inbox's to see, from now.
            if matches!(result, Published::Received(_)) {
                self.watch.sent(number);
            }
            return;
        }
        let (error, loss) = match result {
            Published::Received(0) => {
                // No node was subscribed to receive it: its node is gone, or was between
                // subscriptions.
                self.lost.fetch_add(n, Ordering::Relaxed);
                if n > 0 {
                    debug!(node = %node, notes = n, "notes published to an inbox nobody listens on: lost");
                    let told = loss::tell_senders(hub, node, notes, Loss::Certain);
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
            let told = loss::tell_senders(hub, node, notes, loss);
            self.notices.fetch_add(told, Ordering::Relaxed);
        }
    }
}

/// Each receiving node's inbox channel, named once, and the number of its last packet, for
/// the nodes published to most recently (`recent.rs`). A node forgotten has its packets
/// numbered from 1 again, which its inbox takes as the start of a new count (`loss.rs`).
#[derive(Default)]
struct Inboxes(Recent<Inbox>);

struct Inbox {
    channel: Arc<str>,
    number: u64,
}

impl Inboxes {
    /// `node`'s inbox, named by `channel` if it is new.
    fn of(&mut self, node: &NodeId, channel: impl FnOnce() -> String) -> &mut Inbox {
        self.0.get(node, || Inbox { channel: channel().into(), number: 0 })
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
                grouped.push((node, Vec::new()));
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
    use crate::cluster::recent::NODES;

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
    fn inboxes_number_packets_per_node_and_forget_the_least_recently_used() {
        let mut inboxes = Inboxes::default();
        let node = |n: usize| NodeId::new(&format!("n-{n}"));
        let next = |inboxes: &mut Inboxes, n: usize| {
            let inbox = inboxes.of(&node(n), || format!("inbox:n-{n}"));
            inbox.number += 1;
            (inbox.channel.to_string(), inbox.number)
        };
        assert_eq!(next(&mut inboxes, 0), ("inbox:n-0".to_owned(), 1));
        assert_eq!(next(&mut inboxes, 0), ("inbox:n-0".to_owned(), 2));
        for n in 1..NODES {
            assert_eq!(next(&mut inboxes, n).1, 1);
        }
        assert_eq!(next(&mut inboxes, 0).1, 3, "n-0 used again: n-1 is now the oldest");
        assert_eq!(next(&mut inboxes, NODES).1, 1);
        assert_eq!(inboxes.0.len(), NODES);
        assert_eq!(next(&mut inboxes, 0).1, 4, "kept");
        assert_eq!(next(&mut inboxes, 1).1, 1, "forgotten: numbered from 1 again");
    }

    #[test]
    fn a_heartbeat_alone_is_a_packet_with_no_notes() {
        let me = NodeId::new("me");
        assert_eq!(by_node(&[(me.clone(), None)]), vec![(&me, Vec::new())]);
    }
}
