//! The small HTTP client `ws-proxy status` reads the admin endpoint with.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// How long `ws-proxy status` waits for the endpoint.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

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
