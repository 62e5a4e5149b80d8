//! A member's life after the upgrade: the pending phase until its `CONN:HELLO`, joining the
//! room (here and in the cluster) and telling the others, forwarding its frames
//! (`forward.rs`) until the connection ends, and leaving.
//!
//! [`serve`] is generic over the stream of frames read from the peer and the sink its writer
//! writes to, so the whole life of a member can be driven with channels in tests.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, Stream, StreamExt};
use micronets_message::{Envelope, Kind};
use tokio::time;
use tokio_tungstenite::tungstenite::Message;
use tracing::{Span, info, warn};

use super::elsewhere;
use super::fanout::{self, Sender};
use super::forward::Forward;
use super::hub::Hub;
use super::id::{ConnId, PeerName, RoomId};
use super::mailbox::Mailbox;
use super::nodes::JoinError;
use super::registry::{Joined, Refused};
use super::remote::{Card, MayReplace, MemberKey};
use super::room::{Certificates, Member, Room};
use super::websocket::{Frames, ReadError};
use super::writer::write_loop;
use crate::error::Close;
use crate::identity::{PeerIdentity, unix_now};
use crate::metrics::Metrics;

/// How long the writer gets to flush the close frame after the reader has finished.
const WRITER_GRACE: Duration = Duration::from_secs(2);

/// A connection the edge let in: who it is and where from, the room it asked for, the
/// `peerClass` the ACL rule that let it in requires of its HELLO, and which member with its
/// certificate it may replace.
pub(crate) struct Admitted {
    pub(crate) identity: PeerIdentity,
    pub(crate) chain: Certificates,
    pub(crate) address: std::net::SocketAddr,
    pub(crate) room: RoomId,
    pub(crate) peer_class: Option<String>,
    pub(crate) may_replace: MayReplace,
}

/// Serves an upgraded connection to its end: reads its frames from `stream`, writes to `sink`
/// from a writer task of its own, and returns why it ended. `recheck` is asked, with the HELLO's
/// `peerClass`, before the join: a reload may have revoked the certificate meanwhile.
///
/// The writer starts at once; the future this returns holds the connection's state once each
/// (an `async fn` would also keep its moved-from arguments, for every idle connection).
pub(crate) fn serve<'a, St, Si>(
    hub: &'a Arc<Hub>,
    admitted: Admitted,
    stream: St,
    sink: Si,
    recheck: impl Fn(Option<&str>) -> Result<(), Close> + 'a,
) -> impl Future<Output = Close> + 'a
where
    St: Frames + 'a,
    Si: Sink<Message> + Send + Unpin + 'static,
    Si::Error: Send,
{
    let config = &hub.config;
    let mailbox = Mailbox::new(ConnId::next(), config.queue_frames, config.queue_bytes);
    let writer = hub.tracker.spawn(write_loop(sink, mailbox.clone(), config.ping_interval));
    let peer = Peer { hub, admitted, mailbox };
    let mut stream = stream;
    async move {
        let close = peer.live(&mut stream, recheck).await;
        peer.mailbox.kill(close.clone());
        let _ = time::timeout(WRITER_GRACE, writer).await;
        peer.mailbox.kill_reason().unwrap_or(close)
    }
}

/// A connected peer after the upgrade.
struct Peer<'a> {
    hub: &'a Hub,
    admitted: Admitted,
    mailbox: Mailbox,
}

impl Peer<'_> {
    /// The pending phase, then membership; returns why the connection ends.
    async fn live<St: Frames>(
        &self,
        stream: &mut St,
        recheck: impl Fn(Option<&str>) -> Result<(), Close>,
    ) -> Close {
        // The phases before and after forwarding run as futures of their own, on the heap, so
        // that their state does not size the connection's task for its whole life (the idle
        // memory per connection, docs/performance.md).
        let (hello, name) = match Box::pin(self.await_hello(stream)).await {
            Ok(hello) => hello,
            Err(close) => return close,
        };
        stream.hello_said();
        if let Err(close) = recheck(name.class.as_deref()) {
            return close;
        }
        let room = match Box::pin(self.join(hello, &name)).await {
            Ok(joined) => joined,
            Err(close) => return close,
        };
        let expires = instant_of(self.admitted.identity.not_after);
        let close = Forward::new(self.hub, &self.mailbox, &room, expires).relay(stream).await;
        self.mailbox.relay_stopped();
        Box::pin(self.leave(&room, &name, &close)).await;
        close
    }

    fn room_id(&self) -> &RoomId {
        &self.admitted.room
    }

    /// Waits for the first data frame, which must be a valid `CONN:HELLO`.
    async fn await_hello<St>(&self, stream: &mut St) -> Result<(Message, PeerName), Close>
    where
        St: Stream<Item = Result<Message, ReadError>> + Unpin,
    {
        let config = &self.hub.config;
        let shutdown = &self.hub.shutdown;
        let deadline = time::sleep(config.hello_timeout);
        tokio::pin!(deadline);
        loop {
            let frame = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Err(Close::Shutdown),
                () = self.mailbox.until_killed() => return Err(self.mailbox.kill_reason().unwrap_or(Close::Shutdown)),
                () = &mut deadline => return Err(Close::NoHello),
                frame = stream.next() => frame,
            };
            let message = match frame {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => message,
                Some(Ok(Message::Ping(payload))) => {
                    self.mailbox.pong(payload);
                    continue;
                }
                Some(Ok(Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) | None => return Err(Close::PeerClosed),
                Some(Err(e)) => return Err(e.into_close(config.max_hello_bytes)),
            };
            let payload: &[u8] = match &message {
                Message::Text(text) => text.as_bytes(),
                Message::Binary(bytes) => bytes.as_ref(),
                _ => &[],
            };
            let limit = config.max_hello_bytes;
            if payload.len() > limit {
                return Err(Close::BadHello(format!(
                    "{} bytes, more than the {limit} allowed",
                    payload.len()
                )));
            }
            let envelope = Envelope::from_slice(payload).map_err(|e| Close::BadHello(e.to_string()))?;
            let Kind::Hello(hello) = envelope.kind else {
                return Err(Close::BadHello(format!(
                    "expected CONN:HELLO first, got {}",
                    envelope.message_type()
                )));
            };
            if let Some(required) = &self.admitted.peer_class
                && hello.peer_class.as_ref() != Some(required)
            {
                info!(peer_class = ?hello.peer_class, required = %required, "ACL: HELLO with another peerClass");
                return Err(Close::BadHello(format!("peerClass must be {required:?} in this room")));
            }
            let name = PeerName { class: hello.peer_class, id: hello.peer_id };
            Span::current().record("peer_id", tracing::field::debug(&name.id));
            return Ok((message, name));
        }
    }

    /// Joins the room, here and in the cluster, and tells the others.
    async fn join(&self, hello: Message, name: &PeerName) -> Result<Arc<Room>, Close> {
        let hub = self.hub;
        let identity = &self.admitted.identity;
        let card = Card {
            node: hub.nodes.node().clone(),
            conn: self.mailbox.conn(),
            fingerprint: identity.fingerprint,
            name: name.clone(),
            hello: hello.clone(),
        };
        let may_replace = &self.admitted.may_replace;
        let roster = match hub.nodes.join(self.room_id(), &card, hub.config.max_peers, may_replace).await {
            Ok(roster) => roster,
            Err(JoinError::Full) => return Err(Close::RoomFull),
            Err(JoinError::Conflict) => return Err(self.conflict_at_hello()),
            Err(JoinError::Unreachable(e)) => {
                warn!(error = %e, "cluster presence unreachable: cannot join");
                return Err(Close::ClusterUnavailable(e.to_string()));
            }
        };
        let member = Member {
            mailbox: self.mailbox.clone(),
            fingerprint: identity.fingerprint,
            hello,
            name: name.clone(),
            subject: Arc::from(identity.subject.as_str()),
            since: std::time::SystemTime::now(),
            replaced_by: None,
            address: self.admitted.address,
            chain: Arc::clone(&self.admitted.chain),
            conflicts_survived: 0,
            not_after: self.admitted.identity.not_after,
        };
        let replaced_key = roster.replaced.as_ref().map(Card::key);
        let here = hub.nodes.node();
        let joined = match hub.registry.join(
            self.room_id(),
            member,
            roster.others,
            replaced_key.as_ref(),
            may_replace,
            here,
        ) {
            Ok(joined) => joined,
            Err(refused) => {
                hub.nodes.leave(self.room_id(), card.conn).await;
                return Err(match refused {
                    Refused::TooManyRooms => Close::TooManyRooms,
                    Refused::RoomFull => Close::RoomFull,
                    Refused::IdentityConflict => self.conflict_at_hello(),
                });
            }
        };
        let room = Arc::clone(&joined.room);
        self.announce(joined, &card, roster.replaced).await;
        if let Some(live) = hub.nodes.live_elsewhere(self.room_id()).await {
            elsewhere::learn(hub, &room, live).await;
        }
        Ok(room)
    }

    /// A member with this certificate appeared after the upgrade, and this connection was not
    /// cleared to replace it: it leaves, and its next attempt probes the member.
    fn conflict_at_hello(&self) -> Close {
        self.hub.metrics.identity_conflict("refused_at_hello");
        info!("a member with this certificate joined meanwhile: not replaced, closing with 1008");
        Close::IdentityConflict
    }

    /// After a join: retire a replaced member (here or on another node), then tell the others
    /// (PEER-LEFT for the replaced one first, then the newcomer's HELLO).
    async fn announce(&self, joined: Joined, card: &Card, replaced_elsewhere: Option<Card>) {
        let hub = self.hub;
        let Joined { room, entry } = joined;
        Metrics::inc(&hub.metrics.joins);
        // Its in-flight frames must reach the others before they learn it left.
        let wait = hub.config.slow_consumer_timeout * 2;
        let mut replaced_name = None;
        if let Some(replaced) = entry.replaced {
            info!(old_peer = ?replaced.name.id, "replacing the member with the same certificate");
            replaced.mailbox.kill(Close::Replaced);
            let _ = time::timeout(wait, replaced.mailbox.until_relay_stopped()).await;
            // The members on other nodes learn it from here: it is no longer a member to
            // leave by itself.
            let who = MemberKey { node: card.node.clone(), conn: replaced.mailbox.conn() };
            hub.nodes.send_left(&room.remote_nodes(), self.room_id(), &who, "replaced");
            replaced_name = Some(replaced.name);
        }
        if let Some(old) = replaced_elsewhere {
            info!(old_peer = ?old.name.id, node = %old.node, "replacing the member with the same certificate on another node");
            let gone = room.departure(old.key());
            hub.nodes.send_replace(&old.node, self.room_id(), old.conn);
            if time::timeout(wait, gone).await.is_err() {
                warn!(node = %old.node, "the replaced member's node did not confirm its departure in time");
            }
            replaced_name = Some(old.name);
        }
        if let Some(name) = replaced_name {
            let left = hub.replies.peer_left(&name, "replaced");
            fanout::deliver_all(hub, &entry.others, left, Sender::Local).await;
        }
        for learned in &entry.learned {
            fanout::deliver_all(hub, &entry.others, learned.hello.clone(), Sender::Local).await;
        }
        fanout::deliver_all(hub, &entry.others, card.hello.clone(), Sender::Local).await;
        hub.nodes.send_joined(&room.remote_nodes(), self.room_id(), card);
        info!(
            peer_class = ?card.name.class,
            peer_id = ?card.name.id,
            members = entry.members,
            held_delivered = entry.held_delivered,
            "joined room"
        );
    }

    /// Leaves the room and tells the remaining members, here and on other nodes; then gives
    /// its place in the cluster back.
    async fn leave(&self, room: &Arc<Room>, name: &PeerName, close: &Close) {
        let hub = self.hub;
        let left = hub.registry.leave(room, self.mailbox.conn());
        if left.discarded > 0 {
            Metrics::add(&hub.metrics.held_discarded, left.discarded as u64);
            warn!(discarded = left.discarded, "sender left before any peer joined: held messages discarded");
        }
        if left.was_member {
            let reason = match close {
                Close::PeerClosed => "closed".to_owned(),
                Close::Transport(_) => "connection lost".to_owned(),
                // Replaced from another node (from this one, it is no longer a member here).
                Close::Replaced => "replaced".to_owned(),
                other => other.reason(),
            };
            let who = MemberKey { node: hub.nodes.node().clone(), conn: self.mailbox.conn() };
            hub.nodes.send_left(&left.nodes, self.room_id(), &who, &reason);
            let message = hub.replies.peer_left(name, &reason);
            fanout::deliver_all(hub, &left.others, message, Sender::Local).await;
        }
        hub.nodes.leave(self.room_id(), self.mailbox.conn()).await;
    }
}

/// The moment a certificate's notAfter (seconds since the Unix epoch) passes, on the clock
/// timers use; now when it has passed already.
fn instant_of(not_after: i64) -> time::Instant {
    let left = u64::try_from(not_after.saturating_sub(unix_now())).unwrap_or(0);
    let now = time::Instant::now();
    // A far-off notAfter only needs to stay far off; a hundred years cannot overflow the clock.
    now.checked_add(Duration::from_secs(left.min(100 * 365 * 86_400))).unwrap_or(now)
}
