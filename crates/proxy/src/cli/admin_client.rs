//! The small HTTP client `ws-proxy status` reads the admin endpoint with: plain HTTP on
//! loopback, TLS when the endpoint speaks it (`[admin]` off loopback or with
//! `[[admin.allow]]`), and the bearer token of `admin.token_file` when one is set.
//!
//! Over TLS the server is known by its certificate: the one of `tls.server_cert` in the same
//! configuration, compared byte for byte (the endpoint is usually reached by an address its
//! certificate does not name).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;

use crate::config::Config;
use crate::error::{Error, Result};

/// How long `ws-proxy status` waits for the endpoint.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET path` from the admin endpoint at `addr`; returns the body of a 200 answer.
///
/// # Errors
/// [`Error::Admin`] when the endpoint cannot be reached, does not answer in time, or answers
/// with another status.
pub(crate) async fn get(addr: SocketAddr, path: &str, access: &Access) -> Result<String> {
    let fail = |reason: String| Error::Admin { addr, reason };
    let exchange = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| fail(format!("cannot connect: {e}")))?;
        match &access.tls {
            None => exchange(addr, path, access, tcp).await,
            Some(config) => {
                let name = ServerName::IpAddress(addr.ip().into());
                let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| fail(format!("TLS: {e}")))?;
                exchange(addr, path, access, stream).await
            }
        }
    };
    tokio::time::timeout(CLIENT_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(fail("no answer in time".into())))
}

/// How to reach a protected admin endpoint.
#[derive(Default)]
pub(crate) struct Access {
    /// The bearer token to send.
    pub(crate) token: Option<String>,
    /// TLS, trusting only the proxy's own certificate.
    pub(crate) tls: Option<Arc<ClientConfig>>,
}

impl Access {
    /// What `config` asks of a client of its admin endpoint.
    ///
    /// # Errors
    /// [`Error::Config`] when the token file cannot be read, or the endpoint takes only client
    /// certificates; [`Error::Tls`] when the server certificate cannot be read.
    pub(crate) fn of(config: &Config) -> Result<Self> {
        let access = &config.admin_access;
        let token = match &access.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| Error::Config {
                        key: "admin.token_file".into(),
                        reason: format!("cannot read {}: {e}", path.display()),
                    })?
                    .trim()
                    .to_owned(),
            ),
            None if access.tls && !access.allow.is_empty() => {
                return Err(Error::Config {
                    key: "admin.allow".into(),
                    reason: "the admin endpoint takes only client certificates; ws-proxy status needs admin.token_file".into(),
                });
            }
            None => None,
        };
        let tls = if access.tls { Some(pinned(&config.server_cert)?) } else { None };
        Ok(Access { token, tls })
    }
}

/// A client configuration that trusts exactly the leaf certificate of `server_cert`.
fn pinned(server_cert: &std::path::Path) -> Result<Arc<ClientConfig>> {
    let bad = |reason: String| Error::Tls { path: server_cert.to_owned(), reason };
    let leaf = CertificateDer::pem_file_iter(server_cert)
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("no certificate".into()))?
        .map_err(|e| bad(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(Pinned { leaf, provider: Arc::clone(&provider) });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Trusts one certificate, whatever name it is reached by; signatures are still verified.
#[derive(Debug)]
struct Pinned {
    leaf: CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// One request over `io`.
async fn exchange<Io>(addr: SocketAddr, path: &str, access: &Access, io: Io) -> Result<String>
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let fail = |reason: String| Error::Admin { addr, reason };
    {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| fail(e.to_string()))?;
        let mut request = Request::get(path).header(header::HOST, addr.to_string());
        if let Some(token) = &access.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(Bytes::new())).map_err(|e| fail(e.to_string()))?;
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
    }
}
