//! What this node does with the notes other nodes send to its inbox: each becomes deliveries
//! to the local members of a room (through the same fan-out as a local member's frames), or a
//! change of the room's view of its members elsewhere.

use std::sync::Arc;

use tracing::debug;

use tokio_tungstenite::tungstenite::Message;

use super::wire::{FrameNote, RoomNote};
use crate::error::Close;
use crate::metrics::FrameKind;
use crate::rooms::elsewhere::send_held;
use crate::rooms::fanout::{self, Sender};
use crate::rooms::hub::Hub;
use crate::rooms::id::ConnId;
use crate::rooms::mailbox::{Kicks, Mailbox};
use crate::rooms::room::Room;

/// What the inbox keeps from one frame to the next: the list of a room's receivers, filled
/// for each frame (no allocation per frame), and the receivers whose queues it filled while
/// their writers were idle: it writes those queues itself ([`Deliveries::write`], after each
/// packet), as a member's task does for its frames (`rooms/mailbox.rs`), instead of waking
/// each receiver's writer task.
#[derive(Default)]
pub(crate) struct Deliveries {
    receivers: Vec<Mailbox>,
    kicks: Kicks,
    /// The room of the last frame: the frames of a packet mostly go to one room, found in the
    /// registry once. A room is only ever removed from the registry once closed, and a room
    /// of the same name made after it is a new one, so the room kept is the registry's as long
    /// as it is not closed.
    last: Option<Arc<Room>>,
}

impl Deliveries {
    /// Delivers a member's frame from another node (read in place, `wire.rs`) to the local
    /// members of its room.
    pub(crate) async fn frame(&mut self, hub: &Hub, note: FrameNote<'_>) {
        self.deliver(hub, note.room, note.origin, note.conn, note.frame).await;
    }

    /// Writes the queues filled since the last call (or wakes their writers where a write
    /// cannot be made now).
    pub(crate) fn write(&mut self) {
        self.kicks.write();
    }

    /// Queues `frame`, from member `conn` on node `origin`, to the local members of `room`.
    /// Nothing waits: a frame from another node is queued past a receiver's limits for a
    /// while, and a receiver that stays over them is closed (`rooms/fanout.rs`).
    async fn deliver(&mut self, hub: &Hub, room: &str, origin: &[u8], conn: ConnId, frame: Message) {
        let kept = self.last.as_ref().filter(|kept| kept.id().as_str() == room);
        if !kept.is_some_and(|kept| kept.local_mailboxes(&mut self.receivers)) {
            self.last = hub.registry.room(room);
            let Some(found) = &self.last else {
                let origin = String::from_utf8_lossy(origin);
                debug!(room, %origin, conn = %conn, "frame for a room with no member here");
                return;
            };
            let _open = found.local_mailboxes(&mut self.receivers);
        }
        let flow = hub.metrics.relayed.of(FrameKind::of(&frame));
        flow.add(self.receivers.len() as u64, (frame.len() * self.receivers.len()) as u64);
        let kicks = Some(&mut self.kicks);
        if let Some(waiting) = fanout::offer_all(hub, &self.receivers, frame, Sender::OtherNode, kicks) {
            waiting.await;
        }
        self.receivers.clear();
        if self.kicks.due() {
            self.kicks.write();
        }
    }
}

/// Carries out a note from another node. Nothing here waits: a local member that does not
/// keep up is closed (see `rooms/fanout.rs`), and the node's inbox goes on.
pub(crate) async fn apply(hub: &Hub, note: RoomNote, deliveries: &mut Deliveries) {
    match note {
        RoomNote::Frame { room, origin, conn, frame } => {
            deliveries.deliver(hub, room.as_str(), origin.as_str().as_bytes(), conn, frame).await;
        }
        RoomNote::Joined { room, card } => {
            let Some(room) = hub.registry.room(room.as_str()) else { return };
            let hello = card.hello.clone();
            if let Some(receivers) =
                room.add_remote(*card, &mut |nodes, held| send_held(hub, room.id(), nodes, held))
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
