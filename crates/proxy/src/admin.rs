//! The admin endpoint (`admin.bind`, plain HTTP/1.1, GET only): `/healthz` (the process
//! answers), `/readyz` (listening and not draining), `/metrics` (Prometheus text format),
//! `/v1/rooms` and `/v1/rooms/<id>` (JSON, see [`crate::status`]); and the small client
//! `ws-proxy status` uses to read it.
//!
//! It serves operators and monitoring, not peers: a few connections at a time, each bounded in
//! time, served by tasks that end with the endpoint.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, error, warn};

use crate::{Error, Result, Shared};

/// Admin connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 16;
/// The longest an admin connection may stay open.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `ws-proxy status` waits for the endpoint.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin endpoint on `listener`, forever.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next() => continue,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                warn!(error = %e, "admin endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            // The semaphore is never closed; should it be, the daemon keeps relaying.
            error!("admin endpoint: its connection limit was closed; it stops answering");
            return std::future::pending().await;
        };
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(respond(&shared, &request)) }
            });
            let connection =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                debug!(error = %e, "admin connection failed");
            }
            drop(permit);
        });
    }
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
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if !shared.ready.load(Ordering::Relaxed) => {
            text(StatusCode::SERVICE_UNAVAILABLE, "not ready: draining or not listening yet\n".into())
        }
        "/readyz" if !shared.backplane.healthy() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "not ready: the cluster's redis is unreachable\n".into())
        }
        "/readyz" => text(StatusCode::OK, "ready\n".into()),
        "/metrics" => {
            let (published, lost) = shared.backplane.counts();
            let cluster = shared.config.cluster.is_some().then_some(crate::metrics::ClusterTotals {
                up: shared.backplane.healthy(),
                published,
                lost,
            });
            let body = shared.metrics.render(crate::status::totals(&shared.registry.snapshot()), cluster);
            with_type(StatusCode::OK, crate::metrics::CONTENT_TYPE, body)
        }
        "/v1/rooms" => json(StatusCode::OK, &shared.registry.snapshot()),
        path => match path.strip_prefix("/v1/rooms/") {
            Some(id) => match shared.registry.snapshot().into_iter().find(|room| room.id == id) {
                Some(room) => json(StatusCode::OK, &room),
                None => {
                    json(StatusCode::NOT_FOUND, &serde_json::json!({ "error": format!("no room {id:?}") }))
                }
            },
            None => {
                debug!(path, "admin: unknown path");
                text(
                    StatusCode::NOT_FOUND,
                    "unknown path; try /healthz, /readyz, /metrics, /v1/rooms\n".into(),
                )
            }
        },
    }
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

/// `GET path` from the admin endpoint at `addr`; returns the body of a 200 answer.
///
/// # Errors
/// [`Error::Admin`] when the endpoint cannot be reached, does not answer in time, or answers
/// with another status.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Result<String> {
    let fail = |reason: String| Error::Admin { addr, reason };
    let exchange = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| fail(format!("cannot connect: {e}")))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| fail(e.to_string()))?;
        let request = Request::get(path)
            .header(header::HOST, addr.to_string())
            .body(Full::new(Bytes::new()))
            .map_err(|e| fail(e.to_string()))?;
        let driven = async {
            let response: Response<Incoming> =
                sender.send_request(request).await.map_err(|e| fail(e.to_string()))?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| fail(e.to_string()))?.to_bytes();
            let body = String::from_utf8_lossy(&body).into_owned();
            if status == StatusCode::OK {
                Ok(body)
            } else {
                Err(fail(format!("{path}: {status}: {}", body.trim())))
            }
        };
        tokio::select! {
            result = driven => result,
            Err(e) = connection => Err(fail(e.to_string())),
        }
    };
    tokio::time::timeout(CLIENT_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(fail("no answer in time".into())))
}
