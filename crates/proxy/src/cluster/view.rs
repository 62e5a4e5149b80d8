//! A room's view of its members on other nodes (cluster mode), kept from three sources that
//! race each other: the room's presence as a join reads it, the notes other nodes send
//! (joined, left), and the periodic reading of presence. The rules that keep it right:
//!
//! - a member is added once, whichever source brings it first;
//! - a member that left (by note) is not brought back by a reading made before it left: its
//!   departure is remembered for [`REMEMBER_DEPARTED`];
//! - a member missing from presence is forgotten only when two readings in a row miss it
//!   (one reading can race the note of a normal departure, which says more).

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::MAX_PRESENCE_TTL;
use crate::rooms::remote::{Card, MemberKey, RemoteView};

/// How long a departure is remembered; longer than any reading of presence can lag behind
/// (`cluster.presence_ttl` is at most this, see the configuration).
const REMEMBER_DEPARTED: Duration = MAX_PRESENCE_TTL;

/// The members of a room on other nodes, as this node knows them.
#[derive(Debug, Default)]
pub(crate) struct Elsewhere {
    cards: Vec<Card>,
    /// Newcomers here waiting for a member elsewhere to be gone: they replaced it.
    departures: Vec<(MemberKey, oneshot::Sender<()>)>,
    /// Members the last reading of presence did not find.
    suspects: Vec<MemberKey>,
    /// Members reported gone (by a note, or missing from presence), and when.
    departed: Vec<(MemberKey, Instant)>,
    /// Members a newcomer here replaced, and when: not to be brought back, but their
    /// departure is still to be reported.
    replaced: Vec<(MemberKey, Instant)>,
}

/// A room's view, for a room that learns of its first member elsewhere.
pub(crate) fn new_view() -> Box<dyn RemoteView> {
    Box::<Elsewhere>::default()
}

impl Elsewhere {
    fn knows(&self, who: &MemberKey) -> bool {
        self.cards.iter().any(|c| c.node == who.node && c.conn == who.conn)
    }

    fn left(&self, who: &MemberKey) -> bool {
        self.departed.iter().any(|(k, _)| k == who)
    }

    fn ruled_out(&self, who: &MemberKey) -> bool {
        self.left(who) || self.replaced.iter().any(|(k, _)| k == who)
    }

    fn forget_old_departures(&mut self, now: Instant) {
        let recent = |(_, at): &(MemberKey, Instant)| now.duration_since(*at) < REMEMBER_DEPARTED;
        self.departed.retain(recent);
        self.replaced.retain(recent);
        self.departures.retain(|(_, waiter)| !waiter.is_closed());
    }

    /// Records that the member `who` is gone: its waiters are told, and a later reading of
    /// presence made before its departure will not bring it back.
    fn record_departure(&mut self, who: &MemberKey, now: Instant) {
        for (_, waiter) in self.departures.extract_if(.., |(k, _)| k == who) {
            let _ = waiter.send(());
        }
        if !self.left(who) {
            self.departed.push((who.clone(), now));
        }
    }
}

/// The rules of the module's opening paragraph, for the room's calls.
impl RemoteView for Elsewhere {
    fn cards(&self) -> &[Card] {
        &self.cards
    }

    fn add(&mut self, card: Card) -> bool {
        let who = card.key();
        if self.knows(&who) || self.ruled_out(&who) {
            return false;
        }
        self.cards.push(card);
        true
    }

    fn remove(&mut self, who: &MemberKey, now: Instant) -> Option<Card> {
        self.forget_old_departures(now);
        self.record_departure(who, now);
        let i = self.cards.iter().position(|c| c.key() == *who)?;
        Some(self.cards.remove(i))
    }

    fn learn(&mut self, cards: Vec<Card>, replaced: Option<&MemberKey>, now: Instant) -> Vec<Card> {
        self.forget_old_departures(now);
        if let Some(who) = replaced {
            self.cards.retain(|c| c.key() != *who);
            self.replaced.push((who.clone(), now));
        }
        cards.into_iter().filter(|card| self.add(card.clone())).collect()
    }

    /// Members missing from two readings in a row are forgotten.
    fn sync(&mut self, live: Vec<Card>, now: Instant) -> (Vec<Card>, Vec<Card>) {
        self.forget_old_departures(now);
        let live_keys: Vec<MemberKey> = live.iter().map(Card::key).collect();
        let missing: Vec<MemberKey> =
            self.cards.iter().map(Card::key).filter(|k| !live_keys.contains(k)).collect();
        let (gone_keys, still): (Vec<MemberKey>, Vec<MemberKey>) =
            missing.into_iter().partition(|k| self.suspects.contains(k));
        self.suspects = still;
        let gone: Vec<Card> = self.cards.extract_if(.., |c| gone_keys.contains(&c.key())).collect();
        for who in &gone_keys {
            self.record_departure(who, now);
        }
        let new = live.into_iter().filter(|card| self.add(card.clone())).collect();
        (gone, new)
    }

    fn departure(&mut self, who: MemberKey) -> oneshot::Receiver<()> {
        let (waiter, wait) = oneshot::channel();
        if self.left(&who) {
            let _ = waiter.send(());
        } else {
            self.departures.push((who, waiter));
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Fingerprint;
    use crate::rooms::id::{ConnId, NodeId, PeerName};
    use crate::rooms::remote::distinct_nodes;

    fn card(node: &str, conn: u64) -> Card {
        Card {
            node: NodeId::new(node),
            conn: ConnId::from_wire(conn),
            fingerprint: Fingerprint([conn as u8; 32]),
            name: PeerName::default(),
            hello: tokio_tungstenite::tungstenite::Message::text("{}"),
        }
    }

    fn key(node: &str, conn: u64) -> MemberKey {
        card(node, conn).key()
    }

    #[test]
    fn a_member_is_added_once_whichever_source_brings_it() {
        let mut view = Elsewhere::default();
        let now = Instant::now();
        assert!(view.add(card("b", 1)));
        assert!(!view.add(card("b", 1)));
        assert_eq!(view.learn(vec![card("b", 1), card("c", 2)], None, now), vec![card("c", 2)]);
        let (gone, new) = view.sync(vec![card("b", 1), card("c", 2), card("d", 3)], now);
        assert!(gone.is_empty());
        assert_eq!(new, vec![card("d", 3)]);
        assert_eq!(distinct_nodes(view.cards()), [NodeId::new("b"), NodeId::new("c"), NodeId::new("d")]);
    }

    #[test]
    fn a_departed_member_is_not_brought_back_by_an_older_reading() {
        let mut view = Elsewhere::default();
        let now = Instant::now();
        view.add(card("b", 1));
        assert_eq!(view.remove(&key("b", 1), now), Some(card("b", 1)));
        assert_eq!(view.remove(&key("b", 1), now), None, "told once");
        let (_, new) = view.sync(vec![card("b", 1)], now);
        assert!(new.is_empty());
        assert!(!view.add(card("b", 1)));
        assert!(view.learn(vec![card("b", 1)], None, now).is_empty());
    }

    #[test]
    fn a_member_missing_from_two_readings_in_a_row_is_forgotten() {
        let mut view = Elsewhere::default();
        let now = Instant::now();
        view.add(card("b", 1));
        view.add(card("c", 2));
        assert_eq!(view.sync(vec![card("c", 2)], now), (vec![], vec![]));
        // Back in the next reading: not a suspect any more.
        assert_eq!(view.sync(vec![card("b", 1), card("c", 2)], now), (vec![], vec![]));
        assert_eq!(view.sync(vec![card("c", 2)], now), (vec![], vec![]));
        assert_eq!(view.sync(vec![card("c", 2)], now), (vec![card("b", 1)], vec![]));
        assert_eq!(view.cards(), [card("c", 2)]);
    }

    #[test]
    fn a_newcomer_waiting_for_the_member_it_replaced_is_told() {
        let mut view = Elsewhere::default();
        let now = Instant::now();
        view.add(card("b", 1));
        let mut wait = view.departure(key("b", 1));
        assert!(wait.try_recv().is_err());
        assert_eq!(view.learn(vec![], Some(&key("b", 1)), now), vec![]);
        assert!(view.cards().is_empty());
        assert!(!view.add(card("b", 1)), "not brought back");
        assert!(wait.try_recv().is_err(), "its node has not said it is gone yet");
        assert_eq!(view.remove(&key("b", 1), now), None, "already dropped: no PEER-LEFT from the note");
        assert!(wait.try_recv().is_ok());
        let mut late = view.departure(key("b", 1));
        assert!(late.try_recv().is_ok(), "a departure already seen resolves at once");
    }

    #[test]
    fn departures_are_forgotten_after_a_while() {
        let mut view = Elsewhere::default();
        let now = Instant::now();
        view.remove(&key("b", 1), now);
        view.sync(vec![], now + REMEMBER_DEPARTED);
        assert!(view.add(card("b", 1)));
    }
}
