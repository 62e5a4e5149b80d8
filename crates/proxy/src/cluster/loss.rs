//! Frames lost between nodes, and who is told (docs/protocol.md, "Frames lost between nodes").
//!
//! A node numbers the packets it publishes to each other node; the receiving node keeps the
//! last number from each ([`Numbers`]) and, finding numbers skipped, tells the local members of
//! the rooms it shares with the sending node ([`tell_missed`]). The sending node tells each of
//! its members whose frame could not be published ([`tell_senders`]), or found its outbox full
//! ([`Refusals`]), in response to the frame. All are `CONN:ERROR` 503s, delivered like any
//! frame from another node (never waiting).

use std::sync::{Mutex, PoisonError};

use micronets_message::{Header, MessageId};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tracing::warn;

use super::recent::Recent;
use super::wire::{Note, RoomNote};
use crate::rooms::fanout::{self, Sender};
use crate::rooms::hub::Hub;
use crate::rooms::id::{ConnId, NodeId, RoomId};

/// What a packet's number says, next to the last one seen from its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// The one after the last (or a node's first, numbered 1).
    Next,
    /// `missed` packets before this one never arrived.
    After { missed: u64 },
    /// Numbered at or below the last one seen: a late or repeated packet. Carrying it out
    /// would deliver its frames out of order, or twice.
    Stale,
}

/// The last packet number seen from each node (0 for none yet), for the nodes heard from most
/// recently (`recent.rs`).
#[derive(Default)]
pub(crate) struct Numbers {
    last: Recent<u64>,
}

impl Numbers {
    /// Notes the arrival of packet `number` from `origin`. A node numbers its packets to each
    /// other node from 1, so a first packet numbered above 1 follows lost ones, and a packet
    /// numbered 1 after others means the sending node numbers them again (it had forgotten
    /// this node: see `redis/publisher.rs`).
    pub(crate) fn arrived(&mut self, origin: &NodeId, number: u64) -> Arrival {
        let last = self.last.get(origin, || 0);
        let previous = *last;
        if number > previous || number == 1 {
            *last = number;
        }
        if number == 1 || previous.checked_add(1) == Some(number) {
            Arrival::Next
        } else if number <= previous {
            Arrival::Stale
        } else {
            // Above `previous + 1` here: nothing overflows.
            Arrival::After { missed: number - previous - 1 }
        }
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
pub(crate) fn tell_senders(hub: &Hub, node: &NodeId, notes: &[&Note], loss: Loss) -> u64 {
    let reason = match loss {
        Loss::Certain => format!("not relayed to the members on node {node}: the cluster could not carry it"),
        Loss::Unconfirmed => {
            format!("may not have reached the members on node {node}: the cluster did not confirm it")
        }
    };
    let mut told = 0;
    for note in notes {
        if let Note::Room(RoomNote::Frame { room, conn, frame, .. }) = note {
            told += u64::from(tell_sender(hub, room.as_str(), *conn, message_id(frame), &reason));
        }
    }
    told
}

/// Frames the outbox refused, waiting for their senders to be told, at most: the task that
/// tells them takes them as they come, so the list stays short; this bounds it should that
/// task fall behind.
const REFUSALS: usize = 65_536;

/// A member's frame the outbox had no room for: whom to tell, in response to what.
struct Refusal {
    room: RoomId,
    conn: ConnId,
    id: Option<MessageId<'static>>,
}

/// The frames the outbox refused (it was full), until a task of the node tells their senders
/// ([`Refusals::tell`]): a frame is refused where nothing may wait, sometimes with its room
/// locked (a held frame handed on), so its sender cannot be told there.
#[derive(Default)]
pub(crate) struct Refusals {
    waiting: Mutex<Vec<Refusal>>,
    added: Notify,
}

/// The outbox refused more frames than [`Refusals`] keeps: this one's sender is not told.
#[derive(Debug)]
pub(crate) struct Untold;

impl Refusals {
    /// Keeps `frame`, from the local member `conn` of `room`, for its sender to be told.
    ///
    /// # Errors
    /// [`Untold`]: the list is at its bound.
    pub(crate) fn add(&self, room: &RoomId, conn: ConnId, frame: &Message) -> Result<(), Untold> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if waiting.len() >= REFUSALS {
            return Err(Untold);
        }
        waiting.push(Refusal { room: room.clone(), conn, id: message_id(frame) });
        drop(waiting);
        // A permit is kept if the task is not waiting yet: no refusal waits for the next one.
        self.added.notify_one();
        Ok(())
    }

    /// Waits for refused frames and tells their senders (those still here); returns how many
    /// were told.
    pub(crate) async fn tell(&self, hub: &Hub) -> u64 {
        self.added.notified().await;
        let refused = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(PoisonError::into_inner));
        let reason = "not relayed to the members on other nodes: this node's queue to them is full";
        let told = refused.into_iter().map(|r| tell_sender(hub, r.room.as_str(), r.conn, r.id, reason));
        told.filter(|&told| told).count() as u64
    }
}

/// The `messageId` of a member's frame, for the notice that answers it.
fn message_id(frame: &Message) -> Option<MessageId<'static>> {
    match frame {
        Message::Text(text) => {
            Header::parse(text.as_str()).ok().and_then(|h| h.message_id.map(MessageId::into_owned))
        }
        _ => None,
    }
}

/// Tells the local member `conn` of `room` that its frame `id` did not reach other nodes, for
/// `reason`, without waiting. Returns whether the member was still there to be told.
fn tell_sender(hub: &Hub, room: &str, conn: ConnId, id: Option<MessageId<'static>>, reason: &str) -> bool {
    let Some((mailbox, _)) = hub.registry.room(room).and_then(|r| r.local_member(conn)) else {
        return false;
    };
    hub.metrics.conn_error_sent(503);
    fanout::notify(hub, &mailbox, hub.replies.error(503, reason, id));
    true
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
    use crate::cluster::recent::NODES;

    #[test]
    fn numbers_skipped_are_counted_from_each_node_numbering_from_one() {
        let mut numbers = Numbers::default();
        let (a, b, c) = (NodeId::new("a-1"), NodeId::new("b-2"), NodeId::new("c-3"));
        assert_eq!(numbers.arrived(&a, 1), Arrival::Next, "a node's first packet");
        assert_eq!(numbers.arrived(&a, 2), Arrival::Next);
        assert_eq!(numbers.arrived(&b, 1), Arrival::Next, "each node has its own numbers");
        assert_eq!(numbers.arrived(&a, 5), Arrival::After { missed: 2 });
        assert_eq!(numbers.arrived(&a, 6), Arrival::Next);
        assert_eq!(numbers.arrived(&c, 4), Arrival::After { missed: 3 }, "the first three never came");
    }

    #[test]
    fn late_and_repeated_packets_are_stale_and_do_not_move_the_count_back() {
        let mut numbers = Numbers::default();
        let a = NodeId::new("a-1");
        assert_eq!(numbers.arrived(&a, 1), Arrival::Next);
        assert_eq!(numbers.arrived(&a, 3), Arrival::After { missed: 1 });
        assert_eq!(numbers.arrived(&a, 2), Arrival::Stale, "late: after its successor");
        assert_eq!(numbers.arrived(&a, 3), Arrival::Stale, "repeated");
        assert_eq!(numbers.arrived(&a, 4), Arrival::Next, "the late one did not set the count back");
        assert_eq!(numbers.arrived(&a, 1), Arrival::Next, "numbered again from 1");
        assert_eq!(numbers.arrived(&a, 2), Arrival::Next);
    }

    #[test]
    fn the_largest_number_neither_overflows_nor_counts_a_gap_after_it() {
        let mut numbers = Numbers::default();
        let a = NodeId::new("a-1");
        assert_eq!(numbers.arrived(&a, u64::MAX), Arrival::After { missed: u64::MAX - 1 });
        assert_eq!(numbers.arrived(&a, u64::MAX), Arrival::Stale);
    }

    #[test]
    fn the_node_heard_from_least_recently_is_forgotten_beyond_the_bound() {
        let mut numbers = Numbers::default();
        let node = |n: usize| NodeId::new(&format!("n-{n}"));
        for n in 0..NODES {
            assert_eq!(numbers.arrived(&node(n), 1), Arrival::Next);
        }
        assert_eq!(numbers.arrived(&node(0), 2), Arrival::Next, "n-0 heard from again");
        assert_eq!(numbers.arrived(&node(NODES), 1), Arrival::Next);
        assert_eq!(numbers.last.len(), NODES);
        assert!(numbers.last.contains(&node(0)));
        assert!(!numbers.last.contains(&node(1)), "the least recently heard from went");
    }
}
