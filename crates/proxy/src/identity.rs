//! Who a peer is: read once from its verified client certificate; and when a certificate
//! expires.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The identity of a connected peer, from the leaf certificate rustls verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Subject DN, RFC 4514 style.
    pub subject: String,
    /// Subject CN, when present.
    pub common_name: Option<String>,
    /// Subject O, when present.
    pub organization: Option<String>,
    /// Subject OU, when present.
    pub org_unit: Option<String>,
    /// subjectAltNames as `DNS:...`, `IP:...`, `URI:...`.
    pub sans: Vec<String>,
    /// Serial number, uppercase hex.
    pub serial: String,
    /// SHA-256 of the certificate: what makes two connections "the same certificate".
    pub fingerprint: Fingerprint,
    /// notAfter, seconds since the Unix epoch.
    pub not_after: i64,
}

/// A certificate's subject and notAfter (Unix seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateExpiry {
    /// Subject DN.
    pub subject: String,
    /// Serial number, as colon-separated hex: tells apart two CAs of one subject (a root and
    /// its successor during a rotation).
    pub serial: String,
    /// notAfter, seconds since the Unix epoch.
    pub not_after: i64,
}

impl CertificateExpiry {
    /// The subject and notAfter of a DER certificate; `None` when it cannot be parsed.
    #[must_use]
    pub fn of(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        Some(CertificateExpiry {
            subject: cert.subject().to_string(),
            serial: cert.raw_serial_as_string(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }
}

/// Now, in seconds since the Unix epoch: the clock certificates' notAfter is read against.
#[must_use]
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A certificate that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("certificate cannot be parsed: {0}")]
pub struct CertificateError(#[from] x509_parser::nom::Err<x509_parser::error::X509Error>);

/// A certificate's SHA-256 fingerprint.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02X}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl PeerIdentity {
    /// Reads the identity of a DER certificate.
    ///
    /// # Errors
    /// [`CertificateError`] when the DER is not a certificate (which cannot happen for a
    /// certificate rustls has verified).
    pub fn from_der(der: &[u8]) -> Result<Self, CertificateError> {
        let (_, cert) = X509Certificate::from_der(der)?;
        let subject = cert.subject();
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(n) => sans.push(format!("DNS:{n}")),
                    GeneralName::URI(u) => sans.push(format!("URI:{u}")),
                    GeneralName::IPAddress(ip) => sans.push(format!("IP:{}", ip_text(ip))),
                    _ => {}
                }
            }
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(digest.as_ref());
        Ok(PeerIdentity {
            subject: subject.to_string(),
            common_name: first(subject.iter_common_name()),
            organization: first(subject.iter_organization()),
            org_unit: first(subject.iter_organizational_unit()),
            sans,
            serial: cert.raw_serial().iter().map(|b| format!("{b:02X}")).collect(),
            fingerprint: Fingerprint(fingerprint),
            not_after: cert.validity().not_after.timestamp(),
        })
    }
}

/// The first attribute of an iterator over a DN's attributes, as text.
fn first<'a>(
    mut attributes: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
) -> Option<String> {
    attributes.next().and_then(|a| a.as_str().ok()).map(str::to_owned)
}

fn ip_text(bytes: &[u8]) -> String {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return std::net::Ipv4Addr::from(v4).to_string();
    }
    if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        return std::net::Ipv6Addr::from(v6).to_string();
    }
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}
