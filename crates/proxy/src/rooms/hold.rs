//! The hold buffer: what a member alone in its room sent, kept in order for the next member
//! (docs/protocol.md, "Alone in a room"). It is bounded in messages, bytes and age; a message
//! it cannot take, or one that ages out, is never delivered and its sender is told.

use std::collections::VecDeque;
use std::time::Duration;

use micronets_message::MessageId;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::id::ConnId;
use crate::identity::Fingerprint;

/// Limits of the hold buffer (`rooms.hold_max_messages`, `rooms.hold_max_bytes`,
/// `rooms.hold_max_age`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct HoldLimits {
    pub(crate) max_messages: usize,
    pub(crate) max_bytes: usize,
    pub(crate) max_age: Duration,
}

/// A message held for a member alone in its room.
pub(crate) struct Held {
    pub(crate) frame: Message,
    /// The connection that sent it.
    pub(crate) from: ConnId,
    /// Its sender's certificate: a newcomer with it replaces the sender, and does not get
    /// what it sent itself.
    pub(crate) sender: Fingerprint,
    /// Its `messageId`, to tell its sender when it is never delivered.
    pub(crate) message_id: Option<MessageId<'static>>,
    pub(crate) expires: Instant,
}

/// A room's held messages, oldest first.
#[derive(Default)]
pub(crate) struct Hold {
    held: VecDeque<Held>,
    bytes: usize,
}

impl Hold {
    /// Holds `frame` if the limits allow; `false` when they do not (nothing is held).
    /// `message_id` is called only when the frame is held.
    pub(crate) fn push(
        &mut self,
        frame: &Message,
        from: ConnId,
        sender: Fingerprint,
        message_id: impl FnOnce() -> Option<MessageId<'static>>,
        limits: HoldLimits,
    ) -> bool {
        if self.held.len() >= limits.max_messages || self.bytes + frame.len() > limits.max_bytes {
            return false;
        }
        self.bytes += frame.len();
        let expires = Instant::now() + limits.max_age;
        self.held.push_back(Held { frame: frame.clone(), from, sender, message_id: message_id(), expires });
        true
    }

    /// Takes everything held, oldest first, for members that came with certificates
    /// `newcomers`; nothing when each of them sent everything held (it replaces the lone member
    /// that sent it, and is as alone as that member was: what it sent stays held for a peer).
    pub(crate) fn take_for<'a>(
        &mut self,
        mut newcomers: impl Iterator<Item = &'a Fingerprint>,
    ) -> VecDeque<Held> {
        if newcomers.all(|newcomer| self.held.iter().all(|h| h.sender == *newcomer)) {
            return VecDeque::new();
        }
        self.take_all()
    }

    /// Takes everything held, oldest first.
    pub(crate) fn take_all(&mut self) -> VecDeque<Held> {
        self.bytes = 0;
        std::mem::take(&mut self.held)
    }

    /// Removes and returns the messages that expired by `now`.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Held> {
        let mut expired = Vec::new();
        while self.held.front().is_some_and(|h| h.expires <= now) {
            if let Some(held) = self.held.pop_front() {
                self.bytes -= held.frame.len();
                expired.push(held);
            }
        }
        expired
    }

    /// When the oldest held message expires.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.held.front().map(|h| h.expires)
    }

    /// Messages held.
    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_buffer_is_bounded_and_ages_out_oldest_first() {
        let limits = HoldLimits { max_messages: 2, max_bytes: 10, max_age: Duration::from_secs(60) };
        let mut hold = Hold::default();
        let (from, sender) = (ConnId::next(), Fingerprint([1; 32]));
        assert!(hold.push(&Message::text("abcd"), from, sender, || None, limits));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(hold.push(&Message::text("efgh"), from, sender, || Some(MessageId::from(7)), limits));
        assert!(!hold.push(&Message::text("i"), from, sender, || None, limits), "two messages at most");
        assert_eq!((hold.len(), hold.bytes()), (2, 8));
        tokio::time::advance(Duration::from_secs(30)).await;
        let expired = hold.expire(Instant::now());
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].frame, Message::text("abcd"));
        assert_eq!((hold.len(), hold.bytes()), (1, 4));
        let rest = hold.take_all();
        assert_eq!(rest.front().map(|h| h.message_id.clone()), Some(Some(MessageId::from(7))));
        assert!(hold.is_empty() && hold.bytes() == 0 && hold.next_expiry().is_none());
    }

    #[test]
    fn what_a_member_sent_is_kept_from_its_own_replacement() {
        let limits = HoldLimits { max_messages: 8, max_bytes: 100, max_age: Duration::from_secs(60) };
        let mut hold = Hold::default();
        let (sender, other) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        assert!(hold.push(&Message::text("a"), ConnId::next(), sender, || None, limits));
        assert!(hold.push(&Message::text("b"), ConnId::next(), sender, || None, limits));
        assert!(hold.take_for([sender].iter()).is_empty(), "the sender's replacement");
        assert_eq!(hold.len(), 2, "still held, for a peer");
        assert_eq!(hold.take_for([sender, other].iter()).len(), 2, "a peer among the newcomers");
        assert!(hold.is_empty());
    }
}
