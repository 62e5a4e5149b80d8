//! Forwarding a member's frames: the read loop, the check of each frame (its rate, its
//! envelope header), routing it to the other members here and on other nodes, holding it when
//! the member is alone, and the proxy's own replies (400, 429, 503) to the sender.
//!
//! The loop is generic over the stream of frames, so it is tested with channels.

use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::task::Poll;

use futures_util::{Stream, StreamExt};
use micronets_message::{HELLO, Header, MessageId, PEER_LEFT, REST_REQUEST};
use tokio::time::{self, Instant};
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info};

use super::fanout::{self, Sender, Waiting};
use super::hub::Hub;
use super::mailbox::{Kicks, Mailbox};
use super::room::{Asks, Room, Route, Targets};
use super::websocket::ReadError;
use crate::error::Close;
use crate::metrics::{FrameTally, Metrics};
use crate::rate::{Admit, RateLimit};

/// What wakes the forwarding loop.
enum Event {
    Frame(Option<Result<Message, ReadError>>),
    Shutdown,
    Killed,
    HoldExpiry,
    Keepalive,
}

/// One member's forwarding: its mailbox (for the proxy's replies), its room, and when its
/// certificate expires.
pub(crate) struct Forward<'a> {
    hub: &'a Hub,
    mailbox: &'a Mailbox,
    room: &'a Arc<Room>,
    expires: Instant,
}

impl<'a> Forward<'a> {
    pub(crate) fn new(hub: &'a Hub, mailbox: &'a Mailbox, room: &'a Arc<Room>, expires: Instant) -> Self {
        Forward { hub, mailbox, room, expires }
    }

    /// Forwards the member's frames until the connection ends; returns why it ends.
    ///
    /// Frames come first: the rarer wake-ups (shutdown, kill, the hold buffer's expiry, the
    /// keepalive) are polled only when no frame is ready, and between frames the kill switch is
    /// one atomic load. One timer serves both the keepalive and the certificate's expiry: it
    /// fires at whichever comes first. (`select!` would poll every branch for every frame, and a cancellation
    /// future takes a lock each time.) A steady stream cannot starve them: the runtime's
    /// budget makes the socket return `Pending` at least every 128 reads.
    pub(crate) async fn relay<St>(&self, stream: &mut St) -> Close
    where
        St: Stream<Item = Result<Message, ReadError>> + Unpin,
    {
        let mut tally = FrameTally::default();
        let close = self.relay_frames(stream, &mut tally).await;
        tally.publish(&self.hub.metrics, self.mailbox.stats());
        close
    }

    async fn relay_frames<St>(&self, stream: &mut St, tally: &mut FrameTally) -> Close
    where
        St: Stream<Item = Result<Message, ReadError>> + Unpin,
    {
        let config = &self.hub.config;
        let idle_limit = config.ping_interval + config.pong_timeout;
        let shutdown = self.hub.shutdown.cancelled();
        let killed = self.mailbox.until_killed();
        let hold_timer = time::sleep_until(Instant::now());
        let keepalive = time::sleep_until((Instant::now() + idle_limit).min(self.expires));
        tokio::pin!(shutdown, killed, hold_timer, keepalive);
        let mut holding = false;
        let arm_hold_timer =
            |timer: std::pin::Pin<&mut time::Sleep>, holding: &mut bool| match self.room.next_expiry() {
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
        // The receivers this member's frames went to without waking their writers: written
        // from here once the stream has nothing more ready, and before any wait.
        let mut kicks = Kicks::default();
        let mut rate =
            RateLimit::new(config.max_frames_per_second, config.max_bytes_per_second, last_frame.into_std());
        loop {
            let event = poll_fn(|cx| {
                if self.mailbox.is_killed() {
                    return Poll::Ready(Event::Killed);
                }
                if kicks.due() {
                    kicks.write();
                }
                if let Poll::Ready(frame) = stream.poll_next_unpin(cx) {
                    return Poll::Ready(Event::Frame(frame));
                }
                kicks.write();
                if std::mem::take(&mut unclocked_frames) {
                    last_frame = Instant::now();
                    tally.publish(&self.hub.metrics, self.mailbox.stats());
                    self.mailbox.heard();
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
                // The rare wake-ups run on the heap: their state would otherwise size the
                // task of every idle member.
                Event::HoldExpiry => {
                    Box::pin(self.expire_held()).await;
                    arm_hold_timer(hold_timer.as_mut(), &mut holding);
                    continue;
                }
                Event::Keepalive => {
                    let now = Instant::now();
                    if self.expires <= now {
                        return Close::CertificateExpired;
                    }
                    let deadline = last_frame + idle_limit;
                    if deadline <= now {
                        return Close::KeepaliveTimeout;
                    }
                    keepalive.as_mut().reset(deadline.min(self.expires));
                    continue;
                }
            };
            unclocked_frames = true;
            match frame {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                    match rate.admit(message.len()) {
                        Admit::Yes => {}
                        Admit::Refuse => {
                            if let Some(waiting) = self.refuse_over_rate(&message) {
                                kicks.write();
                                waiting.await;
                            }
                            continue;
                        }
                        Admit::Close => return Close::RateLimited,
                    }
                    let arrived = tally.frame_in(&message);
                    // Relaying does not wait unless a receiver is full: then what is left of it
                    // is awaited here, from the heap.
                    let (held, waiting) = self.relay_frame(message, &mut targets, tally, &mut kicks);
                    if let Some(waiting) = waiting {
                        kicks.write();
                        self.mailbox.sending(waiting).await;
                    }
                    self.hub.metrics.relay_done(arrived);
                    if held && !holding {
                        arm_hold_timer(hold_timer.as_mut(), &mut holding);
                    }
                }
                Some(Ok(Message::Ping(payload))) => self.mailbox.pong(payload),
                Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Close::PeerClosed,
                Some(Err(e)) => return e.into_close(config.max_frame_bytes),
            }
        }
    }

    /// Tells the sender that a frame over its rate limit was not relayed.
    fn refuse_over_rate(&self, message: &Message) -> Option<Waiting<'_>> {
        let id = match message {
            Message::Text(text) => {
                Header::parse(text.as_str()).ok().and_then(|h| h.message_id.map(MessageId::into_owned))
            }
            _ => None,
        };
        debug!(len = message.len(), "over the rate limit: not relayed");
        self.error(429, "rate limit exceeded: not relayed", id)
    }

    /// Relays one frame; returns whether it was held for a member to come, and what is left to
    /// await when a receiver (the sender itself, for a reply) is full.
    fn relay_frame<'s>(
        &'s self,
        message: Message,
        targets: &'s mut Targets,
        tally: &mut FrameTally,
        kicks: &mut Kicks,
    ) -> (bool, Option<Waiting<'s>>) {
        // The header borrows from the frame; ids are copied only when a reply or the hold
        // buffer needs them, so relaying allocates nothing for them.
        let header = match &message {
            Message::Text(text) => match Header::parse(text.as_str()) {
                Ok(header) => Some(header),
                Err(e) => {
                    debug!(error = %e, len = message.len(), "invalid envelope");
                    return (false, self.error(400, &e.to_string(), lenient_id(text.as_str())));
                }
            },
            _ => None,
        };
        // A member speaks for itself once, in its HELLO, and only the proxy reports departures:
        // neither is relayed from a member, so no one can pose as another peer.
        if let Some(h) = header.as_ref().filter(|h| [HELLO, PEER_LEFT].contains(&&*h.message_type)) {
            let reason = format!("{} is not relayed from a member", h.message_type);
            return (false, self.error(400, &reason, h.message_id.as_ref().map(MessageId::to_owned_id)));
        }
        // The common case: the room has not changed since the last frame.
        if !targets.is_current(self.room) {
            let asks = header.as_ref().map_or(Asks::default(), |h| Asks {
                requires_response: h.requires_response,
                is_response: h.in_response_to.is_some(),
            });
            let message_id =
                || header.as_ref().and_then(|h| h.message_id.as_ref()).map(MessageId::to_owned_id);
            let limits = self.hub.hold_limits();
            match self.room.route(self.mailbox.conn(), &message, asks, message_id, limits, targets) {
                Route::Deliver => {}
                Route::Held => {
                    Metrics::inc(&self.hub.metrics.held);
                    debug!(len = message.len(), "held: no other member yet");
                    return (true, None);
                }
                Route::HoldFull => {
                    Metrics::inc(&self.hub.metrics.held_refused);
                    return (
                        false,
                        self.error(503, "no peer connected and the hold buffer is full", message_id()),
                    );
                }
                Route::Alone => {
                    let reason = "no peer connected";
                    let waiting = if header.as_ref().is_some_and(|h| h.message_type == REST_REQUEST) {
                        self.reply(self.hub.replies.response(503, reason, message_id()))
                    } else {
                        self.error(503, reason, message_id())
                    };
                    return (false, waiting);
                }
                Route::Unasked => {
                    info!(
                        len = message.len(),
                        "a response whose asker has left: not held, its sender told (410)"
                    );
                    return (
                        false,
                        self.error(410, "the peer this answers has left: not delivered", message_id()),
                    );
                }
                Route::NotMember => return (false, None),
            }
        }
        // To the other nodes hosting members first (queued, without waiting), then to the
        // local members, in order.
        let targets: &'s Targets = targets;
        let receivers = targets.mailboxes();
        tally.relayed(&message, receivers.len() as u64);
        debug!(len = message.len(), receivers = receivers.len(), nodes = targets.nodes().len(), "relayed");
        if !targets.nodes().is_empty() {
            let (room, conn) = (self.room.id(), self.mailbox.conn());
            if receivers.is_empty() {
                self.hub.nodes.send_frame(targets.nodes(), room, conn, message);
                return (false, None);
            }
            self.hub.nodes.send_frame(targets.nodes(), room, conn, message.clone());
        }
        (false, fanout::offer_all(self.hub, receivers, message, Sender::Local, Some(kicks)))
    }

    /// Tells the sender of each expired held message that it was never delivered.
    async fn expire_held(&self) {
        for held in self.room.expire_held(Instant::now()) {
            Metrics::inc(&self.hub.metrics.held_refused);
            let age = self.hub.config.hold_max_age;
            info!(len = held.frame.len(), "held message expired: no peer joined in time");
            if let Some(waiting) =
                self.error(503, &format!("no peer joined within {}s", age.as_secs()), held.message_id)
            {
                waiting.await;
            }
        }
    }

    /// Queues a `CONN:ERROR` to this member, counted by status (as [`Self::reply`]).
    fn error(
        &self,
        status: u16,
        reason: &str,
        in_response_to: Option<MessageId<'static>>,
    ) -> Option<Waiting<'_>> {
        self.hub.metrics.conn_error_sent(status);
        self.reply(self.hub.replies.error(status, reason, in_response_to))
    }

    /// Queues a proxy-originated reply to this member; what is left to await when its queue is
    /// full.
    fn reply(&self, message: Message) -> Option<Waiting<'_>> {
        Metrics::inc(&self.hub.metrics.errors_sent);
        fanout::offer(self.hub, self.mailbox, message, Sender::Local)
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
