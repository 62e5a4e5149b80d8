//! The registry of rooms: joining, leaving, and the capacity check made before the upgrade.
//!
//! Lock order is always map shard, then room: `join` clones the room out of the map and drops
//! the shard guard before locking the room; `leave` removes an empty room with `remove_if`,
//! whose check (under the room lock) and removal are atomic against a concurrent join, which
//! finds the room marked closed and retries with a fresh one.

use std::sync::Arc;

use dashmap::DashMap;

use crate::cluster::view::distinct_nodes;
use crate::cluster::wire::Card;
use crate::identity::Fingerprint;
use crate::relay::{ConnId, Mailbox};
use crate::room::{Member, PeerName, Room, RoomId};
use crate::status::RoomStatus;

/// All rooms of this node.
pub(crate) struct Registry {
    rooms: DashMap<RoomId, Arc<Room>>,
    max_peers: usize,
    max_rooms: usize,
}

/// Whether a room has a place for a newcomer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Space {
    Free,
    /// The room has `max_peers` members.
    RoomFull,
    /// The room does not exist and `max_rooms` rooms do.
    TooManyRooms,
}

/// What a successful join leaves the newcomer to do.
pub(crate) struct Joined {
    pub(crate) room: Arc<Room>,
    /// The members that were there before (minus a replaced one), to receive the newcomer's
    /// HELLO.
    pub(crate) others: Vec<Mailbox>,
    /// The member with the same certificate that the newcomer replaced.
    pub(crate) replaced: Option<Replaced>,
    /// Members on other nodes that this node learnt of with the join: the members that were
    /// here before must be given their HELLO.
    pub(crate) learned: Vec<Card>,
    /// How many held messages the newcomer was given.
    pub(crate) held_delivered: usize,
    /// Members after the join.
    pub(crate) members: usize,
}

/// A member replaced by a newer connection with the same certificate.
pub(crate) struct Replaced {
    pub(crate) mailbox: Mailbox,
    pub(crate) name: PeerName,
    pub(crate) relay_done: tokio_util::sync::CancellationToken,
}

/// What a leave left behind.
pub(crate) struct Left {
    /// The remaining members, to be told; empty when the leaver was not a member any more.
    pub(crate) others: Vec<Mailbox>,
    /// The other nodes to be told (the replacing node last, when there is one).
    pub(crate) nodes: Vec<String>,
    /// Whether the leaver was still a member (not replaced).
    pub(crate) was_member: bool,
    /// Held messages discarded because the room emptied.
    pub(crate) discarded: usize,
}

impl Registry {
    pub(crate) fn new(max_peers: usize, max_rooms: usize) -> Self {
        Registry { rooms: DashMap::new(), max_peers, max_rooms }
    }

    /// Whether a newcomer with this certificate would find a place in room `id` now: the room
    /// has fewer members than `max_peers` (or one of them has the same certificate), or it does
    /// not exist yet and there are fewer than `max_rooms` rooms. (Concurrent newcomers may open
    /// a few rooms past the limit; `max_connections` still bounds them.)
    pub(crate) fn space(&self, id: &RoomId, fingerprint: &Fingerprint) -> Space {
        let Some(room) = self.rooms.get(id).map(|r| Arc::clone(r.value())) else {
            return if self.rooms.len() < self.max_rooms { Space::Free } else { Space::TooManyRooms };
        };
        let state = room.lock();
        let free = state.members.len() + state.remote().len() < self.max_peers
            || state.members.iter().any(|m| m.fingerprint == *fingerprint)
            || state.remote().iter().any(|c| c.fingerprint == *fingerprint);
        if free { Space::Free } else { Space::RoomFull }
    }

    /// The room `id`, if it has members on this node.
    pub(crate) fn room(&self, id: &str) -> Option<Arc<Room>> {
        self.rooms.get(id).map(|r| Arc::clone(r.value()))
    }

    /// Makes `member` a member of room `id` (creating it), replacing a member with the same
    /// certificate. `remote` is the cluster's word on the members elsewhere (empty on a single
    /// node) and becomes the room's view of them. The newcomer's mailbox receives, before
    /// anything else, the HELLOs of the members already there (this node's in join order,
    /// then the others'), then the messages held for it.
    ///
    /// # Errors
    /// [`Space::RoomFull`] or [`Space::TooManyRooms`] when there is no place.
    pub(crate) fn join(
        &self,
        id: &RoomId,
        member: Member,
        remote: Vec<Card>,
        replaced_elsewhere: Option<&str>,
    ) -> Result<Joined, Space> {
        loop {
            // Checked again here, not only before the upgrade: connections that all passed the
            // upgrade's check could otherwise open a room each when their HELLOs come.
            if !self.rooms.contains_key(id) && self.rooms.len() >= self.max_rooms {
                return Err(Space::TooManyRooms);
            }
            let room = Arc::clone(
                self.rooms.entry(id.clone()).or_insert_with(|| Arc::new(Room::new(id.clone()))).value(),
            );
            let mut state = room.lock();
            if state.closed {
                continue;
            }
            let same_cert = state.members.iter().position(|m| m.fingerprint == member.fingerprint);
            let present = state.members.len() + remote.len();
            if present - usize::from(same_cert.is_some()) >= self.max_peers {
                return Err(Space::RoomFull);
            }
            let replaced = same_cert.map(|i| state.members.remove(i)).map(|old| Replaced {
                mailbox: old.mailbox,
                name: old.name,
                relay_done: old.relay_done,
            });
            for existing in &state.members {
                member.mailbox.push_initial(existing.hello.clone());
            }
            for card in &remote {
                member.mailbox.push_initial(card.hello.clone());
            }
            let view_before = state.remote().len();
            let learned = if remote.is_empty() && replaced_elsewhere.is_none() {
                Vec::new()
            } else {
                state.elsewhere().learn(remote, replaced_elsewhere, tokio::time::Instant::now())
            };
            if !learned.is_empty() || state.remote().len() != view_before {
                room.changed();
            }
            let held = std::mem::take(&mut state.held);
            state.held_bytes = 0;
            let held_delivered = held.len();
            for message in held {
                member.mailbox.push_initial(message.frame);
            }
            let others = state.members.iter().map(|m| m.mailbox.clone()).collect();
            // Doubling from one, not from Vec's usual four: most rooms are pairs, and every
            // idle member's room entry counts (docs/performance.md).
            if state.members.len() == state.members.capacity() {
                let more = state.members.len().max(1);
                state.members.reserve_exact(more);
            }
            state.members.push(member);
            room.changed();
            let members = state.members.len();
            drop(state);
            return Ok(Joined { room, others, replaced, learned, held_delivered, members });
        }
    }

    /// Removes connection `conn` from `room`, and the room from the registry when it is empty.
    pub(crate) fn leave(&self, room: &Arc<Room>, conn: ConnId) -> Left {
        let mut state = room.lock();
        let position = state.members.iter().position(|m| m.mailbox.conn() == conn);
        let was_member = position.is_some();
        let mut replaced_by = None;
        if let Some(i) = position {
            replaced_by = state.members.remove(i).replaced_by;
            room.changed();
        }
        let others: Vec<Mailbox> =
            if was_member { state.members.iter().map(|m| m.mailbox.clone()).collect() } else { Vec::new() };
        let mut nodes = Vec::new();
        if was_member {
            nodes = distinct_nodes(state.remote());
            nodes.retain(|n| Some(n) != replaced_by.as_ref());
            nodes.extend(replaced_by);
        }
        let mut discarded = 0;
        let empty = state.members.is_empty();
        if empty {
            state.elsewhere = None;
            discarded = state.held.len();
            state.held.clear();
            state.held_bytes = 0;
        }
        drop(state);
        if empty {
            self.rooms.remove_if(room.id(), |_, r| {
                let mut state = r.lock();
                let remove = Arc::ptr_eq(r, room) && state.members.is_empty();
                if remove {
                    state.closed = true;
                }
                remove
            });
        }
        Left { others, nodes, was_member, discarded }
    }

    /// Every room with its members, as owned data, sorted by room id.
    pub(crate) fn snapshot(&self) -> Vec<RoomStatus> {
        let mut report: Vec<RoomStatus> =
            self.rooms().iter().map(|room| RoomStatus::of(room.id().as_str(), &room.lock())).collect();
        report.sort_by(|a, b| a.id.cmp(&b.id));
        report
    }

    /// The mailboxes of every member of every room.
    pub(crate) fn mailboxes(&self) -> Vec<Mailbox> {
        self.rooms()
            .iter()
            .flat_map(|room| room.lock().members.iter().map(|m| m.mailbox.clone()).collect::<Vec<_>>())
            .collect()
    }

    /// The mailboxes of the members whose certificate serial is in `serials`.
    pub(crate) fn members_with_serials(&self, serials: &std::collections::HashSet<String>) -> Vec<Mailbox> {
        let members = |room: &Arc<Room>| {
            let state = room.lock();
            state
                .members
                .iter()
                .filter(|m| serials.contains(&*m.serial))
                .map(|m| m.mailbox.clone())
                .collect::<Vec<_>>()
        };
        self.rooms().iter().flat_map(members).collect()
    }

    /// The rooms, cloned out so that no room is locked under a map guard.
    fn rooms(&self) -> Vec<Arc<Room>> {
        self.rooms.iter().map(|r| Arc::clone(r.value())).collect()
    }
}
