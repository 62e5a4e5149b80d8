//! The accept loop: admits connections under `max_connections`, spawns one task each, and on
//! shutdown turns not-ready, stops accepting, closes members spread over the drain window, and
//! waits for the rest within the grace period.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{Instrument, error, info, info_span, warn};

use crate::Shared;
use crate::metrics::Metrics;
use crate::rate::{Admit, RateLimit};

/// Pause after an accept error that is not about one connection (EMFILE, ENOBUFS, ...).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let slots = Arc::new(Semaphore::new(shared.config.max_connections));
    // New connections per second: past the rate they are dropped before any TLS work, so a
    // reconnect storm turns into the clients' orderly retries instead of a CPU pile-up.
    let mut handshakes =
        RateLimit::new(shared.config.max_handshakes_per_second, 0, std::time::Instant::now());
    tokio::pin!(shutdown);
    shared.ready.store(true, Ordering::Relaxed);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, addr) = match accepted {
            Ok(pair) => pair,
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                error!(error = %e, "accept failed; retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            Metrics::inc(&shared.metrics.connections_refused);
            warn!(peer = %addr, limit = shared.config.max_connections, "connection refused: max_connections reached");
            drop(tcp);
            continue;
        };
        if handshakes.admit(0) != Admit::Yes {
            dropped(&shared, addr, "handshake_rate_limited", "max_handshakes_per_second");
            continue;
        }
        let Some(ip) = shared.per_ip.acquire(addr.ip()) else {
            dropped(&shared, addr, "ip_limited", "max_connections_per_ip");
            continue;
        };
        let open = shared.metrics.opened();
        let _ = tcp.set_nodelay(true);
        let span = info_span!(
            "conn",
            peer = %addr,
            subject = tracing::field::Empty,
            fingerprint = tracing::field::Empty,
            room = tracing::field::Empty,
            peer_id = tracing::field::Empty,
        );
        // The guards go into the connection's own future: wrapping it in another async block
        // would store it twice and double the task's size.
        let places = crate::connection::Places { _permit: permit, _open: open, _ip: ip };
        let task = crate::connection::run(Arc::clone(&shared), tcp, places);
        shared.tracker.spawn(task.instrument(span));
    }
    shared.ready.store(false, Ordering::Relaxed);
    drop(listener);
    let members = shared.registry.mailboxes();
    info!(
        open = Metrics::get(&shared.metrics.connections_open),
        members = members.len(),
        drain_window_secs = shared.config.drain_window.as_secs_f64(),
        grace_secs = shared.config.shutdown_grace.as_secs_f64(),
        "shutting down: not ready, accepting stopped, closing members across the drain window"
    );
    crate::shutdown::close_spread(members, shared.config.drain_window).await;
    shared.shutdown.cancel();
    shared.tracker.close();
    if tokio::time::timeout(shared.config.shutdown_grace, shared.tracker.wait()).await.is_err() {
        warn!(remaining = shared.tracker.len(), "grace period over: cutting off the remaining connections");
    } else {
        info!("all connections closed");
    }
}

/// Counts and logs a connection dropped at accept, before any TLS work, for `limit`.
fn dropped(shared: &Shared, addr: std::net::SocketAddr, outcome: &'static str, limit: &'static str) {
    shared.metrics.connection_ended(outcome);
    warn!(peer = %addr, limit, "connection dropped before TLS: limit reached");
}

/// Errors that concern one connection only, after which accepting goes on at once.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}
