//! Frames lost between nodes, and who is told (docs/protocol.md, "Frames lost between nodes").
//!
//! A node numbers the packets it publishes to each other node; the receiving node keeps the
//! last number from each ([`Numbers`]) and, finding numbers skipped, tells the local members of
//! the rooms it shares with the sending node ([`tell_missed`]). The sending node tells each of
//! its members whose frame could not be published ([`tell_senders`]), in response to the frame.
//! Both are `CONN:ERROR` 503s, delivered like any frame from another node (never waiting).

use std::collections::HashMap;

use micronets_message::{Header, MessageId};
use tokio_tungstenite::tungstenite::Message;
use tracing::warn;

use super::wire::{Note, RoomNote};
use crate::rooms::fanout::{self, Sender};
use crate::rooms::hub::Hub;
use crate::rooms::id::NodeId;

/// The last packet number seen from each node.
#[derive(Default)]
pub(crate) struct Numbers(HashMap<NodeId, u64>);

impl Numbers {
    /// Notes the arrival of packet `number` from `origin`; returns how many packets were
    /// skipped since the last one from it (none for its first).
    pub(crate) fn arrived(&mut self, origin: &NodeId, number: u64) -> Option<u64> {
        let previous = match self.0.get_mut(origin) {
            Some(last) => std::mem::replace(last, number),
            None => {
                self.0.insert(origin.clone(), number);
                return None;
            }
        };
        number.checked_sub(previous + 1).filter(|&missed| missed > 0)
    }
}

/// How sure the sending node is that notes did not reach another node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Loss {
    /// Redis refused them, or no node was listening.
    Certain,
    /// Redis did not answer in time: they may still arrive.
    Unconfirmed,
}

/// Tells each local member whose frame is among `notes` that it did not reach the members on
/// `node`: a `CONN:ERROR` 503 in response to it. Returns how many were told.
pub(crate) async fn tell_senders(hub: &Hub, node: &NodeId, notes: &[&Note], loss: Loss) -> u64 {
    let mut told = 0;
    for note in notes {
        let Note::Room(RoomNote::Frame { room, conn, frame, .. }) = note else {
            continue;
        };
        let Some((mailbox, _)) = hub.registry.room(room.as_str()).and_then(|r| r.local_member(*conn)) else {
            continue;
        };
        let id = match frame {
            Message::Text(text) => {
                Header::parse(text.as_str()).ok().and_then(|h| h.message_id.map(MessageId::into_owned))
            }
            _ => None,
        };
        let reason = match loss {
            Loss::Certain => {
                format!("not relayed to the members on node {node}: the cluster could not carry it")
            }
            Loss::Unconfirmed => {
                format!("may not have reached the members on node {node}: the cluster did not confirm it")
            }
        };
        hub.metrics.conn_error_sent(503);
        let notice = hub.replies.error(503, &reason, id);
        fanout::deliver_all(hub, std::slice::from_ref(&mailbox), notice, Sender::OtherNode).await;
        told += 1;
    }
    told
}

/// Tells the local members of every room shared with `origin` that `missed` packets from it
/// were lost on the way. Returns how many were told.
pub(crate) async fn tell_missed(hub: &Hub, origin: &NodeId, missed: u64) -> u64 {
    warn!(node = %origin, missed, "packets from another node were lost on the way: telling the members of the rooms it shares");
    let reason = format!(
        "frames from the members on node {origin} were lost on the way through the cluster ({missed} batches)"
    );
    let mut told = 0;
    let mut receivers = Vec::new();
    for room in hub.registry.rooms() {
        if !room.remote_nodes().contains(origin) {
            continue;
        }
        let _open = room.local_mailboxes(&mut receivers);
        receivers.iter().for_each(|_| hub.metrics.conn_error_sent(503));
        told += receivers.len() as u64;
        let notice = hub.replies.error(503, &reason, None);
        fanout::deliver_all(hub, &receivers, notice, Sender::OtherNode).await;
    }
    told
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_skipped_are_counted_from_the_second_packet_of_a_node() {
        let mut numbers = Numbers::default();
        let (a, b) = (NodeId::new("a-1"), NodeId::new("b-2"));
        assert_eq!(numbers.arrived(&a, 5), None, "the first from a node sets where it starts");
        assert_eq!(numbers.arrived(&a, 6), None);
        assert_eq!(numbers.arrived(&b, 1), None, "each node has its own numbers");
        assert_eq!(numbers.arrived(&a, 9), Some(2));
        assert_eq!(numbers.arrived(&a, 10), None);
        assert_eq!(numbers.arrived(&a, 10), None, "a number seen again skips nothing");
    }
}
