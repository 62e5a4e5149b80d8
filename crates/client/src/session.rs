//! A session with the relay: the HELLO exchange, requests matched to their responses, incoming
//! requests served by a handler, everything else handed to the caller.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use micronets_message::{Envelope, Hello, Kind, MessageId, RestRequest, RestResponse};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::{debug, info, trace, warn};

use crate::connect::Ws;
use crate::error::MAX_FRAME_BYTES;
use crate::forward::failure;
use crate::{Error, Result};

/// Serves a `REST:REQUEST` received from the peer.
pub type Handler =
    Arc<dyn Fn(RestRequest) -> Pin<Box<dyn Future<Output = RestResponse> + Send>> + Send + Sync>;

/// A frame from the relay that no request was waiting for.
#[derive(Debug, Clone)]
pub enum Incoming {
    /// A text frame, with its envelope when it parses.
    Text(String, Option<Box<Envelope>>),
    /// A binary frame.
    Binary(Bytes),
}

enum Reply {
    Response(Box<RestResponse>),
    Refused { status: u16, reason: String },
}

type Pending = Arc<Mutex<HashMap<MessageId<'static>, oneshot::Sender<Reply>>>>;

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// The relay's close code, when it sent a close frame.
    pub code: Option<u16>,
    /// What happened, for a human.
    pub reason: String,
}

impl Ended {
    /// A normal close (1000) by the relay.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.code == Some(1000)
    }
}

/// A live session. Dropping it closes the connection without a close frame; prefer
/// [`Session::close`].
pub struct Session {
    out: mpsc::Sender<Message>,
    pending: Pending,
    next_id: Arc<AtomicI64>,
    peer: watch::Receiver<Option<Hello>>,
    ended: watch::Receiver<Option<Ended>>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl Session {
    /// Sends our HELLO (`messageId` 0) and starts serving the connection. Incoming requests go
    /// to `handler`, or are answered 501 without one; frames nobody waits for go to
    /// `incoming`, or are logged without it.
    ///
    /// # Errors
    /// [`Error::WebSocket`] when the HELLO cannot be sent.
    ///
    /// Every `keepalive` the client pings the relay; a connection that brings nothing (no
    /// frame, no pong, no ping of the relay's) for three times that is taken for dead and
    /// ends, so that a link that died without a reset (an uplink, a NAT) is reconnected.
    pub async fn start(
        mut ws: Ws,
        hello: Hello,
        handler: Option<Handler>,
        incoming: Option<mpsc::Sender<Incoming>>,
        keepalive: Duration,
    ) -> Result<Session> {
        let hello = Envelope::new(Kind::Hello(hello)).with_id(0);
        ws.send(Message::text(hello.to_json())).await?;
        let (sink, stream) = ws.split();
        let (out, out_rx) = mpsc::channel(256);
        let pending: Pending = Arc::default();
        let next_id = Arc::new(AtomicI64::new(1));
        let (peer_tx, peer) = watch::channel(None);
        let (ended_tx, ended) = watch::channel(None);
        let writer = tokio::spawn(write_loop(sink, out_rx, keepalive));
        let reader = Reader {
            serving: Arc::new(tokio::sync::Semaphore::new(SERVING_AT_ONCE)),
            out: out.clone(),
            pending: Arc::clone(&pending),
            next_id: Arc::clone(&next_id),
            handler,
            incoming,
            peer: peer_tx,
        };
        let reader = tokio::spawn(async move {
            let why = reader.run(stream, keepalive * 3).await;
            let _ = ended_tx.send(Some(why));
        });
        Ok(Session { out, pending, next_id, peer, ended, reader, writer })
    }

    /// A fresh integer `messageId` (they start at 1; the HELLO had 0).
    pub fn next_id(&self) -> i64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Waits for the peer's HELLO; `None` if the connection ends first.
    pub async fn peer_hello(&self) -> Option<Hello> {
        let mut peer = self.peer.clone();
        peer.wait_for(Option::is_some).await.ok().and_then(|h| h.clone())
    }

    /// Resolves when the connection has ended, with how.
    pub async fn ended(&self) -> Ended {
        let mut ended = self.ended.clone();
        let lost = || Ended { code: None, reason: "connection ended".into() };
        ended.wait_for(Option::is_some).await.ok().and_then(|w| w.clone()).unwrap_or_else(lost)
    }

    /// Sends a text frame as it is.
    ///
    /// # Errors
    /// [`Error::Closed`] when the connection has ended.
    pub async fn send_text(&self, text: String) -> Result<()> {
        self.out.send(Message::text(text)).await.map_err(|_| Error::Closed)
    }

    /// Sends an envelope.
    ///
    /// # Errors
    /// [`Error::Closed`] when the connection has ended.
    /// [`Error::TooLarge`] when it would not fit in a frame once encoded (JSON escapes can make
    /// a body several times longer).
    pub async fn send(&self, envelope: &Envelope) -> Result<()> {
        let text = envelope.to_json();
        if text.len() > MAX_FRAME_BYTES {
            return Err(Error::TooLarge(text.len()));
        }
        self.send_text(text).await
    }

    /// Sends `request` and waits at most `timeout` for the matching `REST:RESPONSE`.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::Closed`], or [`Error::Refused`] when the answer is a
    /// `CONN:ERROR`. A `REST:RESPONSE` with any status (including the relay's 503 when no peer
    /// is connected) is a success.
    pub async fn request(&self, request: RestRequest, timeout: Duration) -> Result<RestResponse> {
        let id = MessageId::Int(self.next_id());
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id.clone(), tx);
        let envelope = Envelope::new(Kind::RestRequest(request)).with_id(id.clone()).requiring_response(true);
        if let Err(e) = self.send(&envelope).await {
            lock(&self.pending).remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Reply::Response(response))) => Ok(*response),
            Ok(Ok(Reply::Refused { status, reason })) => Err(Error::Refused { status, reason }),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(Error::Timeout(timeout))
            }
        }
    }

    /// Closes the connection with 1000 and waits (at most 5 s) for the relay to close too.
    pub async fn close(&self) {
        let frame = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
        let _ = self.out.send(Message::Close(Some(frame))).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.ended()).await;
    }
}

/// A random peer id: 16 hex digits.
#[must_use]
pub fn random_peer_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Logs a frame at trace level: its kind, size and envelope header, never its body.
fn trace_frame(direction: &str, message: &Message) {
    if !tracing::enabled!(tracing::Level::TRACE) {
        return;
    }
    match message {
        Message::Text(text) => match micronets_message::Header::parse(text.as_str()) {
            Ok(h) => {
                trace!(direction, len = text.len(), message_type = %h.message_type, message_id = ?h.message_id, "text frame")
            }
            Err(_) => trace!(direction, len = text.len(), "text frame (not an envelope)"),
        },
        Message::Binary(bytes) => trace!(direction, len = bytes.len(), "binary frame"),
        Message::Ping(_) => trace!(direction, "ping"),
        Message::Pong(_) => trace!(direction, "pong"),
        Message::Close(frame) => {
            trace!(direction, code = ?frame.as_ref().map(|f| u16::from(f.code)), "close")
        }
        Message::Frame(_) => trace!(direction, "raw frame"),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<Ws, Message>,
    mut out: mpsc::Receiver<Message>,
    keepalive: Duration,
) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            message = out.recv() => match message {
                Some(message) => message,
                None => break,
            },
            _ = ping.tick() => Message::Ping(Bytes::new()),
        };
        trace_frame("out", &message);
        let closing = matches!(message, Message::Close(_));
        if sink.send(message).await.is_err() || closing {
            break;
        }
    }
    let _ = sink.close().await;
}

/// Requests from the peer served at once, at most.
pub const SERVING_AT_ONCE: usize = 64;

struct Reader {
    /// Places for requests being served ([`SERVING_AT_ONCE`]).
    serving: Arc<tokio::sync::Semaphore>,
    out: mpsc::Sender<Message>,
    pending: Pending,
    next_id: Arc<AtomicI64>,
    handler: Option<Handler>,
    incoming: Option<mpsc::Sender<Incoming>>,
    peer: watch::Sender<Option<Hello>>,
}

impl Reader {
    /// Reads until the connection ends, or brings nothing for `silence`; returns how it
    /// ended.
    async fn run(self, mut stream: futures_util::stream::SplitStream<Ws>, silence: Duration) -> Ended {
        let ended = loop {
            let Ok(frame) = tokio::time::timeout(silence, stream.next()).await else {
                break Ended {
                    code: None,
                    reason: format!("nothing from the relay for {silence:?}: the connection is dead"),
                };
            };
            if let Some(Ok(message)) = &frame {
                trace_frame("in", message);
            }
            match frame {
                Some(Ok(Message::Text(text))) => self.on_text(text.as_str()).await,
                Some(Ok(Message::Binary(bytes))) => self.hand_over(Incoming::Binary(bytes)).await,
                Some(Ok(Message::Close(frame))) => {
                    break match frame {
                        Some(f) => {
                            Ended { code: Some(u16::from(f.code)), reason: f.reason.as_str().to_owned() }
                        }
                        None => Ended { code: None, reason: "closed without a code".into() },
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Ended { code: None, reason: format!("connection failed: {e}") },
                None => break Ended { code: None, reason: "connection ended".into() },
            }
        };
        // Whoever still waits for an answer learns the connection is gone.
        lock(&self.pending).clear();
        ended
    }

    async fn on_text(&self, text: &str) {
        let envelope = match Envelope::parse(text) {
            Ok(envelope) => envelope,
            Err(e) => {
                debug!(error = %e, "frame is not a valid envelope");
                return self.hand_over(Incoming::Text(text.to_owned(), None)).await;
            }
        };
        let answer = |reply| match &envelope.in_response_to {
            Some(id) => lock(&self.pending).remove(id).map(|tx| {
                // The requester may have timed out meanwhile; then nobody is left to tell.
                let _ = tx.send(reply);
            }),
            None => None,
        };
        match &envelope.kind {
            Kind::RestResponse(response) => {
                if answer(Reply::Response(Box::new(response.clone()))).is_none() {
                    warn!(in_response_to = ?envelope.in_response_to, "REST:RESPONSE for no pending request: ignored");
                }
            }
            Kind::Error(error) => {
                let refused = Reply::Refused {
                    status: error.status_code,
                    reason: error.reason_phrase.clone().unwrap_or_default(),
                };
                if answer(refused).is_none() {
                    self.hand_over(Incoming::Text(text.to_owned(), Some(Box::new(envelope)))).await;
                }
            }
            Kind::RestRequest(request) => self.serve(request.clone(), envelope.message_id.clone()),
            Kind::Hello(hello) => {
                let _ = self.peer.send(Some(hello.clone()));
                info!(peer_class = ?hello.peer_class, peer_id = ?hello.peer_id, "peer HELLO received");
                self.hand_over(Incoming::Text(text.to_owned(), Some(Box::new(envelope)))).await;
            }
            _ => self.hand_over(Incoming::Text(text.to_owned(), Some(Box::new(envelope)))).await,
        }
    }

    /// Answers a request from the peer, concurrently with everything else, up to
    /// [`SERVING_AT_ONCE`] at a time: past that, at once with 503, so that a peer sending
    /// faster than the local service answers cannot make this client hold without bound.
    fn serve(&self, request: RestRequest, id: Option<MessageId<'static>>) {
        let handler = self.handler.clone();
        let out = self.out.clone();
        let reply_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::clone(&self.serving).try_acquire_owned();
        tokio::spawn(async move {
            debug!(method = %request.method, path = %request.path, "serving REST:REQUEST");
            let response = match (slot, handler) {
                (Err(_), _) => {
                    warn!(method = %request.method, path = %request.path, "too many requests being served: answered 503");
                    failure(503, format!("this peer serves {SERVING_AT_ONCE} requests at a time"))
                }
                (Ok(_slot), Some(handler)) => handler(request).await,
                (Ok(_), None) => {
                    failure(501, "this peer does not serve requests (ws-client without --forward-to)".into())
                }
            };
            let envelope =
                Envelope::new(Kind::RestResponse(response)).with_id(reply_id).in_response_to(id.clone());
            let mut text = envelope.to_json();
            if text.len() > MAX_FRAME_BYTES {
                // Sent, it would close the connection (1009) and lose every request in flight.
                warn!(len = text.len(), "response too large for a frame once encoded: answered 502");
                let refused = failure(
                    502,
                    format!("the response is {} bytes once encoded, more than a frame may carry", text.len()),
                );
                text =
                    Envelope::new(Kind::RestResponse(refused)).with_id(reply_id).in_response_to(id).to_json();
            }
            let _ = out.send(Message::text(text)).await;
        });
    }

    async fn hand_over(&self, incoming: Incoming) {
        match &self.incoming {
            Some(tx) => {
                let _ = tx.send(incoming).await;
            }
            None => match &incoming {
                Incoming::Text(_, Some(envelope)) => {
                    info!(message_type = %envelope.message_type(), "received")
                }
                Incoming::Text(text, None) => {
                    info!(len = text.len(), "received a frame that is not an envelope")
                }
                Incoming::Binary(bytes) => info!(len = bytes.len(), "received a binary frame"),
            },
        }
    }
}
