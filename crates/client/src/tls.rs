//! The client's TLS configuration: its certificate, the CAs it trusts, and how strictly it
//! checks the relay's certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::{Error, Result};

/// How the client authenticates and verifies.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// The client certificate: a pkeycert (certificate then key) or a certificate chain.
    pub client_cert: Option<PathBuf>,
    /// The client key, when it is not in `client_cert`.
    pub client_key: Option<PathBuf>,
    /// A CA bundle for the relay's certificate; `None` uses the system trust store.
    pub ca_cert: Option<PathBuf>,
    /// Verify the chain but not the host name (the original certificates have no SAN).
    pub skip_hostname_check: bool,
    /// Verify nothing about the relay's certificate. Dangerous: for debugging only.
    pub insecure: bool,
}

fn tls_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Tls { path: path.to_owned(), reason: reason.into() }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| tls_error(path, e.to_string()))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(tls_error(path, "no certificate found"));
    }
    Ok(certs)
}

fn roots(options: &TlsOptions) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match &options.ca_cert {
        Some(path) => {
            for cert in certs(path)? {
                roots.add(cert).map_err(|e| tls_error(path, format!("unusable CA certificate: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // The system store holds certificates webpki cannot use; skip them.
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(Error::NoTrustAnchors);
    }
    Ok(roots)
}

/// Builds the client configuration.
///
/// # Errors
/// [`Error::Tls`] naming an unusable file, [`Error::NoTrustAnchors`].
pub fn client_config(options: &TlsOptions) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let builder = if options.insecure {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots(options)?), provider)
            .build()
            .map_err(|e| Error::Invalid(format!("cannot verify the relay with these CAs: {e}")))?;
        if options.skip_hostname_check {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
        } else {
            builder.with_webpki_verifier(webpki)
        }
    };
    let config = match &options.client_cert {
        Some(cert_path) => {
            let chain = certs(cert_path)?;
            let key_path = options.client_key.as_deref().unwrap_or(cert_path);
            let key = PrivateKeyDer::from_pem_slice(&read(key_path)?).map_err(|_| {
                tls_error(key_path, "no private key found (expected PKCS#8, SEC1 or PKCS#1 PEM)")
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_error(key_path, format!("certificate and key do not go together: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Verifies the chain and signatures, but accepts any name.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Accepts any certificate; still checks that the handshake signatures are made with the
/// presented key, so the connection is at least encrypted to whoever holds it.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
