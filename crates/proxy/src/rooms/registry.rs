//! The registry of this node's rooms: finding, creating and removing them, and the capacity
//! check made before the upgrade. What happens inside a room is the room's (`room.rs`).
//!
//! Lock order is always map shard, then room: `join` clones the room out of the map and drops
//! the shard guard before locking the room; `leave` removes an empty room with `remove_if`,
//! whose check (under the room lock) and removal are atomic against a concurrent join, which
//! finds the room marked closed and retries with a fresh one.

use std::sync::Arc;

use dashmap::DashMap;

use super::id::{ConnId, NodeId, RoomId};
use super::mailbox::Mailbox;
use super::remote::{Card, MayReplace, MemberKey, NewView};
use super::room::{Admission, Entry, Holder, Left, Member, Room};
use crate::identity::Fingerprint;

/// All rooms of this node.
pub(crate) struct Registry {
    rooms: DashMap<RoomId, Arc<Room>>,
    max_peers: usize,
    max_rooms: usize,
    new_view: NewView,
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

/// Why a join found no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The room has `max_peers` members.
    RoomFull,
    /// The room does not exist and `max_rooms` rooms do.
    TooManyRooms,
    /// A member has the newcomer's certificate, and the newcomer was not cleared to replace it.
    IdentityConflict,
}

/// A join: the room, and what the newcomer is left to do.
pub(crate) struct Joined {
    pub(crate) room: Arc<Room>,
    pub(crate) entry: Entry,
}

impl Registry {
    /// No rooms yet; rooms take `max_peers` members, there are at most `max_rooms` of them,
    /// and a room that learns of a member elsewhere keeps them in a view made by `new_view`.
    pub(crate) fn new(max_peers: usize, max_rooms: usize, new_view: NewView) -> Self {
        Registry { rooms: DashMap::new(), max_peers, max_rooms, new_view }
    }

    /// Whether a newcomer with this certificate would find a place in room `id` now: the room
    /// has fewer members than `max_peers` (or one of them has the same certificate), or it does
    /// not exist yet and there are fewer than `max_rooms` rooms. (Concurrent newcomers may open
    /// a few rooms past the limit; `max_connections` still bounds them.) With it, the member
    /// that holds the certificate, if this node knows one.
    pub(crate) fn space(&self, id: &RoomId, fingerprint: &Fingerprint) -> (Space, Option<Holder>) {
        let Some(room) = self.room(id.as_str()) else {
            let space = if self.rooms.len() < self.max_rooms { Space::Free } else { Space::TooManyRooms };
            return (space, None);
        };
        match room.space_for(fingerprint, self.max_peers) {
            (true, holder) => (Space::Free, holder),
            (false, _) => (Space::RoomFull, None),
        }
    }

    /// The room `id`, if it has members on this node.
    pub(crate) fn room(&self, id: &str) -> Option<Arc<Room>> {
        self.rooms.get(id).map(|r| Arc::clone(r.value()))
    }

    /// Makes `member` a member of room `id`, creating the room (see [`Room::admit`]).
    ///
    /// # Errors
    /// Why there is no place.
    pub(crate) fn join(
        &self,
        id: &RoomId,
        mut member: Member,
        mut remote: Vec<Card>,
        replaced_elsewhere: Option<&MemberKey>,
        may_replace: &MayReplace,
        here: &NodeId,
    ) -> Result<Joined, Refused> {
        loop {
            // Checked again here, not only before the upgrade: connections that all passed the
            // upgrade's check could otherwise open a room each when their HELLOs come.
            if !self.rooms.contains_key(id) && self.rooms.len() >= self.max_rooms {
                return Err(Refused::TooManyRooms);
            }
            let room = Arc::clone(
                self.rooms
                    .entry(id.clone())
                    .or_insert_with(|| Arc::new(Room::new(id.clone(), self.new_view)))
                    .value(),
            );
            match room.admit(member, remote, replaced_elsewhere, may_replace, here, self.max_peers) {
                Admission::Joined(entry) => return Ok(Joined { room, entry }),
                Admission::Full => return Err(Refused::RoomFull),
                Admission::Conflict => return Err(Refused::IdentityConflict),
                Admission::Closed { member: back, remote: cards } => (member, remote) = (back, cards),
            }
        }
    }

    /// Removes connection `conn` from `room`, and the room from the registry when it is empty.
    pub(crate) fn leave(&self, room: &Arc<Room>, conn: ConnId) -> Left {
        let left = room.remove(conn);
        if left.empty {
            self.rooms.remove_if(room.id(), |_, r| Arc::ptr_eq(r, room) && r.close_if_empty());
        }
        left
    }

    /// The rooms, cloned out so that no room is locked under a map guard.
    pub(crate) fn rooms(&self) -> Vec<Arc<Room>> {
        self.rooms.iter().map(|r| Arc::clone(r.value())).collect()
    }

    /// The mailboxes of the members (on this node) for which `pick` says yes, in every room.
    pub(crate) fn mailboxes_of(&self, pick: impl Fn(&Member) -> bool) -> Vec<Mailbox> {
        self.rooms().iter().flat_map(|room| room.mailboxes_of(&pick)).collect()
    }

    /// What `take` takes from each member (on this node) of every room, under each room's lock
    /// in turn: take only what is cheap to clone, and work on it after.
    pub(crate) fn each_member<T>(&self, take: impl Fn(&RoomId, &Member) -> T) -> Vec<T> {
        self.rooms().iter().flat_map(|room| room.members_map(|m| take(room.id(), m))).collect()
    }
}
