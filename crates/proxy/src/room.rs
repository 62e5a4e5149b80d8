//! Rooms: the peers that share a path, and what is held for a peer that is alone.
//!
//! A room's state sits behind a `std::sync::Mutex` held only for short, synchronous sections
//! that clone out what they need (mailboxes, frames); every await happens after the lock is
//! released, so a slow peer can never stall the room's lock.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use micronets_message::MessageId;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use tokio::sync::oneshot;

use crate::cluster::view::{Elsewhere, distinct_nodes};
use crate::cluster::wire::Card;
use crate::identity::Fingerprint;
use crate::relay::{ConnId, Mailbox};

/// A room id: the raw path after the prefix (design.md section 5).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RoomId(Arc<str>);

impl RoomId {
    /// Validates a room id: 1-256 bytes of `[A-Za-z0-9._~:@-]` in one or more `/`-separated
    /// segments, none empty, `.` or `..`. Percent-encoding is refused, not decoded, so one room
    /// has exactly one spelling.
    ///
    /// # Errors
    /// What is wrong, for the 404 response and the log.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        if raw.is_empty() {
            return Err("empty room id");
        }
        if raw.len() > 256 {
            return Err("room id longer than 256 bytes");
        }
        for segment in raw.split('/') {
            if segment.is_empty() {
                return Err("room id has an empty segment");
            }
            if segment == "." || segment == ".." {
                return Err("room id has a '.' or '..' segment");
            }
            let allowed =
                |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b':' | b'@' | b'-');
            if !segment.bytes().all(allowed) {
                return Err("room id may only hold letters, digits and . _ ~ : @ - /");
            }
        }
        Ok(RoomId(Arc::from(raw)))
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for RoomId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// What a peer said about itself in its HELLO.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PeerName {
    pub(crate) class: Option<String>,
    pub(crate) id: Option<String>,
}

/// A joined peer.
pub(crate) struct Member {
    pub(crate) mailbox: Mailbox,
    pub(crate) fingerprint: Fingerprint,
    /// The HELLO frame exactly as the peer sent it, given to every later member.
    pub(crate) hello: Message,
    pub(crate) name: PeerName,
    /// Its certificate's subject, for the rooms API.
    pub(crate) subject: Arc<str>,
    /// Its certificate's serial (uppercase hex), to find it when its certificate is revoked.
    pub(crate) serial: Arc<str>,
    /// When it joined.
    pub(crate) since: std::time::SystemTime,
    /// Cancelled when this member's connection has stopped relaying frames.
    pub(crate) relay_done: CancellationToken,
    /// The node of the newer connection with its certificate that replaced it, which must
    /// hear of its departure.
    pub(crate) replaced_by: Option<String>,
}

/// A message held for a member alone in its room.
pub(crate) struct Held {
    pub(crate) frame: Message,
    pub(crate) message_id: Option<MessageId<'static>>,
    pub(crate) expires: Instant,
}

/// Where a member's frame goes.
pub(crate) enum Route {
    /// To the members put in the caller's `targets`.
    Deliver,
    /// Held for the next member.
    Held,
    /// Alone, and the hold buffer cannot take it.
    HoldFull,
    /// Alone, and the frame asks for a response: answer 503 at once.
    Alone,
    /// The sender is no longer a member (it was replaced): relay nothing.
    NotMember,
}

/// Limits of the hold buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HoldLimits {
    pub(crate) max_messages: usize,
    pub(crate) max_bytes: usize,
    pub(crate) max_age: std::time::Duration,
}

pub(crate) struct Room {
    id: RoomId,
    state: Mutex<State>,
    /// Moves on every change of membership, under the state lock; lets a sender reuse the
    /// receivers it looked up for its previous frame without taking the lock.
    generation: AtomicU64,
}

/// The members a sender's frames go to, kept from frame to frame while the room's membership
/// does not change.
#[derive(Default)]
pub(crate) struct Targets {
    mailboxes: Vec<Mailbox>,
    /// The other nodes that host members.
    nodes: Vec<String>,
    generation: u64,
}

impl Targets {
    /// Whether the receivers looked up for an earlier frame still hold: the room has not
    /// changed since, and there is someone to deliver to.
    pub(crate) fn is_current(&self, room: &Room) -> bool {
        let unchanged = room.generation.load(Ordering::Acquire) == self.generation;
        unchanged && !(self.mailboxes.is_empty() && self.nodes.is_empty())
    }

    /// The local receivers from the last [`Room::route`] that returned [`Route::Deliver`].
    pub(crate) fn mailboxes(&self) -> &[Mailbox] {
        &self.mailboxes
    }

    /// The other nodes hosting receivers, from the same lookup.
    pub(crate) fn nodes(&self) -> &[String] {
        &self.nodes
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) members: Vec<Member>,
    pub(crate) held: VecDeque<Held>,
    pub(crate) held_bytes: usize,
    /// Set when the room leaves the registry; a joiner that finds it set retries.
    pub(crate) closed: bool,
    /// Cluster mode: the members on other nodes, as this node knows them (boxed: a room of a
    /// single node carries one pointer for it).
    pub(crate) elsewhere: Option<Box<Elsewhere>>,
}

impl State {
    /// The members on other nodes.
    pub(crate) fn remote(&self) -> &[Card] {
        self.elsewhere.as_deref().map_or(&[], Elsewhere::cards)
    }

    pub(crate) fn elsewhere(&mut self) -> &mut Elsewhere {
        self.elsewhere.get_or_insert_with(Box::default)
    }

    fn mailboxes(&self) -> Vec<Mailbox> {
        self.members.iter().map(|m| m.mailbox.clone()).collect()
    }

    /// Hands what was held for a member to come to `send`, for the nodes of `to`; called
    /// under the room's lock, so no later frame of the sender can overtake them.
    fn release_held(&mut self, to: &[Card], send: impl FnOnce(&[String], Vec<Message>)) {
        if to.is_empty() || self.held.is_empty() {
            return;
        }
        let held = self.held.drain(..).map(|h| h.frame).collect();
        self.held_bytes = 0;
        send(&distinct_nodes(to), held);
    }
}

/// What [`Room::sync_remote`] changed.
pub(crate) struct Synced {
    /// Members elsewhere now forgotten.
    pub(crate) gone: Vec<Card>,
    /// Members elsewhere learnt of.
    pub(crate) new: Vec<Card>,
    /// The local members, to be told.
    pub(crate) receivers: Vec<Mailbox>,
}

impl Room {
    pub(crate) fn new(id: RoomId) -> Self {
        Room { id, state: Mutex::new(State::default()), generation: AtomicU64::new(0) }
    }

    /// Records a change of membership; called with the state lock held.
    pub(crate) fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn id(&self) -> &RoomId {
        &self.id
    }

    /// The state, even if a panic elsewhere poisoned the lock: the state is kept consistent
    /// by every critical section on its own.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides where a frame from `sender` goes (filling `targets`, which the caller keeps
    /// from frame to frame, see [`Targets::is_current`]); holds it when the sender is alone.
    /// `message_id` is called only when the frame is held.
    pub(crate) fn route(
        &self,
        sender: ConnId,
        frame: &Message,
        requires_response: bool,
        message_id: impl FnOnce() -> Option<MessageId<'static>>,
        limits: HoldLimits,
        targets: &mut Targets,
    ) -> Route {
        let mut state = self.lock();
        targets.mailboxes.clear();
        targets.generation = self.generation.load(Ordering::Acquire);
        targets.nodes.clear();
        if !state.members.iter().any(|m| m.mailbox.conn() == sender) {
            return Route::NotMember;
        }
        let others = state.members.iter().filter(|m| m.mailbox.conn() != sender);
        targets.mailboxes.extend(others.map(|m| m.mailbox.clone()));
        targets.nodes.extend(distinct_nodes(state.remote()));
        if !(targets.mailboxes.is_empty() && targets.nodes.is_empty()) {
            return Route::Deliver;
        }
        if requires_response {
            return Route::Alone;
        }
        if state.held.len() >= limits.max_messages || state.held_bytes + frame.len() > limits.max_bytes {
            return Route::HoldFull;
        }
        state.held_bytes += frame.len();
        let message_id = message_id();
        state.held.push_back(Held {
            frame: frame.clone(),
            message_id,
            expires: Instant::now() + limits.max_age,
        });
        Route::Held
    }

    /// The mailboxes of the members on this node.
    pub(crate) fn local_mailboxes(&self) -> Vec<Mailbox> {
        self.lock().mailboxes()
    }

    /// Marks the local member `conn` as replaced by a newcomer (on `node`, when known);
    /// returns its mailbox.
    pub(crate) fn replace_local(&self, conn: u64, node: Option<&str>) -> Option<Mailbox> {
        let mut state = self.lock();
        let member = state.members.iter_mut().find(|m| m.mailbox.conn().0 == conn)?;
        member.replaced_by = node.map(str::to_owned);
        Some(member.mailbox.clone())
    }

    /// The other nodes hosting members.
    pub(crate) fn remote_nodes(&self) -> Vec<String> {
        distinct_nodes(self.lock().remote())
    }

    /// Records a member that joined on another node; what was held for a member to come goes
    /// to `send_held`. Returns the local members (to be given its HELLO), or `None` when it
    /// was known already.
    pub(crate) fn add_remote(
        &self,
        card: Card,
        send_held: impl FnOnce(&[String], Vec<Message>),
    ) -> Option<Vec<Mailbox>> {
        let mut state = self.lock();
        if !state.elsewhere().add(card.clone()) {
            return None;
        }
        self.changed();
        state.release_held(std::slice::from_ref(&card), send_held);
        Some(state.mailboxes())
    }

    /// Forgets a member on another node that left. Returns its card and the local members
    /// (to be told) when it was known.
    pub(crate) fn remove_remote(&self, field: &str) -> Option<(Card, Vec<Mailbox>)> {
        let mut state = self.lock();
        let card = state.elsewhere().remove(field, Instant::now())?;
        self.changed();
        Some((card, state.mailboxes()))
    }

    /// Brings the view of the other nodes' members up to date with a reading of presence
    /// (see [`Elsewhere::sync`]); what was held goes to `send_held` when members came.
    pub(crate) fn sync_remote(
        &self,
        live: Vec<Card>,
        send_held: impl FnOnce(&[String], Vec<Message>),
    ) -> Synced {
        let mut state = self.lock();
        let (gone, new) = state.elsewhere().sync(live, Instant::now());
        if !gone.is_empty() || !new.is_empty() {
            self.changed();
        }
        state.release_held(&new, send_held);
        Synced { gone, new, receivers: state.mailboxes() }
    }

    /// Resolves once the member `field` elsewhere is reported gone.
    pub(crate) fn departure(&self, field: String) -> oneshot::Receiver<()> {
        self.lock().elsewhere().departure(field)
    }

    /// When the oldest held message expires.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.lock().held.front().map(|h| h.expires)
    }

    /// Removes and returns the held messages that expired by `now`.
    pub(crate) fn expire_held(&self, now: Instant) -> Vec<Held> {
        let mut state = self.lock();
        let mut expired = Vec::new();
        while state.held.front().is_some_and(|h| h.expires <= now) {
            if let Some(held) = state.held.pop_front() {
                state.held_bytes -= held.frame.len();
                expired.push(held);
            }
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_id_rules() {
        for ok in ["gw", "gw/mock-gw", "micronets-dhcp-0001", "a.b_c~d:e@f-g", "a/b/c", &"x".repeat(256)] {
            assert!(RoomId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/",
            "a//b",
            "a/",
            "/a",
            ".",
            "a/../b",
            "a/./b",
            "a%2Fb",
            "a b",
            "é",
            "a?b",
            &"x".repeat(257),
        ] {
            assert!(RoomId::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(RoomId::parse("gw/1").unwrap().to_string(), "gw/1");
    }
}
