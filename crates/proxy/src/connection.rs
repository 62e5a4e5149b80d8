//! One peer's connection, from TLS to close: the handshake and upgrade with their deadlines,
//! the pending phase until `CONN:HELLO`, membership, relaying, and leaving.
//!
//! Errors never leave this module: [`run`] logs each connection's end once, with its reason, at
//! a level that says whose fault it was.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::StreamExt;
use micronets_message::{ConnError, Envelope, Header, Kind, MessageId, PeerLeft, RestResponse};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{self, Instant};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, error::CapacityError};
use tracing::{Span, debug, info, warn};

use crate::Shared;
use crate::error::Close;
use crate::identity::PeerIdentity;
use crate::metrics::Metrics;
use crate::registry::Joined;
use crate::relay::{ConnId, Delivery, Mailbox, write_loop};
use crate::room::{HoldLimits, Member, PeerName, Room, RoomId, Route};
use crate::upgrade::{self, Refusal};

type Tls = tokio_rustls::server::TlsStream<TcpStream>;
type Ws = WebSocketStream<Tls>;
type WsStream = futures_util::stream::SplitStream<Ws>;

/// How long the writer gets to flush the close frame after the reader has finished.
const WRITER_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves one accepted TCP connection to its end. The permit is the connection's place under
/// `max_connections`, given back when this returns.
pub(crate) async fn run(shared: Arc<Shared>, tcp: TcpStream, _permit: OwnedSemaphorePermit) {
    let established = tokio::select! {
        biased;
        () = shared.shutdown.cancelled() => {
            shared.metrics.connection_ended("shutdown");
            debug!("shutting down: connection dropped before the upgrade");
            None
        }
        established = establish(&shared, tcp) => established,
    };
    let Some((ws, identity, room_id)) = established else { return };
    let config = &shared.config;
    let conn = ConnId::next();
    let reserve = config.max_peers + config.hold_max_messages;
    let (mailbox, inbox) = Mailbox::new(conn, config.queue_frames, reserve, config.queue_bytes);
    let (sink, stream) = ws.split();
    let writer = shared.tracker.spawn(write_loop(sink, inbox, mailbox.clone(), config.ping_interval));
    let peer = Peer { shared: Arc::clone(&shared), identity, room_id, mailbox: mailbox.clone() };
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
async fn establish(shared: &Shared, tcp: TcpStream) -> Option<(Ws, PeerIdentity, RoomId)> {
    let deadline = Instant::now() + shared.config.handshake_timeout;
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
            shared.metrics.connection_ended("tls_failed");
            warn!(error = %e, "verified client certificate cannot be parsed");
            return None;
        }
        None => {
            shared.metrics.connection_ended("tls_failed");
            warn!("handshake completed without a client certificate");
            return None;
        }
    };
    Span::current().record("subject", tracing::field::display(&identity.subject));
    Span::current().record("fingerprint", tracing::field::display(&identity.fingerprint));
    let (ws, room_id) = upgrade(shared, tls, &identity, deadline).await?;
    Span::current().record("room", tracing::field::display(&room_id));
    Some((ws, identity, room_id))
}

/// Reads the upgrade request within the handshake deadline and answers it: a refusal (logged,
/// counted) or the 101 and a WebSocket.
async fn upgrade(
    shared: &Shared,
    mut tls: Tls,
    identity: &PeerIdentity,
    deadline: Instant,
) -> Option<(Ws, RoomId)> {
    let config = &shared.config;
    let request = match time::timeout_at(deadline, upgrade::read_request(&mut tls, &config.path_prefix)).await
    {
        Ok(result) => result,
        Err(_) => Err(Refusal::Closed("no upgrade request within handshake_timeout".into())),
    };
    let refusal = match request {
        Ok(request) if shared.registry.has_space(&request.room, &identity.fingerprint) => {
            if let Err(e) = upgrade::accept(&mut tls, &request).await {
                shared.metrics.connection_ended("upgrade_incomplete");
                debug!(error = %e, "peer left during the upgrade");
                return None;
            }
            let ws_config = WebSocketConfig::default()
                .read_buffer_size(4 * 1024)
                .write_buffer_size(64 * 1024)
                .max_write_buffer_size(2 * config.max_frame_bytes + 64 * 1024)
                .max_message_size(Some(config.max_frame_bytes))
                .max_frame_size(Some(config.max_frame_bytes));
            let ws =
                WebSocketStream::from_partially_read(tls, request.leftover, Role::Server, Some(ws_config))
                    .await;
            return Some((ws, request.room));
        }
        Ok(request) => Refusal::status(409, "room full", Some(&request.path)),
        Err(refusal) => refusal,
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

/// A connected peer after the upgrade.
struct Peer {
    shared: Arc<Shared>,
    identity: PeerIdentity,
    room_id: RoomId,
    mailbox: Mailbox,
}

impl Peer {
    /// The pending phase, then membership; returns why the connection ends.
    async fn serve(&self, mut stream: WsStream) -> Close {
        let hello = match self.await_hello(&mut stream).await {
            Ok(hello) => hello,
            Err(close) => return close,
        };
        let relay_done = tokio_util::sync::CancellationToken::new();
        let member = Member {
            mailbox: self.mailbox.clone(),
            fingerprint: self.identity.fingerprint,
            hello: hello.0.clone(),
            name: hello.1.clone(),
            subject: Arc::from(self.identity.subject.as_str()),
            since: std::time::SystemTime::now(),
            relay_done: relay_done.clone(),
        };
        let joined = match self.shared.registry.join(&self.room_id, member) {
            Ok(joined) => joined,
            Err(_) => return Close::RoomFull,
        };
        let room = Arc::clone(&joined.room);
        self.announce(joined, &hello.0, &hello.1).await;
        let close = self.relay(&room, &mut stream).await;
        relay_done.cancel();
        self.leave(&room, &hello.1, &close).await;
        close
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
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) | None => return Err(Close::PeerClosed),
                Some(Err(e)) => return Err(self.read_error(e)),
            };
            let payload: &[u8] = match &message {
                Message::Text(text) => text.as_bytes(),
                Message::Binary(bytes) => bytes,
                _ => &[],
            };
            let envelope = Envelope::from_slice(payload).map_err(|e| Close::BadHello(e.to_string()))?;
            let Kind::Hello(hello) = envelope.kind else {
                return Err(Close::BadHello(format!(
                    "expected CONN:HELLO first, got {}",
                    envelope.message_type()
                )));
            };
            let name = PeerName { class: hello.peer_class, id: hello.peer_id };
            Span::current().record("peer_id", tracing::field::debug(&name.id));
            return Ok((message, name));
        }
    }

    /// After a join: retire a replaced member, then tell the others (PEER-LEFT for the replaced
    /// one first, then the newcomer's HELLO).
    async fn announce(&self, joined: Joined, hello: &Message, name: &PeerName) {
        Metrics::inc(&self.shared.metrics.joins);
        if let Some(replaced) = joined.replaced {
            info!(old_peer = ?replaced.name.id, "replacing the member with the same certificate");
            replaced.mailbox.kill(Close::Replaced);
            // Its in-flight frames must reach the others before they learn it left.
            let wait = self.shared.config.slow_consumer_timeout * 2;
            let _ = time::timeout(wait, replaced.relay_done.cancelled()).await;
            let left = self.peer_left(&replaced.name, "replaced");
            for other in &joined.others {
                self.deliver(other, left.clone()).await;
            }
        }
        for other in &joined.others {
            self.deliver(other, hello.clone()).await;
        }
        info!(
            peer_class = ?name.class,
            peer_id = ?name.id,
            members = joined.members,
            held_delivered = joined.held_delivered,
            "joined room"
        );
    }

    /// Relays the member's frames until the connection ends.
    async fn relay(&self, room: &Arc<Room>, stream: &mut WsStream) -> Close {
        let config = &self.shared.config;
        let idle_limit = config.ping_interval + config.pong_timeout;
        let idle = time::sleep(idle_limit);
        // Futures made once for the whole loop: `select!` builds every branch's future on each
        // iteration, even a disabled one, and a cancellation future registers a waiter.
        let shutdown = self.shared.shutdown.cancelled();
        let killed = self.mailbox.killed().cancelled();
        let hold_timer = time::sleep_until(Instant::now());
        tokio::pin!(idle, shutdown, killed, hold_timer);
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
        // Reused for every frame: the members a frame goes to.
        let mut targets = Vec::new();
        loop {
            let frame = tokio::select! {
                biased;
                () = &mut shutdown => return Close::Shutdown,
                () = &mut killed => return self.mailbox.kill_reason().unwrap_or(Close::Shutdown),
                () = &mut hold_timer, if holding => {
                    self.expire_held(room).await;
                    arm_hold_timer(hold_timer.as_mut(), &mut holding);
                    continue;
                }
                () = &mut idle => return Close::KeepaliveTimeout,
                frame = stream.next() => frame,
            };
            idle.as_mut().reset(Instant::now() + idle_limit);
            match frame {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                    let arrived = self.shared.metrics.frame_in(self.mailbox.stats(), &message);
                    let held = self.relay_frame(room, message, &mut targets).await;
                    self.shared.metrics.relay_done(arrived);
                    if held && !holding {
                        arm_hold_timer(hold_timer.as_mut(), &mut holding);
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Close::PeerClosed,
                Some(Err(e)) => return self.read_error(e),
            }
        }
    }

    /// Relays one frame; returns whether it was held for a member to come.
    async fn relay_frame(&self, room: &Room, message: Message, targets: &mut Vec<Mailbox>) -> bool {
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
        let requires_response = header.as_ref().is_some_and(|h| h.requires_response);
        let message_id = || header.as_ref().and_then(|h| h.message_id.as_ref()).map(MessageId::to_owned_id);
        let limits = HoldLimits {
            max_messages: self.shared.config.hold_max_messages,
            max_bytes: self.shared.config.hold_max_bytes,
            max_age: self.shared.config.hold_max_age,
        };
        match room.route(self.mailbox.conn(), &message, requires_response, message_id, limits, targets) {
            Route::Deliver => {
                let receivers = targets.len() as u64;
                for target in targets.drain(..) {
                    self.deliver(&target, message.clone()).await;
                }
                self.shared.metrics.relayed(&message, receivers);
                debug!(len = message.len(), receivers, "relayed");
            }
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

    /// Leaves the room and tells the remaining members.
    async fn leave(&self, room: &Arc<Room>, name: &PeerName, close: &Close) {
        let left = self.shared.registry.leave(room, self.mailbox.conn());
        if left.discarded > 0 {
            Metrics::add(&self.shared.metrics.held_discarded, left.discarded as u64);
            warn!(discarded = left.discarded, "sender left before any peer joined: held messages discarded");
        }
        if !left.was_member {
            return;
        }
        let reason = match close {
            Close::PeerClosed => "closed".to_owned(),
            Close::Transport(_) => "connection lost".to_owned(),
            other => other.reason(),
        };
        let message = self.peer_left(name, &reason);
        for other in &left.others {
            self.deliver(other, message.clone()).await;
        }
    }

    /// Delivers to another peer; closes it with 1013 when it does not read in time.
    async fn deliver(&self, target: &Mailbox, message: Message) {
        let len = message.len() as u64;
        match target.deliver(message, self.shared.config.slow_consumer_timeout).await {
            Delivery::Queued => {
                target.stats().sent.add(1, len);
            }
            Delivery::Slow => {
                Metrics::inc(&self.shared.metrics.slow_consumers);
                warn!(receiver = target.conn().0, "slow consumer: closing it with 1013");
                target.kill(Close::SlowConsumer);
            }
            Delivery::Gone => {}
        }
    }

    /// Queues a proxy-originated reply to this peer.
    async fn reply(&self, message: Message) {
        Metrics::inc(&self.shared.metrics.errors_sent);
        self.deliver(&self.mailbox, message).await;
    }

    fn proxy_message(&self, kind: Kind, in_response_to: Option<MessageId<'static>>) -> Message {
        let id = self.shared.next_message_id.fetch_add(1, Ordering::Relaxed);
        Message::text(Envelope::new(kind).with_id(id).in_response_to(in_response_to).to_json())
    }

    fn conn_error(&self, status: u16, reason: &str, in_response_to: Option<MessageId<'static>>) -> Message {
        self.shared.metrics.conn_error_sent(status);
        let error = ConnError { status_code: status, reason_phrase: Some(reason.to_owned()) };
        self.proxy_message(Kind::Error(error), in_response_to)
    }

    fn peer_left(&self, name: &PeerName, reason: &str) -> Message {
        let left = PeerLeft {
            peer_class: name.class.clone(),
            peer_id: name.id.clone(),
            reason: Some(reason.to_owned()),
        };
        self.proxy_message(Kind::PeerLeft(left), None)
    }

    fn read_error(&self, error: WsError) -> Close {
        match error {
            WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
                Close::TooBig(self.shared.config.max_frame_bytes)
            }
            WsError::Capacity(e) => Close::Protocol(e.to_string()),
            WsError::Utf8(_) => Close::InvalidUtf8,
            WsError::Protocol(e) => Close::Protocol(e.to_string()),
            WsError::ConnectionClosed | WsError::AlreadyClosed => Close::PeerClosed,
            other => Close::Transport(other.to_string()),
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
