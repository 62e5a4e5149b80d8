//! What this node does with the notes other nodes send to its inbox: each becomes deliveries
//! to the local members of a room (through the same fan-out as a local member's frames), or a
//! change of the room's view of its members elsewhere.

use tracing::debug;

use tokio_tungstenite::tungstenite::Message;

use super::wire::{FrameNote, RoomNote};
use crate::error::Close;
use crate::metrics::FrameKind;
use crate::rooms::elsewhere::send_held;
use crate::rooms::fanout::{self, Sender};
use crate::rooms::hub::Hub;
use crate::rooms::id::ConnId;
use crate::rooms::mailbox::Mailbox;

/// Delivers a member's frame from another node (read in place, `wire.rs`) to the local
/// members of its room. `receivers` is the inbox's list to fill, kept from one frame to the
/// next so that a frame costs no allocation for it.
pub(crate) async fn frame(hub: &Hub, note: FrameNote, receivers: &mut Vec<Mailbox>) {
    to_room(hub, note.room.as_str(), note.origin.as_str(), note.conn, note.frame, receivers).await;
}

/// Queues `frame`, from member `conn` on node `origin`, to the local members of `room`.
async fn to_room(
    hub: &Hub,
    room: &str,
    origin: &str,
    conn: ConnId,
    frame: Message,
    receivers: &mut Vec<Mailbox>,
) {
    let Some(room) = hub.registry.room(room) else {
        debug!(room, origin, conn = %conn, "frame for a room with no member here");
        return;
    };
    room.local_mailboxes(receivers);
    let flow = hub.metrics.relayed.of(FrameKind::of(&frame));
    flow.add(receivers.len() as u64, (frame.len() * receivers.len()) as u64);
    fanout::deliver_all(hub, receivers, frame, Sender::OtherNode).await;
    receivers.clear();
}

/// Carries out a note from another node. Nothing here waits: a local member that does not
/// keep up is closed (see `rooms/fanout.rs`), and the node's inbox goes on.
pub(crate) async fn apply(hub: &Hub, note: RoomNote, receivers: &mut Vec<Mailbox>) {
    match note {
        RoomNote::Frame { room, origin, conn, frame } => {
            to_room(hub, room.as_str(), origin.as_str(), conn, frame, receivers).await;
        }
        RoomNote::Joined { room, card } => {
            let Some(room) = hub.registry.room(room.as_str()) else { return };
            let hello = card.hello.clone();
            if let Some(receivers) =
                room.add_remote(card, &mut |nodes, held| send_held(hub, room.id(), nodes, held))
            {
                fanout::deliver_all(hub, &receivers, hello, Sender::OtherNode).await;
            }
        }
        RoomNote::Left { room, who, reason } => {
            let Some(room) = hub.registry.room(room.as_str()) else { return };
            if let Some((card, receivers)) = room.remove_remote(&who) {
                let left = hub.replies.peer_left(&card.name, &reason);
                fanout::deliver_all(hub, &receivers, left, Sender::OtherNode).await;
            }
        }
        RoomNote::Replace { room, conn, by } => {
            if let Some(mailbox) =
                hub.registry.room(room.as_str()).and_then(|r| r.replace_local(conn, Some(&by)))
            {
                mailbox.kill(Close::Replaced);
            }
        }
    }
}
