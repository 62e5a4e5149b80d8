//! The HTTP bridge: every HTTP request made to it travels as a `REST:REQUEST`, and the
//! matching `REST:RESPONSE` comes back as the HTTP response.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use micronets_message::RestRequest;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::Error;
use crate::session::Session;

/// Bridge settings.
#[derive(Clone, Copy, Debug)]
pub struct BridgeOptions {
    /// How long to wait for the matching response before answering 504.
    pub request_timeout: Duration,
    /// Largest request body accepted (larger ones get 413: they could not travel in a frame).
    pub max_body: usize,
}

/// Serves HTTP on `listener` until the session ends. The HTTP connections it accepted end
/// with it (when it returns, or is dropped): a client's kept-alive connection is never left
/// tied to a session that is gone, and reconnects to the bridge of the next one.
pub async fn serve(listener: &TcpListener, session: Arc<Session>, options: BridgeOptions) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            ended = session.ended() => {
                info!(reason = %ended.reason, "bridge pauses: the relay connection ended");
                return;
            }
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next() => continue,
        };
        let (tcp, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of files, most likely: a pause, not a spin.
                warn!(error = %e, "bridge: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let session = Arc::clone(&session);
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let session = Arc::clone(&session);
                async move { Ok::<_, Infallible>(bridge_one(&session, request, options).await) }
            });
            if let Err(e) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await
            {
                debug!(peer = %addr, error = %e, "bridge connection ended");
            }
        });
    }
}

fn plain(status: u16, text: String) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

async fn bridge_one(
    session: &Session,
    request: http::Request<Incoming>,
    options: BridgeOptions,
) -> http::Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, options.max_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return plain(413, format!("request body refused: {e}")),
    };
    let rest = match RestRequest::from_http(&http::Request::from_parts(parts, body)) {
        Ok(rest) => rest,
        Err(e @ micronets_message::Error::ContentEncoding(_)) => return plain(415, e.to_string()),
        Err(e) => return plain(400, e.to_string()),
    };
    let (method, path) = (rest.method.clone(), rest.path.clone());
    match session.request(rest, options.request_timeout).await {
        Ok(response) => {
            info!(%method, %path, status = response.status_code, "bridged");
            match response.to_http() {
                Ok(http) => {
                    let reason = response.reason_phrase.clone();
                    let (mut parts, body) = http.into_parts();
                    let canonical = parts.status.canonical_reason();
                    let custom = reason.filter(|r| Some(r.as_str()) != canonical);
                    if let Some(phrase) =
                        custom.and_then(|r| hyper::ext::ReasonPhrase::try_from(r.into_bytes()).ok())
                    {
                        parts.extensions.insert(phrase);
                    }
                    http::Response::from_parts(parts, Full::new(Bytes::from(body)))
                }
                Err(e) => plain(502, format!("the peer's response cannot be expressed in HTTP: {e}")),
            }
        }
        Err(Error::Timeout(after)) => {
            warn!(%method, %path, "no response in time: 504");
            plain(504, format!("no response from the peer within {after:?}"))
        }
        Err(Error::Refused { status, reason }) => plain(status, reason),
        Err(e @ Error::TooLarge(_)) => plain(413, e.to_string()),
        Err(e) => plain(502, e.to_string()),
    }
}
