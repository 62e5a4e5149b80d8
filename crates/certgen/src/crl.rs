//! Revocation: adding certificates to the CA's certificate revocation list (CRL).
//!
//! `certgen revoke` keeps one CRL file per CA: it reads the CRL when it exists (checking that
//! the CA issued it), adds the serial if it is not there yet, and signs a new CRL with the next
//! CRL number. The file is public material, replaced atomically. The proxy checks client
//! certificates against it (`tls.crl_files`) and re-reads it on reload.

use std::path::Path;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::files::{Output, write_outputs};
use crate::{Authority, Error, Result};

/// What a revocation did.
#[derive(Debug)]
pub struct Revoked {
    /// The serial, uppercase hex.
    pub serial: String,
    /// Whether the CRL already listed it.
    pub already: bool,
    /// Serials the CRL lists now.
    pub count: usize,
    /// The new CRL's number.
    pub crl_number: u64,
}

/// The serial of the first certificate in `path`, as its big-endian bytes.
///
/// # Errors
/// [`Error::Io`], [`Error::NoCertificate`] or [`Error::BadCertificate`] for the file.
pub fn serial_of(path: &Path) -> Result<Vec<u8>> {
    let der = crate::pem::read_certs(path)?.swap_remove(0);
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|e| Error::BadCertificate { path: path.to_owned(), reason: e.to_string() })?;
    Ok(cert.raw_serial().to_vec())
}

/// A serial written as hex (colons allowed), as `certgen inspect` prints it.
///
/// # Errors
/// [`Error::Invalid`] when it is not hex.
pub fn parse_serial(text: &str) -> Result<Vec<u8>> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    let valid = !hex.is_empty() && hex.len().is_multiple_of(2) && hex.chars().all(|c| c.is_ascii_hexdigit());
    if !valid {
        return Err(Error::Invalid(format!(
            "serial {text:?} is not hex digits (as certgen inspect prints it)"
        )));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| Error::Invalid(e.to_string())))
        .collect()
}

/// Adds `serial` to the CRL at `crl_path` (creating it), signed by `ca`, valid for
/// `next_update_days`.
///
/// # Errors
/// [`Error::Io`] for the file, [`Error::Rejected`] when the existing CRL is not one of this
/// CA's, [`Error::Invalid`] for zero days, [`Error::Issue`] when signing fails.
pub fn revoke(ca: &Authority, crl_path: &Path, serial: &[u8], next_update_days: u32) -> Result<Revoked> {
    if next_update_days > crate::issue::MAX_DAYS {
        return Err(Error::Invalid(format!(
            "--next-update-days must be at most {} (a hundred years)",
            crate::issue::MAX_DAYS
        )));
    }
    if next_update_days == 0 {
        return Err(Error::Invalid("--next-update-days must be at least 1".into()));
    }
    let now = OffsetDateTime::now_utc();
    let (mut revoked, previous_number) = match std::fs::read(crl_path) {
        Ok(pem) => read_crl(ca, crl_path, &pem)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 0),
        Err(e) => return Err(Error::io(crl_path, e)),
    };
    let shown: String = serial.iter().map(|b| format!("{b:02X}")).collect();
    let serial = trim_serial(serial);
    let already = revoked.iter().any(|r| r.serial_number.as_ref() == serial.as_slice());
    if !already {
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let crl_number = previous_number + 1;
    let params = CertificateRevocationListParams {
        this_update: now - Duration::minutes(5),
        next_update: now + Duration::days(i64::from(next_update_days)),
        crl_number: SerialNumber::from(crl_number),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let count = params.revoked_certs.len();
    let pem = params.signed_by(ca.issuer())?.pem()?;
    write_outputs(&[Output { path: crl_path.to_owned(), contents: pem, secret: false }], true)?;
    Ok(Revoked { serial: shown, already, count, crl_number })
}

/// The entries and the number of an existing CRL, which must be this CA's.
fn read_crl(ca: &Authority, path: &Path, pem: &[u8]) -> Result<(Vec<RevokedCertParams>, u64)> {
    let rejected = |reason: String| Error::Rejected { path: path.to_owned(), reason };
    let der = CertificateRevocationListDer::from_pem_slice(pem)
        .map_err(|e| rejected(format!("not a PEM CRL: {e}")))?;
    let (_, crl) =
        CertificateRevocationList::from_der(&der).map_err(|e| rejected(format!("not a valid CRL: {e}")))?;
    if crl.issuer().as_raw() != ca.subject_der() {
        return Err(rejected("issued by another CA than --ca-certfile".into()));
    }
    let entries = crl
        .iter_revoked_certificates()
        .map(|entry| RevokedCertParams {
            serial_number: SerialNumber::from_slice(&trim_serial(entry.raw_serial())),
            revocation_time: entry.revocation_date.to_datetime(),
            reason_code: None,
            invalidity_date: None,
        })
        .collect();
    let number = crl.crl_number().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    Ok((entries, number))
}

/// A serial without leading zero bytes (DER adds one to keep a serial positive), so that the
/// same serial read from a certificate, a CRL or the command line compares equal.
fn trim_serial(serial: &[u8]) -> Vec<u8> {
    let start = serial.iter().position(|&b| b != 0).unwrap_or(serial.len().saturating_sub(1));
    serial[start..].to_vec()
}
