//! A room's members on other nodes, seen from here: bringing the room's view of them in line
//! with a reading of presence (telling the local members of each change), and sending what was
//! held for a member to come to the nodes of the members that came.

use tracing::warn;

use super::fanout::{self, Sender};
use super::hold::Held;
use super::hub::Hub;
use super::id::{NodeId, RoomId};
use super::remote::Card;
use super::room::{Room, Synced};

/// Brings a local room's view of the other nodes' members in line with a reading of
/// presence, telling the local members of each change (the periodic refresh: one reading at a
/// time, so a member missing from two in a row is gone).
pub(crate) async fn resync(hub: &Hub, room: &Room, live: Vec<Card>) {
    let synced = room.sync_remote(live, &mut |nodes, held| send_held(hub, room.id(), nodes, held));
    tell(hub, room, synced).await;
}

/// Learns from a reading of presence made at a member's join the members elsewhere this node
/// did not know, and tells the local members; forgets none, since several such readings may be
/// in flight at once and older than the notes this node has had meanwhile.
pub(crate) async fn learn(hub: &Hub, room: &Room, live: Vec<Card>) {
    let learnt = room.learn_remote(live, &mut |nodes, held| send_held(hub, room.id(), nodes, held));
    tell(hub, room, learnt).await;
}

/// Tells the local members who left (`CONN:PEER-LEFT`, "node lost") and who came (their HELLO).
async fn tell(hub: &Hub, room: &Room, synced: Synced) {
    for card in synced.gone {
        warn!(room = %room.id(), node = %card.node, "a member's node stopped refreshing its presence: forgotten");
        let left = hub.replies.peer_left(&card.name, "node lost");
        fanout::deliver_all(hub, &synced.receivers, left, Sender::OtherNode).await;
    }
    for card in synced.new {
        fanout::deliver_all(hub, &synced.receivers, card.hello, Sender::OtherNode).await;
    }
}

/// Sends what was held for a member to come to the nodes of the members that came.
pub(crate) fn send_held(hub: &Hub, room: &RoomId, nodes: &[NodeId], held: Vec<Held>) {
    for message in held {
        hub.nodes.send_frame(nodes, room, message.from, message.frame);
    }
}
