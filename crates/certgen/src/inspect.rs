//! Describing a certificate for a human or a script.

use std::fmt;
use std::path::Path;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{Error, Result};

/// What `certgen inspect` reports about one certificate. The field names are the `--json` keys.
#[derive(Clone, Debug, Serialize)]
pub struct CertInfo {
    /// Subject DN, RFC 4514 style.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial number, uppercase hex.
    pub serial: String,
    /// notBefore, RFC 3339 UTC.
    pub not_before: String,
    /// notAfter, RFC 3339 UTC.
    pub not_after: String,
    /// subjectAltNames as `DNS:...`, `IP:...`, `URI:...`, `email:...`.
    pub sans: Vec<String>,
    /// keyUsage bits by name.
    pub key_usage: Vec<String>,
    /// extendedKeyUsage purposes by name (`clientAuth`, `serverAuth`, or the OID).
    pub extended_key_usage: Vec<String>,
    /// SHA-1 of the DER: 40 uppercase hex digits, no colons (what API platforms ask for).
    pub sha1_thumbprint: String,
    /// SHA-256 of the DER: 64 uppercase hex digits.
    pub sha256_fingerprint: String,
}

/// `time` as RFC 3339, falling back to the debug form for dates RFC 3339 cannot express.
pub(crate) fn rfc3339(time: OffsetDateTime) -> String {
    time.format(&Rfc3339).unwrap_or_else(|_| format!("{time}"))
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

impl CertInfo {
    /// Describes a DER certificate.
    ///
    /// # Errors
    /// The parser's message when the DER is not a certificate.
    pub fn from_der(
        der: &[u8],
    ) -> std::result::Result<Self, x509_parser::nom::Err<x509_parser::error::X509Error>> {
        let (_, cert) = X509Certificate::from_der(der)?;
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                sans.push(match name {
                    GeneralName::DNSName(n) => format!("DNS:{n}"),
                    GeneralName::IPAddress(ip) => format!("IP:{}", ip_text(ip)),
                    GeneralName::URI(u) => format!("URI:{u}"),
                    GeneralName::RFC822Name(e) => format!("email:{e}"),
                    other => format!("{other}"),
                });
            }
        }
        let mut key_usage = Vec::new();
        if let Ok(Some(ext)) = cert.key_usage() {
            let ku = ext.value;
            let bits = [
                (ku.digital_signature(), "digitalSignature"),
                (ku.non_repudiation(), "nonRepudiation"),
                (ku.key_encipherment(), "keyEncipherment"),
                (ku.data_encipherment(), "dataEncipherment"),
                (ku.key_agreement(), "keyAgreement"),
                (ku.key_cert_sign(), "keyCertSign"),
                (ku.crl_sign(), "cRLSign"),
                (ku.encipher_only(), "encipherOnly"),
                (ku.decipher_only(), "decipherOnly"),
            ];
            key_usage = bits.iter().filter(|(set, _)| *set).map(|(_, name)| (*name).to_owned()).collect();
        }
        let mut extended_key_usage = Vec::new();
        if let Ok(Some(ext)) = cert.extended_key_usage() {
            let eku = ext.value;
            let named = [
                (eku.any, "anyExtendedKeyUsage"),
                (eku.server_auth, "serverAuth"),
                (eku.client_auth, "clientAuth"),
                (eku.code_signing, "codeSigning"),
                (eku.email_protection, "emailProtection"),
                (eku.time_stamping, "timeStamping"),
                (eku.ocsp_signing, "OCSPSigning"),
            ];
            extended_key_usage = named.iter().filter(|(set, _)| *set).map(|(_, n)| (*n).to_owned()).collect();
            extended_key_usage.extend(eku.other.iter().map(|oid| oid.to_id_string()));
        }
        Ok(CertInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: hex_upper(cert.raw_serial()),
            not_before: rfc3339(cert.validity().not_before.to_datetime()),
            not_after: rfc3339(cert.validity().not_after.to_datetime()),
            sans,
            key_usage,
            extended_key_usage,
            sha1_thumbprint: hex_upper(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref(),
            ),
            sha256_fingerprint: hex_upper(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref(),
            ),
        })
    }

    /// Describes every certificate in a PEM file.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::NoCertificate`] or [`Error::BadCertificate`], naming the file.
    pub fn from_file(path: &Path) -> Result<Vec<Self>> {
        crate::pem::read_certs(path)?
            .iter()
            .map(|der| {
                CertInfo::from_der(der)
                    .map_err(|e| Error::BadCertificate { path: path.to_owned(), reason: e.to_string() })
            })
            .collect()
    }
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).map(|b| std::net::Ipv4Addr::from(b).to_string()).unwrap_or_default(),
        16 => {
            <[u8; 16]>::try_from(bytes).map(|b| std::net::Ipv6Addr::from(b).to_string()).unwrap_or_default()
        }
        _ => hex_upper(bytes),
    }
}

impl fmt::Display for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |items: &[String]| {
            if items.is_empty() { "(none)".to_owned() } else { items.join(", ") }
        };
        let rows = [
            ("subject", self.subject.clone()),
            ("issuer", self.issuer.clone()),
            ("serial", self.serial.clone()),
            ("not before", self.not_before.clone()),
            ("not after", self.not_after.clone()),
            ("subject alt names", list(&self.sans)),
            ("key usage", list(&self.key_usage)),
            ("extended key usage", list(&self.extended_key_usage)),
            ("SHA-1 thumbprint", self.sha1_thumbprint.clone()),
            ("SHA-256 fingerprint", self.sha256_fingerprint.clone()),
        ];
        for (i, (label, value)) in rows.iter().enumerate() {
            let end = if i + 1 == rows.len() { "" } else { "\n" };
            write!(f, "{:<21}{value}{end}", format!("{label}:"))?;
        }
        Ok(())
    }
}
