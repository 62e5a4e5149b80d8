//! The admin endpoint (`admin.bind`, plain HTTP/1.1, GET only): `/healthz` (the process
//! answers), `/readyz` (listening and not draining), `/metrics` (Prometheus text format),
//! `/v1/rooms` and `/v1/rooms/<id>` (JSON, see `status.rs`), `/v1/certificates` (client
//! certificates about to expire, `certificates.rs`), `/v1/overview` (`overview.rs`) and `/`, the
//! web console showing that overview (`console.rs`, with `/console.css` and `/console.js`).
//! `ws-proxy status` reads it with the client in `cli/admin_client.rs`.
//!
//! It serves operators and monitoring, not peers, but health checks (systemd, load balancers,
//! Kubernetes) must get their answer even while something holds connections open: each
//! connection is served by a task of its own, must send its request head within
//! [`HEADER_TIMEOUT`] and may stay at most [`CONNECTION_TIMEOUT`], and past
//! [`MAX_CONNECTIONS`] at once a new one is closed at once rather than queued behind them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::admin_guard::Denied;
use super::certificates;
use super::console;
use super::overview::{Overview, readiness};
use super::state::Shared;
use super::status;
use crate::config::duration;
use crate::edge::{tls, tls_stream};
use crate::identity::{PeerIdentity, unix_now};
use crate::metrics::{CONTENT_TYPE, Gauges};

/// Admin connections served at once; more are closed as they come.
pub(crate) const MAX_CONNECTIONS: usize = 128;
/// Admin connections served at once from one address: one client (a scraper gone wrong, or
/// anyone who reaches the port) cannot take the slots a load balancer's probes need.
const MAX_PER_ADDRESS: usize = 16;
/// How long a connection has to send a request head (its first, or its next one).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest an admin connection may stay open.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves the admin endpoint on `listener`, forever.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let mut connections = JoinSet::new();
    let addresses = PerAddress::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next() => continue,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "admin endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if connections.len() >= MAX_CONNECTIONS {
            warn!(limit = MAX_CONNECTIONS, "admin endpoint: too many connections open; closing a new one");
            drop(tcp);
            continue;
        }
        let Some(slot) = addresses.take(peer.ip()) else {
            warn!(%peer, limit = MAX_PER_ADDRESS, "admin endpoint: too many connections open from one address; closing a new one");
            drop(tcp);
            continue;
        };
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            let _slot = slot;
            let Some(tls) = shared.admin_guard.tls() else {
                return serve_connection(shared, tcp, None, peer).await;
            };
            match tokio::time::timeout(HEADER_TIMEOUT, tls_stream::accept(tls, tcp)).await {
                Ok(Ok(stream)) => {
                    let client = stream
                        .session()
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|leaf| PeerIdentity::from_der(leaf).ok());
                    serve_connection(shared, stream, client, peer).await;
                }
                Ok(Err(e)) => info!(%peer, reason = tls::handshake_failure(&e).0, "admin endpoint: TLS handshake failed"),
                Err(_) => info!(%peer, "admin endpoint: no TLS handshake in time"),
            }
        });
    }
}

/// The admin connections open from each address.
#[derive(Default)]
struct PerAddress(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One connection's place in [`PerAddress`], given back when it ends (or its task panics).
struct Slot {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PerAddress {
    /// A place for a connection from `ip`, unless it has [`MAX_PER_ADDRESS`] open.
    fn take(&self, ip: IpAddr) -> Option<Slot> {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= MAX_PER_ADDRESS {
            return None;
        }
        *count += 1;
        Some(Slot { open: Arc::clone(&self.0), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves one admin connection's requests, from a client with the verified certificate
/// `client`, if any.
async fn serve_connection<Io>(shared: Arc<Shared>, io: Io, client: Option<PeerIdentity>, peer: SocketAddr)
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = Arc::new(client);
    let service = hyper::service::service_fn(move |request| {
        let shared = Arc::clone(&shared);
        let client = Arc::clone(&client);
        async move {
            let response = match shared.admin_guard.check(&request, client.as_ref().as_ref()) {
                Ok(()) => respond(&shared, &request),
                Err(Denied::Unauthenticated) => {
                    info!(%peer, path = request.uri().path(), "admin endpoint: refused a request without a valid token or allowed certificate");
                    unauthorized()
                }
                Err(Denied::ForeignHost) => {
                    info!(%peer, "admin endpoint: refused a request for a host name that is not this machine's");
                    text(
                        StatusCode::MISDIRECTED_REQUEST,
                        "an admin endpoint without a token answers requests to localhost or an IP address only\n".into(),
                    )
                }
            };
            Ok::<_, Infallible>(response)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
        debug!(error = %e, "admin connection failed");
    }
}

/// The answer to a request the guard refused.
fn unauthorized() -> Response<Full<Bytes>> {
    let mut response = text(
        StatusCode::UNAUTHORIZED,
        "this needs the admin token (Authorization: Bearer ...) or an allowed client certificate\n".into(),
    );
    // Bearer for programs; Basic (the token as the password) so that a browser prompts.
    for challenge in ["Bearer realm=\"ws-proxy admin\"", "Basic realm=\"ws-proxy admin\", charset=\"UTF-8\""]
    {
        response.headers_mut().append(header::WWW_AUTHENTICATE, header::HeaderValue::from_static(challenge));
    }
    response
}

/// The answer to one request.
fn respond<B>(shared: &Shared, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        debug!(method = %request.method(), path = request.uri().path(), "admin: method not allowed");
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n".into());
        response.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return response;
    }
    match request.uri().path() {
        "/" => console_response(
            "text/html; charset=utf-8",
            Bytes::from(console::page(&Overview::read(shared))),
            Some(console::CONTENT_SECURITY_POLICY),
        ),
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match readiness(shared) {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/metrics" => {
            let cluster = shared.config.cluster.is_some().then(|| shared.backplane.totals());
            let now = unix_now();
            let rooms = status::totals(&shared.hub.registry, now);
            let trust = Arc::clone(&shared.gate.tls.load().expiries);
            let body = shared.metrics.render(Gauges { rooms, cluster, trust, now });
            with_type(StatusCode::OK, CONTENT_TYPE, body)
        }
        "/v1/rooms" => json(StatusCode::OK, &status::snapshot(&shared.hub.registry)),
        "/v1/overview" => json(StatusCode::OK, &Overview::read(shared)),
        "/v1/certificates" => {
            let within = match query(request, "expiring_within") {
                None => Ok(shared.config.expiry_warning),
                Some(text) => duration("expiring_within", &text),
            };
            match within {
                Ok(within) => json(
                    StatusCode::OK,
                    &certificates::expiring(&shared.hub.registry, &shared.gate.expiry, within, unix_now()),
                ),
                Err(e) => json(StatusCode::BAD_REQUEST, &serde_json::json!({ "error": e.to_string() })),
            }
        }
        path => match path.strip_prefix("/v1/rooms/") {
            Some(id) => match status::snapshot(&shared.hub.registry).into_iter().find(|room| room.id == id) {
                Some(room) => json(StatusCode::OK, &room),
                None => {
                    json(StatusCode::NOT_FOUND, &serde_json::json!({ "error": format!("no room {id:?}") }))
                }
            },
            None => match console::asset(path) {
                Some((content_type, body)) => {
                    console_response(content_type, Bytes::from_static(body.as_bytes()), None)
                }
                None => {
                    debug!(path, "admin: unknown path");
                    text(
                        StatusCode::NOT_FOUND,
                        "unknown path; try /, /healthz, /readyz, /metrics, /v1/rooms, /v1/certificates, /v1/overview\n"
                            .into(),
                    )
                }
            },
        },
    }
}

/// The value of `key` in the request's query string, percent-decoding left out (the values
/// asked for are durations).
fn query<B>(request: &Request<B>, key: &str) -> Option<String> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| v.to_owned())
    })
}

/// The console's page (under its content security `policy`) or one of its assets: never cached
/// (the page is the node now, the assets change with the binary) and never sniffed as another
/// type.
fn console_response(
    content_type: &'static str,
    body: Bytes,
    policy: Option<&'static str>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    if let Some(policy) = policy {
        headers.insert(header::CONTENT_SECURITY_POLICY, header::HeaderValue::from_static(policy));
    }
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", body)
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(value) {
        Ok(body) => with_type(status, "application/json", body),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the answer: {e}\n")),
    }
}

fn with_type(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}
