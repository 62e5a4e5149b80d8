//! Issuing root and leaf certificates.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::key::KeyType;
use crate::{Error, Result};

/// How far notBefore is set in the past, to tolerate clocks that lag behind the issuer's.
const BACKDATE: Duration = Duration::minutes(5);

/// What a leaf certificate may authenticate (its extendedKeyUsage).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Usage {
    /// TLS client authentication only.
    Client,
    /// TLS server authentication only.
    Server,
    /// Both (the default).
    #[default]
    Both,
}

impl FromStr for Usage {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "client" => Ok(Usage::Client),
            "server" => Ok(Usage::Server),
            "both" => Ok(Usage::Both),
            other => {
                Err(Error::Invalid(format!("unknown usage {other:?} (expected client, server or both)")))
            }
        }
    }
}

/// A root CA to issue.
#[derive(Clone, Debug)]
pub struct RootSpec {
    /// Subject O.
    pub org: String,
    /// Subject CN; the organization when `None`.
    pub common_name: Option<String>,
    /// Validity in days.
    pub days: u32,
    /// The key algorithm.
    pub key_type: KeyType,
}

/// A leaf certificate to issue.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    /// Subject O.
    pub org: String,
    /// Subject CN.
    pub common_name: String,
    /// Validity in days; never past the CA's notAfter.
    pub days: u32,
    /// The key algorithm.
    pub key_type: KeyType,
    /// The extendedKeyUsage.
    pub usage: Usage,
    /// DNS subjectAltNames.
    pub dns_names: Vec<String>,
    /// IP subjectAltNames, as text (validated here so errors name the value).
    pub ip_addresses: Vec<String>,
}

/// A freshly issued certificate and its key, both PEM.
#[derive(Debug)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
    /// The notAfter actually used.
    pub not_after: OffsetDateTime,
    /// Whether notAfter was cut short to the CA's own notAfter.
    pub capped_to_ca: bool,
}

impl Issued {
    /// The certificate followed by its key: the `pkeycert` file the proxy and clients load.
    #[must_use]
    pub fn pkeycert(&self) -> String {
        format!("{}{}", self.cert_pem, self.key_pem)
    }
}

/// 16 random bytes with the top bit cleared: a positive serial with about 127 bits of entropy.
fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| Error::Invalid("the system random source failed".to_owned()))?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

/// The longest validity, or time to a CRL's next update, certgen writes: a hundred years.
pub(crate) const MAX_DAYS: u32 = 36_500;

fn validity(days: u32) -> Result<(OffsetDateTime, OffsetDateTime)> {
    if days == 0 {
        return Err(Error::Invalid("--expiration-in-days must be at least 1".to_owned()));
    }
    if days > MAX_DAYS {
        return Err(Error::Invalid(format!(
            "--expiration-in-days must be at most {MAX_DAYS} (a hundred years)"
        )));
    }
    // Certificates hold whole seconds; truncating here makes `Issued::not_after` exact.
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap_or_else(|_| OffsetDateTime::now_utc());
    Ok((now - BACKDATE, now + Duration::days(i64::from(days))))
}

/// Issues a self-signed root CA: basicConstraints CA:TRUE (critical), keyUsage keyCertSign and
/// cRLSign, a subjectKeyIdentifier.
///
/// # Errors
/// [`Error::Invalid`] for zero days, [`Error::Issue`] when signing fails.
pub fn issue_root(spec: &RootSpec) -> Result<Issued> {
    let key = spec.key_type.generate()?;
    let (not_before, not_after) = validity(spec.days)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::OrganizationName, spec.org.as_str());
    params.distinguished_name.push(DnType::CommonName, spec.common_name.as_deref().unwrap_or(&spec.org));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial()?);
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.self_signed(&key)?;
    Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), not_after, capped_to_ca: false })
}

/// A CA that can sign leaves: its certificate's subject and key identifier, and its key.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
    /// The CA certificate's subject, DER: what the CRLs it signs name as their issuer.
    subject_der: Vec<u8>,
}

impl Authority {
    /// Loads a CA from its certificate and key files, checking that the certificate is a CA
    /// allowed to sign certificates, is within its validity window, and matches the key.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::NoCertificate`] or [`Error::NoKey`] for unreadable files,
    /// [`Error::NotUsableCa`] and [`Error::KeyMismatch`] for the checks above.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self> {
        let der = crate::pem::read_certs(cert_path)?.swap_remove(0);
        let key = crate::pem::read_key_pair(key_path)?;
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| Error::BadCertificate { path: cert_path.to_owned(), reason: e.to_string() })?;
        let unusable = |reason: String| Error::NotUsableCa { path: cert_path.to_owned(), reason };

        let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if !is_ca {
            return Err(unusable("not a CA certificate (basicConstraints CA:TRUE is missing)".to_owned()));
        }
        if matches!(cert.key_usage(), Ok(Some(ku)) if !ku.value.key_cert_sign()) {
            return Err(unusable("CA certificate's keyUsage does not allow keyCertSign".to_owned()));
        }
        let now = OffsetDateTime::now_utc();
        let not_after = cert.validity().not_after.to_datetime();
        if not_after <= now {
            return Err(unusable(format!(
                "CA certificate expired on {}",
                crate::inspect::rfc3339(not_after)
            )));
        }
        let not_before = cert.validity().not_before.to_datetime();
        if not_before > now {
            return Err(unusable(format!(
                "CA certificate is not valid before {}",
                crate::inspect::rfc3339(not_before)
            )));
        }
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(Error::KeyMismatch { cert: cert_path.to_owned(), key: key_path.to_owned() });
        }
        // rcgen re-encodes the issuer name from the parsed subject; it handles single-valued
        // RDNs only (and panics on an empty one), so refuse anything else up front.
        if cert.subject().iter().any(|rdn| rdn.iter().count() != 1) {
            return Err(unusable(
                "CA subject has multi-valued or empty RDNs, which are not supported".to_owned(),
            ));
        }
        let subject_der = cert.subject().as_raw().to_vec();
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| Error::BadCertificate { path: PathBuf::from(cert_path), reason: e.to_string() })?;
        Ok(Authority { issuer, not_after, subject_der })
    }

    /// The signer, for CRLs.
    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// The CA certificate's subject, DER.
    pub(crate) fn subject_der(&self) -> &[u8] {
        &self.subject_der
    }

    /// Issues a leaf: basicConstraints CA:FALSE, keyUsage digitalSignature (plus
    /// keyEncipherment for RSA keys), the requested extendedKeyUsage, an authorityKeyIdentifier
    /// and the given subjectAltNames. notAfter never passes the CA's own.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an invalid SAN or zero days, [`Error::Issue`] when signing fails.
    pub fn issue_leaf(&self, spec: &LeafSpec) -> Result<Issued> {
        let sans = subject_alt_names(spec)?;
        let (not_before, wanted) = validity(spec.days)?;
        let capped_to_ca = wanted > self.not_after;
        let not_after = if capped_to_ca { self.not_after } else { wanted };

        let key = spec.key_type.generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::OrganizationName, spec.org.as_str());
        params.distinguished_name.push(DnType::CommonName, spec.common_name.as_str());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.key_type.is_rsa() {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = match spec.usage {
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Both => vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth],
        };
        params.use_authority_key_identifier_extension = true;
        params.subject_alt_names = sans;
        params.serial_number = Some(random_serial()?);
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), not_after, capped_to_ca })
    }
}

fn subject_alt_names(spec: &LeafSpec) -> Result<Vec<SanType>> {
    let mut sans = Vec::new();
    for name in &spec.dns_names {
        rustls_pki_types::DnsName::try_from(name.as_str())
            .map_err(|_| Error::Invalid(format!("invalid --san-dns value {name:?}: not a DNS name")))?;
        let ia5 = name
            .as_str()
            .try_into()
            .map_err(|_| Error::Invalid(format!("invalid --san-dns value {name:?}: not ASCII")))?;
        sans.push(SanType::DnsName(ia5));
    }
    for text in &spec.ip_addresses {
        let ip: IpAddr = text.parse().map_err(|_| {
            Error::Invalid(format!("invalid --san-ip value {text:?}: not an IPv4 or IPv6 address"))
        })?;
        sans.push(SanType::IpAddress(ip));
    }
    Ok(sans)
}
