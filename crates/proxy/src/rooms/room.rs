//! A room: the members that share a path, its members on other nodes, and what is held for a
//! member that is alone.
//!
//! A room's state sits behind a `std::sync::Mutex` held only for short, synchronous sections
//! that clone out what they need (mailboxes, frames); every await happens after the lock is
//! released, so a slow peer can never stall the room's lock. Every change of the state is a
//! method here; the registry only finds, creates and removes rooms.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use micronets_message::MessageId;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::hold::{Held, Hold, HoldLimits};
use super::id::{ConnId, NodeId, PeerName, RoomId};
use super::mailbox::Mailbox;
use super::remote::{Card, MayReplace, MemberKey, NewView, RemoteView, distinct_nodes};
use crate::identity::Fingerprint;

/// A joined peer.
pub(crate) struct Member {
    pub(crate) mailbox: Mailbox,
    pub(crate) fingerprint: Fingerprint,
    /// The HELLO frame exactly as the peer sent it, given to every later member.
    pub(crate) hello: Message,
    pub(crate) name: PeerName,
    /// Its certificate's subject, for the rooms API.
    pub(crate) subject: Arc<str>,
    /// When it joined.
    pub(crate) since: std::time::SystemTime,
    /// The node of the newer connection with its certificate that replaced it, which must
    /// hear of its departure.
    pub(crate) replaced_by: Option<NodeId>,
    /// Where it connected from.
    pub(crate) address: std::net::SocketAddr,
    /// Where its verified certificate chain is read again when a reload changes the trusted
    /// CAs.
    pub(crate) chain: Certificates,
    /// Newcomers with its certificate it answered a probe for, and so kept its place.
    pub(crate) conflicts_survived: u32,
    /// Its certificate's notAfter, seconds since the Unix epoch.
    pub(crate) not_after: i64,
}

/// Where a member's verified certificate chain is read again: its TLS session, which holds the
/// one copy there is (a chain is about 500 bytes per member, docs/performance.md).
pub(crate) trait Credentials: Send + Sync {
    /// The chain, leaf first, copied out.
    fn chain(&self) -> Vec<rustls_pki_types::CertificateDer<'static>>;
}

/// A member's [`Credentials`].
pub(crate) type Certificates = Arc<dyn Credentials>;

/// The member of a room that holds a certificate.
pub(crate) enum Holder {
    /// A member on this node.
    Here { mailbox: Mailbox, address: std::net::SocketAddr },
    /// A member on another node.
    Elsewhere(MemberKey),
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
    /// Alone, and the frame answers another (`inResponseTo`): whoever asked has left, and the
    /// next member did not ask, so it is not held (answer 410).
    Unasked,
    /// The sender is no longer a member (it was replaced): relay nothing.
    NotMember,
}

/// What a frame's header says about answers: whether it asks for one, and whether it is one.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Asks {
    pub(crate) requires_response: bool,
    pub(crate) is_response: bool,
}

/// The members a sender's frames go to, kept from frame to frame while the room's membership
/// does not change.
#[derive(Default)]
pub(crate) struct Targets {
    mailboxes: Vec<Mailbox>,
    /// The other nodes that host members.
    nodes: Vec<NodeId>,
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
    pub(crate) fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }
}

/// What joining a room gave the newcomer.
pub(crate) enum Admission {
    /// The room left the registry meanwhile: join a fresh one with what is given back.
    Closed { member: Member, remote: Vec<Card> },
    /// The room has `max_peers` members.
    Full,
    /// A member has the newcomer's certificate, and the newcomer may not replace it.
    Conflict,
    /// A member now.
    Joined(Entry),
}

/// What a successful join leaves the newcomer to do.
pub(crate) struct Entry {
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
}

/// What a leave left behind.
pub(crate) struct Left {
    /// The remaining members, to be told; empty when the leaver was not a member any more.
    pub(crate) others: Vec<Mailbox>,
    /// The other nodes to be told (the replacing node last, when there is one).
    pub(crate) nodes: Vec<NodeId>,
    /// Whether the leaver was still a member (not replaced).
    pub(crate) was_member: bool,
    /// Held messages discarded because the room emptied.
    pub(crate) discarded: usize,
    /// Whether the room has no member on this node any more.
    pub(crate) empty: bool,
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

/// A room as the rooms report shows it.
pub(crate) struct Contents<'a> {
    pub(crate) members: &'a [Member],
    pub(crate) remote: &'a [Card],
    pub(crate) held_messages: usize,
    pub(crate) held_bytes: usize,
}

/// Hands held messages to the nodes of members that joined elsewhere.
pub(crate) type SendHeld<'a> = &'a mut dyn FnMut(&[NodeId], Vec<Held>);

pub(crate) struct Room {
    id: RoomId,
    state: Mutex<State>,
    /// Moves on every change of membership, under the state lock; lets a sender reuse the
    /// receivers it looked up for its previous frame without taking the lock.
    generation: AtomicU64,
    new_view: NewView,
}

#[derive(Default)]
struct State {
    members: Vec<Member>,
    hold: Hold,
    /// Set when the room leaves the registry; a joiner that finds it set retries.
    closed: bool,
    /// Cluster mode: the members on other nodes, as this node knows them (boxed: a room of a
    /// single node carries one pointer for it).
    remote: Option<Box<dyn RemoteView>>,
}

impl State {
    /// The members on other nodes.
    fn remote(&self) -> &[Card] {
        self.remote.as_deref().map_or(&[], |view| view.cards())
    }

    fn mailboxes(&self) -> Vec<Mailbox> {
        self.members.iter().map(|m| m.mailbox.clone()).collect()
    }

    /// Hands what was held for a member to come to `send`, for the nodes of `to`; called
    /// under the room's lock, so no later frame of the sender can overtake them.
    fn release_held(&mut self, to: &[Card], send: SendHeld<'_>) {
        if to.is_empty() || self.hold.is_empty() {
            return;
        }
        let held = self.hold.take_for(to.iter().map(|card| &card.fingerprint));
        if !held.is_empty() {
            send(&distinct_nodes(to), held.into());
        }
    }
}

impl Room {
    pub(crate) fn new(id: RoomId, new_view: NewView) -> Self {
        Room { id, state: Mutex::new(State::default()), generation: AtomicU64::new(0), new_view }
    }

    pub(crate) fn id(&self) -> &RoomId {
        &self.id
    }

    /// The state, even if a panic elsewhere poisoned the lock: the state is kept consistent
    /// by every critical section on its own.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a change of membership; called with the state lock held.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The view of the members elsewhere, made on first need.
    fn view<'a>(&self, state: &'a mut State) -> &'a mut dyn RemoteView {
        state.remote.get_or_insert_with(self.new_view).as_mut()
    }

    /// Whether a newcomer with this certificate would find a place (fewer than `max_peers`
    /// members here and elsewhere, or one of them has its certificate), and the member that
    /// holds its certificate, if any.
    pub(crate) fn space_for(&self, fingerprint: &Fingerprint, max_peers: usize) -> (bool, Option<Holder>) {
        let state = self.lock();
        let here = state
            .members
            .iter()
            .find(|m| m.fingerprint == *fingerprint)
            .map(|m| Holder::Here { mailbox: m.mailbox.clone(), address: m.address });
        let holder = here.or_else(|| {
            state.remote().iter().find(|c| c.fingerprint == *fingerprint).map(|c| Holder::Elsewhere(c.key()))
        });
        let free = holder.is_some() || state.members.len() + state.remote().len() < max_peers;
        (free, holder)
    }

    /// The mailbox and address of the local member `conn`.
    pub(crate) fn local_member(&self, conn: ConnId) -> Option<(Mailbox, std::net::SocketAddr)> {
        let state = self.lock();
        state.members.iter().find(|m| m.mailbox.conn() == conn).map(|m| (m.mailbox.clone(), m.address))
    }

    /// Counts a probe the member `conn` answered.
    pub(crate) fn survived_conflict(&self, conn: ConnId) {
        if let Some(member) = self.lock().members.iter_mut().find(|m| m.mailbox.conn() == conn) {
            member.conflicts_survived = member.conflicts_survived.saturating_add(1);
        }
    }

    /// Makes `member` a member, replacing the member with its certificate if `may_replace`
    /// covers it (this node is `here`). `remote` is the cluster's word on the members elsewhere
    /// (empty on a single node). The newcomer's mailbox receives, before anything else, the
    /// HELLOs of the members already there (this node's in join order, then the others'), then
    /// the messages held for it.
    pub(crate) fn admit(
        &self,
        member: Member,
        remote: Vec<Card>,
        replaced_elsewhere: Option<&MemberKey>,
        may_replace: &MayReplace,
        here: &NodeId,
        max_peers: usize,
    ) -> Admission {
        let mut state = self.lock();
        if state.closed {
            return Admission::Closed { member, remote };
        }
        let same_cert = state.members.iter().position(|m| m.fingerprint == member.fingerprint);
        if let Some(old) = same_cert.and_then(|i| state.members.get(i)) {
            let holder = MemberKey { node: here.clone(), conn: old.mailbox.conn() };
            if !may_replace.covers(&holder) {
                return Admission::Conflict;
            }
        }
        let present = state.members.len() + remote.len();
        if present - usize::from(same_cert.is_some()) >= max_peers {
            return Admission::Full;
        }
        let replaced = same_cert
            .map(|i| state.members.remove(i))
            .map(|old| Replaced { mailbox: old.mailbox, name: old.name });
        for existing in &state.members {
            member.mailbox.push_initial(existing.hello.clone());
        }
        let view_before = state.remote().len();
        let learned = if remote.is_empty() && replaced_elsewhere.is_none() {
            Vec::new()
        } else {
            self.view(&mut state).learn(remote, replaced_elsewhere, Instant::now())
        };
        if !learned.is_empty() || state.remote().len() != view_before {
            self.changed();
        }
        // Every member elsewhere this node knows of, not only the cluster's answer to this
        // join: one that joined after that answer may have been learnt meanwhile, by its note
        // to this node, and its HELLO then went only to the members already here.
        for card in state.remote() {
            member.mailbox.push_initial(card.hello.clone());
        }
        let held = state.hold.take_for(std::iter::once(&member.fingerprint));
        let held_delivered = held.len();
        for message in held {
            member.mailbox.push_initial(message.frame);
        }
        let others = state.mailboxes();
        // Doubling from one, not from Vec's usual four: most rooms are pairs, and every
        // idle member's room entry counts (docs/performance.md).
        if state.members.len() == state.members.capacity() {
            let more = state.members.len().max(1);
            state.members.reserve_exact(more);
        }
        state.members.push(member);
        self.changed();
        let members = state.members.len();
        Admission::Joined(Entry { others, replaced, learned, held_delivered, members })
    }

    /// Removes connection `conn`; when no member is left here, forgets the members elsewhere
    /// and discards what was held.
    pub(crate) fn remove(&self, conn: ConnId) -> Left {
        let mut state = self.lock();
        let position = state.members.iter().position(|m| m.mailbox.conn() == conn);
        let was_member = position.is_some();
        let mut replaced_by = None;
        if let Some(i) = position {
            replaced_by = state.members.remove(i).replaced_by;
            self.changed();
        }
        let mut others = Vec::new();
        let mut nodes = Vec::new();
        if was_member {
            others = state.mailboxes();
            nodes = distinct_nodes(state.remote());
            nodes.retain(|n| Some(n) != replaced_by.as_ref());
            nodes.extend(replaced_by);
        }
        let empty = state.members.is_empty();
        let mut discarded = 0;
        if empty {
            state.remote = None;
            discarded = state.hold.take_all().len();
        }
        Left { others, nodes, was_member, discarded, empty }
    }

    /// Marks the room closed if it has no member, so a concurrent joiner retries with a fresh
    /// room; returns whether it did.
    pub(crate) fn close_if_empty(&self) -> bool {
        let mut state = self.lock();
        let empty = state.members.is_empty();
        if empty {
            state.closed = true;
        }
        empty
    }

    /// Decides where a frame from `sender` goes (filling `targets`, which the caller keeps
    /// from frame to frame, see [`Targets::is_current`]); holds it when the sender is alone,
    /// unless it asks for a response or is one. `message_id` is called only when the frame is
    /// held.
    pub(crate) fn route(
        &self,
        sender: ConnId,
        frame: &Message,
        asks: Asks,
        message_id: impl FnOnce() -> Option<MessageId<'static>>,
        limits: HoldLimits,
        targets: &mut Targets,
    ) -> Route {
        let mut state = self.lock();
        targets.mailboxes.clear();
        targets.generation = self.generation.load(Ordering::Acquire);
        targets.nodes.clear();
        let Some(fingerprint) =
            state.members.iter().find(|m| m.mailbox.conn() == sender).map(|m| m.fingerprint)
        else {
            return Route::NotMember;
        };
        let others = state.members.iter().filter(|m| m.mailbox.conn() != sender);
        targets.mailboxes.extend(others.map(|m| m.mailbox.clone()));
        targets.nodes.extend(distinct_nodes(state.remote()));
        if !(targets.mailboxes.is_empty() && targets.nodes.is_empty()) {
            return Route::Deliver;
        }
        if asks.is_response {
            return Route::Unasked;
        }
        if asks.requires_response {
            return Route::Alone;
        }
        if state.hold.push(frame, sender, fingerprint, message_id, limits) {
            Route::Held
        } else {
            Route::HoldFull
        }
    }

    /// Puts the mailboxes of the members on this node in `into` (emptied first), whose
    /// allocation the caller keeps from one call to the next. Returns whether the room is still
    /// the registry's: false once it was closed, empty, and removed.
    pub(crate) fn local_mailboxes(&self, into: &mut Vec<Mailbox>) -> bool {
        into.clear();
        let state = self.lock();
        into.extend(state.members.iter().map(|m| m.mailbox.clone()));
        !state.closed
    }

    /// What `take` takes from each local member, under the room's lock.
    pub(crate) fn members_map<T>(&self, take: impl Fn(&Member) -> T) -> Vec<T> {
        self.lock().members.iter().map(take).collect()
    }

    /// The mailboxes of the local members for which `pick` says yes.
    pub(crate) fn mailboxes_of(&self, pick: impl Fn(&Member) -> bool) -> Vec<Mailbox> {
        self.lock().members.iter().filter(|m| pick(m)).map(|m| m.mailbox.clone()).collect()
    }

    /// Marks the local member `conn` as replaced by a newcomer (on `node`, when known);
    /// returns its mailbox.
    pub(crate) fn replace_local(&self, conn: ConnId, node: Option<&NodeId>) -> Option<Mailbox> {
        let mut state = self.lock();
        let member = state.members.iter_mut().find(|m| m.mailbox.conn() == conn)?;
        member.replaced_by = node.cloned();
        Some(member.mailbox.clone())
    }

    /// The other nodes hosting members.
    pub(crate) fn remote_nodes(&self) -> Vec<NodeId> {
        distinct_nodes(self.lock().remote())
    }

    /// Records a member that joined on another node; what was held for a member to come goes
    /// to `send_held`. Returns the local members (to be given its HELLO), or `None` when it
    /// was known already.
    pub(crate) fn add_remote(&self, card: Card, send_held: SendHeld<'_>) -> Option<Vec<Mailbox>> {
        let mut state = self.lock();
        if !self.view(&mut state).add(card.clone()) {
            return None;
        }
        self.changed();
        state.release_held(std::slice::from_ref(&card), send_held);
        Some(state.mailboxes())
    }

    /// Forgets a member on another node that left. Returns its card and the local members
    /// (to be told) when it was known.
    pub(crate) fn remove_remote(&self, who: &MemberKey) -> Option<(Card, Vec<Mailbox>)> {
        let mut state = self.lock();
        let card = self.view(&mut state).remove(who, Instant::now())?;
        self.changed();
        Some((card, state.mailboxes()))
    }

    /// Brings the view of the other nodes' members up to date with a reading of presence;
    /// what was held goes to `send_held` when members came.
    pub(crate) fn sync_remote(&self, live: Vec<Card>, send_held: SendHeld<'_>) -> Synced {
        let mut state = self.lock();
        let (gone, new) = self.view(&mut state).sync(live, Instant::now());
        if !gone.is_empty() || !new.is_empty() {
            self.changed();
        }
        state.release_held(&new, send_held);
        Synced { gone, new, receivers: state.mailboxes() }
    }

    /// Learns the members elsewhere in a reading of presence that may be older than what this
    /// node has heard since (a read made while other joins were under way): adds the ones it
    /// did not know, and forgets none. What was held goes to `send_held` when members came.
    pub(crate) fn learn_remote(&self, live: Vec<Card>, send_held: SendHeld<'_>) -> Synced {
        let mut state = self.lock();
        let new = self.view(&mut state).learn(live, None, Instant::now());
        if !new.is_empty() {
            self.changed();
        }
        state.release_held(&new, send_held);
        Synced { gone: Vec::new(), new, receivers: state.mailboxes() }
    }

    /// Resolves once the member `who` elsewhere is reported gone.
    pub(crate) fn departure(&self, who: MemberKey) -> oneshot::Receiver<()> {
        let mut state = self.lock();
        self.view(&mut state).departure(who)
    }

    /// When the oldest held message expires.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.lock().hold.next_expiry()
    }

    /// Removes and returns the held messages that expired by `now`.
    pub(crate) fn expire_held(&self, now: Instant) -> Vec<Held> {
        self.lock().hold.expire(now)
    }

    /// Shows the room's contents to `read`, under the room's lock.
    pub(crate) fn inspect<T>(&self, read: impl FnOnce(Contents<'_>) -> T) -> T {
        let state = self.lock();
        read(Contents {
            members: &state.members,
            remote: state.remote(),
            held_messages: state.hold.len(),
            held_bytes: state.hold.bytes(),
        })
    }
}
