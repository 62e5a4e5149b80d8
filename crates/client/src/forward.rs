//! The gateway forwarder: performs each `REST:REQUEST` received against a local HTTP service
//! and answers with its response.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, HOST, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use micronets_message::{Content, RestRequest, RestResponse};
use tracing::{debug, warn};

use crate::session::Handler;
use crate::{Error, Result};

/// Forwards requests to `base` (e.g. `http://127.0.0.1:8080`).
pub struct Forwarder {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    base_path: String,
    timeout: Duration,
    max_body: usize,
    /// Whether responses carry the service's `headers` (see [`Forwarder::without_response_headers`]).
    response_headers: bool,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A response made here, not by the service: `status`, with `reason` as its phrase.
pub(crate) fn failure(status: u16, reason: String) -> RestResponse {
    RestResponse {
        status_code: status,
        reason_phrase: Some(reason),
        headers: Vec::new(),
        content: Content::none(),
    }
}

impl Forwarder {
    /// A forwarder to `base`, answering 504 past `timeout` and refusing responses larger than
    /// `max_body` bytes (they could not travel in one frame).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a base that is not an `http://host[:port][/path]` URL.
    pub fn new(base: &str, timeout: Duration, max_body: usize) -> Result<Self> {
        let uri: http::Uri =
            base.parse().map_err(|e| Error::Invalid(format!("invalid --forward-to {base:?}: {e}")))?;
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
            return Err(Error::Invalid(format!("invalid --forward-to {base:?}: expected http://host:port")));
        };
        if scheme != http::uri::Scheme::HTTP {
            return Err(Error::Invalid(format!("invalid --forward-to {base:?}: only http:// is supported")));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Forwarder { scheme, authority, base_path, timeout, max_body, response_headers: true, client })
    }

    /// Leaves `headers` out of every response, for bridges that cannot read them (the original
    /// test client's bridge reads each header's value under `val`, where the spec and this
    /// forwarder say `value`: docs/protocol.md, "Compatibility").
    #[must_use]
    pub fn without_response_headers(mut self) -> Self {
        self.response_headers = false;
        self
    }

    /// This forwarder as a session [`Handler`].
    #[must_use]
    pub fn handler(self: Arc<Self>) -> Handler {
        Arc::new(move |request| {
            let forwarder = Arc::clone(&self);
            Box::pin(async move { forwarder.forward(request).await })
        })
    }

    /// Performs one request and describes the outcome as a response: the service's answer, or
    /// 400 (request HTTP cannot carry), 502 (service unreachable or its answer unusable), 504
    /// (no answer in time).
    pub async fn forward(&self, request: RestRequest) -> RestResponse {
        let mut http = match request.to_http() {
            Ok(http) => http,
            Err(e) => return failure(400, format!("cannot perform the request: {e}")),
        };
        let path = http.uri().path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
        let uri = http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{path}", self.base_path))
            .build();
        let Ok(uri) = uri else { return failure(400, format!("cannot forward path {path:?}")) };
        *http.uri_mut() = uri;
        if let Ok(host) = HeaderValue::from_str(self.authority.as_str()) {
            http.headers_mut().insert(HOST, host);
        }
        // Compressed bodies cannot travel in an envelope: ask the service for identity.
        http.headers_mut().remove(ACCEPT_ENCODING);
        let (parts, body) = http.into_parts();
        let outgoing = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
        let response = match tokio::time::timeout(self.timeout, self.client.request(outgoing)).await {
            Err(_) => {
                return failure(504, format!("{} did not answer within {:?}", self.authority, self.timeout));
            }
            Ok(Err(e)) => {
                warn!(error = %e, "forward target unreachable");
                return failure(502, format!("cannot reach {}: {e}", self.authority));
            }
            Ok(Ok(response)) => response,
        };
        let reason = response
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned());
        let (parts, body) = response.into_parts();
        let body = match tokio::time::timeout(self.timeout, Limited::new(body, self.max_body).collect()).await
        {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) => {
                return failure(502, format!("cannot read the response of {}: {e}", self.authority));
            }
            Err(_) => return failure(504, format!("{} did not finish its response in time", self.authority)),
        };
        let http = http::Response::from_parts(parts, body);
        match RestResponse::from_http(&http) {
            Ok(mut rest) => {
                if reason.is_some() {
                    rest.reason_phrase = reason;
                }
                if !self.response_headers {
                    rest.headers.clear();
                }
                debug!(status = rest.status_code, "forwarded");
                rest
            }
            Err(e) => failure(502, format!("cannot tunnel the response: {e}")),
        }
    }
}
