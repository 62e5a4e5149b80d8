//! The accept loop: admits connections under `max_connections`, the handshake rate and the
//! per-address limit, and spawns one task each (`connection.rs`), until told to stop. The
//! drain that follows is the daemon's (`ops/proxy.rs`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{Instrument, error, info_span, warn};

use super::connection::{self, Places};
use super::gate::Gate;
use crate::metrics::Metrics;
use crate::rate::{Admit, RateLimit};
use crate::rooms::hub::Hub;

/// Pause after an accept error that is not about one connection (EMFILE, ENOBUFS, ...).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections on `listener` until `shutdown` completes; each runs as a task of the
/// hub's tracker.
pub(crate) async fn serve(
    gate: Arc<Gate>,
    hub: Arc<Hub>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let config = &gate.config;
    let slots = Arc::new(Semaphore::new(config.max_connections));
    // New connections per second: past the rate they are dropped before any TLS work, so a
    // reconnect storm turns into the clients' orderly retries instead of a CPU pile-up.
    let mut handshakes = RateLimit::new(config.max_handshakes_per_second, 0, std::time::Instant::now());
    // A file kept open to be given up when accepting fails for want of files: then one waiting
    // connection can be accepted and closed, instead of the whole backlog hanging.
    let mut spare = spare_file();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, addr) = match accepted {
            Ok(pair) => pair,
            Err(e) if is_per_connection(&e) => continue,
            Err(e) if is_out_of_files(&e) && spare.is_some() => {
                drop(spare.take());
                if let Ok(Ok((tcp, addr))) = tokio::time::timeout(ACCEPT_BACKOFF, listener.accept()).await {
                    Metrics::inc(&gate.metrics.connections_refused);
                    warn!(peer = %addr, error = %e, "connection refused: the process is out of open files");
                    drop(tcp);
                }
                spare = spare_file();
                continue;
            }
            Err(e) => {
                error!(error = %e, "accept failed; retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            Metrics::inc(&gate.metrics.connections_refused);
            warn!(peer = %addr, limit = config.max_connections, "connection refused: max_connections reached");
            drop(tcp);
            continue;
        };
        if handshakes.admit(0) != Admit::Yes {
            dropped(&gate.metrics, addr, "handshake_rate_limited", "max_handshakes_per_second");
            continue;
        }
        let Some(ip) = gate.per_ip.acquire(addr.ip()) else {
            dropped(&gate.metrics, addr, "ip_limited", "max_connections_per_ip");
            continue;
        };
        let open = gate.metrics.opened();
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
        let places = Places { _permit: permit, _open: open, _ip: ip };
        let task = connection::run(Arc::clone(&gate), Arc::clone(&hub), tcp, addr, places);
        hub.tracker.spawn(task.instrument(span));
    }
}

/// Counts and logs a connection dropped at accept, before any TLS work, for `limit`.
fn dropped(metrics: &Metrics, addr: std::net::SocketAddr, outcome: &'static str, limit: &'static str) {
    metrics.connection_ended(outcome);
    warn!(peer = %addr, limit, "connection dropped before TLS: limit reached");
}

/// The file given up when the process runs out of files.
fn spare_file() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// Whether accepting failed because the process or the system is out of open files.
fn is_out_of_files(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(Errno::from_io_error(e), Some(Errno::MFILE | Errno::NFILE))
}

/// Errors that concern one connection only, after which accepting goes on at once.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}
