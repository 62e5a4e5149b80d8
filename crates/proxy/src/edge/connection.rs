//! One accepted TCP connection: the TLS handshake, the peer's identity, the upgrade request and
//! its admission, all within `handshake_timeout`; then the member's life in its room
//! (`rooms/member.rs`). A resumed TLS session's certificate is checked again here: resumption
//! skips rustls' own checks, and an expired certificate must not come back that way (a revoked
//! one cannot: a change of CAs or CRLs voids the sessions made before it, `tickets.rs`).
//!
//! Errors never leave this module: [`run`] logs each connection's end once, with its reason, at
//! a level that says whose fault it was.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, SemaphorePermit};
use tokio::time::{self, Instant};
use tracing::{Span, debug, info, warn};

use super::admission::{self, Pass};
use super::gate::Gate;
use super::slots::Slot;
use super::upgrade::{self, HeadLimits, Refusal};
use super::{tls, tls_stream};
use crate::error::Close;
use crate::identity::{PeerIdentity, unix_now};
use crate::metrics::{Metrics, OpenConnection};
use crate::rooms::hub::Hub;
use crate::rooms::member::{self, Admitted};
use crate::rooms::websocket::{FrameReader, FrameWriter};

type Tls = tls_stream::TlsStream;
type WsStream = FrameReader<tls_stream::ReadHalf>;
type WsSink = FrameWriter<tls_stream::WriteHalf>;

/// An upgraded connection: its two halves (the TLS stream lives on the heap behind them, so it
/// does not size the connection's task), and who it is and where it goes.
struct Established {
    sink: WsSink,
    stream: WsStream,
    admitted: Admitted,
    /// Its place under `max_connections_per_identity`.
    identity_slot: Slot<crate::identity::Fingerprint>,
    /// The gate's generation it was admitted under.
    generation: u64,
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

/// Serves one accepted TCP connection to its end; its `places` are given back when this
/// returns.
pub(crate) async fn run(gate: Arc<Gate>, hub: Arc<Hub>, tcp: TcpStream, peer: SocketAddr, places: Places) {
    let _places = places;
    // The handshake's state ends inside this block, so the task that lives as long as the
    // connection keeps none of it across the member's life.
    let (member, _identity_slot) = {
        // The wait for a handshake slot is small; the handshake's large and short-lived state
        // (TLS, the request head) is boxed once a slot is had, and freed once it is done: in a
        // reconnect storm thousands of connections wait, and each holding that state would
        // cost the node a peak of 12 KB per waiting connection, and the fragmentation after.
        let established = tokio::select! {
            biased;
            () = hub.shutdown.cancelled() => {
                gate.metrics.connection_ended("shutdown");
                debug!("shutting down: connection dropped before the upgrade");
                None
            }
            established = async {
                let slot = handshake_slot(&gate).await?;
                Box::pin(establish(&gate, &hub, tcp, peer, slot)).await
            } => established,
        };
        let Some(Established { sink, stream, admitted, identity_slot, generation }) = established else {
            return;
        };
        let (room, chain) = (admitted.room.clone(), Arc::clone(&admitted.chain));
        let gate = &*gate;
        let recheck = move |peer_class: Option<&str>| gate.recheck(generation, &room, &*chain, peer_class);
        (member::serve(&hub, admitted, stream, sink, recheck), identity_slot)
    };
    let close = member.await;
    gate.metrics.connection_ended(close.label());
    let code = u16::from(close.close_code());
    match close {
        Close::PeerClosed | Close::Transport(_) => {
            debug!(code, reason = %close.reason(), "connection closed")
        }
        ref c if c.is_peer_fault() => info!(code, reason = %close.reason(), "connection closed by the proxy"),
        _ => info!(code, reason = %close.reason(), "connection closed"),
    }
}

/// Waits for one of the `max_handshakes_in_flight` handshake slots, in arrival order, up to
/// `handshake_timeout`; past it the connection is closed before any TLS work.
async fn handshake_slot(gate: &Gate) -> Option<SemaphorePermit<'_>> {
    let metrics = &gate.metrics;
    let waited = {
        let _queued = metrics.hold(&metrics.handshakes_queued);
        time::timeout(gate.config.handshake_timeout, gate.handshake_slots.acquire()).await
    };
    match waited {
        Ok(Ok(slot)) => Some(slot),
        _ => {
            metrics.connection_ended("handshake_queue_timeout");
            info!("no handshake slot within handshake_timeout: closed before any TLS work");
            None
        }
    }
}

/// TLS handshake (holding `slot` until its work is done), identity and upgrade, all within
/// `handshake_timeout`.
async fn establish(
    gate: &Gate,
    hub: &Hub,
    tcp: TcpStream,
    peer: SocketAddr,
    slot: SemaphorePermit<'_>,
) -> Option<Established> {
    let (tls, identity, deadline) = handshake(gate, tcp, slot).await?;
    Span::current().record("subject", tracing::field::display(&identity.subject));
    Span::current().record("fingerprint", tracing::field::display(&identity.fingerprint));
    gate.expiry.check(&identity, gate.config.expiry_warning, unix_now(), &gate.metrics);
    let established = upgrade(gate, hub, tls, identity, peer, deadline).await?;
    let admitted = &established.admitted;
    Span::current().record("room", tracing::field::display(&admitted.room));
    gate.expiry.entered(&admitted.identity.fingerprint, &admitted.room);
    Some(established)
}

/// Runs the TLS handshake and reads the peer's identity within `handshake_timeout`; returns the
/// session, the identity and the deadline the upgrade request must also meet. The handshake
/// slot is given back once the TLS work is done.
async fn handshake(
    gate: &Gate,
    tcp: TcpStream,
    _slot: SemaphorePermit<'_>,
) -> Option<(Tls, PeerIdentity, Instant)> {
    let metrics = &gate.metrics;
    let _in_flight = metrics.hold(&metrics.handshakes_in_flight);
    let deadline = Instant::now() + gate.config.handshake_timeout;
    let config = Arc::clone(&gate.tls.load().server);
    let tls = match time::timeout_at(deadline, tls_stream::accept(config, tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let (label, detail) = tls::handshake_failure(&e);
            metrics.handshake_failed(label);
            info!(reason = label, detail = %detail, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            metrics.handshake_failed("timeout");
            info!(reason = "timeout", "TLS handshake not completed within handshake_timeout");
            return None;
        }
    };
    let session = tls.session();
    let chain = session.peer_certificates().unwrap_or_default();
    let identity = match chain.first().map(|c| PeerIdentity::from_der(c)) {
        Some(Ok(identity)) => identity,
        Some(Err(e)) => {
            metrics.handshake_failed("bad_certificate");
            warn!(error = %e, "verified client certificate cannot be parsed");
            return None;
        }
        None => {
            metrics.handshake_failed("no_client_certificate");
            warn!("handshake completed without a client certificate");
            return None;
        }
    };
    let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    if resumed && let Err(e) = gate.still_valid(identity.not_after, chain.get(1..).unwrap_or_default()) {
        let label = tls::failure_label(&e);
        metrics.handshake_failed(label);
        info!(reason = label, detail = %e, "resumed TLS session refused: its certificate is no longer valid");
        return None;
    }
    Metrics::inc(if resumed { &metrics.handshakes_resumed } else { &metrics.handshakes_full });
    Some((tls, identity, deadline))
}

/// Reads the upgrade request within the handshake deadline and answers it: a refusal (logged,
/// counted) or the 101 and a WebSocket.
async fn upgrade(
    gate: &Gate,
    hub: &Hub,
    mut tls: Tls,
    identity: PeerIdentity,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<Established> {
    let generation = gate.generation();
    let config = &gate.config;
    let limits = HeadLimits { bytes: config.max_request_head_bytes, headers: config.max_request_headers };
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
        Ok(request) => match admission::admit(gate, hub, &identity, peer, &request).await {
            Err(refusal) => refusal,
            Ok(Pass { peer_class, slot, may_replace }) => {
                if let Err(e) = upgrade::accept(&mut tls, &request).await {
                    gate.metrics.connection_ended("upgrade_incomplete");
                    debug!(error = %e, "peer left during the upgrade");
                    return None;
                }
                let (read, write, chain) = tls.split();
                let stream =
                    FrameReader::new(read, &request.leftover, config.max_hello_bytes, config.max_frame_bytes);
                let admitted =
                    Admitted { identity, chain, address: peer, room: request.room, peer_class, may_replace };
                let sink = FrameWriter::new(write);
                return Some(Established { sink, stream, admitted, identity_slot: slot, generation });
            }
        },
    };
    match refusal {
        Refusal::Closed(why) => {
            gate.metrics.connection_ended("upgrade_incomplete");
            info!(reason = %why, "upgrade not completed");
        }
        Refusal::Status { status, reason, path, retry_after } => {
            gate.metrics.upgrade_refused(status);
            info!(status, reason = %reason, path = path.as_deref().unwrap_or("-"), "upgrade refused");
            let _ = time::timeout(config.handshake_timeout, async {
                let _ = upgrade::refuse(&mut tls, status, &reason, retry_after).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
            })
            .await;
        }
    }
    None
}
