//! The node's side of its inbox: one task subscribes to it (again, with backoff, whenever
//! the subscription is lost or found silent), reads the packets other nodes publish to it,
//! checks their numbers (`loss.rs`) and carries out each note: frames and room changes through
//! `inbox.rs`, probes answered from a task of their own.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::RedisBackplane;
use crate::cluster::inbox::{self, Deliveries};
use crate::cluster::link::MAX_BACKOFF;
use crate::cluster::loss::{self, Arrival, Numbers};
use crate::cluster::wire::{FrameNote, Note, Packet, is_single_note};
use crate::rooms::hub::Hub;
use crate::rooms::id::{ConnId, NodeId, RoomId};

impl RedisBackplane {
    /// Listens on this node's inbox, subscribing again (with backoff) whenever the
    /// subscription is lost, and carries out each note.
    pub(super) async fn subscribe(self: &Arc<Self>, hub: &Arc<Hub>) {
        let channel = self.inbox(&self.node);
        let mut backoff = Duration::from_millis(100);
        // The last packet number from each node, across subscriptions: a gap while this node
        // was not subscribed is a gap too.
        let mut numbers = Numbers::default();
        let mut deliveries = Deliveries::default();
        loop {
            let subscribing =
                tokio::time::timeout(self.config.command_timeout * 2, self.link.subscribe(&channel));
            let mut inbox = match subscribing.await {
                Ok(Ok(inbox)) => inbox,
                failed => {
                    self.set(&self.subscribed, false);
                    if let Ok(Err(e)) = failed {
                        debug!(error = %e, "cannot subscribe to the inbox; retrying");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            // A new subscription has until the next heartbeats to prove itself, and answers
            // only requests to subscribe again made from now on.
            self.watch.restart();
            let asked = self.resubscribes.load(Ordering::Relaxed);
            self.set(&self.subscribed, true);
            info!(channel, node = %self.node, "subscribed to this node's inbox");
            loop {
                let payload = tokio::select! {
                    () = self.resubscribe.notified() => {
                        if self.resubscribes.load(Ordering::Relaxed) == asked {
                            continue;
                        }
                        break;
                    }
                    payload = inbox.next() => payload,
                };
                let Some(payload) = payload else { break };
                if is_single_note(&payload) {
                    // From a node of the earlier version: carried out, unnumbered.
                    self.carry_out(hub, payload, &mut deliveries).await;
                    deliveries.write();
                    continue;
                }
                let packet = match Packet::decode(payload) {
                    Ok(packet) => packet,
                    Err(e) => {
                        warn!(error = %e, "malformed packet in the inbox: dropped");
                        continue;
                    }
                };
                if packet.origin == self.node {
                    // The heartbeat: its numbers are not counted, a heartbeat lost is no frame lost.
                    self.watch.returned(packet.seq);
                } else {
                    match numbers.arrived(&packet.origin, packet.seq) {
                        Arrival::Next => {}
                        Arrival::After { missed } => {
                            self.missed.fetch_add(missed, Ordering::Relaxed);
                            let told = loss::tell_missed(hub, &packet.origin, missed).await;
                            self.notices.fetch_add(told, Ordering::Relaxed);
                        }
                        Arrival::Stale => {
                            self.stale.fetch_add(1, Ordering::Relaxed);
                            warn!(node = %packet.origin, number = packet.seq, "a packet from another node came after a later one, or again: dropped");
                            continue;
                        }
                    }
                }
                for note in packet.notes {
                    self.carry_out(hub, note, &mut deliveries).await;
                }
                deliveries.write();
            }
            self.set(&self.subscribed, false);
            warn!("inbox subscription lost; subscribing again");
        }
    }

    /// Carries out one note from another node.
    async fn carry_out(self: &Arc<Self>, hub: &Arc<Hub>, note: Bytes, deliveries: &mut Deliveries) {
        // Frames, the most of them, are read in place.
        match FrameNote::read(&note) {
            Some(Ok(frame)) => return deliveries.frame(hub, frame).await,
            Some(Err(e)) => return warn!(error = %e, "malformed note in the inbox: dropped"),
            None => {}
        }
        match Note::decode(note) {
            Ok(Note::Probe { room, conn, from, probe, newcomer, timeout_ms }) => {
                self.answer_probe(hub, room, conn, from, probe, newcomer, timeout_ms);
            }
            Ok(Note::Probed { probe, alive }) => {
                if let Some(waiter) = self.probes().remove(&probe) {
                    let _ = waiter.send(alive);
                }
            }
            Ok(Note::Room(note)) => inbox::apply(hub, note, deliveries).await,
            Err(e) => warn!(error = %e, "malformed note in the inbox: dropped"),
        }
    }

    pub(super) fn probes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<bool>>> {
        self.probes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Probes this node's member `conn` of `room` for another node, in a task of its own (the
    /// inbox never waits), and sends the answer back.
    #[allow(clippy::too_many_arguments)]
    fn answer_probe(
        self: &Arc<Self>,
        hub: &Arc<Hub>,
        room: RoomId,
        conn: ConnId,
        from: NodeId,
        probe: u64,
        newcomer: String,
        timeout_ms: u64,
    ) {
        let this = Arc::clone(self);
        let rooms = Arc::clone(hub);
        // No member answers later than the configured timeout allows.
        let timeout = Duration::from_millis(timeout_ms).min(crate::config::MAX_PROBE_TIMEOUT);
        hub.tracker.spawn(async move {
            let member = rooms.registry.room(room.as_str()).and_then(|r| r.local_member(conn).map(|m| (r, m)));
            let alive = match member {
                Some((room, (mailbox, address))) => {
                    let alive = mailbox.probe(timeout).await;
                    if alive {
                        room.survived_conflict(conn);
                    }
                    info!(room = %room.id(), member = %address, newcomer, node = %from, alive, "identity conflict: probed this node's member for another node");
                    alive
                }
                None => false,
            };
            this.send_state(std::slice::from_ref(&from), Note::Probed { probe, alive });
        });
    }
}
