//! The Redis (or Valkey) backplane: presence ([`super::presence`]), and one inbox channel per
//! node, `<prefix>:inbox:<node>`.
//!
//! A node publishes its notes from one task, in order, so the notes from one node to another
//! keep their order: the notes of one batch for one node travel as one numbered packet
//! (`wire.rs`), in one `PUBLISH`. A note that cannot be published, or that no node was listening
//! for, is lost: delivery across nodes is at most once while Redis is unreachable
//! (docs/cluster.md). Nothing is lost unsaid: the members whose frames could not be published
//! get a `CONN:ERROR` 503 for each (with its `inResponseTo`), and a node that finds a packet
//! number skipped tells the members of the rooms it shares with the sending node.
//!
//! Five tasks run while the node serves: the publisher (`redis/publisher.rs`), the inbox
//! reader (`redis/subscriber.rs`), the presence refresh, the teller of refused frames
//! (`loss.rs`), and the heartbeat, which publishes an empty packet to the node's own inbox
//! every [`HEARTBEAT`] and subscribes again when one has not come back within [`SILENCE`] of
//! its publishing (a subscription that stopped delivering without closing). Redis counts as
//! reachable while the inbox and the refresh succeed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{Notify, oneshot};
use tracing::{debug, error, info, warn};

use tokio_tungstenite::tungstenite::Message;

use super::backplane::Backplane;
use super::error::BackplaneError;
use super::heartbeat::{HEARTBEAT, SILENCE, Watch};
use super::link::Link;
use super::loss::Refusals;
use super::outbox::Outbox;
use super::presence::{Joining, Store};
use super::view::new_view;
use super::wire::{Note, RoomNote, encode_card, field, key_of_field};
use crate::config::{ClusterConfig, redacted_url};
use crate::error::{Error, Result};
use crate::identity::Fingerprint;
use crate::metrics::ClusterTotals;
use crate::rooms::elsewhere;
use crate::rooms::hub::Hub;
use crate::rooms::id::{ConnId, NodeId, RoomId};
use crate::rooms::nodes::{BoxFuture, JoinError, Nodes, Roster, Unreachable};
use crate::rooms::registry::Space;
use crate::rooms::remote::{Card, MayReplace, MemberKey, NewView};

mod publisher;
mod subscriber;

/// Room refreshes in flight at once.
const REFRESHES_IN_FLIGHT: usize = 32;
/// Notes waiting to be published, at most (`outbox.rs`), besides `cluster.outbox_bytes`; beyond
/// either, a note is counted lost.
const OUTBOX_NOTES: usize = 65_536;
/// Notes published in one round trip, at most.
const BATCH: usize = 256;

/// A local member, as this node keeps putting it in presence.
struct Mine {
    room: RoomId,
    card: Bytes,
    fingerprint: String,
}

/// Presence and inboxes in Redis.
pub(crate) struct RedisBackplane {
    node: NodeId,
    config: ClusterConfig,
    link: Link,
    store: Store,
    outbox: Outbox,
    /// Taken when the node starts serving: its tasks run once.
    serving: AtomicBool,
    /// The inbox subscription is live.
    subscribed: AtomicBool,
    /// The last presence refresh succeeded.
    refreshed: AtomicBool,
    /// Set when the subscription should be made again (a refresh failed: the connection may
    /// be a black hole; or the heartbeat did not come back), with the number of such requests:
    /// a subscription made since a request ignores it ([`RedisBackplane::ask_resubscribe`]).
    resubscribe: Notify,
    resubscribes: AtomicU64,
    /// Held by a refresh from its reading of `mine` to its last script, and by a departure
    /// while it removes the member: a refresh never puts back a member that has left.
    presence: tokio::sync::Mutex<()>,
    mine: Mutex<HashMap<String, Mine>>,
    /// Probes sent to other nodes, waiting for their answer.
    probes: Mutex<HashMap<u64, oneshot::Sender<bool>>>,
    next_probe: AtomicU64,
    published: AtomicU64,
    lost: AtomicU64,
    /// Packets other nodes numbered that never arrived.
    missed: AtomicU64,
    /// Packets from other nodes that came after a later one, or again: not carried out.
    stale: AtomicU64,
    /// Frames the outbox refused, until their senders are told.
    refusals: Refusals,
    /// `CONN:ERROR`s telling members of lost frames.
    notices: AtomicU64,
    /// Times the inbox was found silent and subscribed again.
    silences: AtomicU64,
    /// The heartbeats published to this node's own inbox, until they come back.
    watch: Watch,
}

impl RedisBackplane {
    /// Connects to Redis, within `command_timeout`.
    ///
    /// # Errors
    /// [`Error::Cluster`] saying why Redis cannot be used.
    pub(crate) async fn connect(config: &ClusterConfig) -> Result<Self> {
        let link = Link::connect(config)
            .await
            .map_err(|e| Error::Cluster { url: redacted_url(&config.redis_url), reason: e.to_string() })?;
        let node = NodeId::new(&format!("{}-{:08x}", config.node_id, rand_suffix()));
        Ok(RedisBackplane {
            node,
            store: Store::new(&config.key_prefix, config.presence_ttl),
            config: config.clone(),
            link,
            outbox: Outbox::new(OUTBOX_NOTES, config.outbox_bytes),
            serving: AtomicBool::new(false),
            // Redis answered at connect; the subscription follows at once, and says so if it fails.
            subscribed: AtomicBool::new(true),
            refreshed: AtomicBool::new(true),
            resubscribe: Notify::new(),
            resubscribes: AtomicU64::new(0),
            presence: tokio::sync::Mutex::new(()),
            mine: Mutex::new(HashMap::new()),
            probes: Mutex::new(HashMap::new()),
            next_probe: AtomicU64::new(1),
            published: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            refusals: Refusals::default(),
            notices: AtomicU64::new(0),
            silences: AtomicU64::new(0),
            watch: Watch::default(),
        })
    }

    fn inbox(&self, node: &NodeId) -> String {
        format!("{}:inbox:{node}", self.config.key_prefix)
    }

    /// Sets one of the two health flags, logging when reachability changes.
    fn set(&self, flag: &AtomicBool, value: bool) {
        let before = self.healthy();
        flag.store(value, Ordering::Relaxed);
        match (before, self.healthy()) {
            (false, true) => info!("redis reachable again"),
            (true, false) => {
                warn!(
                    "redis unreachable: rooms on this node keep relaying; joins and frames across nodes fail"
                )
            }
            _ => {}
        }
    }

    fn mine(&self) -> std::sync::MutexGuard<'_, HashMap<String, Mine>> {
        self.mine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The node's work while it serves: publishing, the inbox, and refreshing presence. A
    /// second call (the node served twice) waits forever: one node has one set of tasks.
    async fn serve(self: Arc<Self>, hub: Arc<Hub>) {
        if self.serving.swap(true, Ordering::AcqRel) {
            return std::future::pending().await;
        }
        // Five tasks, not one future joining five: each is polled when its own event comes,
        // not whenever any of them is woken (a frame's publishing would poll the inbox, the
        // refresh and the heartbeat too). Dropping this future stops them.
        let mut tasks = tokio::task::JoinSet::new();
        let (this, rooms) = (Arc::clone(&self), Arc::clone(&hub));
        tasks.spawn(async move { this.publish(&rooms).await });
        let (this, rooms) = (Arc::clone(&self), Arc::clone(&hub));
        tasks.spawn(async move { this.subscribe(&rooms).await });
        let (this, rooms) = (Arc::clone(&self), Arc::clone(&hub));
        tasks.spawn(async move { this.refresh(&rooms).await });
        let (this, rooms) = (Arc::clone(&self), Arc::clone(&hub));
        tasks.spawn(async move { this.tell_refusals(&rooms).await });
        tasks.spawn(async move { self.heartbeat().await });
        while let Some(ended) = tasks.join_next().await {
            if let Err(e) = ended {
                error!(error = %e, "a task of the cluster's backplane failed");
            }
        }
    }

    /// Tells the senders of the frames the outbox refused, as they come.
    async fn tell_refusals(&self, hub: &Hub) {
        loop {
            let told = self.refusals.tell(hub).await;
            self.notices.fetch_add(told, Ordering::Relaxed);
        }
    }

    /// Asks the inbox to subscribe again.
    fn ask_resubscribe(&self) {
        self.resubscribes.fetch_add(1, Ordering::Relaxed);
        self.resubscribe.notify_one();
    }

    /// Queues a heartbeat to the node's own inbox every [`HEARTBEAT`], and subscribes again when
    /// one published has not come back within [`SILENCE`] while the subscription counts as
    /// live (`heartbeat.rs`).
    async fn heartbeat(&self) {
        let mut ticks = tokio::time::interval(HEARTBEAT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            // Skipped when the outbox is full: what is queued comes first.
            let _full = self.enqueue(&self.node, None);
            let silent = self.watch.silent_for();
            if self.subscribed.load(Ordering::Relaxed) && silent > SILENCE {
                self.silences.fetch_add(1, Ordering::Relaxed);
                warn!(
                    silent_ms = silent.as_millis() as u64,
                    "the inbox has not delivered this node's heartbeat: subscribing again"
                );
                self.set(&self.subscribed, false);
                self.watch.restart();
                self.ask_resubscribe();
            }
        }
    }

    /// Every quarter of the TTL: refreshes this node's members and brings each local room's
    /// view of the other nodes' members up to date (members of a node that died are
    /// forgotten, with PEER-LEFT; joins whose note was lost are learnt, with their HELLO).
    async fn refresh(&self, hub: &Hub) {
        let mut ticks = tokio::time::interval(self.config.presence_ttl / 4);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match self.refresh_once(hub).await {
                Ok(()) => self.set(&self.refreshed, true),
                Err(e) => {
                    warn!(error = %e, "cannot refresh presence");
                    self.set(&self.refreshed, false);
                    // The subscription's connection may be a black hole too.
                    self.ask_resubscribe();
                }
            }
        }
    }

    async fn refresh_once(&self, hub: &Hub) -> std::result::Result<(), BackplaneError> {
        // A probe, so that a node without members notices a silent Redis too.
        let mut commands = self.link.commands();
        let ping = redis::cmd("PING");
        tokio::time::timeout(self.config.command_timeout, ping.query_async::<String>(&mut commands))
            .await
            .map_err(|_| BackplaneError::Timeout(self.config.command_timeout))??;
        let _presence = self.presence.lock().await;
        let mut by_room: HashMap<RoomId, Vec<(String, Bytes, String)>> = HashMap::new();
        for (field, m) in self.mine().iter() {
            let entry = (field.clone(), m.card.clone(), m.fingerprint.clone());
            by_room.entry(m.room.clone()).or_default().push(entry);
        }
        let refreshes = futures_util::stream::iter(by_room).map(|(room, members)| async move {
            let mut commands = self.link.commands();
            let refreshed = tokio::time::timeout(
                self.config.command_timeout,
                self.store.refresh(&mut commands, &room, &self.node, &members),
            )
            .await
            .map_err(|_| BackplaneError::Timeout(self.config.command_timeout))
            .and_then(|r| r);
            (room, refreshed)
        });
        let results: Vec<_> = refreshes.buffer_unordered(REFRESHES_IN_FLIGHT).collect().await;
        let mut failure = None;
        for (room, result) in results {
            let refreshed = match result {
                Ok(refreshed) => refreshed,
                Err(e) => {
                    failure.get_or_insert(e);
                    continue;
                }
            };
            let Some(room) = hub.registry.room(room.as_str()) else { continue };
            for field in refreshed.replaced {
                if let Some(mailbox) = key_of_field(&field).and_then(|who| room.replace_local(who.conn, None))
                {
                    info!(room = %room.id(), "a member was replaced on another node: closing it");
                    mailbox.kill(crate::error::Close::Replaced);
                }
            }
            elsewhere::resync(hub, &room, refreshed.others).await;
        }
        failure.map_or(Ok(()), Err)
    }
}

impl Nodes for RedisBackplane {
    fn node(&self) -> &NodeId {
        &self.node
    }

    fn view_maker(&self) -> NewView {
        new_view
    }

    fn space<'a>(
        &'a self,
        room: &'a RoomId,
        fingerprint: &'a Fingerprint,
        max_peers: usize,
    ) -> BoxFuture<'a, std::result::Result<(Space, Option<MemberKey>), Unreachable>> {
        Box::pin(async move {
            let mut commands = self.link.commands();
            let (live, holder) = self.store.space(&mut commands, room, fingerprint).await?;
            let space = if live < max_peers || holder.is_some() { Space::Free } else { Space::RoomFull };
            // A member of this node that joined since the registry was asked is met at the
            // newcomer's HELLO (a conflict there), not probed through Redis.
            Ok((space, holder.filter(|who| who.node != self.node)))
        })
    }

    fn join<'a>(
        &'a self,
        room: &'a RoomId,
        card: &'a Card,
        max_peers: usize,
        may_replace: &'a MayReplace,
    ) -> BoxFuture<'a, std::result::Result<Roster, JoinError>> {
        Box::pin(async move {
            let encoded = encode_card(card);
            let mut commands = self.link.commands();
            let joined = self.store.join(&mut commands, room, card, &encoded, max_peers, may_replace).await;
            let field = field(&card.key());
            let roster = match joined {
                Ok(Joining::Joined(roster)) => roster,
                Ok(Joining::Full) => return Err(JoinError::Full),
                Ok(Joining::Conflict) => return Err(JoinError::Conflict),
                Err(e) => {
                    // The script may have run though its answer was lost: take the entry back.
                    let _ = self.store.leave(&mut commands, room, &field).await;
                    return Err(JoinError::Unreachable(e.into()));
                }
            };
            let mine = Mine { room: room.clone(), card: encoded, fingerprint: card.fingerprint.to_string() };
            self.mine().insert(field, mine);
            Ok(roster)
        })
    }

    /// One read of the room's presence after a local join (the read-only `LIVE` script).
    fn live_elsewhere<'a>(&'a self, room: &'a RoomId) -> BoxFuture<'a, Option<Vec<Card>>> {
        Box::pin(async move {
            let mut commands = self.link.commands();
            let read = tokio::time::timeout(
                self.config.command_timeout,
                self.store.live(&mut commands, room, &self.node),
            )
            .await;
            match read {
                Ok(Ok(others)) => Some(others),
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot read the room's presence after a join");
                    None
                }
                Err(_) => {
                    warn!("cannot read the room's presence after a join: timed out");
                    None
                }
            }
        })
    }

    fn leave<'a>(&'a self, room: &'a RoomId, conn: ConnId) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let field = field(&MemberKey { node: self.node.clone(), conn });
            let _presence = self.presence.lock().await;
            if self.mine().remove(&field).is_none() {
                return;
            }
            let mut commands = self.link.commands();
            if let Err(e) = self.store.leave(&mut commands, room, &field).await {
                // The entry expires within the TTL; the others learn of the departure by note.
                debug!(error = %e, "cannot remove a member from presence");
            }
        })
    }

    fn probe<'a>(
        &'a self,
        who: &'a MemberKey,
        room: &'a RoomId,
        newcomer: SocketAddr,
        timeout: Duration,
    ) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let probe = self.next_probe.fetch_add(1, Ordering::Relaxed);
            let (answer, answered) = oneshot::channel();
            self.probes().insert(probe, answer);
            let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            let note = Note::Probe {
                room: room.clone(),
                conn: who.conn,
                from: self.node.clone(),
                probe,
                newcomer: newcomer.to_string(),
                timeout_ms,
            };
            self.send_state(std::slice::from_ref(&who.node), note);
            // The member's node takes the probe's time, and the two notes their way through Redis.
            let wait = timeout + self.config.command_timeout * 2;
            let alive = matches!(tokio::time::timeout(wait, answered).await, Ok(Ok(true)));
            self.probes().remove(&probe);
            alive
        })
    }

    fn send_frame(&self, nodes: &[NodeId], room: &RoomId, from: ConnId, frame: Message) {
        let note =
            Note::Room(RoomNote::Frame { room: room.clone(), origin: self.node.clone(), conn: from, frame });
        // Refused (the outbox is full): its sender is told by the task that tells refusals,
        // since this may run with the room locked.
        if let Err(Note::Room(RoomNote::Frame { frame, .. })) = self.send(nodes, note)
            && self.refusals.add(room, from, &frame).is_err()
        {
            warn!(room = %room, member = %from, "too many refused frames waiting for their senders to be told: this one's sender is not told");
        }
    }

    fn send_joined(&self, nodes: &[NodeId], room: &RoomId, card: &Card) {
        self.send_state(
            nodes,
            Note::Room(RoomNote::Joined { room: room.clone(), card: Box::new(card.clone()) }),
        );
    }

    fn send_left(&self, nodes: &[NodeId], room: &RoomId, who: &MemberKey, reason: &str) {
        let note = RoomNote::Left { room: room.clone(), who: who.clone(), reason: reason.to_owned() };
        self.send_state(nodes, Note::Room(note));
    }

    fn send_replace(&self, node: &NodeId, room: &RoomId, conn: ConnId) {
        let note = Note::Room(RoomNote::Replace { room: room.clone(), conn, by: self.node.clone() });
        self.send_state(std::slice::from_ref(node), note);
    }
}

impl Backplane for RedisBackplane {
    fn healthy(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed) && self.refreshed.load(Ordering::Relaxed)
    }

    fn run(self: Arc<Self>, hub: Arc<Hub>) -> BoxFuture<'static, ()> {
        Box::pin(RedisBackplane::serve(self, hub))
    }

    fn drain(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let limit = self.config.command_timeout * 2;
            let _ = tokio::time::timeout(limit, self.outbox.drained()).await;
        })
    }

    fn totals(&self) -> ClusterTotals {
        ClusterTotals {
            up: self.healthy(),
            published: self.published.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            missed: self.missed.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            notices: self.notices.load(Ordering::Relaxed),
            silences: self.silences.load(Ordering::Relaxed),
        }
    }
}

/// A random number for the node's name.
fn rand_suffix() -> u32 {
    let mut bytes = [0u8; 4];
    // The system's randomness; should it fail, the clock still tells restarts apart.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        return nanos;
    }
    u32::from_be_bytes(bytes)
}
