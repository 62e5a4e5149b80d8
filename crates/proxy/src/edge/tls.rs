//! The mutual-TLS server configuration, and naming why a handshake failed.
//!
//! Client certificates are mandatory and verified by webpki against the configured CA bundles:
//! TLS 1.2 and 1.3 only, one crypto provider (aws-lc-rs). The server's PEM may be the original
//! scripts' pkeycert (certificate, `EC PARAMETERS`, SEC1 key): non-key blocks are skipped.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::RootCertStore;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{
    NoServerSessionStorage, ServerConfig, ServerSessionMemoryCache, StoresServerSessions,
    WebPkiClientVerifier,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use x509_parser::prelude::FromDer;

use super::tickets::{Secret, Tickets};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::identity::CertificateExpiry;
use crate::metrics::TrustExpiry;

fn tls_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Tls { path: path.to_owned(), reason: reason.into() }
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    read_pem(path, "certificate")
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    read_pem(path, "CRL")
}

/// Every PEM block of type `T` in the file; at least one, else an error naming `what`.
fn read_pem<T: PemObject>(path: &Path, what: &str) -> Result<Vec<T>> {
    let bytes = std::fs::read(path).map_err(|e| tls_error(path, e.to_string()))?;
    let items = T::pem_slice_iter(&bytes)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, format!("invalid PEM: {e}")))?;
    if items.is_empty() {
        return Err(tls_error(path, format!("no {what} found")));
    }
    Ok(items)
}

/// Checks that each configured CRL speaks for a trusted CA: its issuer is one of the CA
/// certificates of `client_ca`, and its signature verifies with that CA's key (RFC 5280 6.3.3).
/// A CRL of another issuer would revoke nothing (revocation is matched by issuer and serial),
/// so it is a configuration error rather than a silent no-op.
///
/// # Errors
/// [`Error::Tls`] naming the CRL file.
fn check_crls(config: &Config, crls: &[(&Path, Vec<CertificateRevocationListDer<'static>>)]) -> Result<()> {
    let cas: Vec<CertificateDer<'static>> =
        config.client_ca.iter().map(|path| read_certs(path)).collect::<Result<Vec<_>>>()?.concat();
    let cas: Vec<x509_parser::certificate::X509Certificate<'_>> = cas
        .iter()
        .filter_map(|der| x509_parser::certificate::X509Certificate::from_der(der).ok().map(|(_, c)| c))
        .collect();
    for (path, list) in crls {
        for der in list {
            let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der)
                .map_err(|e| tls_error(path, format!("invalid CRL: {e}")))?;
            let issuer = crl.issuer();
            let Some(ca) = cas.iter().find(|ca| ca.subject().as_raw() == issuer.as_raw()) else {
                return Err(tls_error(
                    path,
                    format!(
                        "CRL issued by {issuer}, which is not a CA of tls.client_ca: it would revoke nothing"
                    ),
                ));
            };
            crl.verify_signature(ca.public_key()).map_err(|e| {
                tls_error(path, format!("CRL signature does not verify with its issuer {issuer}: {e}"))
            })?;
        }
    }
    Ok(())
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let bytes = std::fs::read(path).map_err(|e| tls_error(path, e.to_string()))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|_| tls_error(path, "no private key found (expected PKCS#8, SEC1 or PKCS#1 PEM)"))
}

/// What resumes TLS sessions, kept across reloads: the ticket keys (`tickets.rs`) and the
/// cache of TLS 1.2 sessions for clients without tickets. Both are bound to the trust (CAs and
/// CRLs) their sessions were verified under: a reload that changes it changes the ticket keys
/// and starts a new cache, so a session only resumes under the trust that verified it.
pub(crate) struct Resumption {
    pub(crate) tickets: Arc<Tickets>,
    sessions: Mutex<([u8; 32], Arc<ServerSessionMemoryCache>)>,
    enabled: bool,
}

/// TLS 1.2 sessions of clients that do not take tickets, at most (a session is about 1 KB).
const SESSION_CACHE: usize = 4096;

impl Resumption {
    /// The resumption of `config`, with keys from a random secret and bound to no trust yet:
    /// no file is read here (the configuration is checked before the files it names), and
    /// [`Tickets::rekey`] binds the keys to the ticket key file and the trust once they are
    /// loaded (`gate.rs`).
    ///
    /// # Errors
    /// [`Error::Tls`] when no randomness is to be had.
    pub(crate) fn new(config: &Config) -> Result<Self> {
        let unbound = [0u8; 32];
        Ok(Resumption {
            tickets: Arc::new(Tickets::new(Secret::load(None)?, config.ticket_rotation.as_secs(), unbound)?),
            sessions: Mutex::new((unbound, ServerSessionMemoryCache::new(SESSION_CACHE))),
            enabled: config.resumption,
        })
    }

    /// The TLS 1.2 session cache of `trust`: a new one when the trust changed.
    fn sessions(&self, trust: [u8; 32]) -> Arc<dyn StoresServerSessions> {
        let mut sessions = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if sessions.0 != trust {
            *sessions = (trust, ServerSessionMemoryCache::new(SESSION_CACHE));
        }
        Arc::clone(&sessions.1) as Arc<dyn StoresServerSessions>
    }
}

/// What client certificates are verified against: the CA certificates and the CRLs.
#[derive(Clone)]
struct Trust {
    roots: RootCertStore,
    crls: Vec<CertificateRevocationListDer<'static>>,
    /// SHA-256 over the CA certificates and the CRLs.
    digest: [u8; 32],
    /// When the first of the CA certificates expires (Unix seconds).
    expires: i64,
    /// Each CA certificate's subject and notAfter, for `/metrics`.
    cas: Vec<CertificateExpiry>,
}

impl Trust {
    fn load(config: &Config) -> Result<Self> {
        let roots = trust(&config.client_ca)?;
        let crls = config
            .crl_files
            .iter()
            .map(|path| Ok((path.as_path(), read_crls(path)?)))
            .collect::<Result<Vec<_>>>()?;
        check_crls(config, &crls)?;
        let crls: Vec<_> = crls.into_iter().flat_map(|(_, list)| list).collect();
        let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut cas = Vec::new();
        for path in &config.client_ca {
            for cert in read_certs(path)? {
                digest.update(&cert);
                cas.extend(CertificateExpiry::of(&cert));
            }
        }
        let expires = cas.iter().map(|ca| ca.not_after).min().unwrap_or(i64::MAX);
        crls.iter().for_each(|crl| digest.update(crl));
        let mut sum = [0u8; 32];
        sum.copy_from_slice(digest.finish().as_ref());
        Ok(Trust { roots, crls, digest: sum, expires, cas })
    }
}

/// The server's TLS configuration, and the verifier of client certificates in it: a resumed
/// session skips the verifier, so the proxy asks it again itself (`connection.rs`).
pub(crate) struct TlsMaterial {
    pub(crate) server: Arc<ServerConfig>,
    pub(crate) verifier: Arc<dyn ClientCertVerifier>,
    /// SHA-256 over the trusted CA certificates and the CRLs: a reload that changes it checks
    /// every member's certificate again.
    pub(crate) trust: [u8; 32],
    /// When the first trusted CA certificate expires (Unix seconds): a resumed session's
    /// chain is good no longer than that.
    pub(crate) trust_expires: i64,
    /// When the server's certificate and the trusted CAs expire, for `/metrics`.
    pub(crate) expiries: Arc<TrustExpiry>,
}

/// Builds the server's TLS configuration from the configured files.
///
/// # Errors
/// [`Error::Tls`] naming the file that is missing, unreadable, holds no certificate or key,
/// holds a key that does not match the certificate, or a CA that webpki refuses.
pub fn server_config(config: &Config) -> Result<Arc<ServerConfig>> {
    Ok(material(config, &Files::read(config)?, &Resumption::new(config)?)?.server)
}

/// The TLS files a configuration names, read once, so that the relay and the admin endpoint
/// are configured from the same reading: the CAs and CRLs, the server's chain and key.
pub(crate) struct Files {
    trust: Trust,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Files {
    /// Reads the files `config` names.
    ///
    /// # Errors
    /// As [`server_config`].
    pub(crate) fn read(config: &Config) -> Result<Self> {
        let trust = Trust::load(config)?;
        let chain = read_certs(&config.server_cert)?;
        let key = read_key(config.server_key.as_deref().unwrap_or(&config.server_cert))?;
        Ok(Files { trust, chain, key })
    }
}

/// The server's TLS configuration and its client certificate verifier, from `files`.
///
/// # Errors
/// As [`server_config`].
pub(crate) fn material(config: &Config, files: &Files, resumption: &Resumption) -> Result<TlsMaterial> {
    let provider = provider();
    let Trust { roots, crls, digest: trust, expires: trust_expires, cas } = files.trust.clone();
    let verifier = client_verifier(config, roots, crls, &provider, ClientCertificates::Required)?;
    let expiries = Arc::new(TrustExpiry {
        server: files.chain.first().and_then(|leaf| CertificateExpiry::of(leaf)),
        cas,
    });
    let mut server = serving(config, provider, Arc::clone(&verifier), files)?;
    if resumption.enabled {
        server.ticketer = resumption.tickets.clone();
        server.session_storage = resumption.sessions(trust);
    } else {
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
    }
    Ok(TlsMaterial { server: Arc::new(server), verifier, trust, trust_expires, expiries })
}

/// Whether a TLS client must present a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientCertificates {
    Required,
    /// Asked for and verified when presented; a client without one may still connect.
    Optional,
}

/// The TLS configuration of the admin endpoint (`[admin]` off loopback, or with
/// `[[admin.allow]]`): the server certificate of `tls.server_cert`; a client certificate is
/// asked for and, when presented, verified against the peers' CAs and CRLs, from `files`.
/// A client without one still connects: the health checks answer everyone (load balancers'
/// probes), and everything else asks for a token or an allowed certificate (`admin_guard.rs`).
/// Sessions are not resumed.
///
/// # Errors
/// As [`server_config`].
pub(crate) fn admin_config(config: &Config, files: &Files) -> Result<Arc<ServerConfig>> {
    let provider = provider();
    let Trust { roots, crls, .. } = files.trust.clone();
    let verifier = client_verifier(config, roots, crls, &provider, ClientCertificates::Optional)?;
    let mut server = serving(config, provider, verifier, files)?;
    server.session_storage = Arc::new(NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    Ok(Arc::new(server))
}

/// The verifier of client certificates: chained to the CAs, not revoked by the CRLs.
fn client_verifier(
    config: &Config,
    roots: RootCertStore,
    crls: Vec<CertificateRevocationListDer<'static>>,
    provider: &Arc<rustls::crypto::CryptoProvider>,
    clients: ClientCertificates,
) -> Result<Arc<dyn ClientCertVerifier>> {
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .with_crls(crls)
        // The leaf is checked against the CRLs; a CA without a CRL (a second root during a
        // rotation, say) does not make its leaves fail.
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status();
    let builder = match clients {
        ClientCertificates::Required => builder,
        ClientCertificates::Optional => builder.allow_unauthenticated(),
    };
    builder
        .build()
        .map_err(|e| tls_error(&config.client_ca[0], format!("cannot verify clients with this CA: {e}")))
}

/// A server configuration with the certificate chain and key of `files`, the versions and
/// suites of [`provider`], and `verifier` for the clients.
fn serving(
    config: &Config,
    provider: Arc<rustls::crypto::CryptoProvider>,
    verifier: Arc<dyn ClientCertVerifier>,
    files: &Files,
) -> Result<ServerConfig> {
    let key_path = config.server_key.as_deref().unwrap_or(&config.server_cert);
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(|e| tls_error(&config.server_cert, e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(files.chain.clone(), files.key.clone_key())
        .map_err(|e| tls_error(key_path, format!("server certificate and key do not go together: {e}")))?;
    server.ignore_client_order = true;
    Ok(server)
}

/// aws-lc-rs with the AES-128-GCM/SHA-256 suites first (the server's order decides). The
/// certificates and the key exchange give 128-bit security (P-256, X25519), which AES-256 and
/// SHA-384 do not raise; and SHA-256 runs on the CPU's SHA instructions where SHA-384 runs in
/// software, so the key schedule, a large part of what a resumed session costs, is cheaper
/// (docs/performance.md).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite::{
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        TLS13_AES_128_GCM_SHA256,
    };
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(|suite| {
        !matches!(
            suite.suite(),
            TLS13_AES_128_GCM_SHA256
                | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    Arc::new(provider)
}

/// A TLS client configuration (for the authorization hook, for Redis over TLS): servers are
/// verified against the CA bundle `ca_file`, or the system's CAs without it.
///
/// # Errors
/// [`Error::Tls`] when `ca_file` cannot be read, [`Error::Config`] naming `key` when there is
/// no CA to verify with.
pub(crate) fn client_config(ca_file: Option<&Path>, key: &str) -> Result<Arc<rustls::ClientConfig>> {
    let roots = match ca_file {
        Some(path) => trust(&[path])?,
        None => {
            let mut roots = RootCertStore::empty();
            // The system store may hold certificates webpki cannot use; those are skipped.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            roots
        }
    };
    if roots.is_empty() {
        return Err(Error::Config {
            key: key.into(),
            reason: format!("no CA certificate to verify the server with: set {key}"),
        });
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| Error::Config { key: key.into(), reason: e.to_string() })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The TLS versions the proxy speaks, as server and as client (of the authorization hook).
pub(crate) const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The CA certificates of the PEM bundles `paths`, as a trust store.
pub(crate) fn trust(paths: &[impl AsRef<Path>]) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for path in paths {
        let path = path.as_ref();
        for cert in read_certs(path)? {
            roots.add(cert).map_err(|e| tls_error(path, format!("unusable CA certificate: {e}")))?;
        }
    }
    Ok(roots)
}

/// Why a TLS handshake failed, as a short stable label (for logs and metrics) and a detail.
#[must_use]
pub fn handshake_failure(error: &std::io::Error) -> (&'static str, String) {
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        let label = match error.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::ConnectionReset => "reset",
            _ => "io",
        };
        return (label, error.to_string());
    };
    (failure_label(tls), tls.to_string())
}

/// A short stable label for a TLS error: the same whether rustls found it in a handshake or the
/// proxy found it checking a resumed session's certificate again.
pub(crate) fn failure_label(tls: &rustls::Error) -> &'static str {
    use rustls::{CertificateError, Error as TlsError};
    match tls {
        TlsError::NoCertificatesPresented => "no_client_certificate",
        TlsError::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => "not_yet_valid",
            CertificateError::Revoked => "revoked",
            CertificateError::BadSignature => "bad_signature",
            _ => "bad_certificate",
        },
        TlsError::PeerIncompatible(_) => "incompatible",
        TlsError::AlertReceived(_) => "alert_received",
        TlsError::InappropriateMessage { .. } | TlsError::InappropriateHandshakeMessage { .. } => "protocol",
        TlsError::InvalidMessage(_) => "invalid_message",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use rustls::{AlertDescription, CertificateError, Error as TlsError, InvalidMessage, PeerIncompatible};

    use super::*;
    use crate::metrics::labels::{HandshakeFailures, LabelSet};

    #[test]
    fn every_failure_label_is_shown_from_the_first_scrape() {
        let errors = [
            TlsError::NoCertificatesPresented,
            TlsError::InvalidCertificate(CertificateError::UnknownIssuer),
            TlsError::InvalidCertificate(CertificateError::Expired),
            TlsError::InvalidCertificate(CertificateError::NotValidYet),
            TlsError::InvalidCertificate(CertificateError::Revoked),
            TlsError::InvalidCertificate(CertificateError::BadSignature),
            TlsError::InvalidCertificate(CertificateError::BadEncoding),
            TlsError::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon),
            TlsError::AlertReceived(AlertDescription::HandshakeFailure),
            TlsError::InappropriateMessage { expect_types: vec![], got_type: rustls::ContentType::Alert },
            TlsError::InvalidMessage(InvalidMessage::InvalidCcs),
            TlsError::DecryptError,
        ];
        let mut labels: Vec<&str> = errors
            .into_iter()
            .map(|e| handshake_failure(&std::io::Error::new(std::io::ErrorKind::InvalidData, e)).0)
            .collect();
        for kind in [
            std::io::ErrorKind::UnexpectedEof,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::Other,
        ] {
            labels.push(handshake_failure(&kind.into()).0);
        }
        // The connection's own: a handshake past its deadline, a certificate refused after it.
        labels.extend(["timeout", "bad_certificate", "no_client_certificate"]);
        for label in labels {
            assert!(HandshakeFailures::KNOWN.contains(&label), "{label}");
        }
    }
}
