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

use super::wire::Card;

/// How long a departure is remembered; longer than any reading of presence can lag behind
/// (`cluster.presence_ttl` is at most this, see the configuration).
pub(crate) const REMEMBER_DEPARTED: Duration = Duration::from_secs(60);

/// The members of a room on other nodes, as this node knows them.
#[derive(Debug, Default)]
pub(crate) struct Elsewhere {
    cards: Vec<Card>,
    /// Newcomers here waiting for a member elsewhere (by field) to be gone: they replaced it.
    departures: Vec<(String, oneshot::Sender<()>)>,
    /// Members the last reading of presence did not find.
    suspects: Vec<String>,
    /// Members reported gone (by a note, or missing from presence), and when.
    departed: Vec<(String, Instant)>,
    /// Members a newcomer here replaced, and when: not to be brought back, but their
    /// departure is still to be reported.
    replaced: Vec<(String, Instant)>,
}

/// The distinct nodes of `cards`, in order of first appearance.
pub(crate) fn distinct_nodes<'a>(cards: impl IntoIterator<Item = &'a Card>) -> Vec<String> {
    let mut nodes: Vec<String> = Vec::new();
    for card in cards {
        if !nodes.contains(&card.node) {
            nodes.push(card.node.clone());
        }
    }
    nodes
}

impl Elsewhere {
    pub(crate) fn cards(&self) -> &[Card] {
        &self.cards
    }

    fn knows(&self, field: &str) -> bool {
        self.cards.iter().any(|c| c.field() == field)
    }

    fn left(&self, field: &str) -> bool {
        self.departed.iter().any(|(f, _)| f == field)
    }

    fn ruled_out(&self, field: &str) -> bool {
        self.left(field) || self.replaced.iter().any(|(f, _)| f == field)
    }

    fn forget_old_departures(&mut self, now: Instant) {
        let recent = |(_, at): &(String, Instant)| now.duration_since(*at) < REMEMBER_DEPARTED;
        self.departed.retain(recent);
        self.replaced.retain(recent);
        self.departures.retain(|(_, waiter)| !waiter.is_closed());
    }

    /// Records that the member `field` is gone: its waiters are told, and a later reading of
    /// presence made before its departure will not bring it back.
    fn record_departure(&mut self, field: &str, now: Instant) {
        for (_, waiter) in self.departures.extract_if(.., |(f, _)| f == field) {
            let _ = waiter.send(());
        }
        if !self.left(field) {
            self.departed.push((field.to_owned(), now));
        }
    }

    /// Adds a member that joined elsewhere; `false` when it is known already or has left.
    pub(crate) fn add(&mut self, card: Card) -> bool {
        let field = card.field();
        if self.knows(&field) || self.ruled_out(&field) {
            return false;
        }
        self.cards.push(card);
        true
    }

    /// Removes a member that left elsewhere; returns its card when it was known.
    pub(crate) fn remove(&mut self, field: &str, now: Instant) -> Option<Card> {
        self.forget_old_departures(now);
        self.record_departure(field, now);
        let i = self.cards.iter().position(|c| c.field() == field)?;
        Some(self.cards.remove(i))
    }

    /// What a join read from presence: the members not yet known are added and returned (the
    /// members here must be given their HELLO); the member the newcomer replaced is dropped
    /// (the newcomer tells the others itself).
    pub(crate) fn learn(&mut self, cards: Vec<Card>, replaced: Option<&str>, now: Instant) -> Vec<Card> {
        self.forget_old_departures(now);
        if let Some(field) = replaced {
            self.cards.retain(|c| c.field() != field);
            self.replaced.push((field.to_owned(), now));
        }
        cards.into_iter().filter(|card| self.add(card.clone())).collect()
    }

    /// A reading of presence (`live`): returns the members now forgotten (missing twice in a
    /// row) and the members learnt of.
    pub(crate) fn sync(&mut self, live: Vec<Card>, now: Instant) -> (Vec<Card>, Vec<Card>) {
        self.forget_old_departures(now);
        let live_fields: Vec<String> = live.iter().map(Card::field).collect();
        let missing: Vec<String> =
            self.cards.iter().map(Card::field).filter(|f| !live_fields.contains(f)).collect();
        let (gone_fields, still): (Vec<String>, Vec<String>) =
            missing.into_iter().partition(|f| self.suspects.contains(f));
        self.suspects = still;
        let gone: Vec<Card> = self.cards.extract_if(.., |c| gone_fields.contains(&c.field())).collect();
        for field in &gone_fields {
            self.record_departure(field, now);
        }
        let new = live.into_iter().filter(|card| self.add(card.clone())).collect();
        (gone, new)
    }

    /// Resolves once the member `field` is reported gone.
    pub(crate) fn departure(&mut self, field: String) -> oneshot::Receiver<()> {
        let (waiter, wait) = oneshot::channel();
        if self.left(&field) {
            let _ = waiter.send(());
        } else {
            self.departures.push((field, waiter));
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Fingerprint;
    use crate::room::PeerName;

    fn card(node: &str, conn: u64) -> Card {
        Card {
            node: node.into(),
            conn,
            fingerprint: Fingerprint([conn as u8; 32]),
            name: PeerName::default(),
            hello: tokio_tungstenite::tungstenite::Message::text("{}"),
        }
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
        assert_eq!(distinct_nodes(view.cards()), ["b", "c", "d"]);
    }

    #[test]
    fn a_departed_member_is_not_brought_back_by_an_older_reading() {
        let mut view = Elsewhere::default();
        let now = Instant::now();
        view.add(card("b", 1));
        assert_eq!(view.remove("b/1", now), Some(card("b", 1)));
        assert_eq!(view.remove("b/1", now), None, "told once");
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
        let mut wait = view.departure("b/1".into());
        assert!(wait.try_recv().is_err());
        assert_eq!(view.learn(vec![], Some("b/1"), now), vec![]);
        assert!(view.cards().is_empty());
        assert!(!view.add(card("b", 1)), "not brought back");
        assert!(wait.try_recv().is_err(), "its node has not said it is gone yet");
        assert_eq!(view.remove("b/1", now), None, "already dropped: no PEER-LEFT from the note");
        assert!(wait.try_recv().is_ok());
        let mut late = view.departure("b/1".into());
        assert!(late.try_recv().is_ok(), "a departure already seen resolves at once");
    }

    #[test]
    fn departures_are_forgotten_after_a_while() {
        let mut view = Elsewhere::default();
        let now = Instant::now();
        view.remove("b/1", now);
        view.sync(vec![], now + REMEMBER_DEPARTED);
        assert!(view.add(card("b", 1)));
    }
}
