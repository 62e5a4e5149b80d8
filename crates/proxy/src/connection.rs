//! One peer's connection, from TLS to close: the handshake and upgrade with their deadlines,
//! the pending phase until `CONN:HELLO`, membership, relaying, and leaving.
//!
//! Errors never leave this module: [`run`] logs each connection's end once, with its reason, at
//! a level that says whose fault it was.

use std::future::{Future, poll_fn};
use std::net::IpAddr;
use std::sync::Arc;
use std::task::Poll;

use futures_util::StreamExt;
use micronets_message::{ConnError, Envelope, Header, Kind, MessageId, PEER_LEFT, RestResponse};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{self, Instant};
use tokio_tungstenite::tungstenite::Message;
use tracing::{Span, debug, info, warn};

use crate::Shared;
use crate::acl::Decision;
use crate::auth_hook::{self, Verdict};
use crate::cluster::JoinError;
use crate::cluster::wire::{Card, Note};
use crate::error::Close;
use crate::identity::Fingerprint;
use crate::identity::PeerIdentity;
use crate::metrics::{FrameTally, Metrics, OpenConnection};
use crate::rate::{Admit, RateLimit};
use crate::registry::{Joined, Space};
use crate::relay::{ConnId, Delivery, Mailbox, write_loop};
use crate::room::{HoldLimits, Member, PeerName, Room, RoomId, Route, Targets};
use crate::slots::Slot;
use crate::upgrade::{self, Refusal};
use crate::websocket::{FrameReader, FrameWriter, ReadError};

type Tls = tokio_rustls::server::TlsStream<TcpStream>;
type WsStream = FrameReader<ReadHalf<Tls>>;
type WsSink = FrameWriter<WriteHalf<Tls>>;

/// An upgraded connection: its two halves (the TLS stream lives on the heap behind them, so it
/// does not size the connection's task), the peer's identity and its room.
struct Established {
    sink: WsSink,
    stream: WsStream,
    identity: PeerIdentity,
    room_id: RoomId,
    /// The `peerClass` the ACL rule that let it in requires of its HELLO.
    peer_class: Option<String>,
    /// Its place under `max_connections_per_identity`.
    _identity_slot: Slot<Fingerprint>,
}

/// A connection's places under the limits counted at accept, given back when it ends.
pub(crate) struct Places {
    /// Its place under `max_connections`.
    pub(crate) _permit: OwnedSemaphorePermit,
    /// Counts it as open.
    pub(crate) _open: OpenConnection,
    /// Its place under `max_connections_per_ip`.
    pub(crate) _ip: Slot<IpAddr>,
}

/// How long the writer gets to flush the close frame after the reader has finished.
const WRITER_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves one accepted TCP connection to its end; its `places` are given back when this
/// returns.
pub(crate) async fn run(shared: Arc<Shared>, tcp: TcpStream, places: Places) {
    let _places = places;
    // Boxed, so the handshake's large and short-lived state (TLS, the request head) is freed
    // once it is done instead of sizing the task that lives as long as the connection.
    let established = tokio::select! {
        biased;
        () = shared.shutdown.cancelled() => {
            shared.metrics.connection_ended("shutdown");
            debug!("shutting down: connection dropped before the upgrade");
            None
        }
        established = Box::pin(establish(&shared, tcp)) => established,
    };
    let Some(Established { sink, stream, identity, room_id, peer_class, _identity_slot }) = established
    else {
        return;
    };
    let config = &shared.config;
    let mailbox = Mailbox::new(ConnId::next(), config.queue_frames, config.queue_bytes);
    let writer = shared.tracker.spawn(write_loop(sink, mailbox.clone(), config.ping_interval));
    let peer = Peer { shared: Arc::clone(&shared), identity, room_id, peer_class, mailbox: mailbox.clone() };
    let close = peer.serve(stream).await;
    mailbox.kill(close.clone());
    let _ = time::timeout(WRITER_GRACE, writer).await;
    let close = mailbox.kill_reason().unwrap_or(close);
    shared.metrics.connection_ended(close.label());
    let code = u16::from(close.close_code());
    match close {
        Close::PeerClosed | Close::Transport(_) => {
            debug!(code, reason = %close.reason(), "connection closed")
        }
        ref c if c.is_peer_fault() => info!(code, reason = %close.reason(), "connection closed by the proxy"),
        _ => info!(code, reason = %close.reason(), "connection closed"),
    }
}

/// TLS handshake, identity and upgrade, all within `handshake_timeout`.
async fn establish(shared: &Shared, tcp: TcpStream) -> Option<Established> {
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let peer = tcp.peer_addr().map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.tls.load_full());
    let tls = match time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let (label, detail) = crate::tls::handshake_failure(&e);
            shared.metrics.handshake_failed(label);
            info!(reason = label, detail = %detail, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            shared.metrics.handshake_failed("timeout");
            info!(reason = "timeout", "TLS handshake not completed within handshake_timeout");
            return None;
        }
    };
    let certificate = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
    let identity = match certificate.map(|c| PeerIdentity::from_der(c)) {
        Some(Ok(identity)) => identity,
        Some(Err(e)) => {
            shared.metrics.handshake_failed("bad_certificate");
            warn!(error = %e, "verified client certificate cannot be parsed");
            return None;
        }
        None => {
            shared.metrics.handshake_failed("no_client_certificate");
            warn!("handshake completed without a client certificate");
            return None;
        }
    };
    Span::current().record("subject", tracing::field::display(&identity.subject));
    Span::current().record("fingerprint", tracing::field::display(&identity.fingerprint));
    let (sink, stream, room_id, peer_class, _identity_slot) =
        upgrade(shared, tls, &identity, peer, deadline).await?;
    Span::current().record("room", tracing::field::display(&room_id));
    Some(Established { sink, stream, identity, room_id, peer_class, _identity_slot })
}

/// Reads the upgrade request within the handshake deadline and answers it: a refusal (logged,
/// counted) or the 101 and a WebSocket.
async fn upgrade(
    shared: &Shared,
    mut tls: Tls,
    identity: &PeerIdentity,
    peer: IpAddr,
    deadline: Instant,
) -> Option<(WsSink, WsStream, RoomId, Option<String>, Slot<Fingerprint>)> {
    let config = &shared.config;
    let limits =
        upgrade::HeadLimits { bytes: config.max_request_head_bytes, headers: config.max_request_headers };
    let request = match time::timeout_at(
        deadline,
        upgrade::read_request(&mut tls, &config.path_prefix, limits),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(Refusal::Closed("no upgrade request within handshake_timeout".into())),
    };
    let refusal = match request {
        Err(refusal) => refusal,
        Ok(request) => match admit(shared, identity, peer, &request).await {
            Err(refusal) => refusal,
            Ok((peer_class, slot)) => {
                if let Err(e) = upgrade::accept(&mut tls, &request).await {
                    shared.metrics.connection_ended("upgrade_incomplete");
                    debug!(error = %e, "peer left during the upgrade");
                    return None;
                }
                let (read, write) = tokio::io::split(tls);
                let stream = FrameReader::new(read, &request.leftover, config.max_frame_bytes);
                return Some((FrameWriter::new(write), stream, request.room, peer_class, slot));
            }
        },
    };
    match refusal {
        Refusal::Closed(why) => {
            shared.metrics.connection_ended("upgrade_incomplete");
            info!(reason = %why, "upgrade not completed");
        }
        Refusal::Status { status, reason, path } => {
            shared.metrics.upgrade_refused(status);
            info!(status, reason = %reason, path = path.as_deref().unwrap_or("-"), "upgrade refused");
            let _ = time::timeout(config.handshake_timeout, async {
                let _ = upgrade::refuse(&mut tls, status, &reason).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
            })
            .await;
        }
    }
    None
}

/// Whether a valid upgrade request may go ahead, in order of cost: the per-certificate
/// connection limit, the ACL, the authorization hook, room and rooms capacity. On success, the
/// `peerClass` the HELLO must carry and the connection's place under the per-certificate limit.
async fn admit(
    shared: &Shared,
    identity: &PeerIdentity,
    peer: IpAddr,
    request: &upgrade::UpgradeRequest,
) -> Result<(Option<String>, Slot<Fingerprint>), Refusal> {
    let path = Some(request.path.as_str());
    let Some(slot) = shared.per_identity.acquire(identity.fingerprint) else {
        return Err(Refusal::status(429, "too many connections with this certificate", path));
    };
    let peer_class = match decide(shared, identity, &request.room) {
        Decision::Deny(why) => {
            info!(reason = %why, path = %request.path, "ACL: refused");
            return Err(Refusal::status(403, "this certificate may not join this room", path));
        }
        Decision::Allow { peer_class } => peer_class,
    };
    if let Some(hook) = &shared.auth_hook {
        let subject = auth_hook::Subject {
            identity,
            peer,
            target: &request.target,
            room: request.room.as_str(),
            headers: &request.headers,
        };
        let answer = hook.check(&subject).await;
        shared.metrics.auth_hook_checked(answer.label());
        match answer.verdict {
            Verdict::Allow => {}
            Verdict::Deny(status) => {
                info!(hook_status = status, cached = answer.cached, path = %request.path, "authorization hook: refused");
                return Err(Refusal::status(403, "refused by the authorization service", path));
            }
            Verdict::Unavailable(why) => {
                warn!(reason = %why, path = %request.path, "authorization hook unavailable: refused (fail closed)");
                return Err(Refusal::status(503, "authorization service unavailable: try again later", path));
            }
        }
    }
    let max_peers = shared.config.max_peers;
    let space = match shared.registry.space(&request.room, &identity.fingerprint) {
        Space::Free => shared.backplane.space(&request.room, &identity.fingerprint, max_peers).await,
        local => Ok(local),
    };
    match space {
        Ok(Space::Free) => Ok((peer_class, slot)),
        Ok(Space::RoomFull) => Err(Refusal::status(409, "room full", path)),
        Ok(Space::TooManyRooms) => Err(Refusal::status(503, "too many rooms: try again later", path)),
        Err(why) => {
            warn!(reason = %why, path = %request.path, "cluster presence unreachable: refused");
            Err(Refusal::status(503, "cluster unavailable: try again later", path))
        }
    }
}

/// The ACL's decision; the loaded rules are let go at once, not held across the upgrade.
fn decide(shared: &Shared, identity: &PeerIdentity, room: &RoomId) -> Decision {
    shared.acl.load().decide(identity, room)
}

/// What wakes the relay loop.
enum Event {
    Frame(Option<Result<Message, ReadError>>),
    Shutdown,
    Killed,
    HoldExpiry,
    Keepalive,
}

/// A connected peer after the upgrade.
struct Peer {
    shared: Arc<Shared>,
    identity: PeerIdentity,
    room_id: RoomId,
    /// The `peerClass` its HELLO must carry (from the ACL rule that let it in).
    peer_class: Option<String>,
    mailbox: Mailbox,
}

impl Peer {
    /// The pending phase, then membership; returns why the connection ends.
    async fn serve(&self, mut stream: WsStream) -> Close {
        // The phases before and after relaying run as futures of their own, on the heap, so
        // that their state does not size the connection's task for its whole life (the idle
        // memory per connection, docs/performance.md).
        let (hello, name) = match Box::pin(self.await_hello(&mut stream)).await {
            Ok(hello) => hello,
            Err(close) => return close,
        };
        let (room, relay_done) = match Box::pin(self.join(hello, &name)).await {
            Ok(joined) => joined,
            Err(close) => return close,
        };
        let close = self.relay(&room, &mut stream).await;
        relay_done.cancel();
        Box::pin(self.leave(&room, &name, &close)).await;
        close
    }

    /// Joins the room, here and in the cluster, and tells the others. Returns the room and the
    /// token to cancel once this member stops relaying.
    async fn join(
        &self,
        hello: Message,
        name: &PeerName,
    ) -> Result<(Arc<Room>, tokio_util::sync::CancellationToken), Close> {
        // A certificate revoked by a reload while this connection waited for its HELLO.
        if self.shared.revoked.load().contains(&self.identity.serial) {
            return Err(Close::Revoked);
        }
        let backplane = &self.shared.backplane;
        let card = Card {
            node: backplane.node().to_owned(),
            conn: self.mailbox.conn().0,
            fingerprint: self.identity.fingerprint,
            name: name.clone(),
            hello: hello.clone(),
        };
        let roster = match backplane.join(&self.room_id, &card, self.shared.config.max_peers).await {
            Ok(roster) => roster,
            Err(JoinError::Full) => return Err(Close::RoomFull),
            Err(JoinError::Unavailable(e)) => {
                warn!(error = %e, "cluster presence unreachable: cannot join");
                return Err(Close::ClusterUnavailable(e.to_string()));
            }
        };
        let relay_done = tokio_util::sync::CancellationToken::new();
        let member = Member {
            mailbox: self.mailbox.clone(),
            fingerprint: self.identity.fingerprint,
            hello,
            name: name.clone(),
            subject: Arc::from(self.identity.subject.as_str()),
            serial: Arc::from(self.identity.serial.as_str()),
            since: std::time::SystemTime::now(),
            relay_done: relay_done.clone(),
            replaced_by: None,
        };
        let replaced_field = roster.replaced.as_ref().map(Card::field);
        let joined = match self.shared.registry.join(
            &self.room_id,
            member,
            roster.others,
            replaced_field.as_deref(),
        ) {
            Ok(joined) => joined,
            Err(space) => {
                backplane.leave(&self.room_id, card.conn).await;
                return Err(if space == Space::TooManyRooms { Close::TooManyRooms } else { Close::RoomFull });
            }
        };
        let room = Arc::clone(&joined.room);
        self.announce(joined, &card, roster.replaced).await;
        Ok((room, relay_done))
    }

    /// Waits for the first data frame, which must be a valid `CONN:HELLO`.
    async fn await_hello(&self, stream: &mut WsStream) -> Result<(Message, PeerName), Close> {
        let shutdown = &self.shared.shutdown;
        let killed = self.mailbox.killed();
        let deadline = time::sleep(self.shared.config.hello_timeout);
        tokio::pin!(deadline);
        loop {
            let frame = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Err(Close::Shutdown),
                () = killed.cancelled() => return Err(self.mailbox.kill_reason().unwrap_or(Close::Shutdown)),
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
                Some(Err(e)) => return Err(self.read_error(e)),
            };
            let payload: &[u8] = match &message {
                Message::Text(text) => text.as_bytes(),
                Message::Binary(bytes) => bytes.as_ref(),
                _ => &[],
            };
            let limit = self.shared.config.max_hello_bytes;
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
            if let Some(required) = &self.peer_class
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

    /// After a join: retire a replaced member (here or on another node), then tell the others
    /// (PEER-LEFT for the replaced one first, then the newcomer's HELLO).
    async fn announce(&self, joined: Joined, card: &Card, replaced_elsewhere: Option<Card>) {
        Metrics::inc(&self.shared.metrics.joins);
        // Its in-flight frames must reach the others before they learn it left.
        let wait = self.shared.config.slow_consumer_timeout * 2;
        let mut replaced_name = None;
        if let Some(replaced) = joined.replaced {
            info!(old_peer = ?replaced.name.id, "replacing the member with the same certificate");
            replaced.mailbox.kill(Close::Replaced);
            let _ = time::timeout(wait, replaced.relay_done.cancelled()).await;
            // The members on other nodes learn it from here: it is no longer a member to
            // leave by itself.
            let note = Note::Left {
                room: self.room_id.to_string(),
                node: card.node.clone(),
                conn: replaced.mailbox.conn().0,
                reason: "replaced".into(),
            };
            self.shared.backplane.send(&joined.room.remote_nodes(), &note);
            replaced_name = Some(replaced.name);
        }
        if let Some(old) = replaced_elsewhere {
            info!(old_peer = ?old.name.id, node = old.node, "replacing the member with the same certificate on another node");
            let gone = joined.room.departure(old.field());
            let note =
                Note::Replace { room: self.room_id.to_string(), conn: old.conn, by: card.node.clone() };
            self.shared.backplane.send(std::slice::from_ref(&old.node), &note);
            if time::timeout(wait, gone).await.is_err() {
                warn!(node = old.node, "the replaced member's node did not confirm its departure in time");
            }
            replaced_name = Some(old.name);
        }
        if let Some(name) = replaced_name {
            let left = self.peer_left(&name, "replaced");
            for other in &joined.others {
                self.deliver(other, left.clone()).await;
            }
        }
        for card in &joined.learned {
            for other in &joined.others {
                self.deliver(other, card.hello.clone()).await;
            }
        }
        for other in &joined.others {
            self.deliver(other, card.hello.clone()).await;
        }
        let note = Note::Joined { room: self.room_id.to_string(), card: card.clone() };
        self.shared.backplane.send(&joined.room.remote_nodes(), &note);
        info!(
            peer_class = ?card.name.class,
            peer_id = ?card.name.id,
            members = joined.members,
            held_delivered = joined.held_delivered,
            "joined room"
        );
    }

    /// Relays the member's frames until the connection ends.
    ///
    /// Frames come first: the rarer wake-ups (shutdown, kill, the hold buffer's expiry, the
    /// keepalive) are polled only when no frame is ready, and between frames the kill switch is
    /// one atomic load. (`select!` would poll every branch for every frame, and a cancellation
    /// future takes a lock each time.) A steady stream cannot starve them: the runtime's
    /// budget makes the socket return `Pending` at least every 128 reads.
    async fn relay(&self, room: &Arc<Room>, stream: &mut WsStream) -> Close {
        let mut tally = FrameTally::default();
        let close = self.relay_frames(room, stream, &mut tally).await;
        tally.publish(&self.shared.metrics, self.mailbox.stats());
        close
    }

    async fn relay_frames(&self, room: &Arc<Room>, stream: &mut WsStream, tally: &mut FrameTally) -> Close {
        let config = &self.shared.config;
        let idle_limit = config.ping_interval + config.pong_timeout;
        let shutdown = self.shared.shutdown.cancelled();
        let killed = self.mailbox.killed().cancelled();
        let hold_timer = time::sleep_until(Instant::now());
        let keepalive = time::sleep(idle_limit);
        tokio::pin!(shutdown, killed, hold_timer, keepalive);
        let mut holding = false;
        let arm_hold_timer =
            |timer: std::pin::Pin<&mut time::Sleep>, holding: &mut bool| match room.next_expiry() {
                Some(at) => {
                    timer.reset(at);
                    *holding = true;
                }
                None => *holding = false,
            };
        arm_hold_timer(hold_timer.as_mut(), &mut holding);
        // When a frame was last read: the clock is read once per wake-up that read frames, not
        // once per frame, and the keepalive timer is moved only when it fires.
        let mut last_frame = Instant::now();
        let mut unclocked_frames = false;
        let mut targets = Targets::default();
        let mut rate =
            RateLimit::new(config.max_frames_per_second, config.max_bytes_per_second, last_frame.into_std());
        loop {
            let event = poll_fn(|cx| {
                if self.mailbox.is_killed() {
                    return Poll::Ready(Event::Killed);
                }
                if let Poll::Ready(frame) = stream.poll_next_unpin(cx) {
                    return Poll::Ready(Event::Frame(frame));
                }
                if std::mem::take(&mut unclocked_frames) {
                    last_frame = Instant::now();
                    tally.publish(&self.shared.metrics, self.mailbox.stats());
                }
                if shutdown.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Shutdown);
                }
                if killed.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Killed);
                }
                if holding && hold_timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::HoldExpiry);
                }
                keepalive.as_mut().poll(cx).map(|()| Event::Keepalive)
            })
            .await;
            let frame = match event {
                Event::Frame(frame) => frame,
                Event::Shutdown => return Close::Shutdown,
                Event::Killed => return self.mailbox.kill_reason().unwrap_or(Close::Shutdown),
                Event::HoldExpiry => {
                    self.expire_held(room).await;
                    arm_hold_timer(hold_timer.as_mut(), &mut holding);
                    continue;
                }
                Event::Keepalive => {
                    let deadline = last_frame + idle_limit;
                    if deadline <= Instant::now() {
                        return Close::KeepaliveTimeout;
                    }
                    keepalive.as_mut().reset(deadline);
                    continue;
                }
            };
            unclocked_frames = true;
            match frame {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                    match rate.admit(message.len()) {
                        Admit::Yes => {}
                        Admit::Refuse => {
                            self.refuse_over_rate(&message).await;
                            continue;
                        }
                        Admit::Close => return Close::RateLimited,
                    }
                    let arrived = tally.frame_in(&message);
                    let held = self.relay_frame(room, message, &mut targets, tally).await;
                    self.shared.metrics.relay_done(arrived);
                    if held && !holding {
                        arm_hold_timer(hold_timer.as_mut(), &mut holding);
                    }
                }
                Some(Ok(Message::Ping(payload))) => self.mailbox.pong(payload),
                Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Close::PeerClosed,
                Some(Err(e)) => return self.read_error(e),
            }
        }
    }

    /// Tells the sender that a frame over its rate limit was not relayed.
    async fn refuse_over_rate(&self, message: &Message) {
        let id = match message {
            Message::Text(text) => {
                Header::parse(text.as_str()).ok().and_then(|h| h.message_id.map(MessageId::into_owned))
            }
            _ => None,
        };
        debug!(len = message.len(), "over the rate limit: not relayed");
        self.reply(self.conn_error(429, "rate limit exceeded: not relayed", id)).await;
    }

    /// Relays one frame; returns whether it was held for a member to come.
    async fn relay_frame(
        &self,
        room: &Room,
        message: Message,
        targets: &mut Targets,
        tally: &mut FrameTally,
    ) -> bool {
        // The header borrows from the frame; ids are copied only when a reply or the hold
        // buffer needs them, so relaying allocates nothing for them.
        let header = match &message {
            Message::Text(text) => match Header::parse(text.as_str()) {
                Ok(header) => Some(header),
                Err(e) => {
                    debug!(error = %e, len = message.len(), "invalid envelope");
                    let reply = self.conn_error(400, &e.to_string(), lenient_id(text.as_str()));
                    self.reply(reply).await;
                    return false;
                }
            },
            _ => None,
        };
        // A member speaks for itself once, in its HELLO, and only the proxy reports departures:
        // neither is relayed from a member, so no one can pose as another peer.
        if let Some(h) =
            header.as_ref().filter(|h| [micronets_message::HELLO, PEER_LEFT].contains(&&*h.message_type))
        {
            let reason = format!("{} is not relayed from a member", h.message_type);
            let reply = self.conn_error(400, &reason, h.message_id.as_ref().map(MessageId::to_owned_id));
            self.reply(reply).await;
            return false;
        }
        // The common case: the room has not changed since the last frame.
        if targets.is_current(room) {
            self.deliver_all(targets, message, tally).await;
            return false;
        }
        let requires_response = header.as_ref().is_some_and(|h| h.requires_response);
        let message_id = || header.as_ref().and_then(|h| h.message_id.as_ref()).map(MessageId::to_owned_id);
        let limits = HoldLimits {
            max_messages: self.shared.config.hold_max_messages,
            max_bytes: self.shared.config.hold_max_bytes,
            max_age: self.shared.config.hold_max_age,
        };
        match room.route(self.mailbox.conn(), &message, requires_response, message_id, limits, targets) {
            Route::Deliver => self.deliver_all(targets, message, tally).await,
            Route::Held => {
                Metrics::inc(&self.shared.metrics.held);
                debug!(len = message.len(), "held: no other member yet");
                return true;
            }
            Route::HoldFull => {
                Metrics::inc(&self.shared.metrics.held_refused);
                let reply =
                    self.conn_error(503, "no peer connected and the hold buffer is full", message_id());
                self.reply(reply).await;
            }
            Route::Alone => {
                let reason = "no peer connected";
                let is_request =
                    header.as_ref().is_some_and(|h| h.message_type == micronets_message::REST_REQUEST);
                let reply = if is_request {
                    let response = RestResponse {
                        status_code: 503,
                        reason_phrase: Some(reason.to_owned()),
                        headers: Vec::new(),
                        content: micronets_message::Content::none(),
                    };
                    self.proxy_message(Kind::RestResponse(response), message_id())
                } else {
                    self.conn_error(503, reason, message_id())
                };
                self.reply(reply).await;
            }
            Route::NotMember => {}
        }
        false
    }

    /// Tells the sender of each expired held message that it was never delivered.
    async fn expire_held(&self, room: &Room) {
        for held in room.expire_held(Instant::now()) {
            Metrics::inc(&self.shared.metrics.held_refused);
            let age = self.shared.config.hold_max_age;
            info!(len = held.frame.len(), "held message expired: no peer joined in time");
            let reply =
                self.conn_error(503, &format!("no peer joined within {}s", age.as_secs()), held.message_id);
            self.reply(reply).await;
        }
    }

    /// Leaves the room and tells the remaining members, here and on other nodes; then gives
    /// its place in the cluster back.
    async fn leave(&self, room: &Arc<Room>, name: &PeerName, close: &Close) {
        let left = self.shared.registry.leave(room, self.mailbox.conn());
        if left.discarded > 0 {
            Metrics::add(&self.shared.metrics.held_discarded, left.discarded as u64);
            warn!(discarded = left.discarded, "sender left before any peer joined: held messages discarded");
        }
        let backplane = &self.shared.backplane;
        if left.was_member {
            let reason = match close {
                Close::PeerClosed => "closed".to_owned(),
                Close::Transport(_) => "connection lost".to_owned(),
                // Replaced from another node (from this one, it is no longer a member here).
                Close::Replaced => "replaced".to_owned(),
                other => other.reason(),
            };
            let note = Note::Left {
                room: self.room_id.to_string(),
                node: backplane.node().to_owned(),
                conn: self.mailbox.conn().0,
                reason: reason.clone(),
            };
            backplane.send(&left.nodes, &note);
            let message = self.peer_left(name, &reason);
            for other in &left.others {
                self.deliver(other, message.clone()).await;
            }
        }
        backplane.leave(&self.room_id, self.mailbox.conn().0).await;
    }

    /// Delivers a member's frame to the other members, in order: to the other nodes hosting
    /// members first (queued, without waiting), then to the local members.
    async fn deliver_all(&self, targets: &Targets, message: Message, tally: &mut FrameTally) {
        if !targets.nodes().is_empty() {
            let note = Note::Frame {
                room: self.room_id.to_string(),
                origin: self.shared.backplane.node().to_owned(),
                conn: self.mailbox.conn().0,
                frame: message.clone(),
            };
            self.shared.backplane.send(targets.nodes(), &note);
        }
        let receivers = targets.mailboxes();
        let count = receivers.len() as u64;
        tally.relayed(&message, count);
        debug!(len = message.len(), receivers = count, nodes = targets.nodes().len(), "relayed");
        if let Some((last, rest)) = receivers.split_last() {
            for target in rest {
                self.deliver(target, message.clone()).await;
            }
            self.deliver(last, message).await;
        }
    }

    /// Delivers to another peer; closes it with 1013 when it does not read in time.
    async fn deliver(&self, target: &Mailbox, message: Message) {
        if target.deliver(message, self.shared.config.slow_consumer_timeout).await == Delivery::Slow {
            Metrics::inc(&self.shared.metrics.slow_consumers);
            warn!(receiver = target.conn().0, "slow consumer: closing it with 1013");
            target.kill(Close::SlowConsumer);
        }
    }

    /// Queues a proxy-originated reply to this peer.
    async fn reply(&self, message: Message) {
        Metrics::inc(&self.shared.metrics.errors_sent);
        self.deliver(&self.mailbox, message).await;
    }

    fn proxy_message(&self, kind: Kind, in_response_to: Option<MessageId<'static>>) -> Message {
        self.shared.proxy_message(kind, in_response_to)
    }

    fn conn_error(&self, status: u16, reason: &str, in_response_to: Option<MessageId<'static>>) -> Message {
        self.shared.metrics.conn_error_sent(status);
        let error = ConnError { status_code: status, reason_phrase: Some(reason.to_owned()) };
        self.proxy_message(Kind::Error(error), in_response_to)
    }

    fn peer_left(&self, name: &PeerName, reason: &str) -> Message {
        self.shared.peer_left(name, reason)
    }

    fn read_error(&self, error: ReadError) -> Close {
        match error {
            ReadError::TooBig => Close::TooBig(self.shared.config.max_frame_bytes),
            ReadError::InvalidUtf8 => Close::InvalidUtf8,
            ReadError::Protocol(why) => Close::Protocol(why.to_owned()),
            ReadError::Io(e) => Close::Transport(e.to_string()),
        }
    }
}

/// The `messageId` of a text frame whose header did not parse, when it can still be read:
/// a `CONN:ERROR` should say which message it is about.
fn lenient_id(text: &str) -> Option<MessageId<'static>> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    match value.get("message")?.get("messageId")? {
        serde_json::Value::String(s) => Some(MessageId::from(s.as_str())),
        serde_json::Value::Number(n) => n.as_i64().map(MessageId::from),
        _ => None,
    }
}
