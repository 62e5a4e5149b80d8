//! The node's outbox: the notes waiting for the publisher (`redis.rs`), in the order they were
//! queued, bounded in number and in bytes.
//!
//! A queue under a lock rather than a channel: a member's frame costs one short lock and no
//! wake-up unless the publisher was waiting for work, and the publisher takes a whole batch at
//! once. What is queued or being published is counted together, so that a draining node can
//! wait until every note it had is out ([`Outbox::drained`]).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::recent::NODES;
use super::wire::Note;
use crate::rooms::id::NodeId;

/// A note and the node it is for, as it is (it is encoded once, into its packet); `None` is
/// the heartbeat.
pub(crate) type Queued = (NodeId, Option<Note>);

/// What a note counts against the bytes bound, beyond its payload.
const NOTE_OVERHEAD: usize = 64;

/// Notes waiting to be published.
pub(crate) struct Outbox {
    max_notes: usize,
    max_bytes: usize,
    state: Mutex<State>,
    /// Wakes the publisher when the outbox stops being empty.
    filled: Notify,
    /// Tells [`Outbox::drained`] that nothing is queued or being published any more.
    drained: Notify,
}

#[derive(Default)]
struct State {
    /// Each note with what it counts against the bytes bound.
    queue: VecDeque<(Queued, usize)>,
    /// Notes and bytes queued, and taken by the publisher but not yet done with.
    notes: usize,
    bytes: usize,
    /// The nodes notes were refused for since the publisher last took a batch ([`NODES`] at
    /// most).
    skipped: Vec<NodeId>,
}

/// The outbox had no room: the note, given back.
#[derive(Debug)]
pub(crate) struct Full(pub(crate) Option<Note>);

/// What the publisher took in one batch, given back with [`Outbox::done`].
#[must_use]
pub(crate) struct Taken {
    notes: usize,
    bytes: usize,
    /// The nodes notes were refused for since the last batch: the publisher skips a packet
    /// number for each, so that those nodes see a gap and tell their members.
    pub(crate) skipped: Vec<NodeId>,
}

impl Outbox {
    /// An outbox of at most `max_notes` notes and `max_bytes` bytes (payloads and
    /// [`NOTE_OVERHEAD`] each).
    pub(crate) fn new(max_notes: usize, max_bytes: usize) -> Self {
        Outbox {
            max_notes,
            max_bytes,
            state: Mutex::default(),
            filled: Notify::new(),
            drained: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `note` for `node`, unless that would pass a bound.
    ///
    /// # Errors
    /// [`Full`]: the note is not queued; a note (not a heartbeat) refused is remembered for
    /// [`Taken::skipped`].
    pub(crate) fn push(&self, node: &NodeId, note: Option<Note>) -> Result<(), Full> {
        let cost = cost(note.as_ref());
        let mut state = self.state();
        if state.notes >= self.max_notes || state.bytes + cost > self.max_bytes {
            if note.is_some() && state.skipped.len() < NODES && !state.skipped.contains(node) {
                state.skipped.push(node.clone());
            }
            return Err(Full(note));
        }
        let first = state.queue.is_empty();
        state.queue.push_back(((node.clone(), note), cost));
        state.notes += 1;
        state.bytes += cost;
        drop(state);
        if first {
            // A permit is kept if the publisher is not waiting yet: no wake-up is lost.
            self.filled.notify_one();
        }
        Ok(())
    }

    /// Waits for notes and moves up to `max` of them into `batch`, in order. They still
    /// count as queued until [`Outbox::done`].
    pub(crate) async fn take(&self, batch: &mut Vec<Queued>, max: usize) -> Taken {
        loop {
            {
                let mut state = self.state();
                if !state.queue.is_empty() {
                    let n = state.queue.len().min(max);
                    let mut bytes = 0;
                    batch.extend(state.queue.drain(..n).map(|(queued, cost)| {
                        bytes += cost;
                        queued
                    }));
                    return Taken { notes: n, bytes, skipped: std::mem::take(&mut state.skipped) };
                }
            }
            self.filled.notified().await;
        }
    }

    /// The publisher is done with what it took (published or counted lost).
    pub(crate) fn done(&self, taken: Taken) {
        let mut state = self.state();
        state.notes -= taken.notes.min(state.notes);
        state.bytes -= taken.bytes.min(state.bytes);
        let empty = state.notes == 0;
        drop(state);
        if empty {
            self.drained.notify_waiters();
        }
    }

    /// Resolves once nothing is queued or being published.
    pub(crate) async fn drained(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.state().notes == 0 {
                return;
            }
            drained.await;
        }
    }
}

/// What a queued note counts against the bytes bound.
fn cost(note: Option<&Note>) -> usize {
    note.map_or(0, Note::payload_len) + NOTE_OVERHEAD
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::Message;

    use super::*;
    use crate::cluster::wire::RoomNote;
    use crate::rooms::id::{ConnId, RoomId};

    fn frame(n: usize) -> Option<Note> {
        Some(Note::Room(RoomNote::Frame {
            room: RoomId::parse("gw/1").unwrap(),
            origin: NodeId::new("a"),
            conn: ConnId::from_wire(1),
            frame: Message::binary(vec![0u8; n]),
        }))
    }

    #[tokio::test]
    async fn notes_come_out_in_order_in_batches_and_the_bounds_hold() {
        let outbox = Outbox::new(3, 1000);
        let node = NodeId::new("b");
        for n in [1, 2, 3] {
            outbox.push(&node, frame(n)).unwrap();
        }
        assert!(outbox.push(&node, None).is_err(), "a fourth note passes the count");
        let mut batch = Vec::new();
        let taken = outbox.take(&mut batch, 2).await;
        let sizes =
            |b: &[Queued]| b.iter().map(|(_, n)| n.as_ref().map_or(0, Note::payload_len)).collect::<Vec<_>>();
        assert_eq!(sizes(&batch), [1, 2]);
        assert!(outbox.push(&node, None).is_err(), "taken notes count until done");
        outbox.done(taken);
        batch.clear();
        assert!(outbox.push(&node, frame(1000)).is_err(), "the bytes bound");
        outbox.push(&node, None).unwrap();
        let taken = outbox.take(&mut batch, 10).await;
        assert_eq!(sizes(&batch), [3, 0]);
        outbox.done(taken);
    }

    #[tokio::test]
    async fn a_refused_note_comes_back_and_its_node_is_named_once_with_the_next_batch() {
        let outbox = Outbox::new(1, 1000);
        let (b, c, me) = (NodeId::new("b"), NodeId::new("c"), NodeId::new("me"));
        outbox.push(&b, frame(1)).unwrap();
        let Err(Full(Some(back))) = outbox.push(&c, frame(7)) else { panic!("refused, with the note") };
        assert_eq!(back.payload_len(), 7);
        assert!(outbox.push(&c, frame(8)).is_err());
        assert!(outbox.push(&me, None).is_err(), "a heartbeat refused is not a note lost");
        let mut batch = Vec::new();
        let taken = outbox.take(&mut batch, 10).await;
        assert_eq!(taken.skipped, [c]);
        outbox.done(taken);
        batch.clear();
        outbox.push(&b, frame(1)).unwrap();
        let taken = outbox.take(&mut batch, 10).await;
        assert!(taken.skipped.is_empty(), "named once");
        outbox.done(taken);
    }

    #[tokio::test]
    async fn the_publisher_is_woken_by_a_note_and_a_drain_waits_for_the_last() {
        let outbox = std::sync::Arc::new(Outbox::new(10, 1 << 20));
        let taker = tokio::spawn({
            let outbox = std::sync::Arc::clone(&outbox);
            async move {
                let mut batch = Vec::new();
                let taken = outbox.take(&mut batch, 10).await;
                (batch, taken)
            }
        });
        tokio::task::yield_now().await;
        outbox.push(&NodeId::new("b"), frame(5)).unwrap();
        let (batch, taken) = taker.await.unwrap();
        assert_eq!(batch.len(), 1);
        let drain = tokio::spawn({
            let outbox = std::sync::Arc::clone(&outbox);
            async move { outbox.drained().await }
        });
        tokio::task::yield_now().await;
        assert!(!drain.is_finished(), "a note is being published");
        outbox.done(taken);
        drain.await.unwrap();
    }
}
